"""Devices and dtypes: parsing their names, and choosing the dtype when asked for "auto".

On a CPU, "auto" measures: a short probe times one forward pass of a one-layer random model of the
same shape (width, MLP, heads, vocabulary up to 32k) in fp32 and in bf16, and takes bf16 only if it is clearly
faster (fp32 is the exact one). Whether bf16 pays depends on the CPU (AMX makes it about 4x faster on
the bundled model; AVX512-BF16 alone made it slower, docs/performance.md#machines) and on the shape,
so the choice is cached per CPU (model name, flags, torch version, threads) and shape in
`cache_dir()/dtype-probe.json`. On CUDA, "auto" is bf16 where the GPU supports it, else fp16 (fp32
for Gemma, whose activations overflow fp16), without a probe. An explicit dtype is always used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

import torch

from ..errors import ModelError
from .cache import cache_dir, read_json, write_json

log = logging.getLogger("reverie")

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
BF16_MARGIN = 0.9  # bf16 is chosen only if it takes under 90% of fp32's time
PROBE_BATCH, PROBE_LENGTH, PROBE_REPEATS, PROBE_VOCAB = 32, 12, 2, 32768

Timer = Callable[[object, torch.dtype], float]  # (model config, dtype) -> seconds of one probe forward


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
        raise ModelError(
            f"device {device!r} needs CUDA, which this machine (or this torch build) does not have: use cpu"
        )
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: this machine has cuda:0-{torch.cuda.device_count() - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} is not available on this machine: use cpu")
    return parsed


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(device_map):
    """A device map as transformers (accelerate) takes it, checked: None, one of DEVICE_MAPS, a device this
    machine has ("cuda:1", or its index: 1, "1"), or a dict of module names to devices (names, indices,
    "cpu", "disk"). Anything else is a one-line ModelError."""
    how = f"use {', '.join(DEVICE_MAPS)}, a device this machine has (cpu, cuda:N) or a dict of modules to devices"
    if device_map is None or (isinstance(device_map, str) and device_map in DEVICE_MAPS):
        return device_map
    if isinstance(device_map, dict):
        for module, where in device_map.items():
            if not isinstance(module, str) or (where != "disk" and not is_device(where)):
                raise ModelError(f"the device map {device_map!r} puts {module!r} on {where!r}: {how}")
            if where != "disk":
                on_this_machine(where, f"the device map {device_map!r}")
        return device_map
    if isinstance(device_map, str) and device_map.isascii() and device_map.isdigit():
        device_map = int(device_map)
    if not is_device(device_map):
        raise ModelError(f"unknown device map {device_map!r}: {how}")
    on_this_machine(device_map, f"device map {device_map!r}")
    return device_map


def on_this_machine(where, what: str) -> None:
    try:
        parse_device(f"cuda:{where}" if isinstance(where, int) else where)
    except ModelError as e:
        raise ModelError(f"{what}: {e}") from None


def is_device(where) -> bool:
    """Whether `where` names a device (an index >= 0, a torch.device, a name torch knows), here or not."""
    if isinstance(where, bool):
        return False
    if isinstance(where, int):
        return where >= 0
    try:
        torch.device(where)
    except (RuntimeError, TypeError):
        return False
    return isinstance(where, (str, torch.device))


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags")), "")


def default_dtype(device: torch.device) -> torch.dtype:
    """Without a probe: bf16 where the hardware does it well (recent GPUs, CPUs with AVX512-BF16 or AMX),
    else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        flags = cpu_flags().split()
        return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype ("bf16"), as `load_model` takes it."""
    return DTYPE_NAMES.get(dtype, str(dtype))


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A dtype from its name; "auto" (or None) is `default_dtype` (no probe: see `choose_dtype`)."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype) and dtype in DTYPE_NAMES:
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def choose_dtype(
    dtype: str | torch.dtype | None, device: torch.device, config=None, *, timer: Timer | None = None
) -> tuple[torch.dtype, str]:
    """(dtype, why): an explicit dtype as given; "auto" (or None) as the module docstring says. `config` is
    the model's (transformers) config, needed for the CPU probe; `timer` replaces the timed probe."""
    if not (dtype is None or dtype == "auto"):
        parsed = parse_dtype(dtype, device)
        return parsed, f"{dtype_name(parsed)} as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"bf16: {torch.cuda.get_device_name(device)} supports it"
        if getattr(config, "model_type", "").startswith("gemma"):
            return torch.float32, "fp32: this GPU has no bf16, and Gemma's activations overflow fp16"
        return torch.float16, "fp16: this GPU has no bf16"
    if device.type != "cpu" or config is None:
        chosen = default_dtype(device)
        return chosen, f"{dtype_name(chosen)}: by the {device.type} device's flags, without a probe"
    return probe_choice(config, timer)


