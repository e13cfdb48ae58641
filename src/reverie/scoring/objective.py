"""What a scorer scores: the target, the prompt's place in a template, and the models whose cross-entropy
measures fluency (docs/design.md#objective).

For a prompt t of n tokens, a scorer returns f(t), the target read at the prompt's positions, and
CE(t), the mean next-token cross-entropy of the prompt's own tokens: logits[:, :-1] against ids[:, 1:],
no BOS added (inside a template, the first prompt token is scored too, after the template's text).
With several fluency models, CE is their weighted mean. Both are fp32 even when the model runs in bf16.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, TargetError
from ..lm.model import Model
from ..lm.targets import Target
from ..lm.vocab import Vocabulary


class Objective:
    """`fluency`: (None = the target model, or another Model sharing its tokenizer; weight) pairs;
    default the target model alone."""

    def __init__(
        self,
        model: Model,
        target: Target,
        vocab: Vocabulary,
        template: str | None = None,
        fluency: list[tuple[Model | None, float]] | None = None,
    ):
        self.model, self.target, self.vocab = model, target, vocab
        self.before, self.after = (t.to(model.device) for t in template_ids(model.tokenizer, template))
        self.first = 0 if len(self.before) else 1  # the first prompt token with a cross-entropy term
        fluency = fluency or [(None, 1.0)]
        total = sum(w for _, w in fluency)
        if not total > 0 or any(w < 0 for _, w in fluency):
            raise ConfigError("fluency weights must be >= 0 and not all 0")
        self.self_weight = sum(w for m, w in fluency if m is None) / total
        self.others: list[tuple[Model, float]] = []  # other fluency models, normalised weights
        for m, w in fluency:
            if m is not None:
                if m.tokenizer.get_vocab() != model.tokenizer.get_vocab():
                    raise ConfigError(f"the fluency model {m.spec} does not share the tokenizer of {model.spec}")
                self.others.append((m, w / total))

    @property
    def templated(self) -> bool:
        return len(self.before) + len(self.after) > 0

    def in_template(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's input for prompts [B, n]: the template's text before and after them."""
        if not self.templated:
            return ids
        b = len(ids)
        return torch.cat([self.before.expand(b, -1), ids.to(self.before.device), self.after.expand(b, -1)], 1)

    def labels(self, ids: torch.Tensor) -> tuple[slice, torch.Tensor]:
        """(the input positions whose next-token prediction is scored, their labels) for prompts [B, n]."""
        L, n = len(self.before), ids.shape[1]
        return slice(L + self.first - 1, L + n - 1), ids[:, self.first :]

    def value(
        self,
        hooks: dict,
        n: int,
        hidden: torch.Tensor | None = None,
        head=None,
        logits: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f, fp32, from a pass over the templated input: the captured hooks, and the final hidden states
        with the head that turns them into logits (computed only if the target reads them) or the logits.
        `rows`: which of the call's prompts this pass holds (for a target that reads each row its own way:
        scoring/lockstep.py); None: all."""
        L = len(self.before)
        if self.templated:  # the target sees the prompt positions only (position -1 = the last prompt token)
            hooks = {
                name: t[:, :, L : L + n, L : L + n] if name.endswith("hook_pattern") else t[:, L : L + n]
                for name, t in hooks.items()
            }
            logits = None if logits is None else logits[:, L : L + n]
        # a target at the last position gets logits there only ([B, 1, V], as packed children do)
        if hidden is not None:
            hidden = hidden[:, L + n - 1 : L + n] if self.target.position == -1 else hidden[:, L : L + n]
        if logits is not None:
            hooks = {**hooks, "logits": logits}
        return self.read(hooks, hidden, head, rows)

    def read(self, hooks: dict, hidden: torch.Tensor | None, head, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The target's value, fp32, from the captured hooks (with "logits", or the final hidden states and
        the head), checked to be one number per prompt."""
        f = self.target.value(TargetCache(hooks, hidden, head, self.target.spec, rows))
        batch = next((t.shape[0] for t in (*hooks.values(), hidden) if t is not None), None)
        if not isinstance(f, torch.Tensor) or (batch is not None and tuple(f.shape) != (batch,)):
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise TargetError(
                f"{self.target.spec}: its value has shape {shape} for {batch} prompts: "
                "return one number per prompt, a tensor of shape [batch]"
            )
        return f.float()


