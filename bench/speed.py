"""Seconds per EPO iteration: reverie (the PackedScorer) vs the reference path (the PlainScorer: the paper's
algorithm written plainly, with EPO's memo of scored prompts) vs the plain-forward floor, in one process.

    python bench/speed.py [--iters 300] [--seeds 0 1 2] [--reference-iters 20] [--target neuron:L2.N148]
                          [--batch-size B] [--out bench/results/speed.json]
    python bench/speed.py --model random-1b --out bench/results/speed-gpu.json     # on a GPU
    python bench/speed.py --model random:llama-3.2-1b --target neuron:L2.N148 --iters 30 --seeds 0

Reverie's seconds per iteration are the median over whole runs (300 iterations at paper settings,
restarts included), pooled over several seeds: its cost changes along a run, as populations
converge (prompts that fill several slots or survive keep their gradients, children scored before
are not scored again), and how fast that happens depends on the run. Single-run medians of the same
code have ranged from 0.35 to 0.70 s over three seeds, so one run is not a measurement. The reference
path is sampled over its first iterations only (a whole run of it takes hours on the large shapes).
The loop's memo serves it too, so its later iterations would also be somewhat cheaper (it recomputes
every gradient, but not children scored before): the whole-run ratio leans towards reverie, and
reverie's median over the same first iterations (pooled over the seeds), reported too, compares like
with like. The floor is one plain batched forward pass (full logits) over as many n-token prompts as
an iteration has children; the batched floor is the same pass split into the batch size both paths
use. On a GPU the floor is timed after the device's queue is drained (an EPO step ends with its
population, scores and gradients' top-k on the CPU, so it drains too), and the JSON also records
torch.cuda.max_memory_allocated for each stage (load, floor, reference, reverie). --max-seconds stops
reverie's runs early (bench/gpu.sh uses it to fit a lease); the JSON then says "capped". Writes JSON and
prints a short table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

import reverie
from reverie import EPO, EPOConfig, make_scorer
from reverie.lm.dtypes import cpu_flags as flags_line


def settle() -> None:
    """Free what earlier measurements left behind: after a long run, the allocator's fragmented heap
    slowed the next path's large allocations by up to 15% (reference 1.98 vs 1.68 s/iteration)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def cpu_flags() -> list[str]:
    """The CPU flags that decide how fast bf16 runs (AMX, AVX512-BF16): record them beside any time."""
    return sorted(f for f in flags_line().split() if f.startswith("amx") or f == "avx512_bf16")


def time_run(scorer, config, iters, seeds=(0,), first=None, max_seconds=None):
    """Median seconds per iteration and per phase over `iters` iterations of each seed, pooled (and over
    the `first` ones of each), with each seed's own median. With `max_seconds`, the runs stop after the
    iteration that passes that many seconds in all (a seed not started by then is left out): the result
    says so ("capped") and counts the iterations run."""
    runs, start, capped = [], time.perf_counter(), False
    for seed in seeds:
        settle()
        epo = EPO(scorer, replace(config, seed=seed))
        run = []
        for _ in range(iters):
            run.append(epo.step())
            capped = max_seconds is not None and time.perf_counter() - start > max_seconds
            if capped:
                break
        runs.append((seed, run))
        if capped:
            break
    out = summarise([s for _, run in runs for s in run], config)
    out["seeds"] = {seed: statistics.median(s.seconds for s in run) for seed, run in runs}
    out["capped"] = capped and len(runs[-1][1]) < iters or len(runs) < len(seeds)
    out["wall_seconds"] = time.perf_counter() - start
    if first is not None and first < max(len(run) for _, run in runs):
        out["first_iterations"] = summarise([s for _, run in runs for s in run[:first]], config)
    return out


