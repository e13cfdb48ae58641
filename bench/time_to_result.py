"""Time to a result, the speed a user feels: seconds from the call to a frontier that beats the target's
best dataset window at equal cross-entropy, and to the run's end, for reverie's defaults, the paper's EPO
in reverie (`EPOConfig.paper()`) and the authors' own `epo()` (Confirm-Solutions/dreamy).

    python bench/time_to_result.py --dreamy third_party/dreamy [--neurons ../shared/bench/neurons.txt] \
        [--iters 30] [--seed 0] [--index-tokens 100000] [--configs default paper authors] \
        [--out bench/results/time-to-result.json]
    python bench/time_to_result.py --table bench/results/time-to-result.json

One process, the bundled model loaded once (dtype auto). The feature index of the bundled corpus (its
first `--index-tokens` tokens) is built first, once, and not counted: every run is compared with the same
windows, the index's best for its neuron. `default` is `reverie.dream(model, neuron, EPOConfig(iters=T))`
(half the slots start at those windows); `paper` is the paper's EPO from random prompts, no corpus;
`authors` is their `epo()` at the paper's settings (bench/authors.py's objective). A result is any prompt
scored so far with cross-entropy at most the window's and activation above it; its time is that of the
end of the first iteration whose scored prompts hold one (for the starting population, the first
iteration's end). Writes one row per (neuron, config) as JSON, appended as runs finish.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from authors import SETTINGS, call_epo, load_dreamy, neuron_cache_run, neuron_of
from speed import cpu_flags

HERE = Path(__file__).resolve().parent


def run_reverie(model, spec: str, config, corpus, index, window) -> dict:
    import reverie

    marks: dict[int, float] = {}
    start = time.perf_counter()

    def callback(step) -> None:
        marks[step.iteration] = time.perf_counter() - start

    result = reverie.dream(model, spec, config, corpus=corpus, index=index, callback=callback)
    total = time.perf_counter() - start
    h = result.history
    beats = h[(h["cross_entropy"] <= window["cross_entropy"]) & (h["activation"] > window["activation"])]
    first = None if beats.empty else int(beats["iteration"].min())
    return {
        "seconds_to_beat": None if first is None else marks.get(max(first, min(marks))),
        "iteration_to_beat": first,
        "seconds": total,
        "iterations": len(marks),
    }


def run_authors(dreamy, model, spec: str, iters: int, seed: int, window) -> dict:
    from reverie import EPOConfig
    from reverie.lm.targets import as_target

    config = EPOConfig.paper(**SETTINGS)
    cache_run = neuron_cache_run(model, *neuron_of(as_target(spec, model)))
    found: dict[str, float] = {}
    start = time.perf_counter()

    def callback(i, state, last_runtime, history, final=False):
        if "seconds" not in found and history.target:
            target, ce = np.asarray(history.target[-1]), np.asarray(history.xentropy[-1])
            if ((ce <= window["cross_entropy"]) & (target > window["activation"])).any():
                found["seconds"], found["iteration"] = time.perf_counter() - start, i
        return False

    call_epo(dreamy, cache_run, model, config, iters, seed, callback)
    return {
        "seconds_to_beat": found.get("seconds"),
        "iteration_to_beat": found.get("iteration"),
        "seconds": time.perf_counter() - start,
        "iterations": iters,
    }


def table(path: str) -> None:
    """Per config: neurons with a result within the run, median seconds to it (over those), median seconds
    per run; a markdown table for docs/performance.md."""
    import pandas as pd

    rows = pd.DataFrame(json.loads(Path(path).read_text())["rows"])
    print("| config | neurons | result within the run | median s to the result | median s per run |")
    print("|---|---|---|---|---|")
    for name, group in rows.groupby("config", sort=False):
        beaten = group["seconds_to_beat"].dropna()
        median = f"{beaten.median():.1f}" if len(beaten) else "–"
        print(f"| {name} | {len(group)} | {len(beaten)} | {median} | {group['seconds'].median():.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=None, help="print the table of a results file and stop")
    ap.add_argument("--dreamy", default=None, help="a checkout of github.com/Confirm-Solutions/dreamy")
    ap.add_argument("--neurons", default=str(HERE.parent.parent / "shared" / "bench" / "neurons.txt"))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-tokens", type=int, default=100_000)
    ap.add_argument("--configs", nargs="+", default=["default", "paper", "authors"])
    ap.add_argument("--out", default="bench/results/time-to-result.json")
    args = ap.parse_args()
    if args.table:
        return table(args.table)
    import torch

    import reverie
    from reverie import EPOConfig
    from reverie.evidence.features import IndexConfig, build_index

    dreamy = load_dreamy(args.dreamy) if "authors" in args.configs else None
    model = reverie.load_model("bundled")
    index_config = IndexConfig(max_tokens=args.index_tokens)
    start = time.perf_counter()
    index = build_index(model, "bundled", index_config)
    index_seconds = time.perf_counter() - start
    specs = [line.strip() for line in Path(args.neurons).read_text().splitlines() if line.strip()]
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["target"], r["config"]) for r in rows}
    for spec in specs:
        windows = index.windows(model, spec)
        window = windows.loc[windows["activation"].idxmax()]
        for name in args.configs:
            if (spec, name) in done:
                continue
            if name == "authors":
                row = run_authors(dreamy, model, spec, args.iters, args.seed, window)
            else:
                config = (EPOConfig.paper if name == "paper" else EPOConfig)(iters=args.iters, seed=args.seed)
                corpus = None if name == "paper" else "auto"
                row = run_reverie(model, spec, config, corpus, index_config, window)
            row = {"target": spec, "config": name, "window_activation": float(window["activation"]), **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
            settings = {
                **vars(args),
                "dtype": str(model.dtype),
                "machine": f"{torch.get_num_threads()} threads, flags {' '.join(cpu_flags())}",
                "index_seconds": index_seconds,
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
