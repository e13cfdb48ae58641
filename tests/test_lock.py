"""One writer per run directory: a second is refused naming the first; a killed holder blocks nobody."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import reverie
from reverie import EPOConfig

SMALL = dict(population=4, children=8, top_k=32, length=8, seed=0)


def hold(path):
    """A process holding `path`'s run-directory lock as a dream or resume writing it does: an flock on
    path/.lock, the file holding its process id."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import fcntl, os, time
        os.makedirs({str(path)!r}, exist_ok=True)
        with open(os.path.join({str(path)!r}, ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.truncate(0)
            fh.write(str(os.getpid()))
            fh.flush()
            print("locked", flush=True)
            time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_until_the_holder_is_killed(tiny_llama, tmp_path):
    out = tmp_path / "r"
    reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=2), out=out)
    assert not (out / ".lock").exists()  # a finished writer leaves no lock file
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    holder = hold(out)
    try:
        with pytest.raises(
            reverie.RunDirError, match=f"another reverie process \\(pid {holder.pid}\\) is running"
        ) as e:
            reverie.resume(out, model=tiny_llama, iters=4)
        assert "\n" not in str(e.value)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text() == str(holder.pid)  # the killed holder's lock file stays...
    done = reverie.resume(out, model=tiny_llama, iters=4)  # ...and blocks nobody
    assert done.iterations == 4 and not (out / ".lock").exists()


def test_a_new_run_is_refused_while_its_directory_is_held(tiny_llama, tmp_path):
    out = tmp_path / "new"
    holder = hold(out)
    try:
        with pytest.raises(reverie.RunDirError, match=f"pid {holder.pid}"):
            reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), out=out)
        assert not (out / "config.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    r = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig(**SMALL, iters=1), out=out)
    assert r.stopped == "done"
