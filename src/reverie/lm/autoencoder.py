"""An SAE's weights: SAEWeights (SAELens's layout; standard, JumpReLU, TopK), read, checked, saved; train_sae.

A feature's activation is the encoder's, as SAELens's `encode` gives it:

    pre = (x − b_dec) · W_enc[:, f] + b_enc[f]        (b_dec subtracted when the SAE says so)
    f(x) = ReLU(pre)                                   standard
           ReLU(pre) · [pre > threshold[f]]            JumpReLU
           ReLU(pre) · [pre among the row's k largest]  TopK (every feature's pre-activation is computed)

On disk, SAELens's layout (what `sae.save_model(folder)` writes), also reverie's minimal local format
without SAELens:

    cfg.json                 {"d_in": 576, "d_sae": 4096, "architecture": "standard" | "jumprelu" | "topk",
                              "k": 32 (TopK), "apply_b_dec_to_input": true,
                              "metadata": {"hook_name": "blocks.8.hook_resid_pre", "model_name": "..."}}
                             (hook_name and model_name may also sit at the top, as before SAELens 6)
    sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in], threshold [d_sae] (JumpReLU)

Weights that are not floating-point tensors of an SAE's shapes, or hold NaN or infinities, are refused
in one TargetError line naming the tensor. `train_sae` fits a small ReLU SAE (for tests, demos, and
models nobody has trained one for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TargetError
from ..files import write_json

if TYPE_CHECKING:
    import torch

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"


ARCHITECTURES = ("standard", "jumprelu", "topk")
NORMALIZE = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


def saelens_field(cfg, name: str):
    """A field of a SAELens config (an object, or cfg.json as a dict), at the top or in its metadata (v6)."""
    get = (lambda c, n: c.get(n)) if isinstance(cfg, dict) else (lambda c, n: getattr(c, n, None))
    meta = get(cfg, "metadata")
    return get(cfg, name) if get(cfg, name) is not None else (None if meta is None else get(meta, name))


@dataclass
class SAEWeights:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor  # [d_in]
    hook_name: str
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU only
    apply_b_dec_to_input: bool = True
    W_dec: torch.Tensor | None = None  # [d_sae, d_in]; not needed to read features, kept when saving
    k: int | None = None  # TopK only: the k largest pre-activations of a row stay, the rest are 0
    normalize: str = "none"  # SAELens's normalize_activations, applied to the input first
    model_name: str | None = None  # the model it was trained on, if known (cfg metadata.model_name)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def architecture(self) -> str:
        return "topk" if self.k is not None else "standard" if self.threshold is None else "jumprelu"

    def encode(self, x: torch.Tensor, features=slice(None)) -> torch.Tensor:
        """Feature activations of x [..., d_in] (optionally only `features`), fp32."""
        x = x.float()
        if self.normalize == "constant_norm_rescale":
            x = x * (self.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        elif self.normalize == "layer_norm":
            x = x - x.mean(-1, keepdim=True)
            x = x / (x.std(-1, keepdim=True) + 1e-5)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(x.device)
        if self.k is not None:  # TopK: a feature counts only among its row's k largest pre-activations
            every = x @ self.W_enc.to(x.device) + self.b_enc.to(x.device)
            pre = every[..., features]
            return pre.relu() * (pre >= every.topk(min(self.k, self.d_sae), dim=-1).values[..., -1:])
        pre = x @ self.W_enc[:, features].to(x.device) + self.b_enc[features].to(x.device)
        if self.threshold is None:
            return pre.relu()
        return pre.relu() * (pre > self.threshold[features].to(x.device))

    def check(self, where: str, cfg=None) -> SAEWeights:
        """Refuse, in one TargetError line naming `where` and the tensor, weights that are not floating-point
        tensors of the shapes an SAE has ([d_in, d_sae], [d_sae], [d_in], ...; those in `cfg` if it gives
        them) or that hold NaN or infinities. Returns self."""
        check_tensors(
            where,
            cfg,
            {
                "W_enc": self.W_enc,
                "b_enc": self.b_enc,
                "b_dec": self.b_dec,
                "threshold": self.threshold,
                "W_dec": self.W_dec,
            },
        )
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise TargetError(
                f"{where}: the hook name must be one like blocks.8.hook_resid_pre, not {self.hook_name!r}"
            )
        k = self.k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= self.d_sae):
            raise TargetError(
                f"{where}: the TopK SAE's k is {self.k!r}: it must be a whole number 1-{self.d_sae} "
                "(the SAE's number of features)"
            )
        return self

    @classmethod
    def assemble(cls, where: str, cfg, W_enc, b_enc, b_dec, W_dec=None, threshold=None) -> SAEWeights:
        """Weights and a SAELens config (object or dict) -> SAEWeights; `where` names the SAE in errors."""
        arch = saelens_field(cfg, "architecture")
        arch = (arch() if callable(arch) else arch) or ("standard" if threshold is None else "jumprelu")
        if arch not in ARCHITECTURES:
            raise TargetError(f"{where} is a {arch} SAE: reverie reads {', '.join(ARCHITECTURES)} SAEs")
        if arch == "jumprelu" and threshold is None:
            raise TargetError(f"the JumpReLU SAE in {where} has no threshold")
        normalize = saelens_field(cfg, "normalize_activations") or "none"
        if normalize not in NORMALIZE:
            raise TargetError(
                f"{where} normalizes its inputs by {normalize}, which reverie does not do: "
                f"use an SAE with normalize_activations one of {', '.join(NORMALIZE)}"
            )
        k = saelens_field(cfg, "k") if arch == "topk" else None
        if arch == "topk" and not (isinstance(k, int) and not isinstance(k, bool) and k > 0):
            raise TargetError(f"the TopK SAE in {where} has no k (a positive whole number) in its config")
        apply_b_dec = saelens_field(cfg, "apply_b_dec_to_input")
        if apply_b_dec is not None and not isinstance(apply_b_dec, bool):
            raise TargetError(
                f"apply_b_dec_to_input in the config of {where} must be true or false, not {apply_b_dec!r}"
            )
        check_dtypes(where, {"W_enc": W_enc, "b_enc": b_enc, "b_dec": b_dec, "W_dec": W_dec, "threshold": threshold})
        W_enc, b_enc = W_enc.detach().float().cpu(), b_enc.detach().float().cpu()
        if W_dec is not None:
            W_dec = W_dec.detach().float().cpu()
        if arch == "topk" and saelens_field(cfg, "rescale_acts_by_decoder_norm"):
            if W_dec is None:
                raise TargetError(f"the TopK SAE in {where} rescales by its decoder norms but has no W_dec")
            norms = W_dec.norm(dim=-1)  # folded: pre · ‖W_dec row‖ is the same linear map
            W_enc, b_enc = W_enc * norms, b_enc * norms
        hook, model_name = saelens_field(cfg, "hook_name"), saelens_field(cfg, "model_name")
        if model_name is not None and not isinstance(model_name, str):
            raise TargetError(f"model_name in the config of {where} must be a model's name, not {model_name!r}")
        return cls(
            W_enc,
            b_enc,
            b_dec.detach().float().cpu(),
            hook,
            None if arch != "jumprelu" else threshold.detach().float().cpu(),
            apply_b_dec is not False,
            W_dec,
            k,
            normalize,
            model_name,
        ).check(where, cfg)

    @classmethod
    def load(cls, path: str | Path) -> SAEWeights:
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
            raise TargetError(
                f"{folder / CFG} is not an SAE config: it must be a JSON object like "
                '{"hook_name": "blocks.8.hook_resid_pre", ...} (SAELens\'s layout)'
            )
        hook = saelens_field(cfg, "hook_name")
        if hook is not None and not isinstance(hook, str):
            raise TargetError(
                f"the hook_name in {folder / CFG} must be a hook name like blocks.8.hook_resid_pre, not {hook!r}"
            )
        missing = [k for k in ("W_enc", "b_enc") if k not in w] + ([] if hook else ["hook_name in cfg.json"])
        if missing:
            raise TargetError(f"the SAE in {path} has no {', '.join(missing)}")
        where = str(folder / WEIGHTS)
        b_dec = w["b_dec"] if "b_dec" in w else torch.zeros(w["W_enc"].shape[:1])  # W_enc's shape: checked next
        return cls.assemble(where, cfg, w["W_enc"], w["b_enc"], b_dec, w.get("W_dec"), w.get("threshold"))

    @classmethod
    def from_saelens(cls, sae) -> SAEWeights:
        """Read the encoder of a SAELens `SAE` object (standard, JumpReLU or TopK)."""
        return cls.assemble(
            f"the SAELens {type(sae).__name__}",
            sae.cfg,
            sae.W_enc,
            sae.b_enc,
            sae.b_dec,
            getattr(sae, "W_dec", None),
            getattr(sae, "threshold", None),
        )

    def save(self, path: str | Path) -> Path:
        """Write the SAE in SAELens's layout (v6 config, with the hook name also at the top for older readers)."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        if self.W_dec is not None:
            tensors["W_dec"] = self.W_dec
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, folder / WEIGHTS)
        metadata = {"hook_name": self.hook_name, **({"model_name": self.model_name} if self.model_name else {})}
        write_json(
            folder / CFG,
            {
                "hook_name": self.hook_name,
                "d_in": self.d_in,
                "d_sae": self.d_sae,
                "dtype": "float32",
                "device": "cpu",
                "architecture": self.architecture,
                **({"k": self.k} if self.k is not None else {}),
                "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize,
                "metadata": metadata,
            },
        )
        return folder


