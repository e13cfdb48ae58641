"""Every bad input a user can type, in one battery: the command line answers with one line on stderr,
exit code 2 and no traceback, and leaves whatever was already computed as it was; the Python API
raises a `ReverieError` subclass with a one-line message.

Each case is a function of a `Bench` (the tiny model's folder, a scratch folder and a finished run to
copy) that returns the command line; a case that passes `keeps=` names the files of the run it must
leave byte for byte as they were.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import reverie
from reverie import EPOConfig, ReverieError
from reverie.cli.app import main
from reverie.lm.synthetic import shape_config

SMALL = ["--population", "2", "--children", "4", "--top-k", "16", "--length", "4", "--quiet", "--no-report"]


@dataclass
class Bench:
    model: Path  # the tiny llama's folder
    tmp: Path  # scratch space for this case
    finished: Path  # a finished two-iteration run (copy it with `run()` before changing anything)
    monkeypatch: pytest.MonkeyPatch

    def run(self) -> Path:
        out = self.tmp / "run"
        shutil.copytree(self.finished, out)
        return out

    def dream(self, *args) -> list:
        return ["dream", "--model", self.model, "--out", self.tmp / "new", *SMALL, *args]

    def scan(self, corpus, *args) -> list:
        return [
            "scan",
            "--model",
            self.model,
            "--target",
            "neuron:L1.N7",
            "--corpus",
            corpus,
            "--out",
            self.tmp / "scan",
            "--max-tokens",
            "200",
            *args,
        ]

    def corpus(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


def _sae_with_list_config(b: Bench) -> list:
    folder = b.tmp / "sae"
    reverie.SAEWeights(torch.zeros(64, 8), torch.zeros(8), torch.zeros(64), "blocks.1.hook_resid_pre").save(folder)
    (folder / "cfg.json").write_text("[1, 2]")
    return b.dream("--target", f"sae:{folder}:F1")


def _sae_folder(b: Bench, feature: int = 1, **tensors) -> list:
    """An SAE folder on blocks.1.hook_resid_pre (64 wide) whose weights are 64 x 16 except those given."""
    import json

    from safetensors.torch import save_file

    folder = b.tmp / "sae"
    folder.mkdir()
    weights = {"W_enc": torch.zeros(64, 16), "b_enc": torch.zeros(16), "b_dec": torch.zeros(64), **tensors}
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"hook_name": "blocks.1.hook_resid_pre"}))
    return b.dream("--target", f"sae:{folder}:F{feature}")


def _random(b: Bench, spec: str, *args) -> list:
    return ["dream", "--model", spec, "--out", b.tmp / "new", "--iters", "1", *SMALL, *args]


def _direction_file(b: Bench, save) -> list:
    path = b.tmp / "v.npy"
    with open(path, "wb") as f:
        save(f)
    return b.dream("--target", f"direction:L1:{path}")


def _direction(b: Bench, values) -> list:
    np.save(b.tmp / "v.npy", np.asarray(values, np.float32))
    return b.dream("--target", f"direction:L1:{b.tmp / 'v.npy'}")


def _empty_config(b: Bench, command: str) -> list:
    out = b.run()
    (out / "config.json").write_text("{}")
    return ["dream", "--resume", out, "--quiet"] if command == "resume" else ["frontier", out]


def _disk_full(b: Bench) -> list:
    from reverie.runs import rundir

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    b.monkeypatch.setattr(rundir, "save_file", full)
    return ["dream", "--resume", b.run(), "--iters", "4", "--checkpoint-every", "1", "--quiet", "--no-report"]


def _checkpoint(b: Bench, change) -> list:
    """Resume a copy of the finished run whose checkpoint's tensors `change` rewrote."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = b.run()
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    changed = {k: v.contiguous() for k, v in change(tensors).items()}
    save_file(changed, out / "checkpoint.safetensors", metadata=metadata)
    return ["dream", "--resume", out, "--iters", "4", "--quiet", "--no-report"]


def _unwritable_scan_out(b: Bench) -> list:
    (b.tmp / "file").write_text("a file, not a folder")
    return [
        "scan",
        "--model",
        b.model,
        "--target",
        "neuron:L1.N7",
        "--corpus",
        "bundled",
        "--out",
        b.tmp / "file" / "scan",
    ]


