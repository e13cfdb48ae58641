"""Target specs: parsing, round trips, validation against the model, custom callables."""

import numpy as np
import pytest
import torch

import reverie
from reverie import Attention, Custom, Direction, EPOConfig, Logit, Neuron, TargetError, parse_target
from reverie.lm.sae import SAEWeights
from reverie.lm.targets import as_target


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("neuron:L9.N402", Neuron(9, 402)),
        ("neuron:blocks.9.mlp.hook_post.N402", Neuron("blocks.9.mlp.hook_post", 402)),
        ('logit:" dog"', Logit(" dog")),
        ('logit:"5"', Logit("5")),  # quoted digits are text
        ("logit:17", Logit(17)),  # bare digits are a token id
        ("direction:L8", Direction(8)),
        ("direction:L8:seed=3", Direction(8, seed=3)),
        ("direction:blocks.8.hook_resid_pre", Direction("blocks.8.hook_resid_pre")),
        ("attention:L3.H2.K-2", Attention(3, 2, -2)),
    ],
)
def test_parse(spec, expected):
    got = parse_target(spec)
    assert type(got) is type(expected) and got.hooks == expected.hooks
    assert got == expected


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("neuron:L9.N402", None),
        ("neuron:blocks.9.mlp.hook_post.N402", "neuron:L9.N402"),
        ('logit:" dog"', "logit:' dog'"),
        ("logit:123", None),
        ("direction:L8", "direction:L8:seed=0"),
        ("direction:L8:seed=3", None),
        ("direction:L8:{dir}/v.npy", None),
        ("direction:blocks.8.hook_resid_pre", "direction:L8:seed=0"),
        ("attention:L3.H2.K-2", None),
        ("sae:{dir}/sae:F123", None),
    ],
)
def test_spec_round_trips(spec, canonical, tmp_path):
    """Every spec form keeps its canonical spec string (run directories and sweeps are named by it)."""
    np.save(tmp_path / "v.npy", np.ones(4, np.float32))
    SAEWeights(torch.zeros(4, 200), torch.zeros(200), torch.zeros(4), "blocks.1.hook_resid_pre").save(tmp_path / "sae")
    spec = spec.format(dir=tmp_path)
    canonical = spec if canonical is None else canonical
    assert parse_target(spec).spec == canonical
    assert parse_target(canonical).spec == canonical


def test_hook_name_and_layer_forms_read_the_same_value(tiny_llama):
    ids = torch.tensor([tiny_llama.tokenizer("The cat sat on the mat", add_special_tokens=False)["input_ids"]])
    a, b = as_target("neuron:L1.N4", tiny_llama), as_target("neuron:blocks.1.mlp.hook_post.N4", tiny_llama)
    with tiny_llama.capture(list(a.hooks)) as cache:
        tiny_llama.hf(ids)
    assert a.value(cache) == b.value(cache)


def test_direction_from_file_and_shape_check(tiny_llama, tmp_path):
    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    t = as_target(f"direction:L1:{tmp_path / 'v.npy'}", tiny_llama)
    assert torch.allclose(t.v, torch.from_numpy(v))
    np.save(tmp_path / "bad.npy", v[:10])
    with pytest.raises(TargetError, match="shape"):
        as_target(f"direction:L1:{tmp_path / 'bad.npy'}", tiny_llama)


def test_direction_is_standardised_dot_product(tiny_llama):
    t = as_target("direction:L1:seed=2", tiny_llama)
    x = torch.randn(3, 5, 64)
    z = (x[:, -1] - x[:, -1].mean(-1, keepdim=True)) / x[:, -1].std(-1, unbiased=False, keepdim=True)
    assert torch.allclose(t.value({t.hooks[0]: x}), z @ t.v, atol=1e-5)
    assert torch.isclose(t.v.norm(), torch.tensor(1.0))


def test_logit_difference():
    t = Logit(3)
    t.token_id = 3
    logits = torch.tensor([[[0.0, 1.0, 5.0, 4.0]]])
    assert t.value({"logits": logits}).item() == -1.0


def test_attention_key_outside_prompt(tiny_llama):
    with pytest.raises(TargetError, match="outside a prompt of 8 tokens"):
        reverie.dream(tiny_llama, "attention:L1.H0.K20", EPOConfig(length=8, iters=1))


def test_custom_callable_target_is_maximised(tiny_llama):
    hook = "blocks.1.hook_resid_post"
    norm = Custom(lambda cache: cache[hook][:, -1].norm(dim=-1), hooks=(hook,), name="norm")
    r = reverie.dream(tiny_llama, norm, EPOConfig(population=4, children=8, top_k=32, length=8, iters=6))
    assert r.target == "custom:norm"
    assert r.history["activation"].max() > r.history[r.history.iteration == 0]["activation"].max()
    bare = reverie.dream(tiny_llama, lambda cache: cache["logits"][:, -1, 42], EPOConfig(length=6, iters=1))
    assert bare.target.startswith("custom:")


def test_bad_hook_names(tiny_llama):
    with pytest.raises(TargetError, match="unknown hook point"):
        as_target(Neuron("blocks.1.mlp.hook_nope", 3), tiny_llama)
    with pytest.raises(TargetError, match="layer 7 does not exist"):
        as_target("direction:blocks.7.hook_resid_pre", tiny_llama)
