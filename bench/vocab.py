"""What an EPO iteration costs on a large vocabulary: Gemma-3-270M's shape (262,144 tokens, width 640,
18 layers, random weights) next to the bundled SmolLM2-135M (49,152 tokens), in one process.

    python bench/vocab.py [--models gemma3-262k bundled] [--dtypes default fp32] [--iters 12]
                          [--plain-iters 3] [--repeats 2] [--target neuron:L2.N148] [--label after]

For each model and dtype: seconds per iteration of reverie (`PackedScorer`) and of the plain path
(`PlainScorer`), the floor as bench/speed.py defines it (one plain forward of an iteration's M·r
prompts, full logits, in the scorer's batch size), the ratios, the median phases of an iteration
and, inside them, the time spent in what scales with the vocabulary (tiled cross-entropy, the
gradient pass's log-probabilities, the projection onto the allowed tokens, top-k), plus the time
to build the allowed-token list cold (nothing cached) and warm (cached on disk). Paths are measured
side by side, `--repeats` times each (interleaved), because the machine's cores are shared: compare
ratios from one run, not seconds across runs. Writes bench/results/vocab-LABEL.json.

The 262k model has random weights and a synthetic tokenizer: the bundled byte-level BPE tokenizer
extended with 212,992 merges of its own tokens into new ones (cost does not depend on the weights,
and no Gemma tokenizer ships offline). Its first build takes a few seconds and is cached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reverie
from reverie import EPO, EPOConfig, make_scorer
from reverie.lm import vocab as vocab_module
from reverie.lm.model import Model, bundled_path, cache_dir, parse_dtype
from reverie.scoring import objective as objective_module
from reverie.scoring import packed as packed_module
from reverie.scoring import plain as plain_module
from speed import cpu_flags, settle, time_floor

GEMMA_VOCAB = 262144


# ----------------------------------------------------------------------------------- the 262k model


def synthetic_tokenizer(size: int = GEMMA_VOCAB):
    """The bundled tokenizer extended to `size` tokens by merges of its own tokens (a + b, b without a
    leading space, so that encoding can produce them); built once into the cache."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = cache_dir() / "bench" / f"synthetic-bpe-{size}"
    if not (folder / "tokenizer.json").exists():
        base = bundled_path()
        spec = json.loads((base / "tokenizer.json").read_text())
        vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
        tokens = sorted(vocab, key=vocab.get)
        heads = [t for t in tokens[1000:30000] if t.startswith("Ġ") and len(t) > 2]
        tails = [t for t in tokens[300:6000] if not t.startswith("Ġ") and t.isalpha()]
        seen = set(vocab)
        for b in tails:
            for a in heads:
                if len(vocab) >= size:
                    break
                if a + b not in seen:
                    seen.add(a + b)
                    vocab[a + b] = len(vocab)
                    merges.append([a, b])
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "tokenizer.json").write_text(json.dumps(spec))
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (base / name).exists():
                shutil.copy(base / name, tmp / name)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) >= size, len(tok)
    return tok


def gemma3_262k(dtype: str | None) -> Model:
    """Gemma-3-270M's shape with random weights: vocabulary 262,144, width 640, 18 layers, MLP 2048,
    4 heads of 256 with 1 key-value head, sliding window 512, tied embeddings scaled by sqrt(640)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=GEMMA_VOCAB,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        max_position_embeddings=32768,
        query_pre_attn_scalar=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(config).to(parse_dtype(dtype, torch.device("cpu")))
    return Model(hf, synthetic_tokenizer(), spec="random-gemma3-262k")


def load(name: str, dtype: str | None) -> Model:
    return gemma3_262k(dtype) if name == "gemma3-262k" else reverie.load_model(name, dtype=dtype)


# ----------------------------------------------------------------------------------- timers


class Timers:
    """Seconds spent inside wrapped functions, per iteration (nested calls count once, at the outside)."""

    def __init__(self):
        self.now: dict[str, float] = defaultdict(float)
        self.depth: dict[str, int] = defaultdict(int)
        self.patches: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.depth[name] += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[name] -= 1
                if not self.depth[name]:
                    self.now[name] += time.perf_counter() - t

        setattr(owner, attr, timed)
        self.patches.append((owner, attr, fn))

    def take(self) -> dict[str, float]:
        out, self.now = dict(self.now), defaultdict(float)
        return out

    def restore(self) -> None:
        for owner, attr, fn in reversed(self.patches):
            setattr(owner, attr, fn)


@contextlib.contextmanager
def timed_parts():
    timers = Timers()
    timers.wrap(packed_module, "head_logprobs", "tiled cross-entropy")
    timers.wrap(packed_module.PackedScorer, "prompt_logprob", "log-probs (gradient pass + scoring)")
    timers.wrap(packed_module.PackedScorer, "through_context", "projection onto allowed tokens")
    timers.wrap(packed_module.PackedScorer, "gradient_pass", "gradient passes")
    timers.wrap(packed_module, "top_k_tokens", "top-k")
    timers.wrap(plain_module, "top_k_tokens", "top-k")
    timers.wrap(plain_module.PlainScorer, "allowed", "restrict to allowed tokens")
    timers.wrap(objective_module.Objective, "read", "target value")
    timers.wrap(vocab_module.Vocabulary, "ok", "constraints")
    try:
        yield timers
    finally:
        timers.restore()


# ----------------------------------------------------------------------------------- measurements


def time_iterations(scorer, config, iters: int, warmup: int, timers: Timers) -> dict:
    """Median seconds of iterations warmup+1 … warmup+iters of one run (seed 0), its phases, and the
    wrapped functions' seconds per iteration."""
    settle()
    epo = EPO(scorer, replace(config, seed=0))
    for _ in range(warmup):
        epo.step()
    timers.take()
    steps, parts = [], []
    for _ in range(iters):
        steps.append(epo.step())
        parts.append(timers.take())
    names = sorted({k for p in parts for k in p})
    return {
        "iterations": iters,
        "seconds_per_iteration": statistics.median(s.seconds for s in steps),
        "each": [round(s.seconds, 4) for s in steps],
        "phases": {k: statistics.median(s.phases[k] for s in steps) for k in steps[0].phases},
        "inside": {k: statistics.median(p.get(k, 0.0) for p in parts) for k in names},
    }


