"""One self-contained `report.html` per run: configuration, frontier, the paper's plots, causal token
attribution for chosen frontier points, and the top dataset windows beside the dreams.

The page works offline (plots are embedded PNGs, styles and the one small script that sorts, filters
and copies inline, nothing fetched) and every piece of model-generated text goes through Jinja's
autoescaping, so a dreamed `<script>` shows as text; the script only ever reads text. Attribution, the
random-prompt baseline and the per-token colouring of the best dreams and dataset windows need the
model; without it the report says so.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReverieError, RunDirError
from ..evidence.attribution import attribute
from ..evidence.baseline import random_baseline
from ..evidence.readability import real_word_share, real_words
from ..evidence.robustness import KEEP, Robustness, robustness
from ..evidence.scan import read_scan
from ..evidence.tokens import per_token, token_strings
from ..files import atomic_write
from ..lm.algebra import Combination
from ..lm.model import Model
from ..lm.targets import Direction, as_target
from ..runs.dream import DreamResult, load_run
from ..search.frontier import THRESHOLDS, best_at, best_rows, distinct_best, pareto, versus_data
from ..version import __version__
from . import plots
from .pages import environment
from .text import visible

REPORT = "report.html"


def _points(history: pd.DataFrame, n: int) -> list[pd.Series]:
    """Frontier points worth explaining: the `n` most activating of the best at cross-entropy <= 4, 5, 6
    and unconstrained."""
    return distinct_best(history)[-n:] if n > 0 else []


def best_table(history: pd.DataFrame, z=lambda activation: None) -> list[dict]:
    """The best prompt at cross-entropy <= 4, 5, 6 and unconstrained, one row each (`z` turns an activation
    into a z-score, or None); a row with no prompt that fluent has activation, cross_entropy and text None."""
    rows = []
    for limit, row in zip(THRESHOLDS, best_rows(history, THRESHOLDS)):
        best = None if row["text"] is None else best_at(history, limit)
        rows.append(
            {
                "limit": "any" if row["max_cross_entropy"] is None else f"≤ {row['max_cross_entropy']:g}",
                "activation": row["activation"],
                "z": None if row["activation"] is None else z(row["activation"]),
                "cross_entropy": row["cross_entropy"],
                "text": row["text"],
                "ids": None if best is None else [int(t) for t in best["ids"]],
            }
        )
    return rows


def token_view(model: Model, ids, values, scale: float) -> list[dict]:
    """A prompt token by token for the pages: each token's text (made visible), background colour (red
    for activations above 0, blue below, full at |activation| = `scale`) and hover text; a token without
    a finite value is left uncoloured."""
    view = []
    for token, i, v in zip(token_strings(model, ids), ids, values):
        text = visible(token)
        if np.isfinite(v) and scale > 0:
            alpha = min(abs(float(v)) / scale, 1.0)
            colour = f"rgba({'214, 39, 40' if v >= 0 else '31, 119, 180'}, {alpha:.2f})"
            tip = f"activation {float(v):.4f} at '{text}' (id {int(i)})"
        else:
            colour, tip = "transparent", f"'{text}' (id {int(i)}): no value at this position"
        view.append({"text": text, "colour": colour, "tip": tip})
    return view


def _colour_tokens(model: Model, target, template, best: list[dict], windows: list[dict] | None) -> float | None:
    """Add "tokens" (see `token_view`) to the best dreams and the dataset windows, on one colour scale:
    one forward pass per prompt. Returns the scale (None when the target has no per-position value)."""
    dreams = [r for r in best if r["ids"] is not None]
    windows = windows or []
    dream_values = per_token(model, target, [r["ids"] for r in dreams], template=template)
    window_values = per_token(model, target, [list(map(int, w["ids"])) for w in windows])
    finite = [abs(v[np.isfinite(v)]) for v in dream_values + window_values]
    scale = max((float(f.max()) for f in finite if len(f)), default=0.0)
    for row, values in zip(dreams, dream_values):
        row["tokens"] = token_view(model, row["ids"], values, scale)
    for row, values in zip(windows, window_values):
        row["tokens"] = token_view(model, list(map(int, row["ids"])), values, scale)
    return scale if scale > 0 else None


def _part_values(model: Model, target: Combination, template, best: list[dict]) -> None:
    """Add "parts" to the best dreams of an expression target: (spec, value) of each of its parts."""
    dreams = [r for r in best if r["ids"] is not None]
    values = [per_token(model, part, [r["ids"] for r in dreams], template=template) for part in target.parts]
    for i, row in enumerate(dreams):
        row["parts"] = [(part.spec, float(v[i][-1])) for part, v in zip(target.parts, values)]


def _real_words(notes: list[str]) -> frozenset[str] | None:
    """The real words of the bundled corpus, for every text's real-word share; None (and a note) without it."""
    try:
        return real_words()
    except ReverieError as e:
        notes.append(f"No real-word shares: {e}")
        return None


