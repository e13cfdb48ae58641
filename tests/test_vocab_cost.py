"""What scales with the vocabulary stays cheap and gives the same answers (docs/performance.md#large-vocabularies):
the allowed-token list cached on disk, several labels per row in the tiled cross-entropy, the children's
prefix terms without full log-probabilities, a logit target unembedding its own position only, and top-k
over the allowed tokens."""

import numpy as np
import pytest
import torch

from conftest import VOCAB, build_tiny
from reverie import EPOConfig, make_scorer
from reverie.fast.unembed import head_logprobs
from reverie.lm import vocab as vocab_module
from reverie.lm.vocab import Vocabulary
from reverie.scoring.objective import top_k_tokens
from reverie.scoring.packed import prefix_logprobs


def reference_allowed(tokenizer, n: int, ascii_only: bool = False, banned=()) -> list[int]:
    """The allowed list computed plainly: every token decoded alone by the tokenizer and checked in Python."""
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return [
        i
        for i, t in enumerate(texts)
        if i not in special
        and i not in banned
        and t
        and "\ufffd" not in t
        and (not ascii_only or (t.isascii() and t.isprintable()))
    ]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    return tmp_path / "vocab"


@pytest.mark.parametrize("ascii_only", [False, True])
def test_cached_allowed_list_equals_computing_it(tokenizer, cache, ascii_only):
    dog = tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    expected = reference_allowed(tokenizer, VOCAB, ascii_only, banned={dog, 7})
    cold = Vocabulary.build(tokenizer, VOCAB, ascii_only=ascii_only, banned_tokens=(" dog", 7))
    assert len(list(cache.glob("*.npy"))) == 1  # computed once, then cached on disk
    warm = Vocabulary.build(tokenizer, VOCAB, ascii_only=ascii_only, banned_tokens=(" dog", 7))
    assert cold.allowed.tolist() == warm.allowed.tolist() == expected
    assert warm.allowed_set == frozenset(expected)
    # fewer embedding rows than tokens: the list stops there (its own cache entry)
    assert Vocabulary.build(tokenizer, 1000).allowed.tolist() == reference_allowed(tokenizer, 1000)


def test_token_texts_equal_batch_decode(tokenizer):
    n = 5000
    assert vocab_module.token_texts(tokenizer, n) == tokenizer.batch_decode(
        [[i] for i in range(n)], clean_up_tokenization_spaces=False
    )


def test_a_bad_cache_file_is_recomputed(tokenizer, cache):
    key = vocab_module.fingerprint(tokenizer)
    assert key == vocab_module.fingerprint(tokenizer) and len(key) == 32
    path = cache / f"{key}-{VOCAB}-v{vocab_module.FLAGS_VERSION}.npy"
    cache.mkdir(parents=True)
    path.write_bytes(b"not an array")
    assert Vocabulary.build(tokenizer, VOCAB).allowed.tolist() == reference_allowed(tokenizer, VOCAB)
    np.save(path, np.zeros(3, np.uint8))  # the wrong length: recomputed too
    assert Vocabulary.build(tokenizer, VOCAB).allowed.tolist() == reference_allowed(tokenizer, VOCAB)


def test_an_unwritable_cache_still_builds(tokenizer, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("REVERIE_CACHE", str(blocker))  # cache_dir()/vocab cannot be created
    assert Vocabulary.build(tokenizer, 2000).allowed.tolist() == reference_allowed(tokenizer, 2000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_several_labels_per_row_equal_full_log_probabilities(tokenizer, dtype, monkeypatch):
    model = build_tiny("llama", tokenizer)
    model.hf.to(dtype)
    monkeypatch.setattr("reverie.fast.unembed.TILE_BYTES", 64 * 4096 * 4)  # several row blocks
    hidden = torch.randn(150, 64, dtype=dtype)
    labels = torch.randint(0, VOCAB, (150, 3))
    labels[::4, 2] = -1  # padding
    with torch.inference_mode():
        full = model.head(hidden).float().log_softmax(-1)
        got = head_logprobs(model, hidden, labels)
        one = head_logprobs(model, hidden, labels[:, 0])
    expected = full.gather(-1, labels.clamp_min(0)).masked_fill(labels < 0, -torch.inf)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(one, expected[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("first", [0, 1])
def test_prefix_terms_equal_full_log_probabilities(tokenizer, first):
    """The children's prefix cross-entropy terms, as the full [M, n, V] log-probabilities gave them."""
    model = build_tiny("llama", tokenizer)
    g = torch.Generator().manual_seed(0)
    m, n, kids = 3, 7, 40
    parents = torch.randint(0, VOCAB, (m, n), generator=g)
    parent, pos = torch.randint(0, m, (kids,), generator=g), torch.randint(0, n, (kids,), generator=g)
    children = parents[parent].clone()
    children[torch.arange(kids), pos] = torch.randint(0, VOCAB, (kids,), generator=g)
    hidden = torch.randn(m, n - first, 64, generator=g)
    with torch.inference_mode():
        got = prefix_logprobs(model, hidden, parents, children, parent, pos, first)
        lp = model.head(hidden).float().log_softmax(-1)
    j = torch.arange(first, n)
    expected = lp[parent[:, None], j - first, children[:, j]].where(j <= pos[:, None], 0).sum(-1)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_logit_target_reads_the_last_position_only(tokenizer, monkeypatch):
    """A logit target gets the logits of its own position ([B, 1, V]), with the plain path's values."""
    model = build_tiny("llama", tokenizer)
    config = EPOConfig(length=5, template="I saw a {prompt} today")
    packed, plain = (make_scorer(model, 'logit:" dog"', config, scorer=s) for s in ("packed", "plain"))
    ids = packed.vocab.random_prompts(4, 5, torch.Generator().manual_seed(0))
    shapes = []
    head = model.head
    monkeypatch.setattr(model, "head", lambda h: shapes.append(tuple(h.shape)) or head(h))
    f, ce = packed.score(ids)
    assert (4, 1, 64) in shapes and not any(len(s) == 3 and s[1] > 1 for s in shapes)
    f_plain, ce_plain = plain.score(ids)
    assert torch.allclose(f, f_plain, atol=1e-4) and torch.allclose(ce, ce_plain, atol=1e-4)
    for got, expected in zip(packed.gradient_parts(ids), plain.gradient_parts(ids)):
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_top_k_over_allowed_tokens_equals_top_k_over_the_vocabulary():
    """Top-k of the gradient restricted to the allowed tokens = top-k of the whole one-hot gradient with the
    other tokens excluded, and combining the two parts in one pass equals the two-step combination."""
    g = torch.Generator().manual_seed(0)
    V = 5000
    allowed = torch.randperm(V, generator=g)[:3000].sort().values
    df, dce = torch.randn(2, 6, V, generator=g)
    full = df - 2.5 * dce
    masked = torch.full_like(full, -torch.inf)
    masked[:, allowed] = full[:, allowed]
    expected = masked.topk(64, dim=-1).indices
    got = top_k_tokens(torch.add(df[:, allowed], dce[:, allowed], alpha=-2.5), allowed, 64)
    assert torch.equal(got, expected)
