"""Selectivity: dream neuron A while neuron B of the same layer stays below a bound, against dreaming A alone.

    python bench/selectivity.py [--layer 9] [--pairs 6] [--iters 30] [--seeds 0] [--weight 10] [--dtype fp32]
                                [--pair 402:7 ...] [--out bench/results/selectivity.json]
    python bench/selectivity.py --iters 2 --pairs 1          # a quick check that it runs

Pairs (bundled model, MLP neurons of one layer): A is drawn (seed 0) from the layer's neurons; B is the
neuron of the layer that rises most when A alone is dreamed (from its highest value on the start to A's
best prompt), the one a selective dream has to hold down. `--pair A:B` (repeatable) names pairs instead.

Per pair and seed: a plain dream of A (the default EPO config from the model alone, no corpus), then a
selectivity dream `A | B < x @ weight` from the same starting population, x = the highest value B takes
on that population. Reported for both: A and B at the start and at each dream's best prompt (by its own
objective; unconstrained and at cross-entropy <= 6), and for the plain dream also its best A among the
prompts it scored with B <= x (what filtering the plain dream would give).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import reverie
from reverie import EPOConfig
from reverie.lm.algebra import Combination
from reverie.lm.grammar import BOUND_WEIGHT
from reverie.lm.targets import as_target
from reverie.scoring import TargetCache

CE_LIMIT = 6.0


def layer_values(model, layer: int, prompts: list[list[int]]) -> torch.Tensor:
    """Every MLP neuron of `layer` at the last position of each prompt: [prompts, d_mlp]."""
    hook = f"blocks.{layer}.mlp.hook_post"
    with torch.inference_mode(), model.capture([hook]) as cache:
        model.trunk(torch.tensor(prompts, device=model.device))
    return cache[hook][:, -1].float().cpu()


def follower(model, layer: int, a: int, start: list[list[int]], best: list[int]) -> tuple[int, float]:
    """The neuron of `layer` (not A) that rises most from the start (its highest value there) to A's best dream."""
    rise = layer_values(model, layer, [best])[0] - layer_values(model, layer, start).max(0).values
    rise[a] = -torch.inf
    return int(rise.argmax()), float(rise.max())


def values(model, both: Combination, prompts: list[list[int]], batch: int = 64) -> dict[str, np.ndarray]:
    """Each part of `both` (read in one pass) for each prompt: spec -> [prompts]."""
    out: dict[str, list] = {p.spec: [] for p in both.parts}
    for i in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[i : i + batch], device=model.device)
        with torch.inference_mode(), model.capture(list(both.hooks)) as cache:
            hidden = model.trunk(ids)
            for spec, v in both.parts_values(TargetCache(cache, hidden, model.head)).items():
                out[spec].append(v.float().cpu())
    return {spec: torch.cat(v).numpy() for spec, v in out.items()}


def best(result, both: Combination, max_ce: float, model) -> dict | None:
    row = result.best(max_ce)
    if row is None:
        return None
    v = values(model, both, [list(row["ids"])])
    a, b = (float(x[0]) for x in v.values())
    return {
        "a": a,
        "b": b,
        "objective": float(row["activation"]),
        "ce": float(row["cross_entropy"]),
        "text": row["text"],
    }


def filtered(history, both: Combination, x: float, model) -> dict | None:
    """The plain dream's best A among the prompts it scored with B <= x (and cross-entropy <= CE_LIMIT)."""
    rows = history[np.isfinite(history["activation"].to_numpy())].drop_duplicates("text")
    v = values(model, both, [list(ids) for ids in rows["ids"]])
    a, b = v.values()
    out = {}
    for limit in (math.inf, CE_LIMIT):
        ok = (b <= x) & (rows["cross_entropy"].to_numpy() <= limit)
        if ok.any():
            j = int(np.flatnonzero(ok)[a[ok].argmax()])
            out[str(limit)] = {
                "a": float(a[j]),
                "b": float(b[j]),
                "ce": float(rows["cross_entropy"].iloc[j]),
                "text": rows["text"].iloc[j],
            }
    return out


