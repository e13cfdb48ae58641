"""What `reverie dream` runs, settled before the model loads: `plan_run(...) -> RunPlan`, a new dream or
the resume of a run directory; `RunPlan.run(model)` runs it.

`plan_run` makes every check that needs no model (a missing target, a malformed spec, a corpus that
does not exist, an occupied or unwritable --out, a run directory that cannot be resumed), so bad input
is one ReverieError line before anything loads. A resume takes the run directory's model, target and
EPO options (with the iteration count and time budget given), and its dtype and output options unless
given. The modules that import torch are imported on use, after those checks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ReverieError
from ..lm.targets import Target, parse_target
from ..search.config import EPOConfig, as_config

if TYPE_CHECKING:
    from ..evidence.features import IndexConfig
    from ..evidence.windows import Progress
    from ..lm.model import Model
    from ..search.epo import Step
    from .dream import DreamResult


@dataclass(frozen=True)
class RunPlan:
    """A checked dream: a new run of `target` under `config` into `run_dir`, or (`resume`) the run in
    `run_dir` continued from its last checkpoint."""

    run_dir: Path
    model: str  # the model spec to load
    target: Target | str  # a new run's target, parsed once; a resume's saved spec (resume parses it with the model)
    config: EPOConfig  # a new run's; a resume's saved options with the iteration count and time budget given
    resume: bool
    dtype: str | None  # for load_model: as given, else a resume's saved dtype
    report: bool  # write report.html at the end: as given, else yes (a resume: as the run was started)
    faces: int  # K distinct dreams (runs/diverse.py) in run_dir/face0..K-1; 1: one dream in run_dir
    corpus: str | None  # where a new run's real text comes from (evidence/windows.py); None: the model alone
    index: IndexConfig | None  # the feature index to use or build for the corpus (None: the whole corpus's)
    checkpoint_every: int

    def run(
        self,
        model: Model,
        *,
        callback: Callable[[Step], bool | None] | None = None,
        notice: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ) -> list[DreamResult]:
        """Run the plan on the loaded model: [the dream], or the faces of diverse dreams (runs/diverse.py)."""
        from .diverse import diverse
        from .dream import dream, resume

        if self.resume:
            return [
                resume(
                    self.run_dir,
                    model=model,
                    iters=self.config.iters,
                    time_budget=self.config.time_budget,
                    callback=callback,
                    checkpoint_every=self.checkpoint_every,
                )
            ]
        starting: dict[str, Any] = dict(
            out=self.run_dir,
            callback=callback,
            checkpoint_every=self.checkpoint_every,
            corpus=self.corpus,
            notice=notice,
            progress=progress,
            index=self.index,
            options={"report": self.report},  # kept with the run: a resume writes the same outputs
        )
        if self.faces > 1:
            return diverse(model, self.target, self.config, k=self.faces, **starting)
        return [dream(model, self.target, self.config, **starting)]


def plan_run(
    target: str | None = None,
    config: EPOConfig | None = None,
    *,
    resume: str | Path | None = None,
    iters: int | None = None,
    time_budget: float | None = None,
    out: str | Path | None = None,
    model: str = "bundled",
    dtype: str | None = None,
    report: bool | None = None,
    faces: int = 1,
    corpus: str = "auto",
    no_corpus: bool = False,
    index_tokens: int | None = None,
    checkpoint_every: int = 5,
) -> RunPlan:
    """The plan of a new dream of `target` under `config` (default: EPOConfig()) into `out` (default:
    runs/<target>-<time>), or, given `resume`, of that run directory continued: its own model, target
    and EPO options, with `iters` (None: the run's) and `time_budget` (None: none); `target`, `config`,
    `out`, `model` and the start options are not read then. `faces` > 1: diverse dreams. `no_corpus`:
    no real text, and the population starts from a beam search where `config` says "data"."""
    corpus_source = _corpus(corpus, no_corpus)
    if resume is None and target is None:
        raise ReverieError("give --target (e.g. --target neuron:L9.N402), or --resume RUN_DIR")
    if faces < 1:
        raise ReverieError(f"--diverse takes the number of distinct dreams, K >= 1 (got {faces})")
    if resume is not None:
        return _resumed(Path(resume), iters, time_budget, dtype, report, faces, checkpoint_every)
    assert target is not None  # (checked above)
    config = as_config(config)
    if corpus_source is None and config.starts == "data":
        config = replace(config, starts="beam")
    parsed = parse_target(target, config.ban_strings)  # a bad spec fails before anything loads
    from ..evidence.features import IndexConfig  # imports torch: after the checks that need nothing loaded
    from .rundir import RunDir

    run_dir = Path(out) if out is not None else _default_out(target)
    RunDir(run_dir).check_writable()
    return RunPlan(
        run_dir,
        model,
        parsed,
        config,
        resume=False,
        dtype=dtype,
        report=True if report is None else report,
        faces=faces,
        corpus=corpus_source,
        index=None if index_tokens is None else IndexConfig(max_tokens=index_tokens),
        checkpoint_every=checkpoint_every,
    )


def _corpus(corpus: str, no_corpus: bool) -> str | None:
    """The corpus source to dream from (None with `no_corpus`), checked."""
    if no_corpus:
        if corpus != "auto":
            raise ReverieError("--no-corpus dreams from the model alone: drop --corpus (or --no-corpus)")
        return None
    if corpus not in ("auto", "bundled") and not corpus.startswith("hf:") and not Path(corpus).exists():
        raise ReverieError(
            f"--corpus {corpus} does not exist: give a text file, a folder, .jsonl, .parquet, hf:NAME, "
            "'bundled', 'auto' or a `reverie scan` folder"
        )
    return corpus


def _resumed(
    path: Path,
    iters: int | None,
    time_budget: float | None,
    dtype: str | None,
    report: bool | None,
    faces: int,
    checkpoint_every: int,
) -> RunPlan:
    if faces > 1:
        raise ReverieError("rerun the same --diverse command with the same --out to continue diverse dreams")
    from .rundir import RunDir  # imports torch: after the checks that need nothing loaded

    run_dir = RunDir(path)
    saved = run_dir.config()
    run_dir.state()  # an unreadable checkpoint fails here, before the model loads
    original = run_dir.epo_config(saved)
    return RunPlan(
        path,
        saved["model"],
        saved["target"],
        replace(original, iters=original.iters if iters is None else iters, time_budget=time_budget),
        resume=True,
        dtype=dtype or saved.get("dtype"),
        report=(saved.get("options") or {}).get("report", True) if report is None else report,
        faces=1,
        corpus=None,  # the run keeps its windows (windows.parquet)
        index=None,
        checkpoint_every=checkpoint_every,
    )


def _default_out(target: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", target).strip("-")[:40] or "run"
    return Path("runs") / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
