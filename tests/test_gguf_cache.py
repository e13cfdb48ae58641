"""A .gguf model is converted once into the cache; later loads read the converted folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.lm import loading
from reverie.lm.model import load_model


def byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path, d=64, ff=128, layers=2, heads=4, kv=2) -> None:
    """A two-layer Llama in GGUF (fp32 tensors) with a byte-level BPE tokenizer of 260 tokens."""
    import gguf

    tokens = ["<|endoftext|>"] + byte_symbols() + ["Ġt", "he", "Ġthe"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(d // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    rng = np.random.default_rng(0)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", t(len(tokens), d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", t(len(tokens), d))
    for i in range(layers):
        for name, shape in [
            ("attn_q", (d, d)),
            ("attn_k", (kv * d // heads, d)),
            ("attn_v", (kv * d // heads, d)),
            ("attn_output", (d, d)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ]:
            w.add_tensor(f"blk.{i}.{name}.weight", t(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def test_a_gguf_file_is_converted_once(tiny_gguf, monkeypatch, capsys, caplog):
    first = load_model(tiny_gguf, dtype="fp32", device="cpu")
    assert [r.message for r in caplog.records if r.message.startswith("converting")]  # the slow step says so
    caplog.clear()
    folder = loading.gguf_cache_path(tiny_gguf)
    assert loading.is_converted(folder) and (folder / "tokenizer.json").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert "Converting" not in capsys.readouterr().err  # no progress bar

    def refuse(path, out):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "convert_gguf", refuse)
    again = load_model(tiny_gguf, dtype="bf16", device="cpu")
    assert not [r for r in caplog.records if r.message.startswith("converting")]
    assert again.dtype == torch.bfloat16 and again.n_layers == first.n_layers == 2
    ids = torch.tensor([[5, 80, 259, 7]])
    assert torch.allclose(first.hf(ids).logits, again.hf(ids).logits.float(), atol=2e-2)
    assert first.tokenizer(" the")["input_ids"] == again.tokenizer(" the")["input_ids"] == [259]


def test_a_changed_gguf_file_is_converted_again(tiny_gguf, monkeypatch):
    load_model(tiny_gguf, dtype="fp32", device="cpu")
    old = loading.gguf_cache_path(tiny_gguf)
    write_tiny_gguf(tiny_gguf, layers=1)
    assert loading.gguf_cache_path(tiny_gguf) != old
    assert load_model(tiny_gguf, dtype="fp32", device="cpu").n_layers == 1


def test_device_map_passes_through_to_transformers(tiny_gguf, monkeypatch):
    from transformers import AutoModelForCausalLM

    real, seen = AutoModelForCausalLM.from_pretrained, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model = load_model(tiny_gguf, dtype="fp32", device="cpu", device_map="auto")
    assert seen[-1] == "auto" and model.device.type == "cpu" and model.dtype_reason == "fp32 as asked"
    load_model(tiny_gguf, dtype="fp32", device="cpu")
    assert seen[-1] is None  # not passed unless asked for