def run_pair(model, layer: int, a: int, b: int | None, config: EPOConfig, weight: float) -> dict:
    started = time.perf_counter()
    plain = reverie.dream(model, f"neuron:L{layer}.N{a}", config, corpus=None)
    first = plain.history[(plain.history["iteration"] == 0) & plain.history["kept"]].sort_values("slot")
    start = [list(map(int, ids)) for ids in first["ids"]]
    rise = None
    if b is None:
        b, rise = follower(model, layer, a, start, list(map(int, plain.best()["ids"])))
    both = as_target(f"neuron:L{layer}.N{a} + neuron:L{layer}.N{b}", model)
    assert isinstance(both, Combination)
    v = values(model, both, start)
    x = float(f"{v[both.parts[1].spec].max():.6g}")  # as the spec writes it
    spec = f"neuron:L{layer}.N{a} | neuron:L{layer}.N{b} < {x:.6g} @ {weight:g}"
    selective = reverie.dream(
        model, spec, replace(config, starts="random", init_ids=tuple(map(tuple, start))), corpus=None
    )
    return {
        "a": both.parts[0].spec,
        "b": both.parts[1].spec,
        "b_rise_in_plain": rise,
        "x": x,
        "selective_spec": spec,
        "seconds": round(time.perf_counter() - started, 1),
        "start": {"a": float(v[both.parts[0].spec].max()), "b": x},
        "plain": {
            "best": best(plain, both, math.inf, model),
            f"best_ce{CE_LIMIT:g}": best(plain, both, CE_LIMIT, model),
            "filtered": filtered(plain.history, both, x, model),
        },
        "selective": {
            "best": best(selective, both, math.inf, model),
            f"best_ce{CE_LIMIT:g}": best(selective, both, CE_LIMIT, model),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--pairs", type=int, default=6, help="how many pairs to draw (with no --pair)")
    parser.add_argument("--pair", action="append", default=[], help="A:B neuron indices in --layer, e.g. 402:7")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--weight", type=float, default=BOUND_WEIGHT, help="the bound's weight (default: the grammar's)"
    )
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--out", default="bench/results/selectivity.json")
    args = parser.parse_args()
    model = reverie.load_model("bundled", dtype=args.dtype)
    pairs: list[tuple[int, int | None]] = [(int(t.split(":")[0]), int(t.split(":")[1])) for t in args.pair]
    if not pairs:
        drawn = torch.randperm(model.adapter.d_mlp, generator=torch.Generator().manual_seed(0))[: args.pairs]
        pairs = [(int(a), None) for a in drawn]
    rows = []
    for a, b in pairs:
        for seed in args.seeds:
            config = EPOConfig(iters=args.iters, seed=seed)
            row = {**run_pair(model, args.layer, a, b, config, args.weight), "seed": seed}
            rows.append(row)
            plain, selective = row["plain"]["best"], row["selective"]["best"]
            print(
                f"{row['a']} | {row['b']} < {row['x']:.3f} (seed {seed}): start A {row['start']['a']:.3f}; "
                f"plain A {plain['a']:.3f} B {plain['b']:.3f}; selective A {selective['a']:.3f} "
                f"B {selective['b']:.3f} ({row['seconds']} s)",
                flush=True,
            )
    kept = [r["selective"]["best"]["b"] <= r["x"] + 1e-6 for r in rows]
    summary = {
        "runs": len(rows),
        "selective_keeps_b_below_x": sum(kept),
        "plain_b_above_x": sum(r["plain"]["best"]["b"] > r["x"] for r in rows),
        "median_a_ratio_selective_to_plain": float(
            np.median(
                [r["selective"]["best"]["a"] / r["plain"]["best"]["a"] for r in rows if r["plain"]["best"]["a"] > 0]
            )
        ),
    }
    print(json.dumps(summary))
    out = {
        "model": model.spec,
        "dtype": str(model.dtype),
        "layer": args.layer,
        "iters": args.iters,
        "seeds": args.seeds,
        "weight": args.weight,
        "summary": summary,
        "pairs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
