"""Sweeps: dream many targets x seeds, in this process or on a Ray cluster, resumably, with one index.

    DIR/sweep.json                               model, dtype, EPO options (seed aside), targets, seeds
    DIR/runs/<target-slug>/seed<k>/              one run directory per (target, seed) job (rundir.py)
    DIR/runs/<target-slug>/seed<k>.failed.json   the error of a job that failed every attempt
    DIR/index.parquet, DIR/index.html            one row per target, its seeds merged into one frontier

A job's state lives on disk only: done when its frontier.json says the run finished, resumed from its
checkpoint when it has one, otherwise started from scratch. Rerunning a killed sweep therefore skips
finished jobs (never rewriting them) and resumes the rest; the index is always rebuilt from the runs.
The jobs themselves run in executors.py (this process or Ray); this module checks, claims and locks the folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError, RunDirError
from ..evidence.windows import AUTO
from ..files import LOCK, read_json, write_json
from ..files import locked as lock_folder
from ..lm.model import BUNDLED, Model, bundled_path, dtype_name, load_model
from ..runs.rundir import finished
from ..search.config import EPOConfig
from ..version import __version__
from .executors import NO_CORPUS, SweepEvent, Tracker, import_ray, run_job, run_local, run_ray, run_together
from .index import write_index
from .specs import expand_targets, make_jobs, parse_seeds

__all__ = ["sweep", "SweepEvent", "run_job", "locked", "layer_count"]  # SweepEvent, run_job: from executors.py


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold DIR/.lock for the sweep: a second sweep process on the same folder is refused with one line
    instead of running the same jobs twice. Released when the process ends, however it ends."""
    with lock_folder(out, "sweep", "wait for it to finish, or use another --out"):
        yield


