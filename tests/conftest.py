"""Tiny T5 checkpoints built from configs (no network), and the real T5 tokenizer from ../shared/data."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration

import hf_gqa  # noqa: F401  (registers t5_gqa)

# The uptraining recipe's fixtures (tiny models with the real tokenizer, the CNN/DailyMail sample, runs).
pytest_plugins = ["recipe_fixtures"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state, so an unseeded draw is the same whichever tests ran before
    (or were deselected): a tolerance cannot pass or fail by the order of the suite."""
    torch.manual_seed(0)


SHARED_DATA = Path(os.environ.get("HF_GQA_SHARED_DATA", REPO.parent / "shared" / "data"))
T5_TOKENIZER = SHARED_DATA / "t5-tokenizer"

# d_model 48 != num_heads * d_kv = 64; decoder deeper than encoder (upstream generate() bug); vocab covers the
# real tokenizer's ids only where a test needs it (see t5_dir).
BASE = dict(
    d_model=48,
    d_kv=8,
    d_ff=96,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=8,
    decoder_start_token_id=0,
    dropout_rate=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
)
FLAVOURS = {
    "t5": dict(feed_forward_proj="relu"),  # T5 v1.0: tied lm_head, decoder output scaled
    "flan": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # v1.1 / Flan-T5 / byT5: untied head
}


def make_t5(flavour: str = "flan", vocab_size: int = 128, seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, **{**BASE, **FLAVOURS[flavour], **overrides})
    model = T5ForConditionalGeneration(config)
    if flavour == "flan":
        # A freshly built T5 ties lm_head to the embedding; a real v1.1 checkpoint has its own head.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, config.d_model) * config.d_model**-0.5)
    with torch.no_grad():  # make the relative bias matter at this tiny scale
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 1.0)
    return model.eval()


def make_mt5(vocab_size: int = 128, seed: int = 0) -> MT5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = MT5Config(vocab_size=vocab_size, **BASE)
    model = MT5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, config.d_model) * config.d_model**-0.5)
    return model.eval()


def batch(vocab_size: int = 128, seed: int = 1):
    """A padded encoder batch and decoder inputs."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab_size, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    attention_mask[2, 4:] = 0
    decoder_input_ids = torch.randint(2, vocab_size, (3, 5), generator=g)
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request):
    return request.param


@pytest.fixture(scope="session")
def t5_tokenizer_dir():
    if not (T5_TOKENIZER / "spiece.model").exists():
        pytest.skip(f"the real T5 tokenizer is not at {T5_TOKENIZER} (set HF_GQA_SHARED_DATA)")
    return T5_TOKENIZER


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory, t5_tokenizer_dir):
    """A saved tiny Flan-style T5 with the real T5 tokenizer and a generation config."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("ckpt") / "tiny-t5"
    model = make_t5("flan", vocab_size=32128)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(t5_tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, t5_dir):
    """A HF_HUB_CACHE holding `tiny-org/tiny-t5` in the Hub's cache layout, used with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-t5"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(t5_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return "tiny-org/tiny-t5"
