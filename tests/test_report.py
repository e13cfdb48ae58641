"""Reports: the random-prompt baseline, the paper's plots, and a self-contained report.html that renders in
a real browser (headless Chromium via Playwright), escapes every dreamed text and runs only its own script."""

import dataclasses
import json
import math
import re
import shutil
import sys

import pandas as pd
import pytest

import reverie
from conftest import open_page, plant_best
from reverie import EPOConfig, dream, random_baseline
from reverie.evidence.scan import ScanConfig, scan
from reverie.report.pages import environment
from reverie.report.run import build_report, write_report
from reverie.search.frontier import versus_data
from test_cli import SMALL, run

XSS = "<script>alert(1)</script></div>"
CONFIG = EPOConfig(population=4, children=8, top_k=32, length=8, iters=4, seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("runs") / "n7"
    dream(tiny_llama, "neuron:L1.N7", CONFIG, out=out)
    return out


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory, tiny_llama):
    """A real run whose best dream is `<script>alert(1)</script></div>` (its history row is rewritten to
    that text and those tokens, as if EPO had found it)."""
    out = tmp_path_factory.mktemp("runs") / "xss"
    dream(
        tiny_llama,
        "neuron:L1.N7",
        EPOConfig(population=2, children=4, top_k=16, length=8, iters=2, init_prompt=XSS, check_retokenization=False),
        out=out,
    )
    plant_best(out, XSS, tiny_llama.tokenizer)
    return out


NONE = "none at this fluency yet"
ODD = "line one\nline two\x07 $x^2$ \\n"


