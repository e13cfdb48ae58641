"""Proposals from the model itself: sampled starts, children drawn from the model's next-token
distribution, and candidates ranked with the model's log-probs (issue 19, search/proposals.py)."""

import numpy as np
import pytest
import torch

from reverie import EPOConfig, make_scorer
from reverie.search.epo import EPO
from reverie.search.proposals import sample_tokens
from reverie.search.selection import penalised
from reverie.search.starts import SAMPLES_PER_SLOT

SMALL = dict(population=4, children=16, top_k=64, length=8, iters=0, seed=0)


def test_sample_tokens_draws_from_the_nucleus_in_proportion():
    allowed = torch.tensor([10, 20, 30, 40])
    gen = torch.Generator().manual_seed(0)
    sure = torch.tensor([[0.96, 0.02, 0.01, 0.01]]).log().repeat(300, 1)
    assert (sample_tokens(sure, allowed, gen, top_p=0.95) == 10).all()
    two = torch.tensor([[0.05, 0.5, 0.05, 0.4]]).log().repeat(4000, 1)
    got = sample_tokens(two, allowed, gen, top_p=0.85)
    assert set(got.tolist()) == {20, 40}  # the 5% tokens lie outside the nucleus
    assert abs(float((got == 20).float().mean()) - 0.5 / 0.9) < 0.03


def new_tokens_logprob(scorer, parents, children, parent, pos):
    """Mean log p(child's new token | the parent's prefix) over children mutated after position 0."""
    logprobs = scorer.next_token_logprobs(list(parents))
    keep = pos > 0
    return float(
        torch.stack(
            [
                logprobs[p][q, (scorer.vocab.allowed == children[j, q]).nonzero()[0, 0]]
                for j, (p, q) in enumerate(zip(parent.tolist(), pos.tolist()))
                if keep[j]
            ]
        ).mean()
    )


@pytest.mark.slow
def test_sampled_starts_are_fluent_text_the_model_writes(bundled):
    random = EPO(make_scorer(bundled, "neuron:L3.N492", EPOConfig.paper(**SMALL)), EPOConfig.paper(**SMALL))
    config = EPOConfig(**SMALL, starts="sampled", junk_penalty=0.0)  # selection by L_λ alone, as checked below
    epo = EPO(make_scorer(bundled, "neuron:L3.N492", config), config)
    first = epo.history.frame(epo.vocab.decode)
    assert len(first) == SAMPLES_PER_SLOT * 4 and first["kept"].sum() >= 1
    assert epo.state.ce.mean() < 4.5 < 8.0 < random.state.ce.mean()
    # each slot starts at the sample that is best under its own λ
    f, ce = torch.tensor(first["activation"].to_numpy()), torch.tensor(first["cross_entropy"].to_numpy())
    assert torch.allclose(
        penalised(f, ce, epo.penalties).max(1).values, penalised(epo.state.f, epo.state.ce, epo.penalties).diagonal()
    )
    again = EPO(make_scorer(bundled, "neuron:L3.N492", config), config)
    assert torch.equal(again.state.population, epo.state.population)  # the seed fixes the samples


@pytest.mark.slow
def test_lm_children_take_tokens_the_model_finds_likely(bundled):
    def one_step(lm_children):
        config = EPOConfig(**{**SMALL, "iters": 1}, lm_children=lm_children, junk_penalty=0.0)
        scorer = make_scorer(bundled, "neuron:L3.N492", config)
        epo = EPO(scorer, config)
        parents = epo.state.population.clone()
        epo.step()
        h = epo.history.frame(epo.vocab.decode)
        children = torch.tensor(np.stack(h[h.iteration == 1]["ids"].to_list()))
        parent = torch.tensor(h[h.iteration == 1]["slot"].to_numpy(), dtype=torch.long)
        pos = (children != parents[parent]).int().argmax(1)
        return new_tokens_logprob(scorer, parents, children, parent, pos)

    gradient_only, from_the_model = one_step(0.0), one_step(1.0)
    assert from_the_model > gradient_only + 3.0, (from_the_model, gradient_only)


@pytest.mark.parametrize("scorer_name", ["packed", "plain"])
def test_lm_guidance_ranks_by_gradient_and_log_prob(tiny_llama, scorer_name):
    config = EPOConfig.paper(**SMALL, check_retokenization=False)
    scorer = make_scorer(tiny_llama, "neuron:L1.N7", config, scorer=scorer_name)
    prompts = list(EPO(scorer, config).state.population)
    lam = torch.full((len(prompts),), 0.5)
    logprobs = scorer.next_token_logprobs(prompts)
    assert all(lp[0].isnan().all() and not lp[1:].isnan().any() for lp in logprobs)  # no context at position 0
    plain = scorer.top_k(prompts, lam, 16)
    ruled = scorer.top_k(prompts, lam, 16, beta=1e6)  # β huge: the model's most likely tokens
    for lp, by_gradient, by_model in zip(logprobs, plain, ruled):
        likely = scorer.vocab.allowed[lp[1:].topk(16).indices]
        assert torch.equal(by_model[1:].sort(-1).values, likely.sort(-1).values)
        assert torch.equal(by_model[0], by_gradient[0])  # position 0 has no log-probs: gradient alone
        assert not torch.equal(by_model[1:].sort(-1).values, by_gradient[1:].sort(-1).values)


