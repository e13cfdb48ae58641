"""One self-contained `report.html` per run: configuration, frontier, the paper's plots, causal token
attribution for chosen frontier points, and the top dataset windows beside the dreams.

The page works offline (plots are embedded PNGs, styles inline, no script) and every piece of
model-generated text goes through Jinja's autoescaping, so a dreamed `<script>` shows as text.
Attribution and the random-prompt baseline need the model; without it the report says so.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..version import __version__
from . import plots
from ..evidence.attribution import attribute
from ..evidence.baseline import random_baseline
from ..runs.dream import DreamResult, load_run
from ..errors import ReverieError, RunDirError
from ..search.frontier import THRESHOLDS, best_at, best_rows, pareto, versus_data
from ..lm.model import Model
from .pages import environment
from .text import visible
from ..files import atomic_write
from ..evidence.scan import read_scan
from ..lm.targets import Direction, as_target

REPORT = "report.html"


def _points(history: pd.DataFrame, n: int) -> list[pd.Series]:
    """Frontier points worth explaining: the best at cross-entropy <= 4, 5, 6 and unconstrained."""
    picks, seen = [], set()
    for limit in THRESHOLDS:
        row = best_at(history, limit)
        if row is not None and tuple(row["ids"]) not in seen:
            seen.add(tuple(row["ids"]))
            picks.append(row)
    return picks[-n:] if n > 0 else []


def best_table(history: pd.DataFrame, z=lambda activation: None) -> list[dict]:
    """The best prompt at cross-entropy <= 4, 5, 6 and unconstrained, one row each (`z` turns an activation
    into a z-score, or None); a row with no prompt that fluent has activation, cross_entropy and text None."""
    return [{"limit": "any" if row["max_cross_entropy"] is None else f"≤ {row['max_cross_entropy']:g}",
             "activation": row["activation"], "z": None if row["activation"] is None else z(row["activation"]),
             "cross_entropy": row["cross_entropy"], "text": row["text"]} for row in best_rows(history)]


def _heatmap(table: pd.DataFrame) -> list[dict]:
    """Per token: text, colour (drop under the worst substitute) and bar (drop under the best alternative),
    both relative to the prompt's activation, and the hover details."""
    base = float(table["baseline"].iloc[0])
    scale = abs(base) if abs(base) > 1e-6 else 1.0
    tokens = []
    for r in table.itertuples():
        subs = ", ".join(f"{visible(t)} {a:.2f}" for t, a in r.substitutes[:8])
        tokens.append({
            "text": visible(r.token),
            "heat": float(np.clip(r.drop_worst / scale, 0, 1)),
            "bar": float(np.clip(r.drop_best / scale, 0, 1)),
            "tip": (f"token '{visible(r.token)}' (id {r.token_id})\n"
                    f"worst substitute '{visible(r.worst_substitute)}': {r.worst_activation:.3f} (drop {r.drop_worst:.3f})\n"
                    f"best alternative '{visible(r.best_substitute)}': {r.best_activation:.3f} (drop {r.drop_best:.3f})\n"
                    f"top substitutes: {subs}"),
        })
    return tokens


def build_report(run: DreamResult | str | Path, *, scan=None, model: Model | None = None, target=None,
                 points: int = 4, k: int = 32, baseline_prompts: int = 512) -> str:
    """The report's HTML. `model` (and `target`, for Python-only targets) enables attribution and the
    random-prompt baseline; `scan` adds the dataset windows for this run's target."""
    run = run if isinstance(run, DreamResult) else load_run(run)
    history = run.history
    front = pareto(history)
    title = f"{run.target} — {run.model}"
    notes = []

    windows = read_scan(scan)
    if windows is not None:
        windows = windows[windows["target"] == run.target].sort_values("activation", ascending=False)
        if windows.empty:
            notes.append(f"The scan has no windows for {run.target}; scan it with `reverie scan --target '{run.target}'`.")
            windows = None

    baseline, attributions = None, []
    resolved = None
    if model is not None:
        try:
            resolved = as_target(target if target is not None else run.target, model)
        except ReverieError as e:
            notes.append(f"No attribution or baseline: {e}")
    else:
        notes.append("Attribution and the random-prompt baseline need the model: `reverie report RUN_DIR` loads it.")
    if resolved is not None:
        length = len(history["ids"].iloc[0]) if len(history) else run.config.length
        baseline = random_baseline(model, resolved, n=baseline_prompts, length=length, seed=run.config.seed,
                                   template=run.config.template)
        for row in _points(history, points):
            if row["activation"] <= baseline.mean + 2 * baseline.std:
                continue  # nothing above random prompts to explain
            table = attribute(model, resolved, [int(t) for t in row["ids"]], k=k, template=run.config.template)
            attributions.append({"activation": float(row["activation"]), "cross_entropy": float(row["cross_entropy"]),
                                 "text": row["text"], "tokens": _heatmap(table)})
    zscores = baseline is not None and isinstance(resolved, Direction)

    figures = [("Pareto frontier", plots.data_url(plots.frontier_plot(history, f"{run.target}: frontier")))]
    if windows is not None:
        figures.append(("Dreams vs dataset windows", plots.data_url(plots.dreams_vs_data(history, windows, f"{run.target}: dreams vs data"))))
    figures.append(("Frontier over iterations", plots.data_url(plots.frontier_over_iterations(history, title=f"{run.target}: search progress"))))

    def z(x):
        return float(baseline.z(x)) if zscores else None

    frontier_rows = [{"iteration": int(r.iteration), "activation": r.activation, "z": z(r.activation),
                      "cross_entropy": r.cross_entropy, "text": r.text} for r in front.itertuples()]
    template = run.config.template
    context = None if template is None else dict(zip(("before", "after"), template.split("{prompt}")))
    config = {"model": run.model, "target": run.target, "iterations": run.iterations, "stopped": run.stopped,
              "prompts scored": len(history), **{f"epo.{k}": v for k, v in run.config.to_dict().items()}}
    return environment().get_template("report.html.j2").render(
        title=title, run=run, config=config, best=best_table(history, z), context=context, frontier=frontier_rows, figures=figures,
        attributions=attributions, k=k, baseline=baseline, zscores=zscores, notes=notes,
        windows=None if windows is None else windows.head(20).to_dict("records"),
        versus=None if windows is None else versus_data(history, windows),
        version=__version__, created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))


def write_report(run: DreamResult | str | Path, *, out: str | Path | None = None, **kw) -> Path:
    """Write `report.html` into the run directory (or to `out`); returns its path. Options as for
    `build_report`."""
    run = run if isinstance(run, DreamResult) else load_run(run)
    if out is None and run.run_dir is None:
        raise RunDirError("this result has no run directory: pass out='report.html'")
    html = build_report(run, **kw)
    path = Path(out) if out is not None else run.run_dir / REPORT
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    except OSError as e:
        raise RunDirError(f"cannot write the report {path} ({e.strerror})") from None
    return path


