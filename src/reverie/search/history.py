"""Every prompt EPO scored, in the order it was scored.

One row per candidate: iteration (0 = the initial population), slot (the population slot of the
parent, or of the initial member), token ids, target value f ("activation"), cross-entropy, and
whether selection kept it. Rows are appended one iteration at a time and become a pandas DataFrame
(with the decoded text) on demand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

COLUMNS = ["iteration", "slot", "ids", "text", "activation", "cross_entropy", "kept"]


class History:
    def __init__(self) -> None:
        self._chunks: list[dict[str, Any]] = []  # column -> array of one iteration's rows; "ids": a list of arrays
        self._frames: list[pd.DataFrame] = []  # rows loaded from disk (already decoded)

    def add(
        self,
        iteration: int,
        slot: torch.Tensor,
        ids: torch.Tensor,
        f: torch.Tensor,
        ce: torch.Tensor,
        kept: torch.Tensor,
    ) -> None:
        rows = ids.numpy().astype(np.int32)
        self._chunks.append(
            {
                "iteration": np.full(len(rows), iteration, dtype=np.int32),
                "slot": slot.numpy().astype(np.int16),
                "ids": [r[r >= 0] for r in rows] if (rows < 0).any() else list(rows),  # -1 pads shorter prompts
                "activation": f.numpy().astype(np.float32),
                "cross_entropy": ce.numpy().astype(np.float32),
                "kept": kept.numpy().astype(bool),
            }
        )

    def extend(self, frame: pd.DataFrame) -> None:
        """Rows read back from a run directory."""
        self._frames.append(frame[COLUMNS])

    def __len__(self) -> int:
        return sum(len(c["ids"]) for c in self._chunks) + sum(len(f) for f in self._frames)

    def items(self):
        """(ids tuple, f, ce) for every row: used to rebuild the memo of scored prompts."""
        for frame in self._frames:
            yield from zip(
                (tuple(np.asarray(i).tolist()) for i in frame["ids"]),
                frame["activation"].tolist(),
                frame["cross_entropy"].tolist(),
            )
        for c in self._chunks:
            yield from zip((tuple(r.tolist()) for r in c["ids"]), c["activation"].tolist(), c["cross_entropy"].tolist())

    def frame(self, decode, since: int = -1) -> pd.DataFrame:
        """Rows with iteration > `since` as a DataFrame; `decode` maps a list of id arrays to texts."""
        parts = [f[f["iteration"] > since] for f in self._frames]
        chunks = [c for c in self._chunks if c["iteration"][0] > since] if self._chunks else []
        if chunks:
            ids = [r for c in chunks for r in c["ids"]]
            new = pd.DataFrame({k: np.concatenate([c[k] for c in chunks]) for k in COLUMNS if k not in ("ids", "text")})
            new.insert(2, "ids", list(ids))
            new.insert(3, "text", decode(ids))
            parts.append(new[COLUMNS])
        if not parts:
            return pd.DataFrame(
                {
                    k: pd.Series(dtype=t)
                    for k, t in zip(COLUMNS, ["int32", "int16", "object", "object", "float32", "float32", "bool"])
                }
            )
        return pd.concat(parts, ignore_index=True)
