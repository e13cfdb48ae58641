"""Score prompts (target value f and cross-entropy) and take token gradients for the mutation step.

Cross-entropy is the mean next-token cross-entropy of the prompt itself: logits[:, :-1] against
ids[:, 1:], no BOS added. Both f and cross-entropy are computed in fp32 even when the model runs in
bf16. Gradients are taken with respect to the input embeddings and projected onto the allowed
tokens' embeddings, which equals the gradient with respect to the one-hot encoding restricted to
those tokens (up to a positive per-model embedding scale, which leaves the ranking unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Model
from .targets import Target
from .vocab import Vocabulary


class Scorer:
    def __init__(self, model: Model, target: Target, vocab: Vocabulary, batch_size: int = 128):
        self.model, self.target, self.vocab, self.batch_size = model, target, vocab, batch_size
        self.allowed = vocab.allowed.to(model.device)
        self.allowed_embeddings = model.adapter.embed.weight[self.allowed].float()  # [A, d]

    def _forward(self, ids: torch.Tensor, embeddings: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, cross-entropy) for a batch, fp32; if `embeddings` is a list, the input embeddings are appended
        to it as a leaf that collects gradients."""
        hooks = []
        if embeddings is not None:
            def leaf(module, args, out):
                out = out.detach().requires_grad_(True)
                embeddings.append(out)
                return out
            hooks.append(self.model.adapter.embed.register_forward_hook(leaf))
        try:
            with self.model.capture(list(self.target.hooks)) as cache:
                out = self.model.hf(input_ids=ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        logits = out.logits.float()
        cache["logits"] = logits
        b, n, v = logits.shape
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1), reduction="none")
        return self.target.value(cache).float(), ce.view(b, n - 1).mean(-1)

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, cross-entropy) on the CPU, in batches of `batch_size`."""
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                f, ce = self._forward(chunk.to(self.model.device))
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    def token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """d(f - penalty * CE) / d(one-hot) for each prompt, over the allowed tokens: [B, n, A] on the CPU."""
        grads = []
        for chunk, lam in zip(ids.split(self.batch_size), penalties.split(self.batch_size)):
            embeddings: list[torch.Tensor] = []
            with torch.enable_grad():
                f, ce = self._forward(chunk.to(self.model.device), embeddings)
                objective = (f - lam.to(f.device) * ce).sum()
                (g,) = torch.autograd.grad(objective, embeddings[0])
            grads.append((g.float() @ self.allowed_embeddings.T).cpu())
        return torch.cat(grads)

    def top_k(self, ids: torch.Tensor, penalties: torch.Tensor, k: int) -> torch.Tensor:
        """Per prompt and position, the k allowed tokens whose swap most increases the objective: [B, n, k] ids."""
        grad = self.token_gradients(ids, penalties)
        idx = grad.topk(min(k, grad.shape[-1]), dim=-1).indices
        return self.vocab.allowed[idx]
