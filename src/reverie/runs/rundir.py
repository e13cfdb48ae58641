"""A run directory: what a user needs to open, share and resume a dream.

    config.json              model, target, EPO options, reverie version
    history.parquet          every scored prompt (written when the run stops)
    history/part-*.parquet   rows since the last consolidation, one file per checkpoint
    checkpoint.safetensors   population, scores, random state after the last checkpointed iteration
    frontier.json            the Pareto frontier (written when the run stops)

Every file is written to a temporary name and renamed into place, so a crash (kill -9 included)
never leaves a half-written file; rows beyond the checkpoint's iteration are ignored on load.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..search.epo import EPOState
from ..errors import RunDirError
from ..files import atomic_write, read_json
from ..search.frontier import pareto
from ..search.history import COLUMNS, History

CONFIG, HISTORY, PARTS, CHECKPOINT, FRONTIER = (
    "config.json", "history.parquet", "history", "checkpoint.safetensors", "frontier.json")


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.assign(ids=[list(map(int, i)) for i in frame["ids"]])
    table = pa.Table.from_pandas(frame[COLUMNS], preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise RunDirError(f"{path} is unreadable ({e}); delete it to drop those rows") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpointed = -1  # last iteration whose rows are on disk

    # ---------------------------------------------------------------- writing
    def check_writable(self) -> None:
        """Fail with one line if the directory cannot be created or written, or already holds a run.
        Creates nothing."""
        if (self.path / CONFIG).exists():
            raise RunDirError(f"{self.path} already holds a run: pass --resume {self.path} to continue it, "
                              "or choose another --out")
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot write to run directory {self.path} ({existing} is not a writable folder): "
                              "choose another --out")

    def create(self, config: dict) -> None:
        self.check_writable()
        try:
            (self.path / PARTS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot write to run directory {self.path} ({e.strerror}): choose another --out") from None
        self.write_json(CONFIG, {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def write_json(self, name: str, data) -> None:
        text = json.dumps(data, indent=2, default=str)
        atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(text))

    def checkpoint(self, state: EPOState, history: History, decode) -> None:
        """Rows since the last checkpoint go to a new part file, then the state (atomically, in that order)."""
        rows = history.frame(decode, since=self.checkpointed)
        rows = rows[rows["iteration"] <= state.iteration]
        if len(rows):
            _write_parquet(rows, self.path / PARTS / f"part-{state.iteration:07d}.parquet")
        tensors = {"population": state.population.contiguous(), "f": state.f.contiguous(),
                   "ce": state.ce.contiguous(), "rng": state.rng.contiguous()}
        atomic_write(self.path / CHECKPOINT,
                lambda tmp: save_file(tensors, tmp, metadata={"iteration": str(state.iteration), "stale": str(state.stale)}))
        self.checkpointed = state.iteration

    def finish(self, history: pd.DataFrame, summary: dict) -> None:
        """Consolidate every row into history.parquet, drop the parts (and any half-written part a killed
        process left), write the frontier."""
        _write_parquet(history, self.path / HISTORY)
        for part in [*(self.path / PARTS).glob("part-*.parquet"), *(self.path / PARTS).glob(".part-*.parquet.*")]:
            part.unlink()
        front = pareto(history)
        self.write_json(FRONTIER, {**summary, "frontier": [
            {"text": r.text, "ids": [int(i) for i in r.ids], "activation": float(r.activation),
             "cross_entropy": float(r.cross_entropy), "iteration": int(r.iteration)}
            for r in front.itertuples()]})

    # ---------------------------------------------------------------- reading
    def config(self) -> dict:
        path = self.path / CONFIG
        if not path.exists():
            raise RunDirError(f"{self.path} is not a reverie run directory (no {CONFIG})")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path} is unreadable ({e})") from None

    def state(self) -> EPOState | None:
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                iteration = int(fh.metadata()["iteration"])
                stale = int(fh.metadata().get("stale", 0))
            state = EPOState(iteration, tensors["population"], tensors["f"], tensors["ce"], tensors["rng"], stale)
        except (OSError, SafetensorError, KeyError, ValueError, TypeError) as e:
            raise RunDirError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                              "delete it to restart the run from scratch") from None
        self.checkpointed = iteration
        return state

    def history(self, upto: int | None = None) -> pd.DataFrame:
        """All rows on disk (consolidated + parts), optionally only up to an iteration."""
        frames, last = [], -1
        if (self.path / HISTORY).exists():
            frames.append(_read_parquet(self.path / HISTORY))
            last = int(frames[0]["iteration"].max()) if len(frames[0]) else -1
        for part in sorted((self.path / PARTS).glob("part-*.parquet")):
            frame = _read_parquet(part)
            frames.append(frame[frame["iteration"] > last])
        if not frames:
            return History().frame(lambda ids: [])
        df = pd.concat(frames, ignore_index=True)
        if upto is not None:
            df = df[df["iteration"] <= upto].reset_index(drop=True)
        return df


def finished(path: Path) -> dict | None:
    """The frontier.json of a run that reached its last iteration, else None."""
    info = read_json(path / FRONTIER)
    return info if info is not None and info.get("stopped") == "done" else None
