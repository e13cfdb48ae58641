"""The Python API refuses bad input with a typed one-line `ReverieError` (issue 20), never silent nonsense."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from reverie import (
    ConfigError,
    Custom,
    Direction,
    EPOConfig,
    Logit,
    ModelError,
    Neuron,
    ReverieError,
    TargetError,
    make_scorer,
    parse_target,
)
from reverie.evidence.attribution import attribute
from reverie.evidence.baseline import random_baseline
from reverie.lm.model import load_model
from reverie.lm.sae import SAEFeature, SAEWeights
from reverie.lm.vocab import Vocabulary
from reverie.search.frontier import best_at, summary

CUDA_MISSING = pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"))


def one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert isinstance(error.value, ReverieError) and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("spec", [123, None, 4.5, ["a"]])
def test_load_model_refuses_what_is_not_a_model_spec(spec):
    with pytest.raises(ModelError) as e:
        load_model(spec)
    one_line(e, type(spec).__name__, "hub id")


@pytest.mark.parametrize("device", ["xyz", CUDA_MISSING])
def test_load_model_refuses_a_device_this_machine_lacks(tiny_dir, device):
    with pytest.raises(ModelError) as e:
        load_model(tiny_dir, device=device)
    one_line(e, repr(device), "cpu")


def test_prompts_longer_than_the_context_are_refused(tiny_llama):
    tiny_llama.check_length(tiny_llama.context)  # the tiny models have 64 positions
    assert tiny_llama.context == 64
    with pytest.raises(ConfigError) as e:
        tiny_llama.check_length(65)
    one_line(e, "65", "64", "shorter")


@pytest.mark.parametrize(
    "vector, words",
    [
        (np.full(64, np.nan, np.float32), "NaN"),
        (np.r_[np.ones(63), np.inf].astype(np.float32), "infinite"),
        (np.zeros(64, np.float32), "zeros"),
        ("npy-nan", "NaN"),
        ("npy-zeros", "zeros"),
    ],
)
def test_degenerate_directions_are_refused(tiny_llama, tmp_path, vector, words):
    if isinstance(vector, str):
        np.save(tmp_path / "v.npy", np.full(64, np.nan if vector == "npy-nan" else 0.0, np.float32))
        vector = str(tmp_path / "v.npy")
    with pytest.raises(TargetError) as e:
        Direction(1, vector).prepare(tiny_llama)
    one_line(e, words, "direction:L1")


def test_a_bare_ban_string_is_one_item():
    assert Logit(" dog", ban=" dog").banned_text == (" dog",)
    assert parse_target('logit:" dog"', ban=" dog").banned_text == (" dog",)
    assert Logit(" dog", ban=[" dog", "cat"]).banned_text == (" dog", "cat")
    assert Custom(lambda c: c["logits"][:, -1, 0], hooks="blocks.1.hook_resid_post").hooks == (
        "blocks.1.hook_resid_post",
    )


def test_a_bare_banned_token_or_string_is_one_item(tiny_llama):
    dog = tiny_llama.tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    vocab = Vocabulary.for_model(tiny_llama, banned_tokens=" dog", banned_strings=" cat")
    assert vocab.banned_strings == (" cat",) and dog not in vocab.allowed_set
    assert tiny_llama.tokenizer.convert_tokens_to_ids("d") in vocab.allowed_set  # not its letters


@pytest.mark.parametrize("token", [3.5, None, True])
def test_a_logit_token_is_text_or_an_id(tiny_llama, token):
    with pytest.raises(TargetError) as e:
        Logit(token).prepare(tiny_llama)
    one_line(e, "token id")


@pytest.mark.parametrize("scorer", ["plain", "packed"])
@pytest.mark.parametrize(
    "fn, hooks, words",
    [
        (lambda c: c["blocks.1.hook_resid_post"][:, -1], ("blocks.1.hook_resid_post",), "shape (2, 64) for 2 prompts"),
        (lambda c: c["blocks.1.hook_resid_post"][:, -1, :1], ("blocks.1.hook_resid_post",), "shape (2, 1)"),
        (lambda c: c["blocks.1.hook_resid_post"][0, -1, 0], ("blocks.1.hook_resid_post",), "shape ()"),
        (lambda c: 1.0, (), "returned float"),
        (
            lambda c: c["blocks.0.hook_resid_pre"][:, -1, 0],
            ("blocks.1.hook_resid_post",),
            "'blocks.0.hook_resid_pre', which it did not declare (declared: blocks.1.hook_resid_post)",
        ),
    ],
)
def test_custom_targets_that_misbehave_are_named(tiny_llama, scorer, fn, hooks, words):
    target = Custom(fn, hooks=hooks, name="mine")
    s = make_scorer(tiny_llama, target, EPOConfig(length=4, check_retokenization=False, batch_size=8), scorer=scorer)
    with pytest.raises(TargetError) as e:
        s.score(s.vocab.random_prompts(2, 4, torch.Generator().manual_seed(0)))
    one_line(e, "custom:mine", words)


@pytest.mark.parametrize("cfg", [[1, 2], "blocks.1.hook_resid_pre", 7, {"metadata": []}, {"hook_name": 3}])
def test_an_sae_config_that_is_not_an_object_is_refused(tmp_path, cfg):
    SAEWeights(torch.zeros(4, 8), torch.zeros(8), torch.zeros(4), "blocks.1.hook_resid_pre").save(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(TargetError) as e:
        SAEWeights.load(tmp_path)
    one_line(e, "cfg.json")


@pytest.mark.parametrize("n", [0, 1, -5, 2.5, True])
def test_a_baseline_needs_two_prompts(tiny_llama, n):
    with pytest.raises(ConfigError) as e:
        random_baseline(tiny_llama, "neuron:L1.N3", n=n, length=4)
    one_line(e, "n >= 2")


def test_attribution_refuses_more_substitutes_than_tokens(tiny_llama):
    with pytest.raises(ConfigError) as e:
        attribute(tiny_llama, "neuron:L1.N3", "The cat sat", k=100000)
    one_line(e, "k=100000", "smaller k")


HISTORY = pd.DataFrame(
    {"activation": [1.0, 2.0], "cross_entropy": [4.0, 6.0], "ids": [[1], [2]], "iteration": [0, 1], "text": ["a", "b"]}
)


@pytest.mark.parametrize("bad", ["5", None, math.nan, True])
def test_frontier_thresholds_must_be_numbers(bad):
    with pytest.raises(ConfigError) as e:
        best_at(HISTORY, bad)
    one_line(e, repr(bad))
    with pytest.raises(ConfigError):
        summary(HISTORY, [5.0, bad])
    assert best_at(HISTORY, np.float32(5))["text"] == "a" and best_at(HISTORY, 7)["text"] == "b"


@pytest.mark.parametrize(
    "a, b",
    [
        (Neuron(9, 402), Neuron("blocks.9.mlp.hook_post", 402)),
        (Direction(8), Direction("blocks.8.hook_resid_pre")),
        (parse_target("neuron:L9.N402"), parse_target("neuron:blocks.9.mlp.hook_post.N402")),
        (parse_target("direction:L8:seed=2"), parse_target("direction:blocks.8.hook_resid_pre:seed=2")),
    ],
)
def test_the_layer_and_hook_forms_are_one_target(a, b):
    assert a.spec == b.spec and a.hooks == b.hooks and a == b
    assert "blocks" not in a.spec


def test_paths_in_specs_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("v.npy", np.ones(4, np.float32))
    SAEWeights(torch.zeros(4, 8), torch.zeros(8), torch.zeros(4), "blocks.1.hook_resid_pre").save("sae")
    assert parse_target("direction:L1:v.npy").spec == f"direction:L1:{tmp_path / 'v.npy'}"
    assert Direction(1, "./v.npy").spec == f"direction:L1:{tmp_path / 'v.npy'}"
    assert parse_target("sae:sae:F3").spec == f"sae:{tmp_path / 'sae'}:F3"
    assert SAEFeature(tmp_path / "sae", 3).spec == f"sae:{tmp_path / 'sae'}:F3"
    monkeypatch.chdir("/")
    assert parse_target(parse_target("direction:L1:" + str(tmp_path / "v.npy")).spec).spec.endswith("v.npy")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("neuron:blocks.1.hook_resid_post.N64", "hook_resid_post has neurons 0-63"),  # d_model 64, d_mlp 128
        ("neuron:L1.N128", "the MLP has neurons 0-127"),
        ("neuron:blocks.1.attn.hook_pattern.N0", "attention:L1"),
    ],
)
def test_neurons_are_checked_against_the_width_of_their_hook(tiny_llama, spec, words):
    with pytest.raises(TargetError) as e:
        parse_target(spec).prepare(tiny_llama)
    one_line(e, words)


def test_the_last_neuron_of_each_hook_is_accepted(tiny_llama):
    parse_target("neuron:blocks.1.hook_resid_post.N63").prepare(tiny_llama)
    parse_target("neuron:L1.N127").prepare(tiny_llama)
