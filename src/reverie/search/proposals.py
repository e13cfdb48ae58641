"""Proposals from the model itself (docs/design.md#proposals-from-the-model): tokens and starting prompts
that the model finds likely, for a search that stays fluent without a corpus.

- `sample_tokens`: tokens drawn from next-token distributions (top-p, over the allowed tokens), for the
  children whose new token comes from the model rather than from the gradient (`EPOConfig.lm_children`,
  as BEAST draws its candidates; Sadasivan et al. 2024).
- `model_text`: prompts the model writes itself, sampled token by token after a paragraph break (or the
  template's text before the prompt), for starts without a corpus (`EPOConfig.starts = "sampled"`).
- `continuations`: the model's most likely next token after a prefix, for pair edits that swap a token
  and set the next one to its continuation (`EPOConfig.pair_rate`), so that a word the gradient wants
  but that takes two tokens can appear in one step (the paper's named local minimum).

The gradient ranks tokens by what they would do to L_λ; the model's own distribution ranks them by how
natural they are where they go. The gradient's list at a position is mostly tokens the model finds absurd
there, which is where a search from random starts stalls.
"""

from __future__ import annotations

import torch

from ..lm.vocab import Vocabulary

TOP_P = 0.95  # nucleus of the next-token distribution that LM proposals draw from...
NUCLEUS_MAX = 2048  # ...among at most this many most likely tokens


def sample_tokens(
    logprobs: torch.Tensor,
    allowed: torch.Tensor,
    generator: torch.Generator,
    top_p: float = TOP_P,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens drawn from next-token log-probabilities over the allowed tokens [R, A]: from the smallest
    set of most likely tokens whose probability reaches `top_p` of the allowed tokens' mass (at most
    NUCLEUS_MAX of them). One draw per row, or one per entry of `rows` (the row each draw uses)."""
    rows = torch.arange(len(logprobs)) if rows is None else rows
    if not len(rows):
        return torch.zeros(0, dtype=torch.long)
    lp = logprobs.float()
    values, order = (lp - lp.logsumexp(-1, keepdim=True)).topk(min(NUCLEUS_MAX, lp.shape[-1]), -1)  # sorted
    p = values.exp()
    p = p.masked_fill(p.cumsum(-1) - p >= top_p, 0.0)  # tokens after the nucleus is full
    pick = torch.multinomial(p[rows], 1, generator=generator)[:, 0]
    return allowed[order[rows, pick]]


def model_text(
    model,
    vocab: Vocabulary,
    count: int,
    length: int,
    generator: torch.Generator,
    context: torch.Tensor | None = None,
    top_p: float = TOP_P,
) -> torch.Tensor:
    """`count` prompts of `length` allowed tokens that the model writes itself: [count, length] ids.

    Each is sampled token by token (top-p over the allowed tokens) after `context` (ids; default a
    paragraph break), and must round-trip through the tokenizer like every prompt; rows that do not are
    sampled again (a few rounds), and any still missing are random prompts."""
    out: list[torch.Tensor] = []
    for _ in range(4):
        need = count - len(out)
        if need <= 0:
            break
        prompts = torch.zeros(need + need // 2 + 1, 0, dtype=torch.long)
        for _ in range(length):
            logprobs = next_logprobs(model, vocab, prompts, context)
            prompts = torch.cat([prompts, sample_tokens(logprobs, vocab.allowed, generator, top_p)[:, None]], 1)
        out += list(prompts[vocab.ok(prompts)][:need])
    if len(out) < count:
        out += list(vocab.random_prompts(count - len(out), length, generator))
    return torch.stack(out[:count])


def next_logprobs(model, vocab: Vocabulary, prompts: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Log p(v | `context` + the prompt) of the token after each prompt [B, t] (t may be 0), over the allowed
    tokens: [B, A] fp32 on the CPU. `context`: ids (default: a paragraph break, or the tokenizer's
    beginning-of-text token where it has no token for one)."""
    if context is None or not len(context):
        context = _paragraph_break(vocab)
    ids = torch.cat([context.cpu().expand(len(prompts), -1), prompts], 1).to(model.device)
    with torch.inference_mode():
        hidden = model.trunk(ids)[:, -1]
        logprobs = model.head(hidden[:, None])[:, 0].float().log_softmax(-1)
    return logprobs[:, vocab.allowed.to(model.device)].cpu()


def _paragraph_break(vocab: Vocabulary) -> torch.Tensor:
    """The ids of "\\n\\n", what free text follows; for a tokenizer without a token for it (a synthetic
    one), its beginning-of-text token (or end-of-text, or id 0), so that the model has a first position."""
    ids = vocab.encode("\n\n")
    if not ids:
        tokenizer = vocab.tokenizer
        ids = [next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0) if t is not None)]
    return torch.tensor(ids, dtype=torch.long)


def continuations(
    model, vocab: Vocabulary, prompts: torch.Tensor, positions: torch.Tensor, before: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's most likely allowed token after each prompt's first positions[j] + 1 tokens (after the
    template's text `before`, if any): one forward pass over prompts [C, n] -> ids [C]."""
    if not len(prompts):
        return torch.zeros(0, dtype=torch.long)
    before = torch.zeros(0, dtype=torch.long) if before is None else before.cpu()
    ids = torch.cat([before.expand(len(prompts), -1), prompts], 1).to(model.device)
    at = (len(before) + positions).to(model.device)
    with torch.inference_mode():
        hidden = model.trunk(ids)[torch.arange(len(ids), device=model.device), at]
        logits = model.head(hidden[:, None])[:, 0].float()[:, vocab.allowed.to(model.device)]
    return vocab.allowed[logits.argmax(-1).cpu()]
