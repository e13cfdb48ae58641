"""Seconds per EPO iteration: the authors' own `epo()` (Confirm-Solutions/dreamy) against reverie's
`EPOConfig.paper()`, the same algorithm at the same settings, side by side in one process.

    git clone https://github.com/Confirm-Solutions/dreamy third_party/dreamy     # git-ignored, never copied in
    python bench/authors.py --dreamy third_party/dreamy [--model bundled] [--target neuron:L9.N402] \
        [--dtypes fp32 bf16] [--iters 50] [--rounds 1] [--horizons 1 2] [--out bench/results/authors.json]

Both run the paper's settings (M = 8, r = 32, k = 512, n = 12, λ from 0.1 to 10, a restart every
`restart_every` iterations, batch 256) on the same loaded model, interleaved: for each round and dtype,
the authors' run, then reverie's. The authors' code gets its objective through a `cache_run` written
here as its README asks of a user (the target neuron read by a forward pre-hook on the layer's MLP output
projection, the logits of the same forward); its activations are checked against reverie's on the same
prompts before timing. Their code draws from the whole vocabulary and skips the re-tokenisation check;
reverie keeps its prompt checks (a user's default), which costs it time, not the reverse.

Per iteration (the first dropped, medians over the rest): seconds, and the phases — the gradient pass,
the choice of candidates, the children's forward, and selection with bookkeeping (the rest). The
authors' phases are timed by wrapping their module's `token_grads`, `evaluate_fitness` and
`GradientSelector.mutate`; an iteration is the time between two calls of their per-iteration callback.
reverie's come from `EPO.step()`. The floor is `bench/speed.py`'s: one plain forward of the 256 × 12
children with full logits. With `--horizons`, reverie also runs with each cross-entropy horizon
(`EPOConfig.paper(ce_horizon=h)`, an approximation: docs/performance.md#cross-entropy-horizon), after
its exact run, from the same seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from speed import cpu_flags, settle, time_floor

SETTINGS = dict(population=8, children=32, top_k=512, length=12, batch_size=256)
MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2")  # the MLP's output projection


def load_dreamy(path: str):
    """The authors' `dreamy.epo` module from a checkout of their repository (its folder holds `dreamy/`)."""
    root = Path(path).resolve()
    if not (root / "dreamy" / "epo.py").exists():
        raise SystemExit(
            f"{root} is not a checkout of Confirm-Solutions/dreamy (no dreamy/epo.py): "
            "git clone https://github.com/Confirm-Solutions/dreamy third_party/dreamy"
        )
    sys.path.insert(0, str(root))
    import dreamy.epo

    return dreamy.epo


