"""Compiled RMSNorms for passes without gradients.

Between its matmuls, a bf16 forward pass on a CPU spends much of its time in small elementwise ops,
and an RMSNorm is seven of them (to fp32, pow, mean, add, rsqrt, mul, mul), twice per block. Inside
`fused_norms(model)`, every RMSNorm of the model runs as one compiled kernel instead: one graph per
norm class, shared by all of its modules, with dynamic sizes, rounding where the plain forward
rounds (the same bf16 scores within an ulp); hooks on a norm still run around it.
Scoring the children of an iteration of SmolLM2-135M on a 2-core CPU: about 360 → 330 ms.

Whether it is used is checked once per model (`fuses`): the trunk with fused norms must match the plain
trunk on a probe, as a batch and as a single row. It is off where compiling does not work (no C++
compiler on CPU, no Triton on CUDA), with REVERIE_COMPILE=0, and in passes that take gradients.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import is_oom
from ..lm.model import Model

_compiled: dict[type, Callable] = {}     # norm class -> its compiled forward


def compiling() -> bool:
    """Whether reverie compiles anything (these norms, the cross-entropy's tiles): REVERIE_COMPILE=0 turns it off."""
    return os.environ.get("REVERIE_COMPILE", "1") != "0"


def norms(model: Model) -> list[nn.Module]:
    """The model's RMSNorm modules (by class name: `LlamaRMSNorm`, `Gemma3RMSNorm`, ...)."""
    return [m for m in model.hf.modules() if type(m).__name__.endswith("RMSNorm")]


def fuses(model: Model) -> bool:
    """Whether `fused_norms` compiles this model's norms: checked once, on a probe."""
    if model.fuses_norms is None:
        model.fuses_norms = compiling() and bool(norms(model)) and _probe(model)
    return model.fuses_norms


@contextlib.contextmanager
def fused_norms(model: Model, enabled: bool | None = None) -> Iterator[None]:
    """Run the model's RMSNorms compiled inside the block (see the module docstring); a no-op where
    `fuses(model)` is False or the block takes gradients. Enter it before any other context on the
    model: the first call probes the plain model."""
    if torch.is_grad_enabled() or not (fuses(model) if enabled is None else enabled):
        yield
        return
    patched = []
    try:
        for m in norms(model):
            cls = type(m)
            if cls not in _compiled:
                # rounding where the plain forward rounds (bf16 between the normalisation and the
                # weight): otherwise cross-entropies moved by up to 0.5% and runs took other paths
                _compiled[cls] = torch.compile(cls.forward, dynamic=True, options={"emulate_precision_casts": True})
            m.forward = functools.partial(_compiled[cls], m)
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def _probe(model: Model, n: int = 6) -> bool:
    vocab = model.adapter.embed.weight.shape[0]
    ids = (torch.arange(2 * n, device=model.device).view(2, n) * 7 + 11) % vocab
    try:
        with torch.inference_mode():
            plain = [model.trunk(ids).float(), model.trunk(ids[:1]).float()]
            with fused_norms(model, enabled=True):
                got = [model.trunk(ids).float(), model.trunk(ids[:1]).float()]
    except Exception as e:      # no compiler, an op the compiler does not take
        if is_oom(e):
            raise
        return False
    error = max(float(((g - p).norm(dim=-1) / p.norm(dim=-1).clamp_min(1e-6)).max()) for g, p in zip(got, plain))
    return error < 0.05
