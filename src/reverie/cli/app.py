"""The `reverie` command: a thin layer over the library.

Bad input ends with one line on stderr and exit code 2; nothing computed is lost.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError, ReverieError
from ..lm.targets import usage
from .corpus import index as index_corpus
from .corpus import scan as scan_corpus
from .display import IndexProgress, LiveDisplay, SweepDisplay, console, frontier_table, out_console, shown
from .export import export as export_run
from .options import epo_config, epo_options

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a language model dream: find fluent prompts that drive a feature high (EPO).",
)

app.command("export")(export_run)
app.command("scan")(scan_corpus)
app.command("index")(index_corpus)

TARGET_FORMS = escape(usage())  # the target spec forms, for help texts (square brackets are not markup)


@app.command()
@epo_options()
def dream(
    target: str | None = typer.Option(None, "--target", "-t", help=f"Feature to dream: {TARGET_FORMS}."),
    model: str = typer.Option(
        "bundled", "--model", "-m", help="Hub id, local folder, .gguf file, or 'bundled' (SmolLM2-135M, offline)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory to write (default: runs/<target>-<time>)."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."
    ),
    *,
    epo: dict,  # the per-run EPO options (options.py)
    corpus: str = typer.Option(
        "auto",
        "--corpus",
        "-c",
        help=(
            "Where the target's best real text comes from (half the slots start there with --start data; the "
            "report compares with it): 'auto' (the bundled corpus's feature index; built once on first use for "
            "the bundled model), a text file, folder, .jsonl, .parquet, hf:NAME, 'bundled', or a `reverie scan` "
            "folder."
        ),
    ),
    index_tokens: int | None = typer.Option(
        None,
        "--index-tokens",
        help=(
            "Where a feature index must be built for --corpus, index only its first this many tokens (quicker; a "
            "later dream without it builds the whole corpus's)."
        ),
    ),
    no_corpus: bool = typer.Option(
        False,
        "--no-corpus",
        help=(
            "No real text: the population starts from the model alone (--start beam unless given) and the report "
            "has no windows."
        ),
    ),
    checkpoint_every: int = typer.Option(5, help="Checkpoint every this many iterations."),
    dtype: str | None = typer.Option(
        None,
        help="auto, fp32, bf16 or fp16 (default auto: the faster on this machine, measured once by a short probe).",
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)."),
    device_map: str | None = typer.Option(
        None, "--device-map", help="auto: spread a model too large for one device over all of them (accelerate)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live display."),
    report: bool | None = typer.Option(
        None,
        "--report/--no-report",
        help=(
            "Write report.html into the run directory at the end (default: yes; with --resume, as the run was started)."
        ),
    ),
    diverse: int = typer.Option(
        1,
        "--diverse",
        help=(
            "K distinct dreams (OUT/face0..K-1, OUT/faces.html), each avoiding the tokens of the earlier ones' "
            "best prompts; rerun to resume."
        ),
    ),
    scan_dir: Path | None = typer.Option(None, "--scan", hidden=True, help="Deprecated: --corpus SCAN_DIR."),
    init_from: Path | None = typer.Option(None, "--init-from", hidden=True, help="Deprecated: --corpus SCAN_DIR."),
    random_start: bool = typer.Option(False, "--random-start", hidden=True, help="Deprecated: --start beam."),
) -> None:
    """Dream a feature with EPO and write a resumable run directory (and its report.html)."""
    from ..runs.plan import plan_run
    from .results import load, notice, print_result, write_outputs

    corpus, epo = _deprecated_starts(corpus, scan_dir or init_from, random_start, epo)
    plan = plan_run(
        target,
        epo_config(epo) if resume is None else None,
        resume=resume,
        iters=epo["iters"],
        time_budget=epo["time_budget"],
        out=out,
        model=model,
        dtype=dtype,
        report=report,
        faces=diverse,
        corpus=corpus,
        no_corpus=no_corpus,
        index_tokens=index_tokens,
        checkpoint_every=checkpoint_every,
    )
    loaded = load(plan, device=device, device_map=device_map, quiet=quiet)
    display = LiveDisplay(loaded.tokenizer, plan.config.iters, enabled=not quiet)
    try:
        results = plan.run(loaded, callback=display, notice=notice, progress=IndexProgress(enabled=not quiet))
    finally:
        display.stop()
    print_result(results[-1], plan.run_dir)
    if results[-1].stopped == "interrupted":  # saved to its last iteration; no report: the user asked to stop
        raise typer.Exit(130)
    write_outputs(plan, results, loaded, quiet)


def _deprecated_starts(corpus: str, scan_dir: Path | None, random_start: bool, epo: dict) -> tuple[str, dict]:
    """(corpus, epo) after the deprecated --scan, --init-from and --random-start."""
    epo = dict(epo)
    for old, new, given in (
        ("--scan/--init-from DIR", "--corpus DIR", scan_dir is not None),
        ("--random-start", "--start beam", random_start),
    ):
        if given:
            console.print(f"note: {old} is deprecated: use {new}", soft_wrap=True, markup=False)
    if random_start:
        epo["starts"] = "beam"
    return (corpus if scan_dir is None else str(scan_dir)), epo


@app.command()
def frontier(
    runs: list[Path] = typer.Argument(..., help="Run directories; their histories are merged."),
    export: Path | None = typer.Option(None, "--export", "-e", help="Write the frontier to .csv, .parquet or .json."),
    max_ce: float = typer.Option(math.inf, "--max-ce", help="Only prompts with cross-entropy at most this."),
) -> None:
    """Print or export the Pareto frontier merged across run directories."""
    from ..runs.dream import load_run
    from ..search.frontier import merge, pareto, summary

    results = [load_run(r) for r in runs]
    if len({r.target for r in results}) > 1:
        raise ReverieError(
            "these runs dreamed different targets ("
            + ", ".join(sorted({r.target for r in results}))
            + "): a frontier merges runs of one target; give the runs of each target separately"
        )
    history = merge([r.history for r in results], [str(r) for r in runs])
    front = pareto(history[history["cross_entropy"] <= max_ce])
    targets = sorted({r.target for r in results})
    if export is not None:
        _export(front, export)
        console.print(f"wrote {len(front)} frontier prompts to {export}", markup=False)
    out_console.print(
        frontier_table(
            zip(front["activation"], front["cross_entropy"], front["text"]),
            f"frontier of {', '.join(targets)} over {len(runs)} run(s), {len(history)} prompts scored",
        )
    )
    best = summary(history)
    for row in best.itertuples():
        if row.text is not None:
            out_console.print(
                f"best at cross-entropy <= {row.max_cross_entropy:g}: {row.activation:.3f} "
                f"(ce {row.cross_entropy:.2f}) {shown(row.text)}"
            )


@app.command()
def attribute(
    target: str = typer.Option(..., "--target", "-t", help=f"Feature to explain: {TARGET_FORMS}."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt to explain."),
    model: str = typer.Option("bundled", "--model", "-m", help="Hub id, local folder, .gguf file, or 'bundled'."),
    k: int = typer.Option(32, "-k", help="Gradient candidates substituted per position."),
    export: Path | None = typer.Option(None, "--export", "-e", help="Also write the table to .csv, .parquet or .json."),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16."),
) -> None:
    """Causal token attribution: how much the activation drops when each token is substituted."""
    from ..evidence.attribution import attribute as run_attribute
    from ..lm.model import load_model

    table = run_attribute(load_model(model, dtype=dtype), target, prompt, k=k)
    view = Table(
        title=f"{target}: activation {table.baseline.iloc[0]:.3f}, cross-entropy {table.attrs['cross_entropy']:.2f}",
        title_justify="left",
    )
    for col in ("token", "drop by worst substitute", "drop by best alternative", "best alternative"):
        view.add_column(col, justify="left" if col in ("token", "best alternative") else "right")
    for r in table.itertuples():
        view.add_row(shown(r.token), f"{r.drop_worst:.3f}", f"{r.drop_best:.3f}", shown(r.best_substitute))
    out_console.print(view)
    if export is not None:
        _export(table.drop(columns="substitutes"), export)


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run directory written by `reverie dream`."),
    scan_dir: Path | None = typer.Option(
        None, "--scan", help="A `reverie scan` folder: show its top windows for the run's target beside the dreams."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the HTML (default: RUN/report.html)."),
    points: int = typer.Option(4, help="Frontier prompts to explain with attribution heat-maps."),
    k: int = typer.Option(32, "-k", help="Gradient candidates substituted per position in the attribution."),
    no_model: bool = typer.Option(
        False, "--no-model", help="Do not load the model: no attribution, no baseline (fast)."
    ),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16 (default: the run's)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Write a self-contained report.html for a run: frontier, plots, attribution, dataset windows."""
    from ..evidence.scan import read_scan
    from ..lm.model import load_model
    from ..report.run import write_report
    from ..runs.dream import load_run
    from ..runs.rundir import RunDir

    result = load_run(run)
    windows = read_scan(scan_dir)
    loaded = None
    if not no_model:
        loaded = load_model(result.model, dtype=dtype or RunDir(run).config().get("dtype"), device=device)
    path = write_report(
        result,
        out=out or run / "report.html",
        scan=windows,
        model=loaded,
        points=points,
        k=k,
        progress=lambda step: console.print(f"[dim]{step} …[/dim]"),
    )
    out_console.print(f"report: {path}", soft_wrap=True)


