"""Max-activating dataset examples: the corpus windows that most activate one or many targets.

The model runs once over long chunks of each document, recording every target at every position in
the same forward pass; the top positions per target become candidates, and each candidate is
re-scored as an n-token window (inside its document) ending at that position — activation at the
last token and the same cross-entropy EPO uses — so dreams and data sit on the same axes.

A corpus is a source `documents` reads (corpora.py: a text file, a folder, JSONL, Parquet, `hf:NAME`,
`bundled`) or any iterable of strings.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..errors import ConfigError, RunDirError, TargetError
from ..fast.capabilities import FastPath
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.targets import Attention, Target, as_target, usage
from ..lm.vocab import Vocabulary
from ..scoring import TargetCache, make_scorer
from ..search.config import EPOConfig
from .corpora import BUNDLED_WIKI, bundled_corpus, documents

__all__ = [  # BUNDLED_WIKI, bundled_corpus, documents: from corpora.py
    "ScanConfig",
    "scan",
    "score_windows",
    "read_scan",
    "data_starts",
    "COLUMNS",
    "CONTEXT",
    "BUNDLED_WIKI",
    "bundled_corpus",
    "documents",
]

CONTEXT = 8  # tokens of the document kept on each side of a window (context_before, context_after)
COLUMNS = [
    "target",
    "rank",
    "activation",
    "cross_entropy",
    "in_context",
    "doc",
    "position",
    "ids",
    "text",
    "context_before",
    "context_after",
]


@dataclass
class ScanConfig:
    window: int = 12  # n: tokens per re-scored window, as in the dreams
    top: int = 20  # examples kept per target
    candidates: int = 200  # in-context positions per target re-scored as windows
    chunk: int = 256  # tokens per forward pass row
    batch_size: int = 8  # rows per forward pass
    max_tokens: int | None = None  # stop after this many corpus tokens
    field: str = "text"  # JSONL field / Parquet column

    def __post_init__(self) -> None:
        """Check every option (also after `dataclasses.replace`): a ConfigError naming the one that is wrong."""
        least = {"window": 2, "top": 1, "candidates": 1, "chunk": 2, "batch_size": 1, "max_tokens": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if name == "max_tokens" and value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
            setattr(self, name, int(value))
        if not isinstance(self.field, str) or not self.field:
            raise ConfigError(f"field must be the name of a JSONL field or Parquet column, got {self.field!r}")


# ------------------------------------------------------------------------------------ scanning


def _per_position(target: Target) -> Target:
    """A copy of the target that reads every position instead of the last one."""
    if isinstance(target, Attention) or target.position is None:
        raise TargetError(f"{target.spec}: a scan reads a target at every position; it takes {usage(scans=True)}")
    every = copy.copy(target)
    every.position = slice(None)
    return every


def _chunks(model: Model, docs: Iterable[str], config: ScanConfig) -> Iterator[tuple[int, int, list[int]]]:
    """(document index, offset of the chunk in the document, token ids), chunks of at most config.chunk."""
    for d, text in enumerate(docs):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), config.chunk):
            piece = ids[start : start + config.chunk]
            if len(piece) >= 2:
                yield d, start, piece


def scan(
    model: Model,
    targets: Sequence[Target | str],
    corpus: str | Iterable[str],
    config: ScanConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Top `config.top` corpus windows per target, re-scored as n-token prompts.

    Returns one row per (target, example): target, rank, activation, cross_entropy (of the window),
    in_context (the activation at that position in its chunk), doc, position, ids, text, and the text
    of up to CONTEXT tokens of the document before and after the window (context_before, context_after)."""
    config = config or ScanConfig()
    model = as_model(model)
    chosen = [as_target(t, model) for t in targets]
    readers = [_per_position(t) for t in chosen]
    hooks = sorted({h for t in chosen for h in t.hooks})
    docs_tokens: dict[int, list[int]] = {}
    best = [(torch.empty(0), torch.empty(0, 2, dtype=torch.long)) for _ in chosen]  # values, (doc, position)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batch: list[tuple[int, int, list[int]]] = []
    seen = 0
    source = documents(corpus, config.field) if isinstance(corpus, str) else iter(corpus)

    def flush():
        nonlocal batch
        width = max(len(p) for _, _, p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for i, (_, _, piece) in enumerate(batch):
            ids[i, : len(piece)] = torch.tensor(piece)
        with torch.inference_mode(), FastPath.of(model).run(), model.capture(hooks) as cache:
            hidden = model.trunk(ids.to(model.device))
            cache = TargetCache(cache, hidden, model.head, ", ".join(t.spec for t in chosen))  # logits only if read
            values = [r.value(cache).float().cpu() for r in readers]  # each [rows, width]
        doc = torch.tensor([d for d, _, _ in batch])[:, None].expand(-1, width)
        pos = torch.tensor([o for _, o, _ in batch])[:, None] + torch.arange(width)[None]
        valid = torch.zeros(len(batch), width, dtype=torch.bool)
        for i, (_, _, piece) in enumerate(batch):
            valid[i, : len(piece)] = True
        valid &= pos >= config.window - 1  # a whole window fits inside the document
        keys = torch.stack([doc[valid], pos[valid]], -1)
        for t, v in enumerate(values):
            vals = torch.cat([best[t][0], v[valid]])
            both = torch.cat([best[t][1], keys])
            keep = vals.topk(min(config.candidates, len(vals))).indices
            best[t] = (vals[keep], both[keep])
        batch = []

    for d, offset, piece in _chunks(model, source, config):
        if config.max_tokens is not None and seen >= config.max_tokens:
            break
        docs_tokens.setdefault(d, []).extend(piece)
        batch.append((d, offset, piece))
        seen += len(piece)
        if len(batch) == config.batch_size:
            flush()
            if progress:
                progress(seen)
    if batch:
        flush()
        if progress:
            progress(seen)

    rows = []
    for target, (in_context, keys) in zip(chosen, best):
        if len(keys):
            rows.append(score_windows(model, target, docs_tokens, keys, in_context, config.window, config.top))
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(rows, ignore_index=True)[COLUMNS]


def score_windows(
    model: Model,
    target: Target,
    docs: Mapping[int, Sequence[int]],
    keys: torch.Tensor,
    in_context: torch.Tensor,
    window: int,
    top: int,
) -> pd.DataFrame:
    """The `top` best windows of one target, re-scored as `window`-token prompts (one row each, COLUMNS).

    keys: [N, 2] (document, position of the window's last token); in_context: [N] the activation recorded
    there in its chunk; docs: each document's token ids."""
    whole = keys[:, 1] >= window - 1  # the window fits inside its document
    keys, in_context = keys[whole], in_context[whole]
    windows = torch.stack([torch.as_tensor(docs[int(d)][int(p) - window + 1 : int(p) + 1]) for d, p in keys.tolist()])
    scorer = make_scorer(model, target, EPOConfig(length=window, check_retokenization=False, batch_size=64))
    f, ce = scorer.score(windows)
    sides = [
        (
            docs[int(d)][max(0, int(p) - window + 1 - CONTEXT) : int(p) - window + 1],
            docs[int(d)][int(p) + 1 : int(p) + 1 + CONTEXT],
        )
        for d, p in keys.tolist()
    ]
    frame = pd.DataFrame(
        {
            "target": scorer.target.spec,
            "activation": f.numpy(),
            "cross_entropy": ce.numpy(),
            "in_context": in_context.float().numpy(),
            "doc": keys[:, 0].numpy(),
            "position": keys[:, 1].numpy(),
            "ids": list(windows.numpy()),
            "text": scorer.vocab.decode(windows),
            "context_before": scorer.vocab.decode([list(b) for b, _ in sides]),
            "context_after": scorer.vocab.decode([list(a) for _, a in sides]),
        }
    )
    frame = frame.sort_values("activation", ascending=False).drop_duplicates("text").head(top)
    return frame.assign(rank=range(len(frame)))[COLUMNS].reset_index(drop=True)


# ------------------------------------------------------------------------------------ reading scans, data starts


def read_scan(scan: str | Path | pd.DataFrame | None) -> pd.DataFrame | None:
    """A scan's windows: a DataFrame as is, or `SCAN_DIR` / `SCAN_DIR/scan.parquet` from `reverie scan`
    (a scan written before context_before / context_after existed reads back without them)."""
    if scan is None or isinstance(scan, pd.DataFrame):
        return scan
    path = Path(scan)
    path = path / "scan.parquet" if path.is_dir() else path
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read the scan {path} ({e}): pass the folder `reverie scan --out` wrote") from None


def data_starts(
    windows: pd.DataFrame, penalties: torch.Tensor, vocab: Vocabulary, length: int, every: int = 2
) -> tuple[tuple[int, ...], ...]:
    """Starting prompts from a scan's windows, so a dream's frontier begins at the data and can only climb.

    Every `every`-th slot, from the most fluent (largest λ) down, takes the unused window that
    maximises its own objective f − λ·CE; the other slots start as `EPOConfig.starts` says (a beam
    search by default: search/starts.py). Windows of another length, or that fail the vocabulary's
    checks (banned text, re-tokenisation), are skipped."""
    windows = windows[[len(i) == length for i in windows["ids"]]]
    if windows.empty:
        raise ConfigError(f"the scan has no {length}-token window for this target: scan with --window {length}")
    ids = torch.tensor([list(map(int, i)) for i in windows["ids"]])
    usable = vocab.ok(ids)
    ids, f = ids[usable], torch.tensor(windows["activation"].to_numpy(), dtype=torch.float32)[usable]
    ce = torch.tensor(windows["cross_entropy"].to_numpy(), dtype=torch.float32)[usable]
    if len(ids) == 0:
        raise ConfigError(
            "none of the scan's windows for this target passes the prompt checks (banned text, re-tokenisation)"
        )
    starts: list[tuple[int, ...]] = [()] * len(penalties)
    free = torch.ones(len(ids), dtype=torch.bool)
    for slot in range(len(penalties) - 1, -1, -every):
        if not free.any():
            break
        score = torch.where(free, f - float(penalties[slot]) * ce, -torch.inf)
        j = int(score.argmax())
        free[j] = False
        starts[slot] = tuple(ids[j].tolist())
    return tuple(starts)
