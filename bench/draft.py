"""Probe sampling with a layer-truncated draft: would it speed up EPO on this CPU?

    python bench/draft.py [--targets neuron:L2.N148 neuron:L13.N1333 neuron:L19.N118] [--iters 15]
                          [--ks 6 10 15 20] [--qs 0.1 0.25 0.5] [--out bench/results/draft.json]

Probe sampling (as in nanoGCG) scores every child with a cheap draft and sends only the most promising
fraction q to the full model. The draft here is the bundled model's own first K decoder layers, then the
final norm and the unembedding: a logit-lens CE. A neuron at layer L < K reads its exact value in the
draft; for L >= K the draft's f is a "neuron lens": layer L's post-attention norm and MLP applied to the
residual stream after K layers (an analogue, not the value).

For each target, one real EPO run (bf16, paper settings M=8, r=32, k=512, n=12) is recorded: every
iteration's parents and children (parent index, mutated position). Then, on the same rows:
  * full (f, CE) with the scorer's `score`, and the draft's (f_K, CE_K) for each K;
  * probe sampling, simulated per iteration: the union over slots of the top fraction q of children
    under each slot's draft objective f_K − λ_i·CE_K is kept; each slot then selects over parents ∪ kept
    children with full scores. Reported: agreement (the slot's pick is the prompt full selection picks),
    regret in L_λ (next to the full selection's gain over the slot's parent), the union fraction, and
    Spearman ρ of draft vs full (objective per slot, f, CE) over the children. The logit lens's CE is
    badly scaled in a small model (tens of nats below the last layers), which skews f_K − λ·CE_K: a
    calibrated draft, f and CE each mapped by a line fitted on the first iteration's children (what a real
    run could fit once), is reported too, on the iterations after the first;
  * seconds (the least of two calls), in this process, to score the same children with the full model
    plainly (`score`), with `score_children` (children from their mutated position on over the parents'
    cached prefix: what EPO really runs), with the draft plainly and with the draft packed like
    `score_children`. Estimated speed-up of scoring = full / (draft + union·full), plain vs plain and
    packed vs packed, and of a whole iteration with the run's median gradient phase added to both sides.
Constraint failures (f = −∞) count as in EPO; the memo of scored prompts is ignored (every child is new).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import reverie
from reverie import EPO, EPOConfig, make_scorer
from reverie.fast.capabilities import FastPath
from reverie.fast.unembed import head_logprobs
from reverie.lm.targets import as_target
from reverie.scoring import Objective, PackedScorer
from reverie.scoring.batching import even_split
from reverie.search.selection import penalised

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_flags


@contextlib.contextmanager
def first_layers(model, k: int):
    """Within the block, the model runs only its first k decoder blocks (then its final norm)."""
    base = model.hf.base_model
    layers = base.layers
    base.layers = torch.nn.ModuleList(list(layers)[:k])
    try:
        yield
    finally:
        base.layers = layers


def record_run(scorer, config) -> tuple[list[dict], dict]:
    """One EPO run; per iteration the parents and their children (with parent index and mutated position)
    as EPO scores them, and the run's median seconds per phase."""
    epo, log = EPO(scorer, config), []
    score = epo.score  # EPO scores an iteration's children as score(children, parents, parent, pos)

    def recording(ids, parents=None, parent=None, pos=None):
        if parents is not None:
            log.append(
                {"parents": parents.clone(), "children": ids.clone(), "parent": parent.clone(), "pos": pos.clone()}
            )
        return score(ids, parents, parent, pos)

    epo.score = recording
    steps = [epo.step() for _ in range(config.iters)]
    phases = {k: statistics.median(s.phases[k] for s in steps) for k in steps[0].phases}
    return log, phases


def draft(scorer, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_K, CE_K) of prompts [B, n]: the first k blocks, the final norm and the head; f exact for a neuron
    below k, else layer L's norm and MLP applied to the residual stream after k blocks (the neuron lens)."""
    model, target, o = scorer.model, scorer.target, scorer.objective
    exact = target.layer < k
    hook = target.hooks[0] if exact else f"blocks.{k - 1}.hook_resid_post"
    fs, ces = [], []
    with torch.inference_mode(), first_layers(model, k):
        for chunk in even_split(ids, scorer.batch_size):
            with model.capture([hook]) as cache, FastPath.of(model).run():
                hidden = model.trunk(chunk)
            positions, labels = o.labels(chunk)
            ces.append(-head_logprobs(model, hidden[:, positions].contiguous(), labels).mean(-1))
            h = cache[hook][:, -1]
            fs.append(h[:, target.index].float() if exact else neuron_lens(model, target.layer, target.index, h))
    return torch.cat(fs), torch.cat(ces)


def packed_draft(scorer, k: int) -> PackedScorer:
    """For timing the draft packed like `score_children` (run it under `first_layers(model, k)`): a scorer
    of the target's neuron, or past the draft of one in its last block (the same cost as the lens)."""
    target, layer = scorer.target, min(scorer.target.layer, k - 1)
    spec = f"neuron:L{layer}.N{target.index}"
    out = PackedScorer(Objective(scorer.model, as_target(spec, scorer.model), scorer.vocab), scorer.batch_size)
    if layer == k - 1:  # the draft's last block: no block above it runs without the last position
        out.deepest_block_read = lambda: None
    return out


