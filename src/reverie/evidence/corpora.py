"""Corpora: the documents a scan reads, from a file, a folder, JSONL, Parquet, the hub or the bundled shard.

Corpus sources: a UTF-8 text file, split into documents at blank lines; a folder of them (every
`.txt`, `.md` or suffix-less file, hidden ones skipped, each split the same way); JSONL (one JSON
object per line, its string `field` one document); Parquet (column `field`, one document per row);
`hf:NAME` (a Hugging Face dataset, streamed; needs `datasets`); or `bundled` — the Wikipedia shard
shipped in gensim's test data, extracted to clean prose once and cached. A source that cannot be
read as text (not UTF-8, NUL bytes, invalid JSON, a missing, null or non-string field, a corrupt
Parquet file) is refused with one ReverieError line naming the file and, where there is one, the line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ..errors import ReverieError
from ..files import atomic_write
from ..lm.model import cache_dir

BUNDLED_WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def bundled_corpus() -> Path:
    """Clean prose of gensim's Wikipedia shard as JSONL (one article per line), extracted once and cached."""
    out = cache_dir() / "enwiki-shard-v2.jsonl"
    if out.exists():
        return out
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise ReverieError("the bundled corpus needs gensim: pip install gensim (or reverie[scan])")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(out.parent, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        raise ReverieError(
            f"cannot write the bundled corpus to the cache folder {out.parent}: set REVERIE_CACHE to a writable folder"
        )
    assert spec.submodule_search_locations is not None  # gensim is a package
    source = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / BUNDLED_WIKI
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    lines = []
    with bz2.open(source) as fh:
        for title, text, _ in extract_pages(fh):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            prose = _clean(filter_wiki(text))
            if len(prose) > 200:
                lines.append(json.dumps({"title": title, "text": prose}))
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return out


def _clean(text: str) -> str:
    """Drop what filter_wiki leaves of tables, files and headings; keep paragraphs of prose."""
    paragraphs = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line.replace("'''", "").replace("''", "")).strip()
        if len(line) < 40 or line.startswith(("|", "!", "{", "=", "*", "#", "Category:", "File:", "Image:", "thumb")):
            continue
        paragraphs.append(line)
    return "\n".join(paragraphs)


def documents(source: str, field: str = "text") -> Iterator[str]:
    """Documents of a corpus source, as strings (see the module docstring); ReverieError if it cannot be read."""
    if source == "bundled":
        source = str(bundled_corpus())
    if source.startswith("hf:"):
        try:
            from datasets import load_dataset
        except ImportError:
            raise ReverieError("hf: corpora need the datasets package: pip install datasets") from None
        yield from _hub_dataset(load_dataset, source[3:], field)
        return
    path = Path(source)
    if not path.exists():
        raise ReverieError(
            f"corpus {source} does not exist: give a text file, a folder, .jsonl, .parquet, hf:NAME or bundled"
        )
    try:
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix in (".txt", ".md", "")
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            for file in files:
                yield from _text_documents(file)
        elif path.suffix == ".jsonl":
            yield from _jsonl(path, field)
        elif path.suffix == ".parquet":
            yield from _parquet(path, field)
        else:
            yield from _text_documents(path)
    except OSError as e:
        raise ReverieError(
            f"cannot read the corpus {e.filename or path} ({e.strerror or e}): check that it exists and is readable"
        ) from None


def _hub_dataset(load_dataset, name: str, field: str) -> Iterator[str]:
    try:
        rows = iter(load_dataset(name, split="train", streaming=True))
        for n, row in enumerate(rows, 1):
            text = row.get(field)
            if not isinstance(text, str):
                raise ReverieError(
                    f"hf:{name} row {n} has no text in field {field!r} (its fields: "
                    f"{', '.join(map(str, row))}): choose one with --field"
                )
            yield text
    except ReverieError:
        raise
    except Exception as e:  # the hub, the network or the dataset: any of them can fail in its own way
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReverieError(
            f"cannot read the Hugging Face dataset {name} ({message}): check the name, the "
            "network, or download it and give the local files"
        ) from None


def _text_documents(path: Path) -> list[str]:
    """The documents of a UTF-8 text file: its paragraphs, separated by blank lines."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise ReverieError(
            f"{path} is not a UTF-8 text file (it has NUL bytes or invalid UTF-8): give text, "
            ".jsonl or .parquet, or re-save it as UTF-8"
        )
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _jsonl(path: Path, field: str) -> Iterator[str]:
    """The string `field` of every JSON object line of `path`."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            where = f"{path} line {i + 1}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ReverieError(f"{where} is not UTF-8: re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReverieError(
                    f"{where} is not valid JSON ({e.msg} at column {e.colno}): each line must be "
                    f'one JSON object, e.g. {{"{field}": "..."}}'
                ) from None
            if not isinstance(row, dict):
                raise ReverieError(f'{where} is not a JSON object: each line must be one, e.g. {{"{field}": "..."}}')
            if field not in row:
                raise ReverieError(f"{where} has no field {field!r}: pass --field")
            if not isinstance(row[field], str):
                raise ReverieError(
                    f"{where}: field {field!r} is {json.dumps(row[field])[:40]}, not a string: "
                    "give every line text there, or pass --field"
                )
            yield row[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
    """The strings of column `field` of a Parquet file, one per row."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReverieError(f"cannot read {path} as Parquet ({reason}): give a valid Parquet file") from None
    if field not in frame.columns:
        raise ReverieError(f"{path} has no column {field!r} (columns: {list(frame.columns)}): pass --field")
    for i, value in enumerate(frame[field]):
        if not isinstance(value, str):
            shown = "null" if pd.api.types.is_scalar(value) and pd.isna(value) else repr(value)[:40]
            raise ReverieError(
                f"{path} row {i + 1}: column {field!r} is {shown}, not a string: "
                "give every row text there, or pass --field"
            )
        yield value
