"""Robustness of a dream: does it still drive the target inside real text, how few of its tokens do
the work, and do the model's own near variants of it do as well (docs/design.md#robustness)?

`robustness(model, target, prompts)` answers three questions for each prompt (a dream's token ids),
every value the target read at the dream's last token (`per_token`, as the reports colour tokens):

- in context: the dream inserted into `contexts` random windows of a corpus (`window` tokens each,
  the same windows for every dream, drawn with `seed`), after 1/4, 2/4, 3/4 or all of the window's
  tokens, the rest of the window following it. The dream's template is left out: real text is its
  context. Text after the dream cannot change a causal model's value at the dream's last token, so
  the offset (how much real text precedes it) is what varies;
- minimal trigger: tokens are removed greedily, the least important first by causal attribution
  (`drop_worst`, evidence/attribution.py), each removal kept only if the shortened prompt, scored
  again, still reaches `keep` (80%) of the dream's activation;
- resampled variants: at each position with a context, the dream's token replaced by each of the
  `variants` allowed tokens the model finds most likely there (next-token log-prob given the prefix),
  one variant per replacement, each scored.

"Reaches `keep` of an activation a" means value >= a − (1 − keep)·|a|, so that it also means
something for a negative a. Deterministic given `seed`; every set of prompts (contexts, variants) is
scored in one batched pass, the greedy removals one prompt at a time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, ReverieError
from ..files import finite
from ..lm.foreign import as_model
from ..lm.model import Model
from ..lm.targets import Target, as_target
from ..scoring import make_scorer
from ..search.config import EPOConfig
from .attribution import attribute
from .tokens import per_token, token_strings

KEEP = 0.8  # the share of a dream's activation a trigger or variant must keep
DOCUMENTS = 64  # documents read from the corpus for its windows
CHARACTERS = 4000  # of each document, before it is tokenised


@dataclass
class Robustness:
    """One dream's robustness (see the module docstring). `contexts`: one row per context (offset,
    before_ids, after_ids, before, after, activation); `steps`: one row per removal tried (position,
    token, drop_worst, removed, activation); `variants`: one row per variant (position, token,
    replacement, replacement_id, logprob, ids, text, activation, keeps). `note` says why there are no
    contexts, where there are none."""

    ids: list[int]
    text: str
    activation: float
    keep: float
    contexts: pd.DataFrame
    trigger_positions: list[int]
    trigger_ids: list[int]
    trigger_text: str
    trigger_activation: float
    steps: pd.DataFrame
    variants: pd.DataFrame
    note: str | None = field(default=None)

    @property
    def needed(self) -> float:
        """The least value that keeps `keep` of the dream's activation."""
        return needed(self.activation, self.keep)

    def summary(self) -> dict:
        """The numbers the report's table shows, JSON-ready (None where there are none)."""
        ctx = self.contexts["activation"].to_numpy(float) if len(self.contexts) else np.zeros(0)
        var = self.variants["activation"].to_numpy(float) if len(self.variants) else np.zeros(0)
        return {
            "activation": finite(self.activation),
            "needed": finite(self.needed),
            "contexts": len(ctx),
            **{f"context_{name}": finite(f(ctx)) if len(ctx) else None for name, f in STATS},
            "context_keep_share": float(np.mean(ctx >= self.needed)) if len(ctx) else None,
            "trigger_tokens": len(self.trigger_ids),
            "trigger_activation": finite(self.trigger_activation),
            "variants": len(var),
            **{f"variant_{name}": finite(f(var)) if len(var) else None for name, f in STATS},
            "variant_keep_share": float(np.mean(var >= self.needed)) if len(var) else None,
        }

    def to_dict(self) -> dict:
        """Everything, strict JSON (non-finite values as None)."""
        rows = lambda frame, keys: [{k: _plain(r[k]) for k in keys} for r in frame.to_dict("records")]  # noqa: E731
        return {
            "ids": list(self.ids),
            "text": self.text,
            "keep": self.keep,
            "summary": self.summary(),
            "note": self.note,
            "contexts": rows(self.contexts, ["offset", "activation", "before", "after", "before_ids", "after_ids"]),
            "trigger": {
                "positions": list(self.trigger_positions),
                "ids": list(self.trigger_ids),
                "text": self.trigger_text,
                "activation": finite(self.trigger_activation),
                "steps": rows(self.steps, ["position", "token", "drop_worst", "removed", "activation"]),
            },
            "variants": rows(
                self.variants, ["position", "token", "replacement", "replacement_id", "logprob", "activation", "keeps"]
            ),
        }


