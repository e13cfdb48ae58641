"""Fluent from scratch: do dreams beat the best dataset window at equal fluency, per search variant?

    python bench/fluent.py run --scan SCAN_DIR --variant base --variant lm=starts:sampled,lm_children:0.5 \
        [--neurons ../shared/bench/neurons.txt] [--seeds 0 1 2] [--iters 100] [--data-starts] \
        [--time-budget SECONDS] [--out bench/results/fluent.json]
    python bench/fluent.py table bench/results/fluent*.json [--baseline base]

`run` dreams every (neuron, seed, variant) on the bundled model and records, besides the best activation
at cross-entropy <= 4, 5, 6 and unconstrained, the best activation at a cross-entropy no higher than the
scan's best window (`best_at_window`) and its margin over that window. It appends to --out as it goes and
skips what the file already holds, so an interrupted run continues. A variant is NAME or
NAME=option:value,option:value with EPOConfig options; `--data-starts` starts half the slots from the
scan's windows, as `reverie dream --scan` does.

`table` pools result files: per variant and start, on how many neurons the dreams beat the window
(seeds merged into one frontier, like bench/versus.py), the median margin, and, paired against the
baseline variant on the same (neuron, seed, start, budget), wins/losses with a two-sided sign test and
the mean difference of `best_at_window` with a bootstrap 95% interval (a run with no prompt that fluent
counts as the window's activation minus 1 there).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

THRESHOLDS = (4.0, 5.0, 6.0, math.inf)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, options = text.partition("=")
    out = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition(":")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return name, out


def run(args) -> None:
    import reverie
    from reverie import EPO, EPOConfig, make_scorer, summary
    from reverie.evidence.scan import data_starts, read_scan
    from reverie.search.frontier import best_at

    out = Path(args.out)
    done = json.loads(out.read_text())["runs"] if out.exists() else []
    key = lambda r: (r["target"], r["seed"], r["variant"], r["data_starts"], r["budget"])  # noqa: E731
    seen = {key(r) for r in done}
    specs = [line.strip() for line in Path(args.neurons).read_text().splitlines() if line.strip()]
    specs = specs[args.part :: args.parts]
    windows = read_scan(args.scan)
    model = reverie.load_model(args.model, dtype=args.dtype)
    budget = "iterations" if args.time_budget is None else f"{args.time_budget:g}s"
    for spec in specs:
        mine = windows[windows["target"] == spec]
        best_window = mine.loc[mine["activation"].idxmax()]
        for seed in args.seeds:
            for name, options in map(parse_variant, args.variant):
                row = {"target": spec, "seed": seed, "variant": name, "data_starts": args.data_starts, "budget": budget}
                if key(row) in seen:
                    continue
                config = EPOConfig.paper(
                    seed=seed,
                    iters=args.iters if args.time_budget is None else 10**6,
                    time_budget=args.time_budget,
                    **options,
                )
                scorer = make_scorer(model, spec, config)
                if args.data_starts:
                    config = EPOConfig(
                        **{
                            **config.to_dict(),
                            "init_ids": data_starts(mine, config.slot_penalties(), scorer.vocab, config.length),
                        }
                    )
                start = time.perf_counter()
                epo = EPO(scorer, config)
                epo.run()
                seconds = time.perf_counter() - start
                history = epo.history.frame(scorer.vocab.decode)
                at = best_at(history, float(best_window["cross_entropy"]))
                best = summary(history, THRESHOLDS)
                row.update(
                    {
                        "options": options,
                        "iterations": epo.state.iteration,
                        "seconds": round(seconds, 2),
                        "window_activation": float(best_window["activation"]),
                        "window_cross_entropy": float(best_window["cross_entropy"]),
                        "best_at_window": None if at is None else float(at["activation"]),
                        "best_at_window_text": None if at is None else at["text"],
                        **{
                            f"ce<={x:g}": (None if pd.isna(a) else float(a))
                            for x, a in zip(best.max_cross_entropy, best.activation)
                        },
                    }
                )
                done.append(row)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(
                    json.dumps(
                        {"settings": {k: v for k, v in vars(args).items() if k != "func"}, "runs": done},
                        indent=1,
                        allow_nan=False,
                    )
                )
                print(
                    json.dumps(
                        {
                            k: row[k]
                            for k in ("target", "seed", "variant", "seconds", "window_activation", "best_at_window")
                        }
                    ),
                    flush=True,
                )


def sign_test(wins: int, losses: int) -> float:
    n = wins + losses
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0


def table(args) -> None:
    runs = pd.DataFrame([r for f in args.files for r in json.loads(Path(f).read_text())["runs"]])
    runs["value"] = runs["best_at_window"].fillna(runs["window_activation"] - 1.0)
    runs["margin"] = runs["best_at_window"] - runs["window_activation"]
    rng = np.random.default_rng(0)
    rows = []
    for (data, budget), group in runs.groupby(["data_starts", "budget"]):
        base = group[group["variant"] == args.baseline].set_index(["target", "seed"])["value"]
        for name, v in group.groupby("variant", sort=False):
            per_neuron = v.groupby("target").agg(best=("best_at_window", "max"), window=("window_activation", "first"))
            margin = per_neuron["best"] - per_neuron["window"]
            row = {
                "starts": "data" if data else "no corpus",
                "budget": budget,
                "variant": name,
                "runs": len(v),
                "s/run": round(v["seconds"].mean(), 1),
                "neurons won": f"{int((margin > 0).sum())}/{len(per_neuron)}",
                "median margin": f"{margin.fillna(-np.inf).median():+.2f}",
            }
            if name != args.baseline and len(base):
                mine = v.set_index(["target", "seed"])["value"]
                both = mine.index.intersection(base.index)
                d = (mine[both] - base[both]).to_numpy()
                wins, losses = int((d > 0).sum()), int((d < 0).sum())
                boot = d[rng.integers(0, len(d), (10_000, len(d)))].mean(1) if len(d) else np.zeros(1)
                row.update(
                    {
                        "vs " + args.baseline: f"{wins}/{losses}/{len(d) - wins - losses}",
                        "sign p": f"{sign_test(wins, losses):.2g}",
                        "mean diff [95%]": f"{d.mean():+.2f} [{np.percentile(boot, 2.5):+.2f}, "
                        f"{np.percentile(boot, 97.5):+.2f}]"
                        if len(d)
                        else "-",
                    }
                )
            rows.append(row)
    table = pd.DataFrame(rows).fillna("")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(map(str, r)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(required=True)
    r = sub.add_parser("run")
    r.add_argument("--scan", required=True)
    r.add_argument("--variant", action="append", required=True)
    r.add_argument("--model", default="bundled")
    r.add_argument("--dtype", default=None)
    r.add_argument("--neurons", default=str(Path(__file__).resolve().parents[2] / "shared/bench/neurons.txt"))
    r.add_argument("--part", type=int, default=0, help="with --parts P: only every P-th neuron from this one")
    r.add_argument("--parts", type=int, default=1)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--iters", type=int, default=100)
    r.add_argument("--time-budget", type=float, default=None, help="seconds per run instead of --iters")
    r.add_argument("--data-starts", action="store_true")
    r.add_argument("--out", default="bench/results/fluent.json")
    r.set_defaults(func=run)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--baseline", default="base")
    t.set_defaults(func=table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
