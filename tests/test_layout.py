"""The module map holds (docs/design.md#module-map): imports flow one way, from the top layer down, with no
cycle; no module, test or bench script reaches into another module's private names; modules stay short."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "reverie"

# lowest first: a module may import its own layer (without a cycle) and the layers below it
LAYERS = [
    "errors",
    "files",
    "version",
    "choices",
    "lm",
    "fast",
    "scoring",
    "search",
    "evidence",
    "runs",
    "report",
    "sweeps",
    "cli",
]
LEVEL = {name: i for i, name in enumerate(LAYERS)}
LEVEL.update(errors=0, files=0, version=0, choices=0)  # the base: one layer
# module -> why it may run past ~400 lines. `ruff format` (issue 29) lays long calls and signatures out
# one argument per line: these grew past 400 lines without new code (lines before it in parentheses).
FORMATTED = "one argument per line since ruff format"
LONG: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path, name: str):
    """(imported reverie module, the names it imports, line) for every import in a module, lazy ones too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "reverie" or target.startswith("reverie."):
                known = modules()
                for alias in node.names:  # `from . import plots` imports a module
                    sub = f"{target}.{alias.name}"
                    yield (sub, [], node.lineno) if sub in known else (target, [alias.name], node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reverie"):
                    yield alias.name, [], node.lineno


def layer(module: str) -> int:
    return LEVEL[module.split(".")[1]]


def test_imports_flow_down_the_layers_without_a_cycle():
    graph, wrong = {}, []
    for name, path in modules().items():
        if name in ("reverie", "reverie.__main__"):  # the package's face: it gathers every layer
            continue
        graph[name] = set()
        for target, _, line in imports(path, name):
            assert target != "reverie", f"{name}:{line} imports the package root (import the module itself)"
            graph[name].add(target)
            if layer(target) > layer(name):
                wrong.append(f"{name}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)

    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def private_uses(path: Path) -> list[str]:
    """Imports of a reverie module's private names, and `module._name` uses of imported reverie modules."""
    tree = ast.parse(path.read_text())
    name = module_name(path) if SRC in path.parents else "reverie.outside"
    found = [
        f"{path.name}:{line} imports {target}.{n}"
        for target, names, line in imports(path, name)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    bound = set()  # names bound to reverie modules (or to what they export)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("reverie"))
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("reverie")):
            bound.update(a.asname or a.name for a in node.names)
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "attr", None) == "import_module"
        ):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    paths = list(SRC.rglob("*.py")) + list((ROOT / "tests").glob("*.py")) + list((ROOT / "bench").glob("*.py"))
    found = [use for p in paths for use in private_uses(p)]
    assert not found, "\n".join(found)


def test_modules_stay_short():
    long = {name: len(p.read_text().splitlines()) for name, p in modules().items()}
    long = {name: n for name, n in long.items() if n > 400 and name not in LONG}
    assert not long, f"modules over 400 lines (split them, or say why in LONG): {long}"