STATS = (("min", np.min), ("median", np.median), ("max", np.max))


def needed(activation: float, keep: float = KEEP) -> float:
    """The least value that keeps `keep` of `activation` (a − (1 − keep)·|a|: meaningful for a < 0 too)."""
    return activation - (1 - keep) * abs(activation)


def robustness(
    model: Model,
    target: Target | str,
    prompts,
    *,
    template: str | None = None,
    corpus: str | None = "bundled",
    contexts: int = 16,
    window: int = 24,
    variants: int = 4,
    keep: float = KEEP,
    k: int = 8,
    seed: int = 0,
) -> list[Robustness]:
    """One `Robustness` per prompt (a sequence of token ids, dreamed inside `template` if given): see the
    module docstring. `corpus`: a corpus source (`evidence/scan.documents`), None for no contexts; a
    corpus that cannot be read gives none either, with the reason in each result's `note`. `k`: the
    substitutes per token of the attribution that orders the removals."""
    for name, n in (("contexts", contexts), ("window", window), ("variants", variants), ("k", k)):
        least = 0 if name in ("contexts", "variants") else 1
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ConfigError(f"robustness: {name} must be a whole number of at least {least}, not {n!r}")
    if not 0 < keep <= 1:
        raise ConfigError(f"robustness: keep is a share of the activation, in (0, 1], not {keep!r}")
    model = as_model(model)
    target = as_target(target, model) if not isinstance(target, Target) else target
    prompts = [[int(t) for t in p] for p in prompts]
    if any(not p for p in prompts):
        raise ConfigError("robustness: every prompt needs at least 1 token")
    windows, note = _windows(model, corpus, contexts, window, seed)
    alone = [float(v[-1]) for v in per_token(model, target, prompts, template=template)]
    out = []
    for ids, a in zip(prompts, alone):
        if not math.isfinite(a):
            raise ConfigError(f"robustness: {target.spec} has no value at a prompt's last token to keep")
        need = needed(a, keep)
        table = _in_context(model, target, ids, windows)
        positions, value, steps = _trigger(model, target, ids, a, need, template, k)
        trigger = [ids[i] for i in positions]
        out.append(
            Robustness(
                ids=ids,
                text=_decode(model, ids),
                activation=a,
                keep=keep,
                contexts=table,
                trigger_positions=positions,
                trigger_ids=trigger,
                trigger_text=_decode(model, trigger),
                trigger_activation=value,
                steps=steps,
                variants=_variants(model, target, ids, need, template, variants),
                note=note,
            )
        )
    return out


def _windows(model: Model, corpus: str | None, n: int, length: int, seed: int) -> tuple[list[list[int]], str | None]:
    """`n` random `length`-token windows of the corpus's first documents, or none and the reason."""
    if corpus is None or n == 0:
        return [], "no corpus given: no contexts"
    from .scan import documents

    try:
        texts = list(itertools.islice(documents(corpus), DOCUMENTS))
    except ReverieError as e:
        return [], f"no contexts: {e}"
    encoded = (model.tokenizer(t[:CHARACTERS], add_special_tokens=False)["input_ids"] for t in texts)
    docs = [d for d in encoded if len(d) >= length]
    if not docs:
        return [], f"no contexts: no document of {corpus} has {length} tokens"
    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(n):
        doc = docs[int(rng.integers(len(docs)))]
        start = int(rng.integers(len(doc) - length + 1))
        picks.append(doc[start : start + length])
    return picks, None


