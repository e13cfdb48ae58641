"""The command line: a real dream, the frontier command, one-line errors with exit code 2, and the
per-run EPO options that `dream` and `sweep` share."""

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.text import Text

import reverie
from reverie import EPOConfig, ReverieError
from reverie.cli.app import app, main
from reverie.lm.targets import usage


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
    code, out, err = run(
        monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7", "--out", tmp_path / "a", *SMALL
    )
    assert code in (0, None), err
    assert "frontier of neuron:L1.N7" in out and "done after 3 iterations" in out
    epo = json.loads((tmp_path / "a" / "config.json").read_text())["epo"]
    assert (epo["starts"], epo["lm_children"]) == ("data", 0.5)  # the defaults reach the command line
    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "b",
        "--seed",
        "1",
        *SMALL,
    )
    code, out, err = run(
        monkeypatch, capsys, "frontier", tmp_path / "a", tmp_path / "b", "--export", tmp_path / "front.json"
    )
    assert code in (0, None), err
    rows = json.loads((tmp_path / "front.json").read_text())
    merged = reverie.merge([reverie.load_run(tmp_path / "a").history, reverie.load_run(tmp_path / "b").history])
    assert len(rows) == len(reverie.pareto(merged)) and {r["run"] for r in rows} <= {
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    }
    assert "best at cross-entropy <= inf" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "neuron:L40.N1"], "layer 40 does not exist"),
        (["--target", "neuron:L1.N999"], "neuron 999 does not exist"),
        (["--target", 'logit:" xyzzyplughq"'], "is not one token"),
        (["--target", "attention:L1.H9.K0"], "head 9 does not exist"),
        (["--target", "direction:L1:/nonexistent/v.npy"], "does not exist"),
        (["--target", "bogus:L1"], "cannot parse target"),
        (["--target", "neuron:L1.N1", "--ban-token", '" xyzzyplughq"'], "is not one token"),
        (["--target", "neuron:L1.N1", "--population", "0"], "population must be at least 1"),
        (["--target", "neuron:L1.N1", "--penalty-max", "inf"], "penalty_max must be float"),
        (["--target", "neuron:L1.N1", "--time-budget", "nan"], "time_budget must be float"),
        (["--target", "neuron:L1.N1", "--gcg", "1", "--penalty", "2"], "give --gcg or --penalty, not both"),
        (["--target", "neuron:L1.N1", "--penalty", "2"], "1 penalties given for a population of 8"),
    ],
)
def test_bad_target_or_option_is_one_line_exit_2(monkeypatch, capsys, tiny_dir, tmp_path, args, message):
    code, out, err = run(
        monkeypatch, capsys, "dream", "--model", tiny_dir, "--out", tmp_path / "x", *args, "--iters", "1", "--quiet"
    )
    assert code == 2
    assert message in err


def test_missing_model_and_unwritable_output(monkeypatch, capsys, tiny_dir, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(monkeypatch, capsys, "dream", "--model", tmp_path / "nope", "--target", "neuron:L1.N1")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "runs").exists()  # a failed start leaves no empty run directory
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N1", "--out", blocker / "run"
    )
    assert code == 2 and "cannot write to run directory" in err


