"""Shared fixtures: the bundled tokenizer, tiny random-weight models of each family, the real bundled model.

The models live on REVERIE_TEST_DEVICE (default cpu; bench/gpu.sh runs the suite with cuda)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from reverie.lm.model import Model, bundled_path, load_model

VOCAB = 49152  # the bundled tokenizer's vocabulary; tiny models share it
DEVICE = os.environ.get("REVERIE_TEST_DEVICE", "cpu")

# model_type -> small config overrides (2-3 layers, width 64, MLP 128)
FAMILIES = {
    "gpt2": dict(bos_token_id=0, eos_token_id=0, n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64),
    "gpt_neox": dict(
        bos_token_id=0,
        eos_token_id=0,
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    ),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    ),
    "mistral": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    ),
    "qwen2": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    ),
    "qwen3": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        head_dim=16,
    ),
    "phi": dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64
    ),
    "phi3": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
    "gemma": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        head_dim=16,
    ),
    "gemma2": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        head_dim=16,
        sliding_window=16,
    ),
    "gemma3_text": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        head_dim=16,
        sliding_window=16,
    ),
}


def checkpoint_iteration(run_dir) -> int:
    """The iteration of a run directory's checkpoint, or -1 if there is none (yet) or it is being written."""
    from safetensors import safe_open

    try:
        with safe_open(str(run_dir / "checkpoint.safetensors"), "pt") as fh:
            return int(fh.metadata()["iteration"])
    except Exception:
        return -1


def plant_best(run_dir, text: str, tokenizer) -> None:
    """Rewrite a run directory's best dream to `text` (its history row's text and tokens), as if EPO had
    found it: for the tests that model text stays data in every page."""
    import pandas as pd

    history = pd.read_parquet(run_dir / "history.parquet")
    best = history["activation"].idxmax()
    history.at[best, "text"] = text
    history.at[best, "ids"] = tokenizer(text, add_special_tokens=False)["input_ids"]
    history.to_parquet(run_dir / "history.parquet", index=False)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer; REVERIE_TEST_TOKENIZER names a folder holding only it, for machines without
    the bundled model (bench/gpu.sh carries one to the GPU machine)."""
    return AutoTokenizer.from_pretrained(os.environ.get("REVERIE_TEST_TOKENIZER") or bundled_path())


def build_tiny(family: str, tokenizer, seed: int = 0, **overrides) -> Model:
    """A random-weight model of `family`, fp32 on the test device, with the bundled tokenizer."""
    config = AutoConfig.for_model(family, vocab_size=VOCAB, **{**FAMILIES[family], **overrides})
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(DEVICE)
    return Model(hf, tokenizer, spec=f"tiny-{family}")


@pytest.fixture(scope="session")
def tiny_llama(tokenizer) -> Model:
    return build_tiny("llama", tokenizer)


@pytest.fixture(scope="session")
def bundled() -> Model:
    return load_model("bundled", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_llama):
    """The tiny llama saved as a model folder, for `load_model(path)` and the CLI."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.hf.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path


TEXTS = [
    "The cat sat on the mat while the dog slept by the warm fire in the old stone house.",
    "Rivers carry sediment from mountains to the sea, building deltas where the water slows down.",
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A two-document text corpus (TEXTS, one .txt file each) for scans."""
    folder = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(TEXTS):
        (folder / f"doc{i}.txt").write_text(text)
    return folder


def gradient(scorer, ids: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """d(f − λ·CE) / d one-hot for each prompt and its penalty, over the allowed tokens: [B, n, A]."""
    df, dce = scorer.gradient_parts(ids)
    return df - penalties[:, None, None].float() * dce


def mutants(scorer, parents: int, children: int, length: int, seed: int):
    """Random parents and one-token mutants of them: (parents, children, parent index, mutated position)."""
    gen = torch.Generator().manual_seed(seed)
    tops = scorer.vocab.random_prompts(parents, length, gen)
    parent, pos = torch.randint(parents, (children,), generator=gen), torch.randint(length, (children,), generator=gen)
    kids = tops[parent].clone()
    kids[torch.arange(children), pos] = scorer.vocab.allowed[
        torch.randint(len(scorer.vocab.allowed), (children,), generator=gen)
    ]
    return tops, kids, parent, pos


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright, for the pages' tests (skipped without it, except on CI)."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path, clipboard: bool = True):
    """A page of `path` in a fresh context (clipboard permissions granted unless `clipboard` is False),
    with the console errors and warnings, page errors, failed requests and dialogs it collects."""
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"] if clipboard else [])
    page = context.new_page()
    problems, dialogs = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems, dialogs
