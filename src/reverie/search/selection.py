"""What selection maximises: L_λ = f − λ·CE per slot, with the configured penalties on f and the junk
surcharge on CE (docs/design.md#epo), and step 4 of the loop, each slot keeping the best of parents ∪
children under its own λ."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..lm.vocab import Vocabulary
from .config import EPOConfig
from .edits import PAD, lengths, trim

JUNK_ALLOWANCE = 0.25  # the junk share the surcharge forgives: the 75th percentile of random 12-token windows of
#   the bundled corpus (docs/performance.md#readable-by-default)


def penalised(f: torch.Tensor, ce: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """L_λ for every (penalty, prompt) pair: [len(penalties), len(f)]. A prompt that failed a constraint
    (f = −∞; its cross-entropy was never computed) scores −∞ under every penalty."""
    return (f[None, :] - penalties[:, None] * ce[None, :]).masked_fill(f.isneginf()[None, :], -torch.inf)


def repeats(ids: torch.Tensor) -> torch.Tensor:
    """[rows, n] bool: token j equals some token i < j of its prompt (padding never counts)."""
    real = ids != PAD
    same = (ids[:, :, None] == ids[:, None, :]) & real[:, :, None]
    return same.triu(1).any(1) & real


@dataclass
class Survivors:
    """Step 4's outcome: the new population, which children were kept, and whether any slot improved."""

    population: torch.Tensor
    f: torch.Tensor
    ce: torch.Tensor
    kept: torch.Tensor  # [children] bool
    improved: bool


class Selection:
    """`selection(ids, f, ce, penalties)`: the score selection maximises, [len(penalties), len(ids)]."""

    def __init__(self, config: EPOConfig, vocab: Vocabulary):
        self.config, self.vocab = config, vocab

    def __call__(self, ids: torch.Tensor, f: torch.Tensor, ce: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """L_λ with f less the configured penalties and CE plus the junk surcharge (each 0 unless configured)."""
        return penalised(f - self.penalty(ids), ce + self.junk(ids), penalties)

    def penalty(self, ids: torch.Tensor) -> torch.Tensor:
        """What selection subtracts from f besides λ·CE: ρ · the fraction of tokens that repeat an earlier
        token, plus the avoid penalty · the fraction of tokens from earlier dreams (0 unless configured)."""
        c, out = self.config, torch.zeros(len(ids))
        real, n = ids != PAD, lengths(ids)
        if c.repetition_penalty:
            out += c.repetition_penalty * (repeats(ids) & real).sum(1) / n
        if c.avoid_penalty and c.avoid_ids:
            out += c.avoid_penalty * torch.isin(ids, torch.tensor(c.avoid_ids)).sum(1) / n
        return out

    def junk(self, ids: torch.Tensor) -> torch.Tensor:
        """What selection adds to CE: γ (junk_penalty, nats) · how far the prompt's junk share — tokens with no
        letter (digits, punctuation, symbols) or repeating an earlier token — exceeds JUNK_ALLOWANCE, the
        share of a typical stretch of real text. Predictable junk then earns no fluency credit; the CE that
        is recorded and reported stays the model's own."""
        gamma, letters = self.config.junk_penalty, self.vocab.letters
        if not gamma or letters is None:
            return torch.zeros(len(ids))
        real = ids != PAD
        junk = (~letters[ids.clamp(0, len(letters) - 1)] | repeats(ids)) & real
        return gamma * (junk.sum(1) / lengths(ids) - JUNK_ALLOWANCE).clamp(min=0)

    def survivors(
        self,
        population: torch.Tensor,
        f: torch.Tensor,
        ce: torch.Tensor,
        children: torch.Tensor,
        f_child: torch.Tensor,
        ce_child: torch.Tensor,
        penalties: torch.Tensor,
    ) -> Survivors:
        """Each slot takes the best of parents ∪ children under its own λ, with replacement; a slot with
        nothing valid keeps its parent."""
        M, width = len(population), max(population.shape[1], children.shape[1])
        pool = torch.cat([F.pad(t, (0, width - t.shape[1]), value=PAD) for t in (population, children)])
        f_pool, ce_pool = torch.cat([f, f_child]), torch.cat([ce, ce_child])
        score = self(pool, f_pool, ce_pool, penalties)  # [M, M + M·r]
        best = score.argmax(1)
        stuck = torch.isinf(score.max(1).values)
        best[stuck] = torch.arange(M)[stuck]
        kept = torch.zeros(len(children), dtype=torch.bool)
        kept[best[best >= M] - M] = True
        own = torch.arange(M)
        improved = bool((score[own, best] > score[own, own] + 1e-6).any())
        return Survivors(trim(pool[best]), f_pool[best], ce_pool[best], kept, improved)
