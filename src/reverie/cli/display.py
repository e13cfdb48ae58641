"""What the command line shows while it works: the live population of a dream, a sweep's progress,
and frontier tables (rich)."""

from __future__ import annotations

import math
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
out_console = Console(markup=False, highlight=False)  # what it prints holds model text: data, not markup


def shown(text: str) -> str:
    """Model text as the terminal shows it: quoted, newlines as ⏎, other control characters escaped
    (a missing text, NaN in a frame, as –)."""
    if not isinstance(text, str):
        return "–"
    return repr(text.replace("\r\n", "⏎").replace("\n", "⏎"))


def frontier_table(rows, title: str, penalties=None) -> Table:
    """Rows of (activation, cross-entropy, text). Model text and the title are data, never rich markup."""
    table = Table(title=Text(title), title_justify="left", expand=False)
    if penalties is not None:
        table.add_column("λ", justify="right")
    table.add_column("cross-entropy", justify="right")
    table.add_column("activation", justify="right")
    table.add_column("text", overflow="fold")
    for i, (act, ce, text) in enumerate(rows):
        cells: list[RenderableType] = [
            f"{ce:.2f}" if math.isfinite(ce) else "–",
            f"{act:.3f}" if math.isfinite(act) else "rejected",
            Text(shown(text)),
        ]
        if penalties is not None:
            cells.insert(0, f"{float(penalties[i]):.2f}")
        table.add_row(*cells)
    return table


class LiveDisplay:
    """Per-iteration callback: a progress bar and the current population (λ, cross-entropy, activation, text)."""

    def __init__(self, tokenizer, total: int, enabled: bool = True):
        self.tokenizer, self.enabled = tokenizer, enabled
        self.progress = Progress(
            TextColumn("[bold]dreaming"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("iterations"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[rate]}"),
            console=console,
        )
        self.task = self.progress.add_task("dream", total=total, rate="")
        self.live = Live(console=console, refresh_per_second=4) if enabled else None
        self.started = False

    def __call__(self, step) -> None:
        if not self.enabled:
            return
        assert self.live is not None  # enabled
        if not self.started:
            self.live.start()
            self.started = True
        self.progress.update(self.task, completed=step.iteration, rate=f"{step.seconds:.2f} s/it")
        ids = [[t for t in r if t >= 0] for r in step.state.population.tolist()]  # -1 pads shorter prompts
        texts = self.tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
        rows = list(zip(step.state.f.tolist(), step.state.ce.tolist(), texts))
        self.live.update(Group(self.progress, frontier_table(rows, "current population", step.penalties)))

    def stop(self) -> None:
        if self.started and self.live is not None:
            self.live.stop()


class SweepDisplay:
    """Sweep progress callback: one bar for the sweep (done / failed / left, ETA), one line per running job."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.jobs: dict[Any, TaskID] = {}  # (spec, seed) of each running job -> its line
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.sweep: TaskID | None = None

    def __call__(self, e) -> None:
        if e.kind == "loading":
            console.print("[dim]loading model …[/dim]") if self.enabled else None
            return
        if self.sweep is None and e.kind != "end":
            self.progress.start()
            self.sweep = self.progress.add_task("[bold]sweep", total=e.total, completed=e.done, note="")
        if self.sweep is None:
            return
        self.progress.update(
            self.sweep,
            completed=e.done + e.failed,
            note=f"{e.done} done · {e.failed} failed · {e.total - e.done - e.failed} left",
        )
        key = (e.job.spec, e.job.seed) if e.job is not None else None
        if e.kind == "job" and key not in self.jobs:
            self.jobs[key] = self.progress.add_task(f"  {e.job}", total=e.iters, note="iterations")
        elif e.kind == "iteration" and key in self.jobs:
            self.progress.update(self.jobs[key], completed=e.iteration)
        elif e.kind in ("done", "failed", "retry") and key in self.jobs:
            self.progress.remove_task(self.jobs.pop(key))
            if e.error:
                what = {"done": "no report:", "retry": "retrying after", "failed": "failed:"}[e.kind]
                self.progress.console.print(f"{e.job}: {what} {e.error}", soft_wrap=True, markup=False, highlight=False)

    def stop(self) -> None:
        if self.sweep is not None:
            self.progress.stop()


class IndexProgress:
    """The progress callback of a feature index's pass: one bar, with the time it should take in all
    (from the seconds per token so far), gone when the pass ends."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.task: TaskID | None = None
        self.progress = Progress(
            TextColumn("[bold]indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=True,
            disable=not enabled,
        )

    def __call__(self, done: int, total: int, seconds_per_token: float) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("index", total=total, completed=done, note="")
        note = "" if math.isnan(seconds_per_token) else f"about {total * seconds_per_token / 60:.1f} min in all"
        self.progress.update(self.task, completed=done, note=note)
        if done >= total:
            self.progress.stop()


def versus_table(versus: dict, windows) -> Table:
    """The best real text beside the best dream at a cross-entropy no higher than its own, and the next
    best windows: the paper's comparison, in the terminal. Text is data, never markup."""
    margin = versus["margin"]
    verdict = (
        "no dream is as fluent as the best window yet"
        if math.isnan(margin)
        else f"the dream {'beats' if margin > 0 else 'does not beat'} the best window by {margin:+.3f} "
        f"at equal fluency; {versus['windows_above']} of {versus['windows']} windows beat every dream as fluent"
    )
    table = Table(title=Text(f"dreams against real text: {verdict}"), title_justify="left", expand=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("", "left"),
        ("cross-entropy", "right"),
        ("activation", "right"),
        ("text", "left"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    if not math.isnan(margin):
        table.add_row(
            "best dream",
            f"{versus['dream_cross_entropy']:.2f}",
            f"{versus['dream_activation']:.3f}",
            Text(shown(versus["dream_text"])),
        )
    top = windows.sort_values("activation", ascending=False).head(3)
    for i, w in enumerate(top.itertuples()):
        table.add_row(f"window {i + 1}", f"{w.cross_entropy:.2f}", f"{w.activation:.3f}", Text(shown(w.text)))
    return table
