"""The fast path: the same scores and gradients as `plain.PlainScorer`, with less work
(docs/performance.md).

Gradients: the gradient with respect to the one-hot encoding, restricted to the allowed tokens, is
computed without a one-hot matmul over the whole vocabulary: the gradient with respect to the input
embeddings, projected onto the allowed tokens' embeddings, plus the direct term of the cross-entropy
(token i is the label of position i-1: d CE / d onehot[i, v] gets -log p(v | t_<i) / (n-1)). It comes
in two parts, d f and d CE, taken once per distinct prompt, so that one pass serves every penalty λ
(the gradient of f − λ·CE is their combination) and survivors keep theirs.

Scoring never materialises fp32 log-probabilities over the vocabulary: it unembeds only the positions
that predict a prompt token, a tile of the vocabulary at a time (`fast.unembed.head_logprobs`).
Children run only from their mutated position on, packed onto their parents' keys and values
(`fast.attention`), where the model takes it (`fast.capabilities.FastPath`).
"""

from __future__ import annotations

import contextlib

import torch

from ..choices import ScorerName
from ..fast.attention import Packed, Rows
from ..fast.capabilities import FastPath
from ..fast.unembed import head_logprobs
from ..lm.model import Model
from .batching import even_split
from .continuation import Continuation
from .objective import Objective, by_length, embed_scale, next_token_rows, top_k_tokens