def _in_context(model: Model, target: Target, ids: list[int], windows: list[list[int]]) -> pd.DataFrame:
    """Each window with the dream inserted after 1/4, 2/4, 3/4 or all of it, the target at the dream's
    last token: one pass over all of them (they have one length)."""
    columns = ["offset", "before_ids", "after_ids", "before", "after", "activation"]
    if not windows:
        return pd.DataFrame(columns=columns)
    rows: list[dict[str, Any]] = []
    for i, w in enumerate(windows):
        offset = max(1, round(len(w) * (i % 4 + 1) / 4))
        rows.append({"offset": offset, "before_ids": w[:offset], "after_ids": w[offset:]})
    values = per_token(model, target, [r["before_ids"] + ids + r["after_ids"] for r in rows])
    for r, v in zip(rows, values):
        r["before"] = _decode(model, r["before_ids"])
        r["after"] = _decode(model, r["after_ids"])
        r["activation"] = float(v[r["offset"] + len(ids) - 1])
    return pd.DataFrame(rows, columns=columns)


def _trigger(
    model: Model, target: Target, ids: list[int], a: float, need: float, template: str | None, k: int
) -> tuple[list[int], float, pd.DataFrame]:
    """(the positions kept, their activation, the removals tried) of the greedy removal."""
    columns = ["position", "token", "drop_worst", "removed", "activation"]
    if len(ids) < 2:
        return [0], a, pd.DataFrame(columns=columns)
    table = attribute(model, target, ids, k=k, template=template)
    order = table.sort_values(["drop_worst", "position"], kind="stable")
    kept, value, steps = list(range(len(ids))), a, []
    for r in order.itertuples():
        trial = [i for i in kept if i != r.position]
        if not trial:
            break  # (the last token is never removed)
        v = float(per_token(model, target, [[ids[i] for i in trial]], template=template)[0][-1])
        removed = v >= need
        if removed:
            kept, value = trial, v
        steps.append(
            {"position": int(r.position), "token": r.token, "drop_worst": float(r.drop_worst), "removed": removed}
            | {"activation": v}
        )
    return kept, value, pd.DataFrame(steps, columns=columns)


def _variants(model: Model, target: Target, ids: list[int], need: float, template: str | None, n: int) -> pd.DataFrame:
    """The dream with one token replaced by each of the `n` allowed tokens most likely there, scored."""
    columns = ["position", "token", "replacement", "replacement_id", "logprob", "ids", "text", "activation", "keeps"]
    if n == 0 or len(ids) < 2:  # (a scorer, and a next-token log-prob, need 2 tokens)
        return pd.DataFrame(columns=columns)
    config = EPOConfig(length=len(ids), check_retokenization=False, template=template)
    scorer = make_scorer(model, target, config)
    logprobs = scorer.next_token_logprobs([torch.tensor(ids)])[0].float().cpu()  # [n, A], NaN: no context
    allowed = scorer.vocab.allowed.cpu()
    rows: list[dict[str, Any]] = []
    for j, row in enumerate(logprobs):
        if not bool(torch.isfinite(row).all()):
            continue  # the first token without a template: nothing to resample it from
        order = row.argsort(descending=True, stable=True)
        picks = [int(c) for c in order[: n + 1] if int(allowed[c]) != ids[j]][:n]
        for c in picks:
            variant = list(ids)
            variant[j] = int(allowed[c])
            rows.append({"position": j, "replacement_id": variant[j], "logprob": float(row[c]), "ids": variant})
    if not rows:
        return pd.DataFrame(columns=columns)
    values = per_token(model, target, [r["ids"] for r in rows], template=template)
    tokens = token_strings(model, ids)
    replacements = token_strings(model, [r["replacement_id"] for r in rows])
    for r, v, text in zip(rows, values, replacements):
        r |= {"token": tokens[r["position"]], "replacement": text, "text": _decode(model, r["ids"])}
        r |= {"activation": float(v[-1]), "keeps": bool(v[-1] >= need)}
    return pd.DataFrame(rows, columns=columns)


def _decode(model: Model, ids) -> str:
    return model.tokenizer.batch_decode([[int(i) for i in ids]], clean_up_tokenization_spaces=False)[0]


def _plain(x):
    """A value of a row as strict JSON holds it."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    return x
