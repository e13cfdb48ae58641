"""SAE features: a small SAE trained here on the tiny model's activations, loaded from SAELens's layout,
and dreamed far above the best the corpus offers."""

from types import SimpleNamespace

import pytest
import torch

from reverie import EPOConfig, TargetError, dream, make_scorer, parse_target
from reverie.evidence.scan import ScanConfig, scan
from reverie.lm.sae import SAEFeature, SAEWeights, train_sae

HOOK = "blocks.1.hook_resid_pre"
TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house.",
    "In 1905 Einstein published four papers that changed physics, including special relativity.",
    "Rivers carry sediment from mountains to the sea, building deltas where the water slows down.",
    "She opened the letter, read it twice, and then walked out into the rain without a coat.",
]


def activations(model, texts=TEXTS):
    rows = []
    for text in texts:
        ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode(), model.capture([HOOK]) as cache:
            model.hf(input_ids=ids)
        rows.append(cache[HOOK][0].float())
    return torch.cat(rows)


@pytest.fixture(scope="module")
def sae_dir(tiny_llama, tmp_path_factory):
    x = activations(tiny_llama)
    sae = train_sae(x, HOOK, d_sae=64, l1=0.1, steps=400, batch_size=64, lr=3e-3)
    return sae.save(tmp_path_factory.mktemp("sae") / "tiny-sae"), x


def test_trained_sae_reconstructs_and_round_trips(sae_dir):
    folder, x = sae_dir
    sae = SAEWeights.load(folder)
    f = sae.encode(x)
    recon = f @ sae.W_dec + sae.b_dec
    unexplained = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert unexplained < 0.5  # it learned something
    assert 0 < (f > 0).float().sum(-1).mean() < 64 / 4  # and it is sparse
    assert sae.hook_name == HOOK and sae.threshold is None


def test_jumprelu_threshold():
    sae = SAEWeights(torch.eye(2), torch.zeros(2), torch.zeros(2), HOOK, threshold=torch.tensor([0.5, 2.0]))
    out = sae.encode(torch.tensor([[1.0, 1.0]]))
    assert out.tolist() == [[1.0, 0.0]]


def test_spec_errors(sae_dir, tiny_llama, tmp_path):
    folder, _ = sae_dir
    target = parse_target(f"sae:{folder}:F3")
    assert isinstance(target, SAEFeature) and target.spec == f"sae:{folder}:F3"
    with pytest.raises(TargetError, match="feature 64 does not exist"):
        make_scorer(tiny_llama, f"sae:{folder}:F64", EPOConfig())
    with pytest.raises(TargetError, match="is not an SAE folder"):
        parse_target(f"sae:{tmp_path}:F1")
    with pytest.raises(TargetError, match="cannot parse"):
        parse_target(f"sae:{folder}")
    wide = SAEWeights(torch.zeros(7, 4), torch.zeros(4), torch.zeros(7), HOOK)
    with pytest.raises(TargetError, match="7-dimensional inputs"):
        make_scorer(tiny_llama, SAEFeature(wide, 0), EPOConfig())
    elsewhere = SAEWeights(torch.zeros(7, 4), torch.zeros(4), torch.zeros(7), "blocks.40.hook_resid_pre")
    with pytest.raises(TargetError, match="does not have"):
        make_scorer(tiny_llama, SAEFeature(elsewhere, 0), EPOConfig())


def test_saelens_object_is_read(sae_dir, tiny_llama):
    """A SAELens SAE exposes W_enc, b_enc, b_dec, W_dec and cfg.hook_name (cfg.metadata.hook_name in v6)."""
    folder, x = sae_dir
    w = SAEWeights.load(folder)
    lens = SimpleNamespace(
        W_enc=w.W_enc,
        b_enc=w.b_enc,
        b_dec=w.b_dec,
        W_dec=w.W_dec,
        cfg=SimpleNamespace(metadata=SimpleNamespace(hook_name=HOOK), apply_b_dec_to_input=True),
    )
    target = SAEFeature(lens, 5)
    make_scorer(tiny_llama, target, EPOConfig())
    assert torch.allclose(target.value({HOOK: x[None]}), w.encode(x[-1:], [5])[:, 0])


def test_dreaming_a_feature_beats_the_corpus(sae_dir, tiny_llama, tmp_path):
    folder, x = sae_dir
    sae = SAEWeights.load(folder)
    feature = int(sae.encode(x).max(0).values.argmax())  # the feature the corpus drives hardest
    spec = f"sae:{folder}:F{feature}"
    (tmp_path / "c.txt").write_text(" ".join(TEXTS))
    data = scan(tiny_llama, [spec], str(tmp_path / "c.txt"), ScanConfig(window=8, top=5, chunk=32))
    best_window = float(data["activation"].max())
    assert best_window > 0
    result = dream(tiny_llama, spec, EPOConfig(population=4, children=16, top_k=64, length=8, iters=20))
    assert result.best()["activation"] > 2 * best_window
