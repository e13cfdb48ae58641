"""Readable by default: do the plain dream's prompts beat real text, and are they made of real words?

    python bench/readable.py run --variant default --variant junk=junk_penalty:10 [--corpus auto|none] \
        [--neurons ../shared/bench/neurons.txt] [--seeds 0 1 2] [--iters 30] [--part 0 --parts 2] \
        --out bench/results/readable.json
    python bench/readable.py table bench/results/readable*.json [--baseline default] [--alias beam=default]

`run` calls `reverie.dream(model, neuron, EPOConfig(seed=..., iters=..., **options), corpus=...)` on the
bundled model — what `reverie dream --target NEURON` does — for every (neuron, seed, variant). A variant
is NAME or NAME=option:value,... with EPOConfig options; `paper:1` starts from `EPOConfig.paper()`.
`--corpus auto` is the default command (half the slots start at the feature index's best windows),
`--corpus none` is `--no-corpus` (the model alone). Every run is compared with the same windows, the
feature index's, whatever it started from: the best activation at a cross-entropy no higher than the
best window's (its margin over that window), and the best dream at cross-entropy <= 5 with its real-word
share (`reverie.evidence.readability`). The file is appended to as runs finish; a rerun skips what it
holds.

`table` pools files: per (corpus, variant), neurons won with seeds merged and per seed, the median
margin, the median real-word share of the best dream at cross-entropy <= 5 (and of the best windows),
and, paired with the baseline variant on the same (neuron, seed, corpus), wins/losses of the best
activation at the window's cross-entropy and at cross-entropy <= 5, each with a two-sided sign test.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fluent import parse_variant, sign_test

HERE = Path(__file__).resolve().parent


def run(args) -> None:
    import reverie
    from reverie import EPOConfig
    from reverie.evidence.features import find_index
    from reverie.evidence.readability import real_word_share, real_words
    from reverie.search.frontier import best_at

    out = Path(args.out)
    done = json.loads(out.read_text())["runs"] if out.exists() else []
    key = lambda r: (r["target"], r["seed"], r["variant"], r["corpus"])  # noqa: E731
    seen = {key(r) for r in done}
    specs = [line.strip() for line in Path(args.neurons).read_text().splitlines() if line.strip()]
    specs = specs[args.part :: args.parts]
    model = reverie.load_model("bundled", dtype=args.dtype)
    index = find_index(model, "bundled")
    if index is None:
        raise SystemExit("no feature index of the bundled corpus: run `reverie index` first")
    words = real_words()
    for spec in specs:
        windows = index.windows(model, spec)
        window = windows.loc[windows["activation"].idxmax()]
        for seed in args.seeds:
            for name, options in map(parse_variant, args.variant):
                row = {"target": spec, "seed": seed, "variant": name, "corpus": args.corpus}
                if key(row) in seen:
                    continue
                options = dict(options)
                make = EPOConfig.paper if options.pop("paper", 0) else EPOConfig
                config = make(**{"seed": seed, "iters": args.iters, **options})  # a variant may set its own iters
                start = time.perf_counter()
                result = reverie.dream(model, spec, config, corpus=None if args.corpus == "none" else args.corpus)
                seconds = time.perf_counter() - start
                at = best_at(result.history, float(window["cross_entropy"]))
                five = best_at(result.history, 5.0)
                row.update(
                    {
                        "options": options,
                        "paper": make is EPOConfig.paper,
                        "seconds": round(seconds, 2),
                        "window_activation": float(window["activation"]),
                        "window_cross_entropy": float(window["cross_entropy"]),
                        "window_text": window["text"],
                        "window_words": real_word_share(window["text"], words),
                        "windows_words": float(np.median([real_word_share(t, words) for t in windows["text"]])),
                        "best_at_window": None if at is None else float(at["activation"]),
                        "best_at_window_text": None if at is None else at["text"],
                        "ce5_activation": None if five is None else float(five["activation"]),
                        "ce5_cross_entropy": None if five is None else float(five["cross_entropy"]),
                        "ce5_text": None if five is None else five["text"],
                        "ce5_words": None if five is None else real_word_share(five["text"], words),
                    }
                )
                done.append(row)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(
                    json.dumps(
                        {"settings": {k: v for k, v in vars(args).items() if k != "func"}, "runs": done},
                        indent=1,
                        allow_nan=False,
                    )
                )
                print(
                    json.dumps(
                        {
                            k: row[k]
                            for k in (
                                "target",
                                "seed",
                                "variant",
                                "seconds",
                                "window_activation",
                                "best_at_window",
                                "ce5_words",
                                "ce5_text",
                            )
                        }
                    ),
                    flush=True,
                )


def table(args) -> None:
    runs = pd.DataFrame([r for f in args.files for r in json.loads(Path(f).read_text())["runs"]])
    runs["variant"] = runs["variant"].replace(dict(a.split("=", 1) for a in args.alias))
    runs["value"] = runs["best_at_window"].fillna(runs["window_activation"] - 1.0)
    runs["margin"] = runs["best_at_window"] - runs["window_activation"]
    rows = []
    for corpus, group in runs.groupby("corpus", sort=False):
        base = group[group["variant"] == args.baseline].set_index(["target", "seed"])["value"]
        for name, v in group.groupby("variant", sort=False):
            merged = v.groupby("target").agg(best=("best_at_window", "max"), window=("window_activation", "first"))
            margin = merged["best"] - merged["window"]
            per_seed = v.assign(won=v["margin"] > 0).groupby("seed")["won"].sum()
            row = {
                "corpus": corpus,
                "variant": name,
                "runs": len(v),
                "s/run": round(v["seconds"].mean(), 1),
                "won, seeds merged": f"{int((margin > 0).sum())}/{len(merged)}",
                "won per seed": ", ".join(str(int(w)) for w in per_seed),
                "median margin": f"{margin.fillna(-math.inf).median():+.2f}",
                "real words, ce <= 5": f"{v['ce5_words'].median():.2f}",
                "real words, windows": f"{v['windows_words'].median():.2f}",
            }
            if name != args.baseline and len(base):
                mine = v.set_index(["target", "seed"])["value"]
                both = mine.index.intersection(base.index)
                diff = mine[both] - base[both]
                wins, losses = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
                row[f"vs {args.baseline}"] = f"{wins}/{losses}"
                row["sign p"] = f"{sign_test(wins, losses):.3f}"
                five = v.set_index(["target", "seed"])["ce5_activation"].fillna(-math.inf)
                base5 = group[group["variant"] == args.baseline].set_index(["target", "seed"])["ce5_activation"]
                diff5 = five[both] - base5.fillna(-math.inf)[both]
                wins5, losses5 = int((diff5 > 1e-9).sum()), int((diff5 < -1e-9).sum())
                row[f"at CE <= 5 vs {args.baseline}"] = f"{wins5}/{losses5}"
                row["sign p, CE <= 5"] = f"{sign_test(wins5, losses5):.3f}"
            rows.append(row)
    frame = pd.DataFrame(rows).fillna("")
    if args.markdown:  # a table for docs/performance.md
        print("| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns))
        for values in frame.itertuples(index=False):
            print("| " + " | ".join(map(str, values)) + " |")
    else:
        print(frame.to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    r = sub.add_parser("run")
    r.add_argument("--variant", action="append", required=True)
    r.add_argument("--corpus", default="auto", help="auto (the default command) or none (--no-corpus)")
    r.add_argument("--neurons", default=str(HERE.parent.parent / "shared" / "bench" / "neurons.txt"))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--iters", type=int, default=30)
    r.add_argument("--dtype", default=None)
    r.add_argument("--part", type=int, default=0)
    r.add_argument("--parts", type=int, default=1)
    r.add_argument("--out", required=True)
    r.set_defaults(func=run)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--baseline", default="default")
    t.add_argument("--markdown", action="store_true")
    t.add_argument("--alias", action="append", default=[], help="OLD=NEW: one variant under two names, pooled")
    t.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
