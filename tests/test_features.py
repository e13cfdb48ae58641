"""The feature index: one pass gives every neuron's windows exactly as a scan does, is cached, resumes,
and makes dreams start from real text by default."""

import sys

import pandas as pd
import pytest
import torch

import reverie
from reverie import EPOConfig, ReverieError
from reverie.cli.app import main
from reverie.evidence import features
from reverie.evidence.features import FeatureIndex, IndexConfig, build_index, find_index, merge_top
from reverie.evidence.readability import normalize, real_word_share
from reverie.evidence.scan import ScanConfig, scan
from reverie.evidence.windows import windows_for
from reverie.lm.targets import as_target

TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house, and nobody came.",
    (
        "In 1905 Einstein published four papers that changed physics, including special relativity and the "
        "photoelectric effect."
    ),
    (
        "Rivers carry sediment from mountains to the sea, building deltas where the water slows and spreads out "
        "across the plain."
    ),
    "Short.",
    (
        "A second paragraph about cooking: onions are sliced thin and fried slowly in butter until they turn "
        "sweet and brown."
    ),
]
SMALL = dict(population=4, children=8, top_k=32, length=8, iters=3, check_retokenization=False)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TEXTS))
    return str(path)


def test_index_windows_are_the_scans_windows(tiny_llama, corpus):
    """For every neuron read from the index, the windows (ids, activation, cross-entropy, context) are those
    a scan of that neuron alone finds with the same number of candidates."""
    index = build_index(tiny_llama, corpus, IndexConfig(window=8, candidates=40, chunk=16, batch_size=3))
    assert index.meta["complete"] and set(index.values) == {"L0", "L1"}
    for spec in ("neuron:L0.N3", "neuron:L1.N5", "neuron:L1.N127"):
        mine = index.windows(tiny_llama, spec, top=6)
        theirs = scan(tiny_llama, [spec], corpus, ScanConfig(window=8, top=6, candidates=40, chunk=16, batch_size=3))
        assert len(mine) == 6
        pd.testing.assert_frame_equal(mine.drop(columns="ids"), theirs.drop(columns="ids"), check_dtype=False)
        assert [list(i) for i in mine["ids"]] == [list(i) for i in theirs["ids"]]


def test_an_sae_is_indexed_in_the_same_pass(tiny_llama, corpus, tmp_path):
    folder = tmp_path / "sae"
    torch.manual_seed(0)
    reverie.SAEWeights(torch.randn(64, 16), torch.zeros(16), torch.zeros(64), "blocks.1.hook_resid_pre").save(folder)
    config = IndexConfig(window=8, candidates=30, chunk=16)
    index = build_index(tiny_llama, corpus, config, saes=[str(folder)])
    spec = f"sae:{folder}:F7"
    assert index.covers(as_target(spec, tiny_llama))
    mine = index.windows(tiny_llama, spec, top=4)
    theirs = scan(tiny_llama, [spec], corpus, ScanConfig(window=8, top=4, candidates=30, chunk=16))
    assert list(mine["text"]) == list(theirs["text"])
    assert mine["activation"].tolist() == pytest.approx(theirs["activation"].tolist(), abs=1e-5)


def test_a_second_build_is_a_cache_hit_and_an_interrupted_one_resumes(tiny_llama, corpus, monkeypatch, tmp_path):
    config = IndexConfig(window=8, candidates=20, chunk=16, batch_size=1)
    monkeypatch.setattr(features, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every batch
    calls = []

    def interrupt(done, total, per_token):
        calls.append(done)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_llama, corpus, config, progress=interrupt)
    assert find_index(tiny_llama, corpus, config) is None  # not complete: not used
    resumed = []
    index = build_index(tiny_llama, corpus, config, progress=lambda done, total, s: resumed.append(done))
    assert resumed[0] > 0  # it began where the first pass stopped
    with monkeypatch.context() as m:
        m.setenv("REVERIE_CACHE", str(tmp_path / "elsewhere"))
        fresh = build_index(tiny_llama, corpus, config)  # the same pass, uninterrupted
    for name in index.values:
        assert torch.equal(index.values[name], fresh.values[name])
        assert torch.equal(index.positions[name], fresh.positions[name])
    again = []
    hit = build_index(tiny_llama, corpus, config, progress=lambda *a: again.append(a))
    assert hit.path == index.path and not again  # nothing ran
    assert find_index(tiny_llama, corpus).meta["tokens"] == index.meta["tokens"]