class TargetCache(dict):
    """What a target reads: the captured hook points, and "logits" (fp32), computed only if read.
    `name`: the target, for the error when it reads a hook point it did not declare. `rows`: which of
    the scorer call's prompts the batch holds (None: all of them, in order)."""

    def __init__(
        self, hooks: dict, hidden: torch.Tensor | None, head, name: str = "the target", rows: torch.Tensor | None = None
    ):
        super().__init__(hooks)
        self.hidden, self.head, self.name, self.rows = hidden, head, name, rows

    def take(self, index: torch.Tensor, name: str) -> TargetCache:
        """The same cache for some of its prompts (`index` into the batch), read by the target `name`."""
        hooks = {key: t[index] for key, t in self.items()}  # with "logits" where given or computed
        return TargetCache(hooks, None if self.hidden is None else self.hidden[index], self.head, name)

    def __contains__(self, key) -> bool:
        return key == "logits" or super().__contains__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __missing__(self, key: str) -> torch.Tensor:
        if key != "logits":
            declared = ", ".join(k for k in self if k != "logits") or "none"
            raise TargetError(
                f"{self.name} reads {key!r}, which it did not declare (declared: {declared}): "
                "add it to the target's hooks"
            )
        assert self.hidden is not None  # a pass without the final hidden states gives "logits" itself
        self["logits"] = self.head(self.hidden.contiguous()).float()
        return self["logits"]


def top_k_tokens(
    gradient: torch.Tensor, allowed: torch.Tensor, k: int, logprobs: torch.Tensor | None = None, beta: float = 0.0
) -> torch.Tensor:
    """The k allowed tokens per position whose swap most increases the objective (the largest gradient
    of L_λ with respect to the one-hot encoding): gradient [..., A] over the allowed tokens -> ids [..., k].

    With β > 0 and each position's next-token log-probabilities [..., A] (NaN where a position has no
    context), tokens are ranked by gradient + β · σ · log p(token | the prompt before it), σ the gradient's
    standard deviation over the allowed tokens at that position: β is in standard deviations per nat, so
    it means the same for every target's scale (docs/design.md#proposals-from-the-model)."""
    if beta and logprobs is not None:
        gradient = gradient + beta * gradient.std(-1, keepdim=True) * logprobs.to(gradient.device).nan_to_num(0.0)
    return allowed[gradient.topk(min(k, gradient.shape[-1]), dim=-1).indices]


def next_token_rows(logprobs: torch.Tensor, first: int) -> torch.Tensor:
    """Log p(v | the prompt before position j) for every position j of prompts [B, n], from the log-probs
    at the positions that predict tokens first .. n−1 ([B, n − first, A]): [B, n, A], NaN for j < first."""
    return torch.cat([logprobs.new_full((len(logprobs), first, logprobs.shape[-1]), torch.nan), logprobs], 1)


def embed_scale(model: Model, token: int) -> float:
    """The embedding module's output scale (Gemma 3: sqrt(d)), which d(output)/d(one-hot) includes,
    measured on `token` (one with a non-zero embedding)."""
    embed = model.adapter.embed
    with torch.inference_mode():
        probe = torch.tensor([[token]], device=model.device)
        out, w = embed(probe)[0, 0].float(), model.adapter.embed_weight[token].float()
    return float(out @ w / (w @ w))


def template_ids(tokenizer, template: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the fixed text before and after `{prompt}` in a template (empty without one).

    Trailing spaces before `{prompt}` are dropped: the space belongs to the prompt's first token."""
    if not template:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if template.count("{prompt}") != 1:
        raise ConfigError(
            f"a template needs {{prompt}} exactly once, e.g. 'Once upon a time {{prompt}}': got {template!r}"
        )
    before, after = template.split("{prompt}")
    encode = lambda text: torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)  # noqa: E731
    return encode(before.rstrip(" ")), encode(after)


def by_length(prompts) -> dict[int, list[int]]:
    """Indices of the prompts (id sequences) of each length, for passes over prompts of several lengths."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    return groups
