"""Dataset scans: the best windows really are the best, many targets cost one pass, sources and errors."""

import json
import sys

import pandas as pd
import pytest
import torch

from reverie import ConfigError, EPOConfig, TargetError, make_scorer
from reverie.evidence.scan import ScanConfig, bundled_corpus, documents, scan
from reverie.lm.targets import usage

TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house.",
    "In 1905 Einstein published four papers that changed physics, including special relativity and the photoelectric effect.",
    "Rivers carry sediment from mountains to the sea, building deltas where the water slows and spreads out across the plain.",
]


@pytest.fixture
def corpus_dir(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"doc{i}.txt").write_text(text)
    return folder


def brute_force(model, spec, n):
    """Every n-token window inside each document, scored as a prompt."""
    scorer = make_scorer(model, spec, EPOConfig(length=n, check_retokenization=False))
    windows = []
    for text in TEXTS:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        windows += [ids[e - n + 1:e + 1] for e in range(n - 1, len(ids))]
    f, ce = scorer.score(torch.tensor(windows))
    return f, ce


@pytest.mark.parametrize("spec", ["neuron:L1.N5", "direction:L1", 'logit:" the"'])
def test_best_window_is_the_true_best(tiny_llama, corpus_dir, spec):
    config = ScanConfig(window=6, top=5, candidates=10_000, chunk=16, batch_size=2)
    result = scan(tiny_llama, [spec], str(corpus_dir), config)
    f, ce = brute_force(tiny_llama, spec, 6)
    assert result["activation"].iloc[0] == pytest.approx(float(f.max()), abs=1e-5)
    assert list(result["rank"]) == list(range(5))
    assert result["activation"].is_monotonic_decreasing
    best = result.iloc[0]
    assert len(best.ids) == 6 and best.cross_entropy == pytest.approx(float(ce[f.argmax()]), abs=1e-4)


def test_many_targets_cost_one_pass(tiny_llama, corpus_dir):
    calls = []
    handle = tiny_llama.hf.base_model.register_forward_hook(lambda *a: calls.append(1))
    config = ScanConfig(window=6, top=3, chunk=16, batch_size=2)
    try:
        one = scan(tiny_llama, ["neuron:L1.N5"], str(corpus_dir), config)
        n_one = len(calls)
        many = scan(tiny_llama, ["neuron:L1.N5", "neuron:L0.N9", "direction:L1:seed=4"], str(corpus_dir), config)
    finally:
        handle.remove()
    n_rescore = 1                                          # one re-scoring forward per target
    assert len(calls) - n_one == n_one + 2 * n_rescore
    same = many[many.target == "neuron:L1.N5"].reset_index(drop=True)
    pd.testing.assert_frame_equal(same.drop(columns="ids"), one.drop(columns="ids"))


def test_sources_and_errors(tiny_llama, tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in TEXTS))
    pd.DataFrame({"body": TEXTS}).to_parquet(tmp_path / "c.parquet")
    assert list(documents(str(tmp_path / "c.jsonl"), "body")) == TEXTS
    assert list(documents(str(tmp_path / "c.parquet"), "body")) == TEXTS
    with pytest.raises(Exception, match="no field 'text'"):
        list(documents(str(tmp_path / "c.jsonl")))
    with pytest.raises(Exception, match="does not exist"):
        list(documents(str(tmp_path / "nope")))
    with pytest.raises(TargetError, match="reads a target at every position") as e:
        scan(tiny_llama, ["attention:L1.H0.K0"], TEXTS)
    assert str(e.value).endswith(f"it takes {usage(scans=True)}") and "attention:L3" not in str(e.value)
    limited = scan(tiny_llama, ["neuron:L1.N5"], TEXTS * 20, ScanConfig(window=6, chunk=8, batch_size=1, max_tokens=40))
    assert limited["doc"].max() < 3


def test_cli_scan(monkeypatch, capsys, tiny_dir, corpus_dir, tmp_path):
    from reverie.cli.app import main
    monkeypatch.setattr(sys, "argv", ["reverie", "scan", "--model", str(tiny_dir), "--target", "neuron:L1.N5",
                                      "--target", "neuron:L0.N2", "--corpus", str(corpus_dir),
                                      "--out", str(tmp_path / "scan"), "--window", "6", "--top", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    frame = pd.read_parquet(tmp_path / "scan" / "scan.parquet")
    assert set(frame.target) == {"neuron:L1.N5", "neuron:L0.N2"} and len(frame) == 8
    meta = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert meta["tokens"] > 50


@pytest.mark.slow
def test_bundled_corpus_is_clean_prose():
    path = bundled_corpus()
    docs = list(documents("bundled"))
    assert len(docs) > 50 and path.stat().st_size > 1_000_000
    text = "\n".join(docs)
    assert "[[" not in text and "{{" not in text and "<ref" not in text and "''" not in text
    assert " the " in text


def test_dreams_can_start_from_the_data(tiny_llama, corpus_dir, tmp_path):
    """Half the slots start at the windows that suit their λ; the frontier begins at the data."""
    from reverie import dream, load_run, resume
    from reverie.search.frontier import versus_data
    windows = scan(tiny_llama, ["neuron:L1.N5"], str(corpus_dir), ScanConfig(window=8, top=10, chunk=16))
    config = EPOConfig(population=4, children=8, top_k=32, length=8, iters=4, check_retokenization=False)
    result = dream(tiny_llama, "neuron:L1.N5", config, starts=windows, out=tmp_path / "run")
    first = result.history[result.history["iteration"] == 0]
    by_text = {tuple(map(int, i)) for i in windows["ids"]}
    started = [tuple(map(int, i)) in by_text for i in first["ids"]]
    assert started == [False, True, False, True]                        # every other slot, the rest random
    lam = config.slot_penalties()
    best_for = lambda slot: tuple(windows.loc[(windows["activation"] - float(lam[slot]) * windows["cross_entropy"]).idxmax(), "ids"])
    assert result.config.init_ids[3] == best_for(3)                    # the most fluent slot: the most fluent good window
    assert result.config.init_ids[1] in (best_for(1), best_for(3))       # (unless slot 3 took it already)
    assert versus_data(result.history, windows)["margin"] >= -1e-4     # never below the best window
    assert load_run(tmp_path / "run").config.init_ids == result.config.init_ids
    assert resume(tmp_path / "run", model=tiny_llama, iters=6).iterations == 6
    with pytest.raises(ConfigError, match="no windows for neuron:L1.N6"):
        dream(tiny_llama, "neuron:L1.N6", config, starts=windows)
    with pytest.raises(ConfigError, match="no 12-token window"):
        dream(tiny_llama, "neuron:L1.N5", EPOConfig(iters=1, length=12), starts=windows)
