"""README.md stays a newcomer's page, and the docs hold together: the Python in README.md and docs/*.md
uses names a plain `import reverie` provides, and every relative link (and every docs anchor that a
code comment cites) points at a file and heading that exist."""

import ast
import re
from pathlib import Path

import pytest

import reverie

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 12_500

PAGES = [README, *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^ {0,3}(```|~~~)([^\n]*)\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)
CITED = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def python_blocks(path: Path) -> list[str]:
    """The bodies of the ```python fences of a Markdown page."""
    return [
        body
        for _, info, body in FENCE.findall(path.read_text(encoding="utf-8"))
        if info.strip().split(" ")[0].lower() in ("python", "py")
    ]


def prose(path: Path) -> str:
    """The page without its fenced code blocks and inline code spans (where `#` and `](` mean nothing)."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, links reduced to their text, punctuation dropped,
    spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page defines: one per heading (repeats numbered as GitHub numbers them), and
    explicit <a id="..."> anchors."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for _, heading in HEADING.findall(text):
        base = slug(INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(HTML_ANCHOR.findall(text))


def reverie_names(source: str) -> set[str]:
    """Every dotted name under `reverie` that a block of Python uses: attribute chains on `reverie`,
    `from reverie[.x] import y`, `import reverie.x`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "reverie":
                names.add(".".join(["reverie", *reversed(parts)]))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "reverie":
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "reverie")
    return names


def resolves(dotted: str) -> bool:
    """Whether a dotted name resolves by attribute access alone after a plain `import reverie`."""
    obj = reverie
    for part in dotted.split(".")[1:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_readme_is_a_short_page():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size} bytes (at most {MAX_README_BYTES}): move the detail into docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_use_public_names(page):
    blocks = python_blocks(page)
    missing = set()
    for i, block in enumerate(blocks, 1):
        try:
            names = reverie_names(block)
        except SyntaxError as e:
            pytest.fail(f"{_name(page)}: python block {i} does not parse: {e}")
        missing |= {name for name in names if not resolves(name)}
    assert not missing, (
        f"{_name(page)} uses names that a plain `import reverie` does not provide: {', '.join(sorted(missing))}"
    )


def test_readme_has_python_that_is_checked():
    assert any("reverie." in block for block in python_blocks(README))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_point_at_files_and_headings(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{_name(page)} has broken links: {'; '.join(broken)}"


def test_readme_links_into_docs():
    targets = [t.partition("#")[0] for t in LINK.findall(prose(README))]
    assert any(t.startswith("docs/") for t in targets)


def test_docs_anchors_cited_in_the_code_exist():
    """Code comments cite `docs/design.md#...` and `docs/performance.md#...`: each cited page and
    heading must exist."""
    broken = []
    for path in sorted([*(ROOT / "src").rglob("*"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        if not path.is_file() or path.suffix not in (".py", ".c", ".j2", ".toml") or path == Path(__file__).resolve():
            continue
        for file, anchor in CITED.findall(path.read_text(encoding="utf-8", errors="replace")):
            page = DOCS / file
            if not page.exists():
                broken.append(f"{_name(path)}: docs/{file}")
            elif anchor and anchor not in anchors(page):
                broken.append(f"{_name(path)}: docs/{file}#{anchor}")
    assert not broken, "cited docs anchors that do not exist: " + "; ".join(sorted(set(broken)))
