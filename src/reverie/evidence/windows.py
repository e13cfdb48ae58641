"""Where a dream's dataset windows come from: the real text it starts from and is compared with.

`windows_for(model, target, corpus)` answers with the target's best windows and one line saying where
they came from, or None and a line saying why there are none:

- `corpus=None`: none (the dream starts from the model alone);
- a `reverie scan` folder or its DataFrame: that scan's windows for the target;
- `"auto"` (the default of `dream`): the bundled corpus. Its feature index for this model is read if
  one was built; for the bundled model it is built on first use (once, minutes; later dreams read it in
  seconds). For other models an index is used only where `reverie index` built one;
- any other corpus source (a file, a folder, `hf:NAME`, `bundled`): its index, built if needed.

A target an index cannot hold (a logit, a direction, an SAE feature outside the index) gets a targeted
scan of the first `SCAN_TOKENS` tokens of the corpus instead, where the index would have been built;
an attention entry or a Python function cannot be scanned and starts from the model alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..lm.loading import BUNDLED
from ..lm.model import Model
from ..lm.targets import Attention, Neuron, Target
from .features import FeatureIndex, IndexConfig, build_index, find_index
from .scan import COLUMNS, ScanConfig, read_scan, scan

SCAN_TOKENS = 100_000  # a targeted scan's default budget, for targets the index cannot hold
AUTO = "auto"

Progress = Callable[[int, int, float], None]


def is_scan(corpus) -> bool:
    """Whether `corpus` names a scan's windows (a DataFrame, a `reverie scan` folder or its scan.parquet)
    rather than a corpus of documents."""
    if isinstance(corpus, pd.DataFrame):
        return True
    path = Path(corpus)
    return (path / "scan.parquet").is_file() or (path.name == "scan.parquet" and path.is_file())


def windows_for(
    model: Model,
    target: Target,
    corpus=AUTO,
    *,
    length: int = 12,
    notice: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    index: IndexConfig | None = None,
) -> tuple[pd.DataFrame | None, str]:
    """(the target's best `length`-token windows or None, where they came from); see the module docstring.
    `notice` (default: a line on stderr) hears about slow steps before they start (an index built on first
    use, a targeted scan) and, once its first batch has run, how long an index will take."""
    notice = notice or (lambda line: print(line, file=sys.stderr, flush=True))
    if corpus is None:
        return None, "no corpus: the population starts from the model alone"
    if is_scan(corpus):
        scanned = read_scan(corpus)
        assert scanned is not None  # corpus is not None
        windows = scanned[scanned["target"] == target.spec]
        if windows.empty:
            raise ConfigError(f"the scan has no windows for {target.spec}: scan it with --target '{target.spec}'")
        return windows.reset_index(drop=True), f"{len(windows)} windows of the scan {_name(corpus)}"
    source = "bundled" if corpus == AUTO else str(corpus)
    may_build = corpus != AUTO or model.spec == BUNDLED
    found = find_index(model, source, index)
    if found is not None and found.covers(target):
        return _from_index(found, model, target, source, length)
    if isinstance(target, Attention) or target.position is None:
        return None, f"{target.spec} cannot be read at every position of a text: no windows, starting from the model"
    if not may_build:
        return None, (
            f"no feature index of the bundled corpus for {model.spec}: starting from the model alone "
            f"(`reverie index --model {model.spec}` builds one; later dreams start from its windows)"
        )
    if target.position == -1 and _indexable(target):
        part = "" if index is None or index.max_tokens is None else f"the first {index.max_tokens:,} tokens of "
        notice(
            f"indexing {part}{source} for {model.spec}, once: every MLP neuron's top positions in one pass "
            "(later dreams read it in seconds; `--no-corpus` dreams from the model alone)"
        )
        built = build_index(model, source, index, progress=_estimating(progress, notice))
        return _from_index(built, model, target, source, length)
    notice(f"{target.spec} is not in a feature index: scanning the first {SCAN_TOKENS:,} tokens of {source} for it")
    windows = scan(model, [target], source, ScanConfig(window=length, max_tokens=SCAN_TOKENS))
    if windows.empty:
        return None, f"the first {SCAN_TOKENS:,} tokens of {source} gave no window: starting from the model alone"
    return windows, f"{len(windows)} windows of a scan of the first {SCAN_TOKENS:,} tokens of {source}"


def _estimating(progress: Progress | None, notice: Callable[[str], None]) -> Progress:
    """`progress`, and one notice of the whole pass's expected time once the first batch has been timed."""
    told: list[bool] = []

    def report(done: int, total: int, seconds_per_token: float) -> None:
        if not told and seconds_per_token == seconds_per_token and done < total:  # (not NaN)
            told.append(True)
            notice(
                f"the index will take about {total * seconds_per_token / 60:.0f} min on this machine ({total:,} tokens)"
            )
        if progress is not None:
            progress(done, total, seconds_per_token)

    return report


def _indexable(target: Target) -> bool:
    return isinstance(target, Neuron) and isinstance(target.layer, int)


def _from_index(
    found: FeatureIndex, model: Model, target: Target, source: str, length: int
) -> tuple[pd.DataFrame, str]:
    windows = found.windows(model, target, length=length)
    return windows, f"{len(windows)} windows of the feature index of {source} ({found.meta['tokens']:,} tokens)"


def _name(corpus) -> str:
    return "given as a DataFrame" if isinstance(corpus, pd.DataFrame) else str(corpus)


def scan_with_index(
    model: Model, targets: list[Target], corpus: str, config: ScanConfig, progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """`scan`, except that targets a whole-corpus feature index of `corpus` covers are read from it (seconds,
    its candidates rather than `config.candidates`); returns the windows and the specs read from the index."""
    found = find_index(model, corpus) if isinstance(corpus, str) and config.max_tokens is None else None
    indexed = [t for t in targets if found is not None and found.covers(t)]
    frames = [found.windows(model, t, top=config.top, length=config.window) for t in indexed] if found else []
    rest = [t for t in targets if t not in indexed]
    if rest:
        frames.append(scan(model, rest, corpus, config, progress=progress))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return frame, [t.spec for t in indexed]
