"""A sweep's index: one row per target, its seeds merged into one frontier (index.parquet), and a
browsable page (index.html) linking every run's report. Always rebuilt from the run directories."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pandas as pd

from ..errors import RunDirError
from ..files import atomic_write, read_json
from ..report.pages import environment
from ..runs.rundir import FRONTIER, finished
from ..search.frontier import summary
from .specs import Job, make_jobs

_TAGS = {4.0: "ce4", 5.0: "ce5", 6.0: "ce6", math.inf: "any"}


def frontier_frame(points: list[dict]) -> pd.DataFrame:
    """The frontier points of one or more runs' frontier.json as a history-like DataFrame."""
    frame = pd.DataFrame(points, columns=["text", "ids", "activation", "cross_entropy", "iteration"])
    return frame.astype({"activation": float, "cross_entropy": float})


def build_index(out: str | Path, jobs: list[Job]) -> pd.DataFrame:
    """One row per target, from the run directories: seeds merged into one frontier."""
    out, rows = Path(out), []
    for spec, grouped in itertools.groupby(jobs, key=lambda j: j.spec):
        group = list(grouped)
        points, done, failed, seconds, runs = [], [], [], 0.0, []
        errors: dict[str, list[str]] = {}  # error -> the seeds that failed with it
        for job in group:
            info = finished(job.path(out))
            if info is not None:
                done.append(job.seed)
                seconds += float(info.get("seconds") or 0.0)
                points += info.get("frontier", [])
                runs.append(str(job.path(out).relative_to(out)))
            elif (fail := read_json(job.failed_path(out))) is not None:
                failed.append(job.seed)
                errors.setdefault(str(fail.get("error")), []).append(str(job.seed))
        status = (
            "done"
            if len(done) == len(group)
            else "failed"
            if len(failed) == len(group)
            else "partial"
            if done and len(done) + len(failed) == len(group)
            else "pending"
        )
        row = {
            "target": spec,
            "slug": group[0].slug,
            "status": status,
            "seeds": len(group),
            "seeds_done": len(done),
            "seeds_failed": len(failed),
        }
        best = summary(frontier_frame(points))
        for b in best.itertuples():
            tag = _TAGS[b.max_cross_entropy]
            row[f"activation_{tag}"], row[f"cross_entropy_{tag}"], row[f"prompt_{tag}"] = (
                b.activation,
                b.cross_entropy,
                b.text,
            )
        error = "; ".join(f"seed{'s' * (len(k) > 1)} {','.join(k)}: {e}" for e, k in errors.items())
        row.update(seconds=round(seconds, 2), error=error or None, runs=runs)
        rows.append(row)
    return pd.DataFrame(rows)


def write_index(out: str | Path, jobs: list[Job], meta: dict) -> pd.DataFrame:
    """Rebuild DIR/index.parquet and DIR/index.html (atomically) from the run directories."""
    out = Path(out)
    index = build_index(out, jobs)
    atomic_write(out / "index.parquet", lambda tmp: index.to_parquet(tmp, index=False))
    seed_links: dict[str, list[dict]] = {}  # target -> one link per seed
    for job in jobs:  # each seed links to its report.html when written, else to its frontier.json
        path = job.path(out)
        page = next((p for p in (path / "report.html", path / FRONTIER) if p.exists()), None)
        seed_links.setdefault(job.spec, []).append(
            {
                "seed": job.seed,
                "href": page and str(page.relative_to(out)),
                "failed": job.failed_path(out).exists() and page is None,
            }
        )
    html = (
        environment()
        .get_template("index.html.j2")
        .render(
            meta=meta,
            rows=index.sort_values("activation_any", ascending=False, na_position="last").to_dict("records"),
            links=seed_links,
            tags=[("ce4", "≤ 4"), ("ce5", "≤ 5"), ("ce6", "≤ 6"), ("any", "any")],
            counts=index["status"].value_counts().to_dict(),
            generated=time.strftime("%Y-%m-%d %H:%M:%S"),
            isfinite=lambda v: v is not None and isinstance(v, float) and math.isfinite(v),
        )
    )
    atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return index


def rebuild_index(out: str | Path) -> pd.DataFrame:
    """Rebuild the index of the sweep in `out` from its sweep.json and run directories."""
    meta = read_json(Path(out) / "sweep.json")
    if meta is None:
        raise RunDirError(f"{out} is not a sweep folder (no readable sweep.json)")
    return write_index(out, make_jobs(meta["targets"], meta["seeds"]), meta)
