"""Several targets' searches on one model, their passes run together (docs/design.md#lockstep).

Each search (an `EPO`, in its own thread) gets a `Member`: a packed scorer of its own target whose
model passes it does not run itself. A pass a member asks for waits until every member still searching
has asked for one; then each kind of pass runs once, through one shared `PackedScorer`, over all their
prompts concatenated in the order the members joined (one gradient pass for every target's new
prompts, one scoring pass for every target's children), and each member gets its own rows back. The
shared scorer reads each row with its own member's target (`Rowwise`). The passes are cut into batches
of the batch size as before, so memory per pass does not grow; what is saved is the fixed cost of
small passes (weights streamed once for several targets' prompts, a nearly empty last batch) and, on a
GPU, its idle width.

A member's results are those of its own scorer up to the floating-point order of a larger batch (the
rows are independent; a kernel may sum them in another order): tests/test_lockstep.py checks that a
lockstep sweep takes the same steps as one run per target.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..fast.capabilities import FastPath
from ..lm.target_base import Target
from .objective import Objective
from .packed import PackedScorer


class Rowwise(Target):
    """The shared scorer's target: row r is read by parts[owner[r]] (owner: over the scorer call's prompts,
    set before each call; a batch holds the rows `TargetCache.rows` says). Its hooks, position and use
    of logits are those of the parts in the current call."""

    def __init__(self) -> None:
        self.parts: list[Target] = []
        self.owner = torch.zeros(0, dtype=torch.long)
        self.now: list[Target] = []  # the parts read in the current call

    def read_by(self, members: list[int], sizes: list[int]) -> None:
        """The next call's rows: sizes[i] of them for each of `members`, in order."""
        self.owner = torch.repeat_interleave(torch.tensor(members), torch.tensor(sizes))
        self.now = [self.parts[m] for m in members]

    @property
    def hooks(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys(h for p in self.now for h in p.hooks))

    @property
    def reads_logits(self) -> bool:  # type: ignore[override]
        return any(p.reads_logits for p in self.now)

    @property
    def position(self) -> int | slice | None:  # type: ignore[override]
        positions = {repr(p.position) for p in self.now}  # one per pass (`Lockstep.run` groups them so)
        return self.now[0].position if len(positions) == 1 else None

    def value(self, cache) -> torch.Tensor:
        owner = self.owner if cache.rows is None else self.owner[cache.rows.cpu()]
        order, values = [], []
        for k in owner.unique().tolist():
            where = (owner == k).nonzero()[:, 0]
            part = self.parts[k]
            device = next(iter(cache.values()), cache.hidden).device
            values.append(part.value(cache.take(where.to(device), part.spec)).float())
            order.append(where)
        return torch.cat(values)[torch.cat(order).argsort().to(values[0].device)]

    @property
    def spec(self) -> str:
        return "rowwise(" + ", ".join(p.spec for p in self.parts) + ")"


