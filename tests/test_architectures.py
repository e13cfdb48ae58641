"""Every supported architecture family, on tiny random-weight models (fp32, CPU).

1. The adapter's hook points read the real tensors: `mlp.hook_post` against each family's own MLP
   modules, `hook_resid_pre` against `output_hidden_states`, `attn.hook_pattern` is a causal
   probability pattern (and switching to eager attention leaves the logits unchanged).
2. A short dream raises a neuron above the best of its initial population, with allowed tokens only.
3. Token gradients rank swaps in the right direction (top-1 beats bottom-1 on the real objective).
4. Every target kind runs one EPO step on every family with finite values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reverie
from conftest import FAMILIES, VOCAB, build_tiny, gradient
from reverie import EPOConfig
from reverie.lm.targets import as_target
from reverie.lm.vocab import Vocabulary
from reverie.scoring import Objective, PackedScorer

FAMILY_NAMES = list(FAMILIES)


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    """The default vocabulary of the tiny models (they all share the bundled tokenizer and its size)."""
    return Vocabulary.build(tokenizer, VOCAB)


def _ids(tokenizer, text: str, n: int) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    assert len(ids) == n
    return torch.tensor(ids)


def _independent_mlp_post(family: str, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The post-nonlinearity neuron vector computed from the family's own MLP submodules."""
    if family == "gpt2":
        return mlp.act(mlp.c_fc(x))
    if family == "gpt_neox":
        return mlp.act(mlp.dense_h_to_4h(x))
    if family == "phi":
        return mlp.activation_fn(mlp.fc1(x))
    if family == "phi3":
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * mlp.activation_fn(gate)
    # llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text: gated MLP
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


