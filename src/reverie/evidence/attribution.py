"""Causal token attribution (the paper's Fig. 1 and 4): which tokens of a prompt cause the activation.

For each position, the top-k gradient candidates at λ = 0 are substituted one at a time and the
prompt is re-scored. Per token: `drop_worst` — how far the activation falls under the worst
substitute (the paper colours tokens by this, relative to the baseline); `drop_best` — how far it
falls even under the best alternative (the bar height: large means no other token does the job).
"""

from __future__ import annotations

import pandas as pd
import torch

from ..errors import ConfigError
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.targets import Target, as_target
from ..scoring import make_scorer
from ..search.config import EPOConfig


def attribute(
    model: Model, target: Target | str, prompt: str | list[int], k: int = 32, template: str | None = None
) -> pd.DataFrame:
    """One row per prompt token: token, baseline, worst/best substitute activations and drops, substitutes.
    `template`: the fixed context the prompt was dreamed in (see `EPOConfig.template`)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of substitutes per token, at least 1, not {k!r}")
    model = as_model(model)
    target = as_target(target, model)
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)
    if len(ids) < 2:
        raise ConfigError(f"the prompt is {len(ids)} token(s); attribution needs at least 2")
    scorer = make_scorer(model, target, EPOConfig(length=len(ids), check_retokenization=False, template=template))
    vocab = scorer.vocab
    if k > len(vocab) - 1:
        raise ConfigError(
            f"k={k} is more substitutes than there are ({len(vocab) - 1}, the allowed tokens but "
            "the prompt's own): use a smaller k, e.g. 32"
        )
    base = torch.tensor([ids])
    f0, ce0 = scorer.score(base)
    top = scorer.top_k(list(base), torch.zeros(1), k + 1)[0]  # [n, k+1]
    variants, where = [], []
    for i in range(len(ids)):
        subs = [t for t in top[i].tolist() if t != ids[i]][:k]
        for t in subs:
            v = list(ids)
            v[i] = t
            variants.append(v)
            where.append((i, t))
    # each variant is the prompt with one token swapped: scored as its children, from the swap on
    f, _ = scorer.score_children(
        base, torch.tensor(variants), torch.zeros(len(variants), dtype=torch.long), torch.tensor([i for i, _ in where])
    )
    rows = []
    tokens = vocab.decode(torch.tensor(ids)[:, None])
    unique = sorted({t for _, t in where})
    text = dict(zip(unique, vocab.decode(torch.tensor(unique)[:, None])))  # each substitute decoded once
    baseline = float(f0[0])
    for i, token in enumerate(tokens):
        mine = [(float(f[j]), t) for j, (pos, t) in enumerate(where) if pos == i]
        mine.sort(reverse=True)
        worst, best = mine[-1], mine[0]
        rows.append(
            {
                "position": i,
                "token": token,
                "token_id": ids[i],
                "baseline": baseline,
                "worst_activation": worst[0],
                "best_activation": best[0],
                "drop_worst": baseline - worst[0],
                "drop_best": baseline - best[0],
                "worst_substitute": text[worst[1]],
                "best_substitute": text[best[1]],
                "substitutes": [(text[t], a) for a, t in mine],
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["cross_entropy"] = float(ce0[0])
    return frame
