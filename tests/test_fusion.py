"""Compiled RMSNorms in passes without gradients: same hidden states as the plain model, hooks still run,
nothing left patched, off with REVERIE_COMPILE=0 and under autograd."""

import os
import shutil

import pytest
import torch

from conftest import build_tiny
from reverie.fast import fusion
from reverie.fast.capabilities import FastPath

RMS_FAMILIES = ["llama", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "mistral"]


def ids(n: int = 7) -> torch.Tensor:
    return torch.randint(1000, (3, n), generator=torch.Generator().manual_seed(0))


def compiles(model) -> None:
    """Skip without a C++ compiler (torch.compile's CPU backend needs one); with one, the probe must pass."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on this machine: torch.compile cannot build kernels")
    assert FastPath.of(model).fuses, "a C++ compiler is installed but the fused norms failed their probe"


@pytest.mark.parametrize("family", RMS_FAMILIES)
def test_fused_norms_give_the_plain_hidden_states(family, tokenizer):
    model = build_tiny(family, tokenizer)
    assert fusion.norms(model)
    with torch.no_grad():
        for m in fusion.norms(model):  # each norm its own weights (they start all ones or all zeros)
            m.weight.normal_(1.0, 0.5)
    compiles(model)
    with torch.inference_mode():
        plain = model.trunk(ids())
        with fusion.fused_norms(model):
            assert all("forward" in vars(m) for m in fusion.norms(model))
            fused = [model.trunk(ids()), model.trunk(ids(11)[:1])]  # batch and single row, other sizes
        assert torch.allclose(fused[0], plain, atol=1e-4, rtol=1e-4)
        assert torch.allclose(fused[1], model.trunk(ids(11)[:1]), atol=1e-4, rtol=1e-4)
    assert not any("forward" in vars(m) for m in fusion.norms(model))


def test_models_without_rmsnorm_are_left_alone(tokenizer):
    model = build_tiny("gpt2", tokenizer)
    assert not fusion.norms(model) and not FastPath.of(model).fuses


def test_hooks_on_a_norm_still_run_and_an_error_unpatches(tiny_llama):
    compiles(tiny_llama)
    seen = []
    norm = fusion.norms(tiny_llama)[0]
    handle = norm.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        with torch.inference_mode(), pytest.raises(KeyError):
            with fusion.fused_norms(tiny_llama):
                tiny_llama.trunk(ids())
                raise KeyError("boom")
    finally:
        handle.remove()
    assert seen == [torch.Size([3, 7, tiny_llama.hf.config.hidden_size])]
    assert not any("forward" in vars(m) for m in fusion.norms(tiny_llama))


def test_off_under_autograd_and_with_reverie_compile_0(tokenizer, monkeypatch):
    model = build_tiny("llama", tokenizer)
    compiles(model)
    with FastPath.of(model).run():  # gradients on: the plain norms, whose backward autograd knows
        assert not any("forward" in vars(m) for m in fusion.norms(model))
    monkeypatch.setenv("REVERIE_COMPILE", "0")
    model = build_tiny("llama", tokenizer)
    assert not FastPath.of(model).fuses
    with torch.inference_mode(), FastPath.of(model).run():
        assert not any("forward" in vars(m) for m in fusion.norms(model))


def test_fused_norms_round_like_the_plain_norms_in_bf16(tokenizer):
    """In bf16 the plain norm rounds the normalised states before the weight; the fused kernel rounds at
    the same place, so scores do not drift (unrounded, a run's cross-entropies moved by up to 0.5%)."""
    model = build_tiny("llama", tokenizer)
    model.hf.to(torch.bfloat16)
    with torch.no_grad():
        for m in fusion.norms(model):
            m.weight.normal_(1.0, 0.5)
    compiles(model)
    x = torch.randn(2, 9, model.hf.config.hidden_size, generator=torch.Generator().manual_seed(1)).bfloat16()
    norm = fusion.norms(model)[1]
    with torch.inference_mode():
        plain = norm(x)
        with fusion.fused_norms(model):
            fused = norm(x)
    assert (fused != plain).float().mean() < 0.01
