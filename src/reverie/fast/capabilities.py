"""Which speed paths a model takes, probed once per model, and the one context that applies them to a pass.

Every speed path of `scoring.packed` changes how a pass runs, never what it computes: each is used on
a model only after a probe shows that the model, run that way, gives the plain forward's hidden states
(docs/performance.md). `FastPath.of(model)` holds the results for one model:

    packs   its attention runs on a packed layout (children over their parents' keys and values)
    drops   its blocks above the deepest one a target reads run without the last position
    fuses   its RMSNorms run compiled in passes without gradients

and `FastPath.run(...)` applies the temporary patches of one pass (attention layout, the shortened row,
fused norms) and removes them on leaving, also on an error.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from functools import cached_property

import torch

from ..errors import is_oom
from ..lm.model import Model
from .attention import Packed, Rows, attention, last_dropped_above
from .fusion import compiling, fused_norms, norms


class FastPath:
    """The speed paths one model takes (each probed on first use) and the context of a pass."""

    _models: weakref.WeakKeyDictionary[Model, FastPath] = weakref.WeakKeyDictionary()

    def __init__(self, model: Model):
        self._model = weakref.ref(model)  # the FastPath lives as long as its model, not longer

    @classmethod
    def of(cls, model: Model) -> FastPath:
        """The one FastPath of `model`."""
        if model not in cls._models:
            cls._models[model] = cls(model)
        return cls._models[model]

    @property
    def model(self) -> Model:
        model = self._model()
        assert model is not None  # a FastPath is reached through its model (FastPath.of), which is alive
        return model

    @cached_property
    def packs(self) -> bool:
        """Whether the model's attention runs packed: on a probe of three children of two parents, the
        packed pass equals the plain forward pass of the same children."""
        return probe_packed(self.model)

    @cached_property
    def drops(self) -> bool:
        """Whether the model's blocks run on a shortened row (`attention.last_dropped_above`): the same
        probe with the last position dropped above the first block."""
        return self.packs and self.model.n_layers > 1 and probe_packed(self.model, block=0)

    @cached_property
    def fuses(self) -> bool:
        """Whether the model's RMSNorms run compiled: on a probe, the trunk with fused norms equals the
        plain trunk, as a batch and as a single row. Off with REVERIE_COMPILE=0."""
        return compiling() and bool(norms(self.model)) and probe_fused(self.model)

    @contextlib.contextmanager
    def run(
        self, layout: Packed | Rows | None = None, drop_above: int | None = None, horizon: int | None = None
    ) -> Iterator[Packed | Rows | None]:
        """Within the block, passes of the model run on `layout` (if given), with the last position
        dropped above block `drop_above` (if given, for a packed layout; the context then yields the
        shortened layout of the blocks above it; with a `horizon`, also each child's tokens from its
        mutated position + horizon on: `attention.last_dropped_above`), and with fused norms where the
        model takes them and the pass takes no gradients."""
        with contextlib.ExitStack() as stack:
            if not torch.is_grad_enabled() and self.fuses:  # probe first: the probe runs the plain model
                stack.enter_context(fused_norms(self.model))
            if layout is not None:
                stack.enter_context(attention(self.model, layout))
            if drop_above is not None:
                assert isinstance(layout, Packed)  # a position is dropped from packed children only
                layout = stack.enter_context(last_dropped_above(self.model, layout, drop_above, horizon))
            yield layout


def probe_packed(model: Model, n: int = 6, block: int | None = None) -> bool:
    """Whether three children of two parents, packed (and, with `block`, with the last position dropped
    above it), get the hidden states of their plain forward pass."""
    device = model.device
    vocab = model.adapter.embed_weight.shape[0]
    parents = (torch.arange(2 * n, device=device).view(2, n) * 7 + 11) % vocab
    parent, pos = torch.tensor([0, 1, 0], device=device), torch.tensor([0, 2, n - 1], device=device)
    children = parents[parent].clone()
    children[torch.arange(3), pos] = (parents[parent, pos] + 1) % vocab
    try:
        with torch.inference_mode():
            layout = Packed({}, parent, pos, n, lead=2)
            with attention(model, layout), last_dropped_above(model, layout, block) as out:
                got = model.trunk(layout.gather(parents, children), position_ids=layout.position[None])[0].float()
            plain = model.trunk(torch.cat([parents, children]))[out.entry, out.position].float()
    except Exception as e:  # an architecture that does not take the packed layout (its own attention, shared caches...)
        if is_oom(e):
            raise
        return False
    return got.shape == plain.shape and close(got, plain)


def probe_fused(model: Model, n: int = 6) -> bool:
    """Whether the trunk with fused norms gives the plain trunk's hidden states, as a batch and as one row."""
    vocab = model.adapter.embed_weight.shape[0]
    ids = (torch.arange(2 * n, device=model.device).view(2, n) * 7 + 11) % vocab
    try:
        with torch.inference_mode():
            plain = [model.trunk(ids).float(), model.trunk(ids[:1]).float()]
            with fused_norms(model):
                got = [model.trunk(ids).float(), model.trunk(ids[:1]).float()]
    except Exception as e:  # no compiler, an op the compiler does not take
        if is_oom(e):
            raise
        return False
    return all(close(g, p) for g, p in zip(got, plain))


def close(got: torch.Tensor, plain: torch.Tensor, tolerance: float = 0.05) -> bool:
    """Every hidden state within `tolerance` of the plain one, relative to its norm."""
    error = (got - plain).norm(dim=-1) / plain.norm(dim=-1).clamp_min(1e-6)
    return bool((error < tolerance).all())