def _hub_dataset_without_the_field(b: Bench) -> list:
    pytest.importorskip("datasets")
    (b.tmp / "ds").mkdir()
    (b.tmp / "ds" / "train.jsonl").write_text('{"content": "some text here"}\n')
    return b.scan(f"hf:{b.tmp / 'ds'}")


CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# name -> (command line, words the error line must contain, files of the run it must leave unchanged)
CLI = {
    "cuda without a GPU": (lambda b: b.dream("--target", "neuron:L1.N7", "--device", "cuda"), "cuda", ()),
    "unknown device": (lambda b: b.dream("--target", "neuron:L1.N7", "--device", "xyz"), "xyz", ()),
    "unknown target kind": (lambda b: b.dream("--target", "foo:1"), "foo:1", ()),
    "malformed neuron": (lambda b: b.dream("--target", "neuron:Lx.N1"), "neuron:Lx.N1", ()),
    "neuron past the layer": (lambda b: b.dream("--target", "neuron:L1.N9999"), "does not exist", ()),
    "jsonl not UTF-8": (lambda b: b.scan(b.corpus("c.jsonl", b'{"text": "\xff\xfe"}\n')), "UTF-8", ()),
    "jsonl invalid line": (lambda b: b.scan(b.corpus("c.jsonl", b'{"text": "ok"}\n{oops\n')), "line 2", ()),
    "jsonl null field": (lambda b: b.scan(b.corpus("c.jsonl", b'{"text": null}\n')), "text", ()),
    "corrupt parquet": (lambda b: b.scan(b.corpus("c.parquet", b"PAR1 not really")), "c.parquet", ()),
    "binary corpus": (lambda b: b.scan(b.corpus("c.txt", b"\x00\x01\x02" * 50)), "c.txt", ()),
    "scan chunk 0": (lambda b: b.scan("bundled", "--chunk", "0"), "chunk", ()),
    "scan batch size 0": (lambda b: b.scan("bundled", "--batch-size", "0"), "batch", ()),
    "scan out not writable": (_unwritable_scan_out, "file", ()),
    "hf dataset without the field": (_hub_dataset_without_the_field, "content", ()),
    "resume an empty config": (lambda b: _empty_config(b, "resume"), "config.json", ()),
    "frontier of an empty config": (lambda b: _empty_config(b, "frontier"), "config.json", ()),
    "resume checkpoint every 0": (
        lambda b: ["dream", "--resume", b.run(), "--iters", "4", "--checkpoint-every", "0", "--quiet"],
        "checkpoint",
        "all",
    ),
    "checkpoint prompts shorter than the length": (
        lambda b: _checkpoint(b, lambda t: {**t, "population": t["population"][:, :3]}),
        "3 tokens",
        "all",
    ),
    "checkpoint token ids as floats": (
        lambda b: _checkpoint(b, lambda t: {**t, "population": t["population"].float()}),
        "integer token ids",
        "all",
    ),
    "checkpoint scores shorter than the population": (
        lambda b: _checkpoint(b, lambda t: {**t, "f": t["f"][:1]}),
        "one per prompt",
        "all",
    ),
    "checkpoint negative cross-entropy": (
        lambda b: _checkpoint(b, lambda t: {**t, "ce": t["ce"] - 100}),
        "negative",
        "all",
    ),
    "disk full during a checkpoint": (_disk_full, "No space left", ("checkpoint.safetensors",)),
    "sae config a list": (_sae_with_list_config, "cfg.json", ()),
    "sae W_enc one-dimensional": (lambda b: _sae_folder(b, W_enc=torch.zeros(64)), "W_enc has shape [64]", ()),
    "sae b_dec narrower than the model": (lambda b: _sae_folder(b, b_dec=torch.zeros(10)), "b_dec has shape [10]", ()),
    "sae b_enc shorter than the feature": (
        lambda b: _sae_folder(b, 10, b_enc=torch.zeros(8)),
        "b_enc has shape [8]",
        (),
    ),
    "sae infinite bias": (lambda b: _sae_folder(b, b_enc=torch.full((16,), math.inf)), "b_enc holds NaN or inf", ()),
    "sae NaN weights": (lambda b: _sae_folder(b, W_enc=torch.full((64, 16), math.nan)), "W_enc holds NaN", ()),
    "sae integer weights": (
        lambda b: _sae_folder(b, W_enc=torch.zeros(64, 16, dtype=torch.int32)),
        "W_enc is int32",
        (),
    ),
    "sae W_dec the wrong way round": (
        lambda b: _sae_folder(b, W_dec=torch.zeros(64, 16)),
        "W_dec has shape [64, 16]",
        (),
    ),
    "random shape option twice": (
        lambda b: _random(b, "random:smollm2-135m:layers=1:layers=2", "--target", "neuron:L0.N1"),
        "layers twice",
        (),
    ),
    "random layers past the shape": (
        lambda b: _random(b, "random:smollm2-135m:layers=999", "--target", "neuron:L0.N1"),
        "smollm2-135m has 30 layers",
        (),
    ),
    "random seed twice": (
        lambda b: _random(b, "random:smollm2-135m:seed=1:seed=2", "--target", "neuron:L0.N1"),
        "seed twice",
        (),
    ),
    "device map banana": (lambda b: b.dream("--target", "neuron:L1.N7", "--device-map", "banana"), "banana", ()),
    "device map banana on a random shape": (
        lambda b: _random(b, "random:smollm2-135m:layers=1", "--target", "neuron:L0.N1", "--device-map", "banana"),
        "banana",
        (),
    ),
    "logit a synthetic tokenizer cannot spell": (
        lambda b: _random(b, "random:gemma-3-270m:layers=1", "--target", 'logit:" dog"'),
        "not in the vocabulary",
        (),
    ),
    "ban a token a synthetic tokenizer cannot spell": (
        lambda b: _random(b, "random:gemma-3-270m:layers=1", "--target", "neuron:L0.N1", "--ban-token", " dog"),
        "not in the vocabulary",
        (),
    ),
    "export csv under a json name": (
        lambda b: ["export", b.run(), "--format", "csv", "--out", b.tmp / "e.json"],
        "e.json",
        "all",
    ),
    "export with no suffix": (lambda b: ["export", b.run(), "--format", "csv", "--out", b.tmp / "e"], "e.csv", "all"),
    "direction with NaN": (lambda b: _direction(b, np.full(64, np.nan)), "NaN", ()),
    "direction an npz archive": (
        lambda b: _direction_file(b, lambda f: np.savez(f, a=np.ones(64), b=np.ones(64))),
        "npz",
        (),
    ),
    "direction complex": (lambda b: _direction_file(b, lambda f: np.save(f, np.ones(64, complex))), "complex", ()),
    "direction text": (lambda b: _direction_file(b, lambda f: np.save(f, np.array(["1.0"] * 64))), "<U3", ()),
    "direction all zeros": (lambda b: _direction(b, np.zeros(64)), "zeros", ()),
    "penalty max inf": (lambda b: b.dream("--target", "neuron:L1.N7", "--penalty-max", "inf"), "penalty_max", ()),
    "gcg nan": (lambda b: b.dream("--target", "neuron:L1.N7", "--gcg", "nan"), "gcg", ()),
    "time budget nan": (lambda b: b.dream("--target", "neuron:L1.N7", "--time-budget", "nan"), "time_budget", ()),
    "time budget negative": (lambda b: b.dream("--target", "neuron:L1.N7", "--time-budget", "-1"), "time_budget", ()),
    "repetition penalty nan": (
        lambda b: b.dream("--target", "neuron:L1.N7", "--repetition-penalty", "nan"),
        "repetition_penalty",
        (),
    ),
    "empty banned string": (lambda b: b.dream("--target", "neuron:L1.N7", "--ban", ""), "empty", ()),
    "empty banned token": (lambda b: b.dream("--target", "neuron:L1.N7", "--ban-token", ""), "empty", ()),
    "diverse -1": (lambda b: b.dream("--target", "neuron:L1.N7", "--diverse", "-1"), "--diverse", ()),
    "prompt past the context": (lambda b: b.dream("--target", "neuron:L1.N7", "--prompt", " dog" * 80), "64", ()),
    "attribute k past the vocabulary": (
        lambda b: [
            "attribute",
            "--model",
            b.model,
            "--target",
            "neuron:L1.N7",
            "--prompt",
            "The cat sat",
            "-k",
            "100000",
        ],
        "k=100000",
        (),
    ),
    "frontier of different targets": (
        lambda b: ["frontier", b.finished, b.finished.parent / "other"],
        "different targets",
        (),
    ),
}
CLI_CASES = [pytest.param(*case, id=name, marks=[CUDA] if "cuda" in name else []) for name, case in CLI.items()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dir):
    """A finished run of neuron L1.N7 (and beside it, `other`, a run of another neuron), by the model's folder so
    that the CLI can resume it."""
    model = reverie.load_model(tiny_dir)
    out = tmp_path_factory.mktemp("finished") / "run"
    reverie.dream(model, "neuron:L1.N7", EPOConfig(population=2, children=4, top_k=16, length=4, iters=2), out=out)
    reverie.dream(
        model,
        "neuron:L1.N8",
        EPOConfig(population=2, children=4, top_k=16, length=4, iters=1),
        out=out.parent / "other",
    )
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


