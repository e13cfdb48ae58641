"""Scoring prompts: the one seam between the search and the model.

A `Scorer` answers these questions about prompts (token ids) for one model, target and objective
(docs/design.md#scorers); every model pass of the search goes through one:

    score(ids)                                  -> (f, CE) per prompt
    score_children(parents, children, parent, pos) -> (f, CE) per child; child j equals
                                                   parents[parent[j]] before position pos[j]
                                                   (CE approximate where `approximates`: a horizon)
    gradient_parts(ids)                         -> (d f, d CE) with respect to the one-hot tokens,
                                                   over the allowed tokens: [B, n, A] each
    top_k(prompts, penalties, k, beta)          -> per prompt, the k allowed tokens per position whose
                                                   swap most increases L_λ = f − λ·CE (with β > 0, plus
                                                   β·σ·log p(token | prefix)): [n, k] ids
    next_token_logprobs(prompts)                -> per prompt, log p(v | the prompt before position j)
                                                   over the allowed tokens: [n, A] (NaN: no context)
    logprobs_after(prompts)                     -> log p(v | the text before + prompt) of the token after
                                                   each prompt, over the allowed tokens: [B, A]
    continuations(prompts, positions)           -> the most likely allowed token after each prompt's
                                                   first positions[j] + 1 tokens: [B] ids
    approximates                                -> whether score_children's CEs are approximate
                                                   (docs/design.md#cross-entropy-horizon)

`make_scorer` builds one: `PlainScorer` (plain.py) is the paper's algorithm written plainly, the spec;
`PackedScorer` (packed.py) is the fast path, tested to take the same steps. Either is wrapped in
`BackingOff` (batching.py), which halves the batch and retries when a pass runs out of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ..choices import SCORER_NAMES, ScorerName
from ..errors import ConfigError
from ..lm.foreign import as_model
from ..lm.model import Model, dtype_name, load_model
from ..lm.targets import Target, as_target
from ..lm.vocab import Vocabulary
from .batching import BackingOff, auto_batch_size
from .lockstep import Lockstep
from .objective import Objective, TargetCache
from .options import HasScoringOptions, ScoringOptions, VocabularyOptions
from .packed import PackedScorer
from .plain import PlainScorer

SCORERS = {cls.name: cls for cls in (PackedScorer, PlainScorer)}  # by the names in choices.SCORER_NAMES


class Scorer(Protocol):
    model: Model
    target: Target
    vocab: Vocabulary
    objective: Objective
    batch_size: int

    @property
    def approximates(self) -> bool: ...

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def score_children(
        self, parents: torch.Tensor, children: torch.Tensor, parent: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def gradient_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def top_k(
        self, prompts: list[torch.Tensor], penalties: torch.Tensor, k: int, beta: float = 0.0
    ) -> list[torch.Tensor]: ...

    def next_token_logprobs(self, prompts: list[torch.Tensor]) -> list[torch.Tensor]: ...

    def logprobs_after(self, prompts: torch.Tensor) -> torch.Tensor: ...

    def continuations(self, prompts: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


def make_scorer(
    model: Model,
    target: Target | str | Callable,
    config: ScoringOptions | HasScoringOptions,
    *,
    scorer: ScorerName | None = None,
    fluency_models: dict[str, Model] | None = None,
    lockstep: Lockstep | None = None,
) -> Scorer:
    """A Scorer for `target` on `model`, from its `ScoringOptions` or an `EPOConfig` (whose `scoring()`
    gives them: its vocabulary options, template, fluency models, prompt length, batch size and scorer).
    `scorer` ("packed" or "plain") overrides the options'; `fluency_models` are loaded models for the
    specs in the fluency option (the others are loaded by spec). With a `lockstep`, the scorer's passes
    run there with those of the other targets dreamed together (packed scorer only; lockstep.py)."""
    options = config if isinstance(config, ScoringOptions) else config.scoring()
    model = as_model(model)  # a TransformerLens or nnsight model is wrapped (lm.foreign)
    name = scorer or options.scorer
    if name not in SCORER_NAMES:
        raise ConfigError(f"unknown scorer {name!r}: use one of {', '.join(SCORER_NAMES)}")
    words = options.vocabulary
    target = as_target(target, model, ban=words.ban_strings)
    length = prompt_length(model, options)
    target.check_length(length)
    vocab = Vocabulary.for_model(
        model,
        ascii_only=words.ascii_only,
        banned_tokens=words.ban_tokens,
        banned_strings=words.ban_strings + tuple(target.banned_text),
        check_retokenization=words.check_retokenization,
        word_start=words.word_start,
    )
    objective = Objective(
        model, target, vocab, template=options.template, fluency=fluency(model, options.fluency, fluency_models)
    )
    longest = max(length, options.longest or length)
    model.check_length(len(objective.before) + longest + len(objective.after))
    batch_size = options.batch_size or auto_batch_size(model, length)
    if options.horizon is not None and (name != "packed" or lockstep is not None):
        raise ConfigError(
            "the cross-entropy horizon is the packed scorer's, one target at a time: drop ce_horizon, "
            "scorer='plain' or together"
        )
    if lockstep is not None:
        if name != "packed":
            raise ConfigError("targets dreamed together need the packed scorer: drop scorer='plain'")
        return BackingOff(lockstep.member(objective, batch_size))
    if name == "packed":
        return BackingOff(PackedScorer(objective, batch_size, options.horizon))
    return BackingOff(SCORERS[name](objective, batch_size))


def prompt_length(model: Model, options: ScoringOptions) -> int:
    """The length of the prompts a scorer scores (the initial prompt's, if there is one)."""
    if options.init_prompt:
        return len(model.tokenizer(options.init_prompt, add_special_tokens=False)["input_ids"])
    return options.length


def fluency(model: Model, specs, loaded: dict[str, Model] | None) -> list[tuple[Model | None, float]] | None:
    """The fluency models of (spec, weight) pairs: None for the target model ("self" or its spec), else
    the model given in `loaded` or loaded by spec like the target model."""
    if not specs:
        return None
    loaded = dict(loaded or {})
    out: list[tuple[Model | None, float]] = []
    for spec, weight in specs:
        if spec in ("self", model.spec):
            out.append((None, weight))
            continue
        if spec not in loaded:
            loaded[spec] = load_model(spec, dtype=dtype_name(model.dtype), device=str(model.device))
        out.append((loaded[spec], weight))
    return out


__all__ = [
    "Scorer",
    "make_scorer",
    "PlainScorer",
    "PackedScorer",
    "BackingOff",
    "Lockstep",
    "Objective",
    "TargetCache",
    "auto_batch_size",
    "SCORERS",
    "ScoringOptions",
    "VocabularyOptions",
]
