"""One timed dream at paper settings: median seconds per iteration, the best activations, the frontier.

python bench/dream.py neuron:L3.N492 [--iters 300] [--seed 0] [--out runs/bench-n492]
"""

from __future__ import annotations

import argparse
import statistics

import reverie
from reverie import EPOConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    seconds = []
    result = reverie.dream(
        args.model,
        args.target,
        EPOConfig(iters=args.iters, seed=args.seed),
        out=args.out,
        callback=lambda step: seconds.append(step.seconds),
    )
    print(
        f"median s/iter {statistics.median(seconds):.3f}  mean {statistics.mean(seconds):.3f}  "
        f"total {result.seconds:.1f} s over {result.iterations} iterations"
    )
    print(result.summary().to_string())
    print(result.frontier()[["cross_entropy", "activation", "text"]].to_string())


if __name__ == "__main__":
    main()
