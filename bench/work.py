"""How much work an EPO iteration does: tokens through the first and the last block, and rows unembedded.

    python bench/work.py [--model bundled] [--targets neuron:L9.N402] [--iters 20] [--horizons 1 2]
                         [--out bench/results/work.json]

Counts, not seconds (it can run beside other work): reverie's `EPOConfig.paper()` at the paper's settings
(M = 8, r = 32, k = 512, n = 12), exact and with each cross-entropy horizon, per iteration (medians over
`--iters`, the first dropped): the tokens entering the model's first block and its last block (forward
pre-hooks: every pass, gradient passes included), and the rows the unembedding reads (the tiled
`head_logprobs` of scoring and the head's full rows of gradient passes). The authors' `epo()` runs the
M·r children in full through every block and unembeds every position, plus a gradient pass over the M
members: the same counts from their code's shape, which this prints beside.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

SETTINGS = dict(population=8, children=32, top_k=512, length=12, batch_size=256)


class Counter:
    """Tokens into the first and the last block, and unembedded rows, since the last `take()`."""

    def __init__(self, model):
        self.counts = {"first_block": 0, "last_block": 0, "unembedded": 0}
        blocks = model.adapter.blocks

        def tokens(key):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                self.counts[key] += hidden.shape[0] * hidden.shape[1]

            return hook

        blocks[0].register_forward_pre_hook(tokens("first_block"), with_kwargs=True)
        blocks[-1].register_forward_pre_hook(tokens("last_block"), with_kwargs=True)
        head, tiles, inside = model.head, model.head_tiles, []

        def counted_head(hidden):  # the full head (gradient passes, logits targets)
            if not inside:
                self.counts["unembedded"] += hidden.reshape(-1, hidden.shape[-1]).shape[0]
            return head(hidden)

        def counted_tiles(hidden, width):  # the tiled head of scoring (`fast.unembed.head_logprobs`)
            self.counts["unembedded"] += hidden.reshape(-1, hidden.shape[-1]).shape[0]
            inside.append(True)
            try:
                yield from tiles(hidden, width)
            finally:
                inside.pop()

        model.head, model.head_tiles = counted_head, counted_tiles

    def take(self) -> dict:
        out = dict(self.counts)
        self.counts = dict.fromkeys(self.counts, 0)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--targets", nargs="+", default=["neuron:L9.N402"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--horizons", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import reverie
    from reverie import EPO, EPOConfig, make_scorer

    model = reverie.load_model(args.model, dtype=args.dtype)
    counter = Counter(model)
    config = EPOConfig.paper(**SETTINGS, iters=args.iters, seed=args.seed)
    M, r, n = config.population, config.children, config.length
    authors = {"first_block": M * r * n + M * n, "last_block": M * r * n + M * n, "unembedded": M * r * n + M * n}
    rows = []
    for spec in args.targets:
        for horizon in [None, *args.horizons]:
            run = replace(config, ce_horizon=horizon)
            epo = EPO(make_scorer(model, spec, run), run)
            counter.take()
            per = []
            for _ in range(args.iters):
                epo.step()
                per.append(counter.take())
            per = per[1:]
            row = {"target": spec, "horizon": horizon, **{k: statistics.median(p[k] for p in per) for k in per[0]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'target':<18}{'code':<14}{'first block':>12}{'last block':>12}{'unembedded':>12}")
    for spec in args.targets:
        print(f"{spec:<18}{'authors':<14}" + "".join(f"{authors[k]:>12}" for k in authors))
        for row in (r for r in rows if r["target"] == spec):
            code = "reverie" if row["horizon"] is None else f"reverie h={row['horizon']}"
            print(f"{spec:<18}{code:<14}" + "".join(f"{row[k]:>12.0f}" for k in authors))
    if args.out:
        result = {"model": args.model, "settings": SETTINGS, "iters": args.iters, "authors": authors, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
