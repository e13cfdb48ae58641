"""A feature index of a corpus: one pass over it records, for every MLP neuron of every layer (and every
feature of the SAEs given), the positions where it is highest in context, so that any of those features'
best dataset windows are seconds away (re-scored as windows on demand, `FeatureIndex.windows`).

The pass runs the model over the corpus in chunks, as `scan` does, and keeps the top `candidates`
in-context activations per feature. The index lives in the cache folder, keyed by the model, the corpus,
the SAEs and the options (`index_dir`); a pass that is interrupted resumes from its last checkpoint
(written every `CHECKPOINT_SECONDS`), and a second build of the same key is a cache hit.

Files of an index folder: `index.json` (what was indexed, how many tokens, how long it took, whether it
is complete), `tokens.safetensors` (the corpus's token ids, flat, and where each document starts) and
`features.safetensors` (per source — `L<layer>` for a layer's MLP neurons, `sae<j>` for the j-th SAE —
the values [candidates, width] and flat token positions [candidates, width] of its top activations).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from ..errors import ConfigError, RunDirError
from ..fast.capabilities import FastPath
from ..files import atomic_write, read_json, write_json
from ..lm.cache import cache_dir
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.sae import SAEFeature, SAEWeights
from ..lm.targets import Neuron, Target, as_target
from .scan import COLUMNS, documents, score_windows

VERSION = 1
CHECKPOINT_SECONDS = 60.0
META, TOKENS, FEATURES, PARTIAL = "index.json", "tokens.safetensors", "features.safetensors", "partial.safetensors"


@dataclass(frozen=True)
class IndexConfig:
    window: int = 12  # n: tokens per window re-scored on demand (the dreams' length)
    candidates: int = 64  # in-context positions kept per feature
    chunk: int = 256  # tokens per forward pass row
    batch_size: int = 8  # rows per forward pass
    max_tokens: int | None = None  # index only the first this many corpus tokens
    field: str = "text"  # JSONL field / Parquet column

    def __post_init__(self) -> None:
        least = {"window": 2, "candidates": 1, "chunk": 2, "batch_size": 1, "max_tokens": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if name == "max_tokens" and value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
        if self.chunk < self.window:
            raise ConfigError(f"chunk ({self.chunk}) must hold a whole window ({self.window} tokens)")


def _sources(model: Model, saes: tuple[SAEWeights, ...]) -> dict[str, tuple[str, Callable | None, int]]:
    """Name -> (hook, encoder or None, features): every layer's MLP neurons, then every SAE's features."""
    out: dict[str, tuple[str, Callable | None, int]] = {
        f"L{layer}": (f"blocks.{layer}.mlp.hook_post", None, model.adapter.d_mlp) for layer in range(model.n_layers)
    }
    for j, sae in enumerate(saes):
        out[f"sae{j}"] = (sae.hook_name, sae.encode, sae.d_sae)
    return out


def _sae_weights(sae) -> tuple[str, SAEWeights]:
    """(how the SAE is named in specs, its weights) for a folder, a SAELens name or an `SAEFeature`."""
    feature = sae if isinstance(sae, SAEFeature) else SAEFeature(sae, 0)
    assert feature.weights is not None  # SAEFeature.__post_init__ sets them
    return feature.source, feature.weights


def index_dir(model: Model, corpus: str, config: IndexConfig, saes: Iterable[str] = ()) -> Path:
    """The cache folder of the index of `corpus` for `model` (and `saes`) with these options."""
    key = json.dumps(
        {
            "version": VERSION,
            "model": model.spec,
            "corpus": _corpus_key(corpus),
            "saes": list(saes),
            "config": asdict(config),
        },
        sort_keys=True,
    )
    slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in f"{model.spec}-{Path(corpus).name}")[-48:]
    return cache_dir() / "indexes" / f"{slug.strip('-')}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _corpus_key(corpus: str) -> str:
    if corpus == "bundled" or corpus.startswith("hf:"):
        return corpus
    return str(Path(corpus).expanduser().resolve())


_opened: dict = {}  # path -> (the files' modification times, the FeatureIndex read from them)


@dataclass
class FeatureIndex:
    """The top in-context positions of every indexed feature; `windows(target)` re-scores them."""

    path: Path
    meta: dict
    tokens: torch.Tensor  # [T] the corpus's token ids, documents one after another
    doc_starts: torch.Tensor  # [D] where each document starts in `tokens`
    values: dict[str, torch.Tensor]  # source -> [candidates, width] in-context activations (−inf: none)
    positions: dict[str, torch.Tensor]  # source -> [candidates, width] flat positions in `tokens`

    @classmethod
    def open(cls, path: str | Path) -> FeatureIndex:
        """An index folder written by `build_index` (complete); RunDirError if it is not one. Kept in memory
        while its files stay the same, so that many dreams in one process read it once."""
        path = Path(path)
        try:
            stamp = tuple((path / name).stat().st_mtime_ns for name in (META, TOKENS, FEATURES))
        except OSError:
            stamp = None
        if stamp is not None and _opened.get(path, (None,))[0] == stamp:
            return _opened[path][1]
        index = cls._read(path)
        if stamp is not None:
            _opened[path] = (stamp, index)
        return index

    @classmethod
    def _read(cls, path: Path) -> FeatureIndex:
        from safetensors.torch import load_file

        meta = read_json(path / META)
        if not isinstance(meta, dict) or not meta.get("complete"):
            raise RunDirError(f"{path} holds no complete feature index: build it with `reverie index`")
        try:
            tokens, features = load_file(path / TOKENS), load_file(path / FEATURES)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise RunDirError(
                f"cannot read the feature index in {path} ({e}): delete the folder and build it again"
            ) from None
        values = {k[len("values.") :]: v for k, v in features.items() if k.startswith("values.")}
        positions = {k[len("positions.") :]: v for k, v in features.items() if k.startswith("positions.")}
        return cls(path, meta, tokens["tokens"], tokens["doc_starts"], values, positions)

    def source_of(self, target: Target) -> tuple[str, int] | None:
        """(source, column) holding `target` in this index, or None if it does not cover it: MLP neurons
        of any layer and features of the indexed SAEs, read at the last position."""
        if target.position != -1:
            return None
        if isinstance(target, Neuron) and isinstance(target.layer, int):
            name = f"L{target.layer}"
            return (name, target.index) if name in self.values and target.index < self.values[name].shape[1] else None
        if isinstance(target, SAEFeature):
            for j, source in enumerate(self.meta.get("saes", [])):
                if source == target.source:
                    return f"sae{j}", target.feature
        return None

    def covers(self, target: Target) -> bool:
        return self.source_of(target) is not None

    def windows(self, model: Model, target: Target | str, top: int = 20, length: int | None = None) -> pd.DataFrame:
        """The target's `top` best windows (`scan`'s columns): its indexed positions re-scored as windows of
        `length` tokens (default: the index's window) ending there."""
        model = as_model(model)
        target = as_target(target, model)
        where = self.source_of(target)
        if where is None:
            raise ConfigError(
                f"the feature index in {self.path} does not cover {target.spec}: it holds MLP neurons"
                + (" and the features of its SAEs" if self.meta.get("saes") else "")
            )
        values, positions = self.values[where[0]][:, where[1]], self.positions[where[0]][:, where[1]]
        found = values > -math.inf
        values, positions = values[found], positions[found].long()
        if not len(values):
            return pd.DataFrame(columns=COLUMNS)
        doc = torch.searchsorted(self.doc_starts, positions, right=True) - 1
        keys = torch.stack([doc, positions - self.doc_starts[doc]], 1)
        bounds = torch.cat([self.doc_starts, torch.tensor([len(self.tokens)])])
        docs = {d: self.tokens[int(bounds[d]) : int(bounds[d + 1])].tolist() for d in doc.unique().tolist()}
        return score_windows(model, target, docs, keys, values, length or self.meta["config"]["window"], top)


def _complete(path: Path) -> bool:
    """Whether the index folder `path` is complete (a missing or unreadable meta.json: it is not)."""
    meta = read_json(path / META)
    return meta is not None and bool(meta.get("complete"))


def find_index(model: Model, corpus: str, config: IndexConfig | None = None) -> FeatureIndex | None:
    """The complete index of `corpus` for `model` in the cache, if one was built with these options; with
    `config` None, the one of the whole corpus (any other options); else None."""
    if config is not None:
        path = index_dir(model, corpus, config)
        return FeatureIndex.open(path) if _complete(path) else None
    found = []
    for meta_path in (cache_dir() / "indexes").glob(f"*/{META}"):
        meta = read_json(meta_path)
        if (
            isinstance(meta, dict)
            and meta.get("complete")
            and meta.get("model") == model.spec
            and meta.get("corpus") == _corpus_key(corpus)
            and meta.get("version") == VERSION
            and meta.get("config", {}).get("max_tokens") is None
        ):
            found.append((meta.get("tokens", 0), meta_path.parent))
    return FeatureIndex.open(max(found)[1]) if found else None


def build_index(
    model: Model | str,
    corpus: str = "bundled",
    config: IndexConfig | None = None,
    saes=(),
    progress: Callable[[int, int, float], None] | None = None,
) -> FeatureIndex:
    """Index `corpus` for `model` (and the SAEs in `saes`: folders, SAELens names or SAEFeatures), or open
    the index already built with the same key. progress(tokens done, tokens in all, seconds per token so
    far) is called after every batch; the first call comes before the first batch, with 0 tokens done."""
    from safetensors.torch import load_file, save_file

    config = config or IndexConfig()
    model = as_model(model)
    named = [_sae_weights(s) for s in saes]
    for _, weights in named:
        SAEFeature(weights, 0).prepare(model)  # the SAE reads a hook this model has, of its width
    path = index_dir(model, corpus, config, [n for n, _ in named])
    if _complete(path):
        return FeatureIndex.open(path)
    tokens, doc_starts, chunks = _tokenize(model, corpus, config)
    sources = _sources(model, tuple(w for _, w in named))
    widths = {name: width for name, (_, _, width) in sources.items()}
    state = {f"values.{n}": torch.full((config.candidates, w), -math.inf) for n, w in widths.items()}
    state.update(
        {f"positions.{n}": torch.full((config.candidates, w), -1, dtype=torch.int32) for n, w in widths.items()}
    )
    done, seconds = 0, 0.0
    meta = {
        "version": VERSION,
        "model": model.spec,
        "corpus": _corpus_key(corpus),
        "saes": [n for n, _ in named],
        "config": asdict(config),
        "tokens": int(len(tokens)),
        "documents": int(len(doc_starts)),
        "complete": False,
    }
    if (path / PARTIAL).exists() and (path / TOKENS).exists():
        try:
            saved = load_file(path / PARTIAL)
            done, seconds = int(saved.pop("done").item()), float(saved.pop("seconds").item())
            state = saved
        except Exception:  # a damaged checkpoint: start over
            done, seconds = 0, 0.0
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / TOKENS, lambda tmp: save_file({"tokens": tokens, "doc_starts": doc_starts}, tmp))
        write_json(path / META, meta)
    except OSError as e:
        raise RunDirError(
            f"cannot write the feature index to {path} ({e.strerror}): set REVERIE_CACHE to a writable folder"
        ) from None
    hooks = sorted({hook for hook, _, _ in sources.values()})
    total = sum(len(c[2]) for c in chunks)
    done_tokens = sum(len(c[2]) for c in chunks[:done])
    if progress:
        progress(done_tokens, total, seconds / done_tokens if done_tokens else math.nan)
    last_save = time.perf_counter()
    for b in range(done, len(chunks), config.batch_size):
        started = time.perf_counter()
        batch = chunks[b : b + config.batch_size]
        _index_batch(model, batch, sources, hooks, state, config)
        seconds += time.perf_counter() - started
        done_tokens += sum(len(piece) for _, _, piece in batch)
        done = b + len(batch)
        if time.perf_counter() - last_save > CHECKPOINT_SECONDS and done < len(chunks):
            _save_partial(path, state, done, seconds)
            last_save = time.perf_counter()
        if progress:
            progress(done_tokens, total, seconds / done_tokens)
    atomic_write(path / FEATURES, lambda tmp: save_file(state, tmp))
    write_json(path / META, {**meta, "complete": True, "seconds": round(seconds, 1)})
    (path / PARTIAL).unlink(missing_ok=True)
    return FeatureIndex.open(path)


