"""faces.html: the faces of a diverse dream side by side (see `reverie.runs.diverse`)."""

from __future__ import annotations

import math
from pathlib import Path

from ..files import atomic_write
from ..runs.dream import DreamResult, load_run
from ..search.frontier import THRESHOLDS, best_at
from . import plots
from .pages import environment


def write_faces(out: str | Path, results: list[DreamResult] | None = None) -> Path:
    """OUT/faces.html: the faces side by side (best prompts, frontier plot, link to each face's report)."""
    out = Path(out)
    results = results or [load_run(p) for p in sorted(out.glob("face*"), key=lambda p: int(p.name[4:]))]
    faces = []
    for j, r in enumerate(results):
        best = []
        for limit in THRESHOLDS:
            row = best_at(r.history, limit)
            best.append({"limit": "any" if math.isinf(limit) else f"≤ {limit:g}",
                         "activation": None if row is None else float(row["activation"]),
                         "cross_entropy": None if row is None else float(row["cross_entropy"]),
                         "text": None if row is None else row["text"]})
        faces.append({"name": f"face {j}", "href": f"face{j}/report.html", "best": best,
                      "avoided": len(r.config.avoid_ids),
                      "plot": plots.data_url(plots.frontier_plot(r.history, f"face {j}", annotate=3))})
    html = environment().get_template("faces.html.j2").render(target=results[0].target, model=results[0].model, faces=faces)
    path = out / "faces.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return path
