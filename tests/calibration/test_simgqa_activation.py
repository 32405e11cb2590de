"""SimGQA's `--similarity activation` (ours): K/V heads grouped by how well their calibration outputs align.

Oracles that do not use the code under test: the best alignment found on the activations themselves (an SVD
Procrustes for any orthogonal map, a fine grid of angles for RoPE plane rotations) with its residual measured
directly; RoPE planes written out per family; and sources built so that heads {0, 5}, {1, 6}, {2, 7}, {3, 4} are
exact (RoPE-safe) transforms of one another, whose grouped model is written out by hand."""

import json
import math

import pytest
import torch
from conftest import make_t5
from helpers import one_error_line, random_batches, run, tensors
from tiny_decoders import make, make_gpt2

import hf_gqa
from hf_gqa.calibration.similarity import alignment_scores, alignment_similarity, head_similarities
from hf_gqa.core.hooks import TrainingState
from hf_gqa.errors import HfGqaError
from hf_gqa.training import SimGQARegroup, regroup_heads_

F64 = torch.float64
PAIRS = ((0, 5), (1, 6), (2, 7), (3, 4))
ORDER = [0, 5, 1, 6, 2, 7, 3, 4]  # the greedy grouping of PAIRS: group g holds heads ORDER[2g] and ORDER[2g + 1]


# ---- the formula against brute-force alignments of the activations ------------------------------------------


def rotation(theta: float) -> torch.Tensor:
    return torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)


def procrustes_residual_by_hand(ai: torch.Tensor, aj: torch.Tensor) -> float:
    """min over orthogonal R of |ai R - aj|^2: R from an SVD of ai^T aj, the residual measured on the rows."""
    u, _, vh = torch.linalg.svd(ai.T @ aj)
    return (ai @ (u @ vh) - aj).pow(2).sum().item()


def plane_residual_by_grid(pi: torch.Tensor, pj: torch.Tensor) -> float:
    """min over rotations (no reflection) R(theta) of |pi R - pj|^2 (pi, pj: (T, 2)): a grid of angles over the
    circle, then finer grids around the best angle (the residual is a sinusoid of theta: one minimum)."""

    def residuals(theta):
        c, s = theta.cos(), theta.sin()
        col0 = pi[:, :1] * c + pi[:, 1:] * s  # pi @ [[c, -s], [s, c]], one column per angle
        col1 = -pi[:, :1] * s + pi[:, 1:] * c
        return ((col0 - pj[:, :1]) ** 2 + (col1 - pj[:, 1:]) ** 2).sum(0)

    theta = torch.linspace(0, 2 * math.pi, 721, dtype=F64)
    for _ in range(3):
        values = residuals(theta)
        best, step = theta[int(values.argmin())], theta[1] - theta[0]
        theta = torch.linspace(best - step, best + step, 101, dtype=F64)
    return residuals(theta).min().item()


def best_score_by_hand(x, wi, wj, planes) -> float:
    """(|A_i|^2 + |A_j|^2 - min residual) / 2 for A = X W^T, the residual minimised over a rotation per plane and any
    orthogonal map on the other dims (block-diagonal R: the residual is a sum over the column blocks)."""
    return best_score_on_activations(x @ wi.T, x @ wj.T, planes)


def best_score_on_activations(ai, aj, planes) -> float:
    in_planes = [k for plane in planes for k in plane]
    rest = [k for k in range(ai.shape[1]) if k not in in_planes]
    residual = sum(plane_residual_by_grid(ai[:, list(p)], aj[:, list(p)]) for p in planes)
    if rest:
        residual += procrustes_residual_by_hand(ai[:, rest], aj[:, rest])
    return (ai.pow(2).sum().item() + aj.pow(2).sum().item() - residual) / 2


ROTATE_HALF = [(0, 4), (1, 5), (2, 6), (3, 7)]
ADJACENT = [(0, 1), (2, 3), (4, 5), (6, 7)]
PARTIAL = [(0, 2), (1, 3)]  # rotate_half over 4 rotary dims of 8; dims 4-7 unrotated


