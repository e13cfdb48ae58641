"""What the model would write next: the next-token passes that the search's proposals and starts need
(docs/design.md#proposals-from-the-model), shared by both scorers so that they go through the scorer's
batch size and its out-of-memory back-off like every other pass.

    logprobs_after(prompts)             -> log p(v | the text before + prompt) of the token after each
                                           prompt, over the allowed tokens: [B, A]
    continuations(prompts, positions)   -> the most likely allowed token after each prompt's first
                                           positions[j] + 1 tokens: [B] ids

"The text before" is the template's text before the prompt; without a template, `logprobs_after` starts
from a paragraph break (what free text follows) and `continuations` from the prompt itself.
"""

from __future__ import annotations

import torch

from ..lm.model import Model
from ..lm.vocab import Vocabulary
from .objective import Objective


class Continuation:
    """Mixed into a scorer, which sets these four attributes."""

    objective: Objective
    model: Model
    vocab: Vocabulary
    batch_size: int

    def logprobs_after(self, prompts: torch.Tensor) -> torch.Tensor:
        """Log p(v | the template's text before the prompt, or a paragraph break, + the prompt) of the token
        after each prompt [B, t] (t may be 0), over the allowed tokens: [B, A] fp32 on the CPU."""
        before = self.objective.before
        context = before.cpu() if len(before) else paragraph_break(self.vocab)
        allowed = self.vocab.allowed.to(self.model.device)
        out = []
        for chunk in prompts.split(self.batch_size) if len(prompts) else (prompts,):
            ids = torch.cat([context.expand(len(chunk), -1), chunk], 1).to(self.model.device)
            with torch.inference_mode():
                hidden = self.model.trunk(ids)[:, -1].contiguous()  # (performance.md#contiguous-rows)
                logprobs = self.model.head(hidden).float().log_softmax(-1)
            out.append(logprobs[:, allowed].cpu())
        return torch.cat(out)

    def continuations(self, prompts: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's most likely allowed token after each prompt's first positions[j] + 1 tokens (after the
        template's text before the prompt, if any): prompts [C, n] -> ids [C]."""
        if not len(prompts):
            return torch.zeros(0, dtype=torch.long)
        before, device = self.objective.before.cpu(), self.model.device
        allowed = self.vocab.allowed.to(device)
        out = []
        for chunk, at in zip(prompts.split(self.batch_size), positions.split(self.batch_size)):
            ids = torch.cat([before.expand(len(chunk), -1), chunk], 1).to(device)
            with torch.inference_mode():
                hidden = self.model.trunk(ids)[torch.arange(len(ids), device=device), (len(before) + at).to(device)]
                logits = self.model.head(hidden).float()[:, allowed]
            out.append(self.vocab.allowed[logits.argmax(-1).cpu()])
        return torch.cat(out)


def paragraph_break(vocab: Vocabulary) -> torch.Tensor:
    """The ids of "\\n\\n", what free text follows; for a tokenizer without a token for it (a synthetic
    one), its beginning-of-text token (or end-of-text, or id 0), so that the model has a first position."""
    ids = vocab.encode("\n\n")
    if not ids:
        tokenizer = vocab.tokenizer
        ids = [next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0) if t is not None)]
    return torch.tensor(ids, dtype=torch.long)