def words(html: str) -> str:
    """A page without its embedded images (whose base64 may spell anything)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


@pytest.fixture(scope="module")
def far_run(tmp_path_factory, run_dir):
    """The small run, every prompt moved to cross-entropy > 20 and its best dream rewritten to text with a
    newline, a control character, a `$`-pair and a literal backslash-n."""
    out = tmp_path_factory.mktemp("runs") / "far"
    shutil.copytree(run_dir, out)
    history = pd.read_parquet(out / "history.parquet")
    history["cross_entropy"] += 20
    history.at[history["activation"].idxmax(), "text"] = ODD
    history.to_parquet(out / "history.parquet", index=False)
    return out


def test_empty_fluency_buckets_say_so_not_nan(far_run, tiny_llama):
    html = words(build_report(far_run, model=tiny_llama, points=2, k=4))
    assert "nan" not in html.lower() and html.count(NONE) == 3  # <= 4, 5 and 6 are empty
    index = (
        environment()
        .get_template("index.html.j2")
        .render(
            meta={"model": "m", "dtype": "fp32", "epo": {"iters": 1, "population": 1}, "seeds": [0]},
            rows=[
                {
                    "target": "t",
                    "status": "done",
                    "seeds_done": 1,
                    "seeds": 1,
                    "seeds_failed": 0,
                    "seconds": 1.0,
                    "error": None,
                    **{f"activation_{t}": math.nan for t in ("ce4", "any")},
                    "activation_any": 1.0,
                    "cross_entropy_any": 22.0,
                    "prompt_any": ODD,
                }
            ],
            links={"t": []},
            tags=[("ce4", "≤ 4"), ("any", "any")],
            counts={"done": 1},
            generated="now",
            isfinite=lambda v: isinstance(v, float) and math.isfinite(v),
        )
    )
    assert NONE in index and "nan" not in index.lower()
    assert "line one⏎line two\\x07 $x^2$ \\n" in index  # one line, every character visible


def test_newlines_and_control_characters_are_visible(far_run):
    html = build_report(far_run)
    assert "line one⏎line two\\x07 $x^2$ \\n" in html and "line one\nline" not in html


def test_template_context_is_shown_around_the_optimised_span(tmp_path, tiny_llama):
    """The template's text, escaped, around the best dream; and around each attributed prompt's tokens,
    under a colour scale for the heat-map."""
    config = dataclasses.replace(CONFIG, iters=6, template="Once <b>upon</b> {prompt} and then")
    dream(tiny_llama, "neuron:L1.N7", config, out=tmp_path / "t")
    html = build_report(tmp_path / "t", model=tiny_llama, points=1, k=4, baseline_prompts=64)
    best = reverie.load_run(tmp_path / "t").best()["text"]
    assert "<b>" not in best and "<" not in best  # (the assertion below reads it raw)
    assert re.search(
        r'<p id="template">.*<span class="ctx">Once &lt;b&gt;upon&lt;/b&gt; </span>'
        r'<mark class="span">[^<]+</mark><span class="ctx"> and then</span>',
        html,
    )
    assert 'id="heat-scale"' in html and 'class="ctx t-before"' in html and 'class="ctx t-after"' in html
    assert f'<mark class="span">{best}</mark>' in html  # shown with the best dream


def test_no_template_no_context(run_dir):
    assert 'id="template"' not in build_report(run_dir)


def test_random_baseline_matches_a_direct_computation(tiny_llama):
    base = random_baseline(tiny_llama, "direction:L1", n=64, length=8, seed=3)
    assert base.n == 64 and base.length == 8 and base.std > 0
    assert random_baseline(tiny_llama, "direction:L1", n=64, length=8, seed=3) == base  # seeded
    assert abs(float(base.z(base.mean))) < 1e-9 and math.isclose(float(base.z(base.mean + base.std)), 1.0)
    # a dream of the direction sits many standard deviations above random prompts
    result = dream(tiny_llama, "direction:L1", EPOConfig(population=4, children=16, top_k=64, length=8, iters=15))
    assert base.z(result.best()["activation"]) > 3


def test_versus_data_compares_at_equal_fluency():
    history = pd.DataFrame(
        {
            "iteration": 0,
            "ids": [[1], [2], [3]],
            "text": ["a", "b", "c"],
            "activation": [1.0, 3.0, 5.0],
            "cross_entropy": [4.0, 6.0, 9.0],
        }
    )
    windows = pd.DataFrame({"activation": [2.0, 2.5], "cross_entropy": [6.5, 3.0], "text": ["w1", "w2"]})
    v = versus_data(history, windows)
    assert v["window_activation"] == 2.5 and v["dream_activation"] is not None
    assert math.isnan(v["dream_activation"]) and v["windows_above"] == 1  # nothing as fluent as 3.0
    v = versus_data(history, windows.iloc[:1])
    assert v["dream_activation"] == 3.0 and v["margin"] == 1.0 and v["windows_above"] == 0


def test_report_has_every_section(run_dir, tiny_llama, corpus):
    windows = scan(tiny_llama, ["neuron:L1.N7", "neuron:L1.N8"], str(corpus), ScanConfig(window=8, top=5, chunk=16))
    html = build_report(run_dir, scan=windows, model=tiny_llama, points=2, k=4)
    front = reverie.load_run(run_dir).frontier()
    assert html.count('src="data:image/png;base64,') == 4  # frontier, dreams vs data, over iterations, robustness
    assert html.count("<tr>") >= len(front) + 5 + 4  # frontier rows + windows + best table
    assert 'id="windows"' in html and "Best dataset window" in html
    assert 'class="tok"' in html and "Random-prompt baseline" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from anywhere
    without = build_report(run_dir)  # no model: says so, still renders
    assert "need the model" in without and 'class="tok"' not in without and without.count("data:image/png") == 2


def test_direction_report_shows_z_scores(tmp_path, tiny_llama):
    dream(tiny_llama, "direction:L1", CONFIG, out=tmp_path / "d")
    html = build_report(tmp_path / "d", model=tiny_llama, points=1, k=4, baseline_prompts=64)
    assert re.search(r"<th[^>]*>z</th>", html)
    assert not re.search(r"<th[^>]*>z</th>", build_report(tmp_path / "d"))  # no baseline without the model


def test_dreamed_markup_is_escaped(xss_run, tiny_llama):
    html = build_report(xss_run, model=tiny_llama, points=4, k=4)
    assert html.count("<script") == 1 and "alert(1)" in html  # the page's own script, no dreamed one
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/div&gt;" in html


def test_cli_dream_writes_report_and_report_command(monkeypatch, capsys, tiny_dir, tmp_path, corpus):
    code, out, err = run(
        monkeypatch,
        capsys,
        "scan",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--corpus",
        corpus,
        "--out",
        tmp_path / "scan",
        "--window",
        "8",
        "--chunk",
        "16",
    )
    assert code in (0, None), err
    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "a",
        "--scan",
        tmp_path / "scan",
        *SMALL,
    )
    assert code in (0, None), err
    html = (tmp_path / "a" / "report.html").read_text()
    assert 'id="windows"' in html and 'class="tok"' in html
    assert any(reverie.load_run(tmp_path / "a").config.init_ids)  # --scan also starts from the data...
    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "plain",
        "--scan",
        tmp_path / "scan",
        "--random-start",
        "--no-report",
        *SMALL,
    )
    assert code in (0, None) and not any(reverie.load_run(tmp_path / "plain").config.init_ids)  # ...unless told not to
    code, out, err = run(monkeypatch, capsys, "report", tmp_path / "a", "--no-model", "--out", tmp_path / "r.html")
    assert code in (0, None), err
    assert (tmp_path / "r.html").exists() and 'class="tok"' not in (tmp_path / "r.html").read_text()
    code, _, err = run(monkeypatch, capsys, "report", tmp_path / "a", "--scan", tmp_path / "nowhere")
    assert code == 2 and "cannot read the scan" in err
    code, _, err = run(monkeypatch, capsys, "report", tmp_path / "nothing")
    assert code == 2
    code, _, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "b",
        "--scan",
        tmp_path / "nowhere",
        *SMALL,
    )
    assert code == 2 and not (tmp_path / "b").exists()  # fails before any work


# ------------------------------------------------------------------------------ in a real browser


def test_report_renders_in_chromium(browser, run_dir, tiny_llama, corpus, tmp_path):
    windows = scan(tiny_llama, ["neuron:L1.N7"], str(corpus), ScanConfig(window=8, top=5, chunk=16))
    path = write_report(run_dir, scan=windows, model=tiny_llama, points=2, k=4, out=tmp_path / "report.html")
    page, problems, dialogs = open_page(browser, path, clipboard=False)
    assert problems == [] and dialogs == []
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 4 and min(widths) > 300  # every plot decoded (the robustness plot too)
    rows = page.locator("#frontier tr").count() - 1
    assert rows == len(reverie.load_run(run_dir).frontier()) and page.locator("#frontier").is_visible()
    assert page.locator("#windows tr").count() > 1
    tokens = page.locator(".attr .tok")
    assert tokens.count() >= 8
    tip = tokens.first.locator(".tip")
    assert not tip.is_visible()
    tokens.first.hover()
    assert tip.is_visible() and "worst substitute" in tip.inner_text()  # hover details
    page.close()


def test_dreamed_script_is_text_in_chromium(browser, xss_run, tiny_llama):
    path = write_report(xss_run, model=tiny_llama, points=4, k=4)
    page, problems, dialogs = open_page(browser, path, clipboard=False)
    assert dialogs == [] and problems == []  # alert(1) never ran
    assert page.evaluate("document.scripts.length") == 1  # the page's own (tables.html.j2)
    assert XSS in page.locator("#frontier").inner_text() or XSS in page.locator("#best").inner_text()
    assert page.locator("h2").count() >= 5  # the stray </div> broke no layout
    page.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_cached_baseline_is_computed_once_per_model_and_target(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    first = random_baseline(tiny_llama, "neuron:L1.N3", n=16, length=4, cached=True)
    assert first == random_baseline(tiny_llama, "neuron:L1.N3", n=16, length=4)  # the same numbers
    [path] = (tmp_path / "baselines").iterdir()
    path.write_text(json.dumps({**first.to_dict(), "mean": 123.0}))  # what is read back is the cache
    assert random_baseline(tiny_llama, "neuron:L1.N3", n=16, length=4, cached=True).mean == 123.0
    assert random_baseline(tiny_llama, "neuron:L1.N4", n=16, length=4, cached=True).mean != 123.0
    assert random_baseline(tiny_llama, "neuron:L1.N3", n=16, length=5, cached=True).mean != 123.0
    assert len(list((tmp_path / "baselines").iterdir())) == 3
