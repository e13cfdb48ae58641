"""Sweeps: target/seed expansion, in-process vs Ray, retries and failures, SIGKILL + rerun, the index page."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import reverie
from conftest import checkpoint_iteration
from reverie import ConfigError, EPOConfig, TargetError
from reverie.lm.targets import Custom
from reverie.sweeps.specs import expand_targets, parse_seeds, slug

sw = importlib.import_module("reverie.sweeps.sweep")  # `reverie.sweep` itself is the function

SMALL = dict(population=4, children=8, top_k=32, length=8, batch_size=64)
TARGETS = "neuron:L0.N3,neuron:L1.N7,attention:L1.H0.K-2"


def test_expand_targets_ranges_files_and_lists(tmp_path):
    assert expand_targets("neuron:L9.N0-2") == ["neuron:L9.N0", "neuron:L9.N1", "neuron:L9.N2"]
    assert expand_targets("neuron:L*.N5", n_layers=3) == ["neuron:L0.N5", "neuron:L1.N5", "neuron:L2.N5"]
    assert expand_targets("attention:L0-1.H2.K-2") == ["attention:L0.H2.K-2", "attention:L1.H2.K-2"]
    assert expand_targets(["neuron:L1.N2, logit:','", "neuron:L1.N2"]) == ["neuron:L1.N2", "logit:','"]
    path = tmp_path / "targets.txt"
    path.write_text("# a list from a paper\nneuron:L3.N492\n\n  neuron:L1.N0-1  \n# done\n")
    assert expand_targets(str(path)) == ["neuron:L3.N492", "neuron:L1.N0", "neuron:L1.N1"]
    assert parse_seeds("0-2,5") == [0, 1, 2, 5] and parse_seeds(3) == [3] and parse_seeds([1, 1, 0]) == [1, 0]
    assert slug("neuron:L9.N402") == "neuron_L9.N402" and slug('logit:" dog"') != slug("logit:'dog'")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("neuron:L*.N5", "layer count"),
        ("neuron:L1.N*", r"layers only"),
        ("neuron:L1.N9-3", "empty"),
        ("neuron:L1", "cannot parse"),
        ("missing.txt", "cannot read the target file"),
        ("bogus:L1", "cannot parse"),
    ],
)
def test_bad_target_specs(spec, match):
    with pytest.raises(TargetError, match=match):
        expand_targets(spec)


@pytest.mark.parametrize("seeds", ["", "a", "3-1", [-1], "0-"])
def test_bad_seeds(seeds):
    with pytest.raises(ConfigError):
        parse_seeds(seeds)


@pytest.fixture(scope="module")
def local_sweep(tiny_dir, tmp_path_factory):
    """3 targets x 2 seeds x 4 iterations in this process, one torch thread like each Ray actor."""
    out = tmp_path_factory.mktemp("sweeps") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        index = reverie.sweep(
            str(tiny_dir), TARGETS, "0-1", out, EPOConfig(**SMALL, iters=4), dtype="fp32", report=False
        )
    finally:
        torch.set_num_threads(threads)
    return out, index


def _best(index):
    cols = [c for c in index.columns if c.startswith(("activation_", "cross_entropy_", "prompt_"))]
    return index.set_index("target")[["status", "seeds_done", *cols]].sort_index()


def test_local_sweep_writes_runs_and_index(local_sweep):
    out, index = local_sweep
    assert list(index["target"]) == TARGETS.split(",")
    assert (index["status"] == "done").all() and (index["seeds_done"] == 2).all()
    assert pd.read_parquet(out / "index.parquet")["target"].tolist() == index["target"].tolist()
    for target in TARGETS.split(","):
        runs = [reverie.load_run(out / "runs" / slug(target) / f"seed{s}") for s in (0, 1)]
        assert [r.config.seed for r in runs] == [0, 1] and all(r.stopped == "done" for r in runs)
        merged = reverie.merge([r.history for r in runs])
        row = index.set_index("target").loc[target]
        assert row["activation_any"] == pytest.approx(merged["activation"].max())
    html = (out / "index.html").read_text()
    assert "runs/neuron_L0.N3/seed1/frontier.json" in html  # no report.html here: links the frontier
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["model"] and meta["epo"]["iters"] == 4 and meta["seeds"] == [0, 1]


def test_rerun_skips_finished_jobs_and_refuses_other_options(local_sweep, tiny_dir):
    out, index = local_sweep
    assert sw.layer_count(str(tiny_dir)) == 2  # L* on Ray: from the config, no weights loaded
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = reverie.sweep(str(tiny_dir), TARGETS, "0-1", out, EPOConfig(**SMALL, iters=4), dtype="fp32", report=False)
    pd.testing.assert_frame_equal(again, index)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == stamps
    with pytest.raises(ConfigError, match="different EPO options .*iters"):
        reverie.sweep(str(tiny_dir), TARGETS, "0-1", out, EPOConfig(**SMALL, iters=5), dtype="fp32")
    with pytest.raises(ConfigError, match="different model"):
        reverie.sweep("other-model", TARGETS, "0-1", out, EPOConfig(**SMALL, iters=4), dtype="fp32")


def test_a_second_sweep_process_on_the_same_folder_is_refused(local_sweep, tiny_dir):
    """While one process holds the sweep folder, another is refused with one line and writes nothing."""
    out, _ = local_sweep
    before = (out / "sweep.json").read_bytes()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
from pathlib import Path
from reverie.sweeps.sweep import locked
with locked(Path({str(out)!r})):
    print("locked", flush=True)
    time.sleep(60)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "reverie",
                "sweep",
                "--model",
                str(tiny_dir),
                "--targets",
                TARGETS,
                "--seeds",
                "0-1",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and f"another sweep (pid {holder.pid}) is running" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert (out / "sweep.json").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    again = reverie.sweep(str(tiny_dir), TARGETS, "0-1", out, EPOConfig(**SMALL, iters=4), dtype="fp32", report=False)
    assert (again["status"] == "done").all()  # the lock died with its process


def die_once(marker):
    """A custom feature whose first evaluation kills the process it runs in (a dying Ray worker)."""

    def feature(cache):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return cache["blocks.1.mlp.hook_post"][:, -1, 5]

    return feature


def test_ray_sweep_agrees_with_in_process_and_survives_a_dying_worker(local_sweep, tiny_dir, tmp_path):
    ray = pytest.importorskip("ray")
    out, local = local_sweep
    marker = tmp_path / "died"
    dying = Custom(die_once(str(marker)), hooks=("blocks.1.mlp.hook_post",), name="die_once")
    events = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        index = reverie.sweep(
            str(tiny_dir),
            [TARGETS, dying],
            "0-1",
            tmp_path / "ray",
            EPOConfig(**SMALL, iters=4),
            executor="ray",
            cpus_per_actor=1,
            dtype="fp32",
            report=False,
            progress=events.append,
        )
    finally:
        ray.shutdown()
    # Same seeds, same weights, fp32, one torch thread and the same batch size on both sides: the runs
    # are the same computation, so the indexes agree exactly (prompts included).
    pd.testing.assert_frame_equal(_best(index[index["target"] != "custom:die_once"]), _best(local))
    assert marker.exists()
    retries = [e for e in events if e.kind == "retry"]
    assert len(retries) == 1 and "worker died" in retries[0].error and retries[0].job.spec == "custom:die_once"
    assert index.set_index("target").loc["custom:die_once", "status"] == "done"


def test_failing_jobs_are_retried_then_recorded_without_stopping(tiny_llama, tmp_path, monkeypatch):
    dream_module = importlib.import_module("reverie.runs.dream")
    real, calls = dream_module.dream, []

    def flaky(model, target, config, **kw):
        calls.append((target, config.seed))
        if target == "neuron:L0.N1" or (target == "neuron:L0.N2" and calls.count((target, config.seed)) <= 2):
            raise RuntimeError(f"flaky {target}")
        return real(model, target, config, **kw)

    monkeypatch.setattr(dream_module, "dream", flaky)
    index = reverie.sweep(
        tiny_llama,
        "neuron:L0.N1-2,neuron:L5.N0,neuron:L1.N4",
        0,
        tmp_path / "s",
        EPOConfig(**SMALL, iters=2),
        retries=2,
        report=False,
    ).set_index("target")
    assert calls.count(("neuron:L0.N1", 0)) == 3 and calls.count(("neuron:L0.N2", 0)) == 3
    assert calls.count(("neuron:L5.N0", 0)) == 1  # bad input is not retried
    assert index["status"].to_dict() == {
        "neuron:L0.N1": "failed",
        "neuron:L0.N2": "done",
        "neuron:L5.N0": "failed",
        "neuron:L1.N4": "done",
    }
    failure = json.loads((tmp_path / "s/runs/neuron_L0.N1/seed0.failed.json").read_text())
    assert failure["attempts"] == 3 and failure["error"] == "RuntimeError: flaky neuron:L0.N1"
    assert "layer 5 does not exist" in index.loc["neuron:L5.N0", "error"]
    assert not (tmp_path / "s/runs/neuron_L0.N2/seed0.failed.json").exists()


def test_index_html_escapes_dreamed_text_and_links_reports(tiny_llama, tmp_path):
    out = tmp_path / "s"
    reverie.sweep(tiny_llama, "neuron:L0.N3", 0, out, EPOConfig(**SMALL, iters=2), report=True)
    html = (out / "index.html").read_text()
    assert (
        'href="runs/neuron_L0.N3/seed0/report.html"' in html and (out / "runs/neuron_L0.N3/seed0/report.html").exists()
    )
    front_path = out / "runs/neuron_L0.N3/seed0/frontier.json"
    front = json.loads(front_path.read_text())
    front["frontier"][0].update(text="</span><script>alert(1)</script>", activation=1e6, cross_entropy=3.0)
    front_path.write_text(json.dumps(front))
    index = importlib.import_module("reverie.sweeps.index").rebuild_index(out)
    assert index.loc[0, "prompt_ce4"] == "</span><script>alert(1)</script>"
    html = (out / "index.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the page's own sorting code


def test_sigkill_then_rerun_does_every_job_once(tiny_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "reverie",
        "sweep",
        "--model",
        str(tiny_dir),
        "--targets",
        "neuron:L0-1.N3",
        "--seeds",
        "0-1",
        "--out",
        str(out),
        "--iters",
        "12",
        "--population",
        "4",
        "--children",
        "8",
        "--top-k",
        "32",
        "--length",
        "8",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "1",
        "--dtype",
        "fp32",
        "--no-report",
        "--quiet",
    ]
    runs = [out / "runs" / t / f"seed{s}" for t in ("neuron_L0.N3", "neuron_L1.N3") for s in (0, 1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while (
        time.time() < deadline
        and proc.poll() is None
        and not ((runs[0] / "frontier.json").exists() and checkpoint_iteration(runs[1]) >= 3)
    ):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_iteration(runs[1])
    assert 3 <= killed_at < 12 and not (runs[1] / "frontier.json").exists()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in runs[0].rglob("*") if p.is_file()}
    started = (runs[1] / "config.json").stat().st_mtime_ns

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in runs[0].rglob("*") if p.is_file()} == finished
    assert (runs[1] / "config.json").stat().st_mtime_ns == started  # resumed, not restarted
    for run in runs:
        result = reverie.load_run(run)
        assert result.stopped == "done" and result.iterations == 12
        counts = result.history.groupby("iteration").size()
        assert list(counts.index) == list(range(13)) and counts.iloc[0] >= 4 and (counts.iloc[1:] == 32).all()
        assert list((run / "history").iterdir()) == []
    index = pd.read_parquet(out / "index.parquet")
    assert (index["status"] == "done").all() and (index["seeds_done"] == 2).all()
    assert np.isfinite(index["activation_any"]).all()


def test_cli_sweep_bad_input_is_one_line(tmp_path):
    for args, match in (
        (["--targets", "neuron:L1.N9-3"], "range"),
        (["--targets", "neuron:L1.N3", "--seeds", "x"], "seeds"),
        (["--targets", "neuron:L1.N3", "--no-corpus", "--corpus", "bundled"], "--no-corpus"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "reverie", "sweep", "--out", str(tmp_path / "s"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and r.stderr.startswith("error: ") and match in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def run_cli(monkeypatch, *args) -> int:
    """`reverie ARGS` in this process; its exit code."""
    from reverie.cli.app import main

    monkeypatch.setattr(sys, "argv", ["reverie", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code or 0


def test_cli_sweep_passes_every_run_option_to_its_jobs(tiny_dir, tmp_path, monkeypatch, capsys):
    out, template = tmp_path / "s", "Once upon a time {prompt}"
    args = [
        "sweep",
        "--model",
        tiny_dir,
        "--targets",
        "neuron:L0.N3,neuron:L1.N7",
        "--seeds",
        "0-1",
        "--out",
        out,
        "--iters",
        "1",
        "--population",
        "2",
        "--children",
        "4",
        "--top-k",
        "8",
        "--length",
        "6",
        "--batch-size",
        "16",
        "--dtype",
        "fp32",
        "--no-report",
        "--quiet",
        "--template",
        template,
        "--repetition-penalty",
        "0.25",
        "--insert-rate",
        "0.3",
        "--ban",
        "dog",
    ]
    assert run_cli(monkeypatch, *args) == 0, capsys.readouterr().err
    configs = [json.loads(p.read_text())["epo"] for p in sorted((out / "runs").glob("*/seed*/config.json"))]
    assert len(configs) == 4 and sorted(c["seed"] for c in configs) == [0, 0, 1, 1]
    for c in configs:
        assert (c["template"], c["repetition_penalty"], c["insert_rate"], c["ban_strings"]) == (
            template,
            0.25,
            0.3,
            ["dog"],
        )
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["epo"]["template"] == template and meta["epo"]["insert_rate"] == 0.3
    del meta["epo"]["adaptive_restart"]  # as an older reverie wrote it: an option added since is its default
    (out / "sweep.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert run_cli(monkeypatch, *args) == 0, capsys.readouterr().err  # the same options: resumed (all done)
    assert run_cli(monkeypatch, *args[:-1], "cat") == 2
    assert "different EPO options (ban_strings: ['dog'] here, ['cat'] now)" in capsys.readouterr().err


def test_sweep_can_start_from_a_scan(tiny_dir, tmp_path):
    from reverie.evidence.scan import ScanConfig, scan

    model = reverie.load_model(tiny_dir)
    (tmp_path / "c.txt").write_text(
        "The cat sat on the mat while the dog slept by the warm fire in the old stone house."
    )
    windows = scan(
        model, ["neuron:L0.N3", "neuron:L1.N7"], str(tmp_path / "c.txt"), ScanConfig(window=8, top=5, chunk=16)
    )
    (tmp_path / "scan").mkdir()
    windows.assign(ids=[list(map(int, i)) for i in windows["ids"]]).to_parquet(tmp_path / "scan" / "scan.parquet")
    config = EPOConfig(iters=2, check_retokenization=False, **SMALL)
    index = reverie.sweep(
        model, "neuron:L0.N3,neuron:L1.N7", "0", tmp_path / "sw", config, report=False, starts=tmp_path / "scan"
    )
    assert list(index["status"]) == ["done", "done"]
    for spec in ("neuron:L0.N3", "neuron:L1.N7"):
        run = reverie.load_run(tmp_path / "sw" / "runs" / slug(spec) / "seed0")
        mine = {tuple(map(int, i)) for i in windows[windows["target"] == spec]["ids"]}
        assert run.config.init_ids[3] in mine and run.config.init_ids[0] == ()
    with pytest.raises(ConfigError, match="starts"):  # the same folder, other starts
        reverie.sweep(model, "neuron:L0.N3", "0", tmp_path / "sw", config, report=False)


def test_sweep_from_the_model_alone(tiny_dir, tmp_path):
    """corpus=None (`reverie sweep --no-corpus`): no run has windows; sweep.json keeps it, so the folder
    refuses a rerun with a corpus."""
    model = reverie.load_model(tiny_dir)
    (tmp_path / "c.txt").write_text("The cat sat on the mat while the dog slept by the warm fire in the old house.")
    config = EPOConfig(iters=2, check_retokenization=False, **SMALL)
    index = reverie.sweep(model, "neuron:L0.N3", "0", tmp_path / "sw", config, report=False, corpus=None)
    assert list(index["status"]) == ["done"]
    run = reverie.load_run(tmp_path / "sw" / "runs" / slug("neuron:L0.N3") / "seed0")
    assert run.windows is None and run.config.init_ids == ()
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["starts"] == "none"
    with pytest.raises(ConfigError, match="starts"):
        reverie.sweep(model, "neuron:L0.N3", "0", tmp_path / "sw", config, report=False, corpus=tmp_path / "c.txt")
