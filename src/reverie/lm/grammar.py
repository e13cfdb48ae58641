"""The grammar of expression targets (docs/usage.md#expression-targets): text to a tree and back.
`algebra.Combination` computes one; `targets.parse_target` reads a spec with an operator outside its atoms as one.

    expression := sum ('|' bound)*            A | B < 1.5   is   A − 10·max(0, B − 1.5)
    bound      := sum ('<' | '>') NUMBER ['@' WEIGHT]        (> : A − w·max(0, x − B); WEIGHT default 10)
    sum        := product (('+' | '-') product)*
    product    := unary ('*' unary)*          (a target times numbers only)
    unary      := ('-' | '+') unary | NUMBER | ATOM | NAME | ('max' | 'min') '(' sum (',' sum)* ')' | '(' sum ')'

An ATOM is a target spec, `KIND:REST`: REST runs to the next space or one of `,()*+|<>@` outside quotes
(`logit:" a+b"`; a '-' inside belongs to it, as in attention:L3.H2.K-2, so a '-' between terms needs a space
before it); any spec may also be written whole in double quotes ("sae:/my dir/sae:F3"). A NAME is a target
given to `targets.combine` by name. A Combination's spec is canonical (each part's own spec, every bound's
weight written out) and parses back to the same spec.

The expression is a tree of tuples: ("num", x), ("ref", part), ("scale", c, node), ("sum", ((±1, node), ...)),
("max" | "min", (node, ...)), ("given", node, ((node, "<" | ">", bound, weight), ...)) at the top.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

from ..errors import TargetError
from .target_base import Target

BOUND_WEIGHT = 10.0  # each unit a bounded part goes past its bound costs this much of the value
STOP = set(",()*+|<>@")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z_]\w*")
HINT = "write e.g. 'neuron:L9.N402 - 0.5*neuron:L9.N7', 'max(A, B)' or 'A | B < 1.5 @ 10' (docs/usage.md)"
Node = tuple


def tokenize(spec: str) -> Iterator[tuple[str, str, int]]:
    """(kind, text, column) tokens: "num", "atom", "name" and "op" (one of ,()*+-|<>@)."""
    i = 0
    while i < len(spec):
        ch, number, m = spec[i], _NUMBER.match(spec, i), _NAME.match(spec, i)
        if ch.isspace():
            i += 1
            continue
        if ch in STOP or ch == "-":
            yield "op", ch, i
        elif ch == '"':  # a whole spec in quotes, \" and \\ escaped
            j, text = i + 1, ""
            while j < len(spec) and spec[j] != '"':
                j += spec[j] == "\\"
                text += spec[j : j + 1]
                j += 1
            if j >= len(spec):
                raise _error(spec, i, "this quote is never closed")
            yield "atom", text, i
            i = j
        elif number:
            yield "num", number[0], i
            i = number.end() - 1
        elif m and m.end() < len(spec) and spec[m.end()] == ":":  # an atom: KIND:REST, quotes in REST as they are
            j = m.end()
            while j < len(spec) and not spec[j].isspace() and spec[j] not in STOP:
                if spec[j] in "\"'":
                    end = spec.find(spec[j], j + 1)
                    while end > 0 and spec[end - 1] == "\\":
                        end = spec.find(spec[j], end + 1)
                    if end < 0:
                        raise _error(spec, j, "this quote is never closed")
                    j = end
                j += 1
            yield "atom", spec[i:j], i
            i = j - 1
        elif m:
            yield "name", m[0], i
            i = m.end() - 1
        else:
            raise _error(spec, i, f"unexpected {ch!r}")
        i += 1


def is_expression(spec: str) -> bool:
    """Whether a spec is an expression: more than one token, or an operator before a fault (a spec that
    does not tokenize without one, such as a path with a space in it, is left to its kind), and not a
    direction or SAE spec whose path exists (a path may hold '+', spaces ...)."""
    kind, _, rest = spec.partition(":")
    path = rest.partition(":")[2] if kind == "direction" else rest.rpartition(":F")[0]
    if kind in ("direction", "sae") and path and os.path.exists(path):
        return False
    found = []
    try:
        for kind, _, _ in tokenize(spec):
            found.append(kind)
    except TargetError:
        return "op" in found
    return len(found) > 1


def _error(spec: str, at: int, problem: str, hint: bool = True) -> TargetError:
    where = f"at column {at + 1} ({spec[at : at + 12]!r})" if at < len(spec) else "at the end"
    return TargetError(f"cannot parse target {spec!r} {where}: {problem}" + (f"; {HINT}" if hint else ""))


class Parser:
    """Reads an expression: `parse()` gives its tree, and `parts` the targets its atoms and names refer to."""

    def __init__(self, spec: str, atom: Callable[[str], Target], names: dict[str, Target]):
        self.spec, self.atom, self.names = spec, atom, names
        self.tokens, self.i = list(tokenize(spec)), 0
        self.parts: list[Target] = []

    def take(self, *ops: str) -> str | None:
        """The next token's text if it is one of `ops` (consumed), else None."""
        if self.i < len(self.tokens) and self.tokens[self.i][0] == "op" and self.tokens[self.i][1] in ops:
            self.i += 1
            return self.tokens[self.i - 1][1]
        return None

    def fail(self, problem: str, at: int | None = None) -> TargetError:
        i = self.i if at is None else at
        return _error(self.spec, self.tokens[i][2] if i < len(self.tokens) else len(self.spec), problem)

    def parse(self) -> Node:
        base, bounds = self.sum(), []
        while self.take("|"):
            at, part = self.i, self.sum()
            op = self.take("<", ">")
            if op is None or not refers(part):
                raise self.fail("a bound after '|' is a target, then '< NUMBER' or '> NUMBER': 'A | B < 1.5'", at)
            x, w = self.number("a bound"), self.number("a weight") if self.take("@") else BOUND_WEIGHT
            if not w > 0:
                raise self.fail("a bound's weight (after '@') must be above 0", self.i - 1)
            bounds.append((part, op, x, w))
        if self.i < len(self.tokens):
            op = self.tokens[self.i][1]
            raise self.fail("bounds ('<', '>') go after a '|'" if op in "<>" else "expected an operator or the end")
        if not self.parts:
            raise _error(self.spec, 0, "the expression has no target in it")
        return ("given", base, tuple(bounds)) if bounds else base

    def number(self, what: str) -> float:
        at, node = self.i, self.unary()
        if node[0] != "num":
            raise self.fail(f"{what} must be a number", at)
        return node[1]

    def sum(self) -> Node:
        terms = [(1, self.product())]
        while sign := self.take("+", "-"):
            terms.append((1 if sign == "+" else -1, self.product()))
        return terms[0][1] if len(terms) == 1 else ("sum", tuple(terms))

    def product(self) -> Node:
        at, node = self.i, self.unary()
        while self.take("*"):
            other = self.unary()
            if node[0] != "num" and other[0] != "num":
                raise self.fail("a target can be multiplied by numbers only", at)
            node = scale(node[1], other) if node[0] == "num" else scale(other[1], node)
        return node

    def unary(self) -> Node:
        if sign := self.take("-", "+"):
            return scale(-1.0 if sign == "-" else 1.0, self.unary())
        if self.i >= len(self.tokens):
            raise self.fail("the expression ends too soon")
        kind, text, at = self.tokens[self.i]
        self.i += 1
        if kind == "num":
            return ("num", float(text))
        if kind == "atom":
            return ("ref", self.part(text, at))
        if kind == "name" and text in ("max", "min") and self.take("("):
            args = [self.sum()]
            while self.take(","):
                args.append(self.sum())
            if not self.take(")"):
                raise self.fail(f"expected ',' or ')' in {text}(...)")
            return (text, tuple(args))
        if kind == "name":
            if text not in self.names:
                raise self.fail(f"{text!r} is not a target: write a spec such as neuron:L9.N402", self.i - 1)
            return ("ref", self.add(self.names[text]))
        if text == "(":
            node = self.sum()
            if not self.take(")"):
                raise self.fail("expected ')'")
            return node
        raise self.fail(f"expected a target, a number or '(' before {text!r}", self.i - 1)

    def part(self, text: str, at: int) -> int:
        try:
            return self.add(self.atom(text))
        except TargetError as e:
            space = "; a '-' between two terms needs a space before it" if "-" in text else ""
            raise _error(self.spec, at, f"{e}{space}", hint=False) from None

    def add(self, target: Target) -> int:
        specs = [p.spec for p in self.parts]
        if target.spec not in specs:
            self.parts.append(target)
        return specs.index(target.spec) if target.spec in specs else len(specs)


