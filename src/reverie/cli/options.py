"""The per-run EPO options of `reverie dream` and `reverie sweep`, each defined once.

`per_run_options`'s signature defines them (flag, help, default from `EPOConfig`); `epo_options` puts them
on a command in place of its `epo` parameter, which then receives their parsed values; `epo_config` turns
those values into the `EPOConfig` of a run.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import typer

from ..errors import ConfigError
from ..lm.targets import token_arg
from ..search.config import EPOConfig
from .display import console

DEFAULTS = EPOConfig()


def per_run_options(
    iters: int | None = typer.Option(
        None, "--iters", "-n", help=f"Iterations T (default {DEFAULTS.iters}; with dream --resume, the new total)."
    ),
    population: int = typer.Option(DEFAULTS.population, help="Population size M."),
    children: int = typer.Option(DEFAULTS.children, help="Children per member per iteration r."),
    top_k: int = typer.Option(DEFAULTS.top_k, "--top-k", help="Candidate tokens per position k."),
    top_k_start: int | None = typer.Option(
        DEFAULTS.top_k_start, "--top-k-start", help="Grow k linearly from this to --top-k over the run."
    ),
    length: int = typer.Option(DEFAULTS.length, help="Prompt length in tokens n (the --prompt's length wins)."),
    insert_rate: float = typer.Option(
        DEFAULTS.insert_rate, "--insert-rate", help="Probability that a child inserts a token (lengths then vary)."
    ),
    delete_rate: float = typer.Option(
        DEFAULTS.delete_rate, "--delete-rate", help="Probability that a child deletes a token."
    ),
    min_length: int | None = typer.Option(
        DEFAULTS.min_length, "--min-length", help="Shortest prompt with insertions/deletions (default length - 4)."
    ),
    max_length: int | None = typer.Option(
        DEFAULTS.max_length, "--max-length", help="Longest prompt with insertions/deletions (default length + 4)."
    ),
    penalty_min: float = typer.Option(DEFAULTS.penalty_min, help="Smallest fluency penalty λ."),
    penalty_max: float = typer.Option(DEFAULTS.penalty_max, help="Largest fluency penalty λ."),
    penalties: list[float] = typer.Option(
        [],
        "--penalty",
        help=(
            "The fluency penalty λ of one slot, given once per population member instead of "
            "--penalty-min/--penalty-max; repeatable."
        ),
    ),
    restart_every: int = typer.Option(DEFAULTS.restart_every, help="Restart every this many iterations (0 = never)."),
    adaptive_restart: bool = typer.Option(
        DEFAULTS.adaptive_restart,
        "--adaptive-restart",
        help="Restart only after --restart-every iterations in which no slot improved.",
    ),
    restart_penalty: tuple[float, float] = typer.Option(
        DEFAULTS.restart_penalty,
        "--restart-penalty",
        metavar="LO HI",
        help="A restart starts every slot from the best prompt under a penalty λ drawn from LO to HI.",
    ),
    gcg: float | None = typer.Option(
        None, "--gcg", help="Run plain GCG with this fixed penalty (population 1, no restarts)."
    ),
    seed: int = typer.Option(DEFAULTS.seed, help="Random seed: the same seed gives the same run on CPU."),
    init_prompt: str | None = typer.Option(
        DEFAULTS.init_prompt, "--prompt", help="Initial prompt text for every member."
    ),
    fluency: list[str] = typer.Option(
        [],
        "--fluency",
        help=(
            "A model whose cross-entropy counts as fluency, SPEC[:WEIGHT] ('self' = the target model); "
            "repeatable. Default: the target model alone."
        ),
    ),
    repetition_penalty: float = typer.Option(
        DEFAULTS.repetition_penalty,
        "--repetition-penalty",
        help="Selection subtracts this times the fraction of tokens that repeat an earlier one.",
    ),
    junk_penalty: float = typer.Option(
        DEFAULTS.junk_penalty,
        "--junk-penalty",
        help=(
            "γ: selection adds γ nats to a prompt's cross-entropy per unit of its junk share (tokens with no "
            "letter, or repeating an earlier one) above that of typical text; the reported cross-entropy stays "
            "the model's (0: the paper's)."
        ),
    ),
    template: str | None = typer.Option(
        DEFAULTS.template,
        "--template",
        help=(
            'Fixed context around the prompt, e.g. "Once upon a time {prompt}"; the feature is read at the last '
            "prompt token."
        ),
    ),
    starts: str = typer.Option(
        DEFAULTS.starts,
        "--start",
        help=(
            "How the population starts: 'data': half the slots at the best windows of real text (see --corpus), "
            "the rest as 'beam'; 'beam': a beam search on the objective over tokens the model finds likely; "
            "'sampled': text the model writes; 'random' prompts (the paper's)."
        ),
    ),
    starts_old: str | None = typer.Option(None, "--starts", hidden=True, help="Deprecated: --start."),
    lm_guidance: float = typer.Option(
        DEFAULTS.lm_guidance,
        "--lm-guidance",
        help="β: rank candidate tokens by gradient + β·σ·log p(token | the prompt before it) (0 = the gradient alone).",
    ),
    lm_children: float = typer.Option(
        DEFAULTS.lm_children,
        "--lm-children",
        help=(
            "Fraction of children whose new token is drawn from the model's next-token distribution (top-p) "
            "instead of the gradient's list (0: the paper's)."
        ),
    ),
    pair_rate: float = typer.Option(
        DEFAULTS.pair_rate,
        "--pair-rate",
        help=(
            "Fraction of children that also set the token after the swapped one to the model's most likely "
            "continuation."
        ),
    ),
    time_budget: float | None = typer.Option(
        DEFAULTS.time_budget, "--time-budget", help="Stop cleanly after this many seconds."
    ),
    ban_strings: list[str] = typer.Option(
        [], "--ban", help="Reject prompts containing this text (case-insensitive); repeatable."
    ),
    ban_tokens: list[str] = typer.Option([], "--ban-token", help="Never propose this token (text or id); repeatable."),
    ascii_only: bool = typer.Option(DEFAULTS.ascii_only, "--ascii-only", help="Only printable-ASCII tokens."),
    check_retokenization: bool = typer.Option(
        DEFAULTS.check_retokenization,
        "--retokenize-check/--no-retokenize-check",
        help="Require prompts to re-tokenise to the same ids.",
    ),
    word_start: bool = typer.Option(
        DEFAULTS.word_start,
        "--word-start/--any-start",
        help="Prompts begin with a word, not inside one or with punctuation (no 'cken', 'ulous' or '---' first).",
    ),
    batch_size: int | None = typer.Option(
        DEFAULTS.batch_size, help="Prompts per forward pass (default: from free memory, halved on out-of-memory)."
    ),
    scorer: str = typer.Option(
        DEFAULTS.scorer,
        "--scorer",
        help=(
            "packed (the fast path) or plain (the paper's algorithm written plainly: check a surprising result "
            "against it)."
        ),
    ),
    ce_horizon: int | None = typer.Option(
        DEFAULTS.ce_horizon,
        "--ce-horizon",
        help=(
            "Approximate for speed: a child's cross-entropy terms more than this many tokens after its swap "
            "are its parent's (members' scores stay exact; off by default; docs/performance.md#cross-entropy-horizon)."
        ),
    ),
) -> None:
    """Never called: its parameters are the per-run EPO options that `epo_options` gives a command."""


def epo_options(exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator for a typer command: its `epo` parameter becomes the per-run EPO options (all but
    `exclude`), and the command receives `epo` as a dict of their parsed values (for `epo_config`)."""
    shared = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(per_run_options, eval_str=True).parameters.values()
        if p.name not in exclude
    ]

    def decorate(command: Callable) -> Callable:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
        ]
        at = [p.name for p in own].index("epo")

        @functools.wraps(command)
        def with_options(**values):
            epo = {p.name: values.pop(p.name) for p in shared}
            return command(**values, epo=epo)

        # inspect.signature (and so typer) reads __signature__, which typeshed does not declare on functions
        with_options.__signature__ = inspect.Signature(own[:at] + shared + own[at + 1 :])  # type: ignore[attr-defined]
        return with_options

    return decorate