class Lockstep:
    """The meeting point of the members' passes. Members join from their own threads (`member`, through
    `make_scorer(..., lockstep=)`), and leave when their search ends (`leave`, from the same thread);
    `stop` makes every waiting and later pass raise KeyboardInterrupt (the sweep's Ctrl-C). `expected`:
    how many threads will search here at first (the sweep's K); no pass runs before each of them has
    joined or left, so that the first passes do not depend on which thread started first."""

    def __init__(self, expected: int = 0) -> None:
        self.cond = threading.Condition()
        self.target = Rowwise()
        self.shared: PackedScorer | None = None
        self.members: list[Member] = []
        self.threads: dict[int, int] = {}  # thread id -> the member searching in it
        self.asked: dict[int, tuple[str, tuple]] = {}  # member -> (kind of pass, arguments)
        self.answers: dict[int, object] = {}
        self.stopped = False
        self.arriving = expected  # threads still to join or leave before the first pass
        self.arrived: set[int] = set()
        self.passes = 0  # shared passes run, for benchmarks and tests
        self.asks = 0  # passes the members asked for

    def member(self, objective: Objective, batch_size: int) -> Member:
        """A scorer for `objective`'s target whose passes run here; the calling thread's member."""
        if objective.others:
            raise ConfigError("targets dreamed together cannot use other fluency models: dream them one by one")
        with self.cond:
            if self.shared is None:
                shared = copy.copy(objective)
                shared.target = self.target
                self.shared = PackedScorer(shared, batch_size)
            else:
                mine, theirs = objective, self.shared.objective
                if (
                    objective.model is not theirs.model
                    or not torch.equal(objective.vocab.allowed, theirs.vocab.allowed)
                    or not (torch.equal(mine.before, theirs.before) and torch.equal(mine.after, theirs.after))
                ):
                    raise ConfigError(
                        "targets dreamed together need one model, vocabulary and template: "
                        f"{objective.target.spec} differs from the others; dream it on its own"
                    )
            index = len(self.target.parts)
            self.target.parts.append(objective.target)
            self.arrive()
            self.threads[threading.get_ident()] = index
            self.members.append(Member(self, index, objective))
            return self.members[-1]

    def leave(self) -> None:
        """The calling thread's member has finished searching (or failed before joining): the others no
        longer wait for it. Leaving twice is leaving once."""
        with self.cond:
            self.arrive()
            self.threads.pop(threading.get_ident(), None)
            self.cond.notify_all()

    def arrive(self) -> None:
        """(Under the lock.) The calling thread is one of the `expected` ones, counted once."""
        if threading.get_ident() not in self.arrived:
            self.arrived.add(threading.get_ident())
            self.arriving -= 1

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def ask(self, member: int, kind: str, *args):
        """Run a pass of `kind` for `member`, together with the other members' next passes."""
        with self.cond:
            self.asked[member] = (kind, args)
            self.asks += 1
            while member not in self.answers:
                if self.stopped:
                    self.asked.pop(member, None)
                    raise KeyboardInterrupt
                if self.arriving <= 0 and set(self.threads.values()) <= set(self.asked):
                    self.run()
                else:
                    self.cond.wait()
            answer = self.answers.pop(member)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run(self) -> None:
        """Every member still searching has asked: run each kind of pass once over all their prompts."""
        assert self.shared is not None  # a member exists
        groups: dict[tuple, list[int]] = {}
        for member in sorted(self.asked):
            kind, args = self.asked[member]
            # a pass holds prompts of one length, and targets that take the same path through the scorer
            # (prefix reuse needs one position, attention patterns take other kernels, the blocks above the
            # deepest one read drop the last position): its rows then come out as they would alone
            path = self.members[member].path()
            groups.setdefault((kind, *SHAPE[kind](*args), *path), []).append(member)
        for (kind, *_), members in groups.items():
            try:
                answers = PASSES[kind](self.shared, self.target, [(m, self.asked[m][1]) for m in members])
            except Exception as e:  # every member of the pass fails as its own pass would have
                answers = [e] * len(members)
            self.answers.update(zip(members, answers))
            self.passes += 1
        self.asked.clear()
        self.cond.notify_all()


def _owner(target: Rowwise, asked: list[tuple[int, tuple]], sizes: list[int]) -> None:
    target.read_by([m for m, _ in asked], sizes)


def _score(shared: PackedScorer, target: Rowwise, asked) -> list:
    ids = [args[0] for _, args in asked]
    sizes = [len(t) for t in ids]
    _owner(target, asked, sizes)
    f, ce = shared.score(torch.cat(ids))
    return list(zip(f.split(sizes), ce.split(sizes)))


