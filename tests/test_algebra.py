"""Expression targets (lm/grammar.py, lm/algebra.py): specs that combine specs parse to canonical specs that
round-trip, bad ones are one line saying where, a Combination's value is its expression of its parts' values,
both scorers take the same steps on one, and a bound keeps a part down while the dream raises another."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import reverie
from reverie import Custom, EPOConfig, Logit, Neuron, TargetError, make_scorer, parse_target, per_token
from reverie.lm.algebra import Combination, not_neighbours
from reverie.lm.grammar import BOUND_WEIGHT
from reverie.lm.sae import SAEFeature, SAEWeights
from reverie.lm.targets import as_target, combine
from test_cli import run as run_cli
from test_scoring import assert_children_score_as_plain
from test_spec import assert_same_walk

A, B = "neuron:L1.N7", "neuron:L1.N67"  # on the tiny llama, B rises with A when A alone is dreamed


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("neuron:L9.N402 - 0.5*neuron:L9.N7", None),
        ("neuron:L9.N402 | neuron:L9.N7 < 1.5", "neuron:L9.N402 | neuron:L9.N7 < 1.5 @ 10"),
        ("neuron:L9.N402|neuron:L9.N7<1.5@3", "neuron:L9.N402 | neuron:L9.N7 < 1.5 @ 3"),
        ("neuron:L1.N2 | neuron:L1.N3 > -2 @ 0.5 | neuron:L1.N4 < 1e-05 @ 10", None),
        ("max(neuron:L1.N2, neuron:L1.N3) - min(neuron:L1.N4, 0)", None),
        ("-neuron:L1.N2 + 2*3*neuron:L1.N3*0.5", "-neuron:L1.N2 + 3*neuron:L1.N3"),
        ("neuron:L1.N2 - neuron:L1.N3*-0.5", "neuron:L1.N2 - -0.5*neuron:L1.N3"),
        ("(neuron:L1.N2 + neuron:L1.N3) - 2*(neuron:L1.N4 - neuron:L1.N5)", None),
        ("logit:\" a+b\" - logit:' the'", "logit:' a+b' - logit:' the'"),
        ("attention:L3.H2.K-2 - neuron:blocks.1.mlp.hook_post.N2", "attention:L3.H2.K-2 - neuron:L1.N2"),
        ('"neuron:L1.N2" + 1', "neuron:L1.N2 + 1"),
        ("neuron:L1.N2 - 0.5*neuron:L1.N2", None),  # one part, read twice
        ("(neuron:L1.N2)", "neuron:L1.N2"),  # no operator left: the target itself
        ("sae:{dir}/sae:F3 - 0.3*max(sae:{dir}/sae:F7, sae:{dir}/sae:F9)", None),
        ('"sae:{dir}/my sae+x:F3" - neuron:L1.N2', None),  # a path with a space and a '+': quoted whole
    ],
)
def test_expressions_parse_to_canonical_specs_that_round_trip(spec, canonical, tmp_path):
    for name in ("sae", "my sae+x"):
        SAEWeights(torch.zeros(64, 16), torch.zeros(16), torch.zeros(64), "blocks.1.hook_resid_pre").save(
            tmp_path / name
        )
    spec, canonical = spec.format(dir=tmp_path), (canonical or spec).format(dir=tmp_path)
    target = parse_target(spec)
    assert target.spec == canonical and parse_target(canonical).spec == canonical
    assert isinstance(target, Combination) == ("+" in canonical or " - " in canonical or "|" in canonical)


def test_parts_of_one_sae_share_its_weights(tmp_path):
    SAEWeights(torch.zeros(64, 16), torch.zeros(16), torch.zeros(64), "blocks.1.hook_resid_pre").save(tmp_path / "s")
    target = parse_target(f"sae:{tmp_path}/s:F3 - max(sae:{tmp_path}/s:F7, sae:{tmp_path}/s:F9)")
    assert [p.feature for p in target.parts] == [3, 7, 9]
    assert len({id(p.weights) for p in target.parts}) == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("neuron:L9.N402 - 0.5*nueron:L9.N7", "at column 22 ('nueron:L9.N7'): cannot parse target 'nueron:L9.N7'"),
        ("neuron:L9.N402-neuron:L9.N7", "a '-' between two terms needs a space before it"),
        ("neuron:L9.N402 - 0.5*neuron:L9.N7-2", "a '-' between two terms needs a space before it"),
        ("neuron:L1.N2 * neuron:L1.N3", "at column 1 ('neuron:L1.N2'): a target can be multiplied by numbers only"),
        ("neuron:L1.N2 < 3", "at column 14 ('< 3'): bounds ('<', '>') go after a '|'"),
        ("neuron:L1.N2 | 3 < 1", "a bound after '|' is a target, then '< NUMBER' or '> NUMBER'"),
        ("neuron:L1.N2 | (1 + max(2, 3)) < 1", "a bound after '|' is a target, then '< NUMBER' or '> NUMBER'"),
        ("neuron:L1.N2 | neuron:L1.N3 < x", "'x' is not a target"),
        ("neuron:L1.N2 | neuron:L1.N3 < 1 @ 0", "a bound's weight (after '@') must be above 0"),
        ("neuron:L1.N2 | neuron:L1.N3 < neuron:L1.N4", "a bound must be a number"),
        ("max(neuron:L1.N2", "at the end: expected ',' or ')' in max(...)"),
        ("neuron:L1.N2 +", "at the end: the expression ends too soon"),
        ("1 + 2", "the expression has no target in it"),
        ("neuron:L1.N2 - 0.5/neuron:L1.N3", "at column 19 ('/neuron:L1.N'): unexpected '/'"),
        ("neuron:L1.N2 neuron:L1.N3", "at column 14 ('neuron:L1.N3'): expected an operator or the end"),
        ('neuron:L1.N2 - "neuron:L1.N3', "this quote is never closed"),
    ],
)
def test_a_bad_expression_is_one_line_saying_where(spec, message):
    with pytest.raises(TargetError) as e:
        parse_target(spec)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"cannot parse target {spec!r}")


def test_specs_whose_paths_hold_operator_characters_are_not_expressions(tmp_path):
    np.save(tmp_path / "a+b c.npy", np.ones(64, np.float32))
    assert parse_target(f"direction:L1:{tmp_path}/a+b c.npy").spec == f"direction:L1:{tmp_path}/a+b c.npy"
    SAEWeights(torch.zeros(64, 16), torch.zeros(16), torch.zeros(64), "blocks.1.hook_resid_pre").save(tmp_path / "x+y")
    assert isinstance(parse_target(f"sae:{tmp_path}/x+y:F3"), SAEFeature)
    with pytest.raises(TargetError, match="does not exist"):  # still one of its kind when it does not exist
        parse_target(f"direction:L1:{tmp_path}/missing file.npy")


def read(model, target, texts):
    """The target's value for prompts (text), read from the model's own forward pass."""
    ids = torch.tensor([model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    with torch.inference_mode(), model.capture(list(target.hooks)) as cache:
        cache["logits"] = model.hf(ids).logits.float()
    return target.value(cache), {p.spec: v for p, v in zip(target.parts, [p.value(cache) for p in target.parts])}


def test_the_value_is_the_expression_of_the_parts_values(tiny_llama):
    target = as_target(f"2*{A} - 0.5*max({B}, direction:L1) | logit:' the' < 0.1 @ 3 | neuron:L0.N5 > 0", tiny_llama)
    assert target.hooks == ("blocks.1.mlp.hook_post", "blocks.1.hook_resid_pre", "blocks.0.mlp.hook_post")
    assert target.reads_logits and target.position == -1
    value, parts = read(tiny_llama, target, ["The cat sat on the mat", "Rivers carry sediment to sea"])
    a, b, d, logit, n5 = parts.values()
    expected = 2 * a - 0.5 * torch.maximum(b, d) - 3 * (logit - 0.1).clamp(min=0) - BOUND_WEIGHT * (-n5).clamp(min=0)
    torch.testing.assert_close(value, expected)
    assert list(parts) == [A, B, "direction:L1:seed=0", "logit:' the'", "neuron:L0.N5"]


def test_a_combination_reads_every_position_as_its_parts_do(tiny_llama):
    """Per-token values (reports, scans) read each part at every position, and the last is the score."""
    target = as_target(f"{A} - 0.5*{B} | logit:' the' < 0", tiny_llama)
    prompts = [[504, 2364, 3067, 335, 260, 2137], [1208, 4356, 28, 260, 5346, 30]]
    values = per_token(tiny_llama, target, prompts)
    a, b, logit = (per_token(tiny_llama, spec, prompts) for spec in (A, B, "logit:' the'"))
    for i in range(2):
        np.testing.assert_allclose(values[i], a[i] - 0.5 * b[i] - 10 * np.maximum(logit[i], 0), atol=1e-5)
    assert target.position == -1  # the copy read every position; the target itself still reads the last


@pytest.mark.parametrize(
    "spec", [f"{A} - 0.5*neuron:L0.N5", f"{A} | {B} < 0.01 @ 5", f"max({A}, logit:' the') - min(direction:L0, {B})"]
)
def test_both_scorers_score_an_expression_alike(spec, tiny_llama):
    """Scores, gradients and children over their parent's prefix: the packed path equals the plain one."""
    config = EPOConfig(length=7, batch_size=5)
    packed, plain = make_scorer(tiny_llama, spec, config), make_scorer(tiny_llama, spec, config, scorer="plain")
    assert packed.scorer.reuses_prefix and isinstance(packed.target, Combination)
    ids = packed.vocab.random_prompts(4, 7, torch.Generator().manual_seed(0))
    for a, b in zip(packed.score(ids) + packed.gradient_parts(ids), plain.score(ids) + plain.gradient_parts(ids)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert_children_score_as_plain(packed, parents=3, children=20, length=7, seed=0)


@pytest.mark.parametrize("spec", [f"{A} - 0.5*{B} | neuron:L0.N5 < 0.02", f"max({A}, logit:' the') - 0.1*direction:L1"])
def test_packed_walks_the_plain_path_for_an_expression(spec, tiny_llama):
    """In fp32 the fast path takes the same steps as the plain one on an expression target, as on any other."""
    config = EPOConfig.paper(population=4, children=16, top_k=64, length=6, iters=8, restart_every=5, seed=3)
    assert_same_walk(tiny_llama, config, target=spec, restarts=1)


def test_not_neighbours_subtracts_the_features_with_the_closest_decoder_directions(tiny_llama, tmp_path):
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(32, 64, generator=gen)
    for j, noise in ((9, 0.1), (4, 0.3), (20, 0.5)):  # feature 0's neighbours, nearest first
        W_dec[j] = W_dec[0] + noise * torch.randn(64, generator=gen)
    W_enc = torch.randn(64, 32, generator=gen) * 0.1
    SAEWeights(W_enc, torch.zeros(32), torch.zeros(64), "blocks.1.hook_resid_pre", W_dec=W_dec).save(tmp_path / "s")
    f = f"sae:{tmp_path}/s:F"
    target = not_neighbours(f"{f}0")
    assert target.spec == f"{f}0 - 0.5*max({f}9, {f}4, {f}20)"
    assert parse_target(target.spec).spec == target.spec and len({id(p.weights) for p in target.parts}) == 1
    assert not_neighbours(f"{f}0", k=1, weight=2).spec == f"{f}0 - 2*{f}9"
    target.prepare(tiny_llama)
    value, parts = read(tiny_llama, target, ["The cat sat on the mat"])
    a, *others = parts.values()
    torch.testing.assert_close(value, a - 0.5 * torch.stack(others).amax(0))
    with pytest.raises(TargetError, match="k 1-31"):
        not_neighbours(f"{f}0", k=32)
    with pytest.raises(TargetError, match="not_neighbours takes an SAE feature"):
        not_neighbours(A)


def test_combine_names_python_targets(tiny_llama):
    double = Custom(lambda cache: 2 * cache["blocks.1.mlp.hook_post"][:, -1, 7], hooks=("blocks.1.mlp.hook_post",))
    target = combine(f"a - 0.5*double | {B} < 0.1", a=Neuron(1, 7), double=double)
    assert target.spec == f"{A} - 0.5*custom:custom | {B} < 0.1 @ 10"
    target.prepare(tiny_llama)
    value, parts = read(tiny_llama, target, ["The cat sat on the mat"])
    torch.testing.assert_close(value, 0.0 * parts[A] - 10 * (parts[B] - 0.1).clamp(min=0))
    assert isinstance(combine("a", a=Logit(" the")), Logit)


def test_an_expression_with_a_python_only_part_resumes_from_python_only(tiny_llama, tmp_path):
    double = Custom(lambda cache: 2 * cache["blocks.1.mlp.hook_post"][:, -1, 7], hooks=("blocks.1.mlp.hook_post",))
    target = combine(f"{B} - double", double=double)
    config = EPOConfig(population=2, children=4, top_k=16, length=6, iters=1, starts="random")
    reverie.dream(tiny_llama, target, config, out=tmp_path / "r", corpus=None)
    with pytest.raises(reverie.RunDirError, match="Python-only target"):
        reverie.resume(tmp_path / "r", model=tiny_llama, iters=2)
    assert reverie.resume(tmp_path / "r", model=tiny_llama, target=target, iters=2).iterations == 2


def test_dream_an_expression_from_the_command_line_and_resume_it(monkeypatch, capsys, tiny_dir, tmp_path):
    """config.json keeps the canonical spec; --resume parses it back; the report shows each part's value."""
    spec, out = f'{A} - 0.5*{B} | logit:" the" < 2', tmp_path / "run"
    small = ["--population", "4", "--children", "8", "--top-k", "32", "--length", "8", "--quiet", "--no-corpus"]
    code, stdout, err = run_cli(
        monkeypatch, capsys, "dream", "--model", tiny_dir, "--target", spec, "--out", out, "--iters", "2", *small
    )
    assert code in (0, None), err
    canonical = f"{A} - 0.5*{B} | logit:' the' < 2 @ 10"
    assert json.loads((out / "config.json").read_text())["target"] == canonical
    code, stdout, err = run_cli(monkeypatch, capsys, "dream", "--resume", out, "--iters", "4", "--quiet")
    assert code in (0, None), err
    run = reverie.load_run(out)
    assert run.target == canonical and run.iterations == 4 and sorted(run.history.iteration.unique()) == list(range(5))
    html = (out / "report.html").read_text()
    assert 'class="parts"' in html and "logit:&#39; the&#39;" in html


def selectivity(model, a: str, b: str, config: EPOConfig):
    """A dreamed alone, then `A | B < x` from the same start, x = B's highest value on the start: (A's highest
    value on the start, x, (A, B) at the plain dream's best prompt, (A, B) at the selective dream's)."""
    plain = reverie.dream(model, a, config, corpus=None)
    first = plain.history[(plain.history.iteration == 0) & plain.history.kept].sort_values("slot")
    start = [list(map(int, ids)) for ids in first.ids]
    x = float(max(v[-1] for v in per_token(model, b, start)))
    again = replace(config, starts="random", init_ids=tuple(map(tuple, start)))
    selective = reverie.dream(model, f"{a} | {b} < {x!r}", again, corpus=None)

    def at_best(result):
        ids = [list(map(int, result.best()["ids"]))]
        return tuple(float(per_token(model, spec, ids)[0][-1]) for spec in (a, b))

    return float(max(v[-1] for v in per_token(model, a, start))), x, at_best(plain), at_best(selective)


def test_a_selectivity_dream_raises_a_and_keeps_b_below_its_bound(tiny_llama):
    """Dreamed alone, A takes B up with it; dreamed as `A | B < x` from the same start, A rises and B stays below."""
    config = EPOConfig(population=4, children=16, top_k=64, length=8, iters=10, restart_every=0, starts="random")
    a_start, x, (a_plain, b_plain), (a_selective, b_selective) = selectivity(tiny_llama, A, B, config)
    assert a_plain > a_start and b_plain > x
    assert a_selective > a_start and b_selective <= x + 1e-4


@pytest.mark.slow
def test_a_selectivity_dream_on_the_bundled_model(bundled):
    """A real pair from one layer (B: the neuron of L9 that rises most when A alone is dreamed, as
    bench/selectivity.py picks them, under the config they were picked with: no junk penalty), 15
    iterations: A rises from the start while B stays below its bound."""
    a_start, x, (a_plain, b_plain), (a_selective, b_selective) = selectivity(
        bundled, "neuron:L9.N1196", "neuron:L9.N163", EPOConfig(iters=15, seed=0, junk_penalty=0.0)
    )
    assert a_plain > a_start and b_plain > x
    assert a_selective > a_start and b_selective <= x + 0.05


def test_a_sweep_list_keeps_the_commas_inside_an_expression():
    from reverie.sweeps.specs import expand_targets

    specs = expand_targets(f"{A}, max({A}, {B}) - neuron:L1.N5, logit:','")
    assert specs == [A, f"max({A}, {B}) - neuron:L1.N5", "logit:','"]