def check_dtypes(where: str, tensors: dict) -> None:
    """Each of `tensors` (None: absent) is a floating-point tensor, or one TargetError line names it."""
    import torch

    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TargetError(f"{where}: {name} must be a tensor, not {type(t).__name__}")
        if t is not None and not t.is_floating_point():
            raise TargetError(
                f"{where}: {name} is {str(t.dtype).removeprefix('torch.')}: an SAE's weights are "
                "floating-point (float32, bfloat16 or float16)"
            )


def check_tensors(where: str, cfg, tensors: dict) -> None:
    """The shape, dtype and finiteness checks of `SAEWeights.check`, on tensors not yet converted (None: absent).
    W_enc sets d_in and d_sae (which the config's d_in and d_sae, where given, must agree with)."""
    import torch

    check_dtypes(where, tensors)
    W_enc = tensors["W_enc"]
    if W_enc.dim() != 2 or 0 in W_enc.shape:
        raise TargetError(
            f"{where}: W_enc has shape {list(W_enc.shape)}: it must be [d_in, d_sae] "
            "(the model's width by the number of features)"
        )
    d_in, d_sae = W_enc.shape
    for key, size in (("d_in", d_in), ("d_sae", d_sae)):
        given = saelens_field(cfg, key) if cfg is not None else None
        if given is not None and given != size:
            raise TargetError(f"{where}: W_enc has shape [{d_in}, {d_sae}] but the SAE's config says {key} = {given!r}")
    shapes = {"W_enc": [d_in, d_sae], "b_enc": [d_sae], "b_dec": [d_in], "threshold": [d_sae], "W_dec": [d_sae, d_in]}
    for name, t in tensors.items():
        if t is None:
            continue
        if list(t.shape) != shapes[name]:
            raise TargetError(
                f"{where}: {name} has shape {list(t.shape)} but W_enc [{d_in}, {d_sae}] needs {shapes[name]}"
            )
        if not bool(torch.isfinite(t).all()):
            raise TargetError(f"{where}: {name} holds NaN or infinite values: an SAE's weights must be finite")


def train_sae(
    activations: torch.Tensor,
    hook_name: str,
    d_sae: int = 512,
    l1: float = 0.1,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
) -> SAEWeights:
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
        return SAEWeights(
            W_enc.detach().clone(),
            (b_enc * scale).detach(),
            (b_dec * scale).detach(),
            hook_name,
            None,
            True,
            W_dec.detach().clone(),
        )
