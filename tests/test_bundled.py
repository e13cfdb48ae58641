"""Integration on the real bundled model (SmolLM2-135M): a neuron really rises, along a real frontier."""

import pytest

import reverie
from reverie import EPOConfig

pytestmark = pytest.mark.slow


def test_dream_raises_a_real_neuron_along_a_frontier(bundled, tmp_path):
    result = reverie.dream(
        bundled, "neuron:L3.N492", EPOConfig(iters=30, seed=0), out=tmp_path / "run", corpus=None
    )  # from the model alone: the search itself must climb
    h = result.history
    initial_best = h[h.iteration == 0]["activation"].max()
    front = result.frontier()
    assert front["activation"].max() > initial_best + 1.0  # far above the random start (seeds 0-2 reach 1.7-5.7)
    assert front["activation"].max() > 3 * max(initial_best, 0.5)
    assert front["cross_entropy"].max() - front["cross_entropy"].min() > 2.0  # a range of fluency
    assert len(front) >= 5
    assert (tmp_path / "run" / "frontier.json").exists()


def test_bundled_model_loads_from_cache_and_gguf():
    import time

    from reverie.lm.model import bundled_gguf

    t = time.perf_counter()
    model = reverie.load_model("bundled", dtype="fp32")
    assert time.perf_counter() - t < 10
    assert model.n_layers == 30 and model.adapter.d_mlp == 1536 and model.adapter.d_model == 576
    gguf = reverie.load_model(str(bundled_gguf()), dtype="fp32")
    ids = model.tokenizer("The cat sat on the mat", return_tensors="pt")["input_ids"]
    assert (model.hf(ids).logits - gguf.hf(ids).logits).abs().max() < 1e-3
