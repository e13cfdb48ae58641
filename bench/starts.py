"""What a run's start costs: seconds to build the first population with random and beam starts, and the
first iterations after it, side by side in one process (bundled model, bf16, paper settings).

    python bench/starts.py [--targets neuron:L2.N148 neuron:L13.N1333] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import reverie
from reverie import EPO, EPOConfig, make_scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["neuron:L2.N148", "neuron:L13.N1333"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model = reverie.load_model("bundled", dtype="bf16")
    for spec in args.targets:
        for starts in ["random", "beam"] * args.repeats:
            config = EPOConfig(seed=0, iters=3, starts=starts)
            scorer = make_scorer(model, spec, config)
            t = time.perf_counter()
            epo = EPO(scorer, config)
            start, steps = time.perf_counter() - t, []
            epo.run(lambda step: steps.append(step.seconds))
            print(f"{spec} {starts}: start {start:.2f} s, iterations {', '.join(f'{s:.2f}' for s in steps)} s", flush=True)


if __name__ == "__main__":
    main()
