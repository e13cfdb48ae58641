"""The EPO loop: seeding, selection, restarts, constraints, stopping."""

import math
import time

import pandas as pd
import pytest
import torch

import reverie
from reverie import EPOConfig, make_scorer
from reverie.search.epo import EPO
from reverie.search.selection import penalised

SMALL = dict(population=4, children=8, top_k=32, length=8, iters=5, seed=0)


def test_same_seed_same_history(tiny_llama):
    a = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**SMALL))
    b = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**SMALL))
    c = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**{**SMALL, "seed": 1}))
    pd.testing.assert_frame_equal(a.history, b.history)
    assert len(a.history) == 4 + 5 * 4 * 8
    assert not a.history["text"].equals(c.history["text"])
    d = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL))  # the defaults: beam starts, LM children
    e = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL))
    pd.testing.assert_frame_equal(d.history, e.history)
    assert not d.history["text"].equals(a.history["text"])


def test_activation_rises_and_selection_never_loses(tiny_llama):
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, "iters": 10, "restart_every": 0}))
    h = r.history
    assert h["activation"].max() > h[h.iteration == 0]["activation"].max()
    # without restarts, each slot's objective never decreases (parents compete with their children)
    penalties = r.config.slot_penalties()
    assert torch.all(
        penalised(r.state.f, r.state.ce, penalties).diagonal()
        >= penalised(
            torch.tensor(h[h.iteration == 0]["activation"].to_numpy()),
            torch.tensor(h[h.iteration == 0]["cross_entropy"].to_numpy()),
            penalties,
        ).diagonal()
        - 1e-6
    )


def test_children_differ_from_parent_in_one_position(tiny_llama):
    scorer = make_scorer(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL))
    epo = EPO(scorer, EPOConfig(**SMALL))
    parents = epo.state.population.clone()
    epo.step()
    kids = epo.history.frame(scorer.vocab.decode, since=0)
    for row in kids.itertuples():
        diff = (torch.tensor(row.ids) != parents[row.slot]).sum()
        assert diff <= 1
        assert all(int(t) in scorer.vocab.allowed_set for t in row.ids)


def test_restart_draws_penalty_from_range_and_fills_every_slot(tiny_llama):
    config = EPOConfig(**{**SMALL, "iters": 12, "restart_every": 3})
    scorer = make_scorer(tiny_llama, "neuron:L1.N7", config)
    epo = EPO(scorer, config)
    drawn = []
    for _ in range(12):
        step = epo.step()
        if step.restarted_with is not None:
            drawn.append(step.restarted_with)
            assert (step.state.population == step.state.population[0]).all()
        else:
            assert step.iteration % 3 != 0 or step.iteration == 12
    assert len(drawn) == 3  # at 3, 6, 9 — never at iteration 0 nor at the last one
    assert all(0.667 <= x <= 6.0 for x in drawn)
    assert len(set(drawn)) == 3  # really random, not a constant


def test_gcg_is_population_one(tiny_llama):
    config = EPOConfig.gcg(penalty=0.5, children=16, top_k=32, length=8, iters=4)
    r = reverie.dream(tiny_llama, "neuron:L1.N7", config)
    assert r.state.population.shape == (1, 8)
    assert len(r.history) == 1 + 4 * 16


def test_banned_string_is_never_kept(tiny_llama):
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**{**SMALL, "ban_strings": ("e",)}))
    kept = r.history[r.history.kept]
    valid = kept[kept.activation > -math.inf]
    assert not valid["text"].str.lower().str.contains("e").any()
    rejected = r.history[r.history.activation == -math.inf]
    assert rejected["text"].str.lower().str.contains("e").all()


def test_retokenization_check_and_allowed_tokens(tiny_llama):
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL))
    tok = tiny_llama.tokenizer
    special = set(tok.all_special_ids)
    for row in r.history[r.history.activation > -math.inf].itertuples():
        assert tok(row.text, add_special_tokens=False)["input_ids"] == list(row.ids)
        assert not special & set(row.ids)
        assert "\ufffd" not in row.text


