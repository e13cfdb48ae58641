"""Scoring and token gradients agree with the paper's one-hot formulation."""

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny, gradient, mutants
from reverie import ConfigError, EPOConfig, make_scorer
from reverie.fast import attention, unembed
from reverie.fast.capabilities import FastPath
from reverie.lm.model import Model

FAMILIES = ["llama", "gpt2", "gpt_neox", "phi", "phi3", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "qwen2"]


def assert_gradients_equal_one_hot_gradients(model, spec: str, length: int = 6) -> None:
    """d(f − λ·CE)/d(one-hot), where CE = −Σ log_softmax(logits[:-1]) · one_hot[1:] / (n−1) as in the paper,
    computed by the model's own forward pass in fp32."""
    scorer = make_scorer(model, spec, EPOConfig(length=length))
    target = scorer.target
    ids = scorer.vocab.random_prompts(3, length, torch.Generator().manual_seed(0))
    lam = torch.tensor([0.0, 0.5, 3.0])
    E = model.adapter.embed.weight
    one_hot = F.one_hot(ids, E.shape[0]).float().requires_grad_(True)
    embeds = (one_hot @ E) * getattr(model.adapter.embed, "embed_scale", 1.0)  # Gemma 3 scales its embeddings
    with model.capture(list(target.hooks)) as cache:
        logits = model.hf(inputs_embeds=embeds).logits.float()
    cache["logits"] = logits
    ce = -(logits[:, :-1].log_softmax(-1) * one_hot[:, 1:]).sum(-1).mean(-1)
    (target.value(cache) - lam * ce).sum().backward()
    expected = one_hot.grad[..., scorer.vocab.allowed]
    got = gradient(scorer, ids, lam)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["neuron:L1.N5", "attention:L1.H1.K2"])
def test_token_gradients_equal_one_hot_gradients(family, spec, tokenizer):
    """The gradient pass (attention in fp32 through reverie's layout) equals the paper's one-hot gradient."""
    model = build_tiny(family, tokenizer)
    assert FastPath.of(model).packs  # the fp32 attention of gradient passes runs
    assert_gradients_equal_one_hot_gradients(model, spec)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text"])
def test_token_gradients_within_a_sliding_window_shorter_than_the_prompt(family, tokenizer):
    model = build_tiny(family, tokenizer, sliding_window=3, **({"layer_types": None} if family != "mistral" else {}))
    assert_gradients_equal_one_hot_gradients(model, "neuron:L1.N5", length=7)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("spec", ["neuron:L1.N5", 'logit:" the"'])
def test_score_matches_plain_cross_entropy(family, spec, tokenizer):
    """Scoring runs the base model and unembeds only the positions it needs (Gemma 2: soft-capped);
    f and CE equal those from the model's own full logits."""
    model = build_tiny(family, tokenizer)
    assert model.split_head
    scorer = make_scorer(model, spec, EPOConfig(length=6))
    target = scorer.target
    ids = scorer.vocab.random_prompts(5, 6, torch.Generator().manual_seed(1))
    f, ce = scorer.score(ids)
    with model.capture(list(target.hooks)) as cache:
        logits = model.hf(ids).logits.float()
    cache["logits"] = logits
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(-1)
    assert torch.allclose(ce, expected, atol=1e-5)
    assert torch.allclose(f, target.value(cache).float(), atol=1e-5)


