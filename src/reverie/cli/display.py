"""What the command line shows while it works: the live population of a dream, a sweep's progress,
and frontier tables (rich)."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


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
        cells = [f"{ce:.2f}" if math.isfinite(ce) else "–", f"{act:.3f}" if math.isfinite(act) else "rejected", Text(shown(text))]
        if penalties is not None:
            cells.insert(0, f"{float(penalties[i]):.2f}")
        table.add_row(*cells)
    return table


class LiveDisplay:
    """Per-iteration callback: a progress bar and the current population (λ, cross-entropy, activation, text)."""

    def __init__(self, tokenizer, total: int, enabled: bool = True):
        self.tokenizer, self.enabled = tokenizer, enabled
        self.progress = Progress(TextColumn("[bold]dreaming"), BarColumn(), MofNCompleteColumn(), TextColumn("iterations"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"),
                                 console=console)
        self.task = self.progress.add_task("dream", total=total, rate="")
        self.live = Live(console=console, refresh_per_second=4) if enabled else None
        self.started = False

    def __call__(self, step) -> None:
        if not self.enabled:
            return
        if not self.started:
            self.live.start()
            self.started = True
        self.progress.update(self.task, completed=step.iteration, rate=f"{step.seconds:.2f} s/it")
        rows = [[t for t in r if t >= 0] for r in step.state.population.tolist()]   # -1 pads shorter prompts
        texts = self.tokenizer.batch_decode(rows, clean_up_tokenization_spaces=False)
        rows = list(zip(step.state.f.tolist(), step.state.ce.tolist(), texts))
        self.live.update(Group(self.progress, frontier_table(rows, "current population", step.penalties)))

    def stop(self) -> None:
        if self.started:
            self.live.stop()


class SweepDisplay:
    """Sweep progress callback: one bar for the sweep (done / failed / left, ETA), one line per running job."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.jobs = enabled, {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, disable=not enabled)
        self.sweep = None

    def __call__(self, e) -> None:
        if e.kind == "loading":
            console.print("[dim]loading model …[/dim]") if self.enabled else None
            return
        if self.sweep is None and e.kind != "end":
            self.progress.start()
            self.sweep = self.progress.add_task("[bold]sweep", total=e.total, completed=e.done, note="")
        if self.sweep is None:
            return
        self.progress.update(self.sweep, completed=e.done + e.failed,
                             note=f"{e.done} done · {e.failed} failed · {e.total - e.done - e.failed} left")
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
