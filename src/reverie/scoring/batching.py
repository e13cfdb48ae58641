"""How many prompts go through the model at once, and backing off when that runs out of memory."""

from __future__ import annotations

import torch

from ..errors import is_oom
from ..lm import memory
from ..lm.model import Model

CPU_TOKENS_PER_PASS = 2048  # larger CPU batches run slower per token (docs/performance.md#batch-size)


def auto_batch_size(model: Model, length: int = 12, limit: int = 512) -> int:
    """Prompts per forward pass from free memory: logits dominate (model dtype, an fp32 copy and fp32
    log-probs per position), with activations on top; use at most half of what is free. On a CPU, also
    at most CPU_TOKENS_PER_PASS tokens per pass."""
    vocab = model.adapter.unembed_weight.shape[0]
    per_prompt = length * (vocab * (model.dtype.itemsize + 8) + 16 * model.adapter.d_mlp * model.dtype.itemsize)
    if model.device.type == "cpu":
        limit = min(limit, max(1, CPU_TOKENS_PER_PASS // length))
    return max(1, min(limit, memory.available(model.device) // 2 // per_prompt))


def even_split(t: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """As few chunks of at most `size` rows as possible, of equal sizes (129 rows at 128: 65 + 64, not
    128 + 1: every pass streams all the weights, so a nearly empty pass costs nearly a full one)."""
    return t.tensor_split(-(-len(t) // size)) if len(t) else (t,)


class BackingOff:
    """A scorer that, when a call runs out of memory, halves the wrapped scorer's batch size and calls
    again (down to one prompt per pass). `scorer` is the wrapped one; its model, target, vocabulary,
    objective and batch size are this one's."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.model, self.target, self.vocab, self.objective = (
            scorer.model,
            scorer.target,
            scorer.vocab,
            scorer.objective,
        )

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.scorer.batch_size = value

    @property
    def approximates(self) -> bool:
        return self.scorer.approximates

    def score(self, ids):
        return self.retry(self.scorer.score, ids)

    def score_children(self, parents, children, parent, pos):
        return self.retry(self.scorer.score_children, parents, children, parent, pos)

    def gradient_parts(self, ids):
        return self.retry(self.scorer.gradient_parts, ids)

    def top_k(self, prompts, penalties, k, beta=0.0):
        return self.retry(self.scorer.top_k, prompts, penalties, k, beta)

    def next_token_logprobs(self, prompts):
        return self.retry(self.scorer.next_token_logprobs, prompts)

    def logprobs_after(self, prompts):
        return self.retry(self.scorer.logprobs_after, prompts)

    def continuations(self, prompts, positions):
        return self.retry(self.scorer.continuations, prompts, positions)

    def retry(self, fn, *args):
        while True:
            try:
                return fn(*args)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e) or self.scorer.batch_size == 1:
                    raise
                self.scorer.batch_size //= 2
                if self.model.device.type == "cuda":
                    torch.cuda.empty_cache()
