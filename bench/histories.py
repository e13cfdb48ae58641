"""Fingerprints of EPO histories, for a refactor that must not change what a run does.

    python bench/histories.py --out /tmp/before.json                  # on the old code
    python bench/histories.py --out /tmp/after.json --against /tmp/before.json

Runs ten configs (the default, the paper's, sampled starts, pair edits with the junk and repetition
penalties, insertions and deletions, adaptive restarts with a k schedule, a template, an initial prompt,
GCG, word starts) × two seeds × two targets on a random-weight tiny Llama in fp32, one thread, and hashes
each run's history (slots, ids, activations, cross-entropies, kept) with its final population and random
state. With --against, lists the runs whose fingerprint differs (exit 1 if any).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

import reverie
from reverie import EPOConfig
from reverie.lm.model import bundled_path

SMALL = dict(population=4, children=8, top_k=32, length=8, iters=6)
CONFIGS = {
    "default": EPOConfig(**SMALL),
    "paper": EPOConfig.paper(**SMALL),
    "sampled": EPOConfig(**SMALL, starts="sampled"),
    "pairs": EPOConfig(**SMALL, pair_rate=0.5, junk_penalty=4, repetition_penalty=1.0),
    "variable": EPOConfig(**SMALL, insert_rate=0.2, delete_rate=0.2),
    "restart": EPOConfig(**{**SMALL, "iters": 8}, restart_every=2, adaptive_restart=True, top_k_start=8),
    "template": EPOConfig(**SMALL, template="Q: {prompt} A:"),
    "init": EPOConfig(**SMALL, init_prompt="The cat sat on the mat today"),
    "gcg": EPOConfig.gcg(**{k: v for k, v in SMALL.items() if k != "population"}),
    "ws": EPOConfig(**SMALL, word_start=True),
}


def tiny_llama():
    """The tests' tiny Llama (tests/conftest.py `build_tiny`): 2 layers, width 64, the bundled tokenizer, seed 0."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from conftest import build_tiny

    return build_tiny("llama", AutoTokenizer.from_pretrained(bundled_path()))


def fingerprint(result) -> str:
    h = result.history
    blob = h[["iteration", "slot", "activation", "cross_entropy", "kept"]].to_csv().encode()
    blob += str([list(map(int, ids)) for ids in h["ids"]]).encode()
    blob += result.state.population.numpy().tobytes() + result.state.rng.numpy().tobytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--against", default=None, help="fingerprints of the code before (this script's --out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny_llama()
    out = {}
    for seed in (0, 1):
        for name, config in CONFIGS.items():
            for target in ("neuron:L1.N7", "logit:42"):
                result = reverie.dream(model, target, replace(config, seed=seed), corpus=None)
                out[f"{name}/{seed}/{target}"] = fingerprint(result)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{len(out)} fingerprints -> {args.out}")
    if args.against:
        before = json.loads(Path(args.against).read_text())
        differ = [k for k in before if before[k] != out.get(k)]
        print(f"{len(before) - len(differ)} of {len(before)} identical" + (f"; differ: {differ}" if differ else ""))
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
