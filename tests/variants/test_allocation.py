"""KDGQA/DGQA query-head allocation: the paper's eq. 3 (min-max scaled key norms, floor) and hf-gqa's balanced rule,
against counts written out by hand."""

import pytest
import torch
from tiny_decoders import make

import hf_gqa
from hf_gqa.errors import HfGqaError
from hf_gqa.modeling.routing import allocate


@pytest.mark.parametrize(
    "norms,heads,paper,balanced",
    [
        ([1.0, 3.0, 2.0], 9, [0, 6, 3], [1, 5, 3]),  # eq. 3 is exact here: scaled [0, 1, .5] -> 9 * [0, 2/3, 1/3]
        ([1.0, 1.0, 1.0], 9, [3, 3, 3], [3, 3, 3]),  # equal norms: GQA
        ([0.0, 1.0, 2.0, 4.0], 8, [0, 1, 2, 5], [1, 2, 2, 3]),  # paper: 8 * [0, 1/7, 2/7, 4/7] = [0, 1.14, 2.29, 4.57]
    ],
)
def test_paper_and_balanced_allocations(norms, heads, paper, balanced):
    scores = torch.tensor(norms)
    assert allocate(scores, heads, "paper").tolist() == paper
    assert allocate(scores, heads, "balanced").tolist() == balanced
    assert allocate(scores, heads).tolist() == balanced  # the default is unchanged


def test_the_allocation_option_reaches_the_routing_config_and_is_refused_elsewhere():
    source = make("llama", kv_heads=8)
    model = hf_gqa.convert(source, variant="kdgqa", groups=2, allocation="paper")
    assert model.config.gqa_routing["self"]["allocation"] == "paper"
    assert hf_gqa.convert(source, variant="dgqa", groups=2).config.gqa_routing["self"]["allocation"] == "balanced"
    with pytest.raises(HfGqaError, match="--allocation applies to kdgqa and dgqa only"):
        hf_gqa.convert(source, variant="gqa", groups=2, allocation="paper")


@pytest.mark.parametrize("variant", ["kdgqa", "dgqa"])
def test_a_group_the_paper_rule_leaves_empty_runs_and_decodes(variant):
    """With 2 groups, eq. 3 gives every query head to the group with the larger key norm: the other gets none."""
    model = hf_gqa.convert(make("llama", kv_heads=8), variant=variant, groups=2, allocation="paper")
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.isfinite(full).all() and out.shape == (2, 12)
