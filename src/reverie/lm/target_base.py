"""The `Target` base class, shared by the target kinds in `targets.py` and the SAE features in `sae.py`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ModelError, TargetError

if TYPE_CHECKING:
    import torch

    from .model import Model


def absolute(path: str | os.PathLike) -> str:
    """A path inside a target spec (a direction file, an SAE folder), made absolute so that the spec means
    the same from any directory (a run resumes and reports from anywhere)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


class Target:
    """Base class: override `value`; set `hooks` to the hook points it reads."""

    hooks: tuple[str, ...] = ()
    banned_text: tuple[str, ...] = ()
    position: int | slice | None = None  # the prompt position it reads (-1: the last; a slice: every position,
    #   for a copy read per position); None: no one position to move (a custom target reads what it likes)
    reads_logits = True  # whether `value` may read "logits"; if not, scoring skips what only they need

    def prepare(self, model: Model) -> None:
        """Validate against the model (and build whatever depends on it) before any work starts."""
        for name in self.hooks:
            try:
                model.check_hook(name)
            except ModelError as e:
                raise TargetError(f"{self.spec}: {e}") from None

    def check_length(self, n: int) -> None:
        """Validate against the prompt length."""

    def value(self, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return repr(self)
