"""`reverie scan` and `reverie index`: a corpus's best windows for some targets, and the feature index of
every neuron (evidence/scan.py, evidence/features.py). Registered in app.py as commands."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ReverieError
from ..lm.targets import usage
from .display import IndexProgress, console, shown

out_console = Console(markup=False, highlight=False)  # what it prints holds model text: data, not markup


def scan(
    target: list[str] = typer.Option(
        ..., "--target", "-t", help=f"Target to scan for: {escape(usage(scans=True))}; repeatable."
    ),
    corpus: str = typer.Option(
        "bundled",
        "--corpus",
        "-c",
        help="Text file, folder, .jsonl, .parquet, hf:NAME, or 'bundled' (a Wikipedia shard).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for scan.parquet and scan.json."),
    model: str = typer.Option("bundled", "--model", "-m", help="Hub id, local folder, .gguf file, or 'bundled'."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Stop after this many corpus tokens."),
    window: int = typer.Option(12, help="Tokens per re-scored window (the dreams' length)."),
    top: int = typer.Option(20, help="Examples kept per target."),
    candidates: int = typer.Option(200, help="In-context positions per target re-scored as windows."),
    batch_size: int = typer.Option(8, help="Chunks per forward pass."),
    chunk: int = typer.Option(256, help="Tokens per chunk."),
    field: str = typer.Option("text", help="JSONL field or Parquet column holding the text."),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Find the corpus windows that most activate each target, in one pass over the corpus."""
    from ..lm.targets import parse_target

    for spec in target:  # a bad spec fails before anything loads
        parse_target(spec)
    from ..evidence.scan import ScanConfig
    from ..files import write_json
    from ..lm.model import load_model
    from ..runs.rundir import RunDir

    config = ScanConfig(
        window=window,
        top=top,
        candidates=candidates,
        chunk=chunk,
        batch_size=batch_size,
        max_tokens=max_tokens,
        field=field,
    )
    RunDir(out).check_writable()
    loaded = load_model(model, dtype=dtype, device=device)
    progress = Progress(
        TextColumn("[bold]scanning"),
        BarColumn(),
        TextColumn("{task.completed:,} tokens"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )  # gone once done: the summary line follows, or one error line
    task = progress.add_task("scan", total=max_tokens, rate="")
    start = time.perf_counter()

    def on_progress(tokens: int) -> None:
        progress.update(task, completed=tokens, rate=f"{tokens / (time.perf_counter() - start):,.0f} tok/s")

    from ..evidence.windows import scan_with_index
    from ..lm.targets import as_target

    with progress:
        result, indexed = scan_with_index(
            loaded, [as_target(t, loaded) for t in target], corpus, config, progress=on_progress
        )
    if indexed:
        console.print(f"read from the feature index of {corpus}: {', '.join(indexed)}", soft_wrap=True, markup=False)
    seconds = time.perf_counter() - start
    tokens = int(progress.tasks[0].completed)
    try:
        out.mkdir(parents=True, exist_ok=True)
        result.assign(ids=[list(map(int, i)) for i in result["ids"]]).to_parquet(out / "scan.parquet", index=False)
        write_json(
            out / "scan.json",
            {
                "model": model,
                "corpus": corpus,
                "targets": target,
                "tokens": tokens,
                "seconds": round(seconds, 1),
                "config": vars(config),
            },
        )
    except OSError as e:
        raise ReverieError(f"cannot write the scan to {out} ({e.strerror})") from None
    for spec, group in result.groupby("target", sort=False):
        best = group.iloc[0]
        out_console.print(
            f"{spec}: best window {best.activation:.3f} (ce {best.cross_entropy:.2f}) {shown(best.text)}",
            soft_wrap=True,
        )
    out_console.print(
        f"scanned {tokens:,} tokens in {seconds:.1f} s ({tokens / seconds:,.0f} tok/s); wrote {out / 'scan.parquet'}",
        soft_wrap=True,
    )


def index(
    model: str = typer.Option("bundled", "--model", "-m", help="Hub id, local folder, .gguf file, or 'bundled'."),
    corpus: str = typer.Option(
        "bundled",
        "--corpus",
        "-c",
        help="Text file, folder, .jsonl, .parquet, hf:NAME, or 'bundled' (a Wikipedia shard).",
    ),
    sae: list[str] = typer.Option(
        [],
        "--sae",
        help="Also index every feature of this SAE (a folder in SAELens's layout or RELEASE/SAE_ID); repeatable.",
    ),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Index only the first this many corpus tokens."),
    window: int = typer.Option(12, help="Tokens per window (the dreams' length)."),
    candidates: int = typer.Option(64, help="In-context positions kept per feature."),
    batch_size: int = typer.Option(8, help="Chunks per forward pass."),
    chunk: int = typer.Option(256, help="Tokens per chunk."),
    field: str = typer.Option("text", help="JSONL field or Parquet column holding the text."),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Index a corpus once: every MLP neuron's (and every SAE feature's) top positions, so that dreams start
    from their best real text in seconds. Resumable; a second build is a cache hit."""
    from ..evidence.features import IndexConfig, build_index
    from ..lm.model import load_model

    config = IndexConfig(
        window=window, candidates=candidates, chunk=chunk, batch_size=batch_size, max_tokens=max_tokens, field=field
    )
    bar = IndexProgress()
    loaded = load_model(model, dtype=dtype, device=device)
    ran: list[int] = []

    def progress(done: int, total: int, seconds_per_token: float) -> None:
        ran.append(1)
        bar(done, total, seconds_per_token)

    built = build_index(loaded, corpus, config, saes=sae, progress=progress)
    meta = built.meta
    what = "built" if ran else "read from the cache"
    out_console.print(
        f"{what}: the feature index of {meta['tokens']:,} tokens of {corpus} for {model} "
        f"({len(built.values)} sources, {sum(v.shape[1] for v in built.values.values()):,} features; "
        f"the pass took {meta.get('seconds', 0):.1f} s): {built.path}",
        soft_wrap=True,
    )
