"""A fixed context around the prompt (`--template`): the feature is read at the last prompt token, the
cross-entropy covers every prompt token in context, and gradients still equal one-hot gradients."""

import pytest
import torch
import torch.nn.functional as F

import reverie
from conftest import gradient
from reverie import ConfigError, EPOConfig, make_scorer
from reverie.scoring.objective import template_ids

TEMPLATE = "Once upon a time {prompt} and then"


@pytest.mark.parametrize("spec", ["neuron:L1.N5", "attention:L1.H1.K2", 'logit:" the"'])
def test_scores_read_the_prompt_inside_its_context(tiny_llama, spec):
    scorer = make_scorer(tiny_llama, spec, EPOConfig(length=6, template=TEMPLATE))
    target = scorer.target
    before, after = template_ids(tiny_llama.tokenizer, TEMPLATE)
    L = len(before)
    assert L == 4 and len(after) == 2  # "Once upon a time" / " and then"
    ids = scorer.vocab.random_prompts(4, 6, torch.Generator().manual_seed(0))
    f, ce = scorer.score(ids)
    full = torch.cat([before.expand(4, -1), ids, after.expand(4, -1)], 1)
    with tiny_llama.capture(list(target.hooks)) as cache:
        logits = tiny_llama.hf(full).logits.float()
    view = {
        k: v[:, :, L : L + 6, L : L + 6] if k.endswith("hook_pattern") else v[:, L : L + 6] for k, v in cache.items()
    }
    view["logits"] = logits[:, L : L + 6]
    assert torch.allclose(f, target.value(view).float(), atol=1e-5)
    expected = F.cross_entropy(logits[:, L - 1 : L + 5].transpose(1, 2), ids, reduction="none").mean(-1)
    assert torch.allclose(ce, expected, atol=1e-5)  # all 6 prompt tokens, given the context
    plain = make_scorer(tiny_llama, spec, EPOConfig(length=6)).score(ids)
    assert not torch.allclose(plain[1], ce)  # the context really changes things


def test_template_gradients_equal_one_hot_gradients(tiny_llama):
    scorer = make_scorer(tiny_llama, "neuron:L1.N5", EPOConfig(length=6, template=TEMPLATE))
    target = scorer.target
    before, after = template_ids(tiny_llama.tokenizer, TEMPLATE)
    L = len(before)
    ids = scorer.vocab.random_prompts(3, 6, torch.Generator().manual_seed(1))
    lam = torch.tensor([0.0, 0.5, 3.0])
    E = tiny_llama.adapter.embed.weight
    one_hot = F.one_hot(ids, E.shape[0]).float().requires_grad_(True)
    embeds = torch.cat([E[before].expand(3, -1, -1), one_hot @ E, E[after].expand(3, -1, -1)], 1)
    with tiny_llama.capture(list(target.hooks)) as cache:
        logits = tiny_llama.hf(inputs_embeds=embeds).logits.float()
    f = cache[target.hooks[0]][:, L + 5, 5].float()
    ce = -(logits[:, L - 1 : L + 5].log_softmax(-1) * one_hot).sum(-1).mean(-1)
    (f - lam * ce).sum().backward()
    assert torch.allclose(gradient(scorer, ids, lam), one_hot.grad[..., scorer.vocab.allowed], atol=1e-4, rtol=1e-4)


def test_dream_in_a_template(tiny_llama, tmp_path):
    config = EPOConfig(population=4, children=8, top_k=32, length=6, iters=6, template=TEMPLATE)
    result = reverie.dream(tiny_llama, "neuron:L1.N5", config, out=tmp_path / "t")
    start = result.history[result.history["iteration"] == 0]["activation"].max()
    assert result.best()["activation"] > start
    assert reverie.load_run(tmp_path / "t").config.template == TEMPLATE
    html = reverie.write_report(tmp_path / "t", model=tiny_llama, points=1, k=4)
    assert "Once upon a time" in html.read_text()


@pytest.mark.parametrize("template", ["no placeholder", "{prompt} twice {prompt}"])
def test_bad_template(tiny_llama, template):
    with pytest.raises(ConfigError, match="exactly once"):
        make_scorer(tiny_llama, "neuron:L1.N5", EPOConfig(template=template))
