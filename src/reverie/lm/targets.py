"""What a dream maximises: a scalar per prompt, read from one forward pass.

Every target names the TransformerLens-style hook points it reads (`hooks`); the scorer captures
them and calls `value(cache)`, where `cache` maps each hook name to its tensor and "logits" to the
fp32 logits. All targets read the last prompt position unless given another `position`.

Spec strings, one `Kind` each in `KINDS` (read by `parse_target`, `usage()` and sweep ranges):
`neuron:L9.N402`, `neuron:blocks.9.mlp.hook_post.N402`, `logit:" dog"`,
`direction:L8` (seeded random unit vector), `direction:L8:seed=3`, `direction:L8:path.npy`,
`direction:blocks.8.hook_resid_pre`, `attention:L3.H2.K-2`, `sae:FOLDER:F123` (see `sae.py`),
`sae:RELEASE/SAE_ID:F123` (a pretrained SAE by name from SAELens's directory, see `saelens.py`:
`sae:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical:F123`), and
`neuronpedia:MODEL/SOURCE/INDEX` (a Neuronpedia feature, found in the same directory:
`neuronpedia:gemma-2-2b/12-gemmascope-res-16k/1234`).
A target's `.spec` is canonical: the hook form of a layer's own hook point is written `L9`
(`neuron:blocks.9.mlp.hook_post.N402` is `neuron:L9.N402`), paths in it are absolute, and a
Neuronpedia feature is written as its SAE by name (`sae:RELEASE/SAE_ID:F1234`).
A spec may also combine others (`algebra.py`): `neuron:L9.N402 - 0.5*neuron:L9.N7`, `max(A, B)`, `A | B < 1.5`.

An SAE by name is looked up (importing SAELens, seconds) and loaded when its spec is parsed, before
any model loads: an unknown release or SAE id, or an SAE that is not downloaded while the Hugging
Face hub is out of reach, is one TargetError line then. Every other spec parses without SAELens,
torch or the network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ReverieError, TargetError
from . import algebra, grammar, saelens
from .sae import SAEFeature
from .target_base import Target, absolute
from .vocab import as_items, resolve_token

if TYPE_CHECKING:
    import torch

    from .model import Model


def _layer_hook(layer_or_hook: int | str, point: str) -> str:
    return f"blocks.{layer_or_hook}.{point}" if isinstance(layer_or_hook, int) else layer_or_hook


def _canonical_layer(layer_or_hook: int | str, point: str) -> int | str:
    """The layer number for the hook name of `point` at a layer (`blocks.9.mlp.hook_post` -> 9), so that
    both forms of a target are one target with one spec; any other hook name as given."""
    m = re.fullmatch(rf"blocks\.(\d+)\.{re.escape(point)}", layer_or_hook) if isinstance(layer_or_hook, str) else None
    return int(m[1]) if m else layer_or_hook


@dataclass
class Neuron(Target):
    """Post-nonlinearity MLP neuron: the input of the MLP output projection (`blocks.L.mlp.hook_post`)."""

    reads_logits = False

    layer: int | str
    index: int
    position: int = -1

    def __post_init__(self) -> None:
        self.layer = _canonical_layer(self.layer, "mlp.hook_post")
        self.hooks = (_layer_hook(self.layer, "mlp.hook_post"),)

    def prepare(self, model: Model) -> None:
        super().prepare(model)
        layer, point = model.check_hook(self.hooks[0])
        if point == "attn.hook_pattern":
            raise TargetError(
                f"{self.spec}: attention probabilities are not a vector of neurons: "
                f"use attention:L{layer}.H<head>.K<key>"
            )
        width, what = (model.adapter.d_mlp, "the MLP") if point == "mlp.hook_post" else (model.adapter.d_model, point)
        if not 0 <= self.index < width:
            raise TargetError(f"{self.spec}: neuron {self.index} does not exist: {what} has neurons 0-{width - 1}")

    def value(self, cache):
        return cache[self.hooks[0]][:, self.position, self.index].float()

    @property
    def spec(self) -> str:
        layer = f"L{self.layer}" if isinstance(self.layer, int) else self.layer
        return f"neuron:{layer}.N{self.index}"


@dataclass
class Logit(Target):
    """logit_g - max_{i != g} logit_i. Prompts whose text contains `ban` (case-insensitive) are rejected."""

    token: str | int
    ban: tuple[str, ...] = ()
    position: int = -1
    token_id: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        self.ban = as_items(self.ban)
        self.banned_text = self.ban

    def prepare(self, model: Model) -> None:
        try:
            self.token_id = resolve_token(model.tokenizer, self.token)
        except ReverieError as e:
            raise TargetError(f"{self.spec}: {e}") from None

    def value(self, cache):
        logits = cache["logits"][:, self.position].float()
        top = logits.topk(2, dim=-1)  # the best other token: the first of the top two that is not ours
        other = top.values[..., 1].where(top.indices[..., 0] == self.token_id, top.values[..., 0])
        return logits[..., self.token_id] - other

    @property
    def spec(self) -> str:
        return f"logit:{self.token!r}" if isinstance(self.token, str) else f"logit:{self.token}"


@dataclass
class Direction(Target):
    """((x - mean x) / std x) . v for the residual stream x entering `layer` (mean/std over hidden dims).

    `vector` is an array, a `.npy` path, or None for a seeded random unit vector."""

    reads_logits = False

    layer: int | str
    vector: np.ndarray | torch.Tensor | str | None = None
    seed: int = 0
    position: int = -1
    v: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.layer = _canonical_layer(self.layer, "hook_resid_pre")
        self.hooks = (_layer_hook(self.layer, "hook_resid_pre"),)
        if isinstance(self.vector, (str, os.PathLike)):
            self.vector = absolute(self.vector)

    def prepare(self, model: Model) -> None:
        import torch

        super().prepare(model)
        d = model.adapter.d_model
        if self.vector is None:
            v = torch.randn(d, generator=torch.Generator().manual_seed(self.seed))
            v = v / v.norm()
        elif isinstance(self.vector, str):
            v = torch.from_numpy(read_direction(self.vector, self.spec))
        else:
            v = torch.as_tensor(self.vector, dtype=torch.float32)
        if v.shape != (d,):
            raise TargetError(
                f"{self.spec}: the direction has shape {tuple(v.shape)} but the residual stream has {d} dimensions"
            )
        if not bool(torch.isfinite(v).all()):
            raise TargetError(
                f"{self.spec}: the direction has NaN or infinite entries: give a vector of finite numbers"
            )
        if not bool(v.any()):
            raise TargetError(
                f"{self.spec}: the direction is all zeros, so every prompt scores 0: give a non-zero vector"
            )
        self.v = v.to(model.device)

    def value(self, cache):
        x = cache[self.hooks[0]][:, self.position].float()
        z = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
        return z @ self.v

    @property
    def spec(self) -> str:
        layer = f"L{self.layer}" if isinstance(self.layer, int) else self.layer
        if isinstance(self.vector, str):
            return f"direction:{layer}:{self.vector}"
        return f"direction:{layer}:seed={self.seed}" if self.vector is None else f"direction:{layer}:<array>"


def read_direction(path: str, spec: str) -> np.ndarray:
    """The vector in a .npy file as float32: a file that is not one array of real numbers (an .npz archive,
    complex, text or object entries) is one TargetError line naming the file (shape and finiteness are
    checked against the model by `Direction.prepare`)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise TargetError(
            f"{spec}: cannot read the direction file {path} ({e}): save the vector with numpy.save(path, vector)"
        ) from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise TargetError(
            f"{spec}: the direction file {path} is an .npz archive of several arrays: save the one "
            "vector with numpy.save(path, vector)"
        )
    if not any(np.issubdtype(data.dtype, kind) for kind in (np.floating, np.integer, np.bool_)):
        raise TargetError(
            f"{spec}: the direction file {path} holds {data.dtype} entries: a direction is real "
            "numbers (float32, for instance)"
        )
    return data.astype(np.float32)