def _robustness(
    model: Model, target, history: pd.DataFrame, template, n: int, corpus, notes: list[str]
) -> list[Robustness]:
    """The robustness (evidence/robustness.py) of the `n` most activating of the best dreams (those
    `_points` picks), or none (and a note) where it cannot be computed."""
    picks = _points(history, n)
    if not picks:
        return []
    try:
        return robustness(model, target, [[int(t) for t in p["ids"]] for p in picks], template=template, corpus=corpus)
    except ReverieError as e:
        notes.append(f"No robustness: {e}")
        return []


def robust_view(results: list[Robustness]) -> list[dict]:
    """Per dream, what the report's robustness section shows: the summary, the trigger, and the contexts,
    removals and variants as rows of plain values."""
    return [
        {
            "text": r.text,
            "tokens": len(r.ids),
            "trigger": r.trigger_text,
            **r.summary(),
            "contexts_rows": r.contexts.to_dict("records"),
            "steps_rows": r.steps.to_dict("records"),
            "variants_rows": r.variants.to_dict("records"),
            "note": r.note,
        }
        for r in results
    ]


def _heatmap(table: pd.DataFrame) -> list[dict]:
    """Per token: text, colour (drop under the worst substitute) and bar (drop under the best alternative),
    both relative to the prompt's activation, and the hover details."""
    base = float(table["baseline"].iloc[0])
    scale = abs(base) if abs(base) > 1e-6 else 1.0
    tokens = []
    for r in table.itertuples():
        subs = ", ".join(f"{visible(t)} {a:.2f}" for t, a in r.substitutes[:8])
        tokens.append(
            {
                "text": visible(r.token),
                "heat": float(np.clip(r.drop_worst / scale, 0, 1)),
                "bar": float(np.clip(r.drop_best / scale, 0, 1)),
                "tip": (
                    f"token '{visible(r.token)}' (id {r.token_id})\n"
                    f"worst substitute '{visible(r.worst_substitute)}': {r.worst_activation:.3f} (drop "
                    f"{r.drop_worst:.3f})\n"
                    f"best alternative '{visible(r.best_substitute)}': {r.best_activation:.3f} (drop "
                    f"{r.drop_best:.3f})\n"
                    f"top substitutes: {subs}"
                ),
            }
        )
    return tokens


