"""Causal token attribution finds the tokens that cause the activation."""

import sys

import pytest
import torch

from reverie import Custom
from reverie.evidence.attribution import attribute


def test_only_the_causal_token_matters(tiny_llama):
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.hook_resid_pre"                       # the embeddings: position 3 alone decides the value
    target = Custom(lambda cache: cache[hook][:, 3].float() @ w, hooks=(hook,), name="token3")
    table = attribute(tiny_llama, target, "The cat sat on the mat by the door", k=8)
    assert list(table.position) == list(range(len(table)))
    others = table[table.position != 3]
    assert others.drop_worst.abs().max() < 1e-5 and others.drop_best.abs().max() < 1e-5
    three = table[table.position == 3].iloc[0]
    assert three.best_activation - three.worst_activation > 0.01  # substitutes there really change it
    assert three.best_activation > three.baseline                 # the gradient's candidates point upwards
    assert three.drop_best == pytest.approx(three.baseline - three.best_activation)
    assert len(three.substitutes) == 8


def test_cli_attribute(monkeypatch, capsys, tiny_dir, tmp_path):
    from reverie.cli.app import main
    monkeypatch.setattr(sys, "argv", ["reverie", "attribute", "--model", str(tiny_dir), "--target", "neuron:L1.N5",
                                      "--prompt", "The cat sat on the mat", "-k", "4",
                                      "--export", str(tmp_path / "a.csv")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None) and "neuron:L1.N5: activation" in out
    assert (tmp_path / "a.csv").read_text().count("\n") == 7   # header + 6 tokens
