"""Scoring with a memo: every distinct prompt goes through the model once per run (a resumed run
rebuilds the memo from its history)."""

from __future__ import annotations

import math

import torch

from ..scoring import Scorer
from .edits import PAD, lengths
from .history import History


class Memo:
    """`memo(ids, parents, parent, pos)`: f and CE of each row [B, n] (PAD-padded rows of several lengths
    allowed). Children (given their parents, parent index and mutated position) run only from the mutated
    position on; prompts failing a constraint get f = −∞ and CE NaN (never computed, never selected).

    Where the scorer's children's cross-entropies are approximate (`Scorer.approximates`: a horizon),
    the memo knows which are: `exact` scores those again in full (the children selection keeps, and the
    `contenders` no exact score dominates), and `recorded` gives the history NaN for the others (never
    on a frontier). A run's history then holds only the model's own values; a resumed run scores the
    children it left out again."""

    def __init__(self, scorer: Scorer, history: History):
        self.scorer, self.vocab = scorer, scorer.vocab
        self.seen: dict[tuple[int, ...], tuple[float, float]] = {
            k: (f, ce) for k, f, ce in history.items() if not (math.isnan(ce) and math.isfinite(f))
        }
        self.approximate: set[tuple[int, ...]] = set()  # prompts whose CE in `seen` is approximate
        self.front = torch.empty(0, 2)  # the exact scores' Pareto frontier: (CE, f) rows, CE ascending
        self.tracks_front = scorer.approximates  # only an approximating run asks for `contenders`
        if self.tracks_front and self.seen:
            self.extend_front(*torch.tensor(list(self.seen.values())).T)

    def __call__(
        self,
        ids: torch.Tensor,
        parents: torch.Tensor | None = None,
        parent: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = prompt_keys(ids)
        first: dict[tuple[int, ...], int] = {}
        for j, k in enumerate(keys):
            if k not in self.seen and k not in first:
                first[k] = j
        if first:
            rows = torch.tensor(list(first.values()))
            f, ce = torch.full((len(rows),), -torch.inf), torch.full((len(rows),), torch.nan)
            ok = self.vocab.ok(ids[rows])
            if ok.any():
                rows_ok = rows[ok]
                f[ok], ce[ok], approximate = self.through_model(
                    ids[rows_ok],
                    parents,
                    None if parent is None else parent[rows_ok],
                    None if pos is None else pos[rows_ok],
                )
                if approximate:
                    self.approximate.update(k for k, good in zip(first, ok.tolist()) if good)
                elif self.tracks_front:
                    self.extend_front(f, ce)
            self.seen.update(zip(first, zip(f.tolist(), ce.tolist())))
        fs, ces = zip(*(self.seen[k] for k in keys))
        return torch.tensor(fs), torch.tensor(ces)

    def exact(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f and CE of each row, those whose CE is approximate scored again in full first."""
        keys = prompt_keys(ids)
        again = list(dict.fromkeys(k for k in keys if k in self.approximate))
        for length in sorted({len(k) for k in again}):
            group = [k for k in again if len(k) == length]
            f, ce = self.scorer.score(torch.tensor(group))
            self.seen.update(zip(group, zip(f.tolist(), ce.tolist())))
            self.approximate.difference_update(group)
            self.extend_front(f, ce)
        return torch.tensor([self.seen[k][0] for k in keys]), torch.tensor([self.seen[k][1] for k in keys])

    def contenders(self, f: torch.Tensor, ce: torch.Tensor, limit: int) -> torch.Tensor:
        """The rows (at most `limit`, the most activating) whose (f, CE) no exact score dominates (f' ≥ f
        and CE' ≤ CE): the approximate children that may belong on the frontier."""
        ok = torch.isfinite(f) & torch.isfinite(ce)
        if len(self.front):
            at = torch.searchsorted(self.front[:, 0].contiguous(), ce.clamp_min(-1e30), right=True) - 1
            best = self.front[at.clamp_min(0), 1].where(at >= 0, -torch.inf)
            ok &= f > best
        rows = ok.nonzero()[:, 0]
        return rows[f[rows].argsort(descending=True)[:limit]]

    def extend_front(self, f: torch.Tensor, ce: torch.Tensor) -> None:
        """Add exact scores to the frontier `contenders` compares with."""
        points = torch.cat([self.front, torch.stack([ce.float(), f.float()], 1)])
        points = points[torch.isfinite(points).all(1)]
        points = points[torch.argsort(points[:, 1], descending=True, stable=True)]
        points = points[torch.argsort(points[:, 0], stable=True)]  # CE ascending, f descending among ties
        running = torch.cat([points.new_full((1,), -torch.inf), points[:, 1].cummax(0).values[:-1]])
        self.front = points[points[:, 1] > running]

    def recorded(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f and CE of each row as the history keeps them: CE NaN where it is approximate."""
        keys = prompt_keys(ids)
        fs, ces = zip(*((self.seen[k][0], math.nan if k in self.approximate else self.seen[k][1]) for k in keys))
        return torch.tensor(fs), torch.tensor(ces)

    def through_model(self, ids: torch.Tensor, parents, parent, pos) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The model's f and CE of new prompts, and whether the CEs are approximate: children over their
        parents' prefix where they have them, prompts of several lengths one length at a time."""
        if (ids == PAD).any():
            n = lengths(ids)
            f, ce = torch.empty(len(ids)), torch.empty(len(ids))
            for length in n.unique().tolist():
                same = (n == length).nonzero()[:, 0]
                f[same], ce[same] = self.scorer.score(ids[same, :length])
            return f, ce, False
        if parents is None or parent is None or pos is None or (parents == PAD).any():
            return *self.scorer.score(ids), False
        return *self.scorer.score_children(parents, ids, parent, pos), self.scorer.approximates


def prompt_keys(ids: torch.Tensor) -> list[tuple[int, ...]]:
    """Each row's tokens without padding: the memo's key of a prompt."""
    return [tuple(t for t in r if t != PAD) for r in ids.tolist()]
