"""Score prompts (target value f and cross-entropy) and take token gradients for the mutation step.

Cross-entropy is the mean next-token cross-entropy of the prompt itself: logits[:, :-1] against
ids[:, 1:], no BOS added. Both f and cross-entropy are computed in fp32 even when the model runs in
bf16. The token gradient equals the gradient with respect to the one-hot encoding, restricted to
the allowed tokens, computed without a one-hot matmul over the whole vocabulary: the gradient with
respect to the input embeddings, projected onto the allowed tokens' embeddings, plus the direct
term of the cross-entropy (token i is the label of position i-1: d CE / d onehot[i, v] gets
-log p(v | t_<i) / (n-1)).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from .errors import ConfigError
from .model import Model
from .targets import Target
from .vocab import Vocabulary


class Scorer:
    """`fluency`: the models whose cross-entropy measures fluency, with weights: (None = the target
    model, weight) pairs; default the target model alone. Other models must share its tokenizer."""

    def __init__(self, model: Model, target: Target, vocab: Vocabulary, batch_size: int | None = None,
                 prefix_buckets: int = 3, template: str | None = None,
                 fluency: list[tuple[Model | None, float]] | None = None):
        self.model, self.target, self.vocab = model, target, vocab
        self.before, self.after = (t.to(model.device) for t in template_ids(model.tokenizer, template))
        self.first = 0 if len(self.before) else 1   # the first prompt token with a cross-entropy term
        self.batch_size = batch_size or auto_batch_size(model)
        self.prefix_buckets = prefix_buckets
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

    def _forward(self, ids: torch.Tensor, embeddings: list | None = None, start: int = 0, past=None,
                 prefix_logprob: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, cross-entropy, log-probs) for a batch, fp32.

        With `past` (the keys/values of ids[:, :start]) only ids[:, start:] runs through the model and
        `prefix_logprob` holds the log-probabilities of tokens 1..start, read from the parent's logits.
        If `embeddings` is a list, the input embeddings are appended to it as a leaf that collects gradients."""
        with _embedding_leaf(self.model, embeddings), self.model.capture(list(self.target.hooks)) as cache:
            out = self.model.hf(input_ids=self._in_template(ids)[:, start:], past_key_values=past,
                                use_cache=past is not None)
        logits = out.logits.float()
        if self.templated:
            return self._in_context(ids, cache, logits)
        cache["logits"] = logits
        logprobs = logits[:, :-1].log_softmax(-1)
        total = logprobs.gather(-1, ids[:, start + 1:, None])[..., 0].sum(-1)
        if prefix_logprob is not None:
            total = total + prefix_logprob
        return self.target.value(cache).float(), -total / (ids.shape[1] - 1), logprobs

    def _cross_entropy(self, model: Model, ids: torch.Tensor, embeddings: list | None = None):
        """(CE, log-probs) of the prompt under another fluency model (in the template, if any)."""
        with _embedding_leaf(model, embeddings):
            logits = model.hf(input_ids=self._in_template(ids.to(model.device))).logits.float()
        return self._prompt_cross_entropy(logits, ids.to(model.device))

    def _prompt_cross_entropy(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE, log-probs) of the prompt tokens first..n-1 from the logits of the whole templated input."""
        L, n = len(self.before), ids.shape[1]
        logprobs = logits[:, L + self.first - 1:L + n - 1].log_softmax(-1)     # predicting prompt tokens first..n-1
        total = logprobs.gather(-1, ids[:, self.first:, None])[..., 0].sum(-1)
        return -total / (n - self.first), logprobs

    # ---------------------------------------------------------------- a fixed context around the prompt
    @property
    def templated(self) -> bool:
        return len(self.before) + len(self.after) > 0

    def _in_template(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.templated:
            return ids
        b = len(ids)
        return torch.cat([self.before.expand(b, -1), ids, self.after.expand(b, -1)], 1)

    def _in_context(self, ids, cache, logits):
        """f and CE of the prompt span inside its template: the target sees activations of the prompt
        positions only (position -1 = the last prompt token); CE covers every prompt token."""
        L, n = len(self.before), ids.shape[1]
        ce, logprobs = self._prompt_cross_entropy(logits, ids)
        span = {name: t[:, :, L:L + n, L:L + n] if name.endswith("hook_pattern") else t[:, L:L + n]
                for name, t in cache.items()}
        span["logits"] = logits[:, L:L + n]
        return self.target.value(span).float(), ce, logprobs

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, cross-entropy) on the CPU, in batches of `batch_size`."""
        return self._backoff(self._score, ids)

    def _score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                f, ce, _ = self._forward(chunk.to(self.model.device))
                if self.others:
                    ce = self.self_weight * ce + sum(w * self._cross_entropy(m, chunk)[0].to(ce.device)
                                                     for m, w, _, _ in self.others)
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    @property
    def reuses_prefix(self) -> bool:
        """Prefix reuse needs a target read at the last position (a suffix forward still sees all of it)."""
        return getattr(self.target, "position", None) == -1 and not self.templated and not self.others

    def score_children(self, parents: torch.Tensor, children: torch.Tensor, parent: torch.Tensor,
                       pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `score(children)`, where child j equals parents[parent[j]] before position pos[j].

        The parents run once with a key/value cache; children are grouped into `prefix_buckets` ranges of
        mutated positions, and each group runs only from the start of its range on, on top of the parents'
        cached prefix, taking the prefix's cross-entropy terms from the parents' log-probabilities (few
        groups keep batches large; many skip more tokens). Same results as `score` within dtype tolerance."""
        if not self.reuses_prefix or self.prefix_buckets < 2:
            return self.score(children)
        return self._backoff(self._score_children, parents, children, parent, pos)

    def _score_children(self, parents, children, parent, pos) -> tuple[torch.Tensor, torch.Tensor]:
        device, n = self.model.device, children.shape[1]
        starts = torch.linspace(0, n, self.prefix_buckets + 1)[:-1].floor().long().unique()
        bucket = starts[torch.searchsorted(starts, pos, right=True) - 1]
        f, ce = torch.empty(len(children)), torch.empty(len(children))
        with torch.inference_mode():
            out = self.model.hf(input_ids=parents.to(device), use_cache=True)
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            parent_lp = out.logits[:, :-1].float().log_softmax(-1)                       # [M, n-1, V]
            for p in bucket.unique().tolist():
                rows = (bucket == p).nonzero()[:, 0]
                for chunk in rows.split(self.batch_size):
                    kids, par = children[chunk].to(device), parent[chunk].to(device)
                    if p == 0:
                        f_c, ce_c, _ = self._forward(kids)
                    else:
                        past = DynamicCache([(k[par, :, :p], v[par, :, :p]) for k, v in kv], config=self.model.hf.config)
                        prefix = parent_lp[par, :p].gather(-1, kids[:, 1:p + 1, None])[..., 0].sum(-1)
                        f_c, ce_c, _ = self._forward(kids, start=p, past=past, prefix_logprob=prefix)
                    f[chunk], ce[chunk] = f_c.cpu(), ce_c.cpu()
        return f, ce

    def token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """d(f - penalty * CE) / d(one-hot) for each prompt, over the allowed tokens: [B, n, A] on the CPU."""
        return self._backoff(self._token_gradients, ids, penalties)

    def _token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        grads = []
        for chunk, lam in zip(ids.split(self.batch_size), penalties.split(self.batch_size)):
            embeddings: list[torch.Tensor] = []
            lam = lam.to(self.model.device)
            with torch.enable_grad():
                f, ce, logprobs = self._forward(chunk.to(self.model.device), embeddings)
                (g,) = torch.autograd.grad((f - lam * self.self_weight * ce).sum(), embeddings[0])
            n, L = chunk.shape[1], len(self.before)
            grad = self.embed_scale * (g[:, L:L + n].float() @ self.allowed_embeddings.T)  # through the context
            lam_n = lam[:, None, None] / (n - self.first)
            grad[:, self.first:] += lam_n * self.self_weight * logprobs.detach()[..., self.allowed]  # as a label
            for m, w, allowed_embeddings, scale in self.others:     # other fluency models, the same two terms
                leaf: list[torch.Tensor] = []
                with torch.enable_grad():
                    ce_m, logprobs_m = self._cross_entropy(m, chunk.to(m.device), leaf)
                    (g,) = torch.autograd.grad((-lam.to(m.device) * w * ce_m).sum(), leaf[0])
                grad += (scale * (g[:, L:L + n].float() @ allowed_embeddings.T)).to(grad.device)
                grad[:, self.first:] += (lam_n * w).to(grad.device) * logprobs_m.detach()[..., self.allowed.to(m.device)].to(grad.device)
            grads.append(grad.cpu())
        return torch.cat(grads)

    def _backoff(self, fn, *args):
        """Run fn; on out-of-memory, halve the batch size and run it again."""
        while True:
            try:
                return fn(*args)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                if self.model.device.type == "cuda":
                    torch.cuda.empty_cache()

    def top_k(self, ids: torch.Tensor, penalties: torch.Tensor, k: int) -> torch.Tensor:
        """Per prompt and position, the k allowed tokens whose swap most increases the objective: [B, n, k] ids."""
        grad = self.token_gradients(ids, penalties)
        idx = grad.topk(min(k, grad.shape[-1]), dim=-1).indices
        return self.vocab.allowed[idx]


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


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e) or "can't allocate memory" in str(e)


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


def auto_batch_size(model: Model, length: int = 12, limit: int = 512) -> int:
    """Prompts per forward pass from free memory: logits dominate (model dtype, an fp32 copy and fp32
    log-probs per position), with activations on top; use at most half of what is free."""
    vocab = model.adapter.unembed.weight.shape[0]
    per_prompt = length * (vocab * (model.dtype.itemsize + 8) + 16 * model.adapter.d_mlp * model.dtype.itemsize)
    return max(1, min(limit, free_memory(model.device) // 2 // per_prompt))
