"""runs/plan.py: the plan of `reverie dream`, a new run or a resumed one, settled before any model loads."""

import dataclasses

import pytest

from reverie import EPOConfig
from reverie.errors import ConfigError, ReverieError, RunDirError, TargetError
from reverie.lm.targets import Target
from reverie.runs.plan import plan_run
from reverie.runs.rundir import RunDir


def saved_run(path, config: EPOConfig, **more):
    RunDir(path).create({"model": "bundled", "target": "neuron:L1.N7", "epo": config.to_dict(), **more})
    return path


def test_a_new_run_is_planned_with_its_target_parsed_once(tmp_path):
    config = EPOConfig(iters=3, population=4)
    plan = plan_run("neuron:L1.N7", config, out=tmp_path / "a", model="m", index_tokens=1000)
    assert isinstance(plan.target, Target) and plan.target.spec == "neuron:L1.N7"
    assert (plan.run_dir, plan.model, plan.config, plan.resume) == (tmp_path / "a", "m", config, False)
    assert (plan.report, plan.faces, plan.corpus, plan.index.max_tokens) == (True, 1, "auto", 1000)
    assert not (tmp_path / "a").exists()  # planning writes nothing
    alone = plan_run("neuron:L1.N7", config, out=tmp_path / "a", no_corpus=True)
    assert alone.corpus is None and alone.config == dataclasses.replace(config, starts="beam")
    random = plan_run("neuron:L1.N7", dataclasses.replace(config, starts="random"), out=tmp_path / "b", no_corpus=True)
    assert random.config.starts == "random"  # only "data" needs real text


def test_a_resume_is_the_saved_run_with_the_options_given(tmp_path):
    saved = EPOConfig(iters=3, population=4, seed=2, time_budget=10.0)
    path = saved_run(tmp_path / "r", saved, dtype="fp32", options={"report": False})
    plan = plan_run("neuron:L0.N0", EPOConfig(population=9), resume=path, iters=7, time_budget=60.0, model="other")
    assert plan.config == dataclasses.replace(saved, iters=7, time_budget=60.0)  # not the new run's config
    assert (plan.model, plan.target, plan.dtype, plan.resume) == ("bundled", "neuron:L1.N7", "fp32", True)
    assert plan.run_dir == path and plan.report is False  # as the run was started
    again = plan_run(resume=path, dtype="bf16", report=True)
    assert again.config == dataclasses.replace(saved, time_budget=None) and (again.dtype, again.report) == (
        "bf16",
        True,
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ReverieError, "give --target"),
        ({"target": "bogus:L1"}, TargetError, "cannot parse target"),
        ({"target": "neuron:L1.N7", "faces": 0}, ReverieError, "--diverse takes"),
        ({"target": "neuron:L1.N7", "corpus": "/nonexistent/corpus.txt"}, ReverieError, "does not exist"),
        ({"target": "neuron:L1.N7", "corpus": "bundled", "no_corpus": True}, ReverieError, "drop --corpus"),
        ({"resume": "empty"}, RunDirError, "not a reverie run directory"),
        ({"resume": "run", "faces": 2}, ReverieError, "rerun the same --diverse command"),
        ({"resume": "run", "time_budget": float("nan")}, ConfigError, "time_budget"),
        ({"target": "neuron:L1.N7", "out": "run"}, RunDirError, "already holds a run"),
    ],
)
def test_bad_input_is_one_line_before_anything_loads(tmp_path, kwargs, error, message):
    saved_run(tmp_path / "run", EPOConfig(iters=3))
    kwargs = {k: tmp_path / v if k in ("resume", "out") else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message) as caught:
        plan_run(**kwargs)
    assert "\n" not in str(caught.value)


def test_a_resume_of_unreadable_options_names_the_file(tmp_path):
    path = saved_run(tmp_path / "r", EPOConfig(iters=3))
    RunDir(path).write_json("config.json", {**RunDir(path).config(), "epo": {"iters": 3, "no_such_option": 1}})
    with pytest.raises(RunDirError, match="config.json holds EPO options reverie cannot read"):
        plan_run(resume=path)