def refers(node: Node) -> bool:
    """Whether an expression reads a part (is not a number)."""
    return isinstance(node, tuple) and (node[:1] == ("ref",) or any(refers(n) for n in node))


def scale(c: float, node: Node) -> Node:
    """c · node, folded: numbers multiply out, a scaled node keeps one coefficient, 1 · node is node."""
    if node[0] == "num":
        return ("num", c * node[1])
    c, node = (c * node[1], node[2]) if node[0] == "scale" else (c, node)
    return node if c == 1 else ("scale", c, node)


def num(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(float(x))


def atom_text(spec: str) -> str:
    """A part's spec as an expression writes it: as it is where it tokenizes as one atom, else in quotes."""
    try:
        if [(k, t) for k, t, _ in tokenize(spec)] == [("atom", spec)]:
            return spec
    except TargetError:
        pass
    return '"' + spec.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(node: Node, parts: list[str], inner: bool = False) -> str:
    """An expression's canonical text; `inner`: inside a sum's term or a product (a sum gets brackets)."""
    match node:
        case ("num", x):
            return num(x)
        case ("ref", i):
            return atom_text(parts[i])
        case ("scale", c, term):
            return ("-" if c == -1 else f"{num(c)}*") + render(term, parts, True)
        case ("max" | "min", args):
            return f"{node[0]}({', '.join(render(a, parts) for a in args)})"
        case ("given", base, bounds):
            return render(base, parts) + "".join(
                f" | {render(b, parts)} {op} {num(x)} @ {num(w)}" for b, op, x, w in bounds
            )
    text = " ".join(f"{'+' if s > 0 else '-'} {render(t, parts, True)}" for s, t in node[1])[2:]
    return f"({text})" if inner else text
