"""Evolutionary Prompt Optimization (Thompson, Straznickas & Sklar 2024, arXiv 2402.01702).

A population of M prompts; slot i has its own fluency penalty λ_i (log-spaced from λ_min to λ_max)
and maximises

    L_λ(t) = f(t) − λ · CE(t)        CE = mean next-token cross-entropy of the prompt itself.

Each iteration:
  1. gradients  — for every member, ∇ of L_λi w.r.t. the one-hot tokens; top-k tokens per position;
  2. children   — every member makes r children, each one token swapped for one of its top-k
                  (by default half take instead a token drawn from the model itself: proposals.py);
  3. scoring    — f and CE of every child (failing a constraint ⇒ f = −∞);
  4. selection  — every slot keeps the best of parents ∪ children under its own L_λi (with replacement);
  5. restart    — every T_restart iterations, draw λ_r ~ U[0.667, 6], fill every slot with the best
                  prompt under L_λr.
The population starts from a beam search on the objective by default (random prompts in the paper,
`EPOConfig.paper`). GCG is the special case M = 1 with one fixed λ (`EPOConfig.gcg`). Nothing here
touches files or prints: the run directory and the CLI listen through the per-iteration callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..choices import StopReason
from ..scoring import Scorer
from .config import EPOConfig, as_config
from .edits import edit_children, swap_children, unpad
from .history import History
from .memo import Memo
from .proposals import lm_swaps, pair_edits
from .selection import Selection
from .starts import beam_candidates, random_population, sampled_candidates
from .timing import Phases


@dataclass
class EPOState:
    """Everything needed to continue a run: the population after `iteration` and the random state."""

    iteration: int
    population: torch.Tensor  # [M, n] token ids
    f: torch.Tensor  # [M]
    ce: torch.Tensor  # [M]
    rng: torch.Tensor  # torch.Generator state
    stale: int = 0  # iterations since any slot last improved its own objective


@dataclass
class Step:
    """What the callback sees after each iteration."""

    iteration: int
    state: EPOState
    penalties: torch.Tensor
    history: History
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    restarted_with: float | None = None


class EPO:
    """One EPO run. `run()` iterates until `config.iters`, the time budget, Ctrl-C, or the callback says stop.

    Every random draw goes through one generator, in a fixed order, so that a run resumed from its state
    takes the same steps: the start's draws (starts.py), then per iteration the children's (edits.py),
    the LM swaps' and the pair edits' (proposals.py), and the restart's λ."""

    def __init__(
        self, scorer: Scorer, config: EPOConfig, history: History | None = None, state: EPOState | None = None
    ):
        self.scorer, self.config = scorer, as_config(config)
        self.vocab = scorer.vocab
        self.penalties = self.config.slot_penalties()
        self.history = history if history is not None else History()
        self.score = Memo(scorer, self.history)  # f and CE of prompts, each through the model once
        self.selection = Selection(self.config, self.vocab)
        self.generator = torch.Generator()
        self.stopped: StopReason = "done"
        started = time.perf_counter()
        if state is None:
            self.generator.manual_seed(self.config.seed)
            state = self._initial_state()
        else:
            self.generator.set_state(state.rng)
        self.state = state
        self.start_seconds = time.perf_counter() - started  # the initial population's cost: the time budget counts it

    # ---------------------------------------------------------------- the initial population
    def _initial_state(self) -> EPOState:
        c, gen = self.config, self.generator
        if c.starts == "sampled" and not c.init_prompt:
            return self._first_population(sampled_candidates(self.scorer, c, gen))
        if c.starts in ("beam", "data") and not c.init_prompt:  # "data": the windows are in init_ids, the rest beam
            select = lambda ids, f, ce: self.selection(ids, f, ce, self.penalties)  # noqa: E731
            return self._first_population(beam_candidates(self.scorer, c, gen, self.score, select))
        population = random_population(self.scorer, c, gen)
        f, ce = self.score(population)
        self.history.add(0, torch.arange(c.population), population, f, ce, torch.ones(c.population, dtype=torch.bool))
        return EPOState(0, population, f, ce, gen.get_state())

    def _first_population(self, candidates: torch.Tensor) -> EPOState:
        """Each slot starts at the candidate best under its own λ, except slots given a starting prompt in
        `init_ids`, which keep it. Every candidate is recorded at iteration 0 (kept: those a slot holds)."""
        c, M = self.config, self.config.population
        given = [i for i, ids in enumerate(c.init_ids) if ids]
        candidates = torch.cat(
            [torch.tensor([c.init_ids[i] for i in given], dtype=torch.long).reshape(-1, c.length), candidates]
        )
        f, ce = self.score(candidates)
        best = self.selection(candidates, f, ce, self.penalties).argmax(1)
        best[given] = torch.arange(len(given))
        kept = torch.zeros(len(candidates), dtype=torch.bool)
        kept[best] = True
        slot = torch.arange(len(candidates)) % M
        slot[best] = torch.arange(M)
        self.history.add(0, slot, candidates, f, ce, kept)
        return EPOState(0, candidates[best], f[best], ce[best], self.generator.get_state())

    # ---------------------------------------------------------------- one iteration
    def k_at(self, iteration: int) -> int:
        """Candidate tokens per position at an iteration: top_k, or the linear schedule from top_k_start."""
        c = self.config
        if c.top_k_start is None or c.iters <= 1:
            return c.top_k
        return round(c.top_k_start + (c.top_k - c.top_k_start) * min(iteration / (c.iters - 1), 1.0))

    def step(self) -> Step:
        c, s, gen, phases = self.config, self.state, self.generator, Phases()
        started = time.perf_counter()
        with phases("gradients"):  # 1. top-k loss-decreasing tokens per member and position, under its own λ
            top = self.scorer.top_k(unpad(s.population), self.penalties, c.top_k, c.lm_guidance)  # M × [n, k]
        with phases("children"):  # 2. r per member, one token swapped (or inserted, deleted: edits.py)
            k = self.k_at(s.iteration)
            if c.variable_length:
                rates = (c.insert_rate, c.delete_rate, *c.length_bounds())
                children = edit_children(s.population, top, c.children, k, gen, *rates)
            else:
                children = swap_children(s.population, top, c.children, k, gen)
            if c.lm_children:  # some swaps take their token from the model's next-token distribution instead
                children = lm_swaps(self.scorer, s.population, children, c.lm_children, gen)
            if c.pair_rate:  # some swaps also set the next token to the model's continuation of the new one
                children = pair_edits(self.scorer, s.population, children, c.pair_rate, gen)
        with phases("scoring"):  # 3. f and CE of every child, over its parent's prefix (failures: f = −∞)
            f_child, ce_child = self.score(children.ids, s.population, children.parent, children.pos)
        with phases("selection"):  # 4. each slot: the best of parents ∪ children under its own λ
            new = self.selection.survivors(s.population, s.f, s.ce, children.ids, f_child, ce_child, self.penalties)
            if self.scorer.approximates:  # a cross-entropy horizon: members' scores are the model's own
                new.f, new.ce = self.score.exact(new.population)
                self.score.exact(children.ids[self.score.contenders(f_child, ce_child, c.population)])
                f_child, ce_child = self.score.recorded(children.ids)  # approximate CEs: NaN in the history
        with phases("bookkeeping"):  # 5. restart: every T_restart iterations, one λ_r fills every slot
            iteration, stale = s.iteration + 1, 0 if new.improved else s.stale + 1
            restarted = self._restart_penalty(iteration, stale)
            population, f, ce = new.population, new.f, new.ce
            if restarted is not None:
                j = int(self.selection(population, f, ce, torch.tensor([restarted]))[0].argmax())
                population, f, ce, stale = population[j].repeat(len(f), 1), f[j].repeat(len(f)), ce[j].repeat(len(f)), 0
            self.history.add(iteration, children.parent, children.ids, f_child, ce_child, new.kept)
            self.state = EPOState(iteration, population, f, ce, gen.get_state(), stale)
        seconds = time.perf_counter() - started
        return Step(iteration, self.state, self.penalties, self.history, seconds, dict(phases), restarted)

    def _restart_penalty(self, iteration: int, stale: int) -> float | None:
        """λ_r ~ U[restart_penalty] when a restart is due (every T_restart iterations; adaptive: once no slot
        has improved for T_restart iterations; never at the last), else None (and no draw)."""
        c = self.config
        due = stale >= c.restart_every if c.adaptive_restart else iteration % max(c.restart_every, 1) == 0
        if not (c.restart_every and due and iteration < c.iters):
            return None
        lo, hi = c.restart_penalty
        return lo + (hi - lo) * float(torch.rand(1, generator=self.generator))

    def run(self, callback: Callable[[Step], bool | None] | None = None) -> StopReason:
        """Iterate; return why it stopped: "done", "time", "interrupted" or "callback". The time budget
        counts what making the initial population cost (a beam start's search), once."""
        start = time.perf_counter() - self.start_seconds
        self.start_seconds = 0.0
        try:
            while self.state.iteration < self.config.iters:
                if self.config.time_budget is not None and time.perf_counter() - start >= self.config.time_budget:
                    self.stopped = "time"
                    break
                step = self.step()
                if callback is not None and callback(step) is False:
                    self.stopped = "callback"
                    break
        except KeyboardInterrupt:
            self.stopped = "interrupted"  # the unfinished iteration is dropped; state is the last complete one
        return self.stopped
