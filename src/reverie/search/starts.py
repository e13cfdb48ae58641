"""How the population starts (docs/design.md#population-and-penalties): the candidates that a run's first
population is chosen from, one function per start.

- `random_population`: random prompts (the paper's start), or the initial prompt in every slot;
- `sampled_candidates`: text the model writes itself (`proposals.model_text`), SAMPLES_PER_SLOT per slot;
- `beam_candidates`: a beam search on the objective, token by token from an empty prompt (the default).

Scan windows ("data" starts) arrive as `EPOConfig.init_ids`, prompts given to some slots; the other slots
start from the beam. Every model pass goes through the scorer; every random draw through `generator`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..scoring import Scorer
from .config import EPOConfig
from .proposals import model_text, sample_tokens

SAMPLES_PER_SLOT = 8  # sampled starts: prompts the model writes per population slot
BEAMS_PER_SLOT = 4  # beam starts: prefixes each slot keeps at every length...
TOKENS_PER_BEAM = 8  # ...and tokens drawn from the model to extend each one

Score = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # ids -> (f, CE)
Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # ids, f, CE -> [M, len(ids)]


def random_population(scorer: Scorer, config: EPOConfig, generator: torch.Generator) -> torch.Tensor:
    """[M, n]: the initial prompt in every slot, or random prompts with the slots given a prompt in
    `init_ids` holding it."""
    vocab, M = scorer.vocab, config.population
    if config.init_prompt:
        ids = vocab.encode(config.init_prompt)
        if len(ids) < 2:
            raise ConfigError(f"the initial prompt {config.init_prompt!r} is {len(ids)} token(s); give at least 2")
        return torch.tensor(ids)[None].repeat(M, 1)
    population = vocab.random_prompts(M, config.length, generator)
    for i, start in enumerate(config.init_ids):
        if start:
            population[i] = torch.tensor(start)
    return population


def sampled_candidates(scorer: Scorer, config: EPOConfig, generator: torch.Generator) -> torch.Tensor:
    """SAMPLES_PER_SLOT prompts per slot that the model writes itself (`proposals.model_text`)."""
    count = SAMPLES_PER_SLOT * config.population
    return model_text(scorer.logprobs_after, scorer.vocab, count, config.length, generator)


def beam_candidates(
    scorer: Scorer, config: EPOConfig, generator: torch.Generator, score: Score, select: Select
) -> torch.Tensor:
    """A beam search on the objective, token by token from an empty prompt (as BEAST and ADAPT do): every
    prefix kept is extended by TOKENS_PER_BEAM tokens drawn from the model's top-p next-token distribution,
    the extensions are scored, and each slot keeps the BEAMS_PER_SLOT best under its own λ (`select`);
    the full-length extensions are the candidates."""
    M, allowed = config.population, scorer.vocab.allowed
    beams = torch.zeros(1, 0, dtype=torch.long)
    for length in range(1, config.length + 1):
        logprobs = scorer.logprobs_after(beams)
        row = torch.arange(len(beams)).repeat_interleave(TOKENS_PER_BEAM * (M if length == 1 else 1))
        new = sample_tokens(logprobs, allowed, generator, rows=row)
        candidates = torch.unique(torch.cat([beams[row], new[:, None]], 1), dim=0)
        if length in (1, config.length):  # one token has no cross-entropy of its own yet; the last are the candidates
            beams = candidates
            continue
        f, ce = score(candidates)
        scores = select(candidates, f, ce)  # [M, candidates]
        top = scores.topk(min(BEAMS_PER_SLOT, len(candidates)), 1)
        keep = top.indices[top.values > -torch.inf].unique()
        beams = candidates[keep] if len(keep) else candidates
    return beams