@pytest.mark.parametrize("planes", [[], ROTATE_HALF, ADJACENT, PARTIAL])
def test_the_score_is_the_best_alignment_of_the_activations(planes):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g, dtype=F64)
    heads = torch.randn(3, 8, 12, generator=g, dtype=F64)
    heads[2] = heads[0] + 0.3 * heads[1]  # a correlated pair too
    scores = alignment_scores(heads, x.T @ x, planes)
    for i, j in ((0, 1), (0, 2), (2, 1)):
        want = best_score_by_hand(x, heads[i], heads[j], planes)
        assert scores[i, j].item() == pytest.approx(want, rel=1e-6)
        assert scores[j, i].item() == pytest.approx(want, rel=1e-6)
    # the Procrustes oracle itself: no sampled orthogonal map does better
    ai, aj = x @ heads[0].T, x @ heads[1].T
    best = procrustes_residual_by_hand(ai, aj)
    for _ in range(50):
        q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))[0]
        assert (ai @ q - aj).pow(2).sum().item() >= best - 1e-9


def plane_rotation(d: int, planes, g: torch.Generator, reflect: tuple = ()) -> torch.Tensor:
    """A rotation by an angle in [2 pi / 3, 4 pi / 3] in each plane (a reflection in the planes of `reflect`), any
    orthogonal map on the dims outside the planes. The angles make a head and its transform far apart by cosine."""
    out = torch.zeros(d, d, dtype=F64)
    for index, (a, b) in enumerate(planes):
        theta = 2 * math.pi / 3 + torch.rand(1, generator=g, dtype=F64).item() * 2 * math.pi / 3
        block = rotation(theta) @ (
            torch.diag(torch.tensor([1.0, -1.0], dtype=F64)) if index in reflect else torch.eye(2, dtype=F64)
        )
        out[[[a], [b]], [a, b]] = block
    rest = [k for k in range(d) if k not in {k for p in planes for k in p}]
    if rest:
        out[[[r] for r in rest], rest] = orthogonal(len(rest), g)
    return out


def orthogonal(d: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def test_similarity_is_one_exactly_for_allowed_transforms():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 13, generator=g, dtype=F64)
    cov = x.T @ x
    w = torch.randn(8, 13, generator=g, dtype=F64)
    reflected = orthogonal(8, g)
    if torch.linalg.det(reflected) > 0:
        reflected[:, 0] = -reflected[:, 0]
    for planes in ([], ROTATE_HALF, ADJACENT, PARTIAL):
        heads = torch.stack(
            [
                w,
                plane_rotation(8, planes, g) @ w,  # allowed: similarity 1
                plane_rotation(8, planes, g, reflect=(0,)) @ w,  # a reflection in a RoPE plane
                torch.randn(8, 13, generator=g, dtype=F64),  # unrelated
                reflected @ w,  # any orthogonal map, a reflection included
            ]
        )
        sim = alignment_similarity(heads, cov, planes)
        torch.testing.assert_close(sim.diagonal(), torch.ones(5, dtype=F64), rtol=0, atol=1e-12)
        assert sim[0, 1].item() == pytest.approx(1.0, abs=1e-10)
        assert sim[0, 3].item() < 0.9 and ((sim >= 0) & (sim <= 1 + 1e-12)).all()
        if planes:  # RoPE keys: a reflection in a plane cannot be compensated
            assert sim[0, 2].item() < 1 - 1e-3 and sim[0, 4].item() < 1 - 1e-3
        else:  # values and keys without RoPE: any orthogonal map, reflections included
            assert sim[0, 2].item() == pytest.approx(1.0, abs=1e-10)
            assert sim[0, 4].item() == pytest.approx(1.0, abs=1e-10)
        # similarity = 1 - residual / the heads' energy, the residual measured on the activations
        ai, aj = x @ heads[0].T, x @ heads[3].T
        energy = ai.pow(2).sum().item() + aj.pow(2).sum().item()
        residual = energy - 2 * best_score_by_hand(x, heads[0], heads[3], planes)
        assert sim[0, 3].item() == pytest.approx(1 - residual / energy, rel=1e-6)


