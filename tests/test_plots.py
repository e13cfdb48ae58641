"""The report's figures treat model text as data: `$`, backslashes, newlines, control characters and
characters the plot font cannot draw all render, literally or as readable escapes, without warnings,
and the labels of nearby points do not pile up."""

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.cbook import is_math_text
from matplotlib.text import Annotation

from reverie.report import plots
from reverie.report.text import visible

HOSTILE = ["$x^2$ costs $5", r"a_{b} \alpha \$ ^{c}", "$\\frac{$", "two\nlines\tand\x07bell", "中文 مرحبا 🙂 ok"]
SPEC = "sae:$\\frac{1}{2}$_{L1}^2"


def history(texts, ce=None, act=None) -> pd.DataFrame:
    n = len(texts)
    return pd.DataFrame(
        {
            "iteration": range(n),
            "ids": [[i] for i in range(n)],
            "text": texts,
            "activation": act if act is not None else np.arange(1.0, n + 1),
            "cross_entropy": ce if ce is not None else np.arange(3.0, 3.0 + n),
        }
    )


def shown(text: str) -> str:
    """What matplotlib draws for a (non-mathtext) string."""
    assert not is_math_text(text), text
    return text.replace(r"\$", "$")


def figures(h):
    windows = h.assign(doc=0).iloc[::-1].reset_index(drop=True)
    return [
        plots.frontier_plot(h, SPEC),
        plots.dreams_vs_data(h, windows, SPEC),
        plots.frontier_over_iterations(h, title=SPEC),
    ]


def test_model_text_and_specs_are_literal_in_every_figure():
    h = history(HOSTILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mathtext errors, no missing-glyph warnings
        for fig in figures(h):
            assert plots.png(fig)[:4] == b"\x89PNG"
            ax = fig.axes[0]
            assert shown(ax.get_title(loc="left")) == SPEC
            for text in [*ax.texts, *ax.get_legend().get_texts()]:
                shown(text.get_text())
    notes = [shown(a.get_text()) for a in figures(h)[0].axes[0].texts if isinstance(a, Annotation)]
    assert "$x^2$ costs $5" in notes and r"a_{b} \alpha \$ ^{c}" in notes and "$\\frac{$" in notes


def test_labels_show_newlines_controls_and_undrawable_characters_as_escapes():
    assert shown(plots.label("two\nlines\tand\x07bell")) == "two⏎lines→and\\x07bell"
    assert shown(plots.label("中a🙂")) == "\\u4e2da\\U0001f642"
    assert shown(plots.label("مر")) == "\\u0645\\u0631"  # drawn, but never shaped: escaped
    assert shown(plots.label("é ü ñ — “ok”")) == "é ü ñ — “ok”"  # what the font draws stays as it is
    assert visible("中\r\n\u200b") == "中\\x0d⏎\\u200b"  # HTML keeps every printable character
    assert len(plots.label("x" * 100, 20)) == 20


def test_labels_of_close_points_do_not_overlap():
    # six frontier points almost on top of each other
    h = history(
        [f"prompt number {i} with some words" for i in range(6)],
        ce=np.linspace(4.0, 4.05, 6),
        act=np.linspace(1.0, 1.02, 6),
    )
    fig = plots.frontier_plot(h)
    plots.png(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in fig.axes[0].texts]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_frontier_plot_takes_a_shared_activation_axis():
    fig = plots.frontier_plot(history(["a", "b"]), ylim=(-5.0, 50.0))
    assert fig.axes[0].get_ylim() == pytest.approx((-5.0, 50.0))
