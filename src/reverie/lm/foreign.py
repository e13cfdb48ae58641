"""Models from other interpretability libraries as reverie Models: `as_model(obj)`.

- a reverie `Model` passes through;
- an nnsight `LanguageModel` (or any nnsight model over a transformers causal LM) is its underlying
  transformers model and tokenizer, wrapped like any other (`Model(hf, tokenizer)`);
- a TransformerLens `HookedTransformer` is wrapped in `Lens`, a small module with the transformers-like
  surface reverie uses (a config, input and output embeddings, `forward(input_ids=... | inputs_embeds=...)`
  returning `.logits`). Its hook points are TransformerLens's own: `Model.capture` reads them through
  the model's HookPoints (`Lens.hook_points`), so `blocks.1.mlp.hook_post` is exactly what
  `run_with_cache` returns. Its attention is TransformerLens's, which takes no packed layout: the
  fast path's probes (`fast.capabilities`) say no, and children are scored by whole-row passes.

Wrapping freezes the model (`eval()`, no parameter gradients), as `Model` does for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .model import Adapter, Model

__all__ = ["as_model", "Lens"]


def as_model(obj) -> Model:
    """A reverie Model for `obj`: a Model, a TransformerLens HookedTransformer or an nnsight LanguageModel."""
    if isinstance(obj, Model):
        return obj
    if _from_library(obj, "transformer_lens") and hasattr(obj, "hook_dict") and hasattr(obj, "cfg"):
        if getattr(obj, "tokenizer", None) is None:
            raise ModelError("this HookedTransformer has no tokenizer: pass tokenizer= when building it")
        return Model(Lens(obj), obj.tokenizer, spec=f"transformer-lens:{obj.cfg.model_name}")
    if _from_library(obj, "nnsight"):
        if not getattr(obj, "dispatched", True) and hasattr(obj, "dispatch"):
            obj.dispatch()  # a model loaded lazily (on the meta device): load its weights
        hf = getattr(obj, "_module", None)
        if not isinstance(hf, nn.Module) or getattr(obj, "tokenizer", None) is None:
            raise ModelError(f"nnsight {type(obj).__name__}: found no transformers model and tokenizer inside it")
        return Model(hf, obj.tokenizer)
    raise ModelError(
        f"a model is a reverie Model (see load_model), a TransformerLens HookedTransformer or an "
        f"nnsight LanguageModel, not {type(obj).__name__} {obj!r:.60}"
    )


def _from_library(obj, library: str) -> bool:
    return any(c.__module__.split(".")[0] == library for c in type(obj).__mro__)


@dataclass
class Output:
    logits: torch.Tensor


class TokenEmbedding(nn.Module):
    """TransformerLens's token embedding as transformers has it: `weight` [vocab, d_model], ids -> embeddings."""

    def __init__(self, embed: Any):  # TransformerLens's Embed (an nn.Module): W_E [vocab, d_model]
        super().__init__()
        self.inner = embed

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.W_E

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.W_E[ids]  # an embedding LayerNorm (BLOOM) is applied after, in Lens.forward


class Unembedding(nn.Module):
    """TransformerLens's unembedding with `weight` [vocab, d_model]."""

    def __init__(self, unembed: Any):  # TransformerLens's Unembed (an nn.Module): W_U [d_model, vocab]
        super().__init__()
        self.inner = unembed

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.W_U.T

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden)


class Lens(nn.Module):
    """A HookedTransformer with the surface of a transformers causal LM, as far as reverie uses it."""

    def __init__(self, lens: Any):  # a HookedTransformer: its cfg, blocks, hook points and forward are its own
        super().__init__()
        cfg = lens.cfg
        self.lens = lens
        self.embed = TokenEmbedding(lens.embed)
        self.unembed = Unembedding(lens.unembed)
        self.config = SimpleNamespace(
            name_or_path=f"transformer-lens:{cfg.model_name}",
            model_type="transformer-lens",
            num_attention_heads=cfg.n_heads,
            max_position_embeddings=cfg.n_ctx,
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers,
            vocab_size=cfg.d_vocab,
        )

    @property
    def hook_points(self) -> dict:
        """TransformerLens's hook points by name, which `Model.capture` reads instead of the blocks' modules."""
        return self.lens.hook_dict

    def reverie_adapter(self) -> Adapter:
        """The parts of the model (`Adapter.find` asks for them)."""
        cfg, blocks = self.lens.cfg, self.lens.blocks
        return Adapter(
            embed=self.embed,
            blocks=blocks,
            mlp_out=[getattr(b, "mlp", None) for b in blocks],
            attn=[b.attn for b in blocks],
            unembed=self.unembed,
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp or 0,
            n_heads=cfg.n_heads,
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.unembed

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        attention_mask=None,
        **kwargs,
    ) -> Output:
        """Logits [B, n, vocab] of whole rows at positions 0..n-1, from token ids or input embeddings
        (the token embeddings, before positional embeddings, as `get_input_embeddings()` returns them).
        The token embeddings run through `get_input_embeddings()` (hooks on it see them), then the
        model's `hook_embed`, positional embeddings and blocks."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        n = embeds.shape[1]
        if position_ids is not None and not torch.equal(position_ids.reshape(-1, n)[0].cpu(), torch.arange(n)):
            raise NotImplementedError("a TransformerLens model runs whole rows only (positions 0..n-1)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise NotImplementedError("a TransformerLens model runs unpadded rows only")
        lens = self.lens
        if lens.cfg.post_embedding_ln:
            embeds = lens.embed.ln(embeds)
        tokens = (
            input_ids
            if input_ids is not None
            else torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        )
        residual, shortformer = lens.get_residual(
            lens.hook_embed(embeds), 0, False, None, tokens, return_shortformer_pos_embed=True
        )
        return Output(lens(residual, start_at_layer=0, shortformer_pos_embed=shortformer))
