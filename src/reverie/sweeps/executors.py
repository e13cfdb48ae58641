"""Running a sweep's jobs: one job to the end (`run_job`, which answers with an outcome dict and raises
only KeyboardInterrupt), the bookkeeping both executors share (`Tracker`: counts, failure records,
retries, a throttled index; the `SweepEvent`s it sends), and the executors: `run_local` (this
process, the model loaded once), `run_together` (the same, several jobs at once with their passes
batched) and `run_ray` (one actor per slot, each loading the model once).
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError, ReverieError
from ..evidence.windows import AUTO
from ..files import write_json
from ..lm.model import Model, load_model
from ..runs.rundir import CHECKPOINT, finished
from ..scoring import Lockstep
from ..search.config import EPOConfig
from .index import write_index
from .specs import Job

NO_CORPUS = "none"  # a sweep's corpus=None as sweep.json and the jobs keep it (paths there are absolute)

# ---------------------------------------------------------------- one job (in this process or in an actor)


def run_job(
    model: Model,
    job: Job,
    config: EPOConfig,
    out: Path,
    checkpoint_every: int = 5,
    on_iteration: Callable[[int], None] | None = None,
    report: bool = False,
    starts=None,
    lockstep: Lockstep | None = None,
) -> dict:
    """Run one job to the end: skip it if finished, resume it from its checkpoint, or start it afresh;
    then write its report.html if asked (a report that fails loses nothing: the run is saved). With a
    `lockstep`, its passes run together with those of the jobs in the other threads that share it.
    Returns an outcome dict (ok, seconds | error, retryable, traceback); raises only KeyboardInterrupt."""
    from ..runs.dream import dream, resume

    path = job.path(out)
    if finished(path):
        return {"ok": True, "seconds": 0.0, "skipped": True}
    callback = None if on_iteration is None else (lambda step: on_iteration(step.iteration))
    try:
        if (path / CHECKPOINT).exists():
            result = resume(
                path,
                model=model,
                target=job.target,
                iters=config.iters,
                callback=callback,
                checkpoint_every=checkpoint_every,
                lockstep=lockstep,
            )
        else:
            if path.exists():
                shutil.rmtree(path)  # started, never checkpointed: nothing to keep
            result = dream(
                model,
                job.target,
                replace(config, seed=job.seed),
                out=path,
                callback=callback,
                checkpoint_every=checkpoint_every,
                corpus=AUTO if starts is None else None if starts == NO_CORPUS else starts,
                lockstep=lockstep,
            )
    except Exception as e:  # any failure is recorded, the sweep goes on
        error = str(e) if isinstance(e, ReverieError) else f"{type(e).__name__}: {e}"
        return {
            "ok": False,
            "error": error,
            "retryable": not isinstance(e, ReverieError),
            "traceback": _portable_traceback(e),
        }
    if result.stopped == "interrupted":
        raise KeyboardInterrupt
    if report:
        try:
            from ..report.run import write_report

            write_report(path, model=model, target=job.target)
        except Exception as e:
            return {"ok": True, "seconds": result.seconds, "report_error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "seconds": result.seconds}


def _portable_traceback(e: BaseException) -> str:
    """The traceback of `e` without this machine's folders (it is saved in the sweep folder, which may be
    shared): reverie's files as reverie/..., installed packages' from their package folder on, others
    by file name. Line numbers, functions and source lines stay."""
    root = Path(__file__).resolve().parents[2]  # the folder holding the reverie package

    def short(name: str) -> str:
        path = Path(name)
        if path.resolve().is_relative_to(root):
            return str(path.resolve().relative_to(root))
        for marker in ("site-packages", "dist-packages"):
            if marker in path.parts:
                return str(Path(*path.parts[path.parts.index(marker) + 1 :]))
        return path.name

    frames = traceback.extract_tb(e.__traceback__)
    for frame in frames:
        frame.filename = short(frame.filename)
    return "".join(
        ["Traceback (most recent call last):\n", *frames.format(), *traceback.format_exception_only(type(e), e)]
    )


class _Dreamer:
    """A Ray actor: loads the model once, then runs the jobs the driver hands it."""

    def __init__(self, model: str, dtype: str | None, device: str | None, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = load_model(model, dtype=dtype, device=device)
        self.now: tuple | None = None

    def run(self, job: Job, config: EPOConfig, out: str, checkpoint_every: int, report: bool, starts) -> dict:
        self.now = (job, 0)
        try:
            return run_job(
                self.model,
                job,
                config,
                Path(out),
                checkpoint_every,
                lambda it: setattr(self, "now", (job, it)),
                report,
                starts,
            )
        finally:
            self.now = None

    def progress(self) -> tuple | None:
        return self.now


# ---------------------------------------------------------------- bookkeeping and progress


@dataclass
class SweepEvent:
    """What a sweep's `progress` callback sees. kind: "loading", "start", "job" (an attempt starts),
    "iteration", "retry", "done", "failed", "end". `error`: why an attempt failed (or, on "done", why
    its report could not be written)."""

    kind: str
    total: int
    done: int
    failed: int
    job: Job | None = None
    iteration: int | None = None
    iters: int | None = None
    attempt: int = 1
    error: str | None = None


class Tracker:
    """Counts, failure records, retries and a throttled index, shared by both executors."""

    def __init__(self, out: Path, jobs: list[Job], config: EPOConfig, retries: int, progress, meta: dict):
        self.out, self.jobs, self.iters, self.retries, self.meta = out, jobs, config.iters, retries, meta
        self.progress = progress or (lambda event: None)
        self.done = sum(finished(j.path(out)) is not None for j in jobs)
        self.failed, self.written = 0, time.monotonic()

    def emit(self, kind: str, job: Job | None = None, **kw) -> None:
        self.progress(SweepEvent(kind, len(self.jobs), self.done, self.failed, job, iters=self.iters, **kw))

    def begin(self, job: Job, attempt: int) -> None:
        job.failed_path(self.out).unlink(missing_ok=True)
        self.emit("job", job, attempt=attempt)

    def end(self, job: Job, attempt: int, outcome: dict) -> bool:
        """Record an attempt's outcome; True if the job should be tried again."""
        if outcome["ok"]:
            self.done += 1
            self.emit("done", job, attempt=attempt, error=outcome.get("report_error"))
        elif outcome.get("retryable") and attempt <= self.retries:
            self.emit("retry", job, attempt=attempt, error=outcome["error"])
            return True
        else:
            self.failed += 1
            data = {
                "target": job.spec,
                "seed": job.seed,
                "attempts": attempt,
                "error": outcome["error"],
                "traceback": outcome.get("traceback"),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            job.failed_path(self.out).parent.mkdir(parents=True, exist_ok=True)
            write_json(job.failed_path(self.out), data)
            self.emit("failed", job, attempt=attempt, error=outcome["error"])
        if time.monotonic() - self.written > 30:
            write_index(self.out, self.jobs, self.meta)
            self.written = time.monotonic()
        return False


def run_local(
    model: Model, todo: list[Job], tracker: Tracker, config: EPOConfig, checkpoint_every: int, report: bool, starts
) -> None:
    for job in todo:
        for attempt in itertools.count(1):
            tracker.begin(job, attempt)

            def on_iteration(it: int, job: Job = job) -> None:
                tracker.emit("iteration", job, iteration=it)

            outcome = run_job(model, job, config, tracker.out, checkpoint_every, on_iteration, report, starts)
            if not tracker.end(job, attempt, outcome):
                break


def run_together(
    model: Model,
    todo: list[Job],
    tracker: Tracker,
    config: EPOConfig,
    checkpoint_every: int,
    report: bool,
    starts,
    together: int,
) -> None:
    """Like `run_local`, `together` jobs at a time, each in its own thread, their passes batched
    (`scoring.Lockstep`): a thread that finishes a job takes the next one."""
    threads = min(together, len(todo))
    lockstep, queue, lock = Lockstep(expected=threads), deque(todo), threading.Lock()
    interrupted = threading.Event()

    def worker() -> None:
        try:
            work()
        finally:
            lockstep.leave()  # a thread that found no job left counts as arrived

    def work() -> None:
        while not interrupted.is_set():
            with lock:
                if not queue:
                    return
                job = queue.popleft()
            for attempt in itertools.count(1):
                with lock:
                    tracker.begin(job, attempt)

                def on_iteration(it: int, job: Job = job) -> None:
                    with lock:
                        tracker.emit("iteration", job, iteration=it)

                try:
                    outcome = run_job(
                        model, job, config, tracker.out, checkpoint_every, on_iteration, report, starts, lockstep
                    )
                except KeyboardInterrupt:  # the sweep was stopped: each run is saved at its last iteration
                    interrupted.set()
                    lockstep.stop()  # the jobs of the other threads stop too
                    return
                with lock:
                    again = tracker.end(job, attempt, outcome)
                if not again:
                    break

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    try:
        for thread in workers:
            while thread.is_alive():
                thread.join(0.2)  # a short wait, so that Ctrl-C reaches this thread
    except KeyboardInterrupt:
        interrupted.set()
        lockstep.stop()
        for thread in workers:
            thread.join()
        raise
    if interrupted.is_set():
        raise KeyboardInterrupt


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs Ray: pip install 'reverie[ray]'") from None
    return ray


def run_ray(
    model: str,
    dtype: str | None,
    device: str | None,
    todo: list[Job],
    tracker: Tracker,
    config: EPOConfig,
    checkpoint_every: int,
    report: bool,
    address: str | None,
    actors: int | None,
    cpus_per_actor: float,
    gpus_per_actor: float | None,
    starts,
) -> None:
    """One actor per slot loads the model once; the driver hands out jobs as actors free up."""
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    pool: list = []
    try:
        resources = ray.cluster_resources()
        gpus = (1.0 if resources.get("GPU", 0) else 0.0) if gpus_per_actor is None else gpus_per_actor
        slots = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus_per_actor)
        n = max(1, min(actors or slots, len(todo)))
        remote = ray.remote(_Dreamer).options(num_cpus=cpus_per_actor, num_gpus=gpus, max_concurrency=2)
        spawn = lambda: remote.remote(model, dtype, device, max(1, int(cpus_per_actor)))  # noqa: E731
        pool = [spawn() for _ in range(n)]
        try:
            ray.get([a.progress.remote() for a in pool])  # each has loaded the model
        except RayError as e:
            lines = [ln for ln in str(e).splitlines() if "Error" in ln]
            raise ModelError(f"the Ray workers could not load {model}: {lines[-1].strip() if lines else e}") from None
        queue, idle = deque((job, 1) for job in todo), list(pool)
        busy: dict[Any, tuple[Any, Job, int]] = {}  # a job's result (a Ray ref) -> (actor, job, attempt)
        while queue or busy:
            while queue and idle:
                actor, (job, attempt) = idle.pop(), queue.popleft()
                tracker.begin(job, attempt)
                busy[actor.run.remote(job, config, str(tracker.out), checkpoint_every, report, starts)] = (
                    actor,
                    job,
                    attempt,
                )
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=1.0)
            if not ready:  # ask busy actors which iteration they are on; best-effort
                try:
                    for now in ray.get([a.progress.remote() for a, _, _ in busy.values()], timeout=2.0):
                        if now is not None:
                            tracker.emit("iteration", now[0], iteration=now[1])
                except RayError:
                    pass
            for ref in ready:
                actor, job, attempt = busy.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError as e:  # the worker died (killed, out of memory, node lost): a failed attempt
                    outcome = {"ok": False, "retryable": True, "error": f"Ray worker died: {str(e).strip()[:500]}"}
                    pool.remove(actor)
                    ray.kill(actor)
                    actor = spawn()
                    pool.append(actor)
                except RayError as e:
                    outcome = {"ok": False, "retryable": True, "error": f"{type(e).__name__}: {str(e)[:500]}"}
                idle.append(actor)
                if tracker.end(job, attempt, outcome):
                    queue.append((job, attempt + 1))
    finally:
        for actor in pool:
            ray.kill(actor)
        if started:
            ray.shutdown()
