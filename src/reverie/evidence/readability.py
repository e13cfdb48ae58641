"""Readability measured outside the model: the share of a text's words that are real words.

A dream's cross-entropy is the paper's fluency, but predictable junk (digit runs, `====`, sub-word
fragments) scores low on it too. The real-word share does not ask the model: it splits a text at
whitespace, case-folds each word and strips punctuation and symbols from both of its ends, and counts
the words seen at least `MIN_COUNT` times in a reference corpus (by default the bundled Wikipedia
shard), over all words. A word that is nothing but punctuation or symbols counts as not real.
On the bundled model's bench neurons the best dataset windows score a median of about 0.88.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections import Counter

from ..files import read_json, write_json
from ..lm.cache import cache_dir

MIN_COUNT = 5


def normalize(word: str) -> str:
    """A word as the measure compares it: case-folded, punctuation and symbols stripped from both ends."""
    word = word.casefold()
    edge = lambda c: unicodedata.category(c)[0] in "PS"  # noqa: E731
    start, end = 0, len(word)
    while start < end and edge(word[start]):
        start += 1
    while end > start and edge(word[end - 1]):
        end -= 1
    return word[start:end]


@functools.lru_cache(maxsize=4)
def real_words(corpus: str = "bundled", min_count: int = MIN_COUNT) -> frozenset[str]:
    """The words seen at least `min_count` times in `corpus` (counted once, kept in the cache folder)."""
    from .scan import documents

    name = corpus if corpus == "bundled" else hashlib.sha1(corpus.encode()).hexdigest()[:12]
    path = cache_dir() / f"words-{name}-{min_count}.json"
    cached = read_json(path)
    if isinstance(cached, dict) and isinstance(cached.get("words"), list):
        return frozenset(cached["words"])
    counts: Counter[str] = Counter()
    for text in documents(corpus):
        counts.update(normalize(w) for w in text.split())
    words = sorted(w for w, n in counts.items() if n >= min_count and w)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"corpus": corpus, "min_count": min_count, "words": words})
    except OSError:
        pass  # a read-only cache: counted again next time
    return frozenset(words)


def real_word_share(text: str, words: frozenset[str] | None = None) -> float:
    """The share of `text`'s whitespace-separated words that are real words (0 for a text with none)."""
    words = real_words() if words is None else words
    split = text.split() if isinstance(text, str) else []
    return sum(normalize(w) in words for w in split) / len(split) if split else 0.0