def _save_partial(path: Path, state: dict, done: int, seconds: float) -> None:
    from safetensors.torch import save_file

    extra = {"done": torch.tensor(done), "seconds": torch.tensor(seconds, dtype=torch.float64)}
    atomic_write(path / PARTIAL, lambda tmp: save_file({**state, **extra}, tmp))


def _tokenize(model: Model, corpus: str, config: IndexConfig):
    """Flat token ids, document starts, and the chunks of at least two tokens: (flat start, the first index in
    the chunk where a whole window fits in the document, ids)."""
    pieces, starts, chunks, seen = [], [], [], 0
    for text in documents(corpus, config.field):
        if config.max_tokens is not None and seen >= config.max_tokens:
            break
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if config.max_tokens is not None:
            ids = ids[: config.max_tokens - seen]
        starts.append(seen)  # every document keeps its number (as in a scan), even one too short to index
        for offset in range(0, len(ids) if len(ids) >= config.window else 0, config.chunk):
            if len(ids[offset : offset + config.chunk]) >= 2:
                chunks.append((seen + offset, max(0, config.window - 1 - offset), ids[offset : offset + config.chunk]))
        pieces.append(torch.tensor(ids, dtype=torch.int32))
        seen += len(ids)
    if not chunks:
        raise ConfigError(f"the corpus {corpus} has no document of {config.window} tokens or more to index")
    return torch.cat(pieces), torch.tensor(starts, dtype=torch.int64), chunks


