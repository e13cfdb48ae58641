"""Pool bench/quality.py result files and compare the two paths run by run (same neuron, seed, budget).

    python bench/paired.py bench/results/quality*.json [--budget iterations|wall-clock] [--dtype float32]

Per threshold: how often reverie's best beats the reference's on the same (neuron, seed), a two-sided
sign test on those wins and losses, and the mean paired difference with a bootstrap 95% interval. A run
that found no prompt that fluent counts as below any run that did (and as −1 in the difference).
"""

from __future__ import annotations

import argparse
import json
from math import comb

import numpy as np
import pandas as pd


def sign_test(wins: int, losses: int) -> float:
    n = wins + losses
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--budget", default="iterations", choices=["iterations", "wall-clock"])
    ap.add_argument("--dtype", default=None, help="pool the files run with this --dtype (default: those run without)")
    args = ap.parse_args()
    runs = []
    for f in args.files:
        data = json.load(open(f))
        if data["settings"].get("dtype") == args.dtype:
            runs += [r for r in data["runs"] if r["budget"] == args.budget]
    runs = pd.DataFrame(runs)
    if runs.empty:
        raise SystemExit(f"no {args.budget} runs with dtype {args.dtype or 'default'} in {', '.join(args.files)}")
    twice = runs.duplicated(["target", "seed", "path"])
    if twice.any():
        r = runs[twice].iloc[0]
        raise SystemExit(f"{r.target} seed {r.seed} ({r.path}) appears in more than one file: give each run once")
    cols = [c for c in runs.columns if c.startswith("ce<=")]
    pairs = runs.pivot_table(index=["target", "seed"], columns="path", values=cols, aggfunc="first", dropna=False)
    rng = np.random.default_rng(0)
    rows = []
    for c in cols:
        a, b = (pairs[c][p].fillna(-1.0).to_numpy() for p in ("reverie", "reference"))
        d = a - b
        wins, losses = int((d > 0).sum()), int((d < 0).sum())
        boot = d[rng.integers(0, len(d), (10_000, len(d)))].mean(1)
        rows.append(
            {
                "threshold": c,
                "reverie found": f"{pairs[c]['reverie'].count()}/{len(d)}",
                "reference found": f"{pairs[c]['reference'].count()}/{len(d)}",
                "wins/losses/ties": f"{wins}/{losses}/{len(d) - wins - losses}",
                "sign test p": f"{sign_test(wins, losses):.2g}",
                "mean difference [95%]": (
                    f"{d.mean():+.2f} [{np.percentile(boot, 2.5):+.2f}, {np.percentile(boot, 97.5):+.2f}]"
                ),
            }
        )
    print(f"{len(pairs)} paired runs, budget {args.budget}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