def shape_key(config) -> str:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    parts = [getattr(cfg, "model_type", "?")] + [
        str(getattr(cfg, k, None))
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        )
    ]
    return "/".join(parts)


def machine_key() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        name = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), ""
        )
    except OSError:
        name = ""
    flags = hashlib.sha1(cpu_flags().encode()).hexdigest()[:12]
    return (
        f"{name or platform.processor() or platform.machine()}|flags:{flags}|torch "
        f"{torch.__version__}|{torch.get_num_threads()} threads"
    )


def probe_choice(config, timer: Timer | None = None) -> tuple[torch.dtype, str]:
    """fp32 or bf16 on this CPU for this shape, from the cache or a probe (`timer`, default `probe_seconds`)."""
    path = cache_dir() / "dtype-probe.json"
    key = f"{machine_key()}|{shape_key(config)}"
    cached = cached_times(read_json(path).get(key)) if timer is None else None
    if cached:
        times, source = cached, "probed earlier on this CPU"
    else:
        timer = timer or probe_seconds
        try:
            times, source = (timer(config, torch.float32), timer(config, torch.bfloat16)), "probed now"
        except Exception as e:  # an architecture that cannot be built from its config alone
            chosen = default_dtype(torch.device("cpu"))
            reason = f"{dtype_name(chosen)}: by the CPU's flags (the speed probe failed: {type(e).__name__})"
            log.info("dtype %s", reason)
            return chosen, reason
    fp32, bf16 = times
    chosen = torch.bfloat16 if bf16 < BF16_MARGIN * fp32 else torch.float32
    reason = (
        f"{dtype_name(chosen)}: a forward pass of this shape took {bf16 * 1e3:.0f} ms in bf16 and "
        f"{fp32 * 1e3:.0f} ms in fp32 on this CPU ({source}; bf16 must be over 10% faster)"
    )
    if source == "probed now" and timer is probe_seconds:
        data = read_json(path)
        data[key] = {"dtype": dtype_name(chosen), "fp32": fp32, "bf16": bf16}
        write_json(path, data)
    log.info("dtype %s", reason)
    return chosen, reason


def cached_times(entry) -> tuple[float, float] | None:
    """(fp32, bf16) seconds of a probe cache entry, or None where the entry is not one (a cache edited
    or written by another version is probed again, never trusted)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
        return None
    fp32, bf16 = entry.get("fp32"), entry.get("bf16")
    return (fp32, bf16) if _seconds(fp32) and _seconds(bf16) else None


def _seconds(t: object) -> TypeGuard[float]:
    """A number of seconds as a cache entry holds it: an int or float, finite and positive (not a bool)."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


def probe_seconds(config, dtype: torch.dtype) -> float:
    """Median seconds of a forward pass of PROBE_BATCH x PROBE_LENGTH random tokens through a one-layer
    random-weight model of `config`'s shape in `dtype`, on the CPU (after one warm-up pass). The
    vocabulary is capped at PROBE_VOCAB: the unembedding is a matmul like the others, and initialising
    a 262k-row embedding would take longer than the probe."""
    from .synthetic import random_weights, shrink

    probe = shrink(config, 1)
    text = probe.get_text_config() if hasattr(probe, "get_text_config") else probe
    text.vocab_size = min(text.vocab_size, PROBE_VOCAB)
    hf = random_weights(probe, dtype, torch.device("cpu"), seed=0)
    ids = torch.randint(text.vocab_size, (PROBE_BATCH, PROBE_LENGTH), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for _ in range(PROBE_REPEATS + 1):
            start = time.perf_counter()
            hf(input_ids=ids, use_cache=False).logits.float()
            times.append(time.perf_counter() - start)
    del hf
    return statistics.median(times[1:])
