"""The paper's scorer, written plainly: the spec that the fast path (`packed.PackedScorer`) is tested against.

Every prompt gets one full forward pass, with fp32 log-softmax over the whole vocabulary at every
position (docs/design.md#objective). Token gradients go through a one-hot encoding of the prompt:
the input embeddings are one_hot @ E (times the embedding module's scale), and the gradient of
L_λ = f − λ·CE with respect to one_hot ranks the swaps (docs/design.md#epo). Nothing is reused
between prompts or iterations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..choices import ScorerName
from ..lm.model import Model
from .continuation import Continuation
from .objective import Objective, by_length, embed_scale, next_token_rows, top_k_tokens


class PlainScorer(Continuation):
    name: ScorerName = "plain"
    approximates = False  # every score is the model's own

    def __init__(self, objective: Objective, batch_size: int):
        self.objective, self.batch_size = objective, batch_size
        self.model, self.target, self.vocab = objective.model, objective.target, objective.vocab

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, CE) of each prompt [B, n], on the CPU."""
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                f, ce = self.forward(chunk)
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    def score_children(self, parents, children, parent, pos) -> tuple[torch.Tensor, torch.Tensor]:
        """`score(children)`: the plain path does not reuse the parents."""
        return self.score(children)

    def gradient_parts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d f / d one-hot, d CE / d one-hot) over the allowed tokens: two [B, n, A] tensors on the CPU."""
        dfs, dces = [], []
        for chunk in ids.split(self.batch_size):
            with torch.enable_grad():
                one_hot = self.one_hot(chunk)
                f, ce = self.forward(chunk, one_hot)
                (df,) = torch.autograd.grad(f.sum(), one_hot, retain_graph=True)
                (dce,) = torch.autograd.grad(ce.sum(), one_hot)
            dfs.append(self.allowed(df))
            dces.append(self.allowed(dce))
        return torch.cat(dfs), torch.cat(dces)

    def top_k(
        self, prompts: list[torch.Tensor], penalties: torch.Tensor, k: int, beta: float = 0.0
    ) -> list[torch.Tensor]:
        """Per prompt (1-D ids, any lengths) and its penalty λ, the k allowed tokens per position whose
        swap most increases L_λ: [n, k] ids each (with β > 0, ranked with the model's next-token
        log-probs too: `objective.top_k_tokens`)."""
        out: dict[int, torch.Tensor] = {}
        logprobs = self.next_token_logprobs(prompts) if beta else [None] * len(prompts)
        for rows in by_length(prompts).values():
            for chunk in torch.tensor(rows).split(self.batch_size):
                ids = torch.stack([prompts[i] for i in chunk])
                with torch.enable_grad():
                    one_hot = self.one_hot(ids)
                    f, ce = self.forward(ids, one_hot)
                    lam = penalties[chunk].to(ce.device)
                    (grad,) = torch.autograd.grad((f - lam * ce).sum(), one_hot)
                for i, g in zip(chunk.tolist(), self.allowed(grad)):
                    out[i] = top_k_tokens(g, self.vocab.allowed, k, logprobs[i], beta)
        return [out[i] for i in range(len(prompts))]  # every prompt is in one chunk

    def next_token_logprobs(self, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per prompt, log p(v | the prompt before position j) over the allowed tokens: [n, A] fp32, NaN
        rows where a position has no context."""
        out: dict[int, torch.Tensor] = {}
        for rows in by_length(prompts).values():
            for chunk in torch.tensor(rows).split(self.batch_size):
                ids = torch.stack([prompts[i] for i in chunk])
                with torch.inference_mode():
                    logits = self.logits(self.model, ids, None)
                positions, _ = self.objective.labels(ids)
                logprobs = self.allowed(logits[:, positions].log_softmax(-1))
                for i, lp in zip(chunk.tolist(), next_token_rows(logprobs, self.objective.first)):
                    out[i] = lp
        return [out[i] for i in range(len(prompts))]  # every prompt is in one chunk

    # ---------------------------------------------------------------- one pass
    def one_hot(self, ids: torch.Tensor) -> torch.Tensor:
        """The one-hot encoding of prompts over the embedding matrix's rows, a leaf that takes gradients."""
        E = self.model.adapter.embed_weight
        return F.one_hot(ids.to(E.device), E.shape[0]).to(E.dtype).requires_grad_(True)

    def allowed(self, grad: torch.Tensor) -> torch.Tensor:
        return grad[..., self.vocab.allowed.to(grad.device)].float().cpu()  # gather, then upcast: [.., A] fp32 only

    def forward(self, ids: torch.Tensor, one_hot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, CE) of prompts [B, n], fp32; with `one_hot`, the prompt's embeddings come from it."""
        o = self.objective
        with self.model.capture(list(self.target.hooks)) as hooks:
            logits = self.logits(self.model, ids, one_hot)
        f = o.value(hooks, ids.shape[1], logits=logits)
        ce = o.self_weight * self.cross_entropy(logits, ids, one_hot) if o.self_weight else torch.zeros_like(f)
        for m, weight in o.others:
            other = None if one_hot is None else fit(one_hot, m)
            ce = ce + weight * self.cross_entropy(self.logits(m, ids, other), ids, other).to(ce.device)
        return f, ce

    def logits(self, model: Model, ids: torch.Tensor, one_hot: torch.Tensor | None) -> torch.Tensor:
        """fp32 logits at every position of the templated input."""
        full = self.objective.in_template(ids.to(model.device))
        if one_hot is None:
            return model.hf(input_ids=full, use_cache=False).logits.float()
        embed = model.adapter.embed
        embeddings = embed(full)
        L, n = len(self.objective.before), ids.shape[1]
        prompt = (one_hot @ model.adapter.embed_weight) * embed_scale(model, int(self.vocab.allowed[0]))
        embeddings = torch.cat([embeddings[:, :L], prompt, embeddings[:, L + n :]], 1)
        return model.hf(inputs_embeds=embeddings, use_cache=False).logits.float()

    def cross_entropy(self, logits: torch.Tensor, ids: torch.Tensor, one_hot: torch.Tensor | None) -> torch.Tensor:
        """Mean next-token cross-entropy of each prompt's own tokens; with `one_hot`, the labels are its
        rows, so that the gradient includes each token's own term."""
        positions, labels = self.objective.labels(ids)
        logprobs = logits[:, positions].log_softmax(-1)
        if one_hot is None:
            return -logprobs.gather(-1, labels.to(logits.device)[..., None])[..., 0].mean(-1)
        return -(logprobs * one_hot[:, self.objective.first :].float()).sum(-1).mean(-1)


def fit(one_hot: torch.Tensor, model: Model) -> torch.Tensor:
    """A one-hot encoding over another model's embedding rows (same tokenizer, maybe more or fewer rows)."""
    rows, E = one_hot.shape[-1], model.adapter.embed_weight
    fitted = one_hot[..., : E.shape[0]] if rows >= E.shape[0] else F.pad(one_hot, (0, E.shape[0] - rows))
    return fitted.to(E.device, E.dtype)
