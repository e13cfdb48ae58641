"""Which additions beyond the paper help: best activation at cross-entropy <= 5, mean and spread over seeds.

    python bench/ablation.py --scan SCAN_DIR [--targets ../shared/bench/neurons.txt] [--limit N]
                             [--seeds 0-2] [--iters 60] [--variants baseline,data-starts,...]
                             [--executor ray] [--out runs/ablation]

Every variant is the paper's EPO (random starts, fixed restarts, fixed k) with one addition switched on.
Each runs as a resumable sweep in OUT/<variant>, so an interrupted benchmark continues where it
stopped. Prints, per neuron, mean ± standard deviation over seeds of the best activation at
cross-entropy <= 5 for each variant, then the mean over neurons and how often each addition beats
the baseline; and per neuron the best scan window vs the best dream (all variants' seeds merged) at a
cross-entropy no higher. Writes OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

import reverie
from reverie import EPOConfig
from reverie.evidence.scan import read_scan
from reverie.runs.rundir import finished
from reverie.search.frontier import best_at, versus_data
from reverie.sweeps.index import frontier_frame
from reverie.sweeps.specs import expand_targets, make_jobs, parse_seeds

VARIANTS = {  # name -> (EPOConfig options on top of the paper's, start from the scan's windows)
    "baseline": ({}, False),
    "data-starts": ({}, True),
    "insert-delete": ({"insert_rate": 0.1, "delete_rate": 0.1}, False),
    "adaptive-restart": ({"adaptive_restart": True}, False),
    "k-schedule": ({"top_k_start": 32}, False),
}


def frontier_points(path: Path) -> pd.DataFrame | None:
    info = finished(path)
    return None if info is None else frontier_frame(info.get("frontier", []))


def best_activation(points: pd.DataFrame, max_ce: float) -> float:
    row = best_at(points, max_ce)
    return math.nan if row is None else float(row["activation"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--targets", default=str(Path(__file__).resolve().parents[2] / "shared/bench/neurons.txt"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N targets")
    ap.add_argument(
        "--scan", required=True, help="a scan folder of the same targets (data starts, and the windows to beat)"
    )
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--max-ce", type=float, default=5.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--executor", default="ray", choices=["local", "ray"])
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()

    targets = expand_targets(args.targets)[: args.limit]
    seeds = parse_seeds(args.seeds)
    variants = args.variants.split(",")
    out = Path(args.out)
    model = args.model if args.executor == "ray" else reverie.load_model(args.model)
    for name in variants:
        options, data = VARIANTS[name]
        print(f"== {name}", flush=True)
        reverie.sweep(
            model,
            targets,
            seeds,
            out / name,
            EPOConfig.paper(iters=args.iters, **options),
            executor=args.executor,
            report=False,
            starts=args.scan if data else None,
        )

    scan = read_scan(args.scan)
    rows, versus = [], []
    for spec in targets:
        windows = scan[scan.target == spec]
        for name in variants:
            merged = []
            for job in make_jobs([spec], seeds):
                points = frontier_points(job.path(out / name))
                if points is not None:
                    rows.append(
                        {
                            "target": spec,
                            "variant": name,
                            "seed": job.seed,
                            "best": best_activation(points, args.max_ce),
                        }
                    )
                    merged.append(points)
            if merged and len(windows) and (v := versus_data(pd.concat(merged, ignore_index=True), windows)):
                versus.append({"target": spec, "variant": name, **v})
    runs = pd.DataFrame(rows)
    table = runs.groupby(["target", "variant"], sort=False)["best"].agg(["mean", "std", "count"]).reset_index()

    def fmt(r) -> str:  # seeds that found nothing at cross-entropy <= max_ce are counted, not averaged
        if pd.isna(r.mean):
            return "none"
        text = f"{r.mean:.2f} ± {r.std:.2f}" if r.count > 1 else f"{r.mean:.2f}"
        return text + (f" ({r.count}/{len(seeds)} seeds)" if r.count < len(seeds) else "")

    cell = {(r.target, r.variant): fmt(r) for r in table.itertuples()}
    print(
        f"\nbest activation at cross-entropy <= {args.max_ce:g}, mean ± sd over seeds {args.seeds}, "
        f"{args.iters} iterations"
        " (seeds with nothing that fluent are left out and counted)"
    )
    print("| neuron | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for spec in targets:
        print(f"| {spec.removeprefix('neuron:')} | " + " | ".join(cell.get((spec, v), "-") for v in variants) + " |")
    per_target = runs.groupby(["target", "variant"])["best"].mean().unstack()
    print("| mean over neurons | " + " | ".join(f"{per_target[v].mean():.2f}" for v in variants) + " |")
    if "baseline" in per_target:
        wins = {v: int((per_target[v] > per_target["baseline"]).sum()) for v in variants if v != "baseline"}
        print(
            "neurons where the addition beats the baseline (mean over seeds): "
            + ", ".join(f"{v} {k}/{len(per_target)}" for v, k in wins.items())
        )
    print(
        "\nbest dream (seeds merged) at a cross-entropy no higher than the best scan window's, margin over the "
        "window, windows above the dreams' frontier"
    )
    print("| neuron | best window (act @ ce) | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 2) + "|")
    vs = {(v["target"], v["variant"]): v for v in versus}
    for spec in targets:
        cells = []
        for name in variants:
            v = vs.get((spec, name))
            cells.append(
                "-"
                if v is None
                else "none that fluent"
                if math.isnan(v["dream_activation"])
                else f"{v['dream_activation']:.2f} ({v['margin']:+.2f}, {v['windows_above']}/{v['windows']})"
            )
        w = next((v for v in versus if v["target"] == spec), None)
        window = "-" if w is None else f"{w['window_activation']:.2f} @ {w['window_cross_entropy']:.2f}"
        print(f"| {spec.removeprefix('neuron:')} | {window} | " + " | ".join(cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(
        json.dumps({"settings": vars(args), "runs": rows, "versus": versus}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
