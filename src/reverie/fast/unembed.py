"""Log-probabilities of label tokens from final hidden states, without fp32 logits over the vocabulary.

Scoring needs log softmax(head(h))[label] at every position that predicts a prompt token: one number
per row, out of V logits. The unembedding runs one tile of the vocabulary at a time (`Model.head_tiles`)
over a block of rows, and each tile gives its log-sum-exp and, where the label falls in it, the label's
logit, in one fused pass over the tile while it is still in the CPU's cache; the tiles' log-sum-exps are
then combined (docs/performance.md#tiled-cross-entropy).
"""

from __future__ import annotations

import torch

from ..errors import is_oom
from ..lm.model import Model
from .fusion import compiling

VOCAB_TILE = 4096  # vocabulary columns unembedded at a time
TILE_BYTES = 16 << 20  # bytes of logits per tile: at most this many rows × VOCAB_TILE at once


def head_logprobs(model: Model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[..., label] in fp32: hidden [..., d], labels [...] → [...]; or several labels
    per row, labels [..., K] → [..., K] (a label outside the vocabulary, e.g. -1 as padding, gives −∞).
    Each row's log-sum-exp is computed once, whatever the number of its labels."""
    several = labels.dim() == hidden.dim()
    flat = hidden.reshape(-1, hidden.shape[-1])  # contiguous rows (docs/performance.md#contiguous-rows)
    flat_labels = labels.reshape(len(flat), -1) if several else labels.reshape(-1)
    rows = max(1, TILE_BYTES // (VOCAB_TILE * model.dtype.itemsize))
    out = []
    for h, y in zip(flat.split(rows), flat_labels.split(rows)):
        lse, label = zip(*(tile_logsumexp(logits, y - start) for start, logits in model.head_tiles(h, VOCAB_TILE)))
        total = torch.stack(lse, -1).logsumexp(-1)
        out.append(torch.stack(label, -1).amax(-1) - (total[:, None] if several else total))
    return torch.cat(out).view(labels.shape)


def plain_tile_logsumexp(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp of each row of a tile of logits [R, T] of any dtype, each row's label logit or −∞
    where the label (relative to the tile's first column) is outside the tile), both fp32; labels [R], or
    [R, K] for K labels per row."""
    x = logits.float()
    inside = (labels >= 0) & (labels < x.shape[-1])
    index = labels.clamp(0, x.shape[-1] - 1)
    label = x.gather(-1, index[:, None] if index.dim() == 1 else index)
    return x.logsumexp(-1), label.view(labels.shape).masked_fill(~inside, -torch.inf)


class Fused:
    """A function compiled on first use (`torch.compile`, one fused pass where plain torch makes
    several over an fp32 copy of the tile), or plain torch, with the same result within fp32 rounding:
    where compiling fails (no C++ compiler on CPU, no Triton on CUDA) it falls back for good, and with
    REVERIE_COMPILE=0 it never compiles."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None  # the compiled function once tried; False where compiling failed or is off

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = compiling() and torch.compile(self.fn, dynamic=True)
        if self.compiled:
            try:
                return self.compiled(*args)
            except Exception as e:  # no compiler, an unsupported device: plain torch from now on
                if is_oom(e):
                    raise
                self.compiled = False
        return self.fn(*args)


tile_logsumexp = Fused(plain_tile_logsumexp)
