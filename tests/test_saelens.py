"""SAEs through SAELens itself: standard, JumpReLU and TopK SAEs built and saved by SAELens read the same
feature values in reverie as SAELens's own `encode`; SAEs by name (`sae:RELEASE/SAE_ID:F123`,
`neuronpedia:MODEL/SOURCE/INDEX`) resolve through SAELens's directory and, offline, fail at once with one line.
No test downloads anything."""

import subprocess
import sys

import pytest
import torch

pytest.importorskip("sae_lens")

from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from reverie import EPOConfig, TargetError, make_scorer, parse_target
from reverie.cli.app import main
from reverie.lm import saelens
from reverie.lm.sae import SAEFeature, SAEWeights

HOOK = "blocks.1.hook_resid_pre"
GEMMA = "sae:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical:F123"
TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house.",
    "In 1905 Einstein published four papers that changed physics, including special relativity.",
]

# name -> (SAE class, config class, config extras)
KINDS = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "standard-layer-norm": (StandardSAE, StandardSAEConfig, {"normalize_activations": "layer_norm"}),
    "standard-norm-rescale": (StandardSAE, StandardSAEConfig, {"normalize_activations": "constant_norm_rescale"}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 4}),
    "topk-rescaled": (TopKSAE, TopKSAEConfig, {"k": 4, "rescale_acts_by_decoder_norm": True}),
}


@pytest.fixture(scope="module")
def acts(tiny_llama):
    """The tiny llama's activations at HOOK, every position of TEXTS: [N, 64], through reverie's capture."""
    rows = []
    for text in TEXTS:
        ids = torch.tensor([tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode(), tiny_llama.capture([HOOK]) as cache:
            tiny_llama.hf(input_ids=ids)
        rows.append(cache[HOOK][0].float())
    return torch.cat(rows)


def random_sae(name, d_in=64, d_sae=32, hook=HOOK, model_name="tiny-llama", seed=0):
    """A SAELens SAE of kind `name` with random weights (SAELens starts b_enc and thresholds at 0)."""
    cls, config, extra = KINDS[name]
    sae = cls(config(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook, model_name=model_name), **extra))
    gen = torch.Generator().manual_seed(seed)
    scale = {"W_enc": 3.0, "W_dec": 0.3, "b_enc": 0.1, "b_dec": 0.01}  # the tiny llama's activations are ~0.03
    with torch.no_grad():
        for pname, p in sae.named_parameters():
            if pname == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale[pname])
    return sae


