"""Hub ids on a machine that cannot reach the hub: a cached model loads from the cache at once (without the
hub library's minutes of retries), and one that is not cached fails at once with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

LOAD = "import reverie; m = reverie.load_model('tiny/cached'); print('layers', m.n_layers)"


@pytest.fixture
def no_hub(tmp_path, tiny_dir):
    """An environment whose hub cache holds tiny_dir as the hub id tiny/cached and whose hub endpoint
    refuses connections (a closed local port): a machine without network, made certain."""
    repo = tmp_path / "hf" / "hub" / "models--tiny--cached"
    shutil.copytree(tiny_dir, repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    return {
        **env,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "REVERIE_CACHE": str(tmp_path / "reverie-cache"),
    }


def python(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


def test_a_cached_model_loads_without_the_hub(no_hub):
    res = python("-c", LOAD, env=no_hub)
    assert res.returncode == 0, res.stderr
    assert "layers 2" in res.stdout
    assert "Retrying" not in res.stderr  # no request was made, so none retried
    assert "loaded tiny/cached from the local cache" in res.stderr and "cannot be reached" in res.stderr


def test_a_model_not_cached_fails_at_once_in_one_line(no_hub, tmp_path):
    res = python(
        "-m",
        "reverie",
        "dream",
        "--model",
        "nobody/not-cached",
        "--target",
        "neuron:L1.N1",
        "--out",
        str(tmp_path / "never-written"),
        env=no_hub,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("loading model")]
    assert (
        len(lines) == 1
        and "not (wholly) in the local cache" in lines[0]
        and "hf download nobody/not-cached" in lines[0]
    )