def test_unreadable_checkpoint_keeps_history(monkeypatch, capsys, tiny_dir, tmp_path):
    out = tmp_path / "r"
    code, _, err = run(
        monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7", "--out", out, *SMALL
    )
    assert code in (0, None), err
    (out / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run(monkeypatch, capsys, "dream", "--resume", out, "--quiet")
    assert code == 2 and "is unreadable" in err
    assert (out / "history.parquet").exists()  # nothing computed is lost
    code, _, err = run(monkeypatch, capsys, "dream", "--resume", tmp_path / "empty")
    assert code == 2 and "not a reverie run directory" in err


def test_hub_id_without_network_is_one_line(monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 45 s of retries
    code, _, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        "nobody/no-such-model",
        "--target",
        "neuron:L1.N1",
        "--out",
        "/tmp/reverie-never-written",
    )
    assert code == 2 and "cannot load model 'nobody/no-such-model'" in err


def test_console_script_entry_point():
    script = Path(sys.executable).parent / "reverie"  # installed next to the interpreter
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "dream" in res.stdout and "frontier" in res.stdout


# EPOConfig fields that are deliberately not command-line options:
NOT_ON_THE_COMMAND_LINE = {
    "init_ids",  # starting prompts: --start data takes them from the --corpus windows
    "avoid_ids",  # --diverse sets these two from the earlier dreams' prompts
    "avoid_penalty",
}
NOT_ON_SWEEP = {
    "seed",  # --seeds gives each job its seed
    "time_budget",  # a sweep's runs go to their iteration count (its index counts finished runs only)
}

# A value other than the default for every per-run option, as typed on the command line.
EVERY_OPTION = {
    "iters": ["--iters", "7"],
    "population": ["--population", "3"],
    "children": ["--children", "5"],
    "top_k": ["--top-k", "9"],
    "top_k_start": ["--top-k-start", "2"],
    "length": ["--length", "7"],
    "insert_rate": ["--insert-rate", "0.2"],
    "delete_rate": ["--delete-rate", "0.1"],
    "min_length": ["--min-length", "5"],
    "max_length": ["--max-length", "9"],
    "penalty_min": ["--penalty-min", "0.5"],
    "penalty_max": ["--penalty-max", "5"],
    "penalties": ["--penalty", "0.2", "--penalty", "1", "--penalty", "3"],
    "restart_every": ["--restart-every", "4"],
    "adaptive_restart": ["--adaptive-restart"],
    "restart_penalty": ["--restart-penalty", "0.5", "2"],
    "init_prompt": ["--prompt", "The cat sat"],
    "fluency": ["--fluency", "self:2"],
    "repetition_penalty": ["--repetition-penalty", "0.3"],
    "template": ["--template", "Once upon a time {prompt}"],
    "ban_strings": ["--ban", "dog"],
    "ban_tokens": ["--ban-token", "17"],
    "ascii_only": ["--ascii-only"],
    "check_retokenization": ["--no-retokenize-check"],
    "word_start": ["--word-start"],
    "batch_size": ["--batch-size", "16"],
    "scorer": ["--scorer", "plain"],
    "starts": ["--start", "sampled"],
    "junk_penalty": ["--junk-penalty", "2"],
    "lm_guidance": ["--lm-guidance", "0.2"],
    "lm_children": ["--lm-children", "0.25"],
    "pair_rate": ["--pair-rate", "0.3"],
    "ce_horizon": ["--ce-horizon", "2"],
}
DREAM_ONLY = {"seed": ["--seed", "4"], "time_budget": ["--time-budget", "60"]}


def params(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def test_dream_and_sweep_offer_every_per_run_option_defined_once():
    per_run = {f.name for f in dataclasses.fields(EPOConfig)} - NOT_ON_THE_COMMAND_LINE
    dream, sweep = params("dream"), params("sweep")
    assert per_run <= dream.keys()
    assert per_run - NOT_ON_SWEEP <= sweep.keys() and not NOT_ON_SWEEP & sweep.keys()
    for name in (per_run - NOT_ON_SWEEP) | {"gcg"}:  # the same flags, defaults and help in both
        a, b = dream[name], sweep[name]
        assert (a.opts, a.secondary_opts, a.default, a.help) == (b.opts, b.secondary_opts, b.default, b.help)
    for name in per_run - {"iters", "penalties", "fluency", "ban_strings", "ban_tokens"}:  # these default to None / []
        assert dream[name].default == getattr(EPOConfig(), name), name  # the rest: EPOConfig's defaults


def test_the_same_options_make_the_same_config_in_dream_and_sweep(monkeypatch, capsys, tiny_dir, tmp_path):
    per_run = {f.name for f in dataclasses.fields(EPOConfig)} - NOT_ON_THE_COMMAND_LINE
    assert EVERY_OPTION.keys() | DREAM_ONLY.keys() == per_run
    made = {}

    def capture(command):
        def run_instead(*args, **kwargs):
            made[command] = next(a for a in (*args, *kwargs.values()) if isinstance(a, EPOConfig))
            raise ReverieError("captured")

        return run_instead

    monkeypatch.setattr(importlib.import_module("reverie.runs.dream"), "dream", capture("dream"))
    monkeypatch.setattr(importlib.import_module("reverie.sweeps.sweep"), "sweep", capture("sweep"))
    given = [arg for args in EVERY_OPTION.values() for arg in args]
    code, _, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N1",
        "--out",
        tmp_path / "d",
        *given,
        *DREAM_ONLY["seed"],
        *DREAM_ONLY["time_budget"],
        "--quiet",
    )
    assert code == 2 and "captured" in err
    code, _, err = run(
        monkeypatch,
        capsys,
        "sweep",
        "--model",
        tiny_dir,
        "--targets",
        "neuron:L1.N1",
        "--out",
        tmp_path / "s",
        *given,
        "--quiet",
    )
    assert code == 2 and "captured" in err
    default = EPOConfig()
    assert [name for name in per_run if getattr(made["dream"], name) == getattr(default, name)] == []
    assert made["sweep"] == dataclasses.replace(made["dream"], seed=default.seed, time_budget=None)
    assert made["dream"].fluency == (("self", 2.0),) and made["dream"].ban_tokens == (17,)


def test_gcg_makes_a_gcg_config(monkeypatch, capsys, tiny_dir, tmp_path):
    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "g",
        "--gcg",
        "0.5",
        "--iters",
        "2",
        "--children",
        "8",
        "--top-k",
        "16",
        "--length",
        "6",
        "--quiet",
        "--no-report",
    )
    assert code in (0, None), err
    config = reverie.load_run(tmp_path / "g").config
    assert (config.population, config.penalties, config.restart_every, config.children) == (1, (0.5,), 0, 8)


@pytest.mark.parametrize(
    "command, option, forms",
    [
        ("dream", "target", usage()),
        ("scan", "target", usage(scans=True)),
        ("attribute", "target", usage()),
        ("sweep", "targets", usage()),
    ],
)
def test_target_help_lists_the_spec_forms(command, option, forms):
    assert forms in Text.from_markup(params(command)[option].help).plain
