"""`reverie export RUN_DIR`: a run's best dreams and frontier with per-token activations, as JSON, CSV or
Parquet (runs/export.py; the shape: docs/usage.md#export). Registered in app.py as a command.

Bad input (an unknown format, an --out named for another format, a folder that is not a run, an
unwritable --out) ends with one line on stderr and exit code 2, before the model loads. Without
--format, the format is the one --out's suffix names (json without --out).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import ReverieError

out_console = Console(markup=False, highlight=False)


def export(
    run: Path = typer.Argument(..., help="A run directory written by `reverie dream`."),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="json (strict: no NaN), csv or parquet (default: the one --out's suffix names, else json).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="File to write, named for its format (default: RUN/export.FORMAT)."
    ),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16 (default: the run's)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Export a run's best dreams and Pareto frontier, each with the target's activation at every token."""
    from ..runs.dream import load_run
    from ..runs.export import FORMATS, export_format
    from ..runs.export import export as run_export

    fmt = None if format is None else format.lower().lstrip(".")
    if fmt is not None and fmt not in FORMATS:
        raise ReverieError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    fmt = export_format(fmt, out)  # --out named for another format: refused before the model loads
    load_run(run)  # not a run directory: fail before the model loads
    if out is not None and not out.parent.is_dir():
        raise ReverieError(f"cannot write the export {out}: the folder {out.parent} does not exist")
    path = run_export(run, fmt=fmt, out=out, dtype=dtype, device=device)
    out_console.print(f"export: {path}", soft_wrap=True)
