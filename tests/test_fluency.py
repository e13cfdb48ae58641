"""Fluency beyond the target model: a weighted set of models sharing the tokenizer, and a repetition penalty."""

import copy

import pytest
import torch
import torch.nn.functional as F

import reverie
from conftest import build_tiny, gradient
from reverie import ConfigError, EPOConfig, make_scorer
from reverie.search.epo import EPO


@pytest.fixture(scope="module")
def other(tokenizer):
    model = build_tiny("llama", tokenizer, seed=1)
    model.spec = "tiny-llama-other"
    return model


def plain_ce(model, ids):
    logits = model.hf(ids).logits.float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(-1)


def test_cross_entropy_is_the_weighted_mix(tiny_llama, other):
    config = EPOConfig(length=6, fluency=(("self", 1.0), ("tiny-llama-other", 3.0)))
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", config, fluency_models={"tiny-llama-other": other})
    ids = scorer.vocab.random_prompts(5, 6, torch.Generator().manual_seed(0))
    f, ce = scorer.score(ids)
    with torch.no_grad():
        expected = 0.25 * plain_ce(tiny_llama, ids) + 0.75 * plain_ce(other, ids)
    assert torch.allclose(ce, expected, atol=1e-5)
    only = make_scorer(
        tiny_llama,
        "neuron:L1.N5",
        EPOConfig(length=6, fluency=(("tiny-llama-other", 1.0),)),
        fluency_models={"tiny-llama-other": other},
    )
    assert torch.allclose(only.score(ids)[1], plain_ce(other, ids).detach(), atol=1e-5)
    assert torch.allclose(only.score(ids)[0], f)  # the feature is still the target model's


def test_gradients_equal_one_hot_gradients_of_the_mix(tiny_llama, other):
    config = EPOConfig(length=6, fluency=(("self", 1.0), ("tiny-llama-other", 1.0)))
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", config, fluency_models={"tiny-llama-other": other})
    target = scorer.target
    ids = scorer.vocab.random_prompts(3, 6, torch.Generator().manual_seed(1))
    lam = torch.tensor([0.0, 0.5, 3.0])
    one_hot = F.one_hot(ids, tiny_llama.adapter.embed.weight.shape[0]).float().requires_grad_(True)

    def ce_of(model, cache=None):
        logits = model.hf(inputs_embeds=one_hot @ model.adapter.embed.weight).logits.float()
        return -(logits[:, :-1].log_softmax(-1) * one_hot[:, 1:]).sum(-1).mean(-1)

    with tiny_llama.capture(list(target.hooks)) as cache:
        ce_self = ce_of(tiny_llama)
    f = cache[target.hooks[0]][:, -1, 5].float()
    (f - lam * (0.5 * ce_self + 0.5 * ce_of(other))).sum().backward()
    expected = one_hot.grad[..., scorer.vocab.allowed]
    assert torch.allclose(gradient(scorer, ids, lam), expected, atol=1e-4, rtol=1e-4)


def test_a_fluency_model_must_share_the_tokenizer(tiny_llama, other):
    stranger = copy.copy(other)
    stranger.tokenizer = copy.deepcopy(other.tokenizer)
    stranger.tokenizer.add_tokens(["<zzz-not-shared>"])
    with pytest.raises(ConfigError, match="does not share the tokenizer"):
        make_scorer(tiny_llama, "neuron:L1.N5", EPOConfig(fluency=(("x", 1.0),)), fluency_models={"x": stranger})
    with pytest.raises(ConfigError, match="fluency weights"):
        EPOConfig(fluency=(("self", 0.0),))


def test_dream_with_two_fluency_models_resumes(tiny_llama, other, tmp_path):
    config = EPOConfig(
        population=4, children=8, top_k=32, length=6, iters=4, fluency=(("self", 1.0), ("tiny-llama-other", 1.0))
    )
    models = {"tiny-llama-other": other}
    whole = reverie.dream(tiny_llama, "neuron:L1.N5", config, fluency_models=models).history
    reverie.dream(
        tiny_llama,
        "neuron:L1.N5",
        config,
        out=tmp_path / "r",
        fluency_models=models,
        callback=lambda s: s.iteration < 2,
        checkpoint_every=1,
    )
    resumed = reverie.resume(tmp_path / "r", model=tiny_llama, fluency_models=models).history
    assert resumed["cross_entropy"].tolist() == pytest.approx(whole["cross_entropy"].tolist(), abs=1e-6, nan_ok=True)


def repeated(pop):
    return (pop[:, :, None] == pop[:, None, :]).triu(1).any(1).float().mean(1)


@pytest.mark.parametrize("rho", [0.0, 100.0])
def test_repetition_penalty_keeps_repeats_out(tiny_llama, rho):
    """Every proposed child repeats a token of its parent; only the penalty keeps them all out."""
    config = EPOConfig.paper(
        population=4,
        children=16,
        top_k=4,
        length=6,
        iters=5,
        repetition_penalty=rho,
        restart_every=0,
        check_retokenization=False,
    )
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", config)
    epo = EPO(scorer, config)
    assert repeated(epo.state.population).max() == 0
    scorer.top_k = lambda prompts, penalties, k, beta=0.0: [
        p[torch.arange(6).roll(-1)][:, None].expand(-1, 4) for p in prompts
    ]  # next position's token
    epo.run()
    children = epo.history.frame(scorer.vocab.decode).query("iteration > 0")
    assert all(len(set(map(int, i))) < 6 for i in children["ids"])  # every child has a repeat
    assert (repeated(epo.state.population).max() == 0) == (rho > 0)
