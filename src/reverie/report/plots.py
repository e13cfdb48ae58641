"""The paper's figures as matplotlib PNGs: the frontier with its text, dreams against dataset windows
(Fig. 3), and the frontier as it grew over the iterations.

Each function takes DataFrames (a run's history, a scan's windows) and returns a `Figure`; `png`
renders one to bytes. Figures are built without pyplot, so nothing touches global state or a display.
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..search.frontier import pareto

DREAM, DATA, CLOUD = "#1f5fbf", "#e07b00", "#b8b8b8"


def label(text: str, width: int = 48) -> str:
    """Prompt text as a one-line plot label: newlines shown as \\n, long text cut, `$` not read as maths."""
    text = repr(str(text))[1:-1]
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _axes(title: str, size=(8.0, 5.0)):
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("cross-entropy (lower is more fluent)")
    ax.set_ylabel("activation")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    return fig, ax


def _step(ax, front: pd.DataFrame, **kw) -> None:
    ax.step(front["cross_entropy"], front["activation"], where="post", **kw)


def frontier_plot(history: pd.DataFrame, title: str = "", annotate: int = 6) -> Figure:
    """Every scored prompt (grey) and the Pareto frontier, with the text of up to `annotate` points."""
    fig, ax = _axes(title or "Pareto frontier")
    finite = history[np.isfinite(history["activation"]) & np.isfinite(history["cross_entropy"])]
    cloud = finite.sample(min(len(finite), 20_000), random_state=0) if len(finite) else finite
    ax.scatter(cloud["cross_entropy"], cloud["activation"], s=3, c=CLOUD, alpha=0.4, lw=0, label="scored prompts")
    front = pareto(history)
    _step(ax, front, color=DREAM, lw=1.5)
    ax.scatter(front["cross_entropy"], front["activation"], s=18, c=DREAM, zorder=3, label="frontier")
    if len(front):
        picks = np.unique(np.linspace(0, len(front) - 1, min(annotate, len(front))).round().astype(int))
        for i in picks:
            row = front.iloc[i]
            ax.annotate(label(row["text"]), (row["cross_entropy"], row["activation"]), xytext=(6, -3),
                        textcoords="offset points", fontsize=7, color="#222", family="monospace")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def dreams_vs_data(history: pd.DataFrame, windows: pd.DataFrame, title: str = "") -> Figure:
    """The dreams' frontier and the top dataset windows on the same axes (the paper's Fig. 3)."""
    fig, ax = _axes(title or "dreams vs dataset windows")
    front = pareto(history)
    _step(ax, front, color=DREAM, lw=1.5)
    ax.scatter(front["cross_entropy"], front["activation"], s=18, c=DREAM, zorder=3, label="dreams (frontier)")
    ax.scatter(windows["cross_entropy"], windows["activation"], s=26, marker="D", c=DATA, zorder=4,
               label="dataset windows")
    if len(windows):
        best = windows.loc[windows["activation"].idxmax()]
        ax.annotate(label(best["text"]), (best["cross_entropy"], best["activation"]), xytext=(6, 4),
                    textcoords="offset points", fontsize=7, color=DATA, family="monospace")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def frontier_over_iterations(history: pd.DataFrame, steps: int = 6, title: str = "") -> Figure:
    """The frontier of everything scored up to several iterations: how the search climbed."""
    fig, ax = _axes(title or "frontier over iterations")
    last = int(history["iteration"].max()) if len(history) else 0
    marks = np.unique(np.linspace(0, last, steps).round().astype(int)) if last else np.array([0])
    colors = ["#d9d9d9", "#b3cde3", "#8c96c6", "#8856a7", "#6a1a8a", "#2d004b"]
    for j, t in enumerate(marks):
        front = pareto(history[history["iteration"] <= t])
        color = colors[round(j * (len(colors) - 1) / max(len(marks) - 1, 1))]
        _step(ax, front, color=color, lw=1.4, label=f"iteration {t}")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes (glyphs missing from the font are drawn as boxes, without warnings)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_url(fig: Figure) -> str:
    """A figure as a PNG data URL, for an <img> in a self-contained page."""
    return "data:image/png;base64," + base64.b64encode(png(fig)).decode()
