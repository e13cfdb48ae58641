"""The Pareto frontier is the true non-dominated set, not the convex hull."""

import math

import numpy as np
import pandas as pd

from reverie.search.frontier import best_at, merge, pareto, summary


def frame(points):
    return pd.DataFrame(
        {
            "iteration": np.arange(len(points)),
            "slot": 0,
            "ids": [[i, i + 1] for i in range(len(points))],
            "text": [f"p{i}" for i in range(len(points))],
            "activation": [p[0] for p in points],
            "cross_entropy": [p[1] for p in points],
            "kept": True,
        }
    )


def test_pareto_is_non_dominated_set_including_non_convex_points():
    # (activation, ce): (1.2, 5) lies under the hull of (0.4, 3) and (5, 6) but nothing dominates it
    h = frame([(0.4, 3.0), (1.2, 5.0), (5.0, 6.0), (1.0, 5.5), (0.3, 4.0), (-math.inf, 1.0), (5.0, 7.0)])
    front = pareto(h)
    assert list(zip(front.activation, front.cross_entropy)) == [(0.4, 3.0), (1.2, 5.0), (5.0, 6.0)]


def test_pareto_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = list(zip(rng.normal(size=300), rng.uniform(2, 12, size=300)))
    front = pareto(frame(pts))
    brute = {(a, c) for a, c in pts if not any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for a2, c2 in pts)}
    assert set(zip(front.activation, front.cross_entropy)) == brute


def test_duplicates_collapse_and_best_at_threshold():
    h = frame([(1.0, 4.5), (2.0, 5.5), (3.0, 8.0)])
    h = pd.concat([h, h], ignore_index=True)
    assert len(pareto(h)) == 3
    assert best_at(h, 5.0)["activation"] == 1.0
    assert best_at(h, 3.0) is None
    s = summary(h)
    assert list(s["activation"].fillna(-1)) == [-1, 1.0, 2.0, 3.0]


def test_merge_runs():
    a, b = frame([(1.0, 4.0)]), frame([(2.0, 3.0)])
    m = merge([a, b], ["a", "b"])
    front = pareto(m)
    assert list(front.run) == ["b"]


def test_best_at_on_concatenated_histories_with_repeated_index():
    """Frames concatenated without ignore_index (seeds of several runs) still give one best row."""
    a = pd.DataFrame({"activation": [1.0, 3.0], "cross_entropy": [4.0, 6.0], "text": ["a", "b"]})
    b = pd.DataFrame({"activation": [2.0, 0.5], "cross_entropy": [4.5, 3.0], "text": ["c", "d"]})
    both = pd.concat([a, b])
    assert best_at(both, 5.0)["text"] == "c" and float(best_at(both, 5.0)["activation"]) == 2.0
    assert summary(both, (5.0,)).iloc[0].activation == 2.0
