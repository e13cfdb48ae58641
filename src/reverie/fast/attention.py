"""Children packed onto their parents' keys and values: one forward pass over only their own tokens.

A child equals its parent before its mutated position p, so its keys and values there are the
parent's. Only the child's own tokens, p..n-1, need a forward pass: the parents' tokens and all
children's own tokens are concatenated into one row of M·n + Σ (n - p) tokens (about half of all
children × n), with each token's position in its prompt as its position id. Every linear layer runs
on the packed row with no padding. Attention, which costs next to nothing at prompt lengths, reads
each token's keys and values from its parent before p and from the row from p on: in C where the
kernel is available (`native`), else in torch, which takes each layer's parent keys and values from
the head of the row, unpacks each child to [n] positions on top of its parent's, and packs the
result again. Above the deepest block the target reads, the last prompt position feeds nothing, and
the blocks there run without it (`last_dropped_above`).

This runs through transformers' attention interface, selected for the duration of one pass
(`attention(model, layout)`), so it works for every architecture whose attention modules use it;
whether a model does is checked once on a probe against plain scoring (`capabilities.FastPath`). The
same interface runs gradient passes over whole prompts with attention in fp32 (`Rows`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ..lm.model import Model
from . import native

NAME = "reverie"


class Packed:
    """Children (child i = parents[parent[i]] before pos[i]) laid out as one packed row.

    With `lead` > 0, the row starts with the `lead` parents themselves, in full: each layer then
    stores their keys and values into `kv` (layer index -> [M, kv heads, n, d]) before the children
    read them, so the parents need no pass of their own, and later rows reuse `kv`."""

    def __init__(
        self,
        kv: dict,
        parent: torch.Tensor,
        pos: torch.Tensor,
        n: int,
        lead: int = 0,
        weights: bool = False,
        stop: torch.Tensor | None = None,
    ):
        self.kv, self.n, self.lead = kv, n, lead
        self.above: tuple[int, Packed] | None = None  # (block, layout of the blocks after it)
        self.weights = weights  # also return attention probabilities [1, heads, T, n]
        pos = torch.cat([pos.new_zeros(lead), pos])  # entries: the leading parents, then the children
        self.parent = torch.cat([parent.new_zeros(lead), parent])
        # each child runs its positions pos .. stop - 1 (all n by default); the leading parents run all n
        self.stop = torch.full_like(pos, n) if stop is None else torch.cat([pos.new_full((lead,), n), stop])
        own = self.stop - pos  # tokens each entry runs itself
        self.entry = torch.repeat_interleave(torch.arange(len(pos), device=pos.device), own)  # [T]
        start = torch.cumsum(own, 0) - own
        self.position = pos[self.entry] + torch.arange(len(self.entry), device=pos.device) - start[self.entry]
        self.entry_start, self.entry_pos = start, pos  # each entry's first token in the row, and position

    @property
    def start(self) -> torch.Tensor:
        """Each child's first token in the row."""
        return self.entry_start[self.lead :]

    @property
    def pos(self) -> torch.Tensor:
        """Each child's mutated position."""
        return self.entry_pos[self.lead :]

    def at(self, position: int) -> torch.Tensor:
        """Where each child's token at `position` (at or after its mutated position) lies in the row."""
        return self.start + position - self.pos

    def shortened(self, horizon: int | None = None) -> Packed:
        """The same entries without their tokens at the last position, n − 1 (`last_dropped_above`), and,
        with a `horizon`, without each child's tokens from its mutated position + horizon on."""
        stop = self.stop[self.lead :].clamp_max(self.n - 1)
        if horizon is not None:
            stop = stop.minimum(self.pos + horizon)
        return Packed(self.kv, self.parent[self.lead :], self.pos, self.n - 1, self.lead, self.weights, stop)

    def gather(self, parents: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
        """The packed row of token ids: [1, T]."""
        rows = torch.cat([parents[: self.lead], children])
        return rows[self.entry, self.position][None]


class Rows:
    """Whole prompts, one per batch row, with attention computed in fp32: for gradient passes (on a
    CPU, faster than bf16 flash attention at prompt lengths: docs/performance.md#fp32-attention)."""

    def __init__(self, weights: bool = False):
        self.weights = weights  # also return attention probabilities


LAYOUT = "reverie_layout"  # the attribute of an attention module that holds its layout during a pass


@contextlib.contextmanager
def attention(model: Model, layout: Packed | Rows):
    """Within the block, the model's attention runs on `layout`: packed children, or whole rows in fp32.
    Each attention module holds the layout for the pass (as the attribute LAYOUT), and the model's
    configs name this module's attention function; both are put back on leaving."""
    configs: dict[int, Any] = {  # transformers configs, whose attention implementation is a private attribute
        id(c): c
        for c in [
            model.hf.config,
            getattr(model.hf.base_model, "config", None),
            *(getattr(a, "config", None) for a in model.adapter.attn),
        ]
        if c is not None
    }
    before = {k: c._attn_implementation_internal for k, c in configs.items()}
    for a in model.adapter.attn:
        setattr(a, LAYOUT, layout)
    for c in configs.values():
        c._attn_implementation_internal = NAME
    try:
        yield
    finally:
        for a in model.adapter.attn:
            delattr(a, LAYOUT)
        for k, c in configs.items():
            c._attn_implementation_internal = before[k]


def packed_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, sliding_window=None, **kwargs
):
    """Packed [1, heads, T, d] queries, keys and values -> ([1, T, heads, d] output, [1, heads, T, n]
    probabilities if the layout asks for them). Each child's keys are its parent's before its mutated
    position and its own from there on; causal, within `sliding_window` and soft-capped if given.
    Whole rows ([B, heads, n, d]) are plain causal attention in fp32."""
    layout = getattr(module, LAYOUT, None)
    if layout is None or kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise NotImplementedError("packed attention outside a packed pass, or with sinks or position bias")
    scaling = scaling or 1 / math.sqrt(query.shape[-1])
    if isinstance(layout, Packed) and layout.above is not None and module.layer_idx > layout.above[0]:
        layout = layout.above[1]
    if isinstance(layout, Rows):
        out, probs = _causal(
            query.float(), key.float(), value.float(), scaling, softcap, sliding_window, layout.weights
        )
        return out.to(query.dtype).transpose(1, 2).contiguous(), probs
    if layout.lead:  # the parents lead the row: keep their keys and values
        m, n = layout.lead, layout.n
        layout.kv[module.layer_idx] = (
            key[0, :, : m * n].unflatten(1, (m, n)).transpose(0, 1).float().contiguous(),
            value[0, :, : m * n].unflatten(1, (m, n)).transpose(0, 1).float().contiguous(),
        )
    k_parent, v_parent = layout.kv[module.layer_idx]
    if not layout.weights:  # the C kernel where it is available (`native`)
        out = native.packed_attention(
            query,
            key,
            value,
            k_parent,
            v_parent,
            layout.entry,
            layout.position,
            layout.entry_start,
            layout.entry_pos,
            layout.parent,
            scaling,
            softcap,
            sliding_window,
        )
        if out is not None:
            return out, None
    # unpacked in fp32: the upcast rides on copies made anyway, and CPU flash attention runs faster in
    # fp32 than in bf16 at these shapes (docs/performance.md#fp32-attention)
    c, at = layout.entry, layout.position
    keys, values = k_parent[layout.parent], v_parent[layout.parent]  # [C, kv heads, n, d]
    keys[c, :, at], values[c, :, at] = key[0].transpose(0, 1).float(), value[0].transpose(0, 1).float()
    queries = query.new_zeros(len(layout.parent), query.shape[1], layout.n, query.shape[3], dtype=torch.float32)
    queries[c, :, at] = query[0].transpose(0, 1).float()
    out, probs = _causal(queries, keys, values, scaling, softcap, sliding_window, layout.weights)
    return out[c, :, at].to(query.dtype)[None], None if probs is None else probs[c, :, at].transpose(0, 1)[None]


