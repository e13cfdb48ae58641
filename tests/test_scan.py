"""Dataset scans: the best windows really are the best, many targets cost one pass, sources and errors."""

import dataclasses
import importlib.util
import json
import sys

import pandas as pd
import pytest
import torch

from reverie import ConfigError, EPOConfig, TargetError, make_scorer
from reverie.errors import ReverieError
from reverie.evidence.scan import ScanConfig, bundled_corpus, documents, scan
from reverie.lm.targets import usage

TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house.",
    (
        "In 1905 Einstein published four papers that changed physics, including special relativity and the "
        "photoelectric effect."
    ),
    (
        "Rivers carry sediment from mountains to the sea, building deltas where the water slows and spreads out "
        "across the plain."
    ),
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
        windows += [ids[e - n + 1 : e + 1] for e in range(n - 1, len(ids))]
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
    n_rescore = 1  # one re-scoring forward per target
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


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(chunk=0), "chunk"),
        (dict(chunk=1), "chunk"),
        (dict(batch_size=0), "batch_size"),
        (dict(window=1), "window"),
        (dict(top=0), "top"),
        (dict(candidates=0), "candidates"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(chunk="8"), "chunk"),
        (dict(top=2.5), "top"),
        (dict(batch_size=True), "batch_size"),
        (dict(field=3), "field"),
        (dict(field=""), "field"),
    ],
)
def test_config_is_checked_on_construction(options, field):
    with pytest.raises(ConfigError, match=f"^{field} must"):
        ScanConfig(**options)
    with pytest.raises(ConfigError, match=f"^{field} must"):
        dataclasses.replace(ScanConfig(), **options)


def test_config_accepts_numpy_integers():
    import numpy as np

    config = ScanConfig(chunk=np.int64(16), max_tokens=None)
    assert config.chunk == 16 and type(config.chunk) is int


@pytest.mark.parametrize("option", ["--chunk", "--batch-size"])
def test_cli_bad_option_is_one_line(monkeypatch, capsys, corpus_dir, tmp_path, option):
    from reverie.cli.app import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "reverie",
            "scan",
            "--target",
            "neuron:L1.N5",
            "--corpus",
            str(corpus_dir),
            "--out",
            str(tmp_path / "scan"),
            option,
            "0",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: {option[2:].replace('-', '_')} must be at least")


