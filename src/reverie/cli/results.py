"""What `reverie dream` shows and writes around a run (runs/plan.py): the model loading, the frontier and
the comparison with the best real text at the end, then report.html or, for diverse dreams, faces.html.
A report or faces page that fails is one line: the run is already saved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ..errors import ReverieError
from .display import console, frontier_table, out_console, shown, versus_table

if TYPE_CHECKING:  # annotations only: the command line imports torch when a command needs it
    from ..lm.model import Model
    from ..runs.dream import DreamResult
    from ..runs.plan import RunPlan


def load(plan: RunPlan, *, device: str | None, device_map: str | None, quiet: bool) -> Model:
    """The plan's model, loaded, saying which (and why its dtype) unless `quiet`."""
    from ..lm.model import load_model

    if not quiet:
        console.print(f"[dim]loading model {escape(plan.model)} …[/dim]", soft_wrap=True)
    loaded = load_model(plan.model, dtype=plan.dtype, device=device, device_map=device_map)
    if not quiet and loaded.dtype_reason:
        console.print(f"[dim]dtype {escape(loaded.dtype_reason)}[/dim]", soft_wrap=True)
    return loaded


def notice(line: str) -> None:
    console.print(line, soft_wrap=True, markup=False)


def print_result(result: DreamResult, run_path: Path) -> None:
    """The frontier, the comparison with the best real text, and where the run is."""
    from ..search.frontier import versus_data

    front = result.frontier()
    out_console.print(
        frontier_table(
            zip(front["activation"], front["cross_entropy"], front["text"]),
            f"frontier of {result.target} ({len(front)} prompts)",
        )
    )
    versus = None if result.windows is None else versus_data(result.history, result.windows)
    if versus is not None:
        out_console.print(versus_table(versus, result.windows))
    elif result.start:
        out_console.print(f"no real text to compare with: {result.start}", soft_wrap=True)
    out_console.print(
        f"{result.stopped} after {result.iterations} iterations in {result.seconds:.1f} s; run directory: {run_path}",
        soft_wrap=True,
    )
    if result.stopped in ("interrupted", "time"):
        out_console.print(f"continue with: reverie dream --resume {run_path}", soft_wrap=True)


def write_outputs(plan: RunPlan, results: list[DreamResult], model: Model, quiet: bool) -> None:
    """What a finished plan writes besides its run directory: each face's report and faces.html for diverse
    dreams, else report.html (each as the plan says)."""
    if plan.faces > 1:
        _write_faces(plan.run_dir, results, plan.report, model=model, quiet=quiet)
    elif plan.report:
        _write_report(plan.run_dir, model=model, quiet=quiet)


def _write_faces(run_path: Path, faces, report: bool, **options) -> None:
    for j, face in enumerate(faces):
        best = face.best()
        found = (
            "no prompt yet"
            if best is None
            else f"{best.activation:.3f} (ce {best.cross_entropy:.2f}) {shown(best.text)}"
        )
        out_console.print(f"face {j} ({face.run_dir}): {found}", soft_wrap=True)
        if report:
            _write_report(face.run_dir, **options)
    try:
        from ..report.faces import write_faces

        out_console.print(f"faces: {write_faces(run_path, faces)}", soft_wrap=True)
    except ReverieError as e:
        console.print(f"no faces page: {e}", soft_wrap=True, markup=False)


def _write_report(run_path: Path, quiet: bool = False, **kw) -> None:
    """Write the run's report; a failure here is reported but loses nothing (the run is already saved)."""
    try:
        from ..report.run import write_report

        def progress(step: str) -> None:
            if not quiet:
                console.print(f"[dim]report: {step} …[/dim]")

        path = write_report(run_path, progress=progress, **kw)
    except ReverieError as e:
        console.print(f"no report: {e}", soft_wrap=True, markup=False)
    else:
        out_console.print(f"report: {path}", soft_wrap=True)
