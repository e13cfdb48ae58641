"""Export a run: its best dreams and its Pareto frontier, each prompt with the target's activation at
every token, as JSON, CSV or Parquet (the shape is documented in docs/usage.md#export).

One row per prompt, the same columns in every format:

    model, target                 the run's model spec and target spec
    kind                          "best" (the best prompt at cross-entropy <= limit) or "frontier"
    limit                         "4", "5", "6" or "any" for kind "best"; null for "frontier"
    iteration                     the iteration that first scored the prompt
    activation, cross_entropy     the prompt's scores (as in the run's history)
    text                          the prompt
    ids                           its token ids
    tokens                        each token decoded on its own
    token_activations             the target at each token (evidence/tokens.py); null where it has none
    context_activations           robustness (evidence/robustness.py), for the `robust` most activating
    trigger_ids, trigger_text,    best dreams (null in the other rows): the target at the dream's last
    trigger_activation            token in each corpus context; its minimal trigger, and that trigger's
    variant_activations           activation; each resampled variant's activation

JSON: {"format": "reverie-export/1", "run": {...}, "prompts": [rows], "robustness": [...]}, strict (no
NaN), "robustness" holding each tested dream's `Robustness.to_dict()`. CSV: the rows, with the lists
(ids, tokens, token_activations, context_activations, trigger_ids, variant_activations) as JSON arrays
in text. Parquet: the rows, lists as lists. Exports written before the robustness columns read back
with them null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, ReverieError, RunDirError
from ..evidence.robustness import Robustness, robustness
from ..evidence.tokens import every_position, per_token, token_strings
from ..files import atomic_write, finite, write_json
from ..lm.model import Model, load_model
from ..lm.targets import as_target
from ..search.frontier import THRESHOLDS, best_at, distinct_best, pareto
from ..version import __version__
from .dream import DreamResult, load_run
from .rundir import RunDir

FORMATS = ("json", "csv", "parquet")
FORMAT = "reverie-export/1"
COLUMNS = [
    "model",
    "target",
    "kind",
    "limit",
    "iteration",
    "activation",
    "cross_entropy",
    "text",
    "ids",
    "tokens",
    "token_activations",
    "context_activations",
    "trigger_ids",
    "trigger_text",
    "trigger_activation",
    "variant_activations",
]
REQUIRED = COLUMNS[: COLUMNS.index("token_activations") + 1]  # (the robustness columns came later)
LISTS = ("ids", "tokens", "token_activations", "context_activations", "trigger_ids", "variant_activations")
ROBUST = ("context_activations", "trigger_ids", "trigger_text", "trigger_activation", "variant_activations")


def _row(result: DreamResult, kind: str, limit: str | None, row: pd.Series) -> dict:
    return {
        "model": result.model,
        "target": result.target,
        "kind": kind,
        "limit": limit,
        "iteration": int(row["iteration"]),
        "activation": float(row["activation"]),
        "cross_entropy": float(row["cross_entropy"]),
        "text": str(row["text"]),
        "ids": [int(t) for t in row["ids"]],
    }


def export_data(
    result: DreamResult, model: Model, target=None, *, robust: int = 3, corpus: str | None = "bundled"
) -> tuple[list[dict], list[Robustness]]:
    """The export's rows (see the module docstring): the best dreams at cross-entropy <= 4, 5, 6 and any
    (those that exist), then the frontier by cross-entropy; and the robustness of the `robust` most
    activating best dreams (`frontier.distinct_best`, as the report picks them), measured in `corpus`'s
    text. Every row has the robustness columns, null where its prompt was not tested (all of them for a
    target without a value per position). `target`: for Python-only targets."""
    history = result.history
    rows = []
    for limit in THRESHOLDS:
        best = best_at(history, limit)
        if best is not None:
            rows.append(_row(result, "best", "any" if math.isinf(limit) else f"{limit:g}", best))
    rows += [_row(result, "frontier", None, r) for _, r in pareto(history).iterrows()]
    if not rows:
        return rows, []
    resolved = as_target(target if target is not None else result.target, model)
    values = per_token(model, resolved, [r["ids"] for r in rows], template=result.config.template)
    for r, v in zip(rows, values):
        r["tokens"] = token_strings(model, r["ids"])
        r["token_activations"] = [finite(x) for x in v]
        r.update(dict.fromkeys(ROBUST))
    readable = robust > 0 and every_position(resolved) is not None  # (no robustness without a per-token value)
    picks = [[int(t) for t in p["ids"]] for p in distinct_best(history)[-robust:]] if readable else []
    tested = robustness(model, resolved, picks, template=result.config.template, corpus=corpus) if picks else []
    found = {tuple(t.ids): t for t in tested}
    for r in rows:
        t = found.get(tuple(r["ids"]))
        if t is not None:
            r["context_activations"] = [finite(x) for x in t.contexts["activation"]] if len(t.contexts) else None
            r["trigger_ids"], r["trigger_text"] = list(t.trigger_ids), t.trigger_text
            r["trigger_activation"] = finite(t.trigger_activation)
            r["variant_activations"] = [finite(x) for x in t.variants["activation"]]
    return rows, tested


def export_format(fmt: str | None, out: str | Path | None) -> str:
    """The format of an export: `fmt` if given, else the one `out`'s suffix names, else json. An `out`
    whose suffix is not the format's (.json, .csv, .parquet) is a one-line ConfigError: `read_export`
    reads a file by its suffix."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"cannot export as {fmt!r}: choose one of {', '.join(FORMATS)}")
    suffix = Path(out).suffix.lower().lstrip(".") if out is not None else None
    if fmt is None:
        fmt = suffix if suffix in FORMATS else "json"
    if out is not None and suffix != fmt:
        named = f"a .{suffix} name" if suffix else "no suffix"
        hint = f" or --format {suffix}" if suffix in FORMATS else ""
        raise ConfigError(f"cannot write a {fmt} export to {out} ({named}): name it {Path(out).stem}.{fmt}{hint}")
    return fmt


