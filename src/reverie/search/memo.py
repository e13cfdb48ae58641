"""Scoring with a memo: every distinct prompt goes through the model once per run (a resumed run
rebuilds the memo from its history)."""

from __future__ import annotations

import torch

from ..scoring import Scorer
from .edits import PAD, lengths
from .history import History


class Memo:
    """`memo(ids, parents, parent, pos)`: f and CE of each row [B, n] (PAD-padded rows of several lengths
    allowed). Children (given their parents, parent index and mutated position) run only from the mutated
    position on; prompts failing a constraint get f = −∞ and CE NaN (never computed, never selected)."""

    def __init__(self, scorer: Scorer, history: History):
        self.scorer, self.vocab = scorer, scorer.vocab
        self.seen: dict[tuple[int, ...], tuple[float, float]] = {k: (f, ce) for k, f, ce in history.items()}

    def __call__(
        self,
        ids: torch.Tensor,
        parents: torch.Tensor | None = None,
        parent: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [tuple(t for t in r if t != PAD) for r in ids.tolist()]
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
                f[ok], ce[ok] = self.through_model(
                    ids[rows_ok],
                    parents,
                    None if parent is None else parent[rows_ok],
                    None if pos is None else pos[rows_ok],
                )
            self.seen.update(zip(first, zip(f.tolist(), ce.tolist())))
        fs, ces = zip(*(self.seen[k] for k in keys))
        return torch.tensor(fs), torch.tensor(ces)

    def through_model(self, ids: torch.Tensor, parents, parent, pos) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's f and CE of new prompts: children over their parents' prefix where they have them,
        prompts of several lengths one length at a time."""
        if (ids == PAD).any():
            n = lengths(ids)
            f, ce = torch.empty(len(ids)), torch.empty(len(ids))
            for length in n.unique().tolist():
                same = (n == length).nonzero()[:, 0]
                f[same], ce[same] = self.scorer.score(ids[same, :length])
            return f, ce
        if parents is None or parent is None or pos is None or (parents == PAD).any():
            return self.scorer.score(ids)
        return self.scorer.score_children(parents, ids, parent, pos)
