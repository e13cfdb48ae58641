"""Could scoring skip children's cross-entropy exactly? A bound on what selection and the frontier need.

    python bench/prune.py [--model bundled] [--dtype float32] [--iters 15]
                          [--targets neuron:L2.N148 neuron:L13.N1333] [--out bench/results/prune.json]

In fp32 at a 262k vocabulary most of an iteration is the children's cross-entropy: each child unembeds
the rows from its mutated position on (docs/performance.md#large-vocabularies). Its f comes before any
of them, and the terms before its mutated position come from its parent. Since every log-prob is ≤ 0,

    CE(child) ≥ CE_lb = −(Σ_{j < pos} log p(parent's token j) + log p(child's token at pos)) / (n − first),

so under slot i, L_λi(child) ≤ f − λi·CE_lb. A child could be skipped, with selection unchanged, when that
bound is below every slot's best (`selection`); and, with the frontier unchanged too, when some exactly
scored prompt has f' ≥ f and CE' ≤ CE_lb (`frontier`). This records a real run (paper settings, seed 0)
and counts, per iteration, the children's unembedded rows (n − 1 − pos each) that each rule must still
compute, taking as thresholds the final bests: the least any exact scheme could compute. The bounds are
checked against the real CE on every child.

With `--time`, in the same process: the seconds of unembedding (`fast.unembed.head_logprobs`, tiled) the
rows an iteration must compute at the least (the children's own rows, however pruned, plus one row
per parent position for the prefix terms), against the seconds of one iteration of the reference path
(the PlainScorer, `bench/speed.py`'s plain path): their quotient bounds reverie's speed-up over the
plain path from above, were everything else an iteration does free.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reverie
from draft import timed
from reverie import EPO, EPOConfig, make_scorer
from reverie.fast.unembed import head_logprobs
from reverie.search.selection import penalised


def needed_rows(epo: EPO, parents, children, parent, pos, f, ce) -> dict[str, float]:
    """Rows every child would unembed, and those each rule still needs, for one iteration's children."""
    scorer, s = epo.scorer, epo.state
    allowed, (m, n), first = scorer.vocab.allowed, parents.shape, scorer.objective.first
    index = lambda ids: torch.searchsorted(allowed, ids)  # noqa: E731  token id -> allowed column
    logprobs = scorer.next_token_logprobs(list(parents))  # per parent [n, A], NaN rows without context
    own = torch.stack([lp[torch.arange(n), index(p)] for lp, p in zip(logprobs, parents)]).nan_to_num(0.0)
    before = torch.cat([torch.zeros(m, 1), own.cumsum(1)], 1)[parent, pos]  # Σ_{j < pos}
    new = torch.stack(
        [logprobs[p][q, index(children[j, q])] for j, (p, q) in enumerate(zip(parent.tolist(), pos.tolist()))]
    ).nan_to_num(0.0)
    ce_lb = -(before + new) / (n - first)
    ok = f.isfinite()
    assert bool((ce_lb[ok] <= ce[ok] + 1e-3).all()), "the bound must hold"
    best = penalised(torch.cat([s.f, f]), torch.cat([s.ce, ce]), epo.penalties).max(1).values
    selection = ((f[None] - epo.penalties[:, None] * ce_lb[None]) >= best[:, None] - 1e-5).any(0)
    f_exact, ce_exact = torch.cat([s.f, f[ok]]), torch.cat([s.ce, ce[ok]])
    frontier = ~((f_exact[None] >= f[:, None]) & (ce_exact[None] <= ce_lb[:, None])).any(1)
    rows = (n - 1 - pos).clamp_min(0).float() * ok
    return {
        "rows": float(rows.sum()),
        "selection": float((rows * selection).sum()),
        "frontier": float((rows * frontier).sum()),
        "either": float((rows * (selection | frontier)).sum()),
    }


def measure(model, spec: str, iters: int) -> dict:
    config = EPOConfig.paper(iters=iters, seed=0)
    epo = EPO(make_scorer(model, spec, config), config)
    totals: dict[str, float] = {}
    score = epo.score  # EPO scores an iteration's children as score(children, parents, parent, pos)

    def counting(ids, parents=None, parent=None, pos=None):
        f, ce = score(ids, parents, parent, pos)
        if parents is not None:
            for key, value in needed_rows(epo, parents, ids, parent, pos, f, ce).items():
                totals[key] = totals.get(key, 0.0) + value
        return f, ce

    epo.score = counting
    epo.run()
    return {
        "target": spec,
        "iterations": iters,
        **totals,
        **{f"{k} needed": round(totals[k] / totals["rows"], 3) for k in ("selection", "frontier", "either")},
    }


def bound(model, spec: str, rows: int, reference_iters: int = 2) -> dict:
    """Seconds to unembed `rows` rows, and seconds per iteration of the reference path, in this process."""
    config = EPOConfig.paper(iters=reference_iters, seed=0)
    hidden = torch.randn(rows, model.adapter.d_model, dtype=model.dtype, device=model.device)
    labels = torch.randint(len(model.tokenizer), (rows,), device=model.device)
    with torch.inference_mode():
        unembed, _ = timed(head_logprobs, model, hidden, labels)
    epo = EPO(make_scorer(model, spec, config, scorer="plain"), config)
    steps = [epo.step() for _ in range(reference_iters)]
    reference = min(s.seconds for s in steps)
    return {
        "rows": rows,
        "unembed_seconds": round(unembed, 3),
        "reference_seconds_per_iteration": round(reference, 3),
        "most_speedup": round(reference / unembed, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--targets", nargs="+", default=["neuron:L2.N148", "neuron:L13.N1333"])
    p.add_argument("--time", action="store_true", help="also time the least unembedding against the reference path")
    p.add_argument("--out", default="bench/results/prune.json")
    args = p.parse_args()
    model = reverie.load_model(args.model, dtype=args.dtype)
    rows = []
    for spec in args.targets:
        rows.append(measure(model, spec, args.iters))
        if args.time:  # the least rows: the children's own rows any rule needs, and the parents' prefix rows
            config = EPOConfig.paper()
            least_rows = min(rows[-1][k] for k in ("selection", "frontier")) / args.iters
            rows[-1]["bound"] = bound(model, spec, round(least_rows) + config.population * (config.length - 1))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "model": args.model,
                "dtype": args.dtype,
                "machine": platform.machine(),
                "threads": torch.get_num_threads(),
                "targets": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