# ---- the family's RoPE planes, through a model's calibration pass ----------------------------------------------


def transform_head(linear: torch.nn.Linear, source: int, target: int, d: int, map_: torch.Tensor) -> None:
    """Head `target`'s rows (bias included) := map_ @ head `source`'s rows."""
    with torch.no_grad():
        rows = linear.weight[source * d : (source + 1) * d].double()
        linear.weight[target * d : (target + 1) * d] = (map_ @ rows).float()
        if linear.bias is not None:
            linear.bias[target * d : (target + 1) * d] = (
                map_ @ linear.bias[source * d : (source + 1) * d].double()
            ).float()


def captured_outputs(model, modules: dict, batches) -> dict[str, list[torch.Tensor]]:
    """What each of `modules` (name -> module) returned while `model` ran over `batches`."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    hooks = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out.detach()))
        for name, module in modules.items()
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch, use_cache=False)
    for hook in hooks:
        hook.remove()
    return outputs


# (model type, overrides, the RoPE planes of its keys written out, the other convention's planes)
FAMILY_PLANES = [
    ("llama", {}, ROTATE_HALF, ADJACENT),  # rotate_half: dims j, j + 4 of head_dim 8, with q/k/v biases
    ("helium", {}, ADJACENT, ROTATE_HALF),  # interleaved: dims 2j, 2j + 1
    ("phi", {"qk_layernorm": False}, PARTIAL, [(0, 1), (2, 3)]),  # partial rotary 0.5: 4 rotary dims of 8
]


@pytest.mark.parametrize(("model_type", "overrides", "planes", "other"), FAMILY_PLANES)
def test_keys_take_rotations_in_their_familys_rope_planes_only(model_type, overrides, planes, other):
    model = make(model_type, kv_heads=8, **overrides)
    attn = model.model.layers[0].self_attn
    d = 8  # the head_dim of each of these tiny models
    g = torch.Generator().manual_seed(2)
    transform_head(attn.k_proj, 0, 1, d, plane_rotation(d, planes, g))  # RoPE-safe in this family
    transform_head(attn.k_proj, 0, 2, d, plane_rotation(d, other, g))  # a rotation in the other convention's planes
    for target in (1, 2):
        transform_head(attn.v_proj, 0, target, d, orthogonal(d, g))
    batches = random_batches(96)
    sim = head_similarities(model, {"self": (8, 4)}, batches, progress=False)
    layer0 = sim[next(k for k in sim if ".0." in k)]
    assert layer0[0, 1].item() == pytest.approx(1.0, abs=1e-9)
    assert layer0[0, 2].item() < 1 - 1e-3  # only the values align exactly
    # unrelated heads: the similarity of the projections' own outputs (biases included) on the same batches
    outputs = captured_outputs(model, {"k": attn.k_proj, "v": attn.v_proj}, batches)
    by_hand = []
    for role, role_planes in (("k", planes), ("v", [])):
        acts = torch.cat(outputs[role]).double().reshape(-1, 8, d)  # (tokens, heads, d)
        ai, aj = acts[:, 0], acts[:, 3]
        energy = ai.pow(2).sum().item() + aj.pow(2).sum().item()
        by_hand.append(2 * best_score_on_activations(ai, aj, role_planes) / energy)
    assert layer0[0, 3].item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_t5_similarities_are_those_of_each_blocks_own_outputs():
    """Keys without RoPE take any orthogonal map; cross-attention's K/V read the encoder's output, not the decoder's
    hidden states its queries read: every pair against the projections' captured outputs."""
    model = make_t5("flan")
    batches = random_batches(128, n=2, length=12, encoder_decoder=True)
    sim = head_similarities(model, {"decoder_self": (8, 4), "cross": (8, 4)}, batches, progress=False)
    for prefix, attention in (
        ("decoder.block.1.layer.0.SelfAttention", model.decoder.block[1].layer[0].SelfAttention),
        ("decoder.block.1.layer.1.EncDecAttention", model.decoder.block[1].layer[1].EncDecAttention),
    ):
        outputs = captured_outputs(model, {"k": attention.k, "v": attention.v}, batches)
        acts = {r: torch.cat(outputs[r]).double().reshape(-1, 8, 8) for r in "kv"}
        for i, j in ((0, 1), (2, 7), (6, 3)):
            by_hand = 0.0
            for r in "kv":
                ai, aj = acts[r][:, i], acts[r][:, j]
                energy = ai.pow(2).sum().item() + aj.pow(2).sum().item()
                by_hand += best_score_on_activations(ai, aj, []) / energy  # 2 score / energy, halved: the mean
            assert sim[prefix][i, j].item() == pytest.approx(by_hand, rel=1e-6)


