"""Diverse dreams: later faces avoid the tokens of earlier faces' best prompts; resumable; shown side by side."""

import torch

import reverie
from reverie import EPOConfig
from reverie.report.faces import write_faces
from reverie.runs.diverse import avoided_tokens, diverse

CONFIG = EPOConfig(population=4, children=16, top_k=64, length=6, iters=8, check_retokenization=False)


def overlap(pop, avoid):
    return torch.isin(pop, torch.tensor(avoid)).float().mean().item()


def test_faces_avoid_earlier_tokens_and_resume(tiny_llama, tmp_path):
    faces = diverse(tiny_llama, "neuron:L1.N5", CONFIG, k=2, out=tmp_path / "d")
    avoid = avoided_tokens(faces[:1])
    assert faces[1].config.avoid_ids == avoid and faces[1].config.avoid_penalty > 0
    assert faces[1].config.seed == CONFIG.seed + 1
    # from face 0's own start, the penalty alone steers away from face 0's tokens
    same_start = {**faces[1].config.to_dict(), "seed": CONFIG.seed}
    steered = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig.from_dict(same_start))
    free = reverie.dream(tiny_llama, "neuron:L1.N5", EPOConfig.from_dict({**same_start, "avoid_penalty": 0.0}))
    assert free.history["activation"].tolist() == faces[0].history["activation"].tolist()   # face 0 again
    assert overlap(steered.state.population, avoid) < overlap(free.state.population, avoid)
    # rerunning loads finished faces instead of dreaming them again
    again = diverse(tiny_llama, "neuron:L1.N5", CONFIG, k=3, out=tmp_path / "d")
    assert [len(f.history) for f in again[:2]] == [len(f.history) for f in faces] and len(again) == 3
    assert set(avoided_tokens(again[:2])) == set(again[2].config.avoid_ids)
    html = write_faces(tmp_path / "d").read_text()
    assert html.count('class="face"') == 3 and html.count("data:image/png;base64,") == 3
    assert 'href="face2/report.html"' in html


def test_cli_diverse(monkeypatch, capsys, tiny_dir, tmp_path):
    from test_cli import SMALL, run
    code, out, err = run(monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", "neuron:L1.N7",
                         "--out", tmp_path / "d", "--diverse", "2", *SMALL)
    assert code in (0, None), err
    assert "face 0:" in out and "face 1:" in out
    assert (tmp_path / "d" / "faces.html").exists() and (tmp_path / "d" / "face1" / "report.html").exists()
