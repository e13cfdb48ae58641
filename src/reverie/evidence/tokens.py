"""Per-token activations: a target read at every position of a prompt, in one forward pass per batch.

`per_token(model, target, prompts)` gives, for each prompt (a sequence of token ids), one value per
token: the target as if the prompt ended at that token (a causal model's position i sees only tokens
0 … i), so the value at the last token is the target's score of the whole prompt. Inside a template
the prompt's own positions are read, as the scorers do (docs/design.md#templates). This is what the
reports colour each token of a dream or dataset window by, and what `reverie export` writes.

A target that is read at one fixed place by nature (attention from the last query to one key, a
Python function without a `position`) has no per-token value: its values are NaN, never an error.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..errors import ReverieError
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.targets import Attention, Target, as_target
from ..scoring import TargetCache
from ..scoring.objective import by_length, template_ids


def every_position(target: Target) -> Target | None:
    """A copy of `target` that reads every position instead of its one `position`; None for a target
    that cannot be read per position (attention entries, targets without a `position`)."""
    if isinstance(target, Attention) or target.position is None:
        return None
    every = copy.copy(target)
    every.position = slice(None)
    return every


def token_strings(model: Model, ids) -> list[str]:
    """Each token of `ids` decoded on its own (a token that is part of a multi-byte character shows
    the replacement character)."""
    return model.tokenizer.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False)


def per_token(
    model: Model, target: Target | str, prompts, *, template: str | None = None, batch_size: int = 32
) -> list[np.ndarray]:
    """For each prompt (a sequence of token ids), float32 values of `target` at each of its tokens; all
    NaN for a target that cannot be read per position. `template` as in EPOConfig."""
    model = as_model(model)
    target = as_target(target, model) if not isinstance(target, Target) else target
    prompts = [[int(t) for t in p] for p in prompts]
    out = [np.full(len(p), np.nan, dtype=np.float32) for p in prompts]
    reader = every_position(target)
    if reader is None:
        return out
    before, after = template_ids(model.tokenizer, template)
    hooks = sorted(set(target.hooks))
    for n, indices in by_length(prompts).items():
        if n == 0:
            continue
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long)
            values = _values(model, reader, hooks, ids, before, after)
            if values is None:
                return out  # this target has no value per position: leave every prompt NaN
            for row, i in enumerate(chunk):
                out[i] = values[row]
    return out


def _values(
    model: Model, reader: Target, hooks: list[str], ids: torch.Tensor, before: torch.Tensor, after: torch.Tensor
) -> np.ndarray | None:
    """[rows, n] values of a per-position reader for prompts `ids` [rows, n], or None if it gives none."""
    rows, n, L = ids.shape[0], ids.shape[1], len(before)
    full = torch.cat([before.expand(rows, -1), ids, after.expand(rows, -1)], 1).to(model.device)
    try:
        with torch.inference_mode(), model.capture(hooks) as cache:
            hidden = model.trunk(full)
            seen = {
                name: t[:, :, L : L + n, L : L + n] if name.endswith("hook_pattern") else t[:, L : L + n]
                for name, t in cache.items()
            }
            value = reader.value(TargetCache(seen, hidden[:, L : L + n], model.head, reader.spec))
    except (ReverieError, IndexError, RuntimeError, TypeError, ValueError):
        return None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (rows, n):
        return None
    return value.float().cpu().numpy()
