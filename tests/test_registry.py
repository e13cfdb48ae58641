"""The target-kind registry: parsing, `usage()` and sweep ranges all read `KINDS`; `lm/` has no import cycle."""

import subprocess
import sys
from dataclasses import dataclass

import pytest

from reverie import TargetError, parse_target
from reverie.lm.target_base import Target
from reverie.lm.targets import KINDS, Kind, usage
from reverie.sweeps.specs import expand_targets


@dataclass
class Norm(Target):
    layer: int

    @property
    def spec(self) -> str:
        return f"norm:L{self.layer}"


def parse_norm(rest: str, ban: tuple[str, ...]) -> Norm | None:
    return Norm(int(rest[1:])) if rest[:1] == "L" and rest[1:].isdigit() else None


@pytest.mark.parametrize("ranges", [True, False])
def test_a_registered_kind_is_parsed_listed_and_expanded(monkeypatch, ranges):
    assert "norm" not in KINDS
    monkeypatch.setitem(KINDS, "norm", Kind("norm", parse_norm, "norm:L3", ranges=ranges))
    assert parse_target("norm:L3") == Norm(3)
    assert "norm:L3" in usage()
    with pytest.raises(TargetError, match="cannot parse target 'norm:3': use norm:L3$"):
        parse_target("norm:3")
    if ranges:
        assert expand_targets("norm:L0-2") == ["norm:L0", "norm:L1", "norm:L2"]
        assert expand_targets("norm:L*", n_layers=2) == ["norm:L0", "norm:L1"]
    else:
        with pytest.raises(TargetError, match="cannot parse"):
            expand_targets("norm:L0-2")
    monkeypatch.undo()
    assert "norm:L3" not in usage()
    with pytest.raises(TargetError, match="cannot parse"):
        parse_target("norm:L3")


def test_usage_lists_every_kind_and_errors_use_it():
    expression = "; or an expression of them, 'A - 0.5*B', 'max(A, B)', 'A | B < 1.5' (B kept below 1.5)"
    assert usage() == ", ".join(kind.usage for kind in KINDS.values()) + expression
    scanned = ", ".join(kind.usage for kind in KINDS.values() if kind.name != "attention")
    assert usage(scans=True) == scanned + expression
    for name, kind in KINDS.items():
        assert kind.name == name and kind.usage.startswith(f"{name}:")
        with pytest.raises(TargetError, match="cannot parse target") as e:
            parse_target(f"{name}:")
        assert str(e.value).endswith(kind.usage)
    for spec in ["bogus:L1", "neuron"]:
        with pytest.raises(TargetError, match="cannot parse target") as e:
            parse_target(spec)
        assert str(e.value).endswith(usage())


def test_only_kinds_with_ranges_expand_them():
    """sae and logit specs pass through as written, even when they look like ranges."""
    assert {name for name, kind in KINDS.items() if kind.ranges} == {"neuron", "direction", "attention"}
    assert expand_targets("direction:L0-1:seed=2") == ["direction:L0:seed=2", "direction:L1:seed=2"]
    assert expand_targets("logit:'L0-1'") == ["logit:'L0-1'"]


def test_sae_imports_first_in_a_fresh_interpreter():
    """No cycle between targets and SAEs (tests/test_layout.py checks every module): either imports first."""
    code = (
        "import reverie.lm.sae as sae, reverie.lm.targets as t; "
        "assert issubclass(sae.SAEFeature, t.Target) and t.KINDS['sae'].parse('x:Fy', ()) is None"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