def neuron_lens(model, layer: int, index: int, h: torch.Tensor) -> torch.Tensor:
    """Neuron `index` of layer `layer`'s (Llama-style gated) MLP on residual states h [B, d]."""
    block = model.adapter.blocks[layer]
    x, mlp = block.post_attention_layernorm(h), block.mlp
    return (mlp.act_fn(x @ mlp.gate_proj.weight[index]) * (x @ mlp.up_proj.weight[index])).float()


def timed(fn, *args, repeats: int = 2):
    """(the least seconds of `repeats` calls, the result): this machine's noise only ever adds time."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def probe(it: dict, fk: torch.Tensor, cek: torch.Tensor, penalties: torch.Tensor, q: float) -> dict:
    """Probe sampling on one iteration: keep the union over slots of each slot's top q of the children
    under its draft objective, then select with full scores over parents ∪ kept children."""
    C, M = len(it["children"]), len(penalties)
    draft_obj = penalised(fk, cek, penalties)  # [M, C]
    kept = torch.zeros(C, dtype=torch.bool)
    kept[draft_obj.topk(max(1, math.ceil(q * C)), dim=1).indices.flatten()] = True
    pool = torch.cat([it["parents"], it["children"]])
    full = penalised(torch.cat([it["pf"], it["f"]]), torch.cat([it["pce"], it["ce"]]), penalties)  # [M, M + C]
    best = full.argmax(1)
    chosen = full.masked_fill(torch.cat([torch.zeros(M, dtype=torch.bool), ~kept])[None], -torch.inf).argmax(1)
    rows = torch.arange(M)
    return {
        "agreement": float((pool[best] == pool[chosen]).all(1).float().mean()),
        "regret": float((full[rows, best] - full[rows, chosen]).mean()),
        "gain": float((full[rows, best] - full[rows, rows]).mean()),
        "union_fraction": float(kept.float().mean()),
    }


def mean(xs) -> float | None:
    """The mean of the finite values (None if there are none: the JSON stays strict)."""
    xs = [x for x in xs if math.isfinite(x)]
    return float(statistics.fmean(xs)) if xs else None


def measure(model, spec: str, args) -> dict:
    config = EPOConfig.paper(iters=args.iters, seed=args.seed)  # paper settings: M=8, r=32, k=512, n=12
    scorer = make_scorer(model, spec, config)
    assert not scorer.objective.templated and scorer.scorer.reuses_prefix
    penalties = config.slot_penalties()
    t0 = time.perf_counter()
    log, phases = record_run(scorer, config)
    print(f"{spec}: {len(log)} iterations recorded in {time.perf_counter() - t0:.0f} s", flush=True)
    target = scorer.target
    packed = {k: packed_draft(scorer, k) for k in args.ks}
    first = log[0]
    (
        scorer.score(first["children"]),
        scorer.score_children(first["parents"], first["children"], first["parent"], first["pos"]),
    )
    for k in args.ks:  # warm up every path once (compilation, caches)
        draft(scorer, first["children"], k)
        with first_layers(model, k):
            packed[k].score_children(first["parents"], first["children"], first["parent"], first["pos"])
    seconds = {
        "score": 0.0,
        "score_children": 0.0,
        **{f"draft_{k}": 0.0 for k in args.ks},
        **{f"draft_packed_{k}": 0.0 for k in args.ks},
    }
    for it in log:
        failed = ~scorer.vocab.ok(it["children"])  # constraint failures: f = −∞, as in EPO
        dt, (it["f"], it["ce"]) = timed(scorer.score, it["children"])
        seconds["score"] += dt
        it["f"][failed] = -torch.inf
        it["pf"], it["pce"] = scorer.score(it["parents"])
        seconds["score_children"] += timed(
            scorer.score_children, it["parents"], it["children"], it["parent"], it["pos"]
        )[0]
        it["draft"] = {}
        for k in args.ks:
            dt, (fk, cek) = timed(draft, scorer, it["children"], k)
            seconds[f"draft_{k}"] += dt
            it["draft"][k] = (fk.masked_fill(failed, -torch.inf), cek)
            with first_layers(model, k):
                seconds[f"draft_packed_{k}"] += timed(
                    packed[k].score_children, it["parents"], it["children"], it["parent"], it["pos"]
                )[0]
    per_iter = {name: s / len(log) for name, s in seconds.items()}
    costs = {"plain": per_iter["score"], "packed": per_iter["score_children"], "gradients": phases["gradients"]}
    return {
        "iterations": len(log),
        "phases_median_seconds": phases,
        "seconds_per_iteration": per_iter,
        "ks": {str(k): analyse(log, k, penalties, args.qs, costs, per_iter, target.layer < k) for k in args.ks},
    }


def analyse(log: list[dict], k: int, penalties, qs, costs: dict, per_iter: dict, exact: bool) -> dict:
    """Rank correlations and simulated probe sampling for the draft of depth k, raw and calibrated (f and CE
    each mapped by a least-squares line fitted on the first iteration's children, evaluated on the others)."""
    ok = [~it["f"].isneginf() for it in log]
    raw = [it["draft"][k] for it in log]
    (fk0, cek0), m0 = raw[0], ok[0]
    lines = [
        torch.linalg.lstsq(torch.stack([x[m0], torch.ones(int(m0.sum()))], 1).double(), y[m0, None].double()).solution[
            :, 0
        ]
        for x, y in ((fk0, log[0]["f"]), (cek0, log[0]["ce"]))
    ]
    calibrated = [
        (
            (fk * lines[0][0] + lines[0][1]).float().masked_fill(~m, -torch.inf),
            (cek * lines[1][0] + lines[1][1]).float(),
        )
        for (fk, cek), m in zip(raw, ok)
    ]
    out = {"f_exact": exact, "calibration": {"f": lines[0].tolist(), "ce": lines[1].tolist()}}
    pairs = {"objective": [], "f": [], "ce": []}  # (draft, full) over each iteration's valid children
    for it, (fk, cek), m in zip(log, raw, ok):
        pairs["f"].append((fk[m], it["f"][m]))
        pairs["ce"].append((cek[m], it["ce"][m]))
        pairs["objective"] += zip(penalised(fk[m], cek[m], penalties), penalised(it["f"][m], it["ce"][m], penalties))
    out.update({f"spearman_{name}": mean(spearman(a, b) for a, b in p) for name, p in pairs.items()})
    out["spearman_objective_calibrated"] = mean(
        spearman(a, b)
        for it, (fk, cek), m in list(zip(log, calibrated, ok))[1:]
        for a, b in zip(penalised(fk[m], cek[m], penalties), penalised(it["f"][m], it["ce"][m], penalties))
    )
    draft_costs = {"plain": per_iter[f"draft_{k}"], "packed": per_iter[f"draft_packed_{k}"]}
    for name, drafts, its in (("q", raw, log), ("q_calibrated", calibrated[1:], log[1:])):
        out[name] = {}
        for q in qs:
            sims = [probe(it, fk, cek, penalties, q) for it, (fk, cek) in zip(its, drafts)]
            r = {key: mean(s[key] for s in sims) for key in sims[0]}
            u = r["union_fraction"]
            for path in ("plain", "packed"):
                r[f"speedup_scoring_{path}"] = costs[path] / (draft_costs[path] + u * costs[path])
            r["speedup_iteration_packed"] = (costs["gradients"] + costs["packed"]) / (
                costs["gradients"] + draft_costs["packed"] + u * costs["packed"]
            )
            out[name][str(q)] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["neuron:L2.N148", "neuron:L13.N1333", "neuron:L19.N118"])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", type=int, nargs="+", default=[6, 10, 15, 20], help="draft depths (decoder blocks)")
    ap.add_argument("--qs", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="fractions kept per slot")
    ap.add_argument("--out", default="bench/results/draft.json")
    args = ap.parse_args()

    model = reverie.load_model("bundled", dtype="bf16")
    print(f"model {model.spec}: {model.n_layers} layers, {model.dtype}, {torch.get_num_threads()} threads", flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "cpu_flags": cpu_flags(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "model": model.spec,
        "dtype": str(model.dtype),
        "settings": {
            "M": 8,
            "r": 32,
            "k": 512,
            "n": 12,
            "iters": args.iters,
            "seed": args.seed,
            "ks": args.ks,
            "qs": args.qs,
        },
        "targets": {spec: measure(model, spec, args) for spec in args.targets},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False))
    print(
        f"{'target':<18}{'K':>3}{'q':>6}{'agree':>7}{'regret':>8}{'gain':>7}{'union':>7}{'rho':>6}"
        f"{'x plain':>8}{'x packed':>9}{'x iter':>7}  calibrated: agree regret union rho x packed"
    )
    for spec, t in result["targets"].items():
        for k, e in t["ks"].items():
            for q, r in e["q"].items():
                c = e["q_calibrated"][q]
                print(
                    f"{spec:<18}{k:>3}{q:>6}{r['agreement']:>7.2f}{r['regret']:>8.3f}{r['gain']:>7.3f}"
                    f"{r['union_fraction']:>7.2f}{e['spearman_objective']:>6.2f}{r['speedup_scoring_plain']:>8.2f}"
                    f"{r['speedup_scoring_packed']:>9.2f}{r['speedup_iteration_packed']:>7.2f}  {'':>11}"
                    f"{c['agreement']:>6.2f}{c['regret']:>7.3f}{c['union_fraction']:>6.2f}"
                    f"{e['spearman_objective_calibrated']:>5.2f}{c['speedup_scoring_packed']:>9.2f}"
                )
        print(
            f"{spec:<18}seconds/iteration: " + ", ".join(f"{n} {s:.3f}" for n, s in t["seconds_per_iteration"].items())
        )


if __name__ == "__main__":
    main()