@pytest.mark.parametrize("command, words, keeps", CLI_CASES)
def test_every_bad_command_line_is_one_line_and_exit_2(
    command, words, keeps, tiny_dir, tmp_path, finished, monkeypatch, capsys
):
    bench = Bench(tiny_dir, tmp_path, finished, monkeypatch)
    argv = [str(a) for a in command(bench)]
    run = tmp_path / "run"
    before = _files(run)
    monkeypatch.setattr(sys, "argv", ["reverie", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    after = _files(run)
    for name in before if keeps == "all" else keeps:
        assert after.get(name) == before[name], f"{name} changed"


def _custom(shape_fn, hooks=("blocks.1.hook_resid_post",)):
    return lambda m: reverie.make_scorer(
        m, reverie.Custom(shape_fn, hooks=hooks), EPOConfig(length=4, batch_size=4)
    ).score(torch.ones(2, 4, dtype=torch.long) * 300)


# name -> (call on the tiny model, words the message must contain)
API = {
    "config as a dict": (lambda m: reverie.dream(m, "neuron:L1.N7", {"iters": 2}), "EPOConfig"),
    "iters as text": (lambda m: EPOConfig(iters="2"), "iters"),
    "custom target of the wrong shape": (_custom(lambda c: c["blocks.1.hook_resid_post"][:, -1]), "shape"),
    "custom target reading an undeclared hook": (
        _custom(lambda c: c["blocks.0.hook_resid_pre"][:, -1, 0]),
        "did not declare",
    ),
    "load_model of a number": (lambda m: reverie.load_model(123), "123"),
    "unknown device": (lambda m: reverie.load_model("bundled", device="xyz"), "xyz"),
    "a TransformerLens model by its run's name": (
        lambda m: reverie.load_model("transformer-lens:gpt2"),
        "HookedTransformer.from_pretrained('gpt2')",
    ),
    "a model that is no model": (lambda m: reverie.as_model(42), "int"),
    "baseline of no prompts": (lambda m: reverie.random_baseline(m, "neuron:L1.N3", n=0, length=4), "n >= 2"),
    "scan chunk 0": (lambda m: reverie.ScanConfig(chunk=0), "chunk"),
    "best_at a text threshold": (
        lambda m: reverie.best_at(
            pd.DataFrame({"activation": [1.0], "cross_entropy": [4.0], "ids": [[1]], "text": ["a"]}), "5"
        ),
        "5",
    ),
    "attribution k past the vocabulary": (
        lambda m: reverie.attribute(m, "neuron:L1.N3", "The cat", k=100000),
        "k=100000",
    ),
    "prompt past the context": (lambda m: m.check_length(65), "65"),
    "a logit token that is neither": (lambda m: reverie.Logit(3.5).prepare(m), "token"),
    "penalty max inf": (lambda m: EPOConfig(penalty_max=math.inf), "penalty_max"),
    "unknown scorer": (lambda m: EPOConfig(scorer="fast"), "scorer"),
    "random shape option twice": (lambda m: reverie.load_model("random:smollm2-135m:seed=1:seed=1"), "seed twice"),
    "random layers past the shape": (lambda m: reverie.load_model("random:pythia-1.4b:layers=25"), "24 layers"),
    "shape config past its layers": (lambda m: shape_config("pythia-1.4b", 25), "24"),
    "device map banana": (lambda m: reverie.load_model("random:smollm2-135m:layers=1", device_map="banana"), "banana"),
    "device map a number": (lambda m: reverie.load_model("random:smollm2-135m:layers=1", device_map=2.5), "2.5"),
    "sae weights of the wrong shape": (
        lambda m: reverie.SAEFeature(
            reverie.SAEWeights(torch.zeros(64, 8), torch.zeros(8), torch.zeros(10), "blocks.1.hook_resid_pre"), 1
        ),
        "b_dec has shape [10]",
    ),
    "dtype fp64": (lambda m: reverie.load_model("random:smollm2-135m:layers=1", dtype=torch.float64), "float64"),
    "dtype a list": (lambda m: reverie.load_model("random:smollm2-135m:layers=1", dtype=["fp32"]), "['fp32']"),
    "sae feature a superscript": (lambda m: reverie.parse_target("sae:folder:F\u00b2"), "cannot parse"),
    "sae TopK k past its features": (
        lambda m: reverie.SAEFeature(
            reverie.SAEWeights(torch.zeros(64, 8), torch.zeros(8), torch.zeros(64), "blocks.1.hook_resid_pre", k=9), 1
        ),
        "1-8",
    ),
}


@pytest.mark.parametrize("call, words", [pytest.param(*case, id=name) for name, case in API.items()])
def test_every_bad_api_call_raises_a_typed_one_line_error(call, words, tiny_llama):
    with pytest.raises(ReverieError) as e:
        call(tiny_llama)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


def test_a_logit_a_synthetic_tokenizer_cannot_spell_is_refused():
    model = reverie.load_model("random:gemma-3-270m:layers=1")
    with pytest.raises(ReverieError, match="not in the vocabulary") as e:
        reverie.Logit(" dog").prepare(model)
    assert "\n" not in str(e.value)
    word = model.tokenizer.decode([1234])  # a word it has is still a target
    target = reverie.Logit(" " + word)
    target.prepare(model)
    assert target.token_id == 1234


def test_an_export_is_named_for_its_format_and_read_back_by_it(finished, tiny_llama, tmp_path):
    from reverie.runs.export import export, read_export

    with pytest.raises(reverie.ConfigError, match="e.json"):
        export(finished, "csv", out=tmp_path / "e.json", model=tiny_llama)
    assert not (tmp_path / "e.json").exists()
    path = export(finished, out=tmp_path / "e.csv", model=tiny_llama)  # the format from the suffix
    assert path.read_text().startswith("model,target,")
    assert len(read_export(path)) >= 1
    (tmp_path / "x.json").write_bytes(path.read_bytes())  # CSV under a .json name
    (tmp_path / "x.parquet").write_text("not parquet")
    (tmp_path / "x.txt").write_text("{}")
    for bad, words in (
        ("x.json", "x.json"),
        ("x.parquet", "x.parquet"),
        ("x.txt", ".json, .csv or .parquet"),
        ("missing.csv", "missing.csv"),
    ):
        with pytest.raises(reverie.RunDirError, match=words.replace(".", r"\.")) as e:
            read_export(tmp_path / bad)
        assert "\n" not in str(e.value)


def test_help_and_spec_errors_load_no_torch():
    """`reverie --help` and a bad spec answer at once: neither imports torch or transformers (the timing
    itself is in the issue's note, not a test)."""
    import subprocess

    code = (
        "import sys\nfrom reverie.cli.app import main\nsys.argv = ['reverie', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules)\n"
        "print('HEAVY', heavy, code)\n"
    )
    for args in (
        ["--help"],
        ["dream", "--help"],
        ["dream", "--target", "foo:1"],
        ["scan", "--target", "neuron:Lx", "--out", "x"],
    ):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120).stdout
        assert out.strip().splitlines()[-1] in ("HEAVY [] 0", "HEAVY [] 2"), (args, out[-300:])
    assert (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import reverie, sys; assert 'torch' not in sys.modules; reverie.EPOConfig(iters=3)",
            ],
            timeout=120,
        ).returncode
        == 0
    )
