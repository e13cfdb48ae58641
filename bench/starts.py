"""What the default start and children cost: the paper's EPO (`EPOConfig.paper()`: random starts, gradient
children) against the defaults (beam start, half the children from the model), side by side in one
process: seconds to build the first population, then seconds per iteration.

    python bench/starts.py [--model bundled] [--dtype bf16] [--targets neuron:L2.N148 neuron:L13.N1333] \
        [--iters 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import reverie
from reverie import EPO, EPOConfig, make_scorer

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--targets", nargs="+", default=["neuron:L2.N148", "neuron:L13.N1333"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model = reverie.load_model(args.model, dtype=args.dtype)
    print(f"{args.model} ({model.dtype}), CPU flags: {' '.join(cpu_flags())}", flush=True)
    for spec in args.targets:
        for name in ["paper", "default"] * args.repeats:
            config = (EPOConfig.paper if name == "paper" else EPOConfig)(seed=0, iters=args.iters)
            scorer = make_scorer(model, spec, config)
            t = time.perf_counter()
            epo = EPO(scorer, config)
            start, steps = time.perf_counter() - t, []
            epo.run(lambda step, steps=steps: steps.append(step.seconds))
            print(
                f"{spec} {name}: start {start:.2f} s, {sum(steps) / len(steps):.2f} s/iteration over {len(steps)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
