"""Why does a search from scratch lose a neuron: it finds no activation at all, or none that is fluent?

    python bench/lost.py --scan SCAN_DIR [--targets neuron:L3.N492 ...] [--iters 40]
                         [--samples 128] [--tokens 64] [--out bench/results/lost.json]

For each target, against the scan's best dataset window:
  * `search`: one run of the paper's EPO (random starts, seed 0, `--iters` iterations) on the bundled
    model; the best activation it scored at the last position (any cross-entropy), and the best at any
    position of any prompt it scored (every distinct prompt read at every position, as `reverie scan`
    reads a corpus). Far below the window: the search never found the feature; above it: the feature
    was found, not fluently;
  * `model text`: the best 12-token window in text the model writes itself (`--samples` samples of
    `--tokens` tokens after a paragraph break, top-p 0.95), read at every position: what starting
    from the model's own text could begin with, without a corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import reverie
from reverie import EPO, EPOConfig, make_scorer
from reverie.evidence.scan import ScanConfig, read_scan, scan

TARGETS = ["neuron:L3.N492", "neuron:L13.N1333", "neuron:L14.N856", "neuron:L17.N439"]


def written_text(model, samples: int, tokens: int, seed: int = 0) -> list[str]:
    """Texts the model writes after a paragraph break (top-p 0.95), through `generate` and its KV cache:
    `proposals.model_text` runs each prefix again at every step, cheap for a 12-token prompt, not for
    128 samples of 64 tokens."""
    torch.manual_seed(seed)
    start = torch.tensor([model.tokenizer("\n\n", add_special_tokens=False)["input_ids"]]).repeat(samples, 1)
    texts = []
    with torch.inference_mode():
        for chunk in start.split(64):
            out = model.hf.generate(
                chunk,
                attention_mask=torch.ones_like(chunk),
                do_sample=True,
                top_p=0.95,
                top_k=0,
                max_new_tokens=tokens,
                pad_token_id=0,
            )
            texts += model.tokenizer.batch_decode(out[:, chunk.shape[1] :])
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", required=True)
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default="bench/results/lost.json")
    args = p.parse_args()
    model = reverie.load_model("bundled", dtype="bfloat16")
    windows = read_scan(args.scan)
    start = time.perf_counter()
    texts = written_text(model, args.samples, args.tokens)
    written = scan(model, args.targets, texts, ScanConfig(window=12, top=1))
    seconds = time.perf_counter() - start
    rows = []
    for spec in args.targets:
        mine = windows[windows["target"] == spec]
        window = mine.loc[mine["activation"].idxmax()]
        config = EPOConfig.paper(iters=args.iters, seed=0)
        epo = EPO(make_scorer(model, spec, config), config)
        epo.run()
        history = epo.history.frame(epo.vocab.decode)
        prompts = list(dict.fromkeys(history["text"]))
        anywhere = scan(model, [spec], prompts, ScanConfig(window=2, top=1, chunk=64, batch_size=64))
        own = written[written["target"] == spec]
        rows.append(
            {
                "target": spec,
                "window": float(window["activation"]),
                "window_cross_entropy": float(window["cross_entropy"]),
                "window_text": window["text"],
                "search_last_position": float(history["activation"].max()),
                "search_any_position": float(anywhere["in_context"].max()),
                "model_text": float(own["activation"].max()),
                "model_text_cross_entropy": float(own.loc[own["activation"].idxmax(), "cross_entropy"]),
                "model_text_window": own.loc[own["activation"].idxmax(), "text"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "iters": args.iters,
                "model_text_tokens": args.samples * args.tokens,
                "model_text_seconds": round(seconds, 1),
                "targets": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
