"""Which tokens a dream may use, and which prompts are allowed.

Mutations only propose real, non-special tokens of the tokenizer's vocabulary (the embedding matrix
is often larger), never partial-byte tokens that decode to U+FFFD, optionally ASCII only, and never
a banned token. A prompt that contains a banned string (case-insensitive), or that does not
re-tokenise to the same ids when that check is on, fails its constraints and gets f = -inf.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ConfigError
from .cache import cache_dir

if TYPE_CHECKING:  # torch loads when a vocabulary is built, not when the CLI reads as_items
    import torch

DECODES = 1  # token flags: the token decodes to non-empty text without U+FFFD (a whole character)
PRINTABLE = 2  # ... and that text is printable ASCII
LETTERS = 4  # ... and that text has a letter (not only digits, punctuation, symbols or spaces)
WORD_START = 8  # ... and the token can begin a prompt as a word, not inside one (see `starts_word`)
FLAGS_VERSION = 4  # bump when the flags' meaning changes: it names the cache files
SPACE_MARKS = ("Ġ", "▁", " ", "Ċ", "\n", "\t")  # how byte-level and SentencePiece pieces spell a leading space


def starts_word(text: str, piece: str) -> bool:
    """Whether a token (its text decoded alone, and its raw vocabulary piece) can begin a prompt as a word: its
    text, past any leading space, starts with a letter or digit, and it has a leading space (in the piece, as
    byte-level BPE and SentencePiece mark it, or in the text) or does not start with a lower-case letter
    (" the", "The", "1971" do; "cken", "ulous", "(", "---" do not)."""
    word = text.lstrip()
    return word[:1].isalnum() and (piece.startswith(SPACE_MARKS) or text[:1].isspace() or not word[:1].islower())


def token_texts(tokenizer, n: int) -> list[str]:
    """The text of each of the first n tokens, decoded alone (the fast tokenizer's backend in one batch)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            return backend.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
        except Exception:  # a backend that refuses: the tokenizer's own batch decoding
            pass
    return tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)


def token_flags(tokenizer, n: int) -> np.ndarray:
    """DECODES | PRINTABLE | LETTERS | WORD_START flags (uint8) of the first n tokens. Decoding a 262k vocabulary
    takes seconds, so the flags are cached on disk (`vocab_cache_folder()`) under the tokenizer's fingerprint
    (itself kept in memory per tokenizer object); a cache that cannot be read or written is recomputed
    (docs/performance.md#large-vocabularies)."""
    key = fingerprint(tokenizer)
    path = None if key is None else vocab_cache_folder() / f"{key}-{n}-v{FLAGS_VERSION}.npy"
    if path is not None:
        try:
            flags = np.load(path)
            if flags.shape == (n,) and flags.dtype == np.uint8:
                return flags
        except (OSError, ValueError, EOFError):
            pass
    texts = token_texts(tokenizer, n)
    pieces = [p or "" for p in tokenizer.convert_ids_to_tokens(list(range(n)))]
    flags = np.fromiter(
        (
            (bool(t) and "\ufffd" not in t) * DECODES
            + (t.isascii() and t.isprintable()) * PRINTABLE
            + any(c.isalpha() for c in t) * LETTERS
            + starts_word(t, str(p)) * WORD_START
            for t, p in zip(texts, pieces)
        ),
        np.uint8,
        n,
    )
    if path is not None:
        save(path, flags)
    return flags


def vocab_cache_folder() -> Path:
    """Where token flags are cached: the cache directory's `vocab/` (see `model.cache_dir`)."""
    return cache_dir() / "vocab"


_fingerprints: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def fingerprint(tokenizer) -> str | None:
    """A hash of everything a token's decoded text depends on: the fast tokenizer's serialisation (vocabulary,
    merges, normaliser, decoder) and its added tokens; None for a tokenizer without one (no disk cache)."""
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(backend.to_str().encode())
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    h.update(repr(sorted((i, str(t)) for i, t in added.items())).encode())
    h.update(f"{type(tokenizer).__name__} {len(tokenizer)}".encode())
    key = h.hexdigest()[:32]
    try:
        _fingerprints[tokenizer] = key
    except TypeError:  # an object that takes no weak references: hashed again next time
        pass
    return key


def save(path: Path, flags: np.ndarray) -> None:
    """Write the flags atomically (a temporary file renamed into place); an unwritable cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".flags-", suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, flags)
        os.replace(tmp, path)
    except OSError:
        pass


class Tokenizer(Protocol):
    """What reverie uses of a tokenizer (transformers' tokenizers have it)."""

    pad_token_id: Any
    bos_token_id: Any
    eos_token_id: Any
    unk_token: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __len__(self) -> int: ...
    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]: ...
    def convert_ids_to_tokens(self, *args: Any, **kwargs: Any) -> Any: ...
    def get_vocab(self) -> dict[str, int]: ...