# ---- end to end: planted heads are grouped ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(t5_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(t5_tokenizer_dir)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "text.jsonl"
    words = "the model reads a sentence about heads and keys and values while the cache stays small".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (40,), generator=g)) for _ in range(20)]
    path.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    return str(path)


CALIBRATION = dict(calibration_samples=4, calibration_seq_len=32)


def plant_pairs(linear, d: int, map_of) -> None:
    for a, b in PAIRS:
        transform_head(linear, a, b, d, map_of())


def planted_llama():
    """8 K/V heads; in each layer head b's key is a RoPE-plane rotation of head a's (rotate_half planes, written
    out), its value an orthogonal map of head a's, for the pairs (a, b) of PAIRS (biases included)."""
    model = make("llama", kv_heads=8, vocab_size=32128)
    d, g = model.config.head_dim, torch.Generator().manual_seed(3)
    for layer in model.model.layers:
        plant_pairs(layer.self_attn.k_proj, d, lambda: plane_rotation(d, ROTATE_HALF, g))
        plant_pairs(layer.self_attn.v_proj, d, lambda: orthogonal(d, g))
    return model


def pooled_by_hand(weight: torch.Tensor, d: int) -> torch.Tensor:
    """K/V rows of 4 heads, each the mean of one planted pair (in ORDER's group order)."""
    heads = weight.detach().view(8, d, -1)
    return torch.cat([(heads[ORDER[2 * g]] + heads[ORDER[2 * g + 1]]) / 2 for g in range(4)])


def reordered_by_hand(weight: torch.Tensor, d: int) -> torch.Tensor:
    return weight.detach().view(8, d, -1)[ORDER].reshape(weight.shape)


def cosine_pairs(weight: torch.Tensor, d: int) -> list[float]:
    heads = weight.detach().double().view(8, -1)
    return [torch.nn.functional.cosine_similarity(heads[a], heads[b], dim=0).item() for a, b in PAIRS]


