"""The Pareto frontier between activation (higher is better) and cross-entropy (lower is better).

The frontier is the true non-dominated set of every scored prompt — not only the convex hull that
an argmax of f − λ·CE over a grid of λ would give — so "best activation at cross-entropy ≤ x" can be
answered from it exactly. Works on one run's history or on several merged (runs, seeds).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..errors import ConfigError

THRESHOLDS = (4.0, 5.0, 6.0, math.inf)


def _valid(history: pd.DataFrame) -> pd.DataFrame:
    ok = np.isfinite(history["activation"].to_numpy()) & np.isfinite(history["cross_entropy"].to_numpy())
    return history[ok]


def pareto(history: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both axes (one per prompt), sorted by cross-entropy."""
    df = _valid(history)
    df = df.assign(_key=[tuple(np.asarray(i).tolist()) for i in df["ids"]])
    df = df.sort_values(["cross_entropy", "activation", "iteration"], ascending=[True, False, True], kind="stable")
    df = df.drop_duplicates("_key")
    running = df["activation"].cummax().shift(fill_value=-np.inf)
    front = df[df["activation"] > running]
    return front.drop(columns="_key").reset_index(drop=True)


def best_at(history: pd.DataFrame, max_ce: float = math.inf) -> pd.Series | None:
    """The highest-activation prompt with cross-entropy <= max_ce, or None."""
    if isinstance(max_ce, bool) or not isinstance(max_ce, numbers.Real) or math.isnan(max_ce):
        raise ConfigError(f"a cross-entropy threshold must be a number (e.g. 5.0, or math.inf), not {max_ce!r}")
    df = _valid(history)
    df = df[df["cross_entropy"] <= max_ce]
    return None if df.empty else df.iloc[int(np.argmax(df["activation"].to_numpy()))]  # by position: any index


def distinct_best(history: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS) -> list[pd.Series]:
    """The best prompt at cross-entropy <= each threshold (those that exist), each prompt once, in the
    thresholds' order (so the last are the most activating): the dreams a report explains."""
    picks, seen = [], set()
    for limit in thresholds:
        row = best_at(history, limit)
        if row is not None and tuple(row["ids"]) not in seen:
            seen.add(tuple(row["ids"]))
            picks.append(row)
    return picks


def summary(history: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS) -> pd.DataFrame:
    """Best activation (and its prompt) at cross-entropy <= each threshold."""
    rows = []
    for x in thresholds:
        best = best_at(history, x)
        rows.append(
            {
                "max_cross_entropy": x,
                "activation": np.nan if best is None else float(best["activation"]),
                "cross_entropy": np.nan if best is None else float(best["cross_entropy"]),
                "text": None if best is None else best["text"],
            }
        )
    return pd.DataFrame(rows)


def best_rows(history: pd.DataFrame, thresholds: Iterable[float] = THRESHOLDS) -> list[dict]:
    """`summary` as rows that JSON holds: max_cross_entropy None for no limit; activation, cross_entropy
    and text None where no prompt is that fluent yet."""
    return [
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        for row in summary(history, thresholds).to_dict("records")
    ]


def merge(histories: Iterable[pd.DataFrame], names: Iterable[str] | None = None) -> pd.DataFrame:
    """Concatenate histories of several runs, tagging each row with its run name."""
    histories = list(histories)
    names = list(names) if names is not None else [str(i) for i in range(len(histories))]
    return pd.concat([h.assign(run=n) for h, n in zip(histories, names)], ignore_index=True)


def versus_data(history: pd.DataFrame, windows: pd.DataFrame) -> dict | None:
    """The paper's claim, checked: the best dataset window against the best dream at a cross-entropy
    no higher than that window's. `margin` > 0 means the dream wins at equal fluency."""
    windows = _valid(windows)
    if windows.empty:
        return None
    window = windows.loc[windows["activation"].idxmax()]
    dream = best_at(history, float(window["cross_entropy"]))
    return {
        "window_activation": float(window["activation"]),
        "window_cross_entropy": float(window["cross_entropy"]),
        "window_text": window["text"],
        "dream_activation": np.nan if dream is None else float(dream["activation"]),
        "dream_cross_entropy": np.nan if dream is None else float(dream["cross_entropy"]),
        "dream_text": None if dream is None else dream["text"],
        "margin": np.nan if dream is None else float(dream["activation"] - window["activation"]),
        "windows": len(windows),
        "windows_above": int(sum(_above(history, windows))),
    }


def _above(history: pd.DataFrame, windows: pd.DataFrame) -> list[bool]:
    """For each window: does it beat every dream that is at least as fluent?"""
    out = []
    for w in windows.itertuples():
        best = best_at(history, float(w.cross_entropy))
        out.append(best is None or float(w.activation) > float(best["activation"]))
    return out
