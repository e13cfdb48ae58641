"""Diverse dreams: later faces avoid the tokens of earlier faces' best prompts; resumable; shown side by side."""

import re

import pandas as pd
import pytest
import torch

import reverie
from reverie import EPOConfig
from reverie.report import faces as faces_page
from reverie.report.faces import shared_ylim, write_faces
from reverie.runs.diverse import avoided_tokens, diverse

CONFIG = EPOConfig(population=4, children=16, top_k=64, length=6, iters=8, check_retokenization=False)


def overlap(pop, avoid):
    return torch.isin(pop, torch.tensor(avoid)).float().mean().item()


def test_faces_avoid_earlier_tokens_and_resume(tiny_llama, tmp_path, monkeypatch):
    faces = diverse(tiny_llama, "neuron:L1.N5", CONFIG, k=2, out=tmp_path / "d")
    avoid = avoided_tokens(faces[:1])
    assert faces[1].config.avoid_ids == avoid and faces[1].config.avoid_penalty > 0
    assert faces[1].config.seed == CONFIG.seed + 1
    # from face 0's own start, the penalty alone steers away from face 0's tokens
    same_start = {**faces[1].config.to_dict(), "seed": CONFIG.seed}
    steered = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig.from_dict(same_start))
    free = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig.from_dict({**same_start, "avoid_penalty": 0.0}))
    assert free.history["activation"].tolist() == faces[0].history["activation"].tolist()  # face 0 again
    assert overlap(steered.state.population, avoid) < overlap(free.state.population, avoid)
    # rerunning loads finished faces instead of dreaming them again
    again = diverse(tiny_llama, "neuron:L1.N5", CONFIG, k=3, out=tmp_path / "d")
    assert [len(f.history) for f in again[:2]] == [len(f.history) for f in faces] and len(again) == 3
    assert set(avoided_tokens(again[:2])) == set(again[2].config.avoid_ids)
    limits = []
    plot = faces_page.plots.frontier_plot
    monkeypatch.setattr(
        faces_page.plots, "frontier_plot", lambda *a, ylim=None, **kw: limits.append(ylim) or plot(*a, ylim=ylim, **kw)
    )
    html = write_faces(tmp_path / "d").read_text()
    assert html.count('class="face"') == 3 and html.count("data:image/png;base64,") == 3
    assert len(limits) == 3 and limits[0] is not None and len(set(limits)) == 1  # one activation axis for all
    low, high = limits[0]
    assert all(low < a < high for f in again for a in f.history["activation"] if abs(a) < float("inf"))
    words = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "none at this fluency yet" in words and "nan" not in words.lower()  # the tiny model is never fluent
    assert 'href="face2/report.html"' in html


def test_shared_ylim_covers_every_finite_activation():
    a = pd.DataFrame({"activation": [1.0, float("-inf"), 3.0]})
    b = pd.DataFrame({"activation": [-2.0, float("nan")]})
    assert shared_ylim([a, b]) == pytest.approx((-2.25, 3.25))
    assert shared_ylim([pd.DataFrame({"activation": [float("-inf")]})]) is None


def test_cli_diverse(monkeypatch, capsys, tiny_dir, tmp_path):
    from test_cli import SMALL, run

    code, out, err = run(
        monkeypatch,
        capsys,
        "dream",
        "--model",
        tiny_dir,
        "--target",
        "neuron:L1.N7",
        "--out",
        tmp_path / "d",
        "--diverse",
        "2",
        *SMALL,
    )
    assert code in (0, None), err
    for j in (0, 1):  # every face, with its run directory
        assert f"face {j} ({tmp_path / 'd' / f'face{j}'}):" in out
    assert (tmp_path / "d" / "faces.html").exists() and (tmp_path / "d" / "face1" / "report.html").exists()
