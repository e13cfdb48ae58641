"""The random-prompt baseline: a target's mean and spread over random prompts, for z-scores.

A residual direction has no natural scale (its value depends on the layer's norm statistics and the
vector), so the paper reports it as a z-score against random prompts of the dream's length.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..lm import cache
from ..lm.dtypes import dtype_name
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.targets import Target
from ..scoring import make_scorer
from ..search.config import EPOConfig


@dataclass(frozen=True)
class Baseline:
    mean: float
    std: float
    n: int  # random prompts scored
    length: int  # tokens per prompt

    def z(self, activation):
        """(activation - mean) / std, for a number or an array."""
        return (
            (np.asarray(activation, dtype=float) - self.mean) / self.std
            if self.std > 0
            else np.full(np.shape(activation), math.nan)
        )

    def to_dict(self) -> dict:
        return asdict(self)


def random_baseline(
    model: Model,
    target: Target | str,
    n: int = 512,
    length: int = 12,
    seed: int = 0,
    template: str | None = None,
    cached: bool = False,
) -> Baseline:
    """Mean and standard deviation of `target` over `n` random prompts of `length` allowed tokens
    (inside `template` if given). `cached`: keep it in the cache directory, keyed by the model's weights,
    the target and these arguments, so the reports of many runs of one target compute it once."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"a baseline needs n >= 2 random prompts for a standard deviation, not {n!r}: use e.g. n=512")
    model = as_model(model)
    scorer = make_scorer(model, target, EPOConfig(length=length, check_retokenization=False, template=template))
    path = None
    if cached and not scorer.target.spec.startswith("custom:"):
        path = cache.cache_dir() / "baselines" / f"{_key(model, scorer.target.spec, n, length, seed, template)}.json"
        known = cache.read_json(path)
        if set(known) == {"mean", "std", "n", "length"}:
            return Baseline(**known)
    prompts = scorer.vocab.random_prompts(n, length, torch.Generator().manual_seed(seed))
    f, _ = scorer.score(prompts)
    f = f[torch.isfinite(f)].double()
    baseline = Baseline(float(f.mean()), float(f.std()), int(f.numel()), length)
    if path is not None and all(map(math.isfinite, (baseline.mean, baseline.std))):
        cache.write_json(path, baseline.to_dict())
    return baseline


def _key(model: Model, target: str, *args) -> str:
    """The model by its spec, dtype and a sample of its embedding weights (a folder retrained in place is
    another model), with the target and the baseline's arguments."""
    sample = model.adapter.embed_weight[:8, :8].detach().float().cpu().numpy().round(6).tolist()
    text = json.dumps(
        [model.spec, dtype_name(model.dtype), list(model.adapter.embed_weight.shape), sample, target, *args]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]