def time_vocabulary(model: Model) -> dict:
    """Seconds to hash the tokenizer (once per tokenizer object), to build the allowed-token list with its
    flags not cached (decoding every token; the cache file of this tokenizer is removed first), and with
    them cached on disk."""
    t = time.perf_counter()
    cached = hasattr(vocab_module, "fingerprint")  # not before the disk cache (bench/results/vocab-before.json)
    key = vocab_module.fingerprint(model.tokenizer) if cached else None
    hashing = time.perf_counter() - t
    for path in vocab_module.vocab_cache_folder().glob(f"{key}-*") if key else ():
        path.unlink()
    t = time.perf_counter()
    v = vocab_module.Vocabulary.for_model(model)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    vocab_module.Vocabulary.for_model(model)
    warm = time.perf_counter() - t
    return {
        "tokens": len(model.tokenizer),
        "allowed": len(v),
        "fingerprint_seconds": hashing,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "disk_cache": cached,
    }


def measure(name: str, dtype: str | None, args, timers: Timers) -> dict:
    model = load(name, dtype)
    print(f"\n== {model.spec} {model.dtype} vocabulary {len(model.tokenizer)}", flush=True)
    config = EPOConfig.paper(iters=10**6, seed=0, batch_size=args.batch_size, restart_every=0)
    vocab = time_vocabulary(model)
    print(
        f"allowed tokens: {vocab['allowed']} (cold {vocab['cold_seconds']:.2f} s, warm {vocab['warm_seconds']:.3f} s)",
        flush=True,
    )
    packed = make_scorer(model, args.target, config)
    plain = make_scorer(model, args.target, config, scorer="plain")
    children = config.population * config.children
    runs: dict[str, list] = {"packed": [], "plain": [], "floor": []}
    for r in range(args.repeats):
        runs["floor"].append(time_floor(model, packed.vocab, children, config.length, packed.batch_size, repeats=1))
        runs["packed"].append(time_iterations(packed, config, args.iters, args.warmup, timers))
        runs["plain"].append(time_iterations(plain, config, args.plain_iters, 1, timers))
        print(
            f"repeat {r}: floor {runs['floor'][-1]:.3f} s, packed {runs['packed'][-1]['seconds_per_iteration']:.3f} s, "
            f"plain {runs['plain'][-1]['seconds_per_iteration']:.3f} s",
            flush=True,
        )
    floor = statistics.median(runs["floor"])
    fast = statistics.median(r["seconds_per_iteration"] for r in runs["packed"])
    slow = statistics.median(r["seconds_per_iteration"] for r in runs["plain"])
    result = {
        "model": model.spec,
        "dtype": str(model.dtype),
        "vocabulary": len(model.tokenizer),
        "batch_size": packed.batch_size,
        "allowed_vocabulary": vocab,
        "floor_seconds": floor,
        "packed_seconds_per_iteration": fast,
        "plain_seconds_per_iteration": slow,
        "ratio_to_floor": fast / floor,
        "speedup_vs_plain": slow / fast,
        "runs": runs,
    }
    for path in ("packed", "plain"):
        last = runs[path][-1]
        print(f"{path:>7}: {' '.join(f'{k}={v:.3f}' for k, v in last['phases'].items())}")
        print(f"{'':>7}  inside: {' '.join(f'{k}={v:.3f}' for k, v in last['inside'].items())}")
    print(
        f"floor {floor:.3f} s; packed {fast:.3f} s ({fast / floor:.2f}x floor); plain {slow:.3f} s; "
        f"packed is {slow / fast:.2f}x faster than plain",
        flush=True,
    )
    del packed, plain, model
    settle()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma3-262k", "bundled"])
    ap.add_argument("--dtypes", nargs="+", default=["default", "fp32"])
    ap.add_argument("--target", default="neuron:L2.N148")
    ap.add_argument("--iters", type=int, default=12, help="reverie's iterations per repeat, after --warmup")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--plain-iters", type=int, default=3, help="the plain path's iterations per repeat (after one warm-up)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--label", default="after")
    args = ap.parse_args()
    results = []
    with timed_parts() as timers:
        for name in args.models:
            for dtype in args.dtypes:
                results.append(measure(name, None if dtype == "default" else dtype, args, timers))
    out = Path(__file__).parent / "results" / f"vocab-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "cpu_flags": cpu_flags(),
                "note": "cores shared with other processes: compare ratios within this file",
                "target": args.target,
                "settings": {"M": 8, "r": 32, "k": 512, "n": 12, "restarts": "off"},
                "command": "python bench/vocab.py " + " ".join(sys.argv[1:]),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