def _options(config: EPOConfig) -> dict:
    """The EPO options that make a sweep what it is (all but seed and batch size), as JSON holds them."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in ("seed", "batch_size")}))


def _claim(
    out: Path,
    model: str,
    dtype: str | None,
    config: EPOConfig,
    targets: list,
    seeds: list[int],
    starts: str | Path | None = None,
) -> dict:
    """Check DIR/sweep.json agrees with this sweep (model, dtype, EPO options but seed and batch size,
    starts), then (re)write it with this call's targets and seeds."""
    identity: dict[str, Any] = {"model": model, "dtype": dtype or "auto", "epo": _options(config), "starts": starts}
    old = read_json(out / "sweep.json")
    if old is not None:
        try:  # read back as a config: options added since take their defaults, values compare as this sweep's do
            old = {"starts": None, **old, "epo": _options(EPOConfig.from_dict(old.get("epo", {})))}
        except ConfigError as e:
            raise ConfigError(
                f"{out} holds a sweep whose EPO options cannot be read ({e}): use another --out"
            ) from None
        for key in ("model", "dtype", "epo", "starts"):
            if old.get(key) != identity[key]:
                what = (
                    key
                    if key != "epo"
                    else "EPO options ("
                    + ", ".join(
                        f"{k}: {old[key][k]!r} here, {v!r} now" for k, v in identity[key].items() if old[key][k] != v
                    )
                    + ")"
                )
                raise ConfigError(
                    f"{out} holds a sweep with different {what}; use the same options to continue it, or another --out"
                )
    elif out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise RunDirError(f"{out} exists and is not a sweep folder: choose another --out")
    meta = {
        **identity,
        "targets": [t if isinstance(t, str) else t.spec for t in targets],
        "seeds": seeds,
        "reverie": __version__,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        write_json(out / "sweep.json", meta)
    except OSError as e:
        raise RunDirError(f"cannot write to sweep folder {out} ({e.strerror}): choose another --out") from None
    return meta


def layer_count(model: str) -> int:
    """Layers of a model given by spec, from its config when possible (no weights loaded)."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(bundled_path()) if model == BUNDLED else model)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
    except Exception:  # bundled, .gguf, odd configs: load it
        return load_model(model, device="cpu").n_layers


def sweep(
    model: Model | str,
    targets,
    seeds: int | str | Iterable[int] = 0,
    out: str | Path = "sweep",
    config: EPOConfig | None = None,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1,
    gpus_per_actor: float | None = None,
    retries: int = 2,
    checkpoint_every: int = 5,
    report: bool = True,
    dtype: str | None = None,
    device: str | None = None,
    progress: Callable[[SweepEvent], None] | None = None,
    corpus: str | Path | None = AUTO,
    starts: str | Path | None = None,
    together: int = 1,
) -> pd.DataFrame:
    """Dream every target with every seed; return the index (one row per target) as a DataFrame.

    targets: specs as `expand_targets` takes them (a file, `neuron:L9.N0-63`, `neuron:L*.N5`, a list).
    seeds: `0-4`, `0,2,5`, one int, or a list. out: the sweep folder; calling again resumes it.
    executor: "local" (this process, the model loaded once) or "ray" (one actor per slot, each loading
    the model once; `ray_address` joins an existing cluster, None starts a local one). A failing job is
    tried `retries` more times (bad input such as a target the model lacks is not retried), then
    recorded as failed; the sweep goes on. `report` writes each run's report.html (attribution, plots)
    when it finishes. `progress` gets a `SweepEvent` as jobs start, iterate and end. `corpus`: where
    each dream's windows come from, as for `dream` ("auto"; None: the model alone; a `reverie scan`
    folder or a corpus must be one every node can read); `starts` is its old name. `together`: with the local executor,
    how many jobs run at once, their model passes batched into one (`scoring.Lockstep`; the packed
    scorer; each job's steps are those it takes alone, docs/design.md#lockstep).
    """
    corpus = corpus if starts is None else starts
    starts = NO_CORPUS if corpus is None else None if corpus == AUTO else corpus  # as sweep.json keeps it
    config = config or EPOConfig()
    if config.time_budget is not None:
        raise ConfigError("a sweep's runs have no time budget: give iterations (iters) instead")
    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r}: use 'local' or 'ray'")
    if retries < 0 or checkpoint_every < 1 or cpus_per_actor <= 0 or (actors is not None and actors < 1):
        raise ConfigError("need retries >= 0, checkpoint_every >= 1, cpus_per_actor > 0 and actors >= 1")
    if not isinstance(together, int) or together < 1:
        raise ConfigError(f"together must be a whole number of at least 1, not {together!r}")
    if together > 1 and (executor != "local" or config.scorer != "packed"):
        raise ConfigError("together > 1 needs the local executor and the packed scorer")
    if executor == "ray":
        import_ray()
    out = Path(out)
    progress = progress or (lambda event: None)
    loaded = model if isinstance(model, Model) else None
    spec = model.spec if isinstance(model, Model) else model
    if loaded is not None and dtype is None:
        dtype = dtype_name(loaded.dtype)

    def n_layers() -> int:
        nonlocal loaded
        if loaded is None and executor == "local":
            progress(SweepEvent("loading", 0, 0, 0))
            loaded = load_model(spec, dtype=dtype, device=device)
        return loaded.n_layers if loaded is not None else layer_count(spec)

    targets = expand_targets(targets, n_layers)
    seeds = parse_seeds(seeds)
    if starts not in (None, NO_CORPUS):
        from ..evidence.scan import read_scan
        from ..evidence.windows import is_scan

        if is_scan(starts):
            read_scan(starts)  # unreadable: fail now, not in every job
        starts = starts if str(starts) == "bundled" or str(starts).startswith("hf:") else str(Path(starts).resolve())
    with locked(out):  # one sweep process per folder
        meta = _claim(out, spec, dtype, config, targets, seeds, starts)
        jobs = make_jobs(targets, seeds)
        tracker = Tracker(out, jobs, config, retries, progress, meta)
        todo = [j for j in jobs if finished(j.path(out)) is None]
        try:
            if todo and executor == "local":
                n_layers()  # loads the model if not loaded yet
                assert loaded is not None
                tracker.emit("start")
                if together > 1:
                    run_together(loaded, todo, tracker, config, checkpoint_every, report, starts, together)
                else:
                    run_local(loaded, todo, tracker, config, checkpoint_every, report, starts)
            elif todo:
                tracker.emit("start")
                run_ray(
                    spec,
                    dtype,
                    device,
                    todo,
                    tracker,
                    config,
                    checkpoint_every,
                    report,
                    ray_address,
                    actors,
                    cpus_per_actor,
                    gpus_per_actor,
                    starts,
                )
        finally:
            index = write_index(out, jobs, meta)
            tracker.emit("end")
        return index