def build_report(
    run: DreamResult | str | Path,
    *,
    scan=None,
    model: Model | None = None,
    target=None,
    points: int = 4,
    k: int = 32,
    baseline_prompts: int = 512,
    robust: int = 3,
    corpus: str | None = "bundled",
    progress: Callable[[str], None] | None = None,
) -> str:
    """The report's HTML. `model` (and `target`, for Python-only targets) enables attribution and the
    random-prompt baseline (seed 0, cached per model and target: runs of one target share it) and the
    robustness of the `robust` most activating best dreams (in `corpus`'s text, evidence/robustness.py);
    `scan` adds the dataset windows for this run's target (default: the windows kept with the run).
    `progress` is told each step that needs the model."""
    progress = progress or (lambda step: None)
    run = run if isinstance(run, DreamResult) else load_run(run)
    history = run.history
    front = pareto(history)
    title = f"{run.target} — {run.model}"
    notes = []

    windows = read_scan(scan) if scan is not None else run.windows
    if windows is not None:
        windows = windows[windows["target"] == run.target].sort_values("activation", ascending=False)
        if windows.empty:
            notes.append(
                f"The scan has no windows for {run.target}; scan it with `reverie scan --target '{run.target}'`."
            )
            windows = None

    baseline, attributions, results = None, [], []
    resolved = None
    if model is not None:
        try:
            resolved = as_target(target if target is not None else run.target, model)
        except ReverieError as e:
            notes.append(f"No attribution or baseline: {e}")
    else:
        notes.append("Attribution and the random-prompt baseline need the model: `reverie report RUN_DIR` loads it.")
    if model is not None and resolved is not None:  # (a target resolves only against a model)
        length = len(history["ids"].iloc[0]) if len(history) else run.config.length
        progress(f"random-prompt baseline ({baseline_prompts} prompts)")
        baseline = random_baseline(
            model, resolved, n=baseline_prompts, length=length, template=run.config.template, cached=True
        )
        chosen = [row for row in _points(history, points) if row["activation"] > baseline.mean + 2 * baseline.std]
        for i, row in enumerate(chosen, 1):  # (only prompts above random ones have something to explain)
            progress(f"attribution {i}/{len(chosen)}")
            table = attribute(model, resolved, [int(t) for t in row["ids"]], k=k, template=run.config.template)
            attributions.append(
                {
                    "activation": float(row["activation"]),
                    "cross_entropy": float(row["cross_entropy"]),
                    "text": row["text"],
                    "tokens": _heatmap(table),
                }
            )
        if robust > 0:
            progress(f"robustness of the {robust} most activating best dreams")
        results = _robustness(model, resolved, history, run.config.template, robust, corpus, notes)
    zscores = baseline is not None and isinstance(resolved, Direction)

    progress("plots")
    figures = [("Pareto frontier", plots.data_url(plots.frontier_plot(history, f"{run.target}: frontier")))]
    if windows is not None:
        figures.append(
            (
                "Dreams vs dataset windows",
                plots.data_url(plots.dreams_vs_data(history, windows, f"{run.target}: dreams vs data")),
            )
        )
    figures.append(
        (
            "Frontier over iterations",
            plots.data_url(plots.frontier_over_iterations(history, title=f"{run.target}: search progress")),
        )
    )

    robust_figure = plots.data_url(plots.robustness_plot(results, f"{run.target}: robustness")) if results else None

    def z(x):
        return float(baseline.z(x)) if zscores else None

    best = best_table(history, z)
    window_rows = None if windows is None else windows.head(20).to_dict("records")
    frontier_rows = [
        {
            "iteration": int(r.iteration),
            "activation": r.activation,
            "z": z(r.activation),
            "cross_entropy": r.cross_entropy,
            "text": r.text,
        }
        for r in front.itertuples()
    ]
    words = _real_words(notes)
    for row in best + frontier_rows + (window_rows or []):
        row["words"] = None if words is None or row["text"] is None else real_word_share(row["text"], words)
    if resolved is not None:
        progress("per-token activations")
    scale = (
        None
        if model is None or resolved is None
        else _colour_tokens(model, resolved, run.config.template, best, window_rows)
    )
    if model is not None and isinstance(resolved, Combination):
        _part_values(model, resolved, run.config.template, best)
    template = run.config.template
    context = None if template is None else dict(zip(("before", "after"), template.split("{prompt}")))
    config = {
        "model": run.model,
        "target": run.target,
        "iterations": run.iterations,
        "stopped": run.stopped,
        "prompts scored": len(history),
        **{f"epo.{k}": v for k, v in run.config.to_dict().items()},
    }
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            run=run,
            config=config,
            best=best,
            parts=any("parts" in r for r in best),
            scale=scale,
            context=context,
            frontier=frontier_rows,
            figures=figures,
            attributions=attributions,
            k=k,
            robust=robust_view(results),
            keep=KEEP,
            robust_corpus=corpus,
            robust_figure=robust_figure,
            baseline=baseline,
            zscores=zscores,
            notes=notes,
            words=words is not None,
            windows=window_rows,
            versus=None if windows is None else versus_data(history, windows),
            version=__version__,
            created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        )
    )


def write_report(run: DreamResult | str | Path, *, out: str | Path | None = None, **kw) -> Path:
    """Write `report.html` into the run directory (or to `out`); returns its path. Options as for
    `build_report`."""
    run = run if isinstance(run, DreamResult) else load_run(run)
    if out is not None:
        path = Path(out)
    elif run.run_dir is not None:
        path = run.run_dir / REPORT
    else:
        raise RunDirError("this result has no run directory: pass out='report.html'")
    html = build_report(run, **kw)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    except OSError as e:
        raise RunDirError(f"cannot write the report {path} ({e.strerror})") from None
    return path
