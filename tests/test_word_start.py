"""word_start: prompts begin with a word, not inside one (no "cken-", "ulous" or "---" first)."""

import math

import pandas as pd
import pytest
import torch

import reverie
from reverie import EPOConfig
from reverie.errors import ConfigError
from reverie.evidence.scan import data_starts
from reverie.lm.vocab import Vocabulary, starts_word

SMALL = dict(population=4, children=8, top_k=32, length=8, iters=4, seed=0)


@pytest.mark.parametrize(
    "text, piece, expected",
    [
        (" the", "Ġthe", True),
        ("the", "▁the", True),  # a leading space, as byte-level BPE or SentencePiece marks it
        ("The", "The", True),
        ("1971", "1971", True),
        (" Wien", "ĠWien", True),
        ("cken", "cken", False),
        ("ulous", "ulous", False),
        ("the", "the", False),  # the tail of a word
        ("(", "(", False),
        (" ---", "Ġ---", False),
        ("\n", "Ċ", False),  # not a word
    ],
)
def test_starts_word(text, piece, expected):
    assert starts_word(text, piece) is expected


def test_the_bundled_tokenizer_flags_fragments(tokenizer):
    vocab = Vocabulary.build(tokenizer, len(tokenizer), word_start=True)
    first = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    assert bool(vocab.word_starts[first(" decentral")]) and bool(vocab.word_starts[first("The")])
    assert not vocab.word_starts[first("cken")] and not vocab.word_starts[first("ulous")]
    assert Vocabulary.build(tokenizer, len(tokenizer)).word_starts is None  # off unless asked for
    rows = torch.tensor([[first("cken"), first(" the")], [first(" the"), first("cken")]])
    assert vocab.ok(rows).tolist() == [False, True]


def test_every_kept_prompt_begins_a_word(tiny_llama):
    """Random and beam starts alike: no prompt the search scores starts inside a word; the option off leaves
    the search as it was."""
    tok = tiny_llama.tokenizer
    for config in (EPOConfig.paper(**SMALL, word_start=True), EPOConfig(**SMALL, word_start=True)):
        r = reverie.dream(tiny_llama, "neuron:L1.N7", config, corpus=None)
        scored = r.history[r.history.activation > -math.inf]
        pieces = tok.convert_ids_to_tokens([int(ids[0]) for ids in scored["ids"]])
        texts = [tok.decode([int(ids[0])]) for ids in scored["ids"]]
        assert all(starts_word(t, p) for t, p in zip(texts, pieces))
    a = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**SMALL), corpus=None)
    b = reverie.dream(tiny_llama, "neuron:L1.N7", EPOConfig.paper(**SMALL, word_start=False), corpus=None)
    pd.testing.assert_frame_equal(a.history, b.history)


def test_data_starts_skip_windows_that_begin_inside_a_word(tiny_llama):
    tok = tiny_llama.tokenizer
    inside = tok("cken soup is what the old man made", add_special_tokens=False)["input_ids"][:6]
    begins = tok(" the old man made cken soup", add_special_tokens=False)["input_ids"][:6]
    windows = pd.DataFrame({"ids": [inside, begins], "activation": [9.0, 1.0], "cross_entropy": [3.0, 3.0]})
    vocab = Vocabulary.for_model(tiny_llama, word_start=True)
    starts = data_starts(windows, torch.tensor([0.5, 0.1]), vocab, 6)
    assert [s for s in starts if s] == [tuple(begins)]
    assert data_starts(windows, torch.tensor([0.5, 0.1]), Vocabulary.for_model(tiny_llama), 6)[1] == tuple(inside)
    with pytest.raises(ConfigError):
        data_starts(windows.iloc[:1], torch.tensor([0.5, 0.1]), vocab, 6)
