"""Where an EPO iteration's time goes, reverie's fast path against the plain path, in one process.

    python bench/breakdown.py [--model bundled] [--dtype float32] [--target neuron:L2.N100]
                            [--warmup 3] [--iters 4] [--plain-iters 1] [--out bench/results/breakdown.json]

Runs `--warmup` iterations of reverie (`PackedScorer`), then profiles `--iters` more with torch's profiler,
then the same for the plain path (`PlainScorer`, one warm-up). For each path, per iteration: the CPU time
of all operators, of the matrix multiplies, of the multiplies with a vocabulary-sized side (the
unembedding, its backward and the gradient's projection onto the allowed tokens), and the rows those
vocabulary-sized multiplies take. The profiler's own overhead makes every time a little longer; compare
the two paths' shares and rows, not seconds across runs. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).parent))
import reverie
from reverie import EPO, EPOConfig, make_scorer
from reverie.lm.model import Model
from speed import cpu_flags, settle

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")
TILES = "bench.unembedding_tile"


def profiled(scorer, config, warmup: int, iters: int) -> dict:
    """Per-iteration CPU seconds by kind of operator over `iters` profiled iterations after `warmup`."""
    settle()
    epo = EPO(scorer, config)
    for _ in range(warmup):
        epo.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps = [epo.step() for _ in range(iters)]
    vocab = scorer.model.adapter.embed.num_embeddings
    out = {"cpu": 0.0, "matmul": 0.0, "vocab_matmul": 0.0, "vocab_rows": 0.0}
    for event in prof.events():
        seconds = event.self_cpu_time_total / 1e6 / iters
        out["cpu"] += seconds
        if event.name not in MATMULS:
            continue
        out["matmul"] += seconds
        shapes = [s for s in event.input_shapes if len(s) == 2]
        width = max(s[-1] for s in shapes)  # the output's columns, or the inner side of a backward
        if under(event, TILES) or width >= vocab // 2:  # a tile of the unembedding, or (most of) the vocabulary
            out["vocab_matmul"] += seconds
            out["vocab_rows"] += shapes[0][0] * min(width, vocab) / vocab / iters
    return {
        "iterations": iters,
        "wall_seconds": sum(s.seconds for s in steps) / iters,
        "phases": {k: sum(s.phases[k] for s in steps) / iters for k in steps[0].phases},
        **{f"{k}_seconds" if k != "vocab_rows" else k: v for k, v in out.items()},
    }


def under(event, name: str) -> bool:
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def label_tiles() -> None:
    """Mark the tiled unembedding's work (`Model.head_tiles`) in the profile."""
    tiles = Model.head_tiles

    def head_tiles(self, hidden, width):
        with record_function(TILES):
            yield from tiles(self, hidden, width)

    Model.head_tiles = head_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--target", default="neuron:L2.N100")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--plain-iters", type=int, default=1)
    ap.add_argument("--out", default="bench/results/breakdown.json")
    args = ap.parse_args()

    label_tiles()
    model = reverie.load_model(args.model, dtype=args.dtype)
    config = EPOConfig.paper(iters=10**6, seed=0)  # paper settings: M=8, r=32, k=512, n=12
    paths = {
        "reverie": profiled(make_scorer(model, args.target, config), config, args.warmup, args.iters),
        "plain": profiled(make_scorer(model, args.target, config, scorer="plain"), config, 1, args.plain_iters),
    }
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "cpu_flags": cpu_flags(),
        "model": model.spec,
        "vocab_size": model.adapter.embed.num_embeddings,
        "dtype": str(model.dtype),
        "target": args.target,
        "paths": paths,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, allow_nan=False))
    print(
        f"{model.spec} ({result['vocab_size']} tokens), {model.dtype}, {result['machine']}, "
        f"{' '.join(result['cpu_flags'])}"
    )
    print(f"{'path':<9}{'wall s/it':>10}{'cpu s/it':>10}{'matmul':>9}{'vocab mm':>10}{'vocab rows':>12}")
    for name, p in paths.items():
        print(
            f"{name:<9}{p['wall_seconds']:>10.2f}{p['cpu_seconds']:>10.2f}{p['matmul_seconds']:>9.2f}"
            f"{p['vocab_matmul_seconds']:>10.2f}{p['vocab_rows']:>12.0f}"
        )


if __name__ == "__main__":
    main()
