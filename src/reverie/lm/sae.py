"""Sparse-autoencoder (SAE) features as dream targets.

An SAE feature's value is its encoder activation at the SAE's hook point (autoencoder.py: the formula,
SAEWeights, the on-disk layout, train_sae).

Sources: a SAELens `SAE` object (optional extra: `pip install 'reverie[sae]'`), a pretrained SAE by
name from SAELens's directory (`RELEASE/SAE_ID`, see `saelens.py`), a folder in SAELens's on-disk
layout (what `sae.save_model(folder)` writes, also reverie's minimal local format without SAELens),
or SAEWeights.

Hook names are TransformerLens names, mapped onto any supported architecture by the model adapter.
An SAE that names its model and does not fit the loaded one (no such hook, another width) is refused
with that model's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError, TargetError
from . import saelens
from .autoencoder import SAEWeights, train_sae
from .target_base import Target, absolute

if TYPE_CHECKING:
    from .model import Model

__all__ = ["SAEFeature", "SAEWeights", "train_sae", "is_name"]  # SAEWeights, train_sae: from autoencoder.py


@dataclass
class SAEFeature(Target):
    """Encoder activation of SAE feature `feature` at the SAE's hook point, read at `position`.

    `sae` is an `SAEWeights`, a folder in SAELens's layout, a SAELens `SAE` object, or the name of a
    pretrained SAE in SAELens's directory, `RELEASE/SAE_ID` (see `saelens.py`; downloaded once)."""

    reads_logits = False

    sae: object
    feature: int
    position: int = -1
    weights: SAEWeights | None = field(default=None, init=False, repr=False)
    source: str = field(default="<SAE>", init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.sae, str) and is_name(self.sae):
            release, sae_id = saelens.split_name(str(self.sae))
            self.source = f"{release}/{sae_id}"
            self.weights = replace(
                SAEWeights.from_saelens(saelens.load(release, sae_id, self.feature)),
                model_name=saelens.model_of(release),
            )
        elif isinstance(self.sae, (str, Path)):
            self.source = absolute(self.sae)
            self.weights = SAEWeights.load(self.sae)
        elif isinstance(self.sae, SAEWeights):
            self.weights = self.sae.check("the SAEWeights")
        elif hasattr(self.sae, "W_enc") and hasattr(self.sae, "cfg"):
            self.weights = SAEWeights.from_saelens(self.sae)
        else:
            raise TargetError(f"an SAE must be a folder, SAEWeights or a SAELens SAE, not {type(self.sae).__name__}")
        self.hooks = (self.weights.hook_name,)

    def prepare(self, model: Model) -> None:
        import torch

        hook, w, width = self.hooks[0], self.weights, None
        assert w is not None  # set in __post_init__
        wrong: str | None
        try:
            model.check_hook(hook)
        except ModelError as e:
            wrong = str(e)
        else:
            width = model.adapter.d_mlp if hook.endswith("mlp.hook_post") else model.adapter.d_model
            wrong = None if w.d_in == width else f"{hook} has {width} dimensions, the SAE reads {w.d_in}"
        if wrong and w.model_name:
            raise TargetError(
                f"{self.spec}: the SAE was trained on {w.model_name}, not on this model "
                f"({model.spec}: {wrong}): load --model {saelens.hub_model(w.model_name)}"
            )
        if wrong and width is not None:
            raise TargetError(
                f"{self.spec}: the SAE takes {w.d_in}-dimensional inputs but "
                f"{hook} has {width}: was it trained on another model?"
            )
        if wrong:
            raise TargetError(f"{self.spec}: the SAE reads {hook}, which this model does not have ({wrong})")
        if not 0 <= self.feature < w.d_sae:
            raise TargetError(
                f"{self.spec}: feature {self.feature} does not exist: the SAE has features 0-{w.d_sae - 1}"
            )
        self.weights = replace(
            w,
            W_dec=None,
            **{
                name: getattr(w, name).to(model.device)
                for name in ("W_enc", "b_enc", "b_dec", "threshold")
                if isinstance(getattr(w, name), torch.Tensor)
            },
        )

    def value(self, cache):
        x = cache[self.hooks[0]][:, self.position]
        return self.weights.encode(x, [self.feature])[..., 0]

    @property
    def spec(self) -> str:
        return f"sae:{self.source}:F{self.feature}"


def is_name(text: str) -> bool:
    """Whether an SAE given as text is a SAELens name (`RELEASE/SAE_ID`) rather than a folder: it is not a
    path that exists, nor one written as a path (absolute, ~, ./, ../)."""
    return not (os.path.exists(text) or os.path.isabs(text) or text.startswith(("~", ".")) or "\\" in text)
