"""The speed work does not change the search: in fp32, reverie's EPO (gradients once per prompt, children
over their parent's prefix, memo, fused norms, tiled cross-entropy) walks the same path as the reference
path in bench/reference.py (one full forward per child, one-hot gradients, no reuse): same populations
at every iteration, same scores. bench/quality.py measures the bf16 case, where rounding lets paths part."""

import importlib.util
from pathlib import Path

import torch

from reverie import EPOConfig
from reverie.runs.dream import _setup
from reverie.search.epo import EPO

_spec = importlib.util.spec_from_file_location("reference", Path(__file__).parents[1] / "bench" / "reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _walk(model, reference_path: bool):
    config = EPOConfig(population=4, children=16, top_k=64, length=8, iters=12, restart_every=5, seed=3)
    _, scorer = _setup(model, "neuron:L1.N7", config)
    if reference_path:
        scorer.__class__ = reference.ReferenceScorer
    epo = (reference.ReferenceEPO if reference_path else EPO)(scorer, config)
    steps = []
    epo.run(lambda s: steps.append((s.state.population.clone(), s.state.f.clone(), s.state.ce.clone(),
                                    s.restarted_with)))
    return steps, epo.history


def test_reverie_walks_the_reference_path(tiny_llama):
    fast, fast_history = _walk(tiny_llama, reference_path=False)
    slow, slow_history = _walk(tiny_llama, reference_path=True)
    assert len(fast) == len(slow) == 12
    assert sum(r is not None for *_, r in fast) == 2            # the walk crosses restarts
    for i, ((pa, fa, ca, ra), (pb, fb, cb, rb)) in enumerate(zip(fast, slow), 1):
        assert torch.equal(pa, pb), f"populations part at iteration {i}"
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ca, cb, rtol=1e-4, atol=1e-4)
        assert ra == rb
    # every child too, not only the survivors
    rows_fast, rows_slow = list(fast_history.items()), list(slow_history.items())
    assert [k for k, *_ in rows_fast] == [k for k, *_ in rows_slow]
    f = torch.tensor([r[1] for r in rows_fast])
    torch.testing.assert_close(f, torch.tensor([r[1] for r in rows_slow]), rtol=1e-4, atol=1e-4)
    valid = f.isfinite()              # a prompt failing a constraint gets f = −∞; reverie skips its CE
    assert 0 < valid.sum() < len(f)
    torch.testing.assert_close(torch.tensor([r[2] for r in rows_fast])[valid],
                               torch.tensor([r[2] for r in rows_slow])[valid], rtol=1e-4, atol=1e-4)
    # and the activation climbed, so the walk went somewhere
    assert fast[-1][1].max() > torch.tensor([r[1] for r in rows_fast[:4]]).max()
