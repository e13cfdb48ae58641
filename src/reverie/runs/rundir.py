"""A run directory: what a user needs to open, share and resume a dream.

    config.json              model, target, EPO options, reverie version
    history.parquet          every scored prompt (written when the run stops)
    history/part-*.parquet   rows since the last consolidation, one file per checkpoint
    checkpoint.safetensors   population, scores, random state after the last checkpointed iteration
    frontier.json            the Pareto frontier (written when the run stops)
    windows.parquet          the target's best dataset windows, where the run had some (its starts, its report)
    .lock                    held by the process writing the run (removed when it stops)

Every file is written to a temporary name and renamed into place, so a crash (kill -9 included)
never leaves a half-written file; rows beyond the checkpoint's iteration are ignored on load. One
process at a time writes a run directory (`RunDir.writing`); every JSON file is strict (no NaN).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigError, RunDirError
from ..files import atomic_write, locked, read_json, write_json
from ..search.config import EPOConfig
from ..search.epo import EPOState
from ..search.frontier import pareto
from ..search.history import COLUMNS, History

CONFIG, HISTORY, PARTS, CHECKPOINT, FRONTIER, WINDOWS = (
    "config.json",
    "history.parquet",
    "history",
    "checkpoint.safetensors",
    "frontier.json",
    "windows.parquet",
)
REQUIRED = ("model", "target", "epo")  # what config.json must hold for resume and load_run


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
            raise RunDirError(
                f"{self.path} already holds a run: pass --resume {self.path} to continue it, or choose another --out"
            )
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunDirError(
                f"cannot write to run directory {self.path} ({existing} is not a writable folder): choose another --out"
            )

    def create(self, config: dict) -> None:
        self.check_writable()
        try:
            (self.path / PARTS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                f"cannot write to run directory {self.path} ({e.strerror}): choose another --out"
            ) from None
        self.write_json(CONFIG, {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the directory's lock while the block runs: a second process writing the same run (a second
        resume, say) is refused with one line naming the holder's process id."""
        with locked(self.path, "reverie process", "wait for it to finish, or stop it, then resume this run"):
            yield

    def write_json(self, name: str, data) -> None:
        try:
            write_json(self.path / name, data)
        except OSError as e:
            raise self._write_error(name, e) from None

    def _write_error(self, what: str, e: OSError) -> RunDirError:
        """One line for a write that failed (disk full, folder gone): what happened, and where a resume restarts."""
        start = (
            f"from its last checkpoint (iteration {self.checkpointed})"
            if self.checkpointed >= 0
            else "from the start (nothing was checkpointed)"
        )
        return RunDirError(
            f"could not write {what} in {self.path} ({e.strerror or e}): the run stopped; free some "
            f"space, then resume it (--resume {self.path}) and it continues {start}"
        )

    def checkpoint(self, state: EPOState, history: History, decode) -> None:
        """Rows since the last checkpoint go to a new part file, then the state (atomically, in that order).
        A failed write (disk full) leaves the previous checkpoint as it was and raises RunDirError."""
        try:
            self._write_checkpoint(state, history, decode)
        except OSError as e:
            raise self._write_error(f"the checkpoint of iteration {state.iteration}", e) from None
        self.checkpointed = state.iteration

    def _write_checkpoint(self, state: EPOState, history: History, decode) -> None:
        rows = history.frame(decode, since=self.checkpointed)
        rows = rows[rows["iteration"] <= state.iteration]
        if len(rows):
            _write_parquet(rows, self.path / PARTS / f"part-{state.iteration:07d}.parquet")
        tensors = {
            "population": state.population.contiguous(),
            "f": state.f.contiguous(),
            "ce": state.ce.contiguous(),
            "rng": state.rng.contiguous(),
        }
        atomic_write(
            self.path / CHECKPOINT,
            lambda tmp: save_file(
                tensors, tmp, metadata={"iteration": str(state.iteration), "stale": str(state.stale)}
            ),
        )

    def finish(self, history: pd.DataFrame, summary: dict) -> None:
        """Consolidate every row into history.parquet, drop the parts (and any half-written part a killed
        process left), write the frontier."""
        try:
            _write_parquet(history, self.path / HISTORY)
        except OSError as e:
            raise self._write_error(HISTORY, e) from None
        for part in [*(self.path / PARTS).glob("part-*.parquet"), *(self.path / PARTS).glob(".part-*.parquet.*")]:
            part.unlink()
        front = pareto(history)
        self.write_json(
            FRONTIER,
            {
                **summary,
                "frontier": [
                    {
                        "text": r.text,
                        "ids": [int(i) for i in r.ids],
                        "activation": float(r.activation),
                        "cross_entropy": float(r.cross_entropy),
                        "iteration": int(r.iteration),
                    }
                    for r in front.itertuples()
                ],
            },
        )

    def write_windows(self, windows: pd.DataFrame) -> None:
        frame = windows.assign(ids=[list(map(int, i)) for i in windows["ids"]])
        try:
            atomic_write(self.path / WINDOWS, lambda tmp: frame.to_parquet(tmp, index=False))
        except OSError as e:
            raise self._write_error(WINDOWS, e) from None

    # ---------------------------------------------------------------- reading
    def windows(self) -> pd.DataFrame | None:
        """The dataset windows kept with the run, or None if it has none."""
        return _read_parquet(self.path / WINDOWS) if (self.path / WINDOWS).exists() else None

    def epo_config(self, saved: dict | None = None) -> EPOConfig:
        """The run's EPO options, from its config.json (or `saved`, the config already read)."""
        saved = self.config() if saved is None else saved
        try:
            return EPOConfig.from_dict(saved["epo"])
        except ConfigError as e:
            raise RunDirError(
                f"{self.path / CONFIG} holds EPO options reverie cannot read ({e}): "
                "restore it from a copy, or dream again in a new --out"
            ) from None

    def config(self) -> dict:
        path = self.path / CONFIG
        if not path.exists():
            raise RunDirError(f"{self.path} is not a reverie run directory (no {CONFIG})")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path} is unreadable ({e})") from None
        missing = [k for k in REQUIRED if not isinstance(config, dict) or k not in config]
        if missing or not isinstance(config["epo"], dict):
            raise RunDirError(
                f"{path} is incomplete (no {', '.join(missing) or 'EPO options'}): "
                "restore it from a copy, or dream again in a new --out"
            )
        return config

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
            raise RunDirError(
                f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete it to restart the run from scratch"
            ) from None
        wrong = state_problem(state, self.config()["epo"])
        if wrong:
            raise RunDirError(
                f"checkpoint {path} does not hold a run's state ({wrong}); delete it to restart the run from scratch"
            )
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


