"""Every JSON file reverie writes is strict JSON: no NaN or Infinity, which most JSON readers reject."""

import json
import math
from pathlib import Path

import pytest

import reverie
from reverie import EPOConfig
from reverie.files import write_json

SMALL = dict(population=4, children=8, top_k=32, length=8, seed=0)


def reject(constant):
    raise ValueError(f"non-standard JSON constant {constant}")


def strict_files(out: Path) -> dict:
    files = {
        p.relative_to(out).as_posix(): json.loads(p.read_text(), parse_constant=reject) for p in out.rglob("*.json")
    }
    assert files
    return files


def test_dream_files_are_strict_json(tiny_llama, tmp_path):
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=tmp_path / "r")
    files = strict_files(tmp_path / "r")
    best = {row["max_cross_entropy"]: row for row in files["frontier.json"]["best"]}
    assert set(best) == {4.0, 5.0, 6.0, None}  # None: no cross-entropy limit
    assert best[4.0]["activation"] is None and best[4.0]["text"] is None  # a random tiny model is never this fluent
    assert isinstance(best[None]["activation"], float) and best[None]["text"]


def test_sweep_and_diverse_files_are_strict_json(tiny_llama, tmp_path):
    index = reverie.sweep(
        tiny_llama, "neuron:L0.N1,neuron:L5.N0", 0, tmp_path / "s", EPOConfig(**SMALL, iters=2), report=False
    ).set_index("target")
    assert index["status"].to_dict() == {"neuron:L0.N1": "done", "neuron:L5.N0": "failed"}
    files = strict_files(tmp_path / "s")
    assert {"sweep.json", "runs/neuron_L0.N1/seed0/frontier.json", "runs/neuron_L5.N0/seed0.failed.json"} <= set(files)
    assert not list((tmp_path / "s").rglob(".lock"))  # no lock left in the sweep folder or its runs
    failure = files["runs/neuron_L5.N0/seed0.failed.json"]
    assert "layer 5 does not exist" in failure["error"]
    # the traceback keeps files, lines and the error, but no machine's folders
    assert 'File "reverie/sweeps/executors.py"' in failure["traceback"] and "layer 5" in failure["traceback"]
    assert 'File "/' not in failure["traceback"] and str(Path.home()) not in failure["traceback"]

    reverie.diverse(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), k=2, out=tmp_path / "d")
    assert {"face0/frontier.json", "face1/frontier.json"} <= set(strict_files(tmp_path / "d"))


def test_write_json_refuses_nan(tmp_path):
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            write_json(tmp_path / "x.json", {"a": [bad]})
    assert not list(tmp_path.iterdir())
