"""The fast path is the paper's algorithm: in fp32, EPO with the PackedScorer (gradients once per prompt,
children over their parent's prefix, fused norms, tiled cross-entropy, the C attention kernel) takes the
same steps as EPO with the PlainScorer (a full forward per prompt, one-hot gradients, nothing reused):
the same populations at every iteration, the same children, the same scores. bench/quality.py measures
the bf16 case, where rounding lets the paths part."""

import pytest
import torch

from conftest import FAMILIES, build_tiny
from reverie import EPO, EPOConfig, make_scorer


def walk(model, scorer: str, config: EPOConfig, target: str):
    epo = EPO(make_scorer(model, target, config, scorer=scorer), config)
    steps = []
    epo.run(
        lambda s: steps.append((s.state.population.clone(), s.state.f.clone(), s.state.ce.clone(), s.restarted_with))
    )
    return steps, list(epo.history.items())


def assert_same_walk(
    model, config: EPOConfig, target: str = "neuron:L1.N7", restarts: int = 2, same_children: float = 1.0
):
    fast, fast_rows = walk(model, "packed", config, target)
    slow, slow_rows = walk(model, "plain", config, target)
    assert len(fast) == len(slow) == config.iters
    assert sum(r is not None for *_, r in fast) == restarts  # the walk crosses restarts
    for i, ((pa, fa, ca, ra), (pb, fb, cb, rb)) in enumerate(zip(fast, slow), 1):
        assert torch.equal(pa, pb), f"populations part at iteration {i}"
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ca, cb, rtol=1e-4, atol=1e-4)
        assert ra == rb
    # every child too, not only the survivors (where two candidates' gradients tie within fp32 rounding
    # at the top-k boundary, the two paths may draw a different child that never enters a population)
    assert len(fast_rows) == len(slow_rows)
    same = torch.tensor([a[0] == b[0] for a, b in zip(fast_rows, slow_rows)])
    assert same.float().mean() >= same_children, f"{int((~same).sum())} of {len(same)} children differ"
    f = torch.tensor([r[1] for r in fast_rows])
    torch.testing.assert_close(f[same], torch.tensor([r[1] for r in slow_rows])[same], rtol=1e-4, atol=1e-4)
    valid = f.isfinite() & same  # a prompt failing a constraint gets f = −∞ and no CE
    torch.testing.assert_close(
        torch.tensor([r[2] for r in fast_rows])[valid],
        torch.tensor([r[2] for r in slow_rows])[valid],
        rtol=1e-4,
        atol=1e-4,
    )
    # and the activation climbed, so the walk went somewhere
    assert fast[-1][1].max() > f[: config.population].max()
    return f


def test_packed_walks_the_plain_path(tiny_llama):
    config = EPOConfig.paper(population=4, children=16, top_k=64, length=8, iters=12, restart_every=5, seed=3)
    f = assert_same_walk(tiny_llama, config)
    assert (~f.isfinite()).any()  # some children failed re-tokenisation


def test_packed_walks_the_plain_path_in_a_template_with_edits(tiny_llama):
    config = EPOConfig.paper(
        population=4,
        children=12,
        top_k=32,
        length=6,
        iters=8,
        restart_every=4,
        seed=1,
        template="Once upon a time {prompt} and then",
        insert_rate=0.2,
        delete_rate=0.2,
    )
    assert_same_walk(tiny_llama, config, restarts=1)


def test_packed_walks_the_plain_path_with_proposals_from_the_model(tiny_llama):
    """Sampled starts, LM children, LM-guided ranking and pair edits: both scorers take the same steps."""
    config = EPOConfig(
        population=4,
        children=12,
        top_k=32,
        length=6,
        iters=6,
        restart_every=3,
        seed=2,
        starts="sampled",
        lm_children=0.4,
        lm_guidance=0.3,
        pair_rate=0.3,
    )
    assert_same_walk(tiny_llama, config, restarts=1, same_children=0.95)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"llama"}))
def test_packed_walks_the_plain_path_on_every_family(family, tokenizer):
    config = EPOConfig.paper(
        population=3, children=8, top_k=32, length=6, iters=6, restart_every=3, seed=0, check_retokenization=False
    )
    assert_same_walk(build_tiny(family, tokenizer), config, restarts=1, same_children=0.97)
