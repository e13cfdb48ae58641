"""Run directories: files, resume after kill -9, corrupt files, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import reverie
from conftest import checkpoint_iteration
from reverie import EPOConfig

SMALL = dict(population=4, children=8, top_k=32, length=8, seed=0)


def test_run_directory_contents(tiny_llama, tmp_path):
    out = tmp_path / "run"
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**SMALL, iters=6), out=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "frontier.json",
        "history",
        "history.parquet",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "neuron:L1.N7" and config["epo"]["iters"] == 6
    history = pd.read_parquet(out / "history.parquet")
    assert len(history) == len(r.history) == 4 + 6 * 32
    assert list(history.columns) == ["iteration", "slot", "ids", "text", "activation", "cross_entropy", "kept"]
    front = json.loads((out / "frontier.json").read_text())["frontier"]
    assert [p["text"] for p in front] == list(r.frontier()["text"])
    loaded = reverie.load_run(out)
    pd.testing.assert_frame_equal(loaded.history.drop(columns="ids"), r.history.drop(columns="ids"))


def test_resume_in_python_continues_and_matches_uninterrupted(tiny_llama, tmp_path):
    full = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=8))
    stop_at_5 = lambda s: s.iteration < 5  # noqa: E731
    part = reverie.dream(
        tiny_llama,
        "neuron:L1.N7",
        EPOConfig(**SMALL, iters=8),
        out=tmp_path / "r",
        callback=stop_at_5,
        checkpoint_every=2,
    )
    assert part.stopped == "callback" and part.iterations == 5
    done = reverie.resume(tmp_path / "r", model=tiny_llama)
    assert done.stopped == "done" and done.iterations == 8
    pd.testing.assert_frame_equal(done.history.drop(columns="ids"), full.history.drop(columns="ids"))
    # a finished run can be extended
    more = reverie.resume(tmp_path / "r", model=tiny_llama, iters=10)
    assert more.iterations == 10 and sorted(more.history.iteration.unique()) == list(range(11))


def test_sigkill_then_resume_keeps_every_iteration(tiny_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "reverie",
        "dream",
        "--model",
        str(tiny_dir),
        "--target",
        "neuron:L1.N7",
        "--iters",
        "400",
        "--population",
        "4",
        "--children",
        "8",
        "--top-k",
        "32",
        "--length",
        "8",
        "--checkpoint-every",
        "1",
        "--dtype",
        "fp32",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while checkpoint_iteration(out) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_iteration(out)
    assert 6 <= killed_at < 400
    assert not (out / "frontier.json").exists()
    partial = reverie.load_run(out)  # a killed run is readable as it is
    assert partial.iterations == killed_at and partial.stopped == "unfinished"

    resumed = subprocess.run(
        [sys.executable, "-m", "reverie", "dream", "--resume", str(out), "--iters", "20", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = reverie.load_run(out)
    assert final.iterations == 20 and final.stopped == "done"
    counts = final.history.groupby("iteration").size()
    assert list(counts.index) == list(range(21))
    assert (counts.iloc[1:] == 32).all() and counts.iloc[0] >= 4
    assert list((out / "history").iterdir()) == []


def test_corrupt_checkpoint_is_one_clear_error(tiny_llama, tmp_path):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=out)
    (out / "checkpoint.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(reverie.RunDirError, match="checkpoint .* is unreadable"):
        reverie.resume(out, model=tiny_llama)


def test_existing_run_is_not_overwritten(tiny_llama, tmp_path):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), out=out)
    before = (out / "history.parquet").read_bytes()
    with pytest.raises(reverie.RunDirError, match="already holds a run"):
        reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), out=out)
    assert (out / "history.parquet").read_bytes() == before


def test_config_must_be_an_epoconfig(tiny_llama, tmp_path):
    with pytest.raises(reverie.ConfigError, match=r"pass EPOConfig\(\*\*d\)"):
        reverie.dream(tiny_llama, "neuron:L1.N7", dict(SMALL, iters=1), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config", [{}, {"model": "tiny", "target": "neuron:L1.N7"}, []])
def test_incomplete_config_json_is_one_clear_error(tiny_llama, tmp_path, config):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), out=out)
    (out / "config.json").write_text(json.dumps(config))
    for call in (lambda: reverie.resume(out, model=tiny_llama), lambda: reverie.load_run(out)):
        with pytest.raises(reverie.RunDirError, match="config.json is incomplete") as e:
            call()
        assert "\n" not in str(e.value)


def test_resume_checks_checkpoint_every_before_computing(tiny_llama, tmp_path):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(reverie.ConfigError, match="checkpoint_every"):
        reverie.resume(out, model=tiny_llama, iters=4, checkpoint_every=0)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_rewrites_config_only_once_the_run_started(tiny_llama, tmp_path):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=out)
    stopped = reverie.resume(out, model=tiny_llama, iters=5, time_budget=1e-9)  # stops before an iteration
    assert stopped.stopped == "time" and stopped.iterations == 2
    assert json.loads((out / "config.json").read_text())["epo"]["iters"] == 2
    done = reverie.resume(out, model=tiny_llama, iters=3)
    assert done.iterations == 3 and json.loads((out / "config.json").read_text())["epo"]["iters"] == 3


def test_disk_full_during_checkpoint_keeps_the_last_one(tiny_llama, tmp_path, monkeypatch):
    import errno

    from reverie.runs import rundir

    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=out)
    before = (out / "checkpoint.safetensors").read_bytes()

    def full(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir, "save_file", full)
    with pytest.raises(reverie.RunDirError) as e:
        reverie.resume(out, model=tiny_llama, iters=4, checkpoint_every=1)
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message
    assert "checkpoint of iteration 3" in message and "last checkpoint (iteration 2)" in message
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file, no lock left
    monkeypatch.undo()
    done = reverie.resume(out, model=tiny_llama, iters=4)
    assert done.iterations == 4 and sorted(done.history.iteration.unique()) == list(range(5))
