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

import torch
import torch.nn.functional as F

from .model import Model
from .targets import Target
from .vocab import Vocabulary


class Scorer:
    def __init__(self, model: Model, target: Target, vocab: Vocabulary, batch_size: int = 128):
        self.model, self.target, self.vocab, self.batch_size = model, target, vocab, batch_size
        self.allowed = vocab.allowed.to(model.device)
        embed = model.adapter.embed
        self.allowed_embeddings = embed.weight[self.allowed].float()  # [A, d]
        # some embedding modules scale their output (Gemma 3: sqrt(d)); d(out)/d(onehot) includes it
        with torch.inference_mode():
            probe = self.allowed[:1]
            out, w = embed(probe[None])[0, 0].float(), embed.weight[probe[0]].float()
            self.embed_scale = float(out @ w / (w @ w))

    def _forward(self, ids: torch.Tensor, embeddings: list | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, cross-entropy, log-probs) for a batch, fp32; if `embeddings` is a list, the input embeddings
        are appended to it as a leaf that collects gradients."""
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
        logprobs = logits[:, :-1].log_softmax(-1)
        ce = -logprobs.gather(-1, ids[:, 1:, None])[..., 0].mean(-1)
        return self.target.value(cache).float(), ce, logprobs

    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, cross-entropy) on the CPU, in batches of `batch_size`."""
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                f, ce, _ = self._forward(chunk.to(self.model.device))
                fs.append(f.cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    def token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        """d(f - penalty * CE) / d(one-hot) for each prompt, over the allowed tokens: [B, n, A] on the CPU."""
        grads = []
        for chunk, lam in zip(ids.split(self.batch_size), penalties.split(self.batch_size)):
            embeddings: list[torch.Tensor] = []
            lam = lam.to(self.model.device)
            with torch.enable_grad():
                f, ce, logprobs = self._forward(chunk.to(self.model.device), embeddings)
                (g,) = torch.autograd.grad((f - lam * ce).sum(), embeddings[0])
            grad = self.embed_scale * (g.float() @ self.allowed_embeddings.T)            # through the context
            n = chunk.shape[1]
            grad[:, 1:] += (lam[:, None, None] / (n - 1)) * logprobs.detach()[..., self.allowed]  # as a label
            grads.append(grad.cpu())
        return torch.cat(grads)

    def top_k(self, ids: torch.Tensor, penalties: torch.Tensor, k: int) -> torch.Tensor:
        """Per prompt and position, the k allowed tokens whose swap most increases the objective: [B, n, k] ids."""
        grad = self.token_gradients(ids, penalties)
        idx = grad.topk(min(k, grad.shape[-1]), dim=-1).indices
        return self.vocab.allowed[idx]