def state_problem(state: EPOState, epo: dict) -> str | None:
    """What is wrong with a checkpoint's tensors, given the run's EPO options (config.json), or None:
    population [M, n] integer token ids (n the prompt length, or within the length bounds of a run that
    inserts and deletes; -1 pads), f and ce [M] floats, ce never negative (NaN: not scored), rng bytes.
    f's values are not judged: a target may itself give NaN or inf, and the checkpoint keeps what the run
    computed."""
    import torch

    pop, f, ce, rng = state.population, state.f, state.ce, state.rng
    if pop.dim() != 2 or pop.dtype not in (torch.int64, torch.int32) or pop.shape[0] == 0:
        return f"population is {pop.dtype} {list(pop.shape)}, not integer token ids [slots, tokens]"
    m, n = pop.shape
    if isinstance(epo.get("population"), int) and m != epo["population"]:
        return f"population has {m} prompts but the run's population is {epo['population']}"
    if bool((pop < -1).any()):
        return "population holds negative token ids"
    length, variable = epo.get("length"), bool(epo.get("insert_rate") or epo.get("delete_rate"))
    longest = (
        epo.get("max_length")
        if epo.get("max_length") is not None
        else (length + 4 if isinstance(length, int) else None)
    )
    if isinstance(length, int) and not epo.get("init_prompt"):
        if not variable and n != length:
            return f"population prompts are {n} tokens but the run's length is {length}"
        if variable and isinstance(longest, int) and n > longest:
            return f"population prompts are {n} tokens, past the run's longest prompt ({longest})"
    for name, t in (("f", f), ("ce", ce)):
        if t.dim() != 1 or not t.is_floating_point() or len(t) != m:
            return f"{name} is {t.dtype} {list(t.shape)}, not {m} floats (one per prompt)"
    if bool((ce < -1e-3).any()):
        return "ce holds negative cross-entropies"
    if rng.dim() != 1 or rng.dtype != torch.uint8:
        return f"rng is {rng.dtype} {list(rng.shape)}, not a random generator's state (bytes)"
    return None


def finished(path: Path) -> dict | None:
    """The frontier.json of a run that reached its last iteration, else None."""
    info = read_json(path / FRONTIER)
    return info if info is not None and info.get("stopped") == "done" else None
