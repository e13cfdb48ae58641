"""Score prompts (target value f and cross-entropy) and take token gradients for the mutation step.

Cross-entropy is the mean next-token cross-entropy of the prompt itself: logits[:, :-1] against
ids[:, 1:], no BOS added. Both f and cross-entropy are computed in fp32 even when the model runs in
bf16. The token gradient equals the gradient with respect to the one-hot encoding, restricted to
the allowed tokens, computed without a one-hot matmul over the whole vocabulary: the gradient with
respect to the input embeddings, projected onto the allowed tokens' embeddings, plus the direct
term of the cross-entropy (token i is the label of position i-1: d CE / d onehot[i, v] gets
-log p(v | t_<i) / (n-1)). It comes in two parts, d f and d CE, so that one pass per prompt serves
every penalty λ (the gradient of f − λ·CE is their combination).

Scoring (no gradients) never materialises fp32 log-probabilities over the vocabulary: it unembeds
only the positions that predict a prompt token, a tile of the vocabulary at a time, and takes each
label's log-probability from the tiles' fused log-sum-exps (`unembed.head_logprobs`).
"""

from __future__ import annotations

import contextlib

import torch

from ..fast.attention import Packed, Rows, attention, drops, last_dropped_above, packs
from ..errors import ConfigError, is_oom
from ..fast.fusion import fused_norms
from ..lm.model import Model
from ..lm.targets import Target
from ..fast.unembed import head_logprobs
from ..lm.vocab import Vocabulary