def epo_config(epo: dict) -> EPOConfig:
    """The EPOConfig of the parsed options, `epo` as a command decorated with `epo_options` receives it."""
    epo = dict(epo)
    old = epo.pop("starts_old", None)
    if old is not None:  # the old spelling of --start
        console.print("note: --starts is deprecated: use --start", soft_wrap=True, markup=False)
        epo["starts"] = old
    values = dict(
        epo,
        fluency=tuple(fluency_arg(f) for f in epo["fluency"]),
        ban_tokens=tuple(token_arg(t) for t in epo["ban_tokens"]),
        penalties=tuple(epo["penalties"]) or None,
    )
    if values["iters"] is None:
        values["iters"] = DEFAULTS.iters
    gcg = values.pop("gcg")
    if gcg is None:
        return EPOConfig(**values)
    if values["penalties"] is not None:
        raise ConfigError("--gcg PENALTY is the one fixed penalty: give --gcg or --penalty, not both")
    if not math.isfinite(gcg) or gcg < 0:
        raise ConfigError(f"--gcg takes the fixed penalty λ, a number >= 0 (got {gcg})")
    for name in ("population", "penalties", "restart_every"):  # EPOConfig.gcg sets these
        del values[name]
    return EPOConfig.gcg(gcg, **values)


def fluency_arg(text: str) -> tuple[str, float]:
    """SPEC[:WEIGHT] -> (spec, weight)."""
    spec, sep, weight = text.rpartition(":")
    try:
        return (spec, float(weight)) if sep and spec else (text, 1.0)
    except ValueError:
        return text, 1.0
