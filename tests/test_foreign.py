"""TransformerLens and nnsight models as reverie Models (`lm.foreign.as_model`), offline: a random-weight
HookedTransformer and the tiny llama behind an nnsight LanguageModel."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import reverie
from reverie.errors import ModelError
from reverie.fast.capabilities import FastPath
from reverie.lm.foreign import as_model
from reverie.lm.model import Model, bundled_path
from reverie.scoring import make_scorer

tl = pytest.importorskip("transformer_lens")

README = Path(__file__).resolve().parents[1] / "README.md"
HOOKS = [
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_resid_pre",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_attn_out",
    "blocks.1.attn.hook_pattern",
]


@pytest.fixture(scope="module")
def lens():
    cfg = tl.HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        d_head=16,
        n_heads=4,
        d_mlp=128,
        d_vocab=49152,
        n_ctx=128,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tl.HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(bundled_path()))
    with torch.no_grad():  # larger random weights than the default init, for activations worth comparing
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model(lens) -> Model:
    return as_model(lens)


def ids(seed: int = 0, batch: int = 3, n: int = 7) -> torch.Tensor:
    return torch.randint(100, 20_000, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_hook_points_are_transformer_lens_own(lens, model):
    x = ids()
    logits, cache = lens.run_with_cache(x)
    with torch.inference_mode(), model.capture(HOOKS) as got:
        out = model.hf(input_ids=x).logits
    torch.testing.assert_close(out, logits)
    for name in HOOKS:
        torch.testing.assert_close(got[name], cache[name], msg=name)
    assert model.adapter.d_mlp == 128 and model.adapter.n_heads == 4 and model.n_layers == 2
    assert model.context == 128 and model.spec.startswith("transformer-lens:")


def test_logits_from_embeddings(lens, model):
    x = ids(1)
    with torch.inference_mode():
        from_embeds = model.hf(inputs_embeds=model.adapter.embed(x)).logits
    torch.testing.assert_close(from_embeds, lens(x))


@pytest.mark.parametrize("spec", ["neuron:L1.N5", "neuron:blocks.1.hook_resid_pre.N3"])
def test_scorers_read_what_run_with_cache_reads(lens, model, spec):
    x = ids(2)
    _, cache = lens.run_with_cache(x)
    name = "blocks.1.mlp.hook_post" if spec == "neuron:L1.N5" else "blocks.1.hook_resid_pre"
    want = cache[name][:, -1, 5 if name.endswith("post") else 3]
    ce_want = torch.nn.functional.cross_entropy(lens(x)[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").mean(1)
    config = reverie.EPOConfig(length=7, check_retokenization=False)
    for scorer in ("plain", "packed"):
        f, ce = make_scorer(lens, spec, config, scorer=scorer).score(x)  # the HookedTransformer itself
        torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ce, ce_want, rtol=1e-4, atol=1e-4)
        f, _ = make_scorer(model, spec, config, scorer=scorer).score(x)  # wrapped once
        torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-4)


def test_gradient_agrees_with_transformer_lens_backward(lens, model):
    x = ids(3, batch=2)
    scorer = make_scorer(model, "neuron:L1.N5", reverie.EPOConfig(length=7, check_retokenization=False), scorer="plain")
    df, dce = scorer.gradient_parts(x)
    W_E = lens.embed.W_E
    one_hot = torch.nn.functional.one_hot(x, W_E.shape[0]).float().requires_grad_(True)
    with torch.enable_grad():  # TransformerLens's own pass, its hook_embed replaced by the one-hot embeddings
        store = {}
        hooks = [
            ("hook_embed", lambda act, hook: one_hot @ W_E),
            ("blocks.1.mlp.hook_post", lambda act, hook: store.setdefault("post", act)),
        ]
        logits = lens.run_with_hooks(x, fwd_hooks=hooks)
        f = store["post"][:, -1, 5]
        (want_df,) = torch.autograd.grad(f.sum(), one_hot, retain_graph=True)
        lp = logits[:, :-1].log_softmax(-1)
        ce = -(lp * one_hot[:, 1:]).sum(-1).mean(-1)
        (want_dce,) = torch.autograd.grad(ce.sum(), one_hot)
    allowed = scorer.vocab.allowed
    torch.testing.assert_close(df, want_df[..., allowed], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(dce, want_dce[..., allowed], rtol=1e-3, atol=1e-5)
    packed = make_scorer(
        model, "neuron:L1.N5", reverie.EPOConfig(length=7, check_retokenization=False), scorer="packed"
    )
    pdf, pdce = packed.gradient_parts(x)
    torch.testing.assert_close(pdf, df, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(pdce, dce, rtol=1e-3, atol=1e-5)


def test_fast_path_probes_say_no_and_children_fall_back(model):
    fast = FastPath.of(model)
    assert (fast.packs, fast.drops, fast.fuses) == (False, False, False)
    scorer = make_scorer(model, "neuron:L1.N5", reverie.EPOConfig(length=7, check_retokenization=False))
    parents = ids(4, batch=2)
    parent, pos = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 6])
    children = parents[parent].clone()
    children[torch.arange(3), pos] += 1
    f, ce = scorer.score_children(parents, children, parent, pos)
    f_want, ce_want = scorer.score(children)
    torch.testing.assert_close(f, f_want)
    torch.testing.assert_close(ce, ce_want)


def test_short_dream_raises_the_feature(lens):
    config = reverie.EPOConfig(population=4, children=8, top_k=32, length=6, iters=4, seed=0)
    result = reverie.dream(lens, "neuron:L1.N5", config)
    h = result.history
    start = h[h["iteration"] == 0]["activation"].max()
    assert result.model.startswith("transformer-lens:")
    assert h["activation"].max() > start


def test_nnsight_language_model_is_its_transformers_model():
    nnsight = pytest.importorskip("nnsight")
    from conftest import build_tiny

    tokenizer = AutoTokenizer.from_pretrained(bundled_path())  # nnsight sets its padding: not the shared one
    plain = build_tiny("llama", tokenizer, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = as_model(nnsight.LanguageModel(plain.hf, tokenizer=tokenizer))
    assert wrapped.hf is plain.hf and wrapped.tokenizer is tokenizer
    x, names = ids(5), ["blocks.1.mlp.hook_post", "blocks.1.hook_resid_pre"]
    with torch.inference_mode():
        with plain.capture(names) as want:
            plain.hf(input_ids=x)
        with wrapped.capture(names) as got:
            wrapped.hf(input_ids=x)
    for name in names:
        torch.testing.assert_close(got[name], want[name])
    config = reverie.EPOConfig(length=7, check_retokenization=False)
    torch.testing.assert_close(
        make_scorer(wrapped, "neuron:L1.N5", config).score(x), make_scorer(plain, "neuron:L1.N5", config).score(x)
    )


def test_anything_else_is_one_line():
    with pytest.raises(ModelError) as e:
        as_model(42)
    assert "\n" not in str(e.value) and "HookedTransformer" in str(e.value)
    with pytest.raises(ModelError):
        make_scorer(42, "neuron:L1.N5", reverie.EPOConfig())


def test_readme_example_runs(lens):
    blocks = re.findall(r"```python\n(# example: transformer-lens\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    for old, new in [
        ('HookedTransformer.from_pretrained("gpt2")', "TINY"),
        ("L5.N100", "L1.N5"),
        ("iters=100", "iters=2, population=4, children=8, top_k=32, length=6"),
    ]:
        assert old in code
        code = code.replace(old, new)
    exec(compile(code, "README.md", "exec"), {"TINY": lens})