def test_ascii_only_and_banned_tokens(tiny_llama):
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, "ascii_only": True, "ban_tokens": (" the",)}))
    the = tiny_llama.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    for row in r.history.itertuples():
        assert row.text.isascii()
        assert the not in list(row.ids)


def test_initial_prompt_sets_population_and_length(tiny_llama):
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, "init_prompt": "The cat sat on the mat today"}))
    first = r.history[r.history.iteration == 0]
    assert set(first["text"]) == {"The cat sat on the mat today"}
    assert r.state.population.shape[1] == len(first["ids"].iloc[0])


def test_time_budget_and_callback_stop_cleanly(tiny_llama):
    seen = []
    r = reverie.dream(
        tiny_llama,
        "neuron:L1.N7",
        EPOConfig(**{**SMALL, "iters": 100}),
        callback=lambda s: seen.append(s.iteration) or s.iteration < 3,
    )
    assert r.stopped == "callback" and seen == [1, 2, 3] and r.iterations == 3
    assert r.history["iteration"].max() == 3
    # after that first run (whose start compiles what scoring uses, and the budget counts the start)
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**{**SMALL, "iters": 1000, "time_budget": 0.5}))
    assert r.stopped == "time" and 0 < r.iterations < 1000


def test_time_budget_counts_the_start(tiny_llama, monkeypatch):
    # a beam start's search is part of the run: a budget it uses up leaves no time for iterations
    from reverie.scoring import PackedScorer

    logprobs_after = PackedScorer.logprobs_after

    def slow(*args, **kwargs):  # the beam's first next-token distributions take 0.5 s
        if not calls:
            time.sleep(0.5)
        calls.append(1)
        return logprobs_after(*args, **kwargs)

    calls = []
    monkeypatch.setattr(PackedScorer, "logprobs_after", slow)
    r = reverie.dream(
        tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, "iters": 1000, "time_budget": 0.4, "starts": "beam"})
    )
    assert r.stopped == "time" and r.iterations == 0


def test_ctrl_c_keeps_completed_iterations(tiny_llama):
    def interrupt(step):
        if step.iteration == 2:
            raise KeyboardInterrupt

    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, "iters": 50}), callback=interrupt)
    assert r.stopped == "interrupted" and r.iterations == 2
    assert sorted(r.history.iteration.unique()) == [0, 1, 2]


def test_scores_are_fp32_under_bf16(tokenizer):
    from conftest import build_tiny

    model = build_tiny("llama", tokenizer)
    model.hf.to(torch.bfloat16)
    scorer = make_scorer(model, "neuron:L1.N7", EPOConfig(**SMALL))
    ids = scorer.vocab.random_prompts(16, 8, torch.Generator().manual_seed(0))
    f, ce = scorer.score(ids)
    assert f.dtype == ce.dtype == torch.float32
    # fp32 cross-entropy is not stuck on the bf16 grid (steps of 1/32 between 4 and 8)
    assert len(set(ce.tolist())) == len(ce)
    assert any(abs(x * 32 - round(x * 32)) > 1e-3 for x in ce.tolist())


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(population=0), "population"),
        (dict(length=1), "length"),
        (dict(penalty_min=5, penalty_max=1), "penalty_min"),
        (dict(population=2, penalties=(1.0,)), "penalties"),
    ],
)
def test_config_errors(tiny_llama, bad, message):
    with pytest.raises(reverie.ConfigError, match=message):
        reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**{**SMALL, **bad}))