def export(
    run_dir: str | Path,
    fmt: str | None = None,
    out: str | Path | None = None,
    model: Model | None = None,
    *,
    target=None,
    dtype: str | None = None,
    device: str | None = None,
    robust: int = 3,
    corpus: str | None = "bundled",
) -> Path:
    """Write the run's best dreams and frontier with per-token activations to `out` (default
    RUN_DIR/export.FMT); returns the path. `fmt` (json, csv or parquet) defaults to the one `out`'s
    suffix names, else json; an `out` named for another format is refused. Without `model`, the run's
    model is loaded (with the run's dtype unless `dtype` is given). `robust`, `corpus`: as for
    `export_data`."""
    fmt = export_format(fmt, out)
    result = load_run(run_dir)
    assert result.run_dir is not None  # a run read from its folder knows it
    path = Path(out) if out is not None else result.run_dir / f"export.{fmt}"
    if model is None:
        model = load_model(result.model, dtype=dtype or RunDir(run_dir).config().get("dtype"), device=device)
    rows, tested = export_data(result, model, target, robust=robust, corpus=corpus)
    try:
        if fmt == "json":
            data = {
                "format": FORMAT,
                "run": _meta(result),
                "prompts": rows,
                "robustness": [t.to_dict() for t in tested],
            }
            write_json(path, data)
        else:
            frame = pd.DataFrame(rows, columns=COLUMNS)
            if fmt == "csv":
                frame = frame.assign(**{c: [json.dumps(v, allow_nan=False) for v in frame[c]] for c in LISTS})
                atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
            else:
                atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    except OSError as e:
        raise ReverieError(f"cannot write the export {path} ({e.strerror or e}): choose another --out") from None
    return path


def _loads(v):
    """A CSV cell of a list column: its JSON, or None where the column was missing."""
    return None if v is None else json.loads(v)


def _meta(result: DreamResult) -> dict:
    return {
        "model": result.model,
        "target": result.target,
        "iterations": result.iterations,
        "stopped": result.stopped,
        "template": result.config.template,
        "prompts_scored": len(result.history),
        "reverie": __version__,
    }


def read_export(path: str | Path) -> pd.DataFrame:
    """An export read back as its rows (any of the three formats, known by the file's suffix), lists as
    lists. A file that is not an export of that format is a one-line RunDirError naming it."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise RunDirError(f"cannot read {path} as an export: its name must end in .json, .csv or .parquet")
    try:
        if fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("prompts"), list):
                raise ValueError(f"not a {FORMAT} file (no format and prompts fields)")
            frame = pd.DataFrame(data["prompts"]) if data["prompts"] else pd.DataFrame(columns=COLUMNS)
        elif fmt == "csv":
            blank = {c: [""] for c in ("limit", "trigger_text", "trigger_activation")}
            frame = pd.read_csv(path, keep_default_na=False, na_values=blank)
        else:
            frame = pd.read_parquet(path)
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
        frame = frame.reindex(columns=COLUMNS).astype({c: object for c in ROBUST if c not in frame.columns})
        frame = frame.assign(**{c: frame[c].astype(object).where(frame[c].notna(), None) for c in ROBUST})
        if fmt == "csv":
            return frame.assign(**{c: [_loads(v) for v in frame[c]] for c in LISTS})
        if fmt == "parquet":
            return frame.assign(**{c: [None if v is None else list(v) for v in frame[c]] for c in LISTS})
        return frame
    except (OSError, ValueError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise RunDirError(
            f"cannot read the export {path} as {fmt} ({reason}): write it again with reverie export"
        ) from None
