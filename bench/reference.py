"""The reference path: a straightforward implementation of the paper, kept to measure reverie against.

Same algorithm and random draws as `reverie.epo.EPO`, without the speed work: every child gets a full
forward pass with full fp32 log-softmax (no prefix reuse, no memo of scored prompts, no fused
cross-entropy), every member's gradient is recomputed each iteration, through a one-hot matmul over
the whole embedding matrix in the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reverie.search.epo import EPO
from reverie.scoring.packed import Scorer


class ReferenceScorer(Scorer):
    def token_gradients(self, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
        E = self.model.adapter.embed.weight
        grads = []
        for chunk, lam in zip(ids.split(self.batch_size), penalties.split(self.batch_size)):
            chunk, lam = chunk.to(self.model.device), lam.to(self.model.device)
            one_hot = F.one_hot(chunk, E.shape[0]).to(E.dtype).requires_grad_(True)
            with torch.enable_grad(), self.model.capture(list(self.target.hooks)) as cache:
                logits = self.model.hf(inputs_embeds=(one_hot @ E) * self.embed_scale, use_cache=False).logits.float()
                cache["logits"] = logits
                ce = -(logits[:, :-1].log_softmax(-1) * one_hot[:, 1:]).sum(-1).mean(-1)
                objective = (self.target.value(cache).float() - lam * ce).sum()
                (g,) = torch.autograd.grad(objective, one_hot)
            grads.append(g.float()[..., self.allowed].cpu())
        return torch.cat(grads)

    def _score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ces = [], []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                chunk = chunk.to(self.model.device)
                with self.model.capture(list(self.target.hooks)) as cache:
                    logits = self.model.hf(input_ids=chunk, use_cache=False).logits.float()
                cache["logits"] = logits
                ce = -logits[:, :-1].log_softmax(-1).gather(-1, chunk[:, 1:, None])[..., 0].mean(-1)
                fs.append(self.target.value(cache).float().cpu())
                ces.append(ce.cpu())
        return torch.cat(fs), torch.cat(ces)

    def score_children(self, parents, children, parent, pos):
        return self.score(children)


class ReferenceEPO(EPO):
    def _score(self, ids, parents=None, parent=None, pos=None):
        f, ce = self.scorer.score(ids)
        f[~self.vocab.ok(ids)] = -torch.inf
        return f, ce

    def _top_k(self, population):
        return list(self.scorer.top_k(population, self.penalties, self.config.top_k))
