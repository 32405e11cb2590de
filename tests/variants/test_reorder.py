"""Head reordering (SimGQA's first step) preserves the function; similarity groups are equal-sized and sensible."""

import random

import pytest
import torch
from conftest import batch, make_t5
from tiny_decoders import logits, make
from transformers import GPT2Config, GPT2LMHeadModel

from hf_gqa.conversion.plan import get_architecture
from hf_gqa.core.similarity import head_similarity, permute_head_rows, similarity_order
from hf_gqa.errors import HfGqaError
from hf_gqa.variants.simgqa.reorder import reorder_map, similarity_orders


def reordered(model, kinds=None, seed=0):
    config = dict(model.config.to_dict(), architectures=[type(model).__name__])
    sd = model.state_dict()
    architecture = get_architecture(config)
    blocks = [b for b in architecture.attention_blocks(config, sd.keys()) if kinds is None or b.kind in kinds]
    rng = random.Random(seed)
    orders = {b.prefix: rng.sample(range(b.num_heads), b.num_heads) for b in blocks}
    new = reorder_map(architecture, config, blocks, orders).apply(sd)
    return type(model).from_pretrained(None, config=model.config, state_dict=new).eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi3", "olmo2", "cohere", "stablelm", "phi", "gemma"])
def test_a_random_reorder_preserves_decoder_logits(model_type):
    model = make(model_type)
    torch.testing.assert_close(logits(reordered(model)), logits(model), rtol=0, atol=1e-5)


def test_a_random_reorder_preserves_gpt2_and_t5_cross_attention():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_head=8, n_layer=2, vocab_size=96)).eval()
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(reordered(gpt2)(ids).logits, gpt2(ids).logits, rtol=0, atol=1e-5)
    t5, inputs = make_t5("flan").eval(), batch()
    with torch.no_grad():
        torch.testing.assert_close(reordered(t5, ("cross",))(**inputs).logits, t5(**inputs).logits, rtol=0, atol=1e-5)


def test_similarity_groups_twins_and_every_group_has_the_same_size():
    torch.manual_seed(0)
    base = torch.randn(4, 8 * 16)
    weight = torch.cat([base, base + 0.01 * torch.randn(4, 8 * 16)]).reshape(8 * 8, 16)  # head h ~ head h + 4
    similarity = head_similarity(weight, 8)
    assert similarity_order(similarity, 2) == [0, 4, 1, 5, 2, 6, 3, 7]
    for size in (1, 2, 4, 8):
        order = similarity_order(similarity, size)
        assert sorted(order) == list(range(8))
    assert similarity_order(similarity, 1) == list(range(8))
    with pytest.raises(ValueError, match="does not divide"):
        similarity_order(similarity, 3)
    moved = permute_head_rows(torch.arange(8.0).repeat_interleave(2), [1, 0, 2, 3, 4, 5, 7, 6], 8)
    assert moved.tolist() == [1, 1, 0, 0, 2, 2, 3, 3, 4, 4, 5, 5, 7, 7, 6, 6]


def test_similarity_orders_read_the_query_heads_of_each_block():
    model = make("llama")
    config = dict(model.config.to_dict(), architectures=["LlamaForCausalLM"])
    sd = model.state_dict()
    architecture = get_architecture(config)
    blocks = architecture.attention_blocks(config, sd.keys())
    orders = similarity_orders(architecture, config, blocks, {"self": 4}, sd.__getitem__)
    assert set(orders) == {b.prefix for b in blocks} and all(sorted(o) == list(range(8)) for o in orders.values())
    assert similarity_orders(architecture, config, blocks, {"self": 4}, sd.__getitem__, source="key") != orders


def test_reordering_a_gqa_block_is_refused():
    model = make("llama", kv_heads=2)
    config = dict(model.config.to_dict(), architectures=["LlamaForCausalLM"])
    architecture = get_architecture(config)
    blocks = architecture.attention_blocks(config)
    with pytest.raises(HfGqaError, match="one key/value head per query head"):
        reorder_map(architecture, config, blocks, {blocks[0].prefix: [1, 0, 2, 3, 4, 5, 6, 7]})