def test_top_k_schedule_grows_k(tiny_llama):
    config = EPOConfig.paper(
        population=2,
        children=16,
        top_k=64,
        top_k_start=1,
        length=6,
        iters=11,
        restart_every=0,
        check_retokenization=False,
    )
    scorer = make_scorer(tiny_llama, "neuron:L1.N3", config)
    epo = EPO(scorer, config)
    assert [epo.k_at(t) for t in (0, 5, 10)] == [1, 32, 64]
    top = scorer.top_k(list(epo.state.population), epo.penalties, 64)
    parents = epo.state.population.clone()
    epo.step()
    children = torch.tensor(
        [list(map(int, i)) for i in epo.history.frame(scorer.vocab.decode).query("iteration == 1")["ids"]]
    )
    for j, child in enumerate(children):
        slot = j // 16
        changed = (child != parents[slot]).nonzero()
        for p in changed[:, 0].tolist():  # k = 1 at iteration 0: only each position's best token
            assert child[p] == top[slot][p, 0]
    with pytest.raises(reverie.ConfigError, match="cannot exceed"):
        EPOConfig(top_k=8, top_k_start=9)


def test_adaptive_restart_waits_for_stagnation(tiny_llama, tmp_path):
    config = EPOConfig(
        population=3,
        children=2,
        top_k=2,
        length=6,
        iters=40,
        restart_every=3,
        adaptive_restart=True,
        check_retokenization=False,
    )
    scorer = make_scorer(tiny_llama, "neuron:L1.N3", config)
    epo = EPO(scorer, config)
    stale, restarts = [0], []

    def record(step):
        stale.append(step.state.stale)
        if step.restarted_with is not None:
            restarts.append(step.iteration)

    epo.run(record)
    assert restarts  # it did stagnate here (k = 2)
    for t in restarts:
        assert stale[t - 1] == 2 and stale[t] == 0  # 3 iterations without improvement
    for t in range(1, 40):
        if t not in restarts:
            assert stale[t] in (0, stale[t - 1] + 1) and stale[t] < 3
    # the stale count survives a checkpoint: a resumed run is the same run
    whole = reverie.dream(tiny_llama, "neuron:L1.N3", config, out=tmp_path / "a").history
    reverie.dream(
        tiny_llama, "neuron:L1.N3", config, out=tmp_path / "b", callback=lambda s: s.iteration < 7, checkpoint_every=1
    )
    resumed = reverie.resume(tmp_path / "b", model=tiny_llama).history
    pd.testing.assert_frame_equal(whole, resumed)


def test_gradients_are_taken_once_per_distinct_prompt(tiny_llama):
    """Slots sharing a prompt share its gradient pass, a prompt that survives or moves to another slot
    keeps its gradient, and every slot still takes its top-k under its own λ."""
    config = EPOConfig(
        population=4, children=8, top_k=16, length=6, iters=5, restart_every=0, check_retokenization=False
    )
    scorer = make_scorer(tiny_llama, "neuron:L1.N3", config)
    epo = EPO(scorer, config)
    packed = scorer.scorer  # the PackedScorer inside the out-of-memory back-off
    passes, parts = [], packed.gradient_parts
    one_pass = packed.gradient_pass
    packed.gradient_pass = lambda ids, keep=False: (
        passes.append({tuple(r) for r in ids.tolist()}) or one_pass(ids, keep)
    )
    population = epo.state.population.clone()
    population[1], population[3] = population[0], population[2]
    prompts = [tuple(r) for r in population.tolist()]

    top = scorer.top_k(list(population), epo.penalties, 16)
    assert passes == [{prompts[0], prompts[2]}]
    df, dce = parts(population)
    for got, d_f, d_ce, lam in zip(top, df, dce, epo.penalties):
        expected = scorer.vocab.allowed[(d_f - lam * d_ce).topk(16).indices]
        assert torch.equal(got.sort(-1).values, expected.sort(-1).values)

    moved = population[[2, 0, 0, 3]].clone()  # slot 0 takes slot 2's prompt; slot 3 gets a new one
    moved[3, 0] = (
        int(scorer.vocab.allowed[0]) if moved[3, 0] != scorer.vocab.allowed[0] else int(scorer.vocab.allowed[1])
    )
    del passes[:]
    scorer.top_k(list(moved), epo.penalties, 16)
    assert passes == [{tuple(moved[3].tolist())}]
