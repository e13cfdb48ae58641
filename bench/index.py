"""The feature index's pass against a scan of 16 targets, in one process, and what a later dream pays.

    python bench/index.py [--max-tokens 100000] [--repeats 1] [--out bench/results/index.json]

Times, on the bundled model and corpus (the first --max-tokens tokens; all of them without it): a
`reverie scan` of 16 neurons (the 12 bench neurons and 4 more) and a fresh feature index of every MLP
neuron (30 layers x 1536), alternating, each index built under a new key and deleted afterwards. Then,
with the index open once, what `windows_for` costs a dream per target: reading the index (first call)
and re-scoring its windows (every call).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA = ["neuron:L9.N402", "neuron:L5.N100", "neuron:L20.N7", "neuron:L25.N900"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    import reverie
    from reverie.evidence.features import IndexConfig, build_index, index_dir
    from reverie.evidence.scan import ScanConfig, scan
    from reverie.evidence.windows import windows_for
    from reverie.lm.dtypes import cpu_flags
    from reverie.lm.targets import as_target

    neurons = [s.strip() for s in (HERE.parent.parent / "shared" / "bench" / "neurons.txt").read_text().split() if s]
    targets = neurons + EXTRA
    model = reverie.load_model("bundled")
    config = IndexConfig(max_tokens=args.max_tokens)
    if (index_dir(model, "bundled", config) / "index.json").exists():
        raise SystemExit(
            f"an index with these options exists already ({index_dir(model, 'bundled', config)}): "
            "give another --max-tokens, or delete it"
        )
    rows = []
    for repeat in range(args.repeats):
        for what in ("scan", "index"):
            start = time.perf_counter()
            if what == "scan":
                scan(model, targets, "bundled", ScanConfig(max_tokens=args.max_tokens))
                tokens = None
            else:  # built fresh: the folder is deleted after each repeat
                built = build_index(model, "bundled", config)
                tokens = built.meta["tokens"]
            seconds = time.perf_counter() - start
            rows.append({"what": what, "repeat": repeat, "seconds": round(seconds, 1), "tokens": tokens})
            print(json.dumps(rows[-1]), flush=True)
            if what == "index":
                windows = []  # the first call reads the index; it stays open in memory for the rest
                for spec in neurons:
                    t = time.perf_counter()
                    windows_for(model, as_target(spec, model), "bundled", index=config)
                    windows.append(round(time.perf_counter() - t, 2))
                print(json.dumps({"windows_for seconds per target": windows}), flush=True)
                rows.append({"what": "windows_for", "seconds": windows})
                shutil.rmtree(built.path)
    flags = " ".join(f for f in cpu_flags().split() if f.startswith(("amx", "avx512_bf16", "avx512f")))
    result = {
        "machine": f"x86_64 {torch.get_num_threads()} threads, flags {flags}",
        "max_tokens": args.max_tokens,
        "targets": targets,
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
