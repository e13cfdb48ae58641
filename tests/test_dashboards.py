"""Dashboards people can work in: report.html, faces.html and a sweep's index.html sort, filter and copy in
a real browser (headless Chromium via Playwright) with hostile dreamed text shown as text; per-token
activations (evidence/tokens.py) in the report; and `reverie export` (runs/export.py) in every format."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import typer

import reverie
from conftest import TEXTS, open_page, plant_best
from reverie import EPOConfig, dream, make_scorer
from reverie.cli import app as cli_app
from reverie.cli.app import main
from reverie.cli.export import export as export_command
from reverie.evidence.scan import ScanConfig, read_scan, scan
from reverie.evidence.tokens import every_position, per_token, token_strings
from reverie.files import read_json, write_json
from reverie.lm.targets import as_target
from reverie.report.faces import write_faces
from reverie.report.pages import environment
from reverie.report.run import build_report, write_report
from reverie.runs.export import COLUMNS, export, read_export

CONFIG = EPOConfig(population=4, children=8, top_k=32, length=8, iters=8, seed=0)
HOSTILE = '<script>alert(1)</script> "onmouseover=alert(2) x=" $x$ [/x]\nend'
SHOWN = HOSTILE.replace("\n", "⏎")  # as the pages show it (text.visible)


@pytest.fixture(scope="module")
def windows(tiny_llama, corpus):
    return scan(tiny_llama, ["neuron:L1.N7"], str(corpus), ScanConfig(window=8, top=5, chunk=16))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("runs") / "n7"
    dream(tiny_llama, "neuron:L1.N7", CONFIG, out=out)
    assert len(reverie.load_run(out).frontier()) >= 3  # enough rows to sort
    return out


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, run_dir, tiny_llama):
    """The run with its best dream rewritten to markup, an attribute breakout, TeX and BBCode (text and
    tokens, as if EPO had found it)."""
    out = tmp_path_factory.mktemp("runs") / "hostile"
    shutil.copytree(run_dir, out)
    plant_best(out, HOSTILE, tiny_llama.tokenizer)
    return out


# ------------------------------------------------------------------------------ per-token activations


@pytest.mark.parametrize("template", [None, "Once upon {prompt} then"])
def test_last_token_value_is_the_prompts_score(tiny_llama, template):
    prompts = [tiny_llama.tokenizer(t, add_special_tokens=False)["input_ids"][:n] for t, n in zip(TEXTS, (9, 6))]
    prompts.append(prompts[0][:6])  # two lengths, one batch each
    for spec in ("neuron:L1.N7", "direction:L1", 'logit:" dog"'):
        values = per_token(tiny_llama, spec, prompts, template=template)
        scorer = make_scorer(
            tiny_llama, spec, EPOConfig(length=6, template=template, check_retokenization=False), scorer="plain"
        )
        for ids, v in zip(prompts, values):
            assert v.shape == (len(ids),) and np.isfinite(v).all()
            assert v[-1] == pytest.approx(float(scorer.score(torch.tensor([ids]))[0][0]), abs=1e-4), spec
            # position i: the target as if the prompt ended there
            assert v[2] == pytest.approx(float(scorer.score(torch.tensor([ids[:3]]))[0][0]), abs=1e-4), spec


def test_a_target_without_per_position_values_is_nan_not_an_error(tiny_llama):
    target = as_target("attention:L1.H0.K-2", tiny_llama)
    assert every_position(target) is None
    [v] = per_token(tiny_llama, target, [[5, 6, 7, 8]])
    assert v.shape == (4,) and np.isnan(v).all()
    custom = as_target(lambda cache: cache["blocks.1.mlp.hook_post"][:, -1, 0], tiny_llama)
    assert np.isnan(per_token(tiny_llama, custom, [[5, 6, 7]])[0]).all()
    assert per_token(tiny_llama, "neuron:L1.N7", []) == []
    assert token_strings(tiny_llama, [504, 2690]) == [
        tiny_llama.tokenizer.decode([504]),
        tiny_llama.tokenizer.decode([2690]),
    ]


@pytest.mark.slow
def test_last_token_value_is_the_score_on_the_bundled_model(bundled):
    ids = bundled.tokenizer("The quick brown fox jumps over the lazy dog", add_special_tokens=False)["input_ids"]
    [v] = per_token(bundled, "neuron:L3.N492", [ids, ids[:5]])[:1]
    f, _ = make_scorer(bundled, "neuron:L3.N492", EPOConfig(length=len(ids))).score(torch.tensor([ids]))
    assert np.isfinite(v).all() and v[-1] == pytest.approx(float(f[0]), abs=1e-2, rel=2e-2)


# ------------------------------------------------------------------------------ pages, without a browser


def test_report_colours_tokens_and_shows_window_context(run_dir, tiny_llama, windows):
    assert {"context_before", "context_after"} <= set(windows.columns)
    assert any(windows["context_before"].str.len() > 0) and any(windows["context_after"].str.len() > 0)
    html = build_report(run_dir, scan=windows, model=tiny_llama, points=1, k=4, baseline_prompts=32)
    assert 'id="token-scale"' in html and html.count('class="ptok"') >= 8 + 5 * 8
    assert re.search(
        r'<span class="ptok" style="background: rgba\((214, 39, 40|31, 119, 180), [01]\.\d\d\)" '
        r'title="activation -?\d+\.\d{4} at ',
        html,
    )
    assert '<span class="ctx">' in html  # the document around a window, grey
    assert html.count("<script") == 1 and "http://" not in html and "https://" not in html
    without = build_report(run_dir, scan=windows)  # no model: no colours, still the windows
    assert 'class="ptok"' not in without and 'id="windows"' in without and 'id="token-scale"' not in without


def test_old_scans_without_context_still_report(run_dir, tiny_llama, windows, tmp_path):
    windows.drop(columns=["context_before", "context_after"]).to_parquet(tmp_path / "scan.parquet")
    old = read_scan(tmp_path)
    assert "context_before" not in old.columns
    html = build_report(run_dir, scan=old, model=tiny_llama, points=1, k=4, baseline_prompts=32)
    assert 'id="windows"' in html and 'class="ptok"' in html


def test_attention_target_report_shows_uncoloured_tokens(tmp_path, tiny_llama):
    dream(
        tiny_llama,
        "attention:L1.H0.K-2",
        EPOConfig(population=2, children=4, top_k=16, length=6, iters=2),
        out=tmp_path / "a",
    )
    html = build_report(tmp_path / "a", model=tiny_llama, points=1, k=4, baseline_prompts=16)
    assert 'id="token-scale"' not in html and 'id="best"' in html  # the tokens, uncoloured
    assert 'class="ptok" style="background: transparent"' in html and "no value at this position" in html
    assert 'class="ptok" style="background: rgba' not in html


# ------------------------------------------------------------------------------ in a real browser


def column(page, table: str, index: int) -> list[float]:
    """The data-v numbers of one column of a table's visible rows, in order."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])", f"rows => rows.map(r => parseFloat(r.cells[{index}].dataset.v))"
    )


