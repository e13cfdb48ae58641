"""What a scorer is built from: its own typed options, checked where they are made. `EPOConfig.scoring()`
gives them for a run (the vocabulary, template, fluency, prompt length, batch size and scorer fields);
`make_scorer` reads nothing else of a config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..choices import ScorerName


@dataclass(frozen=True)
class VocabularyOptions:
    """Which tokens prompts may use and which prompts pass (docs/design.md#constraints)."""

    ascii_only: bool = False
    ban_tokens: tuple[str | int, ...] = ()  # tokens never proposed (text or id)
    ban_strings: tuple[str, ...] = ()  # prompts containing these (case-insensitive) are rejected
    check_retokenization: bool = True  # decode→encode must give back the same ids
    word_start: bool = False  # prompts begin with a word, not inside one


@dataclass(frozen=True)
class ScoringOptions:
    vocabulary: VocabularyOptions = field(default_factory=VocabularyOptions)
    template: str | None = None  # fixed context around the prompt, "... {prompt} ..."
    fluency: tuple[tuple[str, float], ...] = ()  # (model spec or "self", weight); () = the target model
    length: int = 12  # prompt tokens (the initial prompt's length wins)
    init_prompt: str | None = None
    longest: int | None = None  # the longest prompt insertions may make (None: fixed length)
    batch_size: int | None = None  # prompts per forward pass; None = from free memory
    scorer: ScorerName = "packed"
    horizon: int | None = None  # children's cross-entropy terms beyond it come from the parent (approximate)


class HasScoringOptions(Protocol):
    """Anything that gives a scorer's options: an `EPOConfig`."""

    def scoring(self) -> ScoringOptions: ...
