"""Where reverie keeps what it computes once per machine: converted models, dtype probes, kernels."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import files
from ..errors import ModelError


def cache_dir() -> Path:
    """REVERIE_CACHE, else $XDG_CACHE_HOME/reverie, else ~/.cache/reverie."""
    if os.environ.get("REVERIE_CACHE"):
        return Path(os.environ["REVERIE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reverie"


def write_folder(target: Path, fill: Callable[[Path], None], what: str) -> Path:
    """Fill a fresh temporary folder beside `target` with `fill(folder)`, then rename it into place, so a
    killed conversion leaves no half-written model behind."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fill(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise ModelError(
            f"cannot write {what} at {target} ({e.strerror}): set REVERIE_CACHE to a writable folder"
        ) from e
    return target


def read_json(path: Path) -> dict:
    """A JSON object from the cache, or {} if it is missing or unreadable."""
    data = files.read_json(path)
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> bool:
    """Write a JSON cache file atomically and strictly (`files.write_json`); False (and nothing written)
    where the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, data)
        return True
    except (OSError, ValueError):
        return False
