"""ViT, the architecture of the KDGQA/DGQA/PGQA and GQKVA papers: every variant as the routed form `vit_routed`."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import pooled_qkv_oracle, run
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.conversion.sizes import routed_attention_parameters
from hf_gqa.conversion.streaming import save_streamed
from hf_gqa.modeling.routing import HeadRouting

PIXELS = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
VARIANTS = {
    "gqa": dict(groups=2),
    "mqa": dict(),
    "kdgqa": dict(groups=2),
    "dgqa": dict(groups=2),
    "pgqa": dict(groups=2),
    "gqkva": dict(groups=2, q_groups=4),
    "gkva": dict(groups=2),
    "mkva": dict(),
    "simgqa": dict(groups=2),
}


@pytest.fixture(scope="module")
def vit():
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=128,
        image_size=16,
        patch_size=4,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():  # biases start at zero: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.3)
    return model


def logits(model, pixels=PIXELS):
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_a_routed_vit_independent_of_the_batch(vit, variant):
    model = hf_gqa.convert(vit, variant=variant, **VARIANTS[variant]).eval()
    assert type(model).__name__ == "ViTRoutedForImageClassification" and model.config.model_type == "vit_routed"
    assert model.config.gqa_routing["self"]["heads"] == 8
    together = logits(model)
    assert together.isfinite().all()
    close(logits(model, PIXELS[1:2])[0], together[1])


def test_mha_and_gqkva_with_every_head_are_the_source(vit):
    assert torch.equal(logits(hf_gqa.convert(vit, variant="mha")), logits(vit))
    close(logits(hf_gqa.convert(vit, variant="gqkva", groups=8, q_groups=8)), logits(vit))


@pytest.mark.parametrize("q_groups,kv_groups", [(8, 2), (8, 1), (4, 2), (2, 8)])
def test_vit_equals_the_pooled_oracle(vit, q_groups, kv_groups):
    if q_groups == 8:
        options = dict(groups=kv_groups) if kv_groups > 1 else dict(variant="mqa")
    elif kv_groups == 8:
        options = dict(variant="gkva", groups=q_groups)
    else:
        options = dict(variant="gqkva", q_groups=q_groups, groups=kv_groups)
    close(logits(hf_gqa.convert(vit, **options)), logits(pooled_qkv_oracle(vit, q_groups, kv_groups)))
    for options in (dict(variant="pgqa", groups=2), dict(variant="dgqa", groups=2)):  # GQA in evaluation
        close(logits(hf_gqa.convert(vit, **options)), logits(hf_gqa.convert(vit, groups=2)))


def test_pgqa_perturbs_while_training_and_dgqa_learns_an_allocation(vit):
    pgqa = hf_gqa.convert(vit, variant="pgqa", groups=2).train()
    assert not torch.allclose(logits(pgqa), logits(pgqa.eval()), atol=1e-4)
    dgqa = hf_gqa.convert(vit, variant="dgqa", groups=2, window=1).train()
    with torch.no_grad():
        for layer in dgqa.vit.layers:
            layer.attention.k_proj.weight[8:] *= 5  # key head 1 (head_dim 8) gets the larger norms
    dgqa(pixel_values=PIXELS)
    routing = dgqa.vit.layers[0].attention.routing
    assert routing.reallocate() and routing.allocation.tolist()[1] > 4


def test_projection_weights_follow_the_formula(vit):
    model = hf_gqa.convert(vit, variant="gqkva", groups=2, q_groups=4)
    per_block = 64 * 8 * (4 + 2 * 2 + 8)
    for layer in model.vit.layers:
        attention = layer.attention
        assert sum(getattr(attention, f"{r}_proj").weight.numel() for r in "qkvo") == per_block
    assert routed_attention_parameters(model.config.to_dict()) == (2 * per_block, 2 * 4 * 64 * 8 * 8)


REMOTE = textwrap.dedent(
    """
    import sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.save(model(pixel_values=torch.load(sys.argv[2])).logits, sys.argv[3])
    """
)


def test_save_reload_remote_code_and_the_cli(vit, tmp_path, capsys):
    model = hf_gqa.convert(vit, variant="dgqa", groups=2)
    for module in model.modules():
        if isinstance(module, HeadRouting):
            module.allocation.copy_(torch.tensor([3, 5]))
    hf_gqa.save_converted(model, tmp_path / "dgqa")
    expected = logits(model.eval())
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "dgqa")
    assert type(reloaded).__module__.startswith("hf_gqa.") and torch.equal(logits(reloaded), expected)
    assert json.loads((tmp_path / "dgqa" / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"]
    torch.save(PIXELS, tmp_path / "pixels.pt")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    args = [str(tmp_path / "dgqa"), str(tmp_path / "pixels.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)

    # On disk ViT keeps its legacy tensor names: `convert` goes through memory, streaming refuses by name.
    vit.save_pretrained(tmp_path / "src")
    code, out, err = run(
        capsys, "convert", tmp_path / "src", "--variant", "gqkva", "--q-groups", "4", "-g", "2", "-o", tmp_path / "cli"
    )
    assert code == 0, err
    close(
        logits(AutoModelForImageClassification.from_pretrained(tmp_path / "cli")),
        logits(hf_gqa.convert(vit, variant="gqkva", groups=2, q_groups=4)),
    )
    with pytest.raises(hf_gqa.HfGqaError, match="name their tensors differently on disk"):
        save_streamed(tmp_path / "src", tmp_path / "streamed", GQASpec(groups=2), progress=False)


def test_what_vit_refuses(vit, tmp_path):
    with pytest.raises(hf_gqa.HfGqaError, match="ViT has no WGQA training form"):
        hf_gqa.convert(vit, variant="wgqa", groups=2)
    hf_gqa.save_converted(hf_gqa.convert(vit, groups=2), tmp_path / "gqa")
    with pytest.raises(hf_gqa.HfGqaError, match="already converted"):
        hf_gqa.convert(str(tmp_path / "gqa"), groups=1)