def summarise(steps, config) -> dict:
    med = statistics.median(s.seconds for s in steps)
    return {
        "iterations": len(steps),
        "seconds_per_iteration": med,
        "children_per_second": config.population * config.children / med,
        "phases": {k: statistics.median(s.phases[k] for s in steps) for k in steps[0].phases},
    }


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously: a host clock read without this times
    the launches only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device, reset: bool = True) -> int | None:
    """The most bytes torch held on a GPU device since the last reset (then reset it); None on a CPU."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device)
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


def time_floor(model, vocab, prompts, n, batch_size, repeats):
    """Median seconds of a plain forward (full logits, fp32) over `prompts` random n-token prompts, in
    batches of `batch_size`."""
    ids = vocab.random_prompts(prompts, n, torch.Generator().manual_seed(0)).to(model.device)
    settle()
    with torch.inference_mode():
        model.hf(input_ids=ids[:batch_size], use_cache=False)
        times = []
        for _ in range(repeats):
            sync(model.device)
            t = time.perf_counter()
            for chunk in ids.split(batch_size):
                model.hf(input_ids=chunk, use_cache=False).logits.float()
            sync(model.device)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="bundled",
        help='a model spec: hub id, folder, .gguf, "bundled", or random:NAME[:layers=N] (random weights of a '
        "research shape: gemma-3-270m, gemma-2-2b, llama-3.2-1b, qwen2.5-0.5b, pythia-1.4b, pythia-12b, "
        'random-1b, ...); "random-1b" is random:random-1b (a ~1.2B Llama, for GPUs)',
    )
    ap.add_argument("--target", default="neuron:L2.N148")
    ap.add_argument("--iters", type=int, default=300, help="reverie's run (default: the paper's 300 iterations)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reverie's runs, pooled")
    ap.add_argument(
        "--reference-iters", type=int, default=20, help="the reference path's sample (same work every iteration)"
    )
    ap.add_argument("--dtype", default=None)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="prompts per forward pass, both paths (default: automatic)"
    )
    ap.add_argument("--floor-repeats", type=int, default=5, help="timed passes of each floor (their median)")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="stop reverie's runs after this many seconds (the JSON says so)"
    )
    ap.add_argument("--out", default="bench/results/speed.json")
    args = ap.parse_args()

    spec = "random:random-1b" if args.model == "random-1b" else args.model
    started = time.perf_counter()
    model = reverie.load_model(spec, dtype=args.dtype)
    load_seconds = time.perf_counter() - started
    print(f"model {model.spec}: {model.n_layers} layers, dtype {model.dtype_reason} (loaded in {load_seconds:.1f} s)")
    device = model.device
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    peaks = {"load": peak_memory(device)}
    config = EPOConfig.paper(iters=10**6, seed=0, batch_size=args.batch_size)  # paper settings: M=8, r=32, k=512, n=12
    scorer = make_scorer(model, args.target, config)
    ref_scorer = make_scorer(model, args.target, config, scorer="plain")
    children = config.population * config.children
    started = time.perf_counter()
    floor = time_floor(model, scorer.vocab, children, config.length, children, args.floor_repeats)
    floor_batched = time_floor(model, scorer.vocab, children, config.length, scorer.batch_size, args.floor_repeats)
    peaks["floor"] = peak_memory(device)
    print(f"floor {floor:.3f} s, batched {floor_batched:.3f} s ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    ref = time_run(ref_scorer, config, args.reference_iters)  # first: a long run slows what follows
    peaks["reference"] = peak_memory(device)
    print(f"reference {ref['seconds_per_iteration']:.3f} s/iteration ({time.perf_counter() - started:.1f} s)")
    fast = time_run(scorer, config, args.iters, args.seeds, first=args.reference_iters, max_seconds=args.max_seconds)
    peaks["reverie"] = peak_memory(device)
    print(f"reverie {fast['seconds_per_iteration']:.3f} s/iteration ({fast['wall_seconds']:.1f} s)")
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "device": str(model.device),
        "dtype": str(model.dtype),
        "model": model.spec,
        "target": args.target,
        "settings": {"M": config.population, "r": config.children, "k": config.top_k, "n": config.length},
        "batch_size": scorer.batch_size,
        "floor_seconds": floor,
        "floor_batched_seconds": floor_batched,
        "reverie": fast,
        "reference": ref,
        "speedup_vs_reference": ref["seconds_per_iteration"] / fast["seconds_per_iteration"],
        "speedup_vs_reference_same_iterations": ref["seconds_per_iteration"]
        / fast.get("first_iterations", fast)["seconds_per_iteration"],
        "ratio_to_floor": fast["seconds_per_iteration"] / floor,
        "ratio_to_floor_batched": fast["seconds_per_iteration"] / floor_batched,
        "load_seconds": load_seconds,
        # torch.cuda.max_memory_allocated over each stage (reset between them), and what the weights hold;
        # null on a CPU, where the process's peak resident memory is what there is
        "memory": {
            "weights_bytes": weights,
            "peak_bytes": peaks,
            "peak_bytes_overall": max(peaks.values()) if device.type == "cuda" else None,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'path':<22}{'s/iter':>9}{'children/s':>12}  phases (median s)")
    capped = " capped" if fast["capped"] else ""
    rows = [(f"reverie ({fast['iterations']} it.{capped})", fast), (f"reference ({ref['iterations']} it.)", ref)]
    if "first_iterations" in fast:
        rows.insert(1, (f"reverie (first {args.reference_iters} x {len(args.seeds)})", fast["first_iterations"]))
    for name, r in rows:
        phases = " ".join(f"{k}={v:.3f}" for k, v in r["phases"].items())
        print(f"{name:<22}{r['seconds_per_iteration']:>9.3f}{r['children_per_second']:>12.0f}  {phases}")
    print(f"{'':<22}reverie per seed: " + ", ".join(f"{k}: {v:.3f}" for k, v in fast["seeds"].items()))
    print(f"{'floor':<22}{floor:>9.3f}{'':>12}  one plain forward of {children}x{config.length} prompts")
    print(
        f"{'floor/batch':<22}{floor_batched:>9.3f}{'':>12}  the same in batches of {scorer.batch_size} (both "
        "paths' batch size)"
    )
    print(
        f"speed-up vs reference {result['speedup_vs_reference']:.2f}x (same iterations "
        f"{result['speedup_vs_reference_same_iterations']:.2f}x); reverie / floor {result['ratio_to_floor']:.2f}x "
        f"(/ batched floor {result['ratio_to_floor_batched']:.2f}x)"
    )
    if device.type == "cuda":
        gib = {k: f"{v / 2**30:.2f}" for k, v in peaks.items()}
        print(f"GPU memory (GiB): weights {weights / 2**30:.2f}; peak by stage {gib}")


if __name__ == "__main__":
    main()