def test_merge_top_is_topk():
    torch.manual_seed(1)
    values = torch.full((5, 7), -torch.inf)
    positions = torch.full((5, 7), -1, dtype=torch.int32)
    seen, seen_pos = torch.empty(0, 7), torch.empty(0, dtype=torch.int32)
    for b in range(6):
        acts, pos = torch.randn(9, 7), torch.arange(9 * b, 9 * b + 9, dtype=torch.int32)
        values, positions = merge_top(values, positions, acts, pos)
        seen, seen_pos = torch.cat([seen, acts]), torch.cat([seen_pos, pos])
        top = seen.topk(5, dim=0)
        assert torch.equal(values, top.values) and torch.equal(positions, seen_pos[top.indices])


def test_dreams_start_from_the_index_by_default(tiny_llama, corpus, tmp_path):
    """dream(corpus=...) with the default starts: half the slots at the best windows, the windows kept with the
    run and in its report; the frontier starts at the data."""
    from reverie.search.frontier import versus_data

    lines = []
    result = reverie.dream(
        tiny_llama, "neuron:L1.N5", EPOConfig(**SMALL), corpus=corpus, out=tmp_path / "run", notice=lines.append
    )
    assert result.windows is not None and len(result.windows) > 0
    ids = {tuple(map(int, i)) for i in result.windows["ids"]}
    assert [p in ids for p in map(tuple, result.config.init_ids)] == [False, True, False, True]
    assert "half the slots start from" in result.start and lines[-1] == result.start
    assert versus_data(result.history, result.windows)["margin"] >= -1e-4
    loaded = reverie.load_run(tmp_path / "run")
    assert loaded.windows["text"].tolist() == result.windows["text"].tolist()
    html = reverie.write_report(tmp_path / "run").read_text()
    assert "top " in html and result.windows["text"].iloc[0].strip()[:10] in html


def test_no_corpus_and_no_index(tiny_llama, tmp_path):
    none = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig(**SMALL), corpus=None)
    assert none.windows is None and "model alone" in none.start and not any(none.config.init_ids)
    auto = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig(**SMALL))  # not the bundled model: no build
    assert auto.windows is None and "reverie index --model tiny-llama" in auto.start


def test_targets_outside_an_index_get_a_targeted_scan(tiny_llama, corpus):
    windows, where = windows_for(tiny_llama, as_target('logit:" the"', tiny_llama), corpus)
    assert len(windows) and "scan of the first" in where
    windows, where = windows_for(tiny_llama, as_target("attention:L1.H0.K-2", tiny_llama), corpus)
    assert windows is None and "cannot be read at every position" in where


