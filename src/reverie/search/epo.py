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
import torch.nn.functional as F

from ..errors import ConfigError
from ..scoring import Scorer
from .config import EPOConfig, as_config
from .edits import PAD, edit_children, lengths, trim, unpad
from .history import History
from .proposals import continuations, model_text, next_logprobs, sample_tokens

SAMPLES_PER_SLOT = 8  # sampled starts: prompts the model writes per population slot
BEAMS_PER_SLOT = 4  # beam starts: prefixes each slot keeps at every length...
TOKENS_PER_BEAM = 8  # ...and tokens drawn from the model to extend each one
JUNK_ALLOWANCE = 0.25  # the junk share the surcharge forgives: the 75th percentile of random 12-token windows of
#   the bundled corpus (docs/performance.md#readable-by-default)


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


def _repeats(ids: torch.Tensor) -> torch.Tensor:
    """[rows, n] bool: token j equals some token i < j of its prompt (padding never counts)."""
    real = ids != PAD
    same = (ids[:, :, None] == ids[:, None, :]) & real[:, :, None]
    return same.triu(1).any(1) & real


def objective(f: torch.Tensor, ce: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """L_λ for every (penalty, prompt) pair: [len(penalties), len(f)]. A prompt that failed a constraint
    (f = −∞; its cross-entropy was never computed) scores −∞ under every penalty."""
    return (f[None, :] - penalties[:, None] * ce[None, :]).masked_fill(f.isneginf()[None, :], -torch.inf)


class EPO:
    """One EPO run. `run()` iterates until `config.iters`, the time budget, Ctrl-C, or the callback says stop."""

    def __init__(
        self, scorer: Scorer, config: EPOConfig, history: History | None = None, state: EPOState | None = None
    ):
        self.scorer, self.config = scorer, as_config(config)
        self.vocab = scorer.vocab
        self.penalties = config.slot_penalties()
        self.history = history if history is not None else History()
        self.memo: dict[tuple[int, ...], tuple[float, float]] = {k: (f, ce) for k, f, ce in self.history.items()}
        self.generator = torch.Generator()
        self.stopped = "done"
        started = time.perf_counter()
        if state is None:
            self.generator.manual_seed(config.seed)
            state = self._initial_state()
        else:
            self.generator.set_state(state.rng)
        self.state = state
        self.start_seconds = time.perf_counter() - started  # the initial population's cost: the time budget counts it

    # ---------------------------------------------------------------- the initial population
    def _initial_state(self) -> EPOState:
        c = self.config
        if c.init_prompt:
            ids = self.vocab.encode(c.init_prompt)
            if len(ids) < 2:
                raise ConfigError(f"the initial prompt {c.init_prompt!r} is {len(ids)} token(s); give at least 2")
            population = torch.tensor(ids)[None].repeat(c.population, 1)
        elif c.starts == "sampled":
            return self._sampled_state()
        elif c.starts in ("beam", "data"):  # "data": the windows are in init_ids (runs/dream.py), the rest beam
            return self._beam_state()
        else:
            population = self.vocab.random_prompts(c.population, c.length, self.generator)
            for i, start in enumerate(c.init_ids):
                if start:
                    population[i] = torch.tensor(start)
        f, ce = self._score(population)
        self.history.add(0, torch.arange(c.population), population, f, ce, torch.ones(c.population, dtype=torch.bool))
        return EPOState(0, population, f, ce, self.generator.get_state())

    def _sampled_state(self) -> EPOState:
        """Starts from text the model writes (`proposals.model_text`): SAMPLES_PER_SLOT prompts per slot."""
        samples = model_text(
            self.scorer.model,
            self.vocab,
            SAMPLES_PER_SLOT * self.config.population,
            self.config.length,
            self.generator,
            context=self._template_before,
        )
        return self._first_population(samples)

    def _beam_state(self) -> EPOState:
        """Starts from a beam search on the objective, token by token from an empty prompt (as BEAST and
        ADAPT do): every prefix kept is extended by TOKENS_PER_BEAM tokens drawn from the model's top-p
        next-token distribution, the extensions are scored, and each slot keeps the BEAMS_PER_SLOT best
        under its own λ; the full-length extensions are the candidates."""
        c, M = self.config, self.config.population
        beams = torch.zeros(1, 0, dtype=torch.long)
        for length in range(1, c.length + 1):
            logprobs = next_logprobs(self.scorer.model, self.vocab, beams, self._template_before)
            row = torch.arange(len(beams)).repeat_interleave(TOKENS_PER_BEAM * (M if length == 1 else 1))
            new = sample_tokens(logprobs, self.vocab.allowed, self.generator, rows=row)
            candidates = torch.unique(torch.cat([beams[row], new[:, None]], 1), dim=0)
            if length in (1, c.length):  # one token has no cross-entropy of its own yet; the last are the candidates
                beams = candidates
                continue
            f, ce = self._score(candidates)
            score = self._selection(candidates, f, ce, self.penalties)  # [M, candidates]
            top = score.topk(min(BEAMS_PER_SLOT, len(candidates)), 1)
            keep = top.indices[top.values > -torch.inf].unique()
            beams = candidates[keep] if len(keep) else candidates
        return self._first_population(beams)

    def _first_population(self, candidates: torch.Tensor) -> EPOState:
        """Each slot starts at the candidate best under its own λ, except slots given a starting prompt in
        `init_ids`, which keep it. Every candidate is recorded at iteration 0 (kept: those a slot holds)."""
        c, M = self.config, self.config.population
        given = [i for i, ids in enumerate(c.init_ids) if ids]
        candidates = torch.cat(
            [torch.tensor([c.init_ids[i] for i in given], dtype=torch.long).reshape(-1, c.length), candidates]
        )
        f, ce = self._score(candidates)
        best = self._selection(candidates, f, ce, self.penalties).argmax(1)
        best[given] = torch.arange(len(given))
        kept = torch.zeros(len(candidates), dtype=torch.bool)
        kept[best] = True
        slot = torch.arange(len(candidates)) % M
        slot[best] = torch.arange(M)
        self.history.add(0, slot, candidates, f, ce, kept)
        return EPOState(0, candidates[best], f[best], ce[best], self.generator.get_state())

    # ---------------------------------------------------------------- scoring with a memo
    def _score(
        self,
        ids: torch.Tensor,
        parents: torch.Tensor | None = None,
        parent: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f and CE of each row; prompts not seen before go through the model once, except those failing
        a constraint (f = −∞, never selected; their CE is not computed: NaN). Children (given their
        parents, parent index and mutated position) run only from the mutated position on."""
        keys = [tuple(t for t in r if t != PAD) for r in ids.tolist()]
        first = {}
        for j, k in enumerate(keys):
            if k not in self.memo and k not in first:
                first[k] = j
        if first:
            rows = torch.tensor(list(first.values()))
            f, ce = torch.full((len(rows),), -torch.inf), torch.full((len(rows),), torch.nan)
            ok = self.vocab.ok(ids[rows])
            if ok.any():
                rows_ok = rows[ok]
                f[ok], ce[ok] = self._run(
                    ids[rows_ok],
                    parents,
                    None if parent is None else parent[rows_ok],
                    None if pos is None else pos[rows_ok],
                )
            self.memo.update(zip(first, zip(f.tolist(), ce.tolist())))
        fs, ces = zip(*(self.memo[k] for k in keys))
        return torch.tensor(fs), torch.tensor(ces)

    def _run(self, ids: torch.Tensor, parents, parent, pos) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's f and CE of new prompts: children over their parents' prefix where they have them,
        prompts of several lengths one length at a time."""
        if (ids == PAD).any():
            n = lengths(ids)
            f, ce = torch.empty(len(ids)), torch.empty(len(ids))
            for length in n.unique().tolist():
                same = (n == length).nonzero()[:, 0]
                f[same], ce[same] = self.scorer.score(ids[same, :length])
            return f, ce
        if parents is None or (parents == PAD).any():
            return self.scorer.score(ids)
        return self.scorer.score_children(parents, ids, parent, pos)

    def _lm_swaps(self, children: torch.Tensor, parent: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """A fraction `lm_children` of the swap children take as their new token one drawn from the
        model's next-token distribution at the mutated position (top-p, `proposals.sample_tokens`) rather
        than from the gradient's list; positions without context (the first, outside a template) keep
        the gradient's token."""
        s, gen = self.state, self.generator
        swaps = lengths(children) == lengths(s.population)[parent]  # not an insertion or deletion
        chosen = ((torch.rand(len(children), generator=gen) < self.config.lm_children) & swaps).nonzero()[:, 0]
        logprobs = self.scorer.next_token_logprobs(unpad(s.population))
        chosen = chosen[
            torch.tensor(
                [not logprobs[p][q, 0].isnan() for p, q in zip(parent[chosen].tolist(), pos[chosen].tolist())],
                dtype=torch.bool,
            )
        ]
        where, row = torch.unique(torch.stack([parent[chosen], pos[chosen]], 1), dim=0, return_inverse=True)
        distributions = torch.stack([logprobs[p][q] for p, q in where.tolist()]) if len(where) else None
        children = children.clone()
        if distributions is not None:  # one nucleus per (parent, position), one draw per child
            children[chosen, pos[chosen]] = sample_tokens(distributions, self.vocab.allowed, gen, rows=row)
        return children

    def _pairs(self, children: torch.Tensor, parent: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """A fraction `pair_rate` of the swap children (not at the last position) also replace the token
        after the swapped one with the model's most likely continuation (`proposals.continuations`)."""
        s, gen = self.state, self.generator
        n = lengths(children)
        swaps = n == lengths(s.population)[parent]
        chosen = ((torch.rand(len(children), generator=gen) < self.config.pair_rate) & swaps & (pos < n - 1)).nonzero()[
            :, 0
        ]
        children = children.clone()
        for length in n[chosen].unique().tolist():  # prompts of one length at a time
            same = chosen[n[chosen] == length]
            children[same, pos[same] + 1] = continuations(
                self.scorer.model, self.vocab, children[same, :length], pos[same], self._template_before
            )
        return children

    @property
    def _template_before(self) -> torch.Tensor | None:
        """The token ids of the template's text before the prompt (what the model writes after)."""
        objective = getattr(self.scorer, "objective", None)
        return None if objective is None else objective.before

    def _selection(self, ids: torch.Tensor, f: torch.Tensor, ce: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """What selection maximises: L_λ with f less the configured penalties and CE plus the junk surcharge
        (each 0 unless configured), [len(penalties), len(ids)]."""
        return objective(f - self._penalty(ids), ce + self._junk(ids), penalties)

    def _penalty(self, ids: torch.Tensor) -> torch.Tensor:
        """What selection subtracts from f besides λ·CE: ρ · the fraction of tokens that repeat an earlier
        token, plus the avoid penalty · the fraction of tokens from earlier dreams (0 unless configured)."""
        c, out = self.config, torch.zeros(len(ids))
        real, n = ids != PAD, lengths(ids)
        if c.repetition_penalty:
            out += c.repetition_penalty * (_repeats(ids) & real).sum(1) / n
        if c.avoid_penalty and c.avoid_ids:
            out += c.avoid_penalty * torch.isin(ids, torch.tensor(c.avoid_ids)).sum(1) / n
        return out

    def _junk(self, ids: torch.Tensor) -> torch.Tensor:
        """What selection adds to CE: γ (junk_penalty, nats) · how far the prompt's junk share — tokens with no
        letter (digits, punctuation, symbols) or repeating an earlier token — exceeds JUNK_ALLOWANCE, the
        share of a typical stretch of real text. Predictable junk then earns no fluency credit; the CE that
        is recorded and reported stays the model's own."""
        gamma, letters = self.config.junk_penalty, self.vocab.letters
        if not gamma or letters is None:
            return torch.zeros(len(ids))
        real = ids != PAD
        junk = (~letters[ids.clamp(0, len(letters) - 1)] | _repeats(ids)) & real
        return gamma * (junk.sum(1) / lengths(ids) - JUNK_ALLOWANCE).clamp(min=0)

    def k_at(self, iteration: int) -> int:
        """Candidate tokens per position at an iteration: top_k, or the linear schedule from top_k_start."""
        c = self.config
        if c.top_k_start is None or c.iters <= 1:
            return c.top_k
        return round(c.top_k_start + (c.top_k - c.top_k_start) * min(iteration / (c.iters - 1), 1.0))

    # ---------------------------------------------------------------- one iteration
    def step(self) -> Step:
        c, s, gen = self.config, self.state, self.generator
        M, n = s.population.shape
        t0 = time.perf_counter()
        phases = {}

        # 1. gradients: top-k loss-decreasing tokens per member and position, under the slot's own λ
        top = self.scorer.top_k(unpad(s.population), self.penalties, c.top_k, c.lm_guidance)  # M × [n, k]
        t1 = time.perf_counter()
        phases["gradients"] = t1 - t0

        # 2. children: r per member, one position swapped for a token drawn from that position's top-k
        #    (or, with insert/delete rates, a token inserted or deleted: see edits.py)
        if c.variable_length:
            children, parent, pos = edit_children(
                s.population,
                top,
                c.children,
                self.k_at(s.iteration),
                gen,
                c.insert_rate,
                c.delete_rate,
                *c.length_bounds(),
            )
        else:
            tops = torch.stack(top)  # [M, n, k]
            pos = torch.randint(n, (M, c.children), generator=gen)
            pick = torch.randint(min(tops.shape[-1], self.k_at(s.iteration)), (M, c.children), generator=gen)
            parent = torch.arange(M)[:, None].expand(M, c.children)
            children = s.population[parent].clone()  # [M, r, n]
            children.scatter_(2, pos[..., None], tops[parent, pos, pick][..., None])
            children, parent, pos = children.reshape(M * c.children, n), parent.reshape(-1), pos.reshape(-1)
        if c.lm_children:  # some swaps take their token from the model's next-token distribution instead
            children = self._lm_swaps(children, parent, pos)
        if c.pair_rate:  # some swaps also set the next token to the model's continuation of the new one
            children = self._pairs(children, parent, pos)
        t2 = time.perf_counter()
        phases["children"] = t2 - t1

        # 3. scoring: f and CE of every child (memoised, run from the mutated position on over the parent's
        #    cached prefix; constraint failures get f = −∞)
        f_child, ce_child = self._score(children, s.population, parent, pos)
        t3 = time.perf_counter()
        phases["scoring"] = t3 - t2

        # 4. selection: each slot takes the best of parents ∪ children under its own λ, with replacement
        width = max(s.population.shape[1], children.shape[1])
        pool = torch.cat(
            [
                F.pad(s.population, (0, width - s.population.shape[1]), value=PAD),
                F.pad(children, (0, width - children.shape[1]), value=PAD),
            ]
        )
        f_pool, ce_pool = torch.cat([s.f, f_child]), torch.cat([s.ce, ce_child])
        score = self._selection(pool, f_pool, ce_pool, self.penalties)  # [M, M + M·r]
        best = score.argmax(1)
        stuck = torch.isinf(score.max(1).values)  # nothing valid: keep the parent
        best[stuck] = torch.arange(M)[stuck]
        kept = torch.zeros(len(children), dtype=torch.bool)
        kept[best[best >= M] - M] = True
        population, f, ce = trim(pool[best]), f_pool[best], ce_pool[best]
        own = torch.arange(M)
        improved = bool((score[own, best] > score[own, own] + 1e-6).any())
        stale = 0 if improved else s.stale + 1
        t4 = time.perf_counter()
        phases["selection"] = t4 - t3

        # 5. restart: every T_restart iterations (adaptive: once no slot has improved for T_restart
        #    iterations), one random λ_r picks the prompt that fills every slot
        iteration = s.iteration + 1
        restarted = None
        due = stale >= c.restart_every if c.adaptive_restart else iteration % max(c.restart_every, 1) == 0
        if c.restart_every and due and iteration < c.iters:
            lo, hi = c.restart_penalty
            restarted = lo + (hi - lo) * float(torch.rand(1, generator=gen))
            j = int(self._selection(population, f, ce, torch.tensor([restarted]))[0].argmax())
            population, f, ce = population[j].repeat(M, 1), f[j].repeat(M), ce[j].repeat(M)
            stale = 0

        self.history.add(iteration, parent, children, f_child, ce_child, kept)
        self.state = EPOState(iteration, population, f, ce, gen.get_state(), stale)
        phases["bookkeeping"] = time.perf_counter() - t4
        return Step(iteration, self.state, self.penalties, self.history, time.perf_counter() - t0, phases, restarted)

    def run(self, callback: Callable[[Step], bool | None] | None = None) -> str:
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
