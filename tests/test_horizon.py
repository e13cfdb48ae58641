"""The cross-entropy horizon (`EPOConfig.ce_horizon`): an approximation of the children's cross-entropy
for speed, whose runs still record only the model's own scores."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import reverie
from conftest import build_tiny, mutants
from reverie import ConfigError, EPOConfig, make_scorer
from reverie.scoring import Lockstep
from reverie.search.epo import EPO
from reverie.search.frontier import pareto


def token_logprobs(scorer, ids: torch.Tensor) -> torch.Tensor:
    """log p(token j | what precedes it) for j = first .. n − 1, from the model's plain forward: [B, n − first]."""
    o, n = scorer.objective, ids.shape[1]
    L = len(o.before)
    full = o.in_template(ids)[:, : L + n]
    with torch.no_grad():
        logprobs = scorer.model.hf(full).logits.float().log_softmax(-1)
    j = torch.arange(o.first, n)
    return logprobs[:, L + j - 1].gather(-1, ids[:, j, None])[..., 0]


@pytest.mark.parametrize("template", [None, "Once upon a time {prompt}"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_horizon_takes_a_childs_later_terms_from_its_parent(family, template, tokenizer):
    """With horizon h, a child's cross-entropy is its own terms for its tokens up to its mutated position
    + h and its parent's after that; its activation is exact; a horizon reaching the end is exact."""
    model = build_tiny(family, tokenizer)
    length = 7
    config = EPOConfig(length=length, batch_size=4, template=template)
    exact = make_scorer(model, "neuron:L0.N5", config)
    tops, kids, parent, pos = mutants(exact, parents=3, children=20, length=length, seed=1)
    f0, ce0 = exact.score(kids)
    own, theirs = token_logprobs(exact, kids), token_logprobs(exact, tops)[parent]
    j = torch.arange(exact.objective.first, length)
    for h in (1, 2, 3):
        scorer = make_scorer(model, "neuron:L0.N5", replace(config, ce_horizon=h))
        assert scorer.approximates
        f, ce = scorer.score_children(tops, kids, parent, pos)
        expected = -torch.where(j[None] <= pos[:, None] + h, own, theirs).sum(1) / len(j)
        assert torch.allclose(f, f0, atol=1e-4, rtol=1e-4)
        assert torch.allclose(ce, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(ce, ce0, atol=1e-3)  # an approximation: the later terms moved
    whole = make_scorer(model, "neuron:L0.N5", replace(config, ce_horizon=length))
    assert torch.allclose(whole.score_children(tops, kids, parent, pos)[1], ce0, atol=1e-4, rtol=1e-4)


def test_a_horizon_applies_only_above_the_targets_block(tiny_llama):
    """A target in the last block, or one that may read the logits, needs every child's every state: the
    horizon then changes nothing. The plain scorer and targets dreamed together refuse it."""
    for spec in ("neuron:L1.N5", 'logit:" the"'):
        scorer = make_scorer(tiny_llama, spec, EPOConfig(length=6, ce_horizon=1))
        assert not scorer.approximates
        tops, kids, parent, pos = mutants(scorer, parents=2, children=10, length=6, seed=2)
        f, ce = scorer.score_children(tops, kids, parent, pos)
        f0, ce0 = scorer.score(kids)
        assert torch.allclose(ce, ce0, atol=1e-4, rtol=1e-4) and torch.allclose(f, f0, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="horizon"):
        make_scorer(tiny_llama, "neuron:L0.N5", EPOConfig(length=6, ce_horizon=1, scorer="plain"))
    with pytest.raises(ConfigError, match="horizon"):
        make_scorer(tiny_llama, "neuron:L0.N5", EPOConfig(length=6, ce_horizon=1), lockstep=Lockstep())
    with pytest.raises(ConfigError, match="ce_horizon"):
        EPOConfig(ce_horizon=0)


def test_a_run_with_a_horizon_records_only_the_models_own_scores(tiny_llama):
    """Selection sees approximate children; the members it keeps are scored again in full, and the history
    keeps the model's own cross-entropy for every row it gives one (the others: NaN, never on a frontier).
    The activation still rises."""
    config = EPOConfig.paper(population=4, children=8, top_k=32, length=8, iters=6, seed=0, ce_horizon=1)
    scorer = make_scorer(tiny_llama, "neuron:L0.N5", config)
    assert scorer.approximates
    epo = EPO(scorer, config)
    epo.run()
    h = epo.history.frame(scorer.vocab.decode)
    exact = make_scorer(tiny_llama, "neuron:L0.N5", EPOConfig.paper(length=8))
    valid = h[h["cross_entropy"].notna()]
    f, ce = exact.score(torch.tensor(np.stack(valid["ids"].to_list())))
    assert torch.allclose(ce, torch.tensor(valid["cross_entropy"].to_numpy()), atol=1e-4, rtol=1e-4)
    assert torch.allclose(f, torch.tensor(valid["activation"].to_numpy()), atol=1e-4, rtol=1e-4)
    kept = h[(h["iteration"] > 0) & h["kept"]]
    assert len(kept) and kept["cross_entropy"].notna().all()  # every member's score is the model's own
    left = h[(h["iteration"] > 0) & ~h["kept"] & torch.isfinite(torch.tensor(h["activation"].to_numpy())).numpy()]
    assert left["cross_entropy"].isna().any()  # children selection did not keep: their approximation not recorded
    assert left["cross_entropy"].notna().any()  # ...but those that may be on the frontier are scored in full
    f_pop, ce_pop = exact.score(epo.state.population)
    assert torch.allclose(epo.state.ce, ce_pop, atol=1e-4, rtol=1e-4)
    assert h["activation"].max() > h[h["iteration"] == 0]["activation"].max()
    assert math.isfinite(float(pareto(h)["cross_entropy"].max()))


def test_the_command_line_dreams_with_a_horizon_and_every_file_stays_strict(monkeypatch, capsys, tiny_dir, tmp_path):
    """`reverie dream --ce-horizon 1` runs, resumes, and writes its frontier, report and JSON files with no
    NaN (the children whose cross-entropy it left approximate are in the history only)."""
    from test_cli import SMALL, run

    out = tmp_path / "run"
    args = ["dream", "--model", tiny_dir, "--target", "neuron:L0.N5", "--ce-horizon", "1", "--out", out, *SMALL]
    code, printed, err = run(monkeypatch, capsys, *args)
    assert code in (0, None), err
    assert "frontier of neuron:L0.N5" in printed
    assert json.loads((out / "config.json").read_text())["epo"]["ce_horizon"] == 1
    code, printed, err = run(monkeypatch, capsys, "dream", "--resume", out, "--iters", "5", "--quiet")
    assert code in (0, None), err
    history = reverie.load_run(out).history
    assert history["iteration"].max() == 5 and history["cross_entropy"].isna().any()
    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda c, name=path.name: pytest.fail(f"{name} holds {c}"))
