"""Sweep throughput: jobs/hour for the same sweep in-process and on a local Ray cluster.

    python bench/sweep.py [--targets ../shared/bench/neurons.txt] [--seeds 0-1] [--iters 100]
                          [--executors local,ray] [--actors N] [--cpus-per-actor 1] [--out runs/bench-sweep]
                          [--init-from SCAN_DIR]

Each executor gets a fresh sweep folder (OUT/<executor>), paper settings but the iterations, no reports
(only dreaming is timed; the model load and Ray start-up are included). Writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import reverie
from reverie import EPOConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--targets", default=str(Path(__file__).resolve().parents[2] / "shared/bench/neurons.txt"))
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--actors", type=int, default=None)
    ap.add_argument("--cpus-per-actor", type=float, default=1)
    ap.add_argument("--out", default="runs/bench-sweep")
    ap.add_argument(
        "--init-from", default=None, help="a scan folder: dreams start half their population at its windows"
    )
    args = ap.parse_args()
    results = []
    for executor in args.executors.split(","):
        out = Path(args.out) / executor
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        index = reverie.sweep(
            args.model,
            args.targets,
            args.seeds,
            out,
            EPOConfig(iters=args.iters),
            executor=executor,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            report=False,
            starts=args.init_from,
        )
        seconds = time.perf_counter() - start
        jobs = int(index["seeds_done"].sum())
        results.append(
            {
                "executor": executor,
                "jobs": jobs,
                "failed": int(index["seeds_failed"].sum()),
                "iters": args.iters,
                "init_from": args.init_from,
                "seconds": round(seconds, 1),
                "jobs_per_hour": round(jobs * 3600 / seconds, 2),
            }
        )
        print(f"{executor}: {jobs} jobs in {seconds:.0f} s = {results[-1]['jobs_per_hour']:.1f} jobs/hour", flush=True)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
