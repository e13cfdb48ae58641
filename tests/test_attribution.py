"""Causal token attribution finds the tokens that cause the activation."""

import sys

import pytest
import torch

from reverie import Custom
from reverie.evidence.attribution import attribute


def test_only_the_causal_token_matters(tiny_llama):
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.hook_resid_pre"  # the embeddings: position 3 alone decides the value
    target = Custom(lambda cache: cache[hook][:, 3].float() @ w, hooks=(hook,), name="token3")
    table = attribute(tiny_llama, target, "The cat sat on the mat by the door", k=8)
    assert list(table.position) == list(range(len(table)))
    others = table[table.position != 3]
    assert others.drop_worst.abs().max() < 1e-5 and others.drop_best.abs().max() < 1e-5
    three = table[table.position == 3].iloc[0]
    assert three.best_activation - three.worst_activation > 0.01  # substitutes there really change it
    assert three.best_activation > three.baseline  # the gradient's candidates point upwards
    assert three.drop_best == pytest.approx(three.baseline - three.best_activation)
    assert len(three.substitutes) == 8


def test_cli_attribute(monkeypatch, capsys, tiny_dir, tmp_path):
    from reverie.cli.app import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "reverie",
            "attribute",
            "--model",
            str(tiny_dir),
            "--target",
            "neuron:L1.N5",
            "--prompt",
            "The cat sat on the mat",
            "-k",
            "4",
            "--export",
            str(tmp_path / "a.csv"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None) and "neuron:L1.N5: activation" in out
    assert (tmp_path / "a.csv").read_text().count("\n") == 7  # header + 6 tokens


def test_each_substitute_scores_as_the_whole_prompt_would(tiny_llama):
    """Attribution scores the variants from their swapped token on (the children's fast path); each value
    is the activation of the whole variant prompt scored on its own."""
    from reverie import EPOConfig, make_scorer

    ids = tiny_llama.tokenizer("The cat sat on the mat", add_special_tokens=False)["input_ids"]
    table = attribute(tiny_llama, "neuron:L0.N5", ids, k=4)
    plain = make_scorer(
        tiny_llama, "neuron:L0.N5", EPOConfig(length=len(ids), check_retokenization=False), scorer="plain"
    )
    variants, values = [], []
    for row in table.itertuples():
        for text, activation in row.substitutes:
            token = tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(token) == 1:
                v = list(ids)
                v[row.position] = token[0]
                variants.append(v)
                values.append(activation)
    assert len(variants) > 10
    f, _ = plain.score(torch.tensor(variants))
    assert torch.allclose(f, torch.tensor(values), atol=1e-4)
