"""The pure converter over (config dict, state dict)."""

import pytest
import torch
from conftest import make_t5

from hf_gqa import GQASpec, convert_state_dict, plan_conversion
from hf_gqa.errors import HfGqaError, InvalidGroupsError, UnsupportedModelError


@pytest.fixture(scope="module")
def source():
    model = make_t5("flan")
    return model.config.to_dict(), model.state_dict()


def test_only_grouped_kv_change_and_the_rest_is_not_copied(source):
    config, sd = source
    new_config, new_sd = convert_state_dict(config, sd, GQASpec(groups=2))
    assert new_sd.keys() == sd.keys()
    changed = {k for k in sd if new_sd[k] is not sd[k]}
    expected = {
        f"decoder.block.{i}.layer.{j}.{m}.{p}.weight"
        for i in range(3)
        for j, m in ((0, "SelfAttention"), (1, "EncDecAttention"))
        for p in "kv"
    }
    assert changed == expected  # encoder untouched by default, q/o/bias untouched
    assert new_sd["decoder.block.0.layer.1.EncDecAttention.k.weight"].shape == (2 * 8, 48)
    assert new_config["model_type"] == "t5_gqa"
    assert (
        new_config["num_key_value_heads"],
        new_config["cross_num_key_value_heads"],
        new_config["encoder_num_key_value_heads"],
    ) == (2, 2, 8)
    assert new_config["gqa_attention"] == ["decoder_self", "cross"] and new_config["gqa_init"] == "mean"


def test_encoder_is_opt_in_and_per_kind_groups(source):
    config, sd = source
    plan = plan_conversion(
        config,
        GQASpec(groups={"encoder": 4, "decoder_self": 1, "cross": 2}, attention=("encoder", "decoder_self", "cross")),
    )
    assert plan.kv_heads == {"encoder": (8, 4), "decoder_self": (8, 1), "cross": (8, 2)}
    new_sd = plan.convert_state_dict(sd)
    assert new_sd["encoder.block.1.layer.0.SelfAttention.v.weight"].shape == (4 * 8, 48)


def test_random_init_is_reproducible_and_independent_of_tensor_order(source):
    config, sd = source
    spec = GQASpec(groups=2, init="random", seed=3)
    _, a = convert_state_dict(config, sd, spec)
    _, b = convert_state_dict(config, dict(reversed(list(sd.items()))), spec)
    _, c = convert_state_dict(config, sd, GQASpec(groups=2, init="random", seed=4))
    key = "decoder.block.2.layer.0.SelfAttention.k.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_variants_resolve_their_group_counts(source):
    config, _ = source
    assert plan_conversion(config, GQASpec(variant="mqa")).kv_heads["cross"] == (8, 1)
    assert plan_conversion(config, GQASpec(variant="mha")).kv_heads["cross"] == (8, 8)
    assert not plan_conversion(config, GQASpec(variant="mha")).changes_tensors


def test_a_gqa_checkpoint_can_be_reduced_further_or_expanded(source):
    config, sd = source
    config2, sd2 = convert_state_dict(config, sd, GQASpec(groups=4))
    config1, sd1 = convert_state_dict(config2, sd2, GQASpec(groups=2))
    _, direct = convert_state_dict(config, sd, GQASpec(groups=2))
    key = "decoder.block.1.layer.0.SelfAttention.k.weight"
    torch.testing.assert_close(sd1[key], direct[key], rtol=0, atol=1e-7)  # mean of means of equal groups
    with pytest.raises(InvalidGroupsError, match="valid values: 1, 2, 4, 8"):
        plan_conversion(config2, GQASpec(groups=3))
    _, back = convert_state_dict(config1, sd1, GQASpec(variant="mha"))
    assert back[key].shape == (64, 48)


@pytest.mark.parametrize(
    "spec, error, message",
    [
        (GQASpec(groups=3), InvalidGroupsError, "does not divide the 8 heads .* valid values: 1, 2, 4, 8"),
        (GQASpec(groups=0), InvalidGroupsError, "positive integer"),
        (GQASpec(groups=None), InvalidGroupsError, "--groups is required"),
        (GQASpec(variant="mqa", groups=2), InvalidGroupsError, "1 key/value head"),
        (GQASpec(variant="nope", groups=2), HfGqaError, "unknown variant 'nope'; choose one of dgqa, gkva, gqa"),
        (GQASpec(groups=2, init="median"), HfGqaError, "unknown init"),
        (GQASpec(groups=2, attention=("decoder",)), HfGqaError, "unknown or unselected attention kind 'decoder'"),
    ],
)
def test_bad_requests_are_refused_with_one_line(source, spec, error, message):
    with pytest.raises(error, match=message) as info:
        plan_conversion(source[0], spec)
    assert "\n" not in str(info.value)


def test_unsupported_model_type_lists_supported_ones():
    with pytest.raises(UnsupportedModelError, match=r"'bert' is not supported; supported: .*llama.*t5, t5_gqa"):
        plan_conversion({"model_type": "bert"}, GQASpec(groups=2))


def test_missing_tensor_is_reported(source):
    config, sd = source
    sd = {k: v for k, v in sd.items() if k != "decoder.block.0.layer.0.SelfAttention.k.weight"}
    with pytest.raises(HfGqaError, match="lacks tensors the gqa conversion of t5 needs"):
        convert_state_dict(config, sd, GQASpec(groups=2))