def test_llama_activation_groups_the_planted_pairs_and_key_cosine_does_not(tokenizer, text_file):
    source = planted_llama()
    d = source.config.head_dim
    model = hf_gqa.convert(source, variant="simgqa", groups=4, similarity="activation", calibration_data=text_file,
                           tokenizer=tokenizer, **CALIBRATION)  # fmt: skip
    assert type(model) is type(source)  # a stock Llama
    assert model.config.gqa_similarity == "activation" and model.config.num_key_value_heads == 4
    by_key = hf_gqa.convert(source, variant="simgqa", groups=4, similarity="key")
    for layer, src in zip(model.model.layers, source.model.layers, strict=True):
        for name in ("k_proj", "v_proj"):
            got, module = getattr(layer.self_attn, name), getattr(src.self_attn, name)
            torch.testing.assert_close(got.weight, pooled_by_hand(module.weight, d), rtol=0, atol=1e-6)
            torch.testing.assert_close(got.bias, pooled_by_hand(module.bias[:, None], d)[:, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.self_attn.q_proj.weight, reordered_by_hand(src.self_attn.q_proj.weight, d))
        assert max(cosine_pairs(src.self_attn.k_proj.weight, d)) < -0.3  # by construction, far apart by cosine
    key_layer = by_key.model.layers[0].self_attn.k_proj.weight
    assert not torch.allclose(key_layer, pooled_by_hand(source.model.layers[0].self_attn.k_proj.weight, d), atol=1e-3)


def planted_t5():
    """Every self- and cross-attention of a tiny T5 with the pairs of PAIRS: keys and values any orthogonal map of
    each other (T5 has no RoPE)."""
    model = make_t5("flan", vocab_size=32128)
    d, g = model.config.d_kv, torch.Generator().manual_seed(4)
    attentions = [b.layer[0].SelfAttention for b in model.encoder.block]
    attentions += [m for b in model.decoder.block for m in (b.layer[0].SelfAttention, b.layer[1].EncDecAttention)]
    for attention in attentions:
        plant_pairs(attention.k, d, lambda: orthogonal(d, g))
        plant_pairs(attention.v, d, lambda: orthogonal(d, g))
    return model, attentions


def test_t5_activation_groups_the_planted_pairs_in_encoder_decoder_and_cross(tokenizer, text_file):
    source, attentions = planted_t5()
    d = source.config.d_kv
    model = hf_gqa.convert(source, variant="simgqa", groups=4, attention=["encoder", "decoder_self", "cross"],
                           similarity="activation", calibration_data=text_file, tokenizer=tokenizer,
                           **CALIBRATION)  # fmt: skip
    assert model.config.gqa_similarity == "activation"
    assert model.config.gqa_head_order == {"encoder": [ORDER] * 2, "decoder_self": [ORDER] * 3}
    converted = [b.layer[0].SelfAttention for b in model.encoder.block]
    converted += [m for b in model.decoder.block for m in (b.layer[0].SelfAttention, b.layer[1].EncDecAttention)]
    for got, src in zip(converted, attentions, strict=True):
        torch.testing.assert_close(got.k.weight, pooled_by_hand(src.k.weight, d), rtol=0, atol=1e-6)
        torch.testing.assert_close(got.v.weight, pooled_by_hand(src.v.weight, d), rtol=0, atol=1e-6)
        torch.testing.assert_close(got.q.weight, reordered_by_hand(src.q.weight, d))


# ---- the CLI, streamed and in memory; refusals -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("planted") / "llama"
    planted_llama().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_converts_on_disk_and_in_memory_alike(llama_dir, text_file, tmp_path, capsys):
    args = ["convert", llama_dir, "--variant", "simgqa", "--groups", "4", "--similarity", "activation",
            "--calibration-data", text_file, "--calibration-samples", "4", "--calibration-seq-len", "32"]  # fmt: skip
    code, out, err = run(capsys, *args, "-o", tmp_path / "disk")
    assert code == 0, err
    assert "shard by shard" in out  # the similarity pass read one layer at a time, the conversion streamed
    code, out, err = run(capsys, *args, "--in-memory", "-o", tmp_path / "memory")
    assert code == 0 and "in memory" in out, err
    disk, memory = tensors(tmp_path / "disk"), tensors(tmp_path / "memory")
    assert disk.keys() == memory.keys() and all(torch.equal(disk[k], memory[k]) for k in disk)
    config = json.loads((tmp_path / "disk" / "config.json").read_text())
    assert config["gqa_similarity"] == "activation" and config["num_key_value_heads"] == 4
    source = tensors(llama_dir)
    for layer in range(2):
        key = f"model.layers.{layer}.self_attn.k_proj.weight"
        torch.testing.assert_close(disk[key], pooled_by_hand(source[key], 8), rtol=0, atol=1e-6)


def test_cli_refusals_are_one_line_with_status_2(llama_dir, text_file, tmp_path, capsys):
    no_tokenizer = tmp_path / "no-tokenizer"
    make("llama", kv_heads=8).save_pretrained(no_tokenizer)
    make("qwen3", kv_heads=8).save_pretrained(tmp_path / "qwen3")
    make("phi3", kv_heads=8).save_pretrained(tmp_path / "phi3")
    make_gpt2().save_pretrained(tmp_path / "gpt2")
    activation = ["--variant", "simgqa", "-g", "4", "--similarity", "activation"]
    data = ["--calibration-data", text_file]
    cases = [
        (llama_dir, activation, "--similarity activation needs --calibration-data"),
        (llama_dir, [*activation, *data, "--regroup-every", "200"], "groups the heads once"),
        (llama_dir, [*activation, *data, "--calibration-steps", "5"], "--calibration-steps applies to gqa and mqa"),
        (llama_dir, [*activation, *data, "--init", "activation"], "applies to gqa and mqa only"),
        (llama_dir, [*activation[:-1], "key", *data], "--calibration-data applies to simgqa with --similarity activ"),
        (llama_dir, ["--variant", "gqa", "-g", "4", "--similarity", "activation"], "apply to simgqa and simwgqa only"),
        (tmp_path / "qwen3", [*activation, *data], "qwen3 normalises queries and keys per head"),
        (tmp_path / "phi3", [*activation, *data], "phi3 fuses its q/k/v projections"),
        (tmp_path / "gpt2", [*activation, *data], "gpt2 fuses its q/k/v projections"),
        (no_tokenizer, [*activation, *data], "--similarity activation needs the model's tokenizer"),
    ]
    for source, extra, words in cases:
        code, _, err = run(capsys, "convert", source, *extra, "-o", tmp_path / "out")
        assert code == 2 and words in one_error_line(err), (extra, err)
        assert not (tmp_path / "out").exists()


def test_the_regrouping_hook_refuses_activation_similarity(tokenizer, text_file):
    with pytest.raises(HfGqaError, match="activation needs calibration text"):
        SimGQARegroup(every=2, similarity="activation")
    with pytest.raises(HfGqaError, match="groups the heads once"):
        hf_gqa.convert(make("llama"), variant="simgqa", groups=4, similarity="activation", regroup_every=2,
                       calibration_data=text_file)  # fmt: skip
    source = make("llama", kv_heads=8, vocab_size=32128)
    form = hf_gqa.convert(source, variant="simwgqa", groups=4, similarity="activation", calibration_data=text_file,
                          tokenizer=tokenizer, **CALIBRATION)  # fmt: skip
    assert form.config.gqa_similarity == "activation"
    with pytest.raises(HfGqaError, match=r"grouped by --similarity activation.*similarity='query'"):
        SimGQARegroup(every=1).on_train_begin(TrainingState(model=form, step=0))
    with pytest.raises(HfGqaError, match="grouped by --similarity activation"):
        regroup_heads_(form)
    assert len(regroup_heads_(form, similarity="query")) == 2  # by weights, named: both layers regrouped
    SimGQARegroup(every=1, similarity="value").on_train_begin(TrainingState(model=form, step=0))


def test_the_planner_needs_the_measured_similarities():
    source = make("llama", kv_heads=8)
    spec = hf_gqa.GQASpec(variant="simgqa", groups=4, similarity="activation", calibration_data="text.jsonl")
    with pytest.raises(HfGqaError, match="needs the head similarities of model.layers.0.self_attn"):
        hf_gqa.convert_model(source, spec)
    similarities = head_similarities(source, {"self": (8, 4)}, random_batches(96), progress=False)
    assert sorted(similarities) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    wrong = {k: v[:4, :4] for k, v in similarities.items()}
    with pytest.raises(HfGqaError, match=r"shape \(4, 4\), not 8 x 8"):
        hf_gqa.convert_model(source, spec, head_similarities=wrong)
    model, plan = hf_gqa.convert_model(source, spec, head_similarities=similarities, return_plan=True)
    assert plan.config["gqa_similarity"] == "activation" and model.config.num_key_value_heads == 4