class PackedScorer(Continuation):
    name: ScorerName = "packed"

    def __init__(self, objective: Objective, batch_size: int, horizon: int | None = None):
        self.objective, self.batch_size = objective, batch_size
        self.horizon = horizon  # children's cross-entropy terms beyond it come from the parent (`approximates`)
        self.model, self.target, self.vocab = objective.model, objective.target, objective.vocab
        self.fast = FastPath.of(self.model)
        # per model whose cross-entropy counts: the allowed tokens' embeddings [A, d] and the embedding scale
        self.projections = {
            m: projection(m, self.vocab.allowed) for m in [self.model, *(m for m, _ in objective.others)]
        }
        # prompt -> (df, dCE, its next-token log-probs or None)
        self.gradients: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self.candidates: dict[tuple, torch.Tensor] = {}  # (prompt, λ, k, β) -> top-k
        self.keeps_logprobs = False  # whether gradient passes keep their next-token log-probs (`passes`)

    # ---------------------------------------------------------------- scoring
    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, CE) of each prompt [B, n], on the CPU, in passes of at most `batch_size` prompts."""
        o = self.objective
        fs, ces, done = [], [], 0
        with torch.inference_mode():
            for chunk in even_split(ids, self.batch_size):
                rows = torch.arange(done, done + len(chunk))
                f, ce, _ = self.forward(chunk.to(self.model.device), rows=rows)
                done += len(chunk)
                if o.others:
                    ce = o.self_weight * ce + sum(
                        w * self.cross_entropy(m, chunk)[0].to(ce.device) for m, w in o.others
                    )
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    @property
    def reuses_prefix(self) -> bool:
        """Prefix reuse needs the target read at the last prompt position, no other fluency model, and a
        model whose attention runs packed (`FastPath.packs`)."""
        return self.target.position == -1 and not self.objective.others and self.fast.packs

    @property
    def approximates(self) -> bool:
        """Whether `score_children`'s cross-entropies are approximate: with a horizon h, where the blocks
        above the target's run without the last position (`deepest_block_read`), a child's terms for its
        tokens after its mutated position p + h are its parent's (the same tokens, read after the
        parent's prefix); those blocks then run only on each child's positions p … p + h − 1. Its f is
        exact (docs/design.md#cross-entropy-horizon)."""
        return self.horizon is not None and self.reuses_prefix and self.deepest_block_read() is not None

    def score_children(
        self, parents: torch.Tensor, children: torch.Tensor, parent: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `score(children)`, where child j equals parents[parent[j]] before position pos[j].

        The children run only from their mutated position on (the template's text before the prompt
        is part of the shared prefix), packed into one row (`attention.Packed`) on top of their
        parents' keys and values (the parents lead the first row), and take their prefix's
        cross-entropy terms from their parents' logits. Same results as `score` within dtype tolerance
        (the cross-entropy approximate where `approximates`)."""
        if not self.reuses_prefix:
            return self.score(children)
        horizon = self.horizon if self.approximates else None
        o = self.objective
        parents, parent = torch.unique(
            parents[parent], dim=0, return_inverse=True
        )  # distinct parents with children lead
        device, (m, n), L, first = self.model.device, parents.shape, len(o.before), o.first
        parents, children, parent, pos = parents.to(device), children.to(device), parent.to(device), pos.to(device)
        N = L + n  # template text before + prompt tokens (nothing reads the text after); a child runs from L + pos on
        full_parents, full_children = o.in_template(parents)[:, :N], o.in_template(children)[:, :N]
        f, ce = torch.empty(len(children)), torch.empty(len(children))
        patterns = any(h.endswith("hook_pattern") for h in self.target.hooks)
        block = self.deepest_block_read()
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> the parents' keys and values
        own = torch.zeros(len(children), device=device)  # own: sum of each child's own log-probs
        passes = -(-(m * N + int((N - L - pos).sum())) // (self.batch_size * N))  # batch_size × N tokens per pass
        with torch.inference_mode():
            for i, chunk in enumerate(torch.arange(len(children), device=device).tensor_split(passes)):
                packed = Packed(kv, parent[chunk], L + pos[chunk], N, lead=m if i == 0 else 0, weights=patterns)
                # capture first: reading attention patterns selects eager attention, which the layout then replaces
                with (
                    self.model.capture(list(self.target.hooks)) as hooks,
                    self.fast.run(packed, drop_above=block, horizon=horizon) as out,
                ):
                    assert isinstance(out, Packed)  # the layout of the blocks above `block` (or `packed`)
                    row = packed.gather(full_parents, full_children[chunk])
                    hidden = self.model.trunk(row, position_ids=packed.position[None])[0]  # the tokens of `out`
                if i == 0:  # the children's prefix terms, from the parents' positions that predict tokens first..n-1
                    h = hidden[: m * out.n].unflatten(0, (m, out.n))[:, L + first - 1 : L + n - 1].contiguous()
                    prefix = prefix_logprobs(self.model, h, parents, children, parent, pos, first, horizon)
                read = packed.at(L + n - 1)  # the target reads each child's last prompt token, as if unpacked
                hooks = {
                    name: t[0].transpose(0, 1)[read, :, None, L : L + n]
                    if name.endswith("hook_pattern")
                    else t[0, read, None]
                    for name, t in hooks.items()
                }
                final = hidden[read, None] if block is None else None  # final states: only a target reading logits
                f[chunk.cpu()] = o.read(hooks, final, self.model.head, chunk.cpu()).cpu()
                # the positions that predict one of a child's own prompt tokens (j = q - L + 1 > pos)
                q = out.position
                label = (q >= L + first - 1) & (q <= L + n - 2) & (out.entry >= out.lead)
                kid = chunk[out.entry[label] - out.lead]
                lp = head_logprobs(self.model, hidden[label], children[kid, q[label] - L + 1])
                own.index_add_(0, kid, lp)
            ce[:] = (-(prefix + own) / (n - first)).cpu()
        return f, ce

    def deepest_block_read(self) -> int | None:
        """The deepest block whose output the target reads, where the blocks after it may drop the last
        prompt position (`attention.last_dropped_above`): None where the target may read logits, its
        deepest block is the last, or the model does not take a shortened row."""
        if self.target.reads_logits or not self.target.hooks:
            return None
        block = max(self.model.check_hook(name)[0] for name in self.target.hooks)
        return block if block < self.model.n_layers - 1 and self.fast.drops else None

    # ---------------------------------------------------------------- gradients and candidates
    def top_k(
        self, prompts: list[torch.Tensor], penalties: torch.Tensor, k: int, beta: float = 0.0
    ) -> list[torch.Tensor]:
        """Per prompt (1-D ids, any lengths) and its penalty λ, the k allowed tokens per position whose
        swap most increases L_λ: [n, k] ids each (with β > 0, ranked with the model's log-probs too:
        `objective.top_k_tokens`). The gradient of L_λ is df − λ·dCE: its two parts are taken once per
        distinct prompt and kept while the prompt is among those asked about, whichever penalties it
        comes with (survivors keep their gradients); so are the candidates per (prompt, λ)."""
        keys = [(tuple(p.tolist()), float(lam), k, beta) for p, lam in zip(prompts, penalties)]
        self.passes([p for p, *_ in keys], logprobs=beta > 0)
        for key in dict.fromkeys(key for key in keys if key not in self.candidates):
            df, dce, logprobs = self.gradients[key[0]]
            self.candidates[key] = top_k_tokens(
                torch.add(df, dce, alpha=-key[1]),
                self.vocab.allowed,
                k,  # one [n, A] pass
                logprobs,
                beta,
            )
        self.candidates = {key: self.candidates[key] for key in keys}
        return [self.candidates[key] for key in keys]

    def next_token_logprobs(self, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per prompt, log p(v | the prompt before position j) over the allowed tokens: [n, A] fp32 (NaN
        rows where a position has no context), from the gradient pass (kept with its gradients)."""
        keys = [tuple(p.tolist()) for p in prompts]
        self.passes(keys, keep_others=True, logprobs=True)
        out = []
        for key in keys:
            logprobs = self.gradients[key][2]
            assert logprobs is not None  # the passes kept them (logprobs=True)
            out.append(logprobs)
        return out

    def passes(self, prompts: list[tuple[int, ...]], keep_others: bool = False, logprobs: bool = False) -> None:
        """Gradient passes over the distinct prompts not already kept (or kept without the next-token
        log-probs that `logprobs` asks for); keeps only these prompts' (unless `keep_others`). Once asked
        for, the log-probs are kept from every later pass: a run that uses them uses them every iteration,
        and one that does not never copies them off the device."""
        self.keeps_logprobs = self.keeps_logprobs or logprobs
        distinct = list(dict.fromkeys(prompts))
        missing = [p for p in distinct if p not in self.gradients or (logprobs and self.gradients[p][2] is None)]
        for rows in by_length(missing).values():  # one batch per prompt length
            group = [missing[i] for i in rows]
            self.gradients.update(zip(group, zip(*self.gradient_pass(torch.tensor(group), self.keeps_logprobs))))
        if not keep_others:
            self.gradients = {p: self.gradients[p] for p in distinct}

    def gradient_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d f / d one-hot, d CE / d one-hot) for each prompt, over the allowed tokens: two [B, n, A]
        tensors on the CPU. The gradient of L_λ = f − λ·CE is df − λ·dCE, so one pass per prompt serves
        every penalty (a prompt often fills several slots)."""
        return self.gradient_pass(ids)[:2]

    def gradient_pass(self, ids: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor, list]:
        """`gradient_parts`, and (with `keep`) the next-token log-probs that the same pass computes
        per prompt ([n, A], NaN rows before the first position with context: `objective.next_token_rows`;
        None without)."""
        o = self.objective
        dfs, dces, lps = [], [], []
        n, L = ids.shape[1], len(o.before)
        for done, chunk in zip(range(0, len(ids), self.batch_size), ids.split(self.batch_size)):
            chunk = chunk.to(self.model.device)
            leaf: list[torch.Tensor] = []
            with torch.enable_grad():
                rows = torch.arange(done, done + len(chunk))
                f, ce, logprobs = self.forward(chunk, leaf, self.rows(self.model), rows)
                (g_f,) = torch.autograd.grad(f.sum(), leaf[0], retain_graph=o.self_weight > 0)
                g_ce = torch.autograd.grad(ce.sum(), leaf[0])[0] if o.self_weight > 0 else None
            assert logprobs is not None  # a pass with an embedding leaf has the log-probs over the allowed tokens
            g = torch.stack([g_f] if g_ce is None else [g_f, g_ce])[:, :, L : L + n]  # one pass over the embeddings
            df, *rest = self.through_context(g, self.model)
            dce = self.as_label(rest[0], logprobs).mul_(o.self_weight) if rest else torch.zeros_like(df)
            for m, w in o.others:  # other fluency models, the same two terms
                leaf = []
                with torch.enable_grad():
                    ce_m, logprobs_m = self.cross_entropy(m, chunk.to(m.device), leaf, self.rows(m))
                    (g,) = torch.autograd.grad(ce_m.sum(), leaf[0])
                dce += w * self.as_label(self.through_context(g[:, L : L + n], m), logprobs_m).to(dce.device)
            dfs.append(df.cpu())
            dces.append(dce.cpu())
            lps += list(next_token_rows(logprobs.detach().cpu(), o.first)) if keep else [None] * len(chunk)
        return torch.cat(dfs), torch.cat(dces), lps

    def through_context(self, g: torch.Tensor, model: Model) -> torch.Tensor:
        """d / d one-hot through the input embeddings of `model`, from d / d embeddings: [..., n, A] fp32.
        Matmuls onto the vocabulary take 2-D rows: with one prompt in the batch, a 3-D `@` (or the
        unembedding of [1, n, d] under autograd) copies the whole [d, V] matrix into a bmm
        (docs/performance.md#two-dimensional-rows)."""
        allowed_embeddings, scale = self.projections[model]
        return scale * (g.float().reshape(-1, g.shape[-1]) @ allowed_embeddings.T).unflatten(0, g.shape[:-1])

    def as_label(self, d: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Add CE's direct term: token i is the label of position i − 1, d CE / d one-hot[i, v] gets
        −log p(v | t_<i) / (n − first)."""
        n, first = d.shape[1], self.objective.first
        d[:, first:] -= logprobs.detach().to(d.device) / (n - first)
        return d

    def rows(self, model: Model) -> Rows | None:
        """fp32 attention for a gradient pass, where the model's attention takes a layout (`FastPath.packs`)."""
        if not FastPath.of(model).packs:
            return None
        return Rows(weights=model is self.model and any(h.endswith("hook_pattern") for h in self.target.hooks))

    # ---------------------------------------------------------------- one pass
    def forward(
        self,
        ids: torch.Tensor,
        embeddings: list | None = None,
        layout: Rows | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(f, cross-entropy, log-probs) for a batch, fp32.

        If `embeddings` is a list, the input embeddings are appended to it as a leaf that collects
        gradients, and the log-probabilities over the allowed tokens come back too; otherwise only the
        prompt tokens' own log-probabilities are computed (None comes back). With a `layout`, attention
        runs on it (`attention.Rows`: in fp32). `rows`: which of the call's prompts these are (`Objective.value`)."""
        o = self.objective
        with (
            self.model.capture(list(self.target.hooks)) as hooks,
            self.fast.run(layout),
            embedding_leaf(self.model, embeddings),
        ):
            hidden = self.model.trunk(o.in_template(ids))
        total, logprobs = self.prompt_logprob(self.model, hidden, ids, full=embeddings is not None)
        f = o.value(hooks, ids.shape[1], hidden=hidden, head=self.model.head, rows=rows)
        return f, -total / (ids.shape[1] - o.first), logprobs

    def cross_entropy(
        self, model: Model, ids: torch.Tensor, embeddings: list | None = None, layout: Rows | None = None
    ):
        """(CE, log-probs over the allowed tokens or None) of the prompt under another fluency model."""
        ids = ids.to(model.device)
        with FastPath.of(model).run(layout), embedding_leaf(model, embeddings):
            hidden = model.trunk(self.objective.in_template(ids))
        total, logprobs = self.prompt_logprob(model, hidden, ids, full=embeddings is not None)
        return -total / (ids.shape[1] - self.objective.first), logprobs

    def prompt_logprob(
        self, model: Model, hidden: torch.Tensor, ids: torch.Tensor, full: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sum of log p(prompt token j | what precedes it) over j = first .. n-1, fp32, from the final
        hidden states of the (templated) input. Only those positions are unembedded; with `full`, the
        log-probabilities over the allowed tokens there too."""
        positions, labels = self.objective.labels(ids)
        h = hidden[:, positions].contiguous()  # docs/performance.md#contiguous-rows
        if not full:
            return head_logprobs(model, h, labels).sum(-1), None
        logprobs = model.head(h.flatten(0, 1)).unflatten(0, h.shape[:2]).float().log_softmax(-1)  # 2-D rows
        allowed = self.vocab.allowed.to(logprobs.device)
        return logprobs.gather(-1, labels[..., None])[..., 0].sum(-1), logprobs[..., allowed]


def prefix_logprobs(
    model: Model,
    hidden: torch.Tensor,
    parents: torch.Tensor,
    children: torch.Tensor,
    parent: torch.Tensor,
    pos: torch.Tensor,
    first: int,
    horizon: int | None = None,
) -> torch.Tensor:
    """Σ_{first ≤ j ≤ pos} log p(child's token j | the parent's tokens before it) per child: the prefix terms
    of the children's cross-entropy, from the parents' final hidden states [M, n − first, d] at the positions
    that predict tokens first … n − 1. A child's tokens before pos are its parent's, so each parent position
    is unembedded once (tiled, never [M, n, V] fp32 log-probabilities), for its own token and the new tokens
    of the children mutated there (docs/performance.md#large-vocabularies). With a `horizon` h, plus the
    parent's own terms for the tokens j > pos + h (the approximation of `PackedScorer.approximates`)."""
    m, width = hidden.shape[:2]
    at = pos >= first  # children whose new token has a prefix term
    row = parent * width + (pos - first).clamp_min(0)  # the parent position predicting it
    order = row[at].argsort(stable=True)
    rows = row[at][order]
    rank = torch.arange(len(rows), device=rows.device) - torch.searchsorted(rows, rows)  # among the same row's
    labels = torch.full((m * width, 2 + int(rank.max()) if len(rows) else 1), -1, device=hidden.device)
    labels[:, 0] = parents[:, first:].reshape(-1)
    column = torch.empty_like(row)
    column[at.nonzero()[:, 0][order]] = 1 + rank
    labels[rows, 1 + rank] = children[at][order, pos[at][order]]
    lp = head_logprobs(model, hidden.reshape(m * width, -1), labels)  # [M·width, K]
    own = lp[:, 0].view(m, width).cumsum(1)  # Σ_{first ≤ j ≤ i} log p(parent's token j)
    before = own[parent, (pos - first - 1).clamp_min(0)].where(pos > first, 0)  # j < pos: the parent's tokens
    new = lp[row, column.where(at, 0)].where(at, 0)  # j = pos: the child's own token
    if horizon is None:
        return before + new
    last = pos + horizon - first  # the parent's terms after the child's last computed one (j = pos + h)
    after = (own[:, -1][parent] - own[parent, last.clamp(0, width - 1)]).where(last < width - 1, 0)
    return before + new + after


@contextlib.contextmanager
def embedding_leaf(model: Model, embeddings: list | None):
    """If `embeddings` is a list, append the input embeddings to it as a leaf that collects gradients."""
    if embeddings is None:
        yield
        return

    def leaf(module, args, out):
        out = out.detach().requires_grad_(True)
        embeddings.append(out)
        return out

    hook = model.adapter.embed.register_forward_hook(leaf)
    try:
        yield
    finally:
        hook.remove()


def projection(model: Model, allowed: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The allowed tokens' embeddings [A, d] in `model`, and its embedding module's output scale."""
    weight = model.adapter.embed_weight
    return weight[allowed.to(weight.device)].float(), embed_scale(model, int(allowed[0]))