def neuron_cache_run(model, layer: int, neuron: int):
    """The authors' `cache_run` interface for an MLP neuron: the neuron's activation at the last position
    (the input of the layer's MLP output projection) and the logits, from input_ids or inputs_embeds."""
    names = tuple(f".{layer}.{suffix}" for suffix in MLP_OUT)
    projection = next((m for name, m in model.hf.named_modules() if name.endswith(names)), None)
    if projection is None:
        raise SystemExit(f"cannot find layer {layer}'s MLP output projection in {type(model.hf).__name__}")
    seen = {}

    def hook(module, args):
        seen["act"] = args[0][:, -1, neuron]

    def run(input_ids=None, inputs_embeds=None):
        handle = projection.register_forward_pre_hook(hook)
        try:
            out = model.hf(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        finally:
            handle.remove()
        return {"target": seen.pop("act").float(), "logits": out.logits}

    return run


def neuron_of(target) -> tuple[int, int]:
    """(layer, neuron) of a `neuron:L9.N402` target."""
    layer, neuron = (int(x[1:]) for x in target.spec.split(":", 1)[1].split("."))
    return layer, neuron


def timed(module):
    """Wrap the authors' phases in timers; returns the dict they add to."""
    phases = {"gradients": 0.0, "candidates": 0.0, "children_forward": 0.0}

    def wrap(fn, key):
        def inner(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[key] += time.perf_counter() - t

        return inner

    module.token_grads = wrap(module.token_grads, "gradients")
    module.evaluate_fitness = wrap(module.evaluate_fitness, "children_forward")
    module.GradientSelector.mutate = wrap(module.GradientSelector.mutate, "candidates")
    return phases


def call_epo(dreamy, cache_run, model, config, iters: int, seed: int, callback) -> None:
    """The authors' `epo()` at `config`'s settings (the paper's), on the loaded model's weights."""
    dreamy.epo(
        cache_run,
        model.hf,
        model.tokenizer,
        seq_len=config.length,
        population_size=config.population,
        iters=iters,
        explore_per_pop=config.children,
        batch_size=SETTINGS["batch_size"],
        topk=config.top_k,
        x_penalty_min=config.penalty_min,
        x_penalty_max=config.penalty_max,
        restart_frequency=config.restart_every,
        seed=seed,
        callback=callback,
    )


def run_authors(dreamy, phases, model, target, config, iters: int, seed: int) -> list[dict]:
    """One run of the authors' epo(); per iteration: seconds and phases (selection etc.: the rest)."""
    cache_run = neuron_cache_run(model, *neuron_of(target))
    marks, snapshots = [], []

    def callback(i, state, last_runtime, history, final=False):
        marks.append(time.perf_counter())
        snapshots.append(dict(phases))
        return False

    settle()
    call_epo(dreamy, cache_run, model, config, iters, seed, callback)
    rows = []
    for j in range(1, len(marks)):
        seconds = marks[j] - marks[j - 1]
        row = {k: snapshots[j][k] - snapshots[j - 1][k] for k in phases}
        row["selection_bookkeeping"] = seconds - sum(row.values())
        rows.append({"seconds": seconds, "phases": row})
    return rows


def run_reverie(scorer, config, iters: int, seed: int) -> list[dict]:
    from reverie import EPO

    settle()
    epo = EPO(scorer, replace(config, seed=seed))
    rows = []
    for _ in range(iters):
        step = epo.step()
        p = step.phases
        rows.append(
            {
                "seconds": step.seconds,
                "phases": {
                    "gradients": p.get("gradients", 0.0),
                    "candidates": p.get("children", 0.0),
                    "children_forward": p.get("scoring", 0.0),
                    "selection_bookkeeping": p.get("selection", 0.0) + p.get("bookkeeping", 0.0),
                },
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    rows = rows[1:]  # the first iteration pays for warm-up
    return {
        "iterations": len(rows),
        "seconds_per_iteration": statistics.median(r["seconds"] for r in rows),
        "phases": {k: statistics.median(r["phases"][k] for r in rows) for k in rows[0]["phases"]},
    }


def check_same_objective(dreamy_run, scorer, vocab) -> float:
    """The largest difference between the authors' cache_run target and reverie's f on 16 random prompts."""
    ids = vocab.random_prompts(16, SETTINGS["length"], torch.Generator().manual_seed(1))
    with torch.inference_mode():
        theirs = dreamy_run(input_ids=ids.to(scorer.model.device))["target"].cpu()
    ours, _ = scorer.score(ids)
    return float((theirs - ours).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dreamy", required=True, help="a checkout of github.com/Confirm-Solutions/dreamy")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--target", default="neuron:L9.N402")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizons", type=int, nargs="*", default=[], help="also reverie with these ce_horizon")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import reverie
    from reverie import EPOConfig, make_scorer
    from reverie.lm.targets import as_target

    dreamy = load_dreamy(args.dreamy)
    phases = timed(dreamy)
    config = EPOConfig.paper(**SETTINGS, iters=args.iters)
    loaded = {}
    for dtype in args.dtypes:
        model = reverie.load_model(args.model, dtype=dtype)
        target = as_target(args.target, model)
        scorer = make_scorer(model, target, config)
        approximate = {h: make_scorer(model, target, replace(config, ce_horizon=h)) for h in args.horizons}
        difference = check_same_objective(neuron_cache_run(model, *neuron_of(target)), scorer, scorer.vocab)
        children = config.population * config.children
        floor = time_floor(model, scorer.vocab, children, config.length, children, repeats=5)
        loaded[dtype] = (model, target, scorer, difference, floor, approximate)
        print(json.dumps({"dtype": dtype, "objective_difference": difference, "floor_seconds": floor}), flush=True)
    codes = ["authors", "reverie", *(f"reverie h={h}" for h in args.horizons)]
    runs = {(dtype, code): [] for dtype in args.dtypes for code in codes}
    for r in range(args.rounds):
        for dtype in args.dtypes:
            model, target, scorer, _, _, approximate = loaded[dtype]
            runs[dtype, "authors"] += run_authors(dreamy, phases, model, target, config, args.iters, args.seed + r)
            runs[dtype, "reverie"] += run_reverie(scorer, config, args.iters, args.seed + r)
            for h, approximating in approximate.items():
                runs[dtype, f"reverie h={h}"] += run_reverie(
                    approximating, replace(config, ce_horizon=h), args.iters, args.seed + r
                )
            for code in codes:
                print(json.dumps({"round": r, "dtype": dtype, "code": code, **summary(runs[dtype, code])}), flush=True)
    table = []
    for dtype in args.dtypes:
        a = summary(runs[dtype, "authors"])
        floor = loaded[dtype][4]
        for code in codes[1:]:
            b = summary(runs[dtype, code])
            table.append(
                {
                    "dtype": dtype,
                    "code": code,
                    "authors": a,
                    "reverie": b,
                    "floor_seconds": floor,
                    "objective_difference": loaded[dtype][3],
                    "ratio": a["seconds_per_iteration"] / b["seconds_per_iteration"],
                    "reverie_over_floor": b["seconds_per_iteration"] / floor,
                }
            )
    print(
        f"{'dtype':<6}{'code':<12}{'authors s/it':>13}{'reverie s/it':>13}{'ratio':>7}{'rev/floor':>10}"
        "  phases authors | reverie"
    )
    for t in table:
        pa = " ".join(f"{k}={v:.3f}" for k, v in t["authors"]["phases"].items())
        pb = " ".join(f"{k}={v:.3f}" for k, v in t["reverie"]["phases"].items())
        print(
            f"{t['dtype']:<6}{t['code']:<12}{t['authors']['seconds_per_iteration']:>13.3f}"
            f"{t['reverie']['seconds_per_iteration']:>13.3f}{t['ratio']:>6.2f}x{t['reverie_over_floor']:>10.2f}"
            f"  {pa} | {pb}"
        )
    result = {
        "machine": f"{torch.get_num_threads()} threads, flags {' '.join(cpu_flags())}",
        "model": args.model,
        "target": args.target,
        "iters": args.iters,
        "rounds": args.rounds,
        "settings": SETTINGS,
        "table": table,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
