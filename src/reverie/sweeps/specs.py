"""Sweep jobs: many targets and seeds from one spec, and where each (target, seed) job lives. Targets: ranges
(`neuron:L9.N0-63`, `neuron:L*.N5`), comma lists, files of specs (one per line, `#` comments); seeds as `0-4`,
`0,2,5` or one number. Used by sweeps."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, TargetError
from ..lm.targets import KINDS, Custom, Target, parse_target

_RANGE = re.compile(r"(?<![^.])([LNH])(\*|\d+-\d+)(?![^.])")  # L0-5 / L* / N0-63 / H0-3 between dots


def _split(text: str) -> list[str]:
    """Split a comma list, leaving commas inside quotes (logit:",") and brackets (max(A, B)) alone."""
    parts, current, quote, depth = [], "", None, 0
    for ch in text:
        if quote is None and ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        if quote is None and ch in "\"'":
            quote = ch
        elif ch == quote:
            quote = None
        elif quote is None:
            depth += (ch == "(") - (ch == ")")
        current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def _expand_one(spec: str, n_layers: Callable[[], int]) -> list[str]:
    name, _, rest = spec.partition(":")
    kind = KINDS.get(name)
    if kind is None or not kind.ranges:
        return [spec]
    head, colon, tail = rest.partition(":")  # ranges stop at a further ':' (direction:L0-3:v.npy)
    matches = list(_RANGE.finditer(head))
    choices = []
    for m in matches:
        letter, span = m.groups()
        if span == "*":
            if letter != "L":
                raise TargetError(f"{spec}: '*' works for layers only (L*); give a range such as {letter}0-63")
            values = range(n_layers())
        else:
            lo, hi = map(int, span.split("-"))
            if hi < lo:
                raise TargetError(f"{spec}: the range {letter}{span} is empty")
            values = range(lo, hi + 1)
        choices.append([f"{letter}{v}" for v in values])
    specs = []
    for combo in itertools.product(*choices):
        text, last = "", 0
        for m, piece in zip(matches, combo):
            text, last = text + head[last : m.start()] + piece, m.end()
        specs.append(f"{name}:{text}{head[last:]}{colon}{tail}")
    return specs


def expand_targets(spec: str | Path | Iterable, n_layers: int | Callable[[], int] | None = None) -> list:
    """Target specs from a file of specs (one per line, `#` comments), a range (`neuron:L9.N0-63`,
    `neuron:L*.N5`: every layer, needs `n_layers`), a comma list, or a list of any of these (Target
    objects and callables pass through). Canonical spec strings, first occurrence kept."""

    def layers() -> int:
        if n_layers is None:
            raise TargetError("L* needs the model's layer count")
        return n_layers() if callable(n_layers) else int(n_layers)

    def expand(items) -> Iterable:
        for item in items:
            if isinstance(item, Target) or (callable(item) and not isinstance(item, str)):
                yield item if isinstance(item, Target) else Custom(item, name=getattr(item, "__name__", "custom"))
                continue
            path = Path(item)
            if isinstance(item, Path) or (":" not in str(item) and path.suffix) or path.is_file():
                try:
                    lines = [ln.strip() for ln in path.read_text().splitlines()]
                except OSError as e:
                    raise TargetError(
                        f"cannot read the target file {item} ({e.strerror}); or give specs such as neuron:L9.N0-63"
                    ) from None
                yield from expand([ln for ln in lines if ln and not ln.startswith("#")])
                continue
            for part in _split(str(item)):
                yield from (parse_target(s).spec for s in _expand_one(part, layers))

    unique: dict[str, str | Target] = {}  # spec -> the spec string or Target it came from
    for t in expand([spec] if isinstance(spec, (str, Path)) else list(spec)):
        unique.setdefault(t if isinstance(t, str) else t.spec, t)
    if not unique:
        raise TargetError(f"no targets in {spec}")
    return list(unique.values())


def parse_seeds(seeds: int | str | Iterable[int]) -> list[int]:
    """`3` (that seed), `"0-4"`, `"0,2,5"`, `"0-2,7"` or a list of ints."""
    values: list[int]
    if isinstance(seeds, str):
        values = []
        for part in _split(seeds):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or (m[2] and int(m[2]) < int(m[1])):
                raise ConfigError(f"cannot parse seeds {seeds!r}: use 0-4, 0,2,5 or one number")
            values += range(int(m[1]), int(m[2] or m[1]) + 1)
    else:
        values = [seeds] if isinstance(seeds, int) else list(seeds)
    if not values or any(not isinstance(s, int) or s < 0 for s in values):
        raise ConfigError(f"seeds must be non-negative integers, got {seeds!r}")
    return list(dict.fromkeys(values))


def slug(spec: str) -> str:
    """A folder name for a target spec; a short hash keeps lossy names unique."""
    clean = re.sub(r"[^A-Za-z0-9.=-]+", "_", spec).strip("_.")[:80] or "target"
    if clean.replace("_", ":", 1) != spec:
        clean = f"{clean[:71]}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"
    return clean


# ---------------------------------------------------------------- jobs and their run directories


@dataclass(frozen=True)
class Job:
    """One (target, seed) dream of a sweep."""

    spec: str
    seed: int
    target: str | Target = field(compare=False, repr=False)  # the spec string, or a Target object

    @property
    def slug(self) -> str:
        return slug(self.spec)

    def path(self, out: Path) -> Path:
        return Path(out) / "runs" / self.slug / f"seed{self.seed}"

    def failed_path(self, out: Path) -> Path:
        return Path(out) / "runs" / self.slug / f"seed{self.seed}.failed.json"

    def __str__(self) -> str:
        return f"{self.spec} seed {self.seed}"


def make_jobs(targets: list, seeds: list[int]) -> list[Job]:
    return [Job(t if isinstance(t, str) else t.spec, s, t) for t in targets for s in seeds]
