"""The random-prompt baseline: a target's mean and spread over random prompts, for z-scores.

A residual direction has no natural scale (its value depends on the layer's norm statistics and the
vector), so the paper reports it as a z-score against random prompts of the dream's length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..lm.model import Model
from ..scoring.packed import Scorer, auto_batch_size
from ..lm.targets import Target, as_target
from ..lm.vocab import Vocabulary


@dataclass(frozen=True)
class Baseline:
    mean: float
    std: float
    n: int          # random prompts scored
    length: int     # tokens per prompt

    def z(self, activation):
        """(activation - mean) / std, for a number or an array."""
        return (np.asarray(activation, dtype=float) - self.mean) / self.std if self.std > 0 else \
            np.full(np.shape(activation), math.nan)

    def to_dict(self) -> dict:
        return asdict(self)


def random_baseline(model: Model, target: Target | str, n: int = 512, length: int = 12, seed: int = 0,
                    template: str | None = None) -> Baseline:
    """Mean and standard deviation of `target` over `n` random prompts of `length` allowed tokens
    (inside `template` if given)."""
    target = as_target(target, model)
    target.check_length(length)
    vocab = Vocabulary.for_model(model, check_retokenization=False)
    scorer = Scorer(model, target, vocab, batch_size=auto_batch_size(model, length), template=template)
    prompts = vocab.random_prompts(n, length, torch.Generator().manual_seed(seed))
    f, _ = scorer.score(prompts)
    f = f[torch.isfinite(f)].double()
    return Baseline(float(f.mean()), float(f.std()), int(f.numel()), length)