def test_index_and_dream_from_the_command_line(tiny_dir, corpus, tmp_path, monkeypatch, capsys):
    def cli(*args):
        monkeypatch.setattr(sys, "argv", ["reverie", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        return e.value.code, *capsys.readouterr()

    code, out, err = cli("index", "--model", tiny_dir, "--corpus", corpus, "--window", 6, "--chunk", 16)
    assert code in (0, None) and "feature index of" in out
    code, out, err = cli("index", "--model", tiny_dir, "--corpus", corpus, "--window", 6, "--chunk", 16)
    assert "read from the cache" in out
    code, out, err = cli(
        "scan",
        "--model",
        tiny_dir,
        "--corpus",
        corpus,
        "--window",
        6,
        "--target",
        "neuron:L1.N5",
        "--target",
        'logit:" the"',
        "--out",
        tmp_path / "scan",
    )
    assert code in (0, None) and "read from the feature index of" in err and "neuron:L1.N5" in err
    assert set(pd.read_parquet(tmp_path / "scan" / "scan.parquet")["target"]) == {"neuron:L1.N5", "logit:' the'"}
    small = [
        "--population",
        "4",
        "--children",
        "4",
        "--top-k",
        "16",
        "--length",
        "6",
        "--iters",
        "2",
        "--quiet",
        "--no-report",
        "--no-retokenize-check",
    ]
    code, out, err = cli(
        "dream", "--model", tiny_dir, "-t", "neuron:L1.N5", "--corpus", corpus, "--out", tmp_path / "a", *small
    )
    assert code in (0, None) and "dreams against real text" in out and "window 1" in out
    assert "half the slots start from" in err
    code, out, err = cli(
        "dream", "--model", tiny_dir, "-t", "neuron:L1.N5", "--no-corpus", "--out", tmp_path / "b", *small
    )
    assert code in (0, None) and "dreams against real text" not in out
    assert reverie.load_run(tmp_path / "b").config.starts == "beam"
    code, out, err = cli(
        "dream",
        "--model",
        tiny_dir,
        "-t",
        "neuron:L1.N5",
        "--no-corpus",
        "--corpus",
        corpus,
        "--out",
        tmp_path / "c",
        *small,
    )
    assert code == 2 and "--no-corpus" in err
    code, out, err = cli(
        "dream",
        "--model",
        tiny_dir,
        "-t",
        "neuron:L1.N5",
        "--starts",
        "random",
        "--no-corpus",
        "--out",
        tmp_path / "d",
        *small,
    )
    assert "--starts is deprecated: use --start" in err and reverie.load_run(tmp_path / "d").config.starts == "random"


def test_a_damaged_index_is_one_line(tiny_llama, corpus):
    index = build_index(tiny_llama, corpus, IndexConfig(window=8, candidates=10, chunk=16))
    (index.path / features.FEATURES).write_bytes(b"not safetensors")
    with pytest.raises(ReverieError, match="delete the folder and build it again"):
        FeatureIndex.open(index.path)


def test_real_word_share():
    words = frozenset({"the", "cat", "sat", "1990"})
    assert normalize("(The,") == "the" and normalize("====") == ""
    assert real_word_share("The cat, sat", words) == 1.0
    assert real_word_share("KD-1111_11.1lett ==== cat", words) == pytest.approx(1 / 3)
    assert real_word_share("", words) == 0.0 and real_word_share("in 1990.", words) == 0.5


@pytest.mark.slow
def test_the_junk_penalty_steers_selection_away_from_digit_runs(bundled):
    """From digits the bundled model finds predictable, a large γ makes every kept step trade junk for tokens
    with letters, where without it the search keeps more junk; the cross-entropy recorded stays the model's."""
    vocab = reverie.Vocabulary.for_model(bundled)

    def junk(ids):
        ids = [int(i) for i in ids]
        return sum((not bool(vocab.letters[t])) or t in ids[:j] for j, t in enumerate(ids)) / len(ids)

    def last_kept(gamma):
        config = EPOConfig.paper(
            population=1,
            penalties=(1.0,),
            restart_every=0,
            children=32,
            top_k=64,
            iters=6,
            init_prompt="1 1 1 1 2 2 2 2",
            junk_penalty=gamma,
            seed=0,
        )
        kept = reverie.dream(bundled, "neuron:L3.N492", config, corpus=None).history
        kept = kept[kept["kept"]].sort_values("iteration")
        return [junk(ids) for ids in kept["ids"]], kept.iloc[-1], config

    start = junk(vocab.encode("1 1 1 1 2 2 2 2"))
    shares, last, config = last_kept(1000.0)
    plain, _, _ = last_kept(0.0)
    assert start > 0.9 and all(b <= a for a, b in zip(shares, shares[1:]))
    assert shares[-1] <= start - 5 / len(last["ids"]) and shares[-1] < plain[-1]
    f, ce = reverie.make_scorer(bundled, "neuron:L3.N492", config).score(torch.tensor([list(map(int, last["ids"]))]))
    assert last["cross_entropy"] == pytest.approx(float(ce[0]), abs=0.1)  # bf16 paths differ by ~0.02; J is 1000s
