"""Sparse-autoencoder (SAE) features as dream targets.

An SAE feature's value is its encoder activation at the SAE's hook point:

    pre = (x − b_dec) · W_enc[:, f] + b_enc[f]        (b_dec subtracted when the SAE says so)
    f(x) = ReLU(pre), or for JumpReLU SAEs pre · [pre > threshold[f]]

Sources: a SAELens `SAE` object (optional extra: `pip install 'reverie[sae]'`), or a folder in
SAELens's on-disk layout, which is also reverie's minimal local format for users without SAELens:

    cfg.json                 {"hook_name": "blocks.8.hook_resid_pre", "d_in": 576, "d_sae": 4096,
                              "architecture": "standard" | "jumprelu", "apply_b_dec_to_input": true}
    sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in], threshold [d_sae] (JumpReLU)

Hook names are TransformerLens names, mapped onto any supported architecture by the model adapter.
`train_sae` fits a small ReLU SAE (for tests, demos, and models nobody has trained one for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from ..files import write_json
from ..errors import ModelError, TargetError
from .target import Target, absolute

if TYPE_CHECKING:
    import torch

    from .model import Model

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"


@dataclass
class SAEWeights:
    W_enc: torch.Tensor                   # [d_in, d_sae]
    b_enc: torch.Tensor                   # [d_sae]
    b_dec: torch.Tensor                   # [d_in]
    hook_name: str
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU only
    apply_b_dec_to_input: bool = True
    W_dec: torch.Tensor | None = None     # [d_sae, d_in]; not needed to read features, kept when saving

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: torch.Tensor, features=slice(None)) -> torch.Tensor:
        """Feature activations of x [..., d_in] (optionally only `features`), fp32."""
        x = x.float()
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(x.device)
        pre = x @ self.W_enc[:, features].to(x.device) + self.b_enc[features].to(x.device)
        if self.threshold is None:
            return pre.relu()
        return pre * (pre > self.threshold[features].to(x.device))

    @classmethod
    def load(cls, path: str | Path) -> "SAEWeights":
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path)
        if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
            raise TargetError(f"{path} is not an SAE folder: it needs {CFG} and {WEIGHTS} (SAELens's layout)")
        try:
            cfg = json.loads((folder / CFG).read_text())
            w = load_file(folder / WEIGHTS)
        except (OSError, ValueError, SafetensorError) as e:
            raise TargetError(f"cannot read the SAE in {path} ({e})") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("metadata", {}), dict):
            raise TargetError(f"{folder / CFG} is not an SAE config: it must be a JSON object like "
                              '{"hook_name": "blocks.8.hook_resid_pre", ...} (SAELens\'s layout)')
        hook = cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name")
        if hook is not None and not isinstance(hook, str):
            raise TargetError(f"the hook_name in {folder / CFG} must be a hook name like blocks.8.hook_resid_pre, not {hook!r}")
        missing = [k for k in ("W_enc", "b_enc") if k not in w] + ([] if hook else ["hook_name in cfg.json"])
        if missing:
            raise TargetError(f"the SAE in {path} has no {', '.join(missing)}")
        jump = cfg.get("architecture") == "jumprelu"
        if jump and "threshold" not in w:
            raise TargetError(f"the JumpReLU SAE in {path} has no threshold")
        return cls(w["W_enc"].float(), w["b_enc"].float(), w.get("b_dec", torch.zeros(w["W_enc"].shape[0])).float(),
                   hook, w["threshold"].float() if jump else None, bool(cfg.get("apply_b_dec_to_input", True)),
                   w.get("W_dec"))

    @classmethod
    def from_saelens(cls, sae) -> "SAEWeights":
        """Read the encoder of a SAELens `SAE` object (standard or JumpReLU)."""
        cfg = sae.cfg
        hook = getattr(cfg, "hook_name", None) or getattr(getattr(cfg, "metadata", None), "hook_name", None)
        threshold = getattr(sae, "threshold", None)
        return cls(sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu(), sae.b_dec.detach().float().cpu(),
                   hook, None if threshold is None else threshold.detach().float().cpu(),
                   bool(getattr(cfg, "apply_b_dec_to_input", True)), sae.W_dec.detach().float().cpu())

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        if self.W_dec is not None:
            tensors["W_dec"] = self.W_dec
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, folder / WEIGHTS)
        write_json(folder / CFG, {
            "hook_name": self.hook_name, "d_in": self.d_in, "d_sae": self.d_sae,
            "architecture": "standard" if self.threshold is None else "jumprelu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input})
        return folder


@dataclass
class SAEFeature(Target):
    """Encoder activation of SAE feature `feature` at the SAE's hook point, read at `position`.

    `sae` is an `SAEWeights`, a folder in SAELens's layout, or a SAELens `SAE` object."""

    reads_logits = False

    sae: object
    feature: int
    position: int = -1
    weights: SAEWeights | None = field(default=None, init=False, repr=False)
    source: str = field(default="<SAE>", init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.sae, (str, Path)):
            self.source = absolute(self.sae)
            self.weights = SAEWeights.load(self.sae)
        elif isinstance(self.sae, SAEWeights):
            self.weights = self.sae
        elif hasattr(self.sae, "W_enc") and hasattr(self.sae, "cfg"):
            self.weights = SAEWeights.from_saelens(self.sae)
        else:
            raise TargetError(f"an SAE must be a folder, SAEWeights or a SAELens SAE, not {type(self.sae).__name__}")
        self.hooks = (self.weights.hook_name,)

    def prepare(self, model: Model) -> None:
        import torch

        try:
            model.check_hook(self.hooks[0])
        except ModelError as e:
            raise TargetError(f"{self.spec}: the SAE reads {self.hooks[0]}, which this model does not have ({e})") from None
        width = model.adapter.d_mlp if self.hooks[0].endswith("mlp.hook_post") else model.adapter.d_model
        if self.weights.d_in != width:
            raise TargetError(f"{self.spec}: the SAE takes {self.weights.d_in}-dimensional inputs but "
                              f"{self.hooks[0]} has {width}: was it trained on another model?")
        if not 0 <= self.feature < self.weights.d_sae:
            raise TargetError(f"{self.spec}: feature {self.feature} does not exist: the SAE has features 0-{self.weights.d_sae - 1}")
        self.weights = SAEWeights(*(t.to(model.device) if isinstance(t, torch.Tensor) else t
                                    for t in (self.weights.W_enc, self.weights.b_enc, self.weights.b_dec,
                                              self.weights.hook_name, self.weights.threshold,
                                              self.weights.apply_b_dec_to_input, None)))

    def value(self, cache):
        x = cache[self.hooks[0]][:, self.position]
        return self.weights.encode(x, [self.feature])[..., 0]

    @property
    def spec(self) -> str:
        return f"sae:{self.source}:F{self.feature}"


def train_sae(activations: torch.Tensor, hook_name: str, d_sae: int = 512, l1: float = 0.1, steps: int = 2000,
              batch_size: int = 1024, lr: float = 1e-3, seed: int = 0) -> SAEWeights:
    """Fit a ReLU SAE to activations [N, d_in]: reconstruction MSE + l1 · Σ|f| · ‖W_dec row‖, Adam.

    Inputs are scaled to unit mean norm during training and the scale folded into the weights."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x_all = activations.float()
    scale = float(x_all.norm(dim=-1).mean()) or 1.0
    x_all = x_all / scale
    d_in = x_all.shape[1]
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_(True)
    W_enc = W_dec.detach().T.clone().requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = x_all.median(0).values.clone().requires_grad_(True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    for _ in range(steps):
        x = x_all[torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen)]
        f = ((x - b_dec) @ W_enc + b_enc).relu()
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean() + l1 * (f * W_dec.norm(dim=1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # undo the input scaling: encode(raw x) = encode_trained(raw x / scale) · scale
        return SAEWeights(W_enc.detach().clone(), (b_enc * scale).detach(), (b_dec * scale).detach(),
                          hook_name, None, True, W_dec.detach().clone())