def _export(frame, path: Path) -> None:
    if "ids" in frame.columns:
        frame = frame.assign(ids=[list(map(int, i)) for i in frame["ids"]])
    try:
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        elif path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        elif path.suffix == ".json":
            frame.to_json(path, orient="records", indent=2)
        else:
            raise ReverieError(f"cannot export to {path}: use a .csv, .parquet or .json file name")
    except OSError as e:
        raise ReverieError(f"cannot write {path} ({e.strerror})") from None


@app.command()
@epo_options(
    exclude=(
        "seed",  # --seeds gives each job its seed
        "time_budget",  # a sweep's runs go to their iteration count: its index counts only finished runs
    )
)
def sweep(
    targets: list[str] = typer.Option(
        ...,
        "--targets",
        "-t",
        help=(
            f"Features to dream: {TARGET_FORMS}; also a file of them (one per line, # comments), a range "
            "(neuron:L9.N0-63, neuron:L*.N5) or a comma list; repeatable."
        ),
    ),
    seeds: str = typer.Option("0", "--seeds", "-s", help="Seeds per target: 0-4, 0,2,5 or one number."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Sweep folder; rerun the same command to resume. On Ray, a path every node can reach."
    ),
    model: str = typer.Option("bundled", "--model", "-m", help="Hub id, local folder, .gguf file, or 'bundled'."),
    use_ray: bool = typer.Option(
        False, "--ray", help="Run on Ray (pip install 'reverie\\[ray]'): a local cluster unless --ray-address."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (auto, HOST:6379 or ray://HOST:10001); implies --ray."
    ),
    actors: int | None = typer.Option(None, help="Ray actors (default: one per slot of the cluster)."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs per Ray actor (its torch threads)."),
    gpus_per_actor: float | None = typer.Option(
        None, help="GPUs per Ray actor (default 1 if the cluster has GPUs, else 0)."
    ),
    retries: int = typer.Option(2, help="Tries after a job's first failure before it is recorded as failed."),
    together: int = typer.Option(
        1, help="Jobs dreamed at once in this process, their model passes batched (the packed scorer)."
    ),
    *,
    epo: dict,  # the per-run EPO options (options.py)
    checkpoint_every: int = typer.Option(5, help="Checkpoint every this many iterations."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write each run's report.html when it finishes."),
    dtype: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16."),
    device: str | None = typer.Option(
        None, help="cpu, cuda, ... (default: CUDA if present; a Ray actor sees only the GPUs it is given)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live display."),
    corpus: str = typer.Option(
        "auto",
        "--corpus",
        "-c",
        help=(
            "Where each dream's real text comes from, as for `reverie dream --corpus` (on Ray, a path every node "
            "can read)."
        ),
    ),
    no_corpus: bool = typer.Option(
        False, "--no-corpus", help="No real text: every dream starts from the model alone (--start beam unless given)."
    ),
    init_from: Path | None = typer.Option(None, "--init-from", hidden=True, help="Deprecated: --corpus SCAN_DIR."),
) -> None:
    """Dream many targets x seeds (in this process or on Ray); resumable; writes OUT/index.parquet and index.html."""
    from ..sweeps.sweep import sweep as run_sweep

    config = epo_config(epo)
    if no_corpus and (corpus != "auto" or init_from is not None):
        raise ConfigError("--no-corpus dreams from the model alone: drop --corpus (or --no-corpus)")
    if init_from is not None:
        console.print("note: --init-from is deprecated: use --corpus SCAN_DIR", soft_wrap=True, markup=False)
    display = SweepDisplay(enabled=not quiet)
    try:
        index = run_sweep(
            model,
            targets,
            seeds,
            out,
            config,
            executor="ray" if use_ray or ray_address else "local",
            ray_address=ray_address,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            retries=retries,
            checkpoint_every=checkpoint_every,
            report=report,
            dtype=dtype,
            device=device,
            progress=display,
            corpus=None if no_corpus else str(init_from) if init_from is not None else corpus,
            together=together,
        )
    finally:
        display.stop()
    table = Table(title=f"best dreams of {len(index)} targets", title_justify="left")
    for col in ("target", "status", "best, ce ≤ 5", "best", "prompt"):
        table.add_column(col, overflow="fold", justify="right" if col.startswith("best") else "left")
    for r in index.sort_values("activation_any", ascending=False).head(20).itertuples():
        table.add_row(
            r.target,
            r.status,
            f"{r.activation_ce5:.3f}",
            f"{r.activation_any:.3f}",
            shown(r.prompt_any) if isinstance(r.prompt_any, str) else "",
        )
    out_console.print(table)
    failed = int(index["seeds_failed"].sum())
    out_console.print(
        f"{int(index['seeds_done'].sum())} runs done, {failed} failed; index: {out / 'index.html'}", soft_wrap=True
    )
    if failed:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except ReverieError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # during loading; a running dream stops cleanly on its own
        print("interrupted", file=sys.stderr)
        sys.exit(130)
