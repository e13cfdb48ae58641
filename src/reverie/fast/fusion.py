"""Compiled RMSNorms for passes without gradients.

Between its matmuls, a bf16 forward pass on a CPU spends much of its time in small elementwise ops,
and an RMSNorm is seven of them (to fp32, pow, mean, add, rsqrt, mul, mul), twice per block. Inside
`fused_norms(model)`, every RMSNorm of the model runs as one compiled kernel instead: one graph per
norm class, shared by all of its modules, with dynamic sizes, rounding where the plain forward
rounds (the same bf16 scores within an ulp); hooks on a norm still run around it
(docs/performance.md#fused-rmsnorms).

Whether it is used is checked once per model (`capabilities.FastPath`): the trunk with fused norms must
match the plain trunk on a probe, as a batch and as a single row. It is off where compiling does not
work (no C++ compiler on CPU, no Triton on CUDA), with REVERIE_COMPILE=0, and in passes that take
gradients.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..lm.model import Model


def compiling() -> bool:
    """Whether reverie compiles anything (these norms, the cross-entropy's tiles): REVERIE_COMPILE=0 turns it off."""
    return os.environ.get("REVERIE_COMPILE", "1") != "0"


def norms(model: Model) -> list[nn.Module]:
    """The model's RMSNorm modules (by class name: `LlamaRMSNorm`, `Gemma3RMSNorm`, ...)."""
    return [m for m in model.hf.modules() if type(m).__name__.endswith("RMSNorm")]


@contextlib.contextmanager
def fused_norms(model: Model) -> Iterator[None]:
    """Run the model's RMSNorms compiled inside the block (see the module docstring); a no-op when the
    block takes gradients. `capabilities.FastPath` decides whether a model uses it."""
    if torch.is_grad_enabled():
        yield
        return
    patched = []
    try:
        for m in norms(model):
            # a class is hashable: mypy checks type[Module] against Hashable through Module's unbound __hash__
            m.forward = functools.partial(compiled_forward(type(m)), m)  # type: ignore[arg-type]
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


@functools.cache
def compiled_forward(cls: type[nn.Module]) -> Callable:
    """The compiled forward of a norm class, shared by all of its modules. It rounds where the plain
    forward rounds (bf16 between the normalisation and the weight): otherwise cross-entropies moved by
    up to 0.5% and runs took other paths."""
    return torch.compile(cls.forward, dynamic=True, options={"emulate_precision_casts": True})