def test_lm_guidance_takes_the_same_candidates_on_both_scorers(tiny_llama):
    config = EPOConfig(**SMALL, check_retokenization=False)
    packed = make_scorer(tiny_llama, "neuron:L1.N7", config)
    plain = make_scorer(tiny_llama, "neuron:L1.N7", config, scorer="plain")
    prompts = list(EPO(packed, config).state.population)
    lam = torch.full((len(prompts),), 0.5)
    for a, b in zip(packed.top_k(prompts, lam, 16, beta=0.3), plain.top_k(prompts, lam, 16, beta=0.3)):
        overlap = (a[..., None] == b[..., None, :]).any(-1).float().mean()
        assert overlap > 0.95
    for a, b in zip(packed.next_token_logprobs(prompts), plain.next_token_logprobs(prompts)):
        torch.testing.assert_close(a[1:], b[1:], atol=1e-4, rtol=1e-4)


def test_options_are_checked():
    from reverie.errors import ConfigError

    for bad in (dict(starts="corpus"), dict(lm_children=1.5), dict(lm_guidance=-1.0), dict(pair_rate=2.0)):
        with pytest.raises(ConfigError):
            EPOConfig(**bad)


def test_pair_edits_set_the_next_token_to_the_models_continuation(tiny_llama):
    config = EPOConfig(**{**SMALL, "iters": 1}, pair_rate=1.0, check_retokenization=False)
    epo = EPO(make_scorer(tiny_llama, "neuron:L1.N7", config), config)
    parents = epo.state.population.clone()
    epo.step()
    h = epo.history.frame(epo.vocab.decode)
    children = torch.tensor(np.stack(h[h.iteration == 1]["ids"].to_list()))
    parent = torch.tensor(h[h.iteration == 1]["slot"].to_numpy(), dtype=torch.long)
    allowed = epo.vocab.allowed
    with torch.inference_mode():
        logits = tiny_llama.hf(input_ids=children).logits[..., allowed]
    follows = allowed[logits.argmax(-1)]  # [C, n]: the most likely token after each prefix
    differ = children != parents[parent]
    last = (differ.int() * torch.arange(children.shape[1])).argmax(1)
    pairs = differ.sum(1) == 2
    assert pairs.float().mean() > 0.7  # nearly every child changed two adjacent tokens
    rows = pairs.nonzero()[:, 0]
    assert torch.equal(children[rows, last[rows]], follows[rows, last[rows] - 1])
    assert bool((differ[rows, last[rows] - 1]).all())  # ...right after the swapped one


def test_beam_starts_hold_each_slots_best_full_length_candidate(tiny_llama):
    given = tuple(range(100, 108))
    config = EPOConfig(**SMALL, starts="beam", init_ids=((), given), check_retokenization=False)
    epo = EPO(make_scorer(tiny_llama, "neuron:L1.N7", config), config)
    first = epo.history.frame(epo.vocab.decode)
    assert (first["iteration"] == 0).all() and first["ids"].map(len).eq(8).all()  # full length only
    assert len(first) > 4 * 8  # more candidates than one sampled round would give
    f, ce = torch.tensor(first["activation"].to_numpy()), torch.tensor(first["cross_entropy"].to_numpy())
    held = penalised(epo.state.f, epo.state.ce, epo.penalties).diagonal()
    best = penalised(f, ce, epo.penalties).max(1).values
    assert torch.equal(epo.state.population[1], torch.tensor(given))  # a given start is kept
    assert torch.allclose(held[[0, 2, 3]], best[[0, 2, 3]])
    again = EPO(make_scorer(tiny_llama, "neuron:L1.N7", config), config)
    assert torch.equal(again.state.population, epo.state.population)  # the seed fixes the search


@pytest.mark.slow
def test_beam_starts_climb_the_objective_while_staying_fluent(bundled):
    def first_population(starts):
        config = EPOConfig(**SMALL, starts=starts)
        return EPO(make_scorer(bundled, "neuron:L13.N1333", config), config)

    sampled, beam = first_population("sampled"), first_population("beam")
    assert beam.state.ce.mean() < 5.0
    # under every slot's own λ the beam's start beats the best of the model's samples
    assert (
        penalised(beam.state.f, beam.state.ce, beam.penalties).diagonal()
        > penalised(sampled.state.f, sampled.state.ce, sampled.penalties).diagonal()
    ).all()


def test_the_defaults_are_data_starts_with_lm_children_and_paper_is_the_papers_epo():
    """The paired benchmark's winner is what a plain `EPOConfig()` runs; `paper()` and `gcg()` keep the
    paper's random starts and gradient-only children, and take any option on top."""
    assert (EPOConfig().starts, EPOConfig().lm_children) == ("data", 0.5)
    for config in (EPOConfig.paper(iters=3), EPOConfig.gcg(penalty=1.0)):
        assert (config.starts, config.lm_children) == ("random", 0.0)
    assert EPOConfig.gcg().population == 1 and EPOConfig.paper(starts="sampled", seed=3).starts == "sampled"
