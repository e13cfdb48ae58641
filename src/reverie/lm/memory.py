"""How much memory a dream needs, before it runs out of it.

`estimate` adds up, in bytes: the weights; the larger of the two passes of an iteration (they run one
after the other), i.e. the gradient pass over the population (forward and backward through the
one-hot input: every block's activations kept for the backward, fp32 attention and norms, full fp32
logits, log-probabilities and gradients over the vocabulary) and a scoring pass over `batch_size`
prompts (logits of the model dtype plus fp32 copies, per-block activations); and a fixed overhead
(the Python process with torch and transformers on a CPU, the CUDA context on a GPU). `check` refuses,
in one line with what to change, an estimate larger than the memory available. bench/memory.py
compares the estimate with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError
from .dtypes import DTYPE_NAMES, parse_dtype

GiB = 1 << 30
CPU_OVERHEAD = 600 << 20  # python + torch + transformers + tokenizer, resident before any model
CUDA_OVERHEAD = 500 << 20  # CUDA context and kernels, outside torch's allocator


@dataclass(frozen=True)
class Estimate:
    """Bytes needed by a dream; `loaded` when the weights are already in memory (a loaded Model)."""

    weights: int
    gradients: int
    scoring: int
    overhead: int
    dtype: torch.dtype
    loaded: bool = False

    @property
    def total(self) -> int:
        return self.weights + max(self.gradients, self.scoring) + self.overhead

    @property
    def still_needed(self) -> int:
        """What is not yet allocated: all of it, or all but the weights (and process) once loaded."""
        return self.total - (self.weights + self.overhead if self.loaded else 0)

    def describe(self) -> str:
        return (
            f"{gib(self.total)} in {DTYPE_NAMES.get(self.dtype, self.dtype)}: weights {gib(self.weights)}, "
            f"gradient pass {gib(self.gradients)}, scoring pass {gib(self.scoring)}, overhead {gib(self.overhead)}"
        )


def gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def shape_of(model_or_config) -> dict:
    """d_model, d_mlp, layers, vocabulary and parameter count of a loaded Model or a transformers config."""
    if hasattr(model_or_config, "adapter"):
        m = model_or_config
        params = {id(p): p.numel() for p in m.hf.parameters()}
        return dict(
            d=m.adapter.d_model,
            d_mlp=m.adapter.d_mlp,
            layers=m.n_layers,
            vocab=m.adapter.embed.weight.shape[0],
            params=sum(params.values()),
            dtype=m.dtype,
            loaded=True,
        )
    config = model_or_config
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    return dict(
        d=d, d_mlp=d_mlp, layers=layers, vocab=cfg.vocab_size, params=count_parameters(config), dtype=None, loaded=False
    )


def count_parameters(config) -> int:
    """Parameters of a config's model, counted on the meta device (no memory, any size)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    return sum({id(p): p.numel() for p in hf.parameters()}.values())


def estimate(
    model_or_config,
    population: int = 8,
    length: int = 12,
    batch_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    children: int = 32,
    device: str | torch.device = "cpu",
) -> Estimate:
    """Bytes a dream of `population` prompts of `length` tokens needs, scoring `batch_size` prompts per
    pass (default: all population x children at once), for a loaded `Model` (its dtype, weights
    already resident) or a transformers config (in `dtype`, default fp32)."""
    s = shape_of(model_or_config)
    dt = s["dtype"] or parse_dtype(dtype or "fp32", torch.device(device))
    size = dt.itemsize
    d, d_mlp, layers, vocab = s["d"], s["d_mlp"], s["layers"], s["vocab"]
    # gradient pass: per token and block, the activations autograd keeps (projections, MLP, fp32 norm
    # and attention copies); at the end fp32 logits, log-softmax and their gradients, and the projected
    # one-hot gradients (two parts) over the vocabulary
    tokens = population * length
    per_block = size * (10 * d + 5 * d_mlp) + 4 * 8 * d
    gradients = tokens * (layers * per_block + vocab * (size + 20))
    # scoring pass, as scoring.batching sizes it: logits (model dtype + fp32 copies), activations
    batch = batch_size or population * children
    scoring = batch * length * (vocab * (size + 8) + 16 * d_mlp * size)
    overhead = CUDA_OVERHEAD if torch.device(device).type == "cuda" else CPU_OVERHEAD
    return Estimate(s["params"] * size, gradients, scoring, overhead, dt, s["loaded"])


def available(device: str | torch.device) -> int:
    """Bytes free: on CUDA torch's free device memory; on a CPU the available system memory (psutil
    where installed, else /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def check(est: Estimate, device: str | torch.device, free: int | None = None) -> Estimate:
    """Raise a one-line ModelError if `est` does not fit the memory available on `device` (or `free` bytes)."""
    free = available(device) if free is None else free
    if est.still_needed <= free:
        return est
    hints = ["a smaller --batch-size"]
    if est.dtype == torch.float32:
        hints.append("--dtype bf16 (or fp16 on a GPU without bf16)")
    if torch.device(device).type == "cuda":
        hints.append("device_map='auto' to spread the model over several GPUs")
    else:
        hints.append("a GPU, or a machine with more memory")
    raise ModelError(
        f"this dream needs about {gib(est.still_needed)} more memory but {torch.device(device)} has "
        f"{gib(free)} free ({est.describe()}): try {', '.join(hints)}"
    )


def check_weights(config, dtype: torch.dtype, device: str | torch.device, free: int | None = None) -> int | None:
    """Before any weights are read or made: a one-line ModelError if the weights of a transformers config
    in `dtype` (and the process around them) do not fit the memory available on `device`. Returns the
    number of parameters (None where transformers cannot count them)."""
    try:
        params = count_parameters(config)
    except Exception:  # a config transformers cannot build by itself (remote code...): no check
        return None
    need = params * dtype.itemsize + (CUDA_OVERHEAD if torch.device(device).type == "cuda" else CPU_OVERHEAD)
    free = available(device) if free is None else free
    if need <= free:
        return params
    hints = ["--dtype bf16"] if dtype == torch.float32 else []
    hints.append(
        "--device-map auto to spread it over several GPUs"
        if torch.device(device).type == "cuda"
        else "a GPU, or a machine with more memory"
    )
    raise ModelError(
        f"the model's weights need about {gib(need)} in {DTYPE_NAMES.get(dtype, dtype)} but "
        f"{torch.device(device)} has {gib(free)} free: try {' or '.join(hints)}"
    )