# --------------------------------------------------------------------------- 1. hook points


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hook_points_are_the_real_ones(family, tokenizer):
    model = build_tiny(family, tokenizer)
    block = model.adapter.blocks[1]
    ids = torch.stack(
        [
            _ids(tokenizer, "The cat sat on the mat and looked at", 7),
            _ids(tokenizer, "In 1492 Columbus sailed across the ocean", 7),
        ]
    )
    b, n = ids.shape

    with torch.no_grad():
        baseline = model.hf(input_ids=ids, use_cache=False).logits

    # mlp.hook_post and hook_resid_pre, captured by the Model; the MLP input captured by our own hook
    mlp_in = {}

    def grab(module, args, kwargs):
        mlp_in["x"] = args[0] if args else next(iter(kwargs.values()))

    handle = block.mlp.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), model.capture(["blocks.1.mlp.hook_post", "blocks.1.hook_resid_pre"]) as cache:
            out = model.hf(input_ids=ids, use_cache=False, output_hidden_states=True)
    finally:
        handle.remove()

    post = cache["blocks.1.mlp.hook_post"]
    assert post.shape == (b, n, model.adapter.d_mlp)
    with torch.no_grad():
        expected = _independent_mlp_post(family, block.mlp, mlp_in["x"])
    torch.testing.assert_close(post, expected, rtol=1e-5, atol=1e-6)
    assert post.abs().max() > 0  # not a trivially-zero tensor

    resid = cache["blocks.1.hook_resid_pre"]
    assert resid.shape == (b, n, model.adapter.d_model)
    torch.testing.assert_close(resid, out.hidden_states[1], rtol=1e-5, atol=1e-6)
    # and block 1's input differs from the raw embeddings (it really is after block 0)
    assert not torch.allclose(resid, out.hidden_states[0])

    # attn.hook_pattern: eager attention within the block only, [batch, heads, n, n], causal rows summing to 1
    before = model.hf.config._attn_implementation
    with torch.no_grad(), model.capture(["blocks.1.attn.hook_pattern"]) as cache:
        assert model.hf.config._attn_implementation == "eager"
        logits = model.hf(input_ids=ids, use_cache=False).logits
    assert model.hf.config._attn_implementation == before
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (b, model.adapter.n_heads, n, n)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(b, model.adapter.n_heads, n), rtol=1e-5, atol=1e-5)
    assert (pattern >= 0).all()
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert pattern[..., future].abs().max() < 1e-6, "attention to future positions"
    # switching the attention implementation does not change the model's output
    torch.testing.assert_close(logits, baseline, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- 2. a short dream


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_short_dream_raises_a_neuron(family, tokenizer, vocab):
    model = build_tiny(family, tokenizer)
    config = EPOConfig(iters=6, population=4, children=16, top_k=64, length=8, seed=0)
    result = reverie.dream(model, "neuron:L1.N5", config)
    h = result.history

    assert result.stopped == "done" and result.iterations == 6
    assert set(h["iteration"]) == set(range(7))
    initial = h.loc[h["iteration"] == 0, "activation"].max()
    best = h["activation"].max()
    assert np.isfinite(initial)
    assert best > initial, f"{family}: best {best} did not beat the initial population's best {initial}"

    scored = np.isfinite(h["activation"].to_numpy())
    assert np.isfinite(h["cross_entropy"].to_numpy()[scored]).all()
    assert np.isnan(h["cross_entropy"].to_numpy()[~scored]).all()  # failing a constraint: not scored
    assert not np.isnan(h["activation"].to_numpy()).any()

    # selection never keeps a child that failed its constraints (f = -inf)
    assert np.isfinite(h.loc[h["kept"] & (h["iteration"] > 0), "activation"].to_numpy()).all()

    allowed = vocab.allowed_set
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    kept = np.stack(h.loc[h["kept"], "ids"].to_list())
    population = result.state.population.numpy()
    for ids in (kept, population):
        assert ids.shape[1] == 8
        assert not np.isin(ids, list(special)).any(), "a special token in a kept prompt"
        assert set(ids.ravel().tolist()) <= allowed, "a token outside the allowed vocabulary"


# --------------------------------------------------------------------------- 3. gradient sign


def test_token_gradients_rank_swaps_in_the_right_direction(tiny_llama, tokenizer, vocab):
    model = tiny_llama
    target = as_target("neuron:L1.N5", model)
    scorer = PackedScorer(Objective(model, target, vocab), batch_size=64)
    lam = 0.5
    ids = _ids(tokenizer, "The quick brown fox jumps over the lazy dog", 8)

    grad = gradient(scorer, ids[None], torch.tensor([lam]))
    assert grad.shape == (1, 8, len(vocab))
    assert torch.isfinite(grad).all()

    def objective(rows: torch.Tensor) -> torch.Tensor:
        f, ce = scorer.score(rows)
        return f - lam * ce

    positions = [1, 2, 3, 4, 5, 7]
    wins = []
    for p in positions:
        top = vocab.allowed[grad[0, p].argmax()]
        bottom = vocab.allowed[grad[0, p].argmin()]
        rows = ids.repeat(2, 1)
        rows[0, p], rows[1, p] = top, bottom
        up, down = objective(rows).tolist()
        wins.append(up > down)
    assert sum(wins) >= 4, (
        f"the top-ranked swap beat the bottom-ranked one at only {sum(wins)} of {len(positions)} positions"
    )

    # top_k agrees with the gradient ranking
    top = scorer.top_k([ids], torch.tensor([lam]), 5)
    assert torch.equal(top[0][:, 0], vocab.allowed[grad[0].argmax(-1)])


# --------------------------------------------------------------------------- 4. every target kind

TARGETS = ["neuron:L0.N3", 'logit:" the"', "direction:L1", "attention:L1.H1.K0"]


@pytest.mark.parametrize("spec", TARGETS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_target_kind_runs_one_step(family, spec, tokenizer, vocab):
    model = build_tiny(family, tokenizer)
    config = EPOConfig(iters=1, population=2, children=4, top_k=16, length=6, seed=0)
    result = reverie.dream(model, spec, config)
    h = result.history
    assert result.iterations == 1 and set(h["iteration"]) == {0, 1}
    assert (h["iteration"] == 1).sum() == 2 * 4 and (h["iteration"] == 0).sum() >= 2  # the beam records its candidates

    ids = torch.tensor(np.stack(h["ids"].to_list()), dtype=torch.long)
    valid = vocab.ok(ids).numpy()
    f = h["activation"].to_numpy()
    assert valid.any()
    assert np.isfinite(f[valid]).all(), f"{family} {spec}: non-finite value for a valid prompt"
    assert (f[~valid] == -math.inf).all()
    ce = h["cross_entropy"].to_numpy()
    assert np.isfinite(ce[valid]).all() and np.isnan(ce[~valid]).all()  # a rejected prompt is not scored
    if spec.startswith("attention"):
        assert ((f[valid] >= 0) & (f[valid] <= 1 + 1e-6)).all()