def bad_jsonl(path, lines):
    path.write_bytes(b"\n".join(lines))
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        ([b'{"text": "fine"}', b'{"text": "caf\xe9"}'], "line 2 is not UTF-8"),
        ([b'{"text": "fine"}', b"", b'{"text": "open'], "line 3 is not valid JSON"),
        ([b'["text"]'], "line 1 is not a JSON object"),
        ([b'{"text": null}'], "line 1: field 'text' is null, not a string"),
        ([b'{"text": "fine"}', b'{"text": 7}'], "line 2: field 'text' is 7, not a string"),
    ],
)
def test_jsonl_errors_are_one_line(tmp_path, lines, message):
    path = bad_jsonl(tmp_path / "c.jsonl", lines)
    with pytest.raises(ReverieError, match=message) as e:
        list(documents(str(path)))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_and_binary_files_are_refused(tmp_path):
    parquet = tmp_path / "c.parquet"
    parquet.write_bytes(b"PAR1 this is not really parquet PAR1")
    with pytest.raises(ReverieError, match="cannot read .*c.parquet as Parquet") as e:
        list(documents(str(parquet)))
    assert "\n" not in str(e.value)
    pd.DataFrame({"text": ["fine", None]}).to_parquet(tmp_path / "nulls.parquet")
    with pytest.raises(ReverieError, match="nulls.parquet row 2: column 'text' is null, not a string"):
        list(documents(str(tmp_path / "nulls.parquet")))
    pd.DataFrame({"text": [1, 2]}).to_parquet(tmp_path / "numbers.parquet")
    with pytest.raises(ReverieError, match="numbers.parquet row 1: column 'text' is 1, not a string"):
        list(documents(str(tmp_path / "numbers.parquet")))
    (tmp_path / "model.bin").write_bytes(b"GGUF\x00\x00\x03\x00" + bytes(range(256)))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"text\x00with a NUL")
    for name in ("model.bin", "latin1.txt", "nul.txt"):
        with pytest.raises(ReverieError, match=f"{name} is not a UTF-8 text file") as e:
            list(documents(str(tmp_path / name)))
        assert "\n" not in str(e.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("fine")
    (folder / "b").write_bytes(b"\x00\x01")
    with pytest.raises(ReverieError, match="b is not a UTF-8 text file"):
        list(documents(str(folder)))


def test_text_splits_at_blank_lines(tiny_llama, tmp_path):
    (tmp_path / "one.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\r\n  \r\n\n{TEXTS[2]}\nstill the third\n\n")
    assert list(documents(str(tmp_path / "one.txt"))) == [TEXTS[0], TEXTS[1], TEXTS[2] + "\nstill the third"]
    folder = tmp_path / "folder"
    (folder / ".git").mkdir(parents=True)
    (folder / "a.md").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}")
    (folder / "b.txt").write_text(TEXTS[2])
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden files are skipped
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")
    assert list(documents(str(folder))) == TEXTS
    result = scan(tiny_llama, ["neuron:L1.N5"], str(tmp_path / "one.txt"), ScanConfig(window=6, top=50, chunk=16))
    assert set(result["doc"]) == {0, 1, 2}  # windows never cross a blank line


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="the bundled corpus needs gensim")
def test_bundled_corpus_needs_a_writable_cache(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(ReverieError, match="cannot write the bundled corpus to the cache folder .*REVERIE_CACHE"):
        bundled_corpus()


def test_cli_scan(monkeypatch, capsys, tiny_dir, corpus_dir, tmp_path):
    from reverie.cli.app import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "reverie",
            "scan",
            "--model",
            str(tiny_dir),
            "--target",
            "neuron:L1.N5",
            "--target",
            "neuron:L0.N2",
            "--corpus",
            str(corpus_dir),
            "--out",
            str(tmp_path / "scan"),
            "--window",
            "6",
            "--top",
            "4",
        ],
    )
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
    config = EPOConfig.paper(
        starts="data", population=4, children=8, top_k=32, length=8, iters=4, check_retokenization=False
    )
    result = dream(tiny_llama, "neuron:L1.N5", config, corpus=windows, out=tmp_path / "run")
    by_text = {tuple(map(int, i)) for i in windows["ids"]}
    started = [tuple(map(int, i)) in by_text for i in result.config.init_ids]
    assert started == [False, True, False, True]  # every other slot, the rest from the beam
    first = result.history[(result.history["iteration"] == 0) & result.history["kept"]]
    assert {tuple(map(int, i)) for i in first["ids"]} >= {result.config.init_ids[1], result.config.init_ids[3]}
    lam = config.slot_penalties()

    def best_for(slot):
        return tuple(windows.loc[(windows["activation"] - float(lam[slot]) * windows["cross_entropy"]).idxmax(), "ids"])

    assert result.config.init_ids[3] == best_for(3)  # the most fluent slot: the most fluent good window
    assert result.config.init_ids[1] in (best_for(1), best_for(3))  # (unless slot 3 took it already)
    assert versus_data(result.history, windows)["margin"] >= -1e-4  # never below the best window
    assert load_run(tmp_path / "run").config.init_ids == result.config.init_ids
    assert resume(tmp_path / "run", model=tiny_llama, iters=6).iterations == 6
    with pytest.raises(ConfigError, match="no windows for neuron:L1.N6"):
        dream(tiny_llama, "neuron:L1.N6", config, corpus=windows)
    with pytest.raises(ConfigError, match="no 12-token window"):
        dream(tiny_llama, "neuron:L1.N5", EPOConfig(iters=1, length=12), corpus=windows)
