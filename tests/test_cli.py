"""The command line: a real dream, the frontier command, and one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import reverie
from reverie.cli.app import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["reverie", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    if exit_info.value.code == 2:  # errors are exactly one line, never a traceback
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    return exit_info.value.code, out, err


SMALL = ["--iters", "3", "--population", "4", "--children", "8", "--top-k", "32", "--length", "8", "--quiet"]


def test_dream_and_frontier(monkeypatch, capsys, tiny_dir, tmp_path):
    code, out, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7",
                         "--out", tmp_path / "a", *SMALL)
    assert code in (0, None), err
    assert "frontier of neuron:L1.N7" in out and "done after 3 iterations" in out
    code, out, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7",
                         "--out", tmp_path / "b", "--seed", "1", *SMALL)
    code, out, err = run(monkeypatch, capsys, "frontier", tmp_path / "a", tmp_path / "b",
                         "--export", tmp_path / "front.json")
    assert code in (0, None), err
    rows = json.loads((tmp_path / "front.json").read_text())
    merged = reverie.merge([reverie.load_run(tmp_path / "a").history, reverie.load_run(tmp_path / "b").history])
    assert len(rows) == len(reverie.pareto(merged)) and {r["run"] for r in rows} <= {str(tmp_path / "a"), str(tmp_path / "b")}
    assert "best at cross-entropy <= inf" in out


@pytest.mark.parametrize("args, message", [
    (["--target", "neuron:L40.N1"], "layer 40 does not exist"),
    (["--target", "neuron:L1.N999"], "neuron 999 does not exist"),
    (["--target", "logit:\" xyzzyplughq\""], "is not one token"),
    (["--target", "attention:L1.H9.K0"], "head 9 does not exist"),
    (["--target", "direction:L1:/nonexistent/v.npy"], "does not exist"),
    (["--target", "bogus:L1"], "cannot parse target"),
    (["--target", "neuron:L1.N1", "--ban-token", "\" xyzzyplughq\""], "is not one token"),
    (["--target", "neuron:L1.N1", "--population", "0"], "population must be at least 1"),
])
def test_bad_target_or_option_is_one_line_exit_2(monkeypatch, capsys, tiny_dir, tmp_path, args, message):
    code, out, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--out", tmp_path / "x", *args,
                         "--iters", "1", "--quiet")
    assert code == 2
    assert message in err


def test_missing_model_and_unwritable_output(monkeypatch, capsys, tiny_dir, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(monkeypatch, capsys, "dream", "--model", tmp_path / "nope", "--target", "neuron:L1.N1")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "runs").exists()            # a failed start leaves no empty run directory
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N1",
                       "--out", blocker / "run")
    assert code == 2 and "cannot write to run directory" in err


def test_unreadable_checkpoint_keeps_history(monkeypatch, capsys, tiny_dir, tmp_path):
    out = tmp_path / "r"
    code, _, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7", "--out", out, *SMALL)
    assert code in (0, None), err
    (out / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run(monkeypatch, capsys, "dream", "--resume", out, "--quiet")
    assert code == 2 and "is unreadable" in err
    assert (out / "history.parquet").exists()          # nothing computed is lost
    code, _, err = run(monkeypatch, capsys, "dream", "--resume", tmp_path / "empty")
    assert code == 2 and "not a reverie run directory" in err


def test_hub_id_without_network_is_one_line(monkeypatch, capsys):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 45 s of retries
    code, _, err = run(monkeypatch, capsys, "dream", "--model", "nobody/no-such-model", "--target", "neuron:L1.N1",
                       "--out", "/tmp/reverie-never-written")
    assert code == 2 and "cannot load model 'nobody/no-such-model'" in err


def test_console_script_entry_point():
    script = Path(sys.executable).parent / "reverie"      # installed next to the interpreter
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "dream" in res.stdout and "frontier" in res.stdout
