"""Diverse dreams: K distinct dreams of one feature, so a polysemantic feature shows its several faces.

Face 0 is an ordinary dream. Face j dreams again (seed + j) while avoiding the tokens of every earlier
face's best prompts (the best at cross-entropy <= 4, 5, 6 and unconstrained): selection subtracts
`overlap` x |face 0's best activation| x the fraction of a prompt's tokens among them, so copying an
earlier face costs about as much as that face's whole activation. Each face is an ordinary run
directory (OUT/face0, OUT/face1, ...) that resumes on its own; OUT/faces.html shows them side by side.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from ..lm.model import Model, load_model
from ..search.config import EPOConfig
from ..search.frontier import THRESHOLDS, best_at
from .dream import DreamResult, dream, load_run, resume
from .rundir import CHECKPOINT, finished


def _faces_so_far(path: Path) -> str:
    """ "done" if the face's run finished, "started" if it has a checkpoint, else "new"."""
    if finished(path):
        return "done"
    return "started" if (path / CHECKPOINT).exists() else "new"


def avoided_tokens(results: list[DreamResult]) -> tuple[int, ...]:
    """Every token of the best prompts (at cross-entropy <= 4, 5, 6, any) of earlier faces."""
    tokens: set[int] = set()
    for r in results:
        for limit in THRESHOLDS:
            best = best_at(r.history, limit)
            if best is not None:
                tokens.update(int(t) for t in best["ids"])
    return tuple(sorted(tokens))


def diverse(
    model: Model | str,
    target,
    config: EPOConfig | None = None,
    k: int = 3,
    *,
    out: str | Path | None = None,
    overlap: float = 1.0,
    callback=None,
    **dream_options,
) -> list[DreamResult]:
    """K dreams of `target`, each avoiding the tokens of the ones before; with `out`, resumable, with
    OUT/face{j} run directories and OUT/faces.html."""
    config = config or EPOConfig()
    if k < 1 or overlap < 0:
        raise ConfigError("diverse dreams need k >= 1 and overlap >= 0")
    if isinstance(model, str):
        model = load_model(model)
    results: list[DreamResult] = []
    for j in range(k):
        path = None if out is None else Path(out) / f"face{j}"
        state = "new" if path is None else _faces_so_far(path)
        if path is not None and state == "done":
            results.append(load_run(path))
            continue
        if path is not None and state == "started":
            results.append(
                resume(path, model=model, target=None if isinstance(target, str) else target, callback=callback)
            )
            if results[-1].stopped != "done":
                break
            continue
        face = replace(config, seed=config.seed + j)
        if results:
            first = results[0].best()
            scale = abs(float(first["activation"])) if first is not None else 1.0
            face = replace(face, avoid_ids=avoided_tokens(results), avoid_penalty=overlap * (scale or 1.0))
        results.append(dream(model, target, face, out=path, callback=callback, **dream_options))
        if results[-1].stopped != "done":
            break  # Ctrl-C, a time budget or the callback: the next faces wait for a rerun
    return results
