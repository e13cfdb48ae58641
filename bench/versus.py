"""Dreams vs data, per target: the paper's claim that dreams beat real text at equal fluency, checked.

    python bench/versus.py [--scan SCAN_DIR] RUN_DIR_OR_SWEEP_DIR ... [--out bench/results/versus.json]

For every target of the runs (seeds of one target are merged into one frontier): the best dataset
window's activation and cross-entropy, the best dream at a cross-entropy no higher than that window's,
the margin (> 0: the dream wins), how many of the top windows lie above the dreams' frontier, and the
real-word share of the window and of the dream (`reverie.evidence.readability`). The windows are the
scan's, or without --scan those each run keeps (windows.parquet). A directory holding run
directories (a sweep) is searched for them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

import reverie
from reverie.evidence.readability import real_word_share, real_words
from reverie.evidence.scan import read_scan
from reverie.search.frontier import merge, versus_data


def run_dirs(paths):
    for path in map(Path, paths):
        if (path / "config.json").exists():
            yield path
        else:
            yield from sorted(
                p.parent for p in path.rglob("config.json") if (p.parent / "checkpoint.safetensors").exists()
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--scan")
    parser.add_argument("--out")
    args = parser.parse_args()
    windows = read_scan(args.scan) if args.scan else None
    words = real_words()
    by_target: dict[str, list] = {}
    for path in run_dirs(args.runs):
        run = reverie.load_run(path)
        by_target.setdefault(run.target, []).append(run)
    rows = []
    for target, runs in by_target.items():
        mine = windows[windows["target"] == target] if windows is not None else runs[0].windows
        v = None if mine is None else versus_data(merge([r.history for r in runs]), mine)
        if v is None:
            continue
        rows.append(
            {
                "target": target,
                "seeds": len(runs),
                "iterations": min(r.iterations for r in runs),
                **v,
                "window_words": real_word_share(v["window_text"], words),
                "dream_words": None if v["dream_text"] is None else real_word_share(v["dream_text"], words),
            }
        )
    table = pd.DataFrame(rows)
    print(
        "| target | seeds × iters | best window (act @ ce) | best dream at ce ≤ window's | margin | windows above the "
        "dreams | real words: window, dream |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        dream = (
            "none that fluent"
            if math.isnan(r.dream_activation)
            else f"{r.dream_activation:.2f} @ {r.dream_cross_entropy:.2f}"
        )
        margin = "–" if math.isnan(r.margin) else f"{r.margin:+.2f}"
        print(
            f"| {r.target} | {r.seeds} × {r.iterations} | {r.window_activation:.2f} @ {r.window_cross_entropy:.2f} | "
            f"{dream} | {margin} | {r.windows_above}/{r.windows} | {r.window_words:.2f}, "
            f"{'–' if r.dream_words is None or math.isnan(r.dream_words) else f'{r.dream_words:.2f}'} |"
        )
    wins = int((table["margin"] > 0).sum())
    print(f"\ndreams win at equal fluency on {wins} of {len(table)} targets")
    if args.out:
        Path(args.out).write_text(json.dumps(table.to_dict("records"), indent=2, default=str))


if __name__ == "__main__":
    main()
