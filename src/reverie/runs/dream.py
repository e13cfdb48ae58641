"""One call to make a model dream: `dream(model, target, config) -> DreamResult`.

Ties the pieces together — model, target, vocabulary, scorer, EPO loop — and, given `out`, keeps a
run directory (config, checkpoints, history, frontier) that `resume` continues after a crash.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..choices import StopReason
from ..errors import ConfigError, RunDirError
from ..evidence.features import IndexConfig
from ..evidence.scan import data_starts
from ..evidence.windows import AUTO, Progress, windows_for
from ..lm import memory
from ..lm.foreign import as_model
from ..lm.model import Model, dtype_name, load_model
from ..lm.targets import Target
from ..scoring import Lockstep, Scorer, make_scorer
from ..search.config import EPOConfig, as_config
from ..search.epo import EPO, EPOState, Step
from ..search.frontier import best_at, best_rows, pareto, summary
from ..search.history import History
from ..version import __version__
from .rundir import CONFIG, FRONTIER, RunDir


@dataclass
class DreamResult:
    """Everything one run scored, and where it stopped."""

    config: EPOConfig
    model: str
    target: str
    history: pd.DataFrame  # every scored prompt: iteration, slot, ids, text, activation, cross_entropy, kept
    state: EPOState | None
    stopped: StopReason  # "unfinished": loaded from a run directory without its final frontier
    seconds: float = math.nan
    run_dir: Path | None = None
    windows: pd.DataFrame | None = None  # the target's best dataset windows (started from, compared with)
    start: str = ""  # where the population started: the windows' source, or why none

    def frontier(self) -> pd.DataFrame:
        """The Pareto frontier: prompts no other prompt beats on both activation and cross-entropy."""
        return pareto(self.history)

    def best(self, max_ce: float = math.inf) -> pd.Series | None:
        """Highest-activation prompt with cross-entropy <= max_ce."""
        return best_at(self.history, max_ce)

    def summary(self) -> pd.DataFrame:
        return summary(self.history)

    @property
    def iterations(self) -> int:
        return 0 if self.state is None else self.state.iteration


def _check_every(checkpoint_every) -> None:
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be a whole number of at least 1, not {checkpoint_every!r}")


def _run(
    epo: EPO,
    model: Model,
    target: Target,
    run_dir: RunDir | None,
    callback,
    checkpoint_every: int,
    config_update: dict | None = None,
    windows: pd.DataFrame | None = None,
    origin: str = "",
) -> DreamResult:
    """Run `epo` to its end, checkpointing into `run_dir`; `config_update` (a resume's new config.json) is
    written after the first new iteration, so a resume that never starts changes nothing."""
    decode = epo.vocab.decode
    start = time.perf_counter()
    if run_dir is not None and run_dir.checkpointed < epo.state.iteration:
        run_dir.checkpoint(epo.state, epo.history, decode)

    def on_step(step: Step):
        nonlocal config_update
        if run_dir is not None and (step.iteration % checkpoint_every == 0 or step.iteration == epo.config.iters):
            run_dir.checkpoint(step.state, step.history, decode)
        if config_update is not None:
            assert run_dir is not None  # a resume's new config is for its run directory
            run_dir.write_json(CONFIG, config_update)
            config_update = None
        return callback(step) if callback is not None else None

    stopped = epo.run(on_step)
    seconds = time.perf_counter() - start
    history = epo.history.frame(decode)
    history = history[history["iteration"] <= epo.state.iteration].reset_index(drop=True)
    result = DreamResult(
        epo.config,
        model.spec,
        target.spec,
        history,
        epo.state,
        stopped,
        seconds,
        run_dir.path if run_dir else None,
        windows,
        origin,
    )
    if run_dir is not None:
        run_dir.checkpoint(epo.state, epo.history, decode)
        run_dir.finish(
            history,
            {
                "model": model.spec,
                "target": target.spec,
                "stopped": stopped,
                "iterations": epo.state.iteration,
                "seconds": round(seconds, 2),
                "best": best_rows(history),
            },
        )
    return result


def dream(
    model: Model | str = "bundled",
    target: Target | str | Callable = "neuron:L9.N402",
    config: EPOConfig | None = None,
    *,
    out: str | Path | None = None,
    callback: Callable[[Step], bool | None] | None = None,
    checkpoint_every: int = 5,
    dtype: str | None = None,
    device: str | None = None,
    corpus=AUTO,
    notice: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    index: IndexConfig | None = None,
    fluency_models: dict[str, Model] | None = None,
    options: dict | None = None,
    starts=None,
    lockstep: Lockstep | None = None,
) -> DreamResult:
    """Find short, fluent prompts that drive `target` high.

    model: a loaded `Model`, or a spec for `load_model` (hub id, folder, .gguf, "bundled").
    target: a spec string (`neuron:L9.N402`, `logit:" dog"`, ...), a `Target`, or a callable.
    out: a run directory to write (config, checkpoints, history, frontier); resumable with `resume`.
    callback: called after every iteration with a `Step`; return False to stop.
    corpus: where the target's best dataset windows come from (`evidence.windows.windows_for`): "auto"
        (the bundled corpus's feature index; built on first use for the bundled model), a corpus source,
        a `reverie scan` folder or its DataFrame, or None (no windows: the model alone). With
        `config.starts == "data"` (the default) half the slots start at the windows that suit their λ
        best and the others from a beam search; the windows are kept with the run and shown in its report.
    notice, progress: told of slow steps before they start (an index built on first use, a targeted
        scan) and of an index's progress (tokens done, tokens in all, seconds per token).
    index: the options of the feature index to use or build (default: one of the whole corpus).
    fluency_models: loaded models for the specs in `config.fluency` (others are loaded by spec).
    options: what the caller keeps with the run (JSON values; `reverie dream` keeps its output options
        here, so that `--resume` writes the same outputs): config.json's "options".
    starts: the old name of `corpus` for a scan's windows (deprecated).
    lockstep: dream together with the targets of other threads that share it, their passes batched
        (`scoring.Lockstep`; `sweep(..., together=K)` does this).
    """
    config = as_config(config)
    _check_every(checkpoint_every)
    if starts is not None:
        warnings.warn("dream(starts=...) is now dream(corpus=...)", DeprecationWarning, stacklevel=2)
        corpus = starts
    if isinstance(model, str):
        model = load_model(model, dtype=dtype, device=device)
    model = as_model(model)  # a TransformerLens or nnsight model is wrapped (lm.foreign)
    with _searching(model, target, config, fluency_models, lockstep) as scorer:
        target = scorer.target
        windows, start = windows_for(
            model, target, corpus, length=config.length, notice=notice, progress=progress, index=index
        )
        if config.starts == "data" and windows is not None and not config.init_ids and not config.init_prompt:
            config = replace(
                config, init_ids=data_starts(windows, config.slot_penalties(), scorer.vocab, config.length)
            )
            start = f"half the slots start from {start}, the others from a beam search"
        elif windows is not None:
            start = f"compared with {start}; the population starts as starts={config.starts!r} says"
        if notice is not None:
            notice(start)
        if out is None:
            return _run(
                EPO(scorer, config), model, target, None, callback, checkpoint_every, windows=windows, origin=start
            )
        run_dir = RunDir(out)
        with run_dir.writing():
            run_dir.create(
                {
                    "reverie": __version__,
                    "model": model.spec,
                    "dtype": dtype_name(model.dtype),
                    "target": target.spec,
                    "epo": config.to_dict(),
                    "start": start,
                    "options": dict(options or {}),
                }
            )
            if windows is not None:
                run_dir.write_windows(windows)
            return _run(
                EPO(scorer, config), model, target, run_dir, callback, checkpoint_every, windows=windows, origin=start
            )


def resume(
    out: str | Path,
    *,
    model: Model | None = None,
    target: Target | str | Callable | None = None,
    iters: int | None = None,
    time_budget: float | None = None,
    callback: Callable[[Step], bool | None] | None = None,
    checkpoint_every: int = 5,
    fluency_models: dict[str, Model] | None = None,
    lockstep: Lockstep | None = None,
) -> DreamResult:
    """Continue the run in `out` from its last checkpoint (after Ctrl-C, a crash or kill -9).

    `iters` may raise the iteration count of a finished run to extend it. One process at a time: a
    second resume of the same directory is refused (RunDirError) while the first runs."""
    _check_every(checkpoint_every)
    run_dir = RunDir(out)
    run_dir.config()  # not a run directory: fail before locking (creating) anything in it
    with run_dir.writing():
        saved = run_dir.config()
        state = run_dir.state()  # an unreadable checkpoint fails here, before the model loads
        original = run_dir.epo_config(saved)
        config = replace(original, iters=original.iters if iters is None else iters, time_budget=time_budget)
        if target is None:
            if any(mark in saved["target"] for mark in ("custom:", "<array>", "<SAE>")):  # (or a part of it)
                raise RunDirError(
                    f"{out} dreamed a Python-only target ({saved['target']}): resume it from Python "
                    "with reverie.resume(dir, target=...)"
                )
            target = saved["target"]
        if model is None:
            model = load_model(saved["model"], dtype=saved.get("dtype"))
        model = as_model(model)
        with _searching(model, target, config, fluency_models, lockstep) as scorer:
            target = scorer.target
            if state is not None and int(state.population.max()) >= model.adapter.embed_weight.shape[0]:
                raise RunDirError(
                    f"{run_dir.path / 'checkpoint.safetensors'} holds token ids past {model.spec}'s "
                    "vocabulary: resume with the run's model, or delete it to restart the run"
                )
            history = History()
            if state is not None:
                history.extend(run_dir.history(upto=state.iteration))
            update = {**saved, "epo": config.to_dict()} if config.iters != original.iters else None
            epo = EPO(scorer, config, history, state)
            return _run(
                epo,
                model,
                target,
                run_dir,
                callback,
                checkpoint_every,
                update,
                run_dir.windows(),
                saved.get("start", ""),
            )


def _check_memory(model: Model, scorer, config: EPOConfig) -> None:
    """Refuse, before any work, a dream that will not fit in the memory left on the model's device."""
    need = memory.estimate(
        model, config.population, config.length, scorer.batch_size, children=config.children, device=model.device
    )
    memory.check(need, model.device)


@contextlib.contextmanager
def _searching(model: Model, target, config: EPOConfig, fluency_models, lockstep: Lockstep | None) -> Iterator[Scorer]:
    """A dream's scorer, its memory checked; with a lockstep, the thread leaves it when the block ends, however
    it ends (the targets dreamed together then stop waiting for this one)."""
    try:
        scorer = make_scorer(model, target, config, fluency_models=fluency_models, lockstep=lockstep)
        _check_memory(model, scorer, config)
        yield scorer
    finally:
        if lockstep is not None:
            lockstep.leave()


def load_run(path: str | Path) -> DreamResult:
    """Read a run directory (finished or not) without loading the model."""
    run_dir = RunDir(path)
    saved = run_dir.config()
    state = run_dir.state()
    history = run_dir.history(upto=state.iteration if state else None)
    stopped: StopReason = "done" if (run_dir.path / FRONTIER).exists() else "unfinished"
    return DreamResult(
        run_dir.epo_config(saved),
        saved["model"],
        saved["target"],
        history,
        state,
        stopped,
        run_dir=run_dir.path,
        windows=run_dir.windows(),
        start=saved.get("start", ""),
    )
