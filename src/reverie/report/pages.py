"""The Jinja environment every HTML page (report, faces, sweep index) renders with: the package's
templates, autoescaping on (dreamed text may contain markup), and the number and prompt filters
(`shown`: newlines as ⏎ and control characters escaped, see `text.visible`; `value`: a number for a
data-v attribute, empty where missing or not finite, which the tables' script sorts last)."""

from __future__ import annotations

import math

from ..errors import ReverieError
from .text import visible


def environment():
    try:
        import jinja2
    except ImportError:
        raise ReverieError("HTML pages need jinja2 (and reports matplotlib): pip install 'reverie[report]'") from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reverie.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda x, d=3: "–" if x is None or not math.isfinite(float(x)) else f"{float(x):.{d}f}"
    env.filters["shown"] = visible
    env.filters["value"] = value
    return env


def value(x) -> str:
    """A number as a data attribute reads it: repr of the float, or "" for None, NaN and infinities."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return ""
    return repr(x) if math.isfinite(x) else ""