def _children(shared: PackedScorer, target: Rowwise, asked) -> list:
    parents, children, parent, pos, offset = [], [], [], [], 0
    for _, (p, c, j, q) in asked:
        parents.append(p)
        children.append(c)
        parent.append(j + offset)
        pos.append(q)
        offset += len(p)
    sizes = [len(c) for c in children]
    _owner(target, asked, sizes)
    f, ce = shared.score_children(torch.cat(parents), torch.cat(children), torch.cat(parent), torch.cat(pos))
    return list(zip(f.split(sizes), ce.split(sizes)))


def _gradients(shared: PackedScorer, target: Rowwise, asked) -> list:
    ids = [args[0] for _, args in asked]
    sizes = [len(t) for t in ids]
    _owner(target, asked, sizes)
    df, dce, lps = shared.gradient_pass(torch.cat(ids), asked[0][1][1])
    ends = torch.tensor(sizes).cumsum(0).tolist()
    return [(a, b, lps[e - s : e]) for a, b, e, s in zip(df.split(sizes), dce.split(sizes), ends, sizes)]


def _after(shared: PackedScorer, target: Rowwise, asked) -> list:
    prompts = [args[0] for _, args in asked]
    return list(shared.logprobs_after(torch.cat(prompts)).split([len(p) for p in prompts]))


def _continuations(shared: PackedScorer, target: Rowwise, asked) -> list:
    prompts, positions = [a[0] for _, a in asked], [a[1] for _, a in asked]
    return list(shared.continuations(torch.cat(prompts), torch.cat(positions)).split([len(p) for p in prompts]))


# a pass of each kind: how its members' arguments group (passes over one prompt length), and how it runs
SHAPE: dict[str, Callable[..., tuple]] = {
    "score": lambda ids: (ids.shape[1],),
    "children": lambda parents, children, parent, pos: (children.shape[1],),
    "gradients": lambda ids, keep: (ids.shape[1], keep),
    "after": lambda prompts: (prompts.shape[1],),
    "continuations": lambda prompts, positions: (prompts.shape[1],),
}
PASSES: dict[str, Callable[[PackedScorer, Rowwise, list], list]] = {
    "score": _score,
    "children": _children,
    "gradients": _gradients,
    "after": _after,
    "continuations": _continuations,
}


class Member(PackedScorer):
    """A packed scorer of one target (its gradients and candidates are its own, `PackedScorer.top_k`)
    whose model passes run in the lockstep's shared scorer, with the other members' passes."""

    def __init__(self, lockstep: Lockstep, index: int, objective: Objective):
        # no PackedScorer.__init__: the shared scorer holds what its passes need (the projections)
        self.lockstep, self.index, self.objective = lockstep, index, objective
        self.model, self.target, self.vocab = objective.model, objective.target, objective.vocab
        self.fast = FastPath.of(self.model)
        self.gradients = {}
        self.candidates = {}
        self.keeps_logprobs = False
        self.horizon = None  # exact: the cross-entropy horizon is refused with lockstep (`make_scorer`)

    def path(self) -> tuple:
        """What decides how the scorer runs this target's passes (passes of one path run together)."""
        patterns = any(h.endswith("hook_pattern") for h in self.target.hooks)
        return repr(self.target.position), patterns, self.deepest_block_read()

    @property
    def batch_size(self) -> int:
        assert self.lockstep.shared is not None
        return self.lockstep.shared.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:  # the out-of-memory back-off lowers the shared passes' size
        assert self.lockstep.shared is not None
        self.lockstep.shared.batch_size = min(value, self.lockstep.shared.batch_size)

    def score(self, ids):
        return self.lockstep.ask(self.index, "score", ids)

    def score_children(self, parents, children, parent, pos):
        return self.lockstep.ask(self.index, "children", parents, children, parent, pos)

    def gradient_pass(self, ids, keep=False):
        return self.lockstep.ask(self.index, "gradients", ids, keep)

    def logprobs_after(self, prompts):
        return self.lockstep.ask(self.index, "after", prompts)

    def continuations(self, prompts, positions):
        return self.lockstep.ask(self.index, "continuations", prompts, positions)
