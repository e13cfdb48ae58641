"""The paper's figures as matplotlib PNGs: the frontier with its text, dreams against dataset windows
(Fig. 3), the frontier as it grew over the iterations, and the robustness of the best dreams.

Each function takes DataFrames (a run's history, a scan's windows) and returns a `Figure`; `png`
renders one to bytes. Figures are built without pyplot, so nothing touches global state or a display.
"""

from __future__ import annotations

import base64
import functools
import io
import unicodedata

import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.transforms import Bbox

from ..search.frontier import pareto
from .text import escape, visible

DREAM, DATA, CLOUD = "#1f5fbf", "#e07b00", "#b8b8b8"
RIGHT_TO_LEFT = ("R", "AL")  # scripts matplotlib cannot lay out (no shaping, no bidi): escaped
FAMILIES = ("monospace", "sans-serif")  # labels are monospace, titles and legends the default sans-serif


@functools.cache
def drawable() -> frozenset[int]:
    """The code points every font the figures use has a glyph for."""
    maps = [
        set(FT2Font(font_manager.findfont(font_manager.FontProperties(family=[f]))).get_charmap()) for f in FAMILIES
    ]
    return frozenset(set.intersection(*maps))


def label(text, width: int | None = 48) -> str:
    """Model text (or a target spec) as a one-line figure text: newlines as ⏎ and control characters
    escaped (`text.visible`), characters the plot fonts cannot draw (or matplotlib cannot lay out:
    Arabic, Hebrew) as escapes (\\u4e2d) instead of empty boxes, cut to `width` characters, and every `$`
    literal rather than the start of mathtext. Every text a figure shows goes through here."""
    glyphs = drawable()
    text = "".join(
        c if ord(c) in glyphs and unicodedata.bidirectional(c) not in RIGHT_TO_LEFT else escape(c)
        for c in visible(text)
    )
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _axes(title: str, size=(8.0, 5.0)):
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("cross-entropy (lower is more fluent)")
    ax.set_ylabel("activation")
    ax.set_title(label(title, width=None), fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    return fig, ax


def _annotate(ax, notes: list[tuple[str, float, float, str]], pad: float = 1.0) -> None:
    """Label points with text, (text, x, y, colour) each. A label that would run past the axes' right
    edge goes left of its point; labels that overlap are pushed down (then up, where that would leave
    the axes) until none overlaps another, and a label moved off its point gets a thin line back to it."""
    fig = ax.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # settle the layout so the labels' extents are final
    frame = ax.get_window_extent(renderer)
    gap = 6 * fig.dpi / 72  # the labels' offset from their point, in pixels
    kw = dict(textcoords="offset points", fontsize=7, family="monospace")
    start, left = [], []
    for t, x, y, c in notes:
        note = ax.annotate(label(t), (x, y), xytext=(6, -3), color=c, **kw)
        box = note.get_window_extent(renderer)
        note.remove()
        left.append(box.x1 > frame.x1)
        start.append(box.translated(-(box.width + 2 * gap), 0) if left[-1] else box)
    boxes = list(start)
    placed: list[Bbox] = []
    for i in sorted(range(len(boxes)), key=lambda i: -boxes[i].y1):  # top label first, the rest pushed down
        while hit := next((b for b in placed if boxes[i].overlaps(b)), None):
            boxes[i] = boxes[i].translated(0, hit.y0 - boxes[i].y1 - pad)
        placed.append(boxes[i])
    done: list[Bbox] = []
    for i in sorted(range(len(boxes)), key=lambda i: boxes[i].y0):  # bottom label first, lifted into the axes
        floor = max([frame.y0] + [b.y1 + pad for b in done if b.x0 < boxes[i].x1 and boxes[i].x0 < b.x1])
        if boxes[i].y0 < floor:
            boxes[i] = boxes[i].translated(0, floor - boxes[i].y0)
        done.append(boxes[i])
    for (t, x, y, c), side, box, box0 in zip(notes, left, boxes, start):
        dy = (box.y0 - box0.y0) * 72 / fig.dpi
        line = dict(arrowstyle="-", color="#999", lw=0.5, shrinkA=0, shrinkB=2) if abs(dy) > 0.5 else None
        ax.annotate(
            label(t),
            (x, y),
            xytext=(-6 if side else 6, -3 + dy),
            ha="right" if side else "left",
            color=c,
            arrowprops=line,
            **kw,
        )


def _step(ax, front: pd.DataFrame, **kw) -> None:
    ax.step(front["cross_entropy"], front["activation"], where="post", **kw)


def frontier_plot(history: pd.DataFrame, title: str = "", annotate: int = 6, ylim=None) -> Figure:
    """Every scored prompt (grey) and the Pareto frontier, with the text of up to `annotate` points;
    `ylim` (low, high) fixes the activation axis, e.g. to compare several runs."""
    fig, ax = _axes(title or "Pareto frontier")
    finite = history[np.isfinite(history["activation"]) & np.isfinite(history["cross_entropy"])]
    cloud = finite.sample(min(len(finite), 20_000), random_state=0) if len(finite) else finite
    ax.scatter(cloud["cross_entropy"], cloud["activation"], s=3, c=CLOUD, alpha=0.4, lw=0, label="scored prompts")
    front = pareto(history)
    _step(ax, front, color=DREAM, lw=1.5)
    ax.scatter(front["cross_entropy"], front["activation"], s=18, c=DREAM, zorder=3, label="frontier")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(loc="lower right", fontsize=8)
    if len(front):
        picks = np.unique(np.linspace(0, len(front) - 1, min(annotate, len(front))).round().astype(int))
        _annotate(
            ax,
            [
                (front["text"].iloc[i], front["cross_entropy"].iloc[i], front["activation"].iloc[i], "#222")
                for i in picks
            ],
        )
    return fig


def dreams_vs_data(history: pd.DataFrame, windows: pd.DataFrame, title: str = "") -> Figure:
    """The dreams' frontier and the top dataset windows on the same axes (the paper's Fig. 3)."""
    fig, ax = _axes(title or "dreams vs dataset windows")
    front = pareto(history)
    _step(ax, front, color=DREAM, lw=1.5)
    ax.scatter(front["cross_entropy"], front["activation"], s=18, c=DREAM, zorder=3, label="dreams (frontier)")
    ax.scatter(
        windows["cross_entropy"], windows["activation"], s=26, marker="D", c=DATA, zorder=4, label="dataset windows"
    )
    ax.legend(loc="lower right", fontsize=8)
    if len(windows):
        best = windows.loc[windows["activation"].idxmax()]
        _annotate(ax, [(best["text"], best["cross_entropy"], best["activation"], DATA)])
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


def robustness_plot(results, title: str = "") -> Figure:
    """One row per dream (`evidence.robustness.Robustness`): its activation alone, in each context,
    of each resampled variant and of its minimal trigger, with the least value that keeps 80% of it."""
    fig = Figure(figsize=(8.0, 1.2 + 0.9 * len(results)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(label(title or "robustness", width=None), fontsize=10, loc="left")
    ax.set_xlabel("activation")
    ax.grid(alpha=0.3, axis="x")
    for i, r in enumerate(results):
        y = len(results) - 1 - i  # the first dream on top
        ctx, var = r.contexts["activation"].to_numpy(float), r.variants["activation"].to_numpy(float)
        ax.plot([r.needed] * 2, [y - 0.4, y + 0.4], ls="--", c="#888", lw=1, label="keeps 80%" if i == 0 else None)
        ax.scatter(ctx, np.full(len(ctx), y + 0.2), s=14, c=DREAM, alpha=0.7, label="in context" if i == 0 else None)
        ax.scatter(var, np.full(len(var), y - 0.2), s=14, c=DATA, alpha=0.7, label="variants" if i == 0 else None)
        trigger = "minimal trigger" if i == 0 else None
        ax.scatter([r.trigger_activation], [y], s=40, marker="D", c="#2a9d3a", zorder=4, label=trigger)
        ax.scatter([r.activation], [y], s=90, marker="|", c="#222", zorder=5, label="alone" if i == 0 else None)
    ax.set_yticks(range(len(results)), [label(r.text, width=32) for r in reversed(results)], fontsize=7)
    ax.set_ylim(-0.6, len(results) - 0.4)
    if results:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    return fig


def png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_url(fig: Figure) -> str:
    """A figure as a PNG data URL, for an <img> in a self-contained page."""
    return "data:image/png;base64," + base64.b64encode(png(fig)).decode()