@pytest.mark.parametrize("name", list(KINDS))
def test_reverie_reads_what_saelens_encodes(name, acts, tiny_llama, tmp_path):
    sae = random_sae(name)
    sae.save_model(tmp_path / name)
    with torch.no_grad():
        expected = sae.encode(acts)  # [N, 32]
    assert 0 < int((expected[:, 3] != 0).sum()) or name.startswith("topk")
    assert 0 < int((expected != 0).sum()) < expected.numel()  # the activation function does something

    for target in (parse_target(f"sae:{tmp_path / name}:F3"), SAEFeature(sae, 3)):
        assert target.hooks == (HOOK,)
        make_scorer(tiny_llama, target, EPOConfig())  # prepare: fits the tiny llama
        got = target.value({HOOK: acts[:, None, :]})  # every row as a prompt of one token
        torch.testing.assert_close(got, expected[:, 3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(target.weights.encode(acts), expected, rtol=1e-5, atol=1e-5)
    w = SAEWeights.load(tmp_path / name)
    assert w.architecture == name.split("-")[0] and w.model_name == "tiny-llama"
    if name.startswith("topk"):
        assert w.k == 4


def test_reverie_saves_what_saelens_loads(acts, tmp_path):
    """SAEWeights.save writes SAELens's layout: SAELens loads it back as the same SAE."""
    from sae_lens import SAE

    for name in ("standard", "jumprelu", "topk"):
        w = SAEWeights.from_saelens(random_sae(name))
        w.save(tmp_path / name)
        back = SAE.load_from_disk(tmp_path / name)
        assert type(back).__name__ == KINDS[name][0].__name__
        with torch.no_grad():
            torch.testing.assert_close(back.encode(acts), w.encode(acts), rtol=1e-5, atol=1e-5)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty hub cache: nothing can be downloaded or found."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_a_release_offline_names_what_to_download(offline):
    with pytest.raises(TargetError) as e:
        parse_target(GEMMA)
    msg = str(e.value)
    assert "\n" not in msg
    assert "google/gemma-scope-2b-pt-res" in msg and "layer_12/width_16k/average_l0_82" in msg
    assert "save_model" in msg and "sae:FOLDER:F123" in msg


def test_an_unknown_release_suggests_close_names(offline):
    with pytest.raises(TargetError) as e:
        parse_target("sae:gemma-scope-2b-pt-res-canonicl/layer_12/width_16k/canonical:F1")
    assert "\n" not in str(e.value) and "close: gemma-scope-2b-pt-res-canonical" in str(e.value)
    with pytest.raises(TargetError, match="close: layer_12/width_16k/canonical"):
        parse_target("sae:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonicl:F1")
    with pytest.raises(TargetError, match="name one as gemma-scope-2b-pt-res-canonical/SAE_ID"):
        parse_target("sae:gemma-scope-2b-pt-res-canonical:F1")


def test_a_neuronpedia_id_resolves_through_the_directory(offline):
    release, sae_id, feature = saelens.neuronpedia("gemma-2-2b/12-gemmascope-res-16k/1234")
    assert (release, sae_id, feature) == ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", 1234)
    assert saelens.directory()[release].neuronpedia_id[sae_id] == "gemma-2-2b/12-gemmascope-res-16k"
    assert saelens.model_of(release) == "gemma-2-2b"
    with pytest.raises(TargetError, match="sae:FOLDER:F1234"):  # parsed as its SAE by name: offline, one line
        parse_target("neuronpedia:gemma-2-2b/12-gemmascope-res-16k/1234")
    with pytest.raises(TargetError, match="close: gemma-2-2b/12-gemmascope-res-16k"):
        parse_target("neuronpedia:gemma-2-2b/12-gemmascope-res-16/1234")


def test_a_cached_release_loads_offline(offline, acts, tiny_llama, tmp_path):
    """A release in the hub cache (faked here: a random SAE where gpt2-small-res-jb's would be) loads offline."""
    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sae = random_sae("standard", seed=1)
    sae.save_model(repo / "snapshots" / commit / HOOK)
    assert constants.HF_HUB_CACHE == str(tmp_path / "hub")
    target = parse_target(f"sae:gpt2-small-res-jb/{HOOK}:F3")
    assert target.spec == f"sae:gpt2-small-res-jb/{HOOK}:F3" and target.weights.model_name == "gpt2-small"
    assert parse_target("neuronpedia:gpt2-small/1-res-jb/3").spec == target.spec
    make_scorer(tiny_llama, target, EPOConfig())  # the fake fits the tiny llama: same width, same hook
    with torch.no_grad():
        torch.testing.assert_close(target.value({HOOK: acts[:, None, :]}), sae.encode(acts)[:, 3])


@pytest.mark.parametrize("hook", ["blocks.12.hook_resid_post", "blocks.1.hook_resid_pre"])
def test_a_gemma_scope_sae_on_another_model_is_one_line(hook, tiny_llama, tmp_path):
    random_sae("jumprelu", d_in=2304, d_sae=16, hook=hook, model_name="gemma-2-2b").save_model(tmp_path / "gs")
    with pytest.raises(TargetError) as e:
        make_scorer(tiny_llama, f"sae:{tmp_path / 'gs'}:F3", EPOConfig())
    msg = str(e.value)
    assert "\n" not in msg and "trained on gemma-2-2b, not on this model" in msg, msg
    assert msg.endswith("load --model google/gemma-2-2b"), msg


def test_the_cli_refuses_a_release_offline_in_one_line(offline, tiny_dir, tmp_path, monkeypatch, capsys):
    argv = [
        "reverie",
        "dream",
        "--model",
        str(tiny_dir),
        "--out",
        str(tmp_path / "run"),
        "--target",
        GEMMA,
        "--iters",
        "2",
        "--quiet",
        "--no-report",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "google/gemma-scope-2b-pt-res" in lines[0], lines


def test_the_target_modules_import_no_heavy_package():
    code = (
        "import sys; import reverie.lm.sae, reverie.lm.saelens, reverie.lm.target_base; "
        "print([m for m in ('torch', 'safetensors', 'sae_lens', 'transformers', 'transformer_lens') if m in "
        "sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
