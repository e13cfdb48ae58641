"""Train a small SAE on the bundled model over the bundled corpus, then dream some of its features.

    python bench/sae.py [--layer 8] [--d-sae 2048] [--tokens 100000] [--steps 3000] [--features 3]
                        [--iters 60] [--out bench/results/sae.json]

Shows that a dreamed SAE feature goes far above the best the corpus offers (the scan's best
12-token window), and where it stands at equal fluency. The SAE is saved (SAELens layout) under
$REVERIE_CACHE/sae-bundled-L{layer}, reusable as `--target sae:FOLDER:F123`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import reverie
from reverie import EPOConfig
from reverie.evidence.scan import ScanConfig, documents, scan
from reverie.lm.model import cache_dir
from reverie.lm.sae import train_sae
from reverie.search.frontier import versus_data


def corpus_activations(model, hook, tokens, chunk=256):
    rows, seen = [], 0
    for text in documents("bundled"):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), chunk):
            piece = torch.tensor([ids[i : i + chunk]], device=model.device)
            with torch.inference_mode(), model.capture([hook]) as cache:
                model.hf(input_ids=piece)
            rows.append(cache[hook][0, 1:].float().cpu())  # skip each chunk's first position (attention sink)
            seen += piece.shape[1]
            if seen >= tokens:
                return torch.cat(rows)
    return torch.cat(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=8)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--features", type=int, default=3)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--scan-tokens", type=int, default=None)
    p.add_argument("--out", default="bench/results/sae.json")
    args = p.parse_args()

    model = reverie.load_model("bundled")
    hook = f"blocks.{args.layer}.hook_resid_pre"
    t0 = time.perf_counter()
    x = corpus_activations(model, hook, args.tokens)
    t1 = time.perf_counter()
    sae = train_sae(x, hook, d_sae=args.d_sae, steps=args.steps)
    t2 = time.perf_counter()
    folder = sae.save(cache_dir() / f"sae-bundled-L{args.layer}")
    f = sae.encode(x)
    recon = f @ sae.W_dec + sae.b_dec
    fvu = float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    l0 = float((f > 0).float().sum(-1).mean())
    alive = (f > 0).float().mean(0)
    print(
        f"SAE {hook} d_sae={args.d_sae}: {len(x):,} activations in {t1 - t0:.0f} s, trained in {t2 - t1:.0f} s; "
        f"unexplained variance {fvu:.3f}, L0 {l0:.1f}, alive {int((alive > 0).sum())}"
    )
    # features that fire on 0.1-2% of tokens: specific, but present in the corpus
    candidates = ((alive > 0.001) & (alive < 0.02)).nonzero()[:, 0]
    picks = candidates[
        torch.randperm(len(candidates), generator=torch.Generator().manual_seed(0))[: args.features]
    ].tolist()
    specs = [f"sae:{folder}:F{i}" for i in picks]
    windows = scan(model, specs, "bundled", ScanConfig(max_tokens=args.scan_tokens))
    rows = []
    for spec in specs:
        mine = windows[windows["target"] == spec]
        result = reverie.dream(model, spec, EPOConfig(iters=args.iters, seed=0))
        v = versus_data(result.history, mine)
        best = result.best()
        rows.append(
            {
                "target": spec,
                "feature_density": float(alive[int(spec.rsplit("F", 1)[1])]),
                "best_window": v["window_activation"],
                "best_window_ce": v["window_cross_entropy"],
                "window_text": v["window_text"],
                "dream_at_window_ce": v["dream_activation"],
                "best_dream": float(best["activation"]),
                "best_dream_ce": float(best["cross_entropy"]),
                "best_dream_text": best["text"],
                "dream_seconds": round(result.seconds, 1),
            }
        )
        print(
            f"{spec}: best window {v['window_activation']:.2f} @ ce {v['window_cross_entropy']:.2f}; dream "
            f"{best['activation']:.2f} @ ce {best['cross_entropy']:.2f} "
            f"({best['activation'] / max(v['window_activation'], 1e-9):.1f}x); "
            f"at ce <= window's: {v['dream_activation']:.2f}",
            flush=True,
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "hook": hook,
                "d_sae": args.d_sae,
                "tokens": len(x),
                "fvu": fvu,
                "l0": l0,
                "iters": args.iters,
                "features": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