class Scorer:
    """`fluency`: the models whose cross-entropy measures fluency, with weights: (None = the target
    model, weight) pairs; default the target model alone. Other models must share its tokenizer."""

    def __init__(self, model: Model, target: Target, vocab: Vocabulary, batch_size: int | None = None,
                 template: str | None = None,
                 fluency: list[tuple[Model | None, float]] | None = None):
        self.model, self.target, self.vocab = model, target, vocab
        self.before, self.after = (t.to(model.device) for t in template_ids(model.tokenizer, template))
        self.first = 0 if len(self.before) else 1   # the first prompt token with a cross-entropy term
        self.batch_size = batch_size or auto_batch_size(model)
        self.allowed = vocab.allowed.to(model.device)
        self.allowed_embeddings, self.embed_scale = _projection(model, self.allowed)
        fluency = fluency or [(None, 1.0)]
        total = sum(w for _, w in fluency)
        if not total > 0 or any(w < 0 for _, w in fluency):
            raise ConfigError("fluency weights must be >= 0 and not all 0")
        self.self_weight = sum(w for m, w in fluency if m is None) / total
        self.others = []    # (model, normalised weight, allowed embeddings, embedding scale)
        for m, w in fluency:
            if m is not None:
                if m.tokenizer.get_vocab() != model.tokenizer.get_vocab():
                    raise ConfigError(f"the fluency model {m.spec} does not share the tokenizer of {model.spec}")
                self.others.append((m, w / total, *_projection(m, self.allowed.to(m.device))))

    def _forward(self, ids: torch.Tensor, embeddings: list | None = None,
                 layout: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(f, cross-entropy, log-probs) for a batch, fp32.

        If `embeddings` is a list, the input embeddings are appended to it as a leaf that collects
        gradients, and the log-probabilities over the allowed tokens come back too; otherwise only the
        prompt tokens' own log-probabilities are computed (None comes back). With a `layout`, attention
        runs on it (`attention.Rows`: in fp32)."""
        with fused_norms(self.model), _embedding_leaf(self.model, embeddings), _attention(self.model, layout), \
                self.model.capture(list(self.target.hooks)) as hooks:
            hidden = self.model.trunk(self._in_template(ids))
        total, logprobs = self._prompt_logprob(self.model, hidden, ids, full=embeddings is not None)
        L, n = len(self.before), ids.shape[1]
        if self.templated:   # the target sees the prompt positions only (position -1 = the last prompt token)
            hooks = {name: t[:, :, L:L + n, L:L + n] if name.endswith("hook_pattern") else t[:, L:L + n]
                     for name, t in hooks.items()}
            hidden = hidden[:, L:L + n]
        return self.target.value(TargetCache(hooks, hidden, self.model.head)).float(), -total / (n - self.first), logprobs

    def _prompt_logprob(self, model: Model, hidden: torch.Tensor, ids: torch.Tensor,
                        full: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sum of log p(prompt token j | what precedes it) over j = first .. n-1, fp32, from the final
        hidden states of the (templated) input. Only those positions are unembedded; with `full`, the
        log-probabilities over the allowed tokens there too."""
        L, n = len(self.before), ids.shape[1]
        h, labels = hidden[:, L + self.first - 1:L + n - 1].contiguous(), ids[:, self.first:]
        if not full:
            return head_logprobs(model, h, labels).sum(-1), None
        logprobs = model.head(h.flatten(0, 1)).unflatten(0, h.shape[:2]).float().log_softmax(-1)   # 2-D (below)
        return logprobs.gather(-1, labels[..., None])[..., 0].sum(-1), logprobs[..., self.allowed.to(logprobs.device)]

    def _cross_entropy(self, model: Model, ids: torch.Tensor, embeddings: list | None = None,
                       layout: Rows | None = None):
        """(CE, log-probs over the allowed tokens or None) of the prompt under another fluency model."""
        ids = ids.to(model.device)
        with fused_norms(model), _embedding_leaf(model, embeddings), _attention(model, layout):
            hidden = model.trunk(self._in_template(ids))
        total, logprobs = self._prompt_logprob(model, hidden, ids, full=embeddings is not None)
        return -total / (ids.shape[1] - self.first), logprobs

    # ---------------------------------------------------------------- a fixed context around the prompt
    @property
    def templated(self) -> bool:
        return len(self.before) + len(self.after) > 0

    def _in_template(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.templated:
            return ids
        b = len(ids)
        return torch.cat([self.before.expand(b, -1), ids, self.after.expand(b, -1)], 1)

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, cross-entropy) on the CPU, in batches of `batch_size`."""
        return self._backoff(self._score, ids)

    def _score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in _even_split(ids, self.batch_size):
                f, ce, _ = self._forward(chunk.to(self.model.device))
                if self.others:
                    ce = self.self_weight * ce + sum(w * self._cross_entropy(m, chunk)[0].to(ce.device)
                                                     for m, w, _, _ in self.others)
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    @property
    def reuses_prefix(self) -> bool:
        """Prefix reuse needs the target read at the last prompt position, no other fluency model, and a
        model whose attention runs packed (checked once per model on a probe, see `attention`)."""
        return getattr(self.target, "position", None) == -1 and not self.others and packs(self.model)

    def score_children(self, parents: torch.Tensor, children: torch.Tensor, parent: torch.Tensor,
                       pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `score(children)`, where child j equals parents[parent[j]] before position pos[j].

        The children run only from their mutated position on (the template's text before the prompt
        is part of the shared prefix), packed into one row (`attention.Packed`) on top of their
        parents' keys and values (the parents lead the first row), and take their prefix's
        cross-entropy terms from their parents' logits. Same results as `score` within dtype tolerance."""
        if not self.reuses_prefix:
            return self.score(children)
        return self._backoff(self._score_children, parents, children, parent, pos)

    def _score_children(self, parents, children, parent, pos) -> tuple[torch.Tensor, torch.Tensor]:
        parents, parent = torch.unique(parents[parent], dim=0, return_inverse=True)   # distinct parents with children lead
        device, (m, n), L, first = self.model.device, parents.shape, len(self.before), self.first
        parents, children, parent, pos = parents.to(device), children.to(device), parent.to(device), pos.to(device)
        N = L + n       # template text before + prompt tokens (nothing reads the text after); a child runs from L + pos on
        full_parents, full_children = self._in_template(parents)[:, :N], self._in_template(children)[:, :N]
        f, ce = torch.empty(len(children)), torch.empty(len(children))
        patterns = any(h.endswith("hook_pattern") for h in self.target.hooks)
        block = self._last_block_read()
        kv, own = {}, torch.zeros(len(children), device=device)       # own: sum of each child's own log-probs
        passes = -(-(m * N + int((N - L - pos).sum())) // (self.batch_size * N))   # batch_size × N tokens per pass
        with torch.inference_mode():
            for i, chunk in enumerate(torch.arange(len(children), device=device).tensor_split(passes)):
                packed = Packed(kv, parent[chunk], L + pos[chunk], N, lead=m if i == 0 else 0, weights=patterns)
                with fused_norms(self.model), self.model.capture(list(self.target.hooks)) as hooks, \
                        attention(self.model, packed), last_dropped_above(self.model, packed, block) as out:
                    row = packed.gather(full_parents, full_children[chunk])
                    hidden = self.model.trunk(row, position_ids=packed.position[None])[0]   # the tokens of `out`
                if i == 0:            # the parents' log-probs of prompt tokens first..n-1: the children's prefix terms
                    h = hidden[:m * out.n].unflatten(0, (m, out.n))[:, L + first - 1:L + n - 1].contiguous()   # (DESIGN §3)
                    parent_lp = self.model.head(h).float().log_softmax(-1)               # [M, n - first, V]
                read = packed.at(L + n - 1)     # the target reads each child's last prompt token, as if unpacked
                hooks = {name: t[0].transpose(0, 1)[read, :, None, L:L + n] if name.endswith("hook_pattern")
                         else t[0, read, None] for name, t in hooks.items()}
                final = hidden[read, None] if block is None else None     # final states: only a target reading logits
                f[chunk.cpu()] = self.target.value(TargetCache(hooks, final, self.model.head)).float().cpu()
                # the positions that predict one of a child's own prompt tokens (j = q - L + 1 > pos)
                q = out.position
                label = (q >= L + first - 1) & (q <= L + n - 2) & (out.entry >= out.lead)
                kid = chunk[out.entry[label] - out.lead]
                lp = head_logprobs(self.model, hidden[label], children[kid, q[label] - L + 1])
                own.index_add_(0, kid, lp)
            # log p(prompt token j | the parent's tokens before it): the child's own term wherever j <= pos
            j = torch.arange(first, n, device=device)
            prefix = parent_lp[parent[:, None], j - first, children[:, j]].where(j <= pos[:, None], 0).sum(-1)
            ce[:] = (-(prefix + own) / (n - first)).cpu()
        return f, ce

    def _last_block_read(self) -> int | None:
        """The deepest block whose output the target reads, where the blocks after it may drop the last
        prompt position (`attention.last_dropped_above`): None where the target may read logits, its
        deepest block is the last, or the model does not take a shortened row."""
        if self.target.reads_logits or not self.target.hooks:
            return None
        block = max(self.model.check_hook(name)[0] for name in self.target.hooks)
        return block if block < self.model.n_layers - 1 and drops(self.model) else None

    def gradient_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d f / d one-hot, d CE / d one-hot) for each prompt, over the allowed tokens: two [B, n, A]
        tensors on the CPU. The gradient of L_λ = f − λ·CE is df − λ·dCE, so one pass per prompt serves
        every penalty (a prompt often fills several slots)."""
        return self._backoff(self._gradient_parts, ids)

    def _gradient_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dfs, dces = [], []
        n, L = ids.shape[1], len(self.before)
        for chunk in ids.split(self.batch_size):
            chunk, leaf = chunk.to(self.model.device), []
            with torch.enable_grad():
                f, ce, logprobs = self._forward(chunk, leaf, self._rows(self.model))
                (g_f,) = torch.autograd.grad(f.sum(), leaf[0], retain_graph=self.self_weight > 0)
                g_ce = torch.autograd.grad(ce.sum(), leaf[0])[0] if self.self_weight > 0 else None
            g = torch.stack([g_f] if g_ce is None else [g_f, g_ce])[:, :, L:L + n]   # one pass over the embeddings
            df, *rest = self._through_context(g, self.allowed_embeddings, self.embed_scale)
            dce = self._as_label(rest[0], logprobs).mul_(self.self_weight) if rest else torch.zeros_like(df)
            for m, w, allowed_embeddings, scale in self.others:     # other fluency models, the same two terms
                leaf = []
                with torch.enable_grad():
                    ce_m, logprobs_m = self._cross_entropy(m, chunk.to(m.device), leaf, self._rows(m))
                    (g,) = torch.autograd.grad(ce_m.sum(), leaf[0])
                dce += w * self._as_label(self._through_context(g[:, L:L + n], allowed_embeddings, scale),
                                          logprobs_m).to(dce.device)
            dfs.append(df.cpu())
            dces.append(dce.cpu())
        return torch.cat(dfs), torch.cat(dces)

    @staticmethod
    def _through_context(g: torch.Tensor, allowed_embeddings: torch.Tensor, scale: float) -> torch.Tensor:
        """d / d one-hot through the input embeddings, from d / d embeddings: [..., n, A] fp32. Matmuls
        onto the vocabulary take 2-D rows: with one prompt in the batch, a 3-D `@` (or the unembedding
        of [1, n, d] under autograd) copies the whole [d, V] matrix into a bmm, 124 of the 230 ms of a
        one-prompt gradient pass."""
        return scale * (g.float().reshape(-1, g.shape[-1]) @ allowed_embeddings.T).unflatten(0, g.shape[:-1])

    def _as_label(self, d: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Add CE's direct term: token i is the label of position i − 1, d CE / d one-hot[i, v] gets
        −log p(v | t_<i) / (n − first)."""
        n = d.shape[1]
        d[:, self.first:] -= logprobs.detach().to(d.device) / (n - self.first)
        return d

    def _rows(self, model: Model) -> Rows | None:
        """fp32 attention for a gradient pass, where the model's attention takes a layout (`attention.packs`)."""
        if not packs(model):
            return None
        return Rows(weights=model is self.model and any(h.endswith("hook_pattern") for h in self.target.hooks))

    def token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """d(f - penalty * CE) / d(one-hot) for each prompt, over the allowed tokens: [B, n, A] on the CPU."""
        df, dce = self.gradient_parts(ids)
        return df - penalties[:, None, None].float() * dce

    def _backoff(self, fn, *args):
        """Run fn; on out-of-memory, halve the batch size and run it again."""
        while True:
            try:
                return fn(*args)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                if self.model.device.type == "cuda":
                    torch.cuda.empty_cache()

    def top_k(self, ids: torch.Tensor, penalties: torch.Tensor, k: int) -> torch.Tensor:
        """Per prompt and position, the k allowed tokens whose swap most increases the objective: [B, n, k] ids."""
        grad = self.token_gradients(ids, penalties)
        idx = grad.topk(min(k, grad.shape[-1]), dim=-1).indices
        return self.vocab.allowed[idx]


class TargetCache(dict):
    """What a target reads: the captured hook points, and "logits" (fp32), computed only if read."""

    def __init__(self, hooks: dict, hidden: torch.Tensor, head):
        super().__init__(hooks)
        self.hidden, self.head = hidden, head

    def __contains__(self, key) -> bool:
        return key == "logits" or super().__contains__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __missing__(self, key: str) -> torch.Tensor:
        if key != "logits":
            raise KeyError(key)
        self["logits"] = self.head(self.hidden.contiguous()).float()
        return self["logits"]


def _attention(model: Model, layout: Rows | None):
    return contextlib.nullcontext() if layout is None else attention(model, layout)


@contextlib.contextmanager
def _embedding_leaf(model: Model, embeddings: list | None):
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


def _projection(model: Model, allowed: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The allowed tokens' embeddings [A, d], and the embedding module's output scale (Gemma 3: sqrt(d)),
    which d(output)/d(one-hot) includes."""
    embed = model.adapter.embed
    with torch.inference_mode():
        probe = allowed[:1]
        out, w = embed(probe[None])[0, 0].float(), embed.weight[probe[0]].float()
    return embed.weight[allowed].float(), float(out @ w / (w @ w))


def template_ids(tokenizer, template: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the fixed text before and after `{prompt}` in a template (empty without one).

    Trailing spaces before `{prompt}` are dropped: the space belongs to the prompt's first token."""
    if not template:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if template.count("{prompt}") != 1:
        raise ConfigError(f"a template needs {{prompt}} exactly once, e.g. 'Once upon a time {{prompt}}': got {template!r}")
    before, after = template.split("{prompt}")
    encode = lambda text: torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)  # noqa: E731
    return encode(before.rstrip(" ")), encode(after)


def _even_split(t: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """As few chunks of at most `size` rows as possible, of equal sizes (129 rows at 128: 65 + 64, not
    128 + 1: every pass streams all the weights, so a nearly empty pass costs nearly a full one)."""
    return t.tensor_split(-(-len(t) // size)) if len(t) else (t,)


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (GPU memory, or available system memory for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


CPU_TOKENS_PER_PASS = 2048   # larger CPU batches run slower per token (activations spill out of cache)


def auto_batch_size(model: Model, length: int = 12, limit: int = 512) -> int:
    """Prompts per forward pass from free memory: logits dominate (model dtype, an fp32 copy and fp32
    log-probs per position), with activations on top; use at most half of what is free. On a CPU, also
    at most CPU_TOKENS_PER_PASS tokens per pass (SmolLM2-135M, bf16, 2 cores: 256 prompts of 12 tokens
    take 1.26 s in one pass and 0.83 s in two, while the ~1760-token packed row of an iteration's
    children scores in 0.65 s in one pass and 0.74 s in two; see bench/speed.py --batch-size)."""
    vocab = model.adapter.unembed.weight.shape[0]
    per_prompt = length * (vocab * (model.dtype.itemsize + 8) + 16 * model.adapter.d_mlp * model.dtype.itemsize)
    if model.device.type == "cpu":
        limit = min(limit, max(1, CPU_TOKENS_PER_PASS // length))
    return max(1, min(limit, free_memory(model.device) // 2 // per_prompt))
