"""What the command line does with hostile text and odd inputs: model text is data (never rich markup),
nonsense options end in one line and exit 2, and Ctrl-C saves the run and exits 130."""

import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console

import reverie
from conftest import checkpoint_iteration
from reverie import ConfigError, EPOConfig
from reverie.cli.display import frontier_table, shown
from test_cli import run

HOSTILE = "a [/x] b [bold]c\nd $x^2$"


def test_model_text_is_never_markup():
    console = Console(record=True, width=200)  # markup on, as the live display's console
    console.print(frontier_table([(1.0, 2.0, HOSTILE)], f"frontier of {HOSTILE}", penalties=[0.5]))
    text = console.export_text()
    assert "[/x]" in text and "[bold]c" in text and "⏎" in text
    assert shown("one\ntwo") == "'one⏎two'"


def test_frontier_and_dream_print_hostile_prompts(monkeypatch, capsys, tiny_dir, tmp_path):
    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "a",
        "--prompt",
        "a [/x] b [bold] c",
        "--iters",
        "0",
        "--population",
        "2",
        "--no-retokenize-check",
        "--quiet",
        "--no-report",
    )
    assert code in (0, None), err
    assert "[/x]" in out
    code, out, err = run(monkeypatch, capsys, "frontier", tmp_path / "a")
    assert code in (0, None), err
    assert "[/x]" in out and "Traceback" not in err


def test_frontier_refuses_runs_of_different_targets(monkeypatch, capsys, tiny_dir, tmp_path):
    for name, target in (("a", "neuron:L1.N7"), ("b", "neuron:L1.N8")):
        code, _, err = run(
            monkeypatch,
            capsys,
            "dream",
            "--model",
            tiny_dir,
            "--target",
            target,
            "--out",
            tmp_path / name,
            "--iters",
            "0",
            "--population",
            "2",
            "--length",
            "4",
            "--quiet",
            "--no-report",
        )
        assert code in (0, None), err
    code, _, err = run(monkeypatch, capsys, "frontier", tmp_path / "a", tmp_path / "b")
    assert code == 2 and "different targets" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--diverse", "-1"], "--diverse"),
        (["--ban", ""], "banned string cannot be empty"),
        (["--ban-token", ""], "banned token cannot be empty"),
    ],
)
def test_nonsense_options_are_one_line(monkeypatch, capsys, tiny_dir, tmp_path, args, message):
    code, _, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "x",
        "--quiet",
        *args,
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_blank_banned_strings_are_refused_in_python():
    with pytest.raises(ConfigError, match="cannot be empty"):
        EPOConfig(ban_strings=("dog", " "))


def test_ctrl_c_saves_the_run_and_exits_130(tiny_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reverie",
            "dream",
            "--model",
            str(tiny_dir),
            "--target",
            "neuron:L1.N7",
            "--out",
            str(out),
            "--iters",
            "100000",
            "--population",
            "2",
            "--children",
            "4",
            "--length",
            "4",
            "--checkpoint-every",
            "1",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background (`cmd &` without job control) ignores SIGINT,
        # and so would the child: give it the terminal's default, as a user's shell does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while checkpoint_iteration(out) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a dream running after a failure
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"reverie dream --resume {out}" in stdout
    assert checkpoint_iteration(out) >= 2  # what was computed is saved


def test_resume_keeps_the_output_options_the_run_was_started_with(monkeypatch, capsys, tiny_dir, tmp_path):
    out = tmp_path / "r"
    code, _, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        out,
        "--iters",
        "1",
        "--population",
        "2",
        "--children",
        "2",
        "--length",
        "4",
        "--quiet",
        "--no-report",
    )
    assert code in (0, None), err
    code, out_text, err = run(monkeypatch, capsys, "dream", "--resume", out, "--iters", "2", "--quiet")
    assert code in (0, None), err
    assert reverie.load_run(out).iterations == 2
    assert not (out / "report.html").exists() and "report:" not in out_text  # --no-report, remembered
