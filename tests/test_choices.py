"""Each closed set of names (scorers, start kinds, stop reasons) is defined once, in reverie.choices: a
second copy anywhere in the package fails here; the options that take one check it in one clear line."""

import ast
from pathlib import Path
from typing import get_type_hints

import pytest

import reverie
from reverie import choices
from reverie.search.config import EPOConfig

SRC = Path(__file__).parents[1] / "src" / "reverie"
SETS = {"SCORER_NAMES": choices.SCORER_NAMES, "START_KINDS": choices.START_KINDS, "STOP_REASONS": choices.STOP_REASONS}


def string_collections(tree: ast.AST):
    """(line, strings) of every literal tuple, list, set, dict's keys and subscript (Literal[...]) of 2+ strings."""
    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        if items and len(items) >= 2 and all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
            yield node.lineno, {i.value for i in items}  # type: ignore[attr-defined]


def test_no_second_copy_of_a_choice_list():
    copies = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "choices.py":
            continue
        for line, strings in string_collections(ast.parse(path.read_text())):
            for name, names in SETS.items():
                if strings == set(names):  # a test on some of the names (`starts in ("beam", "data")`) is fine
                    copies.append(f"{path.relative_to(SRC)}:{line} copies {name}: {sorted(strings)}")
    assert not copies, "use reverie.choices instead of a copy: " + "; ".join(copies)


def test_the_scorers_make_scorer_builds_are_the_scorer_names():
    from reverie.scoring import SCORERS

    assert tuple(SCORERS) == choices.SCORER_NAMES


def test_options_taking_a_name_are_typed_by_the_choice_list():
    hints = get_type_hints(EPOConfig)
    assert hints["scorer"] is choices.ScorerName and hints["starts"] is choices.StartKind
    assert get_type_hints(reverie.DreamResult)["stopped"] is choices.StopReason


@pytest.mark.parametrize(("option", "names"), [("starts", choices.START_KINDS), ("scorer", choices.SCORER_NAMES)])
def test_an_unknown_name_is_one_line_listing_the_names(option, names):
    with pytest.raises(reverie.ConfigError) as e:
        EPOConfig(**{option: "bogus"})
    message = str(e.value)
    assert "\n" not in message and "'bogus'" in message and ", ".join(names) in message
    assert EPOConfig(**{option: names[-1]}).to_dict()[option] == names[-1]
