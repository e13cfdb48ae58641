"""Many features in one run: features/hour of `reverie.sweep(..., together=K)` against one job at a time.

    python bench/together.py [--targets neuron:L9.N0-63] [--seeds 0] [--iters 4] [--together 1,8]
                             [--corpus none] [--dtype auto] [--out bench/results/together.json]

One process, one model load; each K gets a fresh sweep folder under runs/bench-together/K, the default
EPOConfig but the iterations, no reports (only dreaming is timed). `--corpus none` dreams from the model
alone (a sweep's `corpus=None`); `auto` needs the bundled corpus's feature index. Afterwards every
job's history under each K is compared with K = the first one's: identical ids, and the largest
difference in activation and cross-entropy. Writes the timings and the comparison as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

import reverie
from reverie import EPOConfig


def histories(out: Path) -> dict:
    """Each finished job's history, by (target folder, seed folder)."""
    runs = out.glob("runs/*/*/frontier.json")
    return {(p.parent.parent.name, p.parent.name): reverie.load_run(p.parent).history for p in runs}


def compare(first: dict, other: dict) -> dict:
    """How far `other`'s histories are from `first`'s: jobs with the same prompts at every step, and the
    largest activation and cross-entropy difference over the jobs whose steps have the same shape."""
    same, worst = 0, {"activation": 0.0, "cross_entropy": 0.0}
    for key, a in first.items():
        b = other.get(key)
        if b is None or len(a) != len(b):
            continue
        same += bool((a["text"].to_numpy() == b["text"].to_numpy()).all())
        for column in ("activation", "cross_entropy"):  # NaN where a prompt was not scored: equal there
            x, y = a[column].to_numpy(float), b[column].to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), (key, column)
            with np.errstate(invalid="ignore"):
                worst[column] = max(worst[column], float(np.nan_to_num(np.abs(x - y)).max()))
    return {
        "jobs_compared": len(first),
        "jobs_same_prompts": same,
        "max_activation_difference": worst["activation"],
        "max_cross_entropy_difference": worst["cross_entropy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--targets", default="neuron:L9.N0-63")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--together", default="1,8")
    ap.add_argument("--corpus", default="none", help="none (the model alone) or auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--work", default="runs/bench-together")
    ap.add_argument("--out", default="bench/results/together.json")
    args = ap.parse_args()
    import torch

    model = reverie.load_model(args.model, dtype=args.dtype)
    config = EPOConfig(iters=args.iters)
    corpus = None if args.corpus == "none" else args.corpus
    results, first = [], None
    for k in [int(x) for x in args.together.split(",")]:
        out = Path(args.work) / str(k)
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        index = reverie.sweep(model, args.targets, args.seeds, out, config, report=False, corpus=corpus, together=k)
        seconds = time.perf_counter() - start
        jobs = int(index["seeds_done"].sum())
        row = {
            "together": k,
            "jobs": jobs,
            "failed": int(index["seeds_failed"].sum()),
            "seconds": round(seconds, 1),
            "features_per_hour": round(jobs / seconds * 3600, 1),
        }
        runs = histories(out)
        if first is None:
            first = runs
        else:
            row.update(compare(first, runs))
        results.append(row)
        print(json.dumps(row), flush=True)
    settings = {**vars(args), "dtype": str(model.dtype), "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": settings, "results": results}, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