def test_an_output_layer_beyond_unembedding_falls_back_to_full_logits(tokenizer):
    """If base model + unembedding (+ soft cap) does not reproduce the logits, scoring uses the whole model."""
    model = build_tiny("llama", tokenizer)
    model.hf.config.final_logit_softcapping = 2.0  # Llama ignores it, so the split would be wrong
    model = Model(model.hf, tokenizer)
    assert not model.split_head
    scorer = make_scorer(model, "neuron:L1.N5", EPOConfig(length=6))
    ids = scorer.vocab.random_prompts(4, 6, torch.Generator().manual_seed(2))
    logits = model.hf(ids).logits.float()
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(-1)
    assert torch.allclose(scorer.score(ids)[1], expected, atol=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_head_logprobs_equal_fp32_log_softmax(family, compiled, tokenizer, monkeypatch):
    """Label log-probabilities from vocabulary tiles (a last tile cut short, labels in every tile, a soft
    cap on Gemma 2), by the fused kernel (torch.compile) and its plain fallback, equal an fp32
    log-softmax over the model's whole logits."""
    monkeypatch.setattr(unembed.tile_logsumexp, "compiled", None)
    monkeypatch.setattr(unembed, "VOCAB_TILE", 5000)  # the bundled tokenizer's 49152 tokens: 10 tiles
    monkeypatch.setattr(unembed, "TILE_BYTES", 5000 * 4 * 7)  # 7 rows at a time in fp32
    monkeypatch.setenv("REVERIE_COMPILE", "1" if compiled else "0")
    model = build_tiny(family, tokenizer)
    gen = torch.Generator().manual_seed(0)
    hidden = model.trunk(torch.randint(1000, (3, 11), generator=gen))
    labels = torch.randint(model.adapter.embed.weight.shape[0], (3, 11), generator=gen)
    got = unembed.head_logprobs(model, hidden, labels)
    expected = model.head(hidden).float().log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    assert got.dtype == torch.float32 and got.shape == labels.shape
    assert torch.allclose(got, expected, atol=1e-5)
    if compiled and not unembed.tile_logsumexp.compiled:
        pytest.skip("torch.compile does not work on this machine (no C++ compiler?): the plain path was checked")
    assert bool(unembed.tile_logsumexp.compiled) == compiled


def assert_children_score_as_plain(scorer, parents: int, children: int, length: int, seed: int) -> None:
    """Random parents and one-token mutants of them: score_children equals scoring the children in full."""
    tops, kids, parent, pos = mutants(scorer, parents, children, length, seed)
    f, ce = scorer.score_children(tops, kids, parent, pos)
    f0, ce0 = scorer.score(kids)
    assert torch.allclose(f, f0, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ce, ce0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "spec", ["neuron:L1.N5", "attention:L1.H1.K2", "direction:L1", 'logit:" the"', "neuron:L0.N5", "attention:L0.H1.K2"]
)
def test_prefix_reuse_matches_plain_scoring(family, spec, tokenizer):
    """Children scored on top of their parent's cached prefix get the same activation and cross-entropy;
    for a target in the first of two layers, the second runs without the last position (not GPT-2, whose
    model reshapes its output to its input's shape: the probe finds that out)."""
    model = build_tiny(family, tokenizer)
    scorer = make_scorer(model, spec, EPOConfig(length=7, batch_size=5))
    assert scorer.scorer.reuses_prefix  # the packed path runs, not the plain fallback
    assert scorer.scorer.deepest_block_read() == (0 if "L0" in spec and family != "gpt2" else None)
    assert_children_score_as_plain(scorer, parents=3, children=24, length=7, seed=0)


def test_prefix_reuse_with_repeated_and_childless_parents(tiny_llama):
    """A prompt that fills several slots leads the packed row once, and a parent without children not at
    all; the children still score as in full."""
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", EPOConfig(length=6))
    gen = torch.Generator().manual_seed(3)
    parents = scorer.vocab.random_prompts(4, 6, gen)
    parents[2] = parents[0]
    parent, pos = torch.tensor([0, 0, 1, 2, 2, 0]), torch.tensor([0, 3, 5, 1, 3, 5])  # parent 3: no children
    kids = parents[parent].clone()
    kids[torch.arange(6), pos] = scorer.vocab.allowed[torch.randint(len(scorer.vocab.allowed), (6,), generator=gen)]
    seen = []
    hook = tiny_llama.adapter.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    try:
        f, ce = scorer.score_children(parents, kids, parent, pos)
    finally:
        hook.remove()
    assert seen[-1] == 2 * 6 + int((6 - pos).sum())  # two distinct parents with children, then the children
    f0, ce0 = scorer.score(kids)
    assert torch.allclose(f, f0, atol=1e-4, rtol=1e-4) and torch.allclose(ce, ce0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("spec", ["neuron:L1.N5", "attention:L1.H1.K2", 'logit:" the"', "neuron:L0.N5"])
@pytest.mark.parametrize("template", ["Once upon a time {prompt}", "Q: {prompt} A:"])
def test_prefix_reuse_in_a_template_matches_plain_scoring(family, spec, template, tokenizer):
    """With a fixed context around the prompt, children still run only from their mutated position on
    (the text before the prompt is shared too); the target reads the last prompt token."""
    model = build_tiny(family, tokenizer)
    scorer = make_scorer(model, spec, EPOConfig(length=6, batch_size=4, template=template))
    assert scorer.objective.templated and scorer.scorer.reuses_prefix
    assert_children_score_as_plain(scorer, parents=3, children=16, length=6, seed=6)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text"])
def test_prefix_reuse_within_a_sliding_window_shorter_than_the_prompt(family, tokenizer):
    """Packed attention keeps a sliding window (and Gemma 2's soft cap) that cuts into the prompt."""
    model = build_tiny(family, tokenizer, sliding_window=3, **({"layer_types": None} if family != "mistral" else {}))
    for spec in ("neuron:L1.N5", "neuron:L0.N5"):
        scorer = make_scorer(model, spec, EPOConfig(length=7, batch_size=4))
        assert scorer.scorer.reuses_prefix
        assert_children_score_as_plain(scorer, parents=2, children=12, length=7, seed=5)


@pytest.mark.parametrize("template", [None, "Once upon a time {prompt}"])
def test_the_unembedding_only_sees_contiguous_hidden_states(template, tiny_llama):
    """A strided input makes the lm_head matmul copy its weight per batch row
    (docs/performance.md#contiguous-rows): every scoring path, and the model's continuations, hand it
    contiguous hidden states."""
    seen = []
    hook = tiny_llama.adapter.unembed.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        scorer = make_scorer(tiny_llama, 'logit:" the"', EPOConfig(length=6, template=template))
        gen = torch.Generator().manual_seed(7)
        parents = scorer.vocab.random_prompts(2, 6, gen)
        parent, pos = torch.tensor([0, 1, 1]), torch.tensor([0, 2, 5])
        children = parents[parent].clone()
        children[torch.arange(3), pos] = scorer.vocab.allowed[:3]
        scorer.score_children(parents, children, parent, pos)
        scorer.score(children)
        gradient(scorer, children, torch.ones(3))
        scorer.logprobs_after(children)  # beam starts, LM swaps
        scorer.continuations(children, pos)  # pair edits
    finally:
        hook.remove()
    assert seen and all(seen)


def test_a_model_whose_attention_ignores_the_packed_layout_scores_children_plainly(tokenizer, monkeypatch):
    """An architecture that runs its own attention over the packed row would mix children: the probe
    catches it, and children are scored in full instead, with the same results."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, sdpa_attention_forward)
    model = build_tiny("llama", tokenizer)
    scorer = make_scorer(model, "neuron:L1.N5", EPOConfig(length=7))
    assert not scorer.scorer.reuses_prefix and FastPath.of(model).packs is False
    parents = scorer.vocab.random_prompts(2, 7, torch.Generator().manual_seed(4))
    parent, pos = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 3, 6, 2])
    children = parents[parent].clone()
    children[torch.arange(4), pos] = scorer.vocab.allowed[:4]
    f, ce = scorer.score_children(parents, children, parent, pos)
    f0, ce0 = scorer.score(children)
    assert torch.equal(f, f0) and torch.equal(ce, ce0)


@pytest.mark.parametrize("kind", ["packed", "plain"])
def test_out_of_memory_halves_the_batch_and_keeps_results(tiny_llama, monkeypatch, kind):
    """The back-off wraps either scorer: a pass that runs out of memory halves the batch and runs again."""
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", EPOConfig(length=6, batch_size=32, scorer=kind))
    ids = scorer.vocab.random_prompts(20, 6, torch.Generator().manual_seed(3))
    expected = scorer.score(ids)
    forward = tiny_llama.hf.base_model.forward

    def small_batches_only(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_llama.hf.base_model, "forward", small_batches_only)
    got = scorer.score(ids)
    assert scorer.batch_size <= 4
    assert torch.allclose(got[0], expected[0], atol=1e-5) and torch.allclose(got[1], expected[1], atol=1e-5)


def test_automatic_batch_size_fits_free_memory(tiny_llama):
    from reverie.lm.memory import available
    from reverie.scoring.batching import auto_batch_size

    b = auto_batch_size(tiny_llama)
    assert 1 <= b <= 512
    per_prompt = 12 * 49152 * 12
    assert b * per_prompt <= available(tiny_llama.device)


def test_a_scorer_is_built_from_its_own_options_as_from_a_config(tiny_llama):
    """`make_scorer` reads only the scorer's typed options: built from them or from the EPOConfig that gives
    them, the scorer bans the same text and scores the same prompts alike."""
    from reverie.scoring import ScoringOptions, VocabularyOptions

    config = EPOConfig(length=6, ban_strings=("cat",), word_start=True, template="Q: {prompt}", batch_size=3)
    options = ScoringOptions(
        VocabularyOptions(ban_strings=("cat",), word_start=True), template="Q: {prompt}", length=6, batch_size=3
    )
    assert config.scoring() == options
    a, b = make_scorer(tiny_llama, "neuron:L1.N5", config), make_scorer(tiny_llama, "neuron:L1.N5", options)
    assert a.batch_size == b.batch_size == 3 and torch.equal(a.vocab.allowed, b.vocab.allowed)
    ids = a.vocab.random_prompts(4, 6, torch.Generator().manual_seed(0))
    for x, y in zip(a.score(ids), b.score(ids)):
        assert torch.equal(x, y)
    cat = torch.tensor([b.vocab.encode(" the cat sat on a mat")[:6]])
    assert not b.vocab.ok(cat).any()
    with pytest.raises(ConfigError, match="unknown scorer 'fast'"):
        make_scorer(tiny_llama, "neuron:L1.N5", options, scorer="fast")  # type: ignore[arg-type]