def test_sorting_by_number_and_text(browser, run_dir, tmp_path):
    path = write_report(run_dir, out=tmp_path / "report.html")
    page, problems, dialogs = open_page(browser, path)
    before = column(page, "frontier", 1)
    assert before == sorted(before) and len(set(before)) >= 3  # the frontier: by cross-entropy
    page.click("#frontier th:has-text('activation')")
    assert column(page, "frontier", 1) == sorted(before, reverse=True)  # high to low first
    assert page.get_attribute("#frontier th:has-text('activation')", "aria-sort") == "descending"
    page.click("#frontier th:has-text('activation')")
    assert column(page, "frontier", 1) == sorted(before)
    page.click("#frontier th:has-text('prompt')")
    texts = page.eval_on_selector_all("#frontier tbody td.prompt", "cells => cells.map(c => c.lastChild.textContent)")
    assert texts == page.evaluate("t => t.slice().sort((a, b) => a.localeCompare(b))", texts)
    page.click("#best th:has-text('cross-entropy')")  # a table with "none yet" rows (colspan)
    assert problems == [] and dialogs == []
    page.context.close()


def test_filtering_by_text_and_range(browser, hostile_run, tmp_path):
    path = write_report(hostile_run, out=tmp_path / "report.html")
    page, problems, dialogs = open_page(browser, path)
    rows = page.locator("#frontier tbody tr")
    total = rows.count()
    page.fill(".filters[data-table=frontier] input[data-filter=text]", "ONMOUSEOVER")  # case-insensitive
    visible = page.locator("#frontier tbody tr:not([hidden])")
    assert visible.count() == 1 and SHOWN in visible.first.inner_text()
    assert page.inner_text(".filters[data-table=frontier] .count") == f"1 of {total} rows"
    page.fill(".filters[data-table=frontier] input[data-filter=text]", "")
    assert visible.count() == total
    values = column(page, "frontier", 1)
    low = sorted(values)[len(values) // 2]
    page.fill(".filters[data-table=frontier] input[data-bound=min][data-col='1']", repr(low))
    assert column(page, "frontier", 1) == [v for v in values if v >= low]
    ce = column(page, "frontier", 0)
    page.fill(".filters[data-table=frontier] input[data-bound=max][data-col='0']", repr(ce[0]))
    assert column(page, "frontier", 0) == [ce[0]]  # both bounds at once
    assert problems == [] and dialogs == []
    page.context.close()


def test_copy_button_copies_the_raw_prompt(browser, hostile_run, tmp_path):
    path = write_report(hostile_run, out=tmp_path / "report.html")
    page, problems, dialogs = open_page(browser, path)
    row = page.locator("#frontier tbody tr", has_text="onmouseover")
    row.locator("button.copy").click()
    page.wait_for_function(
        "document.querySelector('#frontier button.copy[data-copy*=onmouseover]').textContent !== 'copy'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == HOSTILE  # the text itself, newline and all
    # without the clipboard API: the textarea fallback (execCommand), else the prompt is selected
    page.evaluate("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    page.evaluate("document.execCommand = () => false")
    button = page.locator("#frontier tbody tr").first.locator("button.copy")
    button.click()
    assert button.inner_text() == "selected: Ctrl-C"
    selected = page.evaluate("window.getSelection().toString()")
    shown = page.eval_on_selector("#frontier tbody tr td.prompt", "c => c.lastChild.textContent")
    assert selected == shown
    assert problems == [] and dialogs == []
    page.context.close()


def test_hostile_text_is_text_on_every_page(browser, hostile_run, tiny_llama, windows, tmp_path):
    report = write_report(
        hostile_run, scan=windows, model=tiny_llama, points=1, k=4, baseline_prompts=32, out=tmp_path / "report.html"
    )
    faces_dir = tmp_path / "faces"
    shutil.copytree(hostile_run, faces_dir / "face0")
    faces = write_faces(faces_dir, [reverie.load_run(faces_dir / "face0")])
    index = tmp_path / "index.html"
    index.write_text(
        environment()
        .get_template("index.html.j2")
        .render(
            meta={"model": "m", "dtype": "fp32", "epo": {"iters": 1, "population": 1}, "seeds": [0]},
            rows=[
                {
                    "target": f"t{i}",
                    "status": "done",
                    "seeds_done": 1,
                    "seeds": 1,
                    "seeds_failed": 0,
                    "seconds": 1.0 + i,
                    "error": None,
                    "activation_any": a,
                    "cross_entropy_any": 3.0 + i,
                    "prompt_any": HOSTILE if i == 1 else f"p{i}",
                }
                for i, a in enumerate([0.5, 2.0, 1.0])
            ],
            links={f"t{i}": [] for i in range(3)},
            tags=[("any", "any")],
            counts={"done": 3},
            generated="now",
            isfinite=lambda v: isinstance(v, float) and math.isfinite(v),
        )
    )
    for path, table in ((report, "#best"), (faces, "#face0"), (index, "#index")):
        page, problems, dialogs = open_page(browser, path)
        assert page.evaluate("document.scripts.length") == 1, path.name
        assert SHOWN in page.inner_text(table), path.name
        page.hover(f"{table} td:has-text('onmouseover')")
        page.click(f"{table} th[data-sort]:nth-child(2)")
        assert page.locator("[onmouseover]").count() == 0 and page.evaluate("typeof window.x") == "undefined"
        assert problems == [] and dialogs == [], path.name  # alert() never ran
        page.context.close()
    page, problems, _ = open_page(browser, index)
    page.click("#index th:has-text('best, ce any')")
    assert column(page, "index", 3) == [2.0, 1.0, 0.5]
    page.fill(".filters[data-table=index] input[data-attr=ce][data-bound=max]", "4.5")
    assert column(page, "index", 3) == [2.0, 0.5]  # by the prompt's cross-entropy
    assert problems == []
    page.context.close()


# ------------------------------------------------------------------------------ export


def strict(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_export_every_format_reads_back_in_the_documented_shape(run_dir, tiny_llama, tmp_path):
    paths = {
        fmt: export(run_dir, fmt, out=tmp_path / f"x.{fmt}", model=tiny_llama) for fmt in ("json", "csv", "parquet")
    }
    data = strict(paths["json"].read_text())
    assert data["format"] == "reverie-export/1" and data["run"]["target"] == "neuron:L1.N7"
    rows = data["prompts"]
    result = reverie.load_run(run_dir)
    assert [r["kind"] for r in rows].count("frontier") == len(result.frontier())
    assert [r["limit"] for r in rows if r["kind"] == "best"][-1] == "any"
    for r in rows:
        assert list(r) == COLUMNS and r["model"] == result.model
        assert len(r["tokens"]) == len(r["ids"]) == len(r["token_activations"])
        assert "".join(r["tokens"]) == tiny_llama.tokenizer.decode(r["ids"], clean_up_tokenization_spaces=False)
        assert r["token_activations"][-1] == pytest.approx(r["activation"], abs=1e-4)
    reference = read_export(paths["json"])
    for fmt in ("csv", "parquet"):
        back = read_export(paths[fmt])
        assert list(back.columns) == COLUMNS and len(back) == len(rows), fmt
        assert back["text"].tolist() == reference["text"].tolist()
        assert [list(map(int, i)) for i in back["ids"]] == reference["ids"].tolist()
        assert back["tokens"].tolist() == reference["tokens"].tolist()
        assert np.allclose(
            np.concatenate(back["token_activations"].tolist()).astype(float),
            np.concatenate(reference["token_activations"].tolist()).astype(float),
        )
        assert back["kind"].tolist() == reference["kind"].tolist()
    assert export(run_dir, model=tiny_llama) == run_dir / "export.json"  # the default place


def test_export_without_per_position_values_writes_nulls(tmp_path, tiny_llama):
    dream(
        tiny_llama,
        "attention:L1.H0.K-2",
        EPOConfig(population=2, children=4, top_k=16, length=6, iters=2),
        out=tmp_path / "a",
    )
    data = strict(export(tmp_path / "a", model=tiny_llama).read_text())
    assert data["prompts"] and all(v is None for r in data["prompts"] for v in r["token_activations"])
    frame = read_export(export(tmp_path / "a", "csv", model=tiny_llama))
    assert all(v is None for vs in frame["token_activations"] for v in vs)
    with pytest.raises(reverie.ConfigError, match="json, csv, parquet"):
        export(tmp_path / "a", "xml", model=tiny_llama)
    with pytest.raises(reverie.RunDirError):
        export(tmp_path / "nothing", model=tiny_llama)


def run_cli(monkeypatch, capsys, *args):
    if not any(c.name == "export" for c in cli_app.app.registered_commands):  # until app.py registers it
        monkeypatch.setattr(
            cli_app.app,
            "registered_commands",
            [*cli_app.app.registered_commands, typer.models.CommandInfo(name="export", callback=export_command)],
        )
    monkeypatch.setattr("sys.argv", ["reverie", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    if exit_info.value.code == 2:
        assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    return exit_info.value.code, out, err


def test_cli_export(monkeypatch, capsys, run_dir, tiny_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = read_json(run / "config.json")
    write_json(run / "config.json", {**config, "model": str(tiny_dir)})  # a model the command can load
    code, out, err = run_cli(monkeypatch, capsys, "export", run, "--format", "csv", "--out", tmp_path / "e.csv")
    assert code in (0, None), err
    assert "export:" in out and len(read_export(tmp_path / "e.csv")) >= 3
    code, _, err = run_cli(monkeypatch, capsys, "export", run, "--format", "xml")
    assert code == 2 and "--format" in err
    code, _, err = run_cli(monkeypatch, capsys, "export", tmp_path / "nothing")
    assert code == 2
    code, _, err = run_cli(monkeypatch, capsys, "export", run, "--out", tmp_path / "no" / "such" / "x.json")
    assert code == 2 and "does not exist" in err