@dataclass
class Attention(Target):
    """Attention probability of `head` in `layer` from the query at `position` to key position `key`."""

    reads_logits = False

    layer: int
    head: int
    key: int
    position: int = -1

    def __post_init__(self) -> None:
        self.hooks = (f"blocks.{self.layer}.attn.hook_pattern",)

    def prepare(self, model: Model) -> None:
        super().prepare(model)
        if not 0 <= self.head < model.adapter.n_heads:
            raise TargetError(
                f"{self.spec}: head {self.head} does not exist: layer {self.layer} has heads "
                f"0-{model.adapter.n_heads - 1}"
            )

    def check_length(self, n: int) -> None:
        if not -n <= self.key < n:
            raise TargetError(f"{self.spec}: key position {self.key} is outside a prompt of {n} tokens")

    def value(self, cache):
        return cache[self.hooks[0]][:, self.head, self.position, self.key].float()

    @property
    def spec(self) -> str:
        return f"attention:L{self.layer}.H{self.head}.K{self.key}"


@dataclass
class Custom(Target):
    """Any callable `fn(cache) -> Tensor[batch]`; `cache` holds the requested `hooks` and "logits"."""

    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    hooks: tuple[str, ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        self.hooks = as_items(self.hooks)

    def value(self, cache):
        import torch

        out = self.fn(cache)
        if not isinstance(out, torch.Tensor):
            raise TargetError(
                f"{self.spec}: its function returned {type(out).__name__}: "
                "return a tensor with one value per prompt, shape [batch]"
            )
        return out.float()

    @property
    def spec(self) -> str:
        return f"custom:{self.name}"


def token_arg(text: str) -> str | int:
    """A token as typed: quoted text stays text ('"5"' is the token "5"), bare digits are an id."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return int(text) if text.isascii() and text.isdigit() else text


_LAYER = r"(?:L(?P<layer>\d+)|(?P<hook>blocks\.\d+\.[\w.]+?))"
_NEURON = re.compile(rf"^{_LAYER}\.N(?P<index>\d+)$")
_DIRECTION = re.compile(rf"^{_LAYER}(?::seed=(?P<seed>\d+)|:(?P<path>.+))?$")
_ATTENTION = re.compile(r"^L(?P<layer>\d+)\.H(?P<head>\d+)\.K(?P<key>-?\d+)$")


def _layer(m: re.Match) -> int | str:
    return int(m["layer"]) if m["layer"] else m["hook"]


def _neuron(rest: str, ban: tuple[str, ...]) -> Neuron | None:
    m = _NEURON.match(rest)
    return Neuron(_layer(m), int(m["index"])) if m else None


def _logit(rest: str, ban: tuple[str, ...]) -> Logit | None:
    token = token_arg(rest)
    return Logit(token, ban=ban) if token != "" else None


def _direction(rest: str, ban: tuple[str, ...]) -> Direction | None:
    m = _DIRECTION.match(rest)
    if not m:
        return None
    if m["path"] and not Path(m["path"]).is_file():
        raise TargetError(f"direction:{rest}: direction file {m['path']} does not exist")
    return Direction(_layer(m), m["path"], seed=int(m["seed"] or 0))


def _attention(rest: str, ban: tuple[str, ...]) -> Attention | None:
    m = _ATTENTION.match(rest)
    return Attention(int(m["layer"]), int(m["head"]), int(m["key"])) if m else None


def _sae(rest: str, ban: tuple[str, ...]) -> SAEFeature | None:
    path, sep, feature = rest.rpartition(":F")
    return SAEFeature(path, int(feature)) if sep and path and re.fullmatch("[0-9]+", feature) else None


def _neuronpedia(rest: str, ban: tuple[str, ...]) -> SAEFeature | None:
    if not re.fullmatch(r".+/.+/\d+", rest):
        return None
    release, sae_id, feature = saelens.neuronpedia(rest)
    return SAEFeature(f"{release}/{sae_id}", feature)


@dataclass(frozen=True)
class Kind:
    """One kind of target spec, `NAME:REST`.

    `parse(rest, ban)` builds the Target from the text after `NAME:` (`ban`: rejected text, for logit
    targets), or returns None when that text is not of this kind's form; `usage` shows the form in help
    and error texts; `ranges` says whether sweeps expand L/N/H ranges (`L0-5`, `L*`, `N0-63`) in it,
    up to any further ':'; `scans` whether `reverie scan` can read it at every corpus position."""

    name: str
    parse: Callable[[str, tuple[str, ...]], Target | None]
    usage: str
    ranges: bool = False
    scans: bool = True


# Every target kind, by name: what `parse_target`, `usage()` and sweep ranges know. A new kind is one entry.
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("neuron", _neuron, "neuron:L9.N402 (or neuron:blocks.9.mlp.hook_post.N402)", ranges=True),
        Kind("logit", _logit, 'logit:" dog" (or a token id, logit:123)'),
        Kind("direction", _direction, "direction:L8[:seed=N|:path.npy]", ranges=True),
        Kind("attention", _attention, "attention:L3.H2.K-2", ranges=True, scans=False),
        Kind(
            "sae",
            _sae,
            "sae:SAE_FOLDER:F123 (or a SAELens release and SAE id, "
            "sae:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical:F123)",
        ),
        Kind("neuronpedia", _neuronpedia, "neuronpedia:gemma-2-2b/12-gemmascope-res-16k/1234"),
    )
}


def usage(scans: bool = False) -> str:
    """The target spec forms, for error messages and help texts (with `scans`, those a scan reads)."""
    forms = ", ".join(kind.usage for kind in KINDS.values() if kind.scans or not scans)
    return f"{forms}; or an expression of them, 'A - 0.5*B', 'max(A, B)', 'A | B < 1.5' (B kept below 1.5)"


def parse_target(spec: str, ban: tuple[str, ...] = ()) -> Target:
    """A Target from a spec string. `ban` goes to logit targets (rejected text). A spec with an operator
    outside its atoms is an expression of targets (`algebra.py`), unless it names a file that exists."""
    if grammar.is_expression(spec):
        return algebra.parse(spec, lambda atom: parse_target(atom, ban))
    name, sep, rest = spec.partition(":")
    kind = KINDS.get(name) if sep else None
    if kind is None:
        raise TargetError(f"cannot parse target {spec!r}: use {usage()}")
    target = kind.parse(rest, as_items(ban))
    if target is None:
        joined = "; a '-' between two terms needs a space before it" if re.search(r"-\w+:", rest) else ""
        raise TargetError(f"cannot parse target {spec!r}: use {kind.usage}{joined}")
    return target


def combine(expression: str, ban: tuple[str, ...] = (), **targets: Target) -> Target:
    """A target from an expression (docs/usage.md#expression-targets) whose names are `targets`, as well as
    spec atoms: `combine("a - 0.5*b | neuron:L9.N7 < 1.5", a=SAEFeature(sae, 3), b=Neuron(9, 402))`."""
    return algebra.parse(expression, lambda atom: parse_target(atom, ban), targets)


def as_target(target: Target | str | Callable, model: Model, ban: tuple[str, ...] = ()) -> Target:
    """Accept a Target, a spec string or a callable; validate it against the model."""
    if isinstance(target, str):
        target = parse_target(target, as_items(ban))
    elif not isinstance(target, Target):
        if not callable(target):
            raise TargetError(f"a target must be a spec string, a Target or a callable, not {type(target).__name__}")
        target = Custom(target, name=getattr(target, "__name__", "custom"))
    target.prepare(model)
    return target
