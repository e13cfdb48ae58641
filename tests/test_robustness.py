"""Robustness of a dream (evidence/robustness.py): in corpus contexts, its minimal trigger and its resampled
variants, each checked against a direct scoring; the report's section (escaped, and in a real browser) and
the export's fields."""

import json

import numpy as np
import pytest
import torch

from conftest import TEXTS, open_page, plant_best
from reverie import EPOConfig, dream
from reverie.errors import ConfigError
from reverie.evidence.robustness import robustness
from reverie.evidence.tokens import per_token
from reverie.report.run import build_report, write_report
from reverie.runs.export import COLUMNS, export, read_export
from reverie.scoring import make_scorer

TARGET = "neuron:L1.N7"
XSS = "<script>alert(1)</script>"
MARKUP = "<i>markup</i> & more"
PROMPTS = [
    "The quick brown fox jumps over it",
    "Rivers carry sediment down to the sea",
    "Once upon a time there was a king",
]


def score(model, ids) -> float:
    """The target's activation of a prompt, straight from a scorer (position -1: the prompt's last token;
    a scorer needs 2 tokens, so one token is read per token)."""
    if len(ids) == 1:
        return float(per_token(model, TARGET, [ids])[0][-1])
    scorer = make_scorer(model, TARGET, EPOConfig(length=len(ids), check_retokenization=False))
    f, _ = scorer.score(torch.tensor([ids]))
    return float(f[0])


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def results(tiny_llama, prompts, corpus):
    return robustness(tiny_llama, TARGET, prompts, corpus=str(corpus), contexts=6, window=8, variants=3, k=4)


def test_the_minimal_trigger_keeps_80_percent_and_is_no_longer(results, prompts, tiny_llama):
    for r, ids in zip(results, prompts):
        assert r.activation == pytest.approx(score(tiny_llama, ids), abs=1e-4)
        assert 1 <= len(r.trigger_ids) <= len(ids)
        assert r.trigger_positions == sorted(r.trigger_positions)
        assert r.trigger_ids == [ids[i] for i in r.trigger_positions]
        direct = score(tiny_llama, r.trigger_ids)
        assert direct == pytest.approx(r.trigger_activation, abs=1e-4)
        assert direct >= r.activation - 0.2 * abs(r.activation) - 1e-4  # really keeps 80%
        removed = r.steps[r.steps["removed"]]
        assert len(removed) == len(ids) - len(r.trigger_ids)
        assert (removed["activation"] >= r.needed).all() and (
            r.steps[~r.steps["removed"]]["activation"] < r.needed
        ).all()
        assert r.steps["drop_worst"].is_monotonic_increasing  # tried in attribution order, least important first
    assert any(len(r.trigger_ids) < len(r.ids) for r in results)  # (something was removed somewhere)


def test_in_context_values_are_a_direct_scoring_of_the_concatenated_text(results, prompts, tiny_llama):
    for r, ids in zip(results, prompts):
        assert len(r.contexts) == 6 and r.note is None
        assert r.contexts["offset"].tolist() == [2, 4, 6, 8, 2, 4]  # a quarter, half, three quarters, all
        for c in r.contexts.itertuples():
            assert len(c.before_ids) == c.offset and len(c.before_ids) + len(c.after_ids) == 8
            assert any(tiny_llama.tokenizer.decode(c.before_ids + c.after_ids) in t for t in TEXTS)  # corpus text
            assert c.activation == pytest.approx(score(tiny_llama, c.before_ids + ids), abs=1e-4)
            full = per_token(tiny_llama, TARGET, [c.before_ids + ids + c.after_ids])[0]
            assert c.activation == pytest.approx(float(full[c.offset + len(ids) - 1]), abs=1e-5)  # the dream's last
    assert results[0].contexts["before_ids"].tolist() == results[1].contexts["before_ids"].tolist()  # same windows


def test_variants_differ_from_the_dream_in_one_position_each(results, prompts, tiny_llama):
    for r, ids in zip(results, prompts):
        v = r.variants
        assert sorted(set(v["position"])) == list(range(1, len(ids)))  # the first token has no context
        assert (v.groupby("position").size() == 3).all()
        logits = tiny_llama.hf(torch.tensor([ids], device=tiny_llama.device)).logits.float().log_softmax(-1)[0]
        for row in v.itertuples():
            differ = [j for j, (a, b) in enumerate(zip(row.ids, ids)) if a != b]
            assert differ == [row.position] and len(row.ids) == len(ids)
            assert row.ids[row.position] == row.replacement_id
            assert row.logprob == pytest.approx(float(logits[row.position - 1, row.replacement_id]), abs=1e-3)
            assert row.activation == pytest.approx(score(tiny_llama, row.ids), abs=1e-4)
            assert row.keeps == (row.activation >= r.needed)
        for _, group in v.groupby("position"):
            assert group["logprob"].is_monotonic_decreasing  # the most likely first
        summary = r.summary()
        assert summary["variant_keep_share"] == pytest.approx(v["keeps"].mean())
        assert summary["context_median"] == pytest.approx(float(np.median(r.contexts["activation"])))


