"""faces.html: the faces of a diverse dream side by side (see `reverie.runs.diverse`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write
from ..runs.dream import DreamResult, load_run
from . import plots
from .pages import environment
from .run import best_table


def shared_ylim(histories: list[pd.DataFrame], margin: float = 0.05) -> tuple[float, float] | None:
    """One activation range covering every run's scored prompts (with a margin), so that their plots
    compare at a glance; None when no run has a finite score."""
    values = np.concatenate([h["activation"].to_numpy(dtype=float) for h in histories])
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    pad = margin * (high - low) if high > low else max(abs(high), 1.0) * margin
    return low - pad, high + pad


def write_faces(out: str | Path, results: list[DreamResult] | None = None) -> Path:
    """OUT/faces.html: the faces side by side (best prompts, frontier plot, link to each face's report)."""
    out = Path(out)
    results = results or [load_run(p) for p in sorted(out.glob("face*"), key=lambda p: int(p.name[4:]))]
    faces, ylim = [], shared_ylim([r.history for r in results])
    for j, r in enumerate(results):
        faces.append(
            {
                "name": f"face {j}",
                "href": f"face{j}/report.html",
                "best": best_table(r.history),
                "avoided": len(r.config.avoid_ids),
                "plot": plots.data_url(plots.frontier_plot(r.history, f"face {j}", annotate=3, ylim=ylim)),
            }
        )
    html = (
        environment()
        .get_template("faces.html.j2")
        .render(target=results[0].target, model=results[0].model, faces=faces)
    )
    path = out / "faces.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return path
