"""`EPOConfig`: every option of one EPO run, checked whenever one is made. The defaults are the paper's
(M, r, k, n, λ range, restarts) except where a paired benchmark made an addition the default: half the slots
start from the best dataset windows where `dream` finds some, the others from a beam search, and half the
children come from the model (docs/performance.md#proposals-from-the-model).
`EPOConfig.paper()` is the paper's EPO exactly; `EPOConfig.gcg()` is GCG."""

from __future__ import annotations

import math
import numbers
from dataclasses import Field, asdict, dataclass, fields
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Literal, get_args, get_origin, get_type_hints

from ..choices import ScorerName, StartKind
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ..scoring.options import ScoringOptions


@dataclass
class EPOConfig:
    population: int = 8  # M
    children: int = 32  # r, children per member per iteration
    top_k: int = 512  # k, candidate tokens per position
    top_k_start: int | None = None  # grow k linearly from this to top_k over the run (None: fixed k)
    length: int = 12  # n, prompt tokens (the initial prompt's length wins)
    insert_rate: float = 0.0  # probability that a child is an insertion...
    delete_rate: float = 0.0  # ...or a deletion (the rest are swaps); see edits.py
    min_length: int | None = None  # prompt length bounds with insertions/deletions
    max_length: int | None = None  #   (default: length - 4 and length + 4)
    iters: int = 300  # T
    penalty_min: float = 0.1  # λ_min
    penalty_max: float = 10.0  # λ_max
    penalties: tuple[float, ...] | None = None  # explicit λ per slot (overrides min/max)
    restart_every: int = 30  # T_restart; 0 = never
    adaptive_restart: bool = False  # restart only after restart_every iterations with no slot improving
    restart_penalty: tuple[float, float] = (0.667, 6.0)
    seed: int = 0
    init_prompt: str | None = None
    fluency: tuple[tuple[str, float], ...] = ()  # (model spec or "self", weight): whose CE is fluency; () = self
    repetition_penalty: float = 0.0  # ρ: selection subtracts ρ · (fraction of tokens repeating an earlier one)
    junk_penalty: float = 8.0  # γ: selection adds γ nats to CE per unit of junk share above the
    #   allowance (tokens without a letter or repeating one): epo.py (the paper's: 0)
    avoid_ids: tuple[int, ...] = ()  # tokens of earlier dreams (diverse dreams)...
    avoid_penalty: float = 0.0  # ...selection subtracts this · (fraction of tokens among them)
    template: str | None = None  # fixed context around the prompt, e.g. "Once upon a time {prompt}"
    init_ids: tuple[tuple[int, ...], ...] = ()  # starting prompt per slot (e.g. dataset windows); () = random
    starts: StartKind = "data"  # "data": half the slots at the best dataset windows that `dream` finds
    #   (runs/dream.py), the rest as "beam"; "beam" search on the objective,
    #   "sampled": text the model writes, "random" prompts (the paper's)
    lm_guidance: float = 0.0  # β: rank candidates by gradient + β·σ·log p(token | prefix)
    lm_children: float = 0.5  # fraction of swaps whose token is drawn from the model's next-token top-p
    #   (the paper's: 0, every token from the gradient's top-k)
    pair_rate: float = 0.0  # fraction of swaps that also set the next token to the model's continuation
    time_budget: float | None = None  # seconds; stop cleanly when spent
    ban_tokens: tuple[str | int, ...] = ()  # tokens never proposed (text or id)
    ban_strings: tuple[str, ...] = ()  # prompts containing these (case-insensitive) are rejected
    ascii_only: bool = False
    check_retokenization: bool = True  # decode→encode must give back the same ids
    word_start: bool = False  # prompts begin with a word, not inside one (lm.vocab.starts_word)
    batch_size: int | None = None  # prompts per forward pass; None = from free memory
    scorer: ScorerName = "packed"  # "packed" (the fast path) or "plain" (the paper's, the spec): scoring/
    ce_horizon: int | None = None  # an approximation for speed: a child's cross-entropy terms more than
    #   this many tokens after its swap are its parent's; members' scores stay exact (None: exact)

    @classmethod
    def paper(cls, **kwargs) -> EPOConfig:
        """The paper's EPO: random starts, every child's token from the gradient's top-k, no junk penalty."""
        return cls(**{"starts": "random", "lm_children": 0.0, "junk_penalty": 0.0, **kwargs})

    @classmethod
    def gcg(cls, penalty: float = 0.0, **kwargs) -> EPOConfig:
        """Greedy Coordinate Gradient: one prompt, one fixed penalty, no restarts (the paper's EPO otherwise)."""
        kwargs.setdefault("children", 512)
        return cls.paper(population=1, penalties=(penalty,), restart_every=0, **kwargs)

    def scoring(self) -> ScoringOptions:
        """The scorer's own options (`make_scorer` reads these only)."""
        from ..scoring.options import ScoringOptions, VocabularyOptions

        vocabulary = VocabularyOptions(
            self.ascii_only, self.ban_tokens, self.ban_strings, self.check_retokenization, self.word_start
        )
        longest = self.length_bounds()[1] if self.variable_length else None
        return ScoringOptions(
            vocabulary,
            self.template,
            self.fluency,
            self.length,
            self.init_prompt,
            longest,
            self.batch_size,
            self.scorer,
            self.ce_horizon,
        )

    def slot_penalties(self) -> torch.Tensor:
        import torch

        if self.penalties is not None:
            return torch.tensor(self.penalties, dtype=torch.float32)
        if self.population == 1:
            return torch.tensor([self.penalty_min], dtype=torch.float32)
        return torch.logspace(math.log10(self.penalty_min), math.log10(self.penalty_max), self.population)

    def __post_init__(self) -> None:
        """Check every option (also after `dataclasses.replace` and in `from_dict`): ConfigError if one is wrong."""
        for f in fields(self):
            setattr(self, f.name, _conform(f, getattr(self, f.name)))
        for name in ("population", "children", "top_k", "top_k_start", "length", "batch_size", "ce_horizon"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.length < 2:
            raise ConfigError("length must be at least 2 tokens (cross-entropy needs a next token)")
        if self.iters < 0 or self.restart_every < 0:
            raise ConfigError("iters and restart_every cannot be negative")
        if not 0 < self.penalty_min <= self.penalty_max:
            raise ConfigError(f"need 0 < penalty_min <= penalty_max, got {self.penalty_min} and {self.penalty_max}")
        if self.penalties is not None and len(self.penalties) != self.population:
            raise ConfigError(f"{len(self.penalties)} penalties given for a population of {self.population}")
        if self.penalties is not None and min(self.penalties) < 0:
            raise ConfigError(f"penalties cannot be negative, got {self.penalties}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(
                f"time_budget must be a positive number of seconds (or None: no limit), got {self.time_budget}"
            )
        if (
            self.repetition_penalty < 0
            or self.junk_penalty < 0
            or self.avoid_penalty < 0
            or any(w < 0 for _, w in self.fluency)
            or (self.fluency and not sum(w for _, w in self.fluency) > 0)
        ):
            raise ConfigError(
                "repetition_penalty, junk_penalty and fluency weights must be >= 0 (and some fluency weight > 0)"
            )
        if self.template is not None and self.template.count("{prompt}") != 1:
            raise ConfigError(
                f"a template needs {{prompt}} exactly once, e.g. 'Once upon a time {{prompt}}': got {self.template!r}"
            )
        if not (0 <= self.insert_rate and 0 <= self.delete_rate and self.insert_rate + self.delete_rate <= 1):
            raise ConfigError("insert_rate and delete_rate must be >= 0 with a sum <= 1")
        lo, hi = self.length_bounds()
        if self.variable_length and not 2 <= lo <= self.length <= hi:
            raise ConfigError(f"need 2 <= min_length <= length <= max_length, got {lo}, {self.length}, {hi}")
        if self.top_k_start is not None and self.top_k_start > self.top_k:
            raise ConfigError(f"top_k_start ({self.top_k_start}) cannot exceed top_k ({self.top_k})")
        if len(self.init_ids) > self.population:
            raise ConfigError(f"{len(self.init_ids)} starting prompts given for a population of {self.population}")
        if any(len(p) not in (0, self.length) for p in self.init_ids):
            raise ConfigError(f"every starting prompt must be {self.length} tokens (the prompt length)")
        if self.init_ids and self.init_prompt:
            raise ConfigError("give an initial prompt or starting prompts, not both")
        if any(not b.strip() for b in self.ban_strings):
            raise ConfigError("a banned string cannot be empty or blank (every prompt contains it): drop it")
        if any(isinstance(t, str) and not t for t in self.ban_tokens):
            raise ConfigError("a banned token cannot be empty: give its text (e.g. ' dog') or its id")
        if self.lm_guidance < 0 or not 0 <= self.lm_children <= 1 or not 0 <= self.pair_rate <= 1:
            raise ConfigError(
                f"need lm_guidance >= 0 and lm_children and pair_rate from 0 to 1, got "
                f"{self.lm_guidance}, {self.lm_children} and {self.pair_rate}"
            )
        low, high = self.restart_penalty
        if not 0 <= low <= high:
            raise ConfigError(f"restart_penalty must be a range lo <= hi, got {self.restart_penalty}")

    @property
    def variable_length(self) -> bool:
        return self.insert_rate > 0 or self.delete_rate > 0

    def length_bounds(self) -> tuple[int, int]:
        return (
            self.min_length if self.min_length is not None else max(2, self.length - 4),
            self.max_length if self.max_length is not None else self.length + 4,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EPOConfig:
        """The config of `to_dict` (lists from JSON become tuples on construction)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown EPO options {sorted(unknown)}")
        return cls(**d)


def as_config(config: EPOConfig | None) -> EPOConfig:
    """`config`, or the defaults for None; anything but an EPOConfig is a ConfigError."""
    if config is None:
        return EPOConfig()
    if not isinstance(config, EPOConfig):
        raise ConfigError(
            f"config must be an EPOConfig, not a {type(config).__name__}: pass EPOConfig(**d) for a dict of options"
        )
    return config


_HINTS = get_type_hints(EPOConfig)  # each field's declared type, resolved


def _conform(field: Field, value):
    """`value` as the type `field` declares, or a ConfigError naming the field and that type (for a closed
    set of names, the names)."""
    hint = _HINTS[field.name]
    try:
        return _as_type(value, hint)
    except ValueError:
        if get_origin(hint) is Literal:
            raise ConfigError(f"unknown {field.name} {value!r}: use one of {', '.join(get_args(hint))}") from None
        finite = " (floats finite)" if "float" in field.type else ""
        raise ConfigError(f"{field.name} must be {field.type}{finite}, got {value!r}") from None


def _as_type(value, hint):
    """`value` as type `hint`: integers as int, real numbers as finite floats, lists as tuples, and a bare
    string where a tuple of strings goes as one item (ban_strings="dog" bans "dog", not its letters).
    Raises ValueError if `value` is not of that type."""
    if isinstance(hint, UnionType):
        for option in get_args(hint):
            try:
                return _as_type(value, option)
            except ValueError:
                pass
        raise ValueError
    if get_origin(hint) is Literal:
        if isinstance(value, str) and value in get_args(hint):
            return value
        raise ValueError
    if get_origin(hint) is tuple:
        items = get_args(hint)
        if items[-1] is Ellipsis:  # tuple[X, ...]
            value = (value,) if isinstance(value, str) else value
            items = (items[0],) * len(value) if isinstance(value, (list, tuple)) else ()
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ValueError
        return tuple(_as_type(v, t) for v, t in zip(value, items))
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int and is_number and isinstance(value, numbers.Integral):
        return int(value)
    if hint is float and is_number and math.isfinite(value):
        return float(value)
    if hint in (bool, str, NoneType) and isinstance(value, hint):
        return value
    raise ValueError
