"""Dreaming several targets together (scoring/lockstep.py): the same steps as one run per target, with
fewer model passes; a sweep with together=K, Ctrl-C and its resume; bad input."""

import threading
from dataclasses import replace

import pandas as pd
import pytest
import torch

import reverie
from reverie import ConfigError, EPOConfig
from reverie.scoring import Lockstep
from reverie.sweeps.specs import slug

# targets at different layers and positions (the attention entry reads position -2: no prefix reuse for
# the batch that holds it), with the default LM swaps and insertions and deletions (prompts of several lengths)
TARGETS = ["neuron:L0.N3", "neuron:L1.N7", "attention:L1.H0.K-2", "neuron:L1.N9"]
CONFIG = EPOConfig(population=4, children=8, top_k=32, length=8, batch_size=16, iters=4, insert_rate=0.2)


def histories(runs) -> list[pd.DataFrame]:
    return [r.history[["iteration", "slot", "text", "activation", "cross_entropy", "kept"]] for r in runs]


def together(model, targets, seeds, config=CONFIG):
    """Dream every (target, seed) in its own thread, all through one Lockstep."""
    jobs = [(t, s) for t in targets for s in seeds]
    lockstep, results, errors = Lockstep(expected=len(jobs)), {}, []

    def one(i: int, target: str, seed: int) -> None:
        try:
            results[i] = reverie.dream(model, target, replace(config, seed=seed), corpus=None, lockstep=lockstep)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i, t, s)) for i, (t, s) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(jobs))], lockstep


def test_dreams_together_take_the_steps_they_take_alone(tiny_llama):
    torch.manual_seed(0)
    alone = [reverie.dream(tiny_llama, t, replace(CONFIG, seed=s), corpus=None) for t in TARGETS for s in (0, 1)]
    joint, lockstep = together(tiny_llama, TARGETS, (0, 1))
    for a, b in zip(histories(alone), histories(joint)):
        pd.testing.assert_frame_equal(a, b)  # fp32 on the CPU: to the last bit
    assert all(r.stopped == "done" for r in joint)
    # 8 searches asked for their passes; about half as many were run (a pass holds one prompt length and
    # targets of one path through the scorer: here 3 paths, L0's neuron, L1's, the attention entry)
    assert lockstep.passes < 0.6 * lockstep.asks, (lockstep.passes, lockstep.asks)
    assert not lockstep.threads  # every member left when its search ended


def test_a_failing_member_does_not_stall_the_others(tiny_llama):
    # a target the model lacks fails while the scorer is made, before joining; one failing later
    # (its windows or its run directory) leaves; the others finish
    with pytest.raises(reverie.TargetError):
        together(tiny_llama, ["neuron:L0.N3", "neuron:L7.N1"], (0,))
    config = replace(CONFIG, iters=2, insert_rate=0.0)
    joint, lockstep = together(tiny_llama, ["neuron:L0.N3", "neuron:L0.N5", "neuron:L0.N8"], (0,), config)
    assert [r.iterations for r in joint] == [2, 2, 2] and not lockstep.threads
    assert lockstep.passes * 3 == lockstep.asks  # one path, one length: every pass served all three


def test_lockstep_refuses_what_it_cannot_batch(tiny_llama):
    lockstep = Lockstep()
    reverie.make_scorer(tiny_llama, "neuron:L0.N3", CONFIG, lockstep=lockstep)
    with pytest.raises(ConfigError, match="one model, vocabulary and template"):
        reverie.make_scorer(tiny_llama, "neuron:L0.N4", replace(CONFIG, template="Hi {prompt}"), lockstep=lockstep)
    with pytest.raises(ConfigError, match="packed scorer"):
        reverie.make_scorer(tiny_llama, "neuron:L0.N4", replace(CONFIG, scorer="plain"), lockstep=Lockstep())


def test_sweep_together_matches_one_at_a_time_and_resumes_after_ctrl_c(tiny_dir, tmp_path):
    targets, config = ",".join(TARGETS[:3]), replace(CONFIG, iters=6)
    one = reverie.sweep(str(tiny_dir), targets, "0-1", tmp_path / "one", config, dtype="fp32", report=False)

    def stop_soon(event) -> None:  # Ctrl-C while the first jobs run
        if event.kind == "iteration" and event.iteration == 3:
            raise KeyboardInterrupt

    out = tmp_path / "joint"
    with pytest.raises(KeyboardInterrupt):
        reverie.sweep(
            str(tiny_dir), targets, "0-1", out, config, dtype="fp32", report=False, together=3, progress=stop_soon
        )
    assert not (out / "runs" / slug(TARGETS[2]) / "seed1" / "frontier.json").exists()  # not every job finished
    joint = reverie.sweep(str(tiny_dir), targets, "0-1", out, config, dtype="fp32", report=False, together=3)
    assert (joint["status"] == "done").all()
    for target in TARGETS[:3]:
        for seed in (0, 1):
            a, b = (reverie.load_run(d / "runs" / slug(target) / f"seed{seed}") for d in (tmp_path / "one", out))
            pd.testing.assert_frame_equal(*histories([a, b]))
    cols = ["target", "activation_any", "prompt_any", "activation_ce5"]
    pd.testing.assert_frame_equal(one[cols], joint[cols])


@pytest.mark.parametrize("together, kw", [(0, {}), (1.5, {}), (2, {"executor": "ray"})])
def test_sweep_together_bad_input(tiny_dir, tmp_path, together, kw):
    with pytest.raises(ConfigError, match="together"):
        reverie.sweep(str(tiny_dir), "neuron:L0.N3", 0, tmp_path / "s", CONFIG, together=together, **kw)