@dataclass
class Vocabulary:
    """The allowed tokens (sorted ids) and the prompt-level constraints."""

    tokenizer: Tokenizer
    allowed: torch.Tensor
    banned_strings: tuple[str, ...] = ()
    check_retokenization: bool = True
    allowed_set: frozenset[int] = field(default=frozenset(), repr=False)
    letters: torch.Tensor | None = field(default=None, repr=False)  # bool per token id: its text has a letter
    word_starts: torch.Tensor | None = field(default=None, repr=False)  # bool per token id, when prompts must
    #   begin with a word, not inside one nor with punctuation (`starts_word`); None: any first token

    @classmethod
    def build(
        cls,
        tokenizer,
        embedding_rows: int,
        *,
        ascii_only: bool = False,
        banned_tokens: tuple[str | int, ...] = (),
        banned_strings: tuple[str, ...] = (),
        check_retokenization: bool = True,
        word_start: bool = False,
    ) -> Vocabulary:
        import torch

        n = min(len(tokenizer), embedding_rows)
        flags = torch.from_numpy(token_flags(tokenizer, n))
        need = DECODES | PRINTABLE if ascii_only else DECODES
        ok = (flags & need) == need
        special = set(getattr(tokenizer, "all_special_ids", []))
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        banned = {resolve_token(tokenizer, t) for t in as_items(banned_tokens)}
        out = torch.tensor([i for i in special | banned if 0 <= i < n], dtype=torch.long)
        ok[out] = False
        keep = ok.nonzero()[:, 0]
        if not len(keep):
            raise ConfigError("no token of the vocabulary is allowed: loosen --ascii-only or the banned tokens")
        return cls(
            tokenizer,
            keep,
            as_items(banned_strings),
            check_retokenization,
            frozenset(keep.tolist()),
            (flags & LETTERS) > 0,
            (flags & WORD_START) > 0 if word_start else None,
        )

    @classmethod
    def for_model(cls, model, **options) -> Vocabulary:
        """The vocabulary of a loaded `Model` (tokenizer entries that have an embedding row)."""
        return cls.build(model.tokenizer, model.adapter.embed.weight.shape[0], **options)

    def __len__(self) -> int:
        return len(self.allowed)

    def decode(self, ids) -> list[str]:
        """Texts of a [rows, n] tensor or array of token ids, or of a list of id sequences; -1 is padding."""
        return self.tokenizer.batch_decode(_rows(ids), clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def ok(self, ids: torch.Tensor, texts: list[str] | None = None) -> torch.Tensor:
        """Bool per prompt: begins a word (if `word_starts`), passes banned strings and (if on) re-tokenisation."""
        import torch

        texts = self.decode(ids) if texts is None else texts
        good = []
        rows = _rows(ids)
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if self.check_retokenization else None
        for j, text in enumerate(texts):
            low = text.lower()
            passed = not any(b.lower() in low for b in self.banned_strings) and self._begins(rows[j])
            if passed and encoded is not None:
                passed = encoded[j] == rows[j]
            good.append(passed)
        return torch.tensor(good, dtype=torch.bool)

    def _begins(self, row: list[int]) -> bool:
        starts = self.word_starts
        return starts is None or not row or (0 <= row[0] < len(starts) and bool(starts[row[0]]))

    def random_prompts(self, m: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """m prompts of n allowed tokens (the first one that begins a word, if `word_starts`); each is
        re-tokenised until it round-trips (bounded tries)."""
        import torch

        out = []
        first = None if self.word_starts is None else self.allowed[self.word_starts[self.allowed]]
        for _ in range(m):
            ids = self.allowed[torch.randint(len(self.allowed), (n,), generator=generator)]
            if first is not None and len(first):
                ids[0] = first[torch.randint(len(first), (1,), generator=generator)]
            for _ in range(20):
                if bool(self.ok(ids[None])[0]) or not self.check_retokenization:
                    break
                ids = self._canonical(ids, n, generator)
            out.append(ids)
        return torch.stack(out)

    def _canonical(self, ids: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        import torch

        again = [t for t in self.encode(self.decode(ids[None])[0]) if t in self.allowed_set]
        while len(again) < n:
            again.append(int(self.allowed[torch.randint(len(self.allowed), (1,), generator=generator)]))
        return torch.tensor(again[:n])


def _rows(ids) -> list[list[int]]:
    """Id sequences without padding (-1) from a tensor, an array or a list of sequences."""
    rows = ids.tolist() if hasattr(ids, "tolist") else [list(map(int, r)) for r in ids]
    return [[t for t in r if t >= 0] for r in rows]


def as_items(value) -> tuple:
    """A tuple of items; a bare string (or id) where a sequence is expected is one item (ban=" dog" bans
    " dog", not its letters)."""
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def resolve_token(tokenizer, token: str | int) -> int:
    """A token given as an id (int) or as text that encodes to exactly one token."""
    if isinstance(token, bool) or not isinstance(token, (str, int)):
        raise ConfigError(f"a token is text (' dog') or a token id (123), not {type(token).__name__} {token!r}")
    if isinstance(token, int):
        i = token
        if not 0 <= i < len(tokenizer):
            raise ConfigError(f"token id {i} is not in the vocabulary (0-{len(tokenizer) - 1})")
        return i
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(
            f"{token!r} is not one token of the vocabulary (it encodes to {len(ids)}: {pieces}); "
            "give a single token, e.g. with a leading space"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if ids[0] == unk and token.strip() != tokenizer.unk_token:
        raise ConfigError(
            f"{token!r} is not in the vocabulary: the tokenizer reads it as its unknown token "
            f"{tokenizer.unk_token!r} (id {unk}); give a token it has, or a token id"
        )
    return ids[0]
