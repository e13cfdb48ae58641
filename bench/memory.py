"""The memory estimate (`reverie.lm.memory.estimate`) against measured peaks.

    python bench/memory.py [--models random:smollm2-135m random:pythia-1.4b:layers=4 ...]
                           [--dtype fp32] [--batch-size 32] [--device cpu]

Each model runs in its own process (a process's peak resident set only grows): load it, one gradient
pass over a population of 8 prompts of 12 tokens, and scoring passes over as many prompts as an
iteration has children (8 x 32) in batches of --batch-size. On a CPU the peak is the process's maximum
resident set (ru_maxrss, the Python process with torch included, like the estimate's overhead); on
CUDA torch's peak allocation plus the estimate's context overhead. Other processes do not count in a
process's own resident set, but a machine short of memory can make the kernel page it out, lowering
the measured peak. Prints one row per model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

SHAPES = ["random:smollm2-135m", "random:pythia-1.4b:layers=4", "random:gemma-3-270m:layers=6"]


def rss_now() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(spec: str, dtype: str, batch_size: int, device: str) -> dict:
    import torch

    from reverie import EPOConfig, make_scorer
    from reverie.lm import memory
    from reverie.lm.model import load_model

    baseline = rss_now()
    model = load_model(spec, dtype=dtype, device=device)
    loaded = rss_now()
    config = EPOConfig.paper(batch_size=batch_size)  # paper settings: M=8, r=32, n=12
    est = memory.estimate(model, config.population, config.length, batch_size, children=config.children, device=device)
    scorer = make_scorer(model, "neuron:L1.N5", config)
    gen = torch.Generator().manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    scorer.gradient_parts(scorer.vocab.random_prompts(config.population, config.length, gen))
    children = scorer.vocab.random_prompts(config.population * config.children, config.length, gen)
    for chunk in children.split(batch_size):
        scorer.score(chunk)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() + memory.CUDA_OVERHEAD
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "model": spec,
        "dtype": str(model.dtype),
        "layers": model.n_layers,
        "batch_size": batch_size,
        "baseline_rss": baseline,
        "after_load_rss": loaded,
        "peak": peak,
        "estimate": est.total,
        "estimate_weights": est.weights,
        "estimate_gradients": est.gradients,
        "estimate_scoring": est.scoring,
        "estimate_overhead": est.overhead,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=SHAPES)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure one model
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.dtype, args.batch_size, args.device)))
        return
    mib = 1 << 20
    print(
        f"{'model':<34}{'dtype':>15}{'batch':>6}{'base':>7}{'loaded':>8}{'peak':>8}{'estimate':>9}{'est/peak':>9}"
        "   estimate parts (MiB): weights, gradients, scoring, overhead"
    )
    for spec in args.models:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                spec,
                "--dtype",
                args.dtype,
                "--batch-size",
                str(args.batch_size),
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            print(f"{spec:<34} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{spec:<34}{r['dtype']:>15}{r['batch_size']:>6}"
            f"{r['baseline_rss'] // mib:>7}{r['after_load_rss'] // mib:>8}"
            f"{r['peak'] // mib:>8}{r['estimate'] // mib:>9}{r['estimate'] / r['peak']:>9.2f}   "
            f"{r['estimate_weights'] // mib}, {r['estimate_gradients'] // mib}, {r['estimate_scoring'] // mib}, "
            f"{r['estimate_overhead'] // mib}"
        )


if __name__ == "__main__":
    main()
