"""Search quality: best activation at cross-entropy <= 4, 5, 6 and unconstrained, reverie vs the reference path
(EPO with the PlainScorer: the paper's algorithm written plainly).

    python bench/quality.py [--neurons ../shared/bench/neurons.txt] [--limit 4] [--seeds 0 1]
                            [--iters 40] [--seconds 60] [--budgets iterations wall-clock] [--dtype float32]
                            [--out bench/results/quality.json]

Each (neuron, seed) runs twice per path: once for a fixed number of iterations, once for a fixed
wall-clock budget. A faster iteration that finds worse prompts is not faster, so both must hold.
The table gives each threshold's mean best activation over the runs that found a prompt that fluent,
and how many did (a mean over 3 of 8 runs is not a mean over 8).

The two paths are the same search: in float32 they take the same steps (`--dtype float32`;
tests/test_spec.py checks it every iteration). In bf16, the default on CPU, they part from the
first iteration: the reference's one-hot gradient is rounded to bf16 (many ties among the vocabulary)
where reverie projects in fp32, so the top-k lists are ordered differently. At equal iterations their
results then agree only as samples from the same distribution: compare many seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

import reverie
from reverie import EPO, EPOConfig, make_scorer, summary

THRESHOLDS = (4.0, 5.0, 6.0, math.inf)


def one_run(model, spec, seed, iters, seconds, reference):
    config = EPOConfig.paper(seed=seed, iters=iters if seconds is None else 10**6, time_budget=seconds)
    scorer = make_scorer(model, spec, config, scorer="plain" if reference else "packed")
    epo = EPO(scorer, config)
    epo.run()
    history = epo.history.frame(scorer.vocab.decode)
    best = summary(history, THRESHOLDS)
    return {
        "iterations": epo.state.iteration,
        **{f"ce<={x:g}": (None if pd.isna(a) else float(a)) for x, a in zip(best.max_cross_entropy, best.activation)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument(
        "--dtype", default=None, help="e.g. float32: both paths then walk the same path (tests/test_spec.py)"
    )
    ap.add_argument("--neurons", default=str(Path(__file__).resolve().parents[2] / "shared/bench/neurons.txt"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N neurons")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--budgets", nargs="+", default=["iterations", "wall-clock"], choices=["iterations", "wall-clock"])
    ap.add_argument("--out", default="bench/results/quality.json")
    args = ap.parse_args()

    specs = [line.strip() for line in Path(args.neurons).read_text().splitlines() if line.strip()][: args.limit]
    model = reverie.load_model(args.model, dtype=args.dtype)
    rows = []
    for spec in specs:
        for seed in args.seeds:
            for path in ("reverie", "reference"):
                budgets = {"iterations": (args.iters, None), "wall-clock": (None, args.seconds)}
                for budget, (iters, seconds) in ((b, budgets[b]) for b in args.budgets):
                    r = one_run(model, spec, seed, iters, seconds, path == "reference")
                    rows.append({"target": spec, "seed": seed, "path": path, "budget": budget, **r})
                    print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2))
    cols = [c for c in df.columns if c.startswith("ce<=")]
    groups = df.groupby(["budget", "path"])
    table = groups[cols].agg(lambda x: f"{x.mean():.2f} ({x.count()}/{len(x)})" if x.count() else f"- (0/{len(x)})")
    table["iterations"] = groups["iterations"].mean().round(1)
    print(table.to_string())


if __name__ == "__main__":
    main()