def _index_batch(model: Model, batch, sources: dict, hooks: list[str], state: dict, config: IndexConfig) -> None:
    """Run one batch of chunks and merge every feature's activations into its running top `candidates`."""
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    width = max(len(piece) for _, _, piece in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    where = torch.full((len(batch), width), -1, dtype=torch.int32)  # flat position; −1: padding or no whole window
    for i, (start, first, piece) in enumerate(batch):
        ids[i, : len(piece)] = torch.tensor(piece)
        where[i, first : len(piece)] = torch.arange(start + first, start + len(piece), dtype=torch.int32)
    with torch.inference_mode(), FastPath.of(model).run(), model.capture(hooks) as cache:
        model.trunk(ids.to(model.device))
    pos = where.reshape(-1)
    for name, (hook, encode, _) in sources.items():
        acts = cache[hook].reshape(len(pos), -1)  # in the model's dtype, on its device
        state[f"values.{name}"], state[f"positions.{name}"] = merge_top(
            state[f"values.{name}"], state[f"positions.{name}"], acts if encode is None else encode(acts), pos
        )


def merge_top(values: torch.Tensor, positions: torch.Tensor, acts: torch.Tensor, pos: torch.Tensor):
    """Every column's top rows of `values` [C, d] (fp32, sorted, best first) and `acts` [P, d] (any float
    dtype, any device), with their positions (`positions` [C, d], `pos` [P]; a row whose position is −1 is
    skipped): as `cat(...).topk(C, dim=0)` in fp32, but only the entries above a column's current C-th
    value are sorted in, with only the columns they touch — late in a pass, a few. The comparison runs
    in the activations' own dtype (the thresholds came from it, so exactly)."""
    C, d = values.shape
    valid = (pos >= 0).to(acts.device)
    threshold = values[-1].to(acts.device, acts.dtype)
    row, col = ((acts > threshold[None, :]) & valid[:, None]).nonzero(as_tuple=True)
    if not len(row):
        return values, positions
    if len(row) > values.numel():  # early in a pass most entries go in: one topk is cheaper
        top = torch.cat([values, acts[valid].float().cpu()]).topk(C, dim=0)
        pos = pos[valid.cpu()][:, None].expand(-1, d).to(positions.dtype)
        return top.values, torch.cat([positions, pos]).gather(0, top.indices)
    new = acts[row, col].float().cpu()
    row, col = row.cpu(), col.cpu()
    hit = torch.bincount(col, minlength=d) > 0
    touched = hit.nonzero()[:, 0]
    t = len(touched)
    col = (hit.cumsum(0) - 1)[col]  # each entry's column among the touched ones
    v = torch.cat([values[:, touched].t().reshape(-1), new])
    p = torch.cat([positions[:, touched].t().reshape(-1), pos[row].to(positions.dtype)])
    c = torch.cat([torch.arange(t).repeat_interleave(C), col])
    order = (c << 32 | _descending(v)).argsort()  # one sort: by column, best first within each
    starts = torch.searchsorted(c[order], torch.arange(t))
    keep = order[torch.arange(len(order)) - starts[c[order]] < C]
    values, positions = values.clone(), positions.clone()
    values[:, touched] = v[keep].reshape(t, C).t()
    positions[:, touched] = p[keep].reshape(t, C).t()
    return values, positions


def _descending(v: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) that sort float32 values from the largest down (−inf last)."""
    bits = v.float().contiguous().view(torch.int32).long()
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # now increasing with the value
    return (2**31 - 1) - ordered