@contextlib.contextmanager
def last_dropped_above(model: Model, layout: Packed, block: int | None, horizon: int | None = None):
    """Within the block, the model's blocks after `block` run without each entry's token at the last
    position: the layout's `shortened()` row, which the context yields (with `block` None, every block
    runs every token and the context yields `layout` itself). Where every read at the last
    position is at or below `block` (a neuron in layer 2 of 30), the last position's states above it
    feed nothing: causal attention never looks forward, and the cross-entropy reads the positions
    before it. Each such block's per-token inputs (hidden states, position ids and embeddings) are cut
    to the shortened row; whether a model takes this is checked once on a probe (`capabilities.FastPath`).
    With a `horizon`, the blocks after `block` also leave out each child's tokens from its mutated
    position + horizon on: what the cross-entropy would read there is then not computed (the
    approximation of `PackedScorer`'s horizon; exact without one)."""
    if block is None:
        yield layout
        return
    short = layout.shortened(horizon)
    keep = (layout.position < short.stop[layout.entry]).nonzero()[:, 0]
    tokens = len(layout.position)

    def cut(module, args, kwargs):
        return _take(args, keep, tokens), _take(kwargs, keep, tokens)

    handles = [b.register_forward_pre_hook(cut, with_kwargs=True) for b in model.adapter.blocks[block + 1 :]]
    layout.above = (block, short)
    try:
        yield short
    finally:
        layout.above = None
        for h in handles:
            h.remove()


def _take(x, keep: torch.Tensor, tokens: int):
    """`x` with only the `keep` tokens, where it has one entry per token of the packed row (along
    dimension 1, else 0); tuples, lists and dicts are cut entry by entry; anything else is left as is."""
    if isinstance(x, torch.Tensor):
        if x.dim() >= 2 and x.shape[1] == tokens:
            return x[:, keep]
        return x[keep] if x.dim() >= 1 and x.shape[0] == tokens else x
    if isinstance(x, (tuple, list)):
        return type(x)(_take(v, keep, tokens) for v in x)
    if isinstance(x, dict):
        return {k: _take(v, keep, tokens) for k, v in x.items()}
    return x


def _causal(q, k, v, scaling, softcap, sliding_window, weights: bool):
    """Causal attention of [b, heads, n, d] tensors (grouped-query keys and values allowed): output
    [b, heads, n, d] and, with `weights`, the probabilities."""
    n = q.shape[2]
    i = torch.arange(n, device=q.device)
    windowed = bool(sliding_window) and sliding_window < n
    mask = (i[None] <= i[:, None]) & (i[:, None] - i[None] < (sliding_window if windowed else n))
    groups = q.shape[1] // k.shape[1]
    if not (weights or softcap is not None):  # a causal flag is much faster than a mask for CPU SDPA
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask if windowed else None, is_causal=not windowed, scale=scaling, enable_gqa=groups > 1
        )
        return out, None
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) * scaling
    if softcap is not None:  # Gemma 2's soft-capped attention logits
        scores = torch.tanh(scores / softcap) * softcap
    probs = scores.float().masked_fill(~mask, -torch.inf).softmax(-1).to(v.dtype)
    return probs @ v, probs if weights else None


def _no_mask(*args, **kwargs):
    return None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, _no_mask)
