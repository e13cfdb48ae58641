"""Random-weight models of real research shapes: `random:NAME[:layers=N][:seed=S]`.

The shapes are the published `config.json` hyper-parameters of real models, kept in `lm/shapes/NAME.json`
(the weights are not needed to measure speed or memory, and the model hub is not needed either).
Weights are seeded and deterministic for a given seed, device and dtype: the model is built on the meta
device, materialised directly in the target dtype on the target device (a 12B shape never needs an fp32
copy), then initialised by the architecture's own `_init_weights` (rotary tables and embedding scales
included). `layers=N` keeps only the first N blocks, for tests.

Tokenizer: a shape whose vocabulary has the bundled SmolLM2 tokenizer's size (49,152) uses it. Any other
gets a synthetic word-level tokenizer of exactly the config's vocabulary size: id i is a made-up word of
consonant-vowel syllables ("ba", "kovi", "tesumo", ... the digits of i in base 80), words separated by
spaces, with the config's BOS/EOS/PAD ids as special tokens. It decodes, re-encodes what it decodes and
gives an allowed-token list, but its words mean nothing (a `logit:" dog"` target has no token to find).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError

PREFIX = "random:"
SHAPES = Path(__file__).with_name("shapes")
CONSONANTS, VOWELS = "bdfghjklmnprstvz", "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]


def shape_names() -> list[str]:
    return sorted(p.stem for p in SHAPES.glob("*.json"))


@dataclass(frozen=True)
class RandomSpec:
    name: str
    layers: int | None = None
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> RandomSpec:
        """`random:NAME[:layers=N][:seed=S]`."""
        if not spec.startswith(PREFIX):
            raise ModelError(f"{spec!r} is not a random model spec (random:NAME)")
        name, *options = spec[len(PREFIX) :].split(":")
        if name not in shape_names():
            raise ModelError(
                f"unknown random model shape {name!r}: use random:NAME with one of {', '.join(shape_names())} "
                "(optionally :layers=N and :seed=S)"
            )
        values: dict[str, int] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("layers", "seed") or not re.fullmatch("[0-9]+", value):
                raise ModelError(f"bad option {option!r} in {spec!r}: use layers=N (N >= 1) or seed=S")
            if key in values:
                raise ModelError(f"{spec!r} gives {key} twice ({key}={values[key]} and {option}): give it once")
            values[key] = int(value)
        layers, most = values.get("layers"), shape_layers(name)
        if layers is not None and not 1 <= layers <= most:
            raise ModelError(
                f"bad option layers={layers} in {spec!r}: {name} has {most} layers, so use layers=N "
                f"with N from 1 to {most} (or no layers= for all of them)"
            )
        return cls(name, layers, values.get("seed", 0))


def shape_layers(name: str) -> int:
    """The number of blocks of a shape, read from its file (no transformers needed)."""
    return int(json.loads((SHAPES / f"{name}.json").read_text())["num_hidden_layers"])


def is_random(spec: str) -> bool:
    return spec.startswith(PREFIX)


def shape_config(name: str, layers: int | None = None):
    """The transformers config of a shape (published hyper-parameters), with only `layers` blocks if given."""
    from transformers import AutoConfig

    if name not in shape_names():
        raise ModelError(f"unknown random model shape {name!r}: use one of {', '.join(shape_names())}")
    data = {k: v for k, v in json.loads((SHAPES / f"{name}.json").read_text()).items() if not k.startswith("_")}
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    return shrink(config, layers) if layers is not None else config


def shrink(config, layers: int):
    """A copy of `config` with its first `layers` blocks only (per-layer lists cut to match); more blocks
    than the config has, or fewer than one, is a ModelError."""
    if not 1 <= layers <= config.num_hidden_layers:
        raise ModelError(
            f"cannot keep {layers} layers of a model of {config.num_hidden_layers}: "
            f"give 1 to {config.num_hidden_layers}"
        )
    config = config.__class__.from_dict(config.to_dict())
    n = layers
    config.num_hidden_layers = n
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:n]
    if isinstance(getattr(config, "max_window_layers", None), int):
        config.max_window_layers = min(config.max_window_layers, n)
    return config


def random_weights(config, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A transformers causal LM of `config` with seeded random weights, built without ever holding them
    in another dtype or on another device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    inputs, outputs = hf.get_input_embeddings(), hf.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    hf.to_empty(device=device)
    if tied:  # to_empty unties them: give the head a meta weight, so the tied matrix is drawn once, not twice
        outputs.weight = torch.nn.Parameter(torch.empty_like(outputs.weight, device="meta"))
    for module in hf.modules():  # built on meta, "initialised" there: initialise for real
        module.__dict__.pop("_is_hf_initialized", None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hf.initialize_weights()
    if tied:
        outputs.weight = inputs.weight
    hf.tie_weights()
    bad = [name for name, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if bad:
        raise ModelError(f"{type(hf).__name__}: cannot materialise {', '.join(bad[:3])} from the meta device")
    return hf


def word(i: int) -> str:
    """The synthetic token text of id i: its base-80 digits as syllables."""
    out = SYLLABLES[i % len(SYLLABLES)]
    i //= len(SYLLABLES)
    while i:
        out = SYLLABLES[i % len(SYLLABLES)] + out
        i //= len(SYLLABLES)
    return out


def synthetic_tokenizer(config):
    """A word-level tokenizer with exactly `config.vocab_size` entries (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = cfg.vocab_size
    names = {}
    for role in ("pad", "eos", "bos"):  # bos wins where ids coincide with eos (named by both)
        i = getattr(cfg, f"{role}_token_id", None)
        i = i[0] if isinstance(i, list) else i
        if isinstance(i, int) and 0 <= i < size:
            names[i] = "<|endoftext|>" if names.get(i) else f"<{role}>"
    vocab = {word(i): i for i in range(size)}
    for i, text in names.items():
        del vocab[word(i)]
        vocab[text] = i
    unk = names.get(getattr(cfg, "eos_token_id", None), next(iter(names.values()), None))
    if unk is None:  # no special ids in the config: the last id is the end of text
        del vocab[word(size - 1)]
        vocab[unk := "<|endoftext|>"] = size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    special = {
        f"{role}_token": text
        for i, text in names.items()
        for role in ("pad", "eos", "bos")
        if getattr(cfg, f"{role}_token_id", None) == i
    }
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, **special)
