"""Scoring and token gradients agree with the paper's one-hot formulation."""

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny

from reverie import EPOConfig
from reverie.dream import _setup


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text", "gpt_neox"])
def test_token_gradients_equal_one_hot_gradients(family, tokenizer):
    """d(f − λ·CE)/d(one-hot), where CE = −Σ log_softmax(logits[:-1]) · one_hot[1:] / (n−1) as in the paper."""
    model = build_tiny(family, tokenizer)
    target, scorer = _setup(model, "neuron:L1.N5", EPOConfig(length=6))
    ids = scorer.vocab.random_prompts(3, 6, torch.Generator().manual_seed(0))
    lam = torch.tensor([0.0, 0.5, 3.0])
    E = model.adapter.embed.weight
    one_hot = F.one_hot(ids, E.shape[0]).float().requires_grad_(True)
    embeds = (one_hot @ E) * getattr(model.adapter.embed, "embed_scale", 1.0)   # Gemma 3 scales its embeddings
    with model.capture(list(target.hooks)) as cache:
        logits = model.hf(inputs_embeds=embeds).logits.float()
    cache["logits"] = logits
    ce = -(logits[:, :-1].log_softmax(-1) * one_hot[:, 1:]).sum(-1).mean(-1)
    (target.value(cache) - lam * ce).sum().backward()
    expected = one_hot.grad[..., scorer.vocab.allowed]
    got = scorer.token_gradients(ids, lam)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_score_matches_plain_cross_entropy(tiny_llama):
    target, scorer = _setup(tiny_llama, "neuron:L1.N5", EPOConfig(length=6))
    ids = scorer.vocab.random_prompts(5, 6, torch.Generator().manual_seed(1))
    f, ce = scorer.score(ids)
    logits = tiny_llama.hf(ids).logits.float()
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(-1)
    assert torch.allclose(ce, expected, atol=1e-5)


FAMILIES = ["llama", "gpt2", "gpt_neox", "phi", "phi3", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "qwen2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["neuron:L1.N5", "attention:L1.H1.K2", "direction:L1", 'logit:" the"'])
def test_prefix_reuse_matches_plain_scoring(family, spec, tokenizer):
    """Children scored on top of their parent's cached prefix get the same activation and cross-entropy."""
    model = build_tiny(family, tokenizer)
    target, scorer = _setup(model, spec, EPOConfig(length=7, batch_size=5))
    gen = torch.Generator().manual_seed(0)
    parents = scorer.vocab.random_prompts(3, 7, gen)
    parent = torch.randint(3, (24,), generator=gen)
    pos = torch.randint(7, (24,), generator=gen)
    children = parents[parent].clone()
    children[torch.arange(24), pos] = scorer.vocab.allowed[torch.randint(len(scorer.vocab.allowed), (24,), generator=gen)]
    f, ce = scorer.score_children(parents, children, parent, pos)
    f0, ce0 = scorer.score(children)
    assert torch.allclose(f, f0, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ce, ce0, atol=1e-4, rtol=1e-4)
