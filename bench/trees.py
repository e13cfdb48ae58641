"""Seconds per iteration of the same EPO run on two source trees, interleaved, in one session: does a
change that should not touch speed leave it alone?

    git worktree add /tmp/old <commit>
    python bench/trees.py /tmp/old/src src [--iters 8] [--repeats 2] [--target neuron:L2.N148]

Each repeat runs the default EPOConfig (no corpus) on the bundled model once per tree, in a fresh process
with that tree first on PYTHONPATH, and prints the median and mean seconds per iteration and the best
activation (the same on both when the change keeps the steps). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

RUN = """
import json, statistics, sys
import reverie
from reverie import EPOConfig
times = []
r = reverie.dream("bundled", sys.argv[2], EPOConfig(iters=int(sys.argv[1]), seed=0), corpus=None,
                  callback=lambda s: times.append(s.seconds))
print(json.dumps({"median_s": statistics.median(times), "mean_s": statistics.mean(times),
                  "best": float(r.history.activation.max())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, help="two src/ folders (the package reverie inside each)")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target", default="neuron:L2.N148")
    args = parser.parse_args()
    rows = {tree: [] for tree in args.trees}
    for _ in range(args.repeats):
        for tree in args.trees:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            done = subprocess.run(
                [sys.executable, "-c", RUN, str(args.iters), args.target],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows[tree].append(row)
            print(tree, row, flush=True)
    for tree, runs in rows.items():
        print(f"{tree}: median {statistics.median(r['median_s'] for r in runs):.3f} s/iteration over {len(runs)} runs")


if __name__ == "__main__":
    main()