def test_it_is_deterministic_and_refuses_bad_options(results, prompts, tiny_llama, corpus):
    again = robustness(tiny_llama, TARGET, prompts[:1], corpus=str(corpus), contexts=6, window=8, variants=3, k=4)[0]
    assert again.to_dict() == results[0].to_dict()
    none = robustness(tiny_llama, TARGET, prompts[:1], corpus=str(corpus), window=60, variants=1, k=4)[0]
    assert none.contexts.empty and "no document" in none.note
    with pytest.raises(ConfigError, match="keep"):
        robustness(tiny_llama, TARGET, prompts, keep=1.5)
    with pytest.raises(ConfigError, match="window"):
        robustness(tiny_llama, TARGET, prompts, window=0)


# ------------------------------------------------------------------------------ the report and the export


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """One document of 30-odd tokens (windows of 24 fit), with markup in it."""
    path = tmp_path_factory.mktemp("long") / "doc.txt"
    path.write_text(f"{TEXTS[0]} {MARKUP} {TEXTS[1]}")
    return str(path)


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory, tiny_llama):
    """A small run whose best dream is rewritten to `<script>alert(1)</script>`."""
    out = tmp_path_factory.mktemp("runs") / "robust"
    dream(tiny_llama, TARGET, EPOConfig(population=4, children=8, top_k=32, length=8, iters=3, seed=0), out=out)
    plant_best(out, XSS, tiny_llama.tokenizer)
    return out


def test_the_report_has_the_section_with_model_text_escaped(xss_run, tiny_llama, long_corpus):
    html = build_report(xss_run, model=tiny_llama, points=1, k=4, baseline_prompts=16, corpus=long_corpus)
    section = html[html.index('<h2 id="robustness">') : html.index("<h2>Frontier")]
    assert 'id="robustness-table"' in section and 'alt="Robustness"' in section
    assert 1 <= section.count('<tr><td class="prompt">') <= 3
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and XSS not in section
    assert "&lt;i&gt;" in section and "<i>" not in section  # the corpus's text is escaped too
    assert "no contexts" not in section
    without = build_report(xss_run)
    assert "No robustness in this report: it needs the model" in without


def strict(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_export_carries_the_fields_and_parses_strictly(xss_run, tiny_llama, long_corpus, tmp_path):
    paths = {
        fmt: export(xss_run, fmt, out=tmp_path / f"x.{fmt}", model=tiny_llama, corpus=long_corpus)
        for fmt in ("json", "csv", "parquet")
    }
    data = strict(paths["json"].read_text())
    tested = data["robustness"]
    assert 1 <= len(tested) <= 3
    rows = data["prompts"]
    by_ids = {tuple(t["ids"]): t for t in tested}
    for r in rows:
        assert list(r) == COLUMNS
        t = by_ids.get(tuple(r["ids"]))
        if t is None:
            assert all(r[c] is None for c in ("context_activations", "trigger_ids", "trigger_activation"))
            continue
        assert r["kind"] == "best" or any(q["kind"] == "best" and q["ids"] == r["ids"] for q in rows)
        assert r["context_activations"] == [c["activation"] for c in t["contexts"]] and len(t["contexts"]) == 16
        assert r["trigger_ids"] == t["trigger"]["ids"] and len(r["trigger_ids"]) <= len(r["ids"])
        assert r["trigger_activation"] == t["trigger"]["activation"] >= t["summary"]["needed"]
        assert r["variant_activations"] == [v["activation"] for v in t["variants"]]
    assert XSS in [t["text"] for t in tested]
    reference = read_export(paths["json"])
    for fmt in ("csv", "parquet"):
        back = read_export(paths[fmt])
        assert list(back.columns) == COLUMNS, fmt
        for c in ("context_activations", "trigger_ids", "variant_activations"):
            assert [None if v is None else list(v) for v in back[c]] == reference[c].tolist(), (fmt, c)
        assert back["trigger_text"].tolist() == reference["trigger_text"].tolist(), fmt


def test_an_export_without_robustness_columns_still_reads(xss_run, tiny_llama, tmp_path):
    path = export(xss_run, "json", out=tmp_path / "old.json", model=tiny_llama, robust=0)
    data = strict(path.read_text())
    assert data["robustness"] == []
    data["prompts"] = [{k: v for k, v in r.items() if k in COLUMNS[:11]} for r in data["prompts"]]
    path.write_text(json.dumps(data))
    back = read_export(path)
    assert list(back.columns) == COLUMNS and back["trigger_ids"].isna().all()


def test_the_section_renders_in_chromium(browser, xss_run, tiny_llama, long_corpus, tmp_path):
    path = write_report(xss_run, model=tiny_llama, points=1, k=4, corpus=long_corpus, out=tmp_path / "r.html")
    page, problems, dialogs = open_page(browser, path, clipboard=False)
    assert problems == [] and dialogs == []
    assert page.locator("#robustness-table").is_visible()
    assert XSS in page.locator("#robustness-table").inner_text()
    width = page.eval_on_selector('img[alt="Robustness"]', "i => i.complete ? i.naturalWidth : 0")
    assert width > 300
    details = page.locator("details.robust").first
    assert not details.locator(".robust-variants").is_visible()
    details.locator("summary").click()
    assert details.locator(".robust-variants").is_visible() and details.locator("mark.span").count() == 16
    page.close()
