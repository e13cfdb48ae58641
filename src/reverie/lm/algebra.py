"""Targets made of targets (docs/usage.md#expression-targets): a `Combination` reads its parts in one forward pass
and computes its value from theirs by an expression (`grammar.py`: sums and differences with numeric coefficients,
max/min, hinge bounds `A | B < 1.5`); `not_neighbours` builds "an SAE feature but not its nearest neighbours"."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import TargetError
from . import saelens
from .grammar import Node, Parser, render, scale
from .sae import SAEFeature
from .target_base import Target

if TYPE_CHECKING:
    from .model import Model


def parse(spec: str, atom: Callable[[str], Target], names: dict[str, Target] | None = None) -> Target:
    """The Target of an expression (`grammar.py`): a Combination, or the one target it names. `atom` parses one
    spec; `names`: targets the expression names. Features of one SAE share its weights (loaded once)."""
    saes: dict[str, SAEFeature] = {}

    def shared(text: str) -> Target:
        kind, _, rest = text.partition(":")
        path, sep, feature = rest.rpartition(":F")
        if kind != "sae" or not sep or not feature.isdigit():
            return atom(text)
        if path not in saes:
            first = atom(text)
            if not isinstance(first, SAEFeature):
                return first
            saes[path] = first
        target = copy.copy(saes[path])
        target.feature = int(feature)
        return target

    parser = Parser(spec, shared, dict(names or {}))
    node = parser.parse()
    return parser.parts[0] if node[0] == "ref" else Combination(tuple(parser.parts), node)


def evaluate(node: Node, values: list):
    """The expression's value from its parts' values (tensors [batch]); numbers stay numbers."""
    import torch

    match node:
        case ("num", x):
            return x
        case ("ref", i):
            return values[i]
        case ("scale", c, term):
            return c * evaluate(term, values)
        case ("sum", terms):
            return sum(s * evaluate(t, values) for s, t in terms)
        case ("given", base, bounds):
            out = evaluate(base, values)
            for b, op, x, w in bounds:
                out = out - w * ((evaluate(b, values) - x) * (1 if op == "<" else -1)).clamp(min=0)
            return out
    args = [evaluate(a, values) for a in node[1]]
    like = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if like is None:
        return max(args) if node[0] == "max" else min(args)
    stacked = torch.stack([a if isinstance(a, torch.Tensor) else torch.full_like(like, a) for a in args])
    return stacked.amax(0) if node[0] == "max" else stacked.amin(0)


@dataclass
class Combination(Target):
    """A target computed by `expression` from the values of `parts`, which are read in the same forward pass."""

    parts: tuple[Target, ...]
    expression: Node

    def __post_init__(self) -> None:
        self.hooks = tuple(dict.fromkeys(h for p in self.parts for h in p.hooks))
        self.banned_text = tuple(dict.fromkeys(t for p in self.parts for t in p.banned_text))
        self.reads_logits = any(p.reads_logits for p in self.parts)

    @property
    def position(self):
        """The parts' common position; None where they differ or a part has none."""
        where = [p.position for p in self.parts]
        return where[0] if all(w == where[0] for w in where) else None

    @position.setter
    def position(self, value) -> None:  # a copy reading every position (scans, per-token values) reads its parts so
        self.parts = tuple(copy.copy(p) for p in self.parts)
        for p in self.parts:
            p.position = value

    def prepare(self, model: Model) -> None:
        prepared: dict[int, object] = {}  # an SAE's weights, moved to the device once for all its features
        for p in self.parts:
            key = id(p.weights) if isinstance(p, SAEFeature) else None
            p.prepare(model)
            if isinstance(p, SAEFeature) and key is not None:
                p.weights = prepared.setdefault(key, p.weights)  # type: ignore[assignment]

    def check_length(self, n: int) -> None:
        for p in self.parts:
            p.check_length(n)

    def parts_values(self, cache) -> dict[str, object]:
        """Each part's value (a tensor [batch]) by its spec."""
        return {p.spec: p.value(cache) for p in self.parts}

    def value(self, cache):
        return evaluate(self.expression, [p.value(cache) for p in self.parts])

    @property
    def spec(self) -> str:
        return render(self.expression, [p.spec for p in self.parts])


def not_neighbours(feature: SAEFeature | str, k: int = 3, weight: float = 0.5) -> Combination:
    """SAE feature A but not its k nearest neighbours: `A - weight*max(B1, ..., Bk)`, the Bs the features whose
    decoder directions are closest to A's in cosine (the encoder's columns for an SAE kept without a decoder,
    as one prepared for a model is). `feature`: an SAEFeature or a spec, `sae:...:F123` or `neuronpedia:...`."""
    import torch

    if isinstance(feature, str):
        kind, _, rest = feature.partition(":")
        path, sep, index = rest.rpartition(":F")
        if kind == "neuronpedia":
            release, sae_id, f = saelens.neuronpedia(rest)
            feature = SAEFeature(f"{release}/{sae_id}", f)
        elif kind == "sae" and sep and index.isdigit():
            feature = SAEFeature(path, int(index))
        else:
            raise TargetError(
                f"not_neighbours takes an SAE feature, sae:FOLDER:F123 or neuronpedia:..., not {feature!r}"
            )
    w = feature.weights
    assert w is not None
    if not 0 <= feature.feature < w.d_sae or isinstance(k, bool) or not 1 <= k < w.d_sae:
        raise TargetError(f"{feature.spec}: need feature 0-{w.d_sae - 1} and k 1-{w.d_sae - 1}, got k = {k!r}")
    directions = (w.W_dec if w.W_dec is not None else w.W_enc.T).float()
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = unit @ unit[feature.feature]
    cosine[feature.feature] = -torch.inf
    parts = [feature] + [copy.copy(feature) for _ in range(k)]
    for part, j in zip(parts[1:], cosine.topk(k).indices.tolist()):
        part.feature = j
    others = ("max", tuple(("ref", i) for i in range(1, k + 1))) if k > 1 else ("ref", 1)
    return Combination(tuple(parts), ("sum", ((1, ("ref", 0)), (-1, scale(float(weight), others)))))
