"""Insertion and deletion: children one edit from their parent, lengths within bounds, resumable runs."""

import pandas as pd
import pytest
import torch

import reverie
from reverie import ConfigError, EPOConfig, make_scorer
from reverie.search.edits import PAD, edit_children, pad, unpad
from reverie.search.epo import EPO

CONFIG = EPOConfig(
    population=4,
    children=16,
    top_k=32,
    length=6,
    iters=12,
    insert_rate=0.3,
    delete_rate=0.3,
    min_length=4,
    max_length=8,
    restart_every=5,
    check_retokenization=False,
)


def one_edit(parent, child):
    """swap, insert or delete: the child is the parent with exactly one token changed, added or removed."""
    p, c = list(parent), list(child)
    if len(p) == len(c):
        return sum(a != b for a, b in zip(p, c)) <= 1
    longer, shorter = (c, p) if len(c) > len(p) else (p, c)
    return len(longer) == len(shorter) + 1 and any(longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer)))


def test_edit_children_are_one_edit_away_and_within_bounds():
    population = pad([torch.arange(10, 16), torch.arange(20, 24)])  # lengths 6 and 4
    top = [
        torch.arange(100, 106)[:, None] * 10 + torch.arange(8),
        torch.arange(200, 204)[:, None] * 10 + torch.arange(8),
    ]
    kids, parent, pos = edit_children(population, top, 200, 8, torch.Generator().manual_seed(0), 0.4, 0.4, 4, 6)
    rows = unpad(kids)
    sizes = {(int(p), len(r)) for p, r in zip(parent, rows)}
    assert sizes == {(0, 5), (0, 6), (1, 4), (1, 5)}  # no insertion past 6, no deletion below 4
    for p, r in zip(parent.tolist(), rows):
        assert one_edit(unpad(population)[p].tolist(), r.tolist())
    assert (kids[parent == 1][:, 5:] == PAD).all()


def test_dream_with_insertions_and_deletions(tiny_llama):
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", CONFIG)
    epo = EPO(scorer, CONFIG)
    parents = {0: epo.state.population.clone()}
    epo.run(lambda step: parents.__setitem__(step.iteration, step.state.population.clone()))
    history = epo.history.frame(scorer.vocab.decode)
    n = history["ids"].map(len)
    assert n.min() >= 4 and n.max() <= 8 and n.nunique() > 2  # lengths really vary, within bounds
    for row in history[history["iteration"] > 0].itertuples():
        parent = [t for t in parents[row.iteration - 1][row.slot].tolist() if t != PAD]
        assert one_edit(parent, list(row.ids))
    f, ce = scorer.score(torch.tensor([list(history["ids"].iloc[-1])]))  # memo and history agree with a fresh score
    assert float(f[0]) == pytest.approx(float(history["activation"].iloc[-1]), abs=1e-4)
    assert float(ce[0]) == pytest.approx(float(history["cross_entropy"].iloc[-1]), abs=1e-4)
    assert history["activation"].max() > history[history["iteration"] == 0]["activation"].max()


def test_variable_length_run_resumes_identically(tiny_llama, tmp_path):
    whole = reverie.dream(tiny_llama, "neuron:L1.N5", CONFIG).history
    reverie.dream(
        tiny_llama, "neuron:L1.N5", CONFIG, out=tmp_path / "r", callback=lambda s: s.iteration < 7, checkpoint_every=1
    )
    resumed = reverie.resume(tmp_path / "r", model=tiny_llama).history
    assert [list(i) for i in resumed["ids"]] == [list(i) for i in whole["ids"]]
    pd.testing.assert_series_equal(resumed["activation"], whole["activation"])


def test_length_bounds_are_checked():
    with pytest.raises(ConfigError, match="min_length"):
        EPOConfig(length=6, insert_rate=0.1, min_length=7)
    with pytest.raises(ConfigError, match="sum <= 1"):
        EPOConfig(insert_rate=0.6, delete_rate=0.6)
