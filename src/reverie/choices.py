"""The closed sets of names that options, results and the command line share, each defined once, here
(names only: importing this loads no torch). `tests/test_choices.py` fails on a second copy of any."""

from __future__ import annotations

from typing import Literal, get_args

ScorerName = Literal["packed", "plain"]  # what make_scorer builds (scoring/): the fast path, the spec
StartKind = Literal["data", "beam", "sampled", "random"]  # how the population starts (search/starts.py)
StopReason = Literal["done", "time", "interrupted", "callback", "unfinished"]  # why a run stopped (runs/dream.py)

SCORER_NAMES: tuple[ScorerName, ...] = get_args(ScorerName)
START_KINDS: tuple[StartKind, ...] = get_args(StartKind)
STOP_REASONS: tuple[StopReason, ...] = get_args(StopReason)
