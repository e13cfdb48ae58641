"""Files that are never half-written (every write goes to a temporary name and is renamed into place),
strict JSON, and folder locks that allow one writer at a time."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import RunDirError

LOCK = ".lock"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path onto path: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(x) -> float | None:
    """A number as strict JSON holds it: a float, or None for NaN and infinities."""
    x = float(x)
    return x if math.isfinite(x) else None


def write_json(path: Path, data) -> None:
    """Write `data` as strict JSON, atomically: NaN or Infinity anywhere raises ValueError instead of
    writing a file other JSON readers reject (write a missing number as None). Paths and other objects
    are written as their str()."""
    text = json.dumps(data, indent=2, default=str, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None where it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def locked(folder: Path, what: str, busy: str) -> Iterator[None]:
    """Hold FOLDER/.lock (an flock, the file holding this process id) while the block runs: a second
    writer is refused with one RunDirError line, "another {what} (pid N) is running in FOLDER: {busy}".
    The kernel releases the lock when its process dies, however it dies, so a lock left by a killed
    process blocks nobody; the file itself is removed when the block ends. FOLDER is created if needed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = folder / LOCK
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as e:
            raise RunDirError(f"cannot write to {folder} ({e.strerror}): choose another --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise RunDirError(f"another {what} (pid {pid}) is running in {folder}: {busy}") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file now there
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    with handle:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still holding the lock: a waiting writer then retries on a new file
