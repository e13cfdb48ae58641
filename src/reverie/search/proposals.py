"""Proposals from the model itself (docs/design.md#proposals-from-the-model): tokens and starting prompts
that the model finds likely, for a search that stays fluent without a corpus.

- `sample_tokens`: tokens drawn from next-token distributions (top-p, over the allowed tokens);
- `lm_swaps`: children whose new token comes from the model rather than from the gradient
  (`EPOConfig.lm_children`, as BEAST draws its candidates; Sadasivan et al. 2024);
- `model_text`: prompts the model writes itself, sampled token by token after a paragraph break (or the
  template's text before the prompt), for starts without a corpus (`EPOConfig.starts = "sampled"`);
- `pair_edits`: children that swap a token and set the next one to the model's continuation of it
  (`EPOConfig.pair_rate`), so that a word the gradient wants but that takes two tokens can appear in one
  step (the paper's named local minimum).

The model's passes are the scorer's (`Scorer.logprobs_after`, `continuations`, `next_token_logprobs`).

The gradient ranks tokens by what they would do to L_λ; the model's own distribution ranks them by how
natural they are where they go. The gradient's list at a position is mostly tokens the model finds absurd
there, which is where a search from random starts stalls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..lm.vocab import Vocabulary
from ..scoring import Scorer
from .edits import Children, lengths, unpad

TOP_P = 0.95  # nucleus of the next-token distribution that LM proposals draw from...
NUCLEUS_MAX = 2048  # ...among at most this many most likely tokens


def sample_tokens(
    logprobs: torch.Tensor,
    allowed: torch.Tensor,
    generator: torch.Generator,
    top_p: float = TOP_P,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens drawn from next-token log-probabilities over the allowed tokens [R, A]: from the smallest
    set of most likely tokens whose probability reaches `top_p` of the allowed tokens' mass (at most
    NUCLEUS_MAX of them). One draw per row, or one per entry of `rows` (the row each draw uses)."""
    rows = torch.arange(len(logprobs)) if rows is None else rows
    if not len(rows):
        return torch.zeros(0, dtype=torch.long)
    lp = logprobs.float()
    values, order = (lp - lp.logsumexp(-1, keepdim=True)).topk(min(NUCLEUS_MAX, lp.shape[-1]), -1)  # sorted
    p = values.exp()
    p = p.masked_fill(p.cumsum(-1) - p >= top_p, 0.0)  # tokens after the nucleus is full
    pick = torch.multinomial(p[rows], 1, generator=generator)[:, 0]
    return allowed[order[rows, pick]]


def model_text(
    logprobs_after: Callable[[torch.Tensor], torch.Tensor],
    vocab: Vocabulary,
    count: int,
    length: int,
    generator: torch.Generator,
    top_p: float = TOP_P,
) -> torch.Tensor:
    """`count` prompts of `length` allowed tokens that the model writes itself: [count, length] ids.

    Each is sampled token by token (top-p over the allowed tokens) from `logprobs_after` (a scorer's:
    after the template's text before the prompt, or a paragraph break), and must round-trip through the
    tokenizer like every prompt; rows that do not are sampled again (a few rounds), and any still missing
    are random prompts."""
    out: list[torch.Tensor] = []
    for _ in range(4):
        need = count - len(out)
        if need <= 0:
            break
        prompts = torch.zeros(need + need // 2 + 1, 0, dtype=torch.long)
        for _ in range(length):
            logprobs = logprobs_after(prompts)
            prompts = torch.cat([prompts, sample_tokens(logprobs, vocab.allowed, generator, top_p)[:, None]], 1)
        out += list(prompts[vocab.ok(prompts)][:need])
    if len(out) < count:
        out += list(vocab.random_prompts(count - len(out), length, generator))
    return torch.stack(out[:count])


def lm_swaps(
    scorer: Scorer, population: torch.Tensor, children: Children, rate: float, generator: torch.Generator
) -> Children:
    """A fraction `rate` of the swap children take as their new token one drawn from the model's
    next-token distribution at the mutated position (top-p, `sample_tokens`) rather than from the
    gradient's list; positions without context (the first, outside a template) keep the gradient's token.
    Draws: one uniform per child, then one token per chosen child."""
    ids, parent, pos = children
    chosen = drawn_swaps(population, children, rate, generator).nonzero()[:, 0]
    logprobs = scorer.next_token_logprobs(unpad(population))
    has_context = [not logprobs[p][q, 0].isnan() for p, q in zip(parent[chosen].tolist(), pos[chosen].tolist())]
    chosen = chosen[torch.tensor(has_context, dtype=torch.bool)]
    where, row = torch.unique(torch.stack([parent[chosen], pos[chosen]], 1), dim=0, return_inverse=True)
    ids = ids.clone()
    if len(where):  # one nucleus per (parent, position), one draw per child
        distributions = torch.stack([logprobs[p][q] for p, q in where.tolist()])
        ids[chosen, pos[chosen]] = sample_tokens(distributions, scorer.vocab.allowed, generator, rows=row)
    return Children(ids, parent, pos)


def pair_edits(
    scorer: Scorer, population: torch.Tensor, children: Children, rate: float, generator: torch.Generator
) -> Children:
    """A fraction `rate` of the swap children (not at the last position) also replace the token after the
    swapped one with the model's most likely continuation (`Scorer.continuations`). Draws: one uniform
    per child."""
    ids, parent, pos = children
    n = lengths(ids)
    chosen = (drawn_swaps(population, children, rate, generator) & (pos < n - 1)).nonzero()[:, 0]
    ids = ids.clone()
    for length in n[chosen].unique().tolist():  # prompts of one length at a time
        same = chosen[n[chosen] == length]
        ids[same, pos[same] + 1] = scorer.continuations(ids[same, :length], pos[same])
    return Children(ids, parent, pos)


def drawn_swaps(population: torch.Tensor, children: Children, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Bool per child: a swap (not an insertion or deletion) drawn with probability `rate` (one uniform per child)."""
    swaps = lengths(children.ids) == lengths(population)[children.parent]
    return (torch.rand(len(children.ids), generator=generator) < rate) & swaps
