"""The aligned init (hf_gqa.calibration.align) against oracles written out here: the source's own logits (the
alignment alone must keep the function), RoPE rotations built by hand (the key transforms must commute with them),
heads built as exact rotations of one another (the alignment must find them), and head-output errors computed by
hand from the calibration inputs (aligned then pooled never worse than the plain mean)."""

import copy

import pytest
import torch
from conftest import make_t5
from helpers import random_batches
from tiny_decoders import make

from hf_gqa.calibration.align import (
    align_group,
    align_heads,
    aligned_init,
    aligned_refusal,
    key_transform,
    procrustes,
    rope_planes,
    write_block,
)
from hf_gqa.conversion.memory import convert_model
from hf_gqa.errors import HfGqaError
from hf_gqa.families import family_for
from hf_gqa.spec import GQASpec


def batches_for(vocab: int, n: int = 3, length: int = 16, encoder_decoder: bool = False, seed: int = 0):
    return random_batches(vocab, n, length, rows=2, encoder_decoder=encoder_decoder, seed=seed)


def blocks_of(model):
    config = model.config.to_dict()
    family, _ = family_for(config)
    return family.attention_blocks(config, model.state_dict().keys())


def capture_inputs(model, blocks, batches) -> dict[str, torch.Tensor]:
    """The inputs of each block's k projection, as rows with a constant 1 appended (float64)."""
    seen: dict[str, list] = {}

    def hook(key):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            seen.setdefault(key, []).append(torch.cat([x, x.new_ones(len(x), 1)], dim=1))

        return fn

    handles = [
        model.get_submodule(b.kv_keys[0].rsplit(".", 1)[0]).register_forward_pre_hook(hook(b.kv_keys[0]))
        for b in blocks
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch, use_cache=False)
    for h in handles:
        h.remove()
    return {key: torch.cat(rows) for key, rows in seen.items()}


def moments_of(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: x.T @ x for key, x in inputs.items()}


# (model builder, vocab, RoPE rotary dims of a key head (written out per family), pairs of dims RoPE rotates together)
def llama():
    return make("llama", kv_heads=8)  # q/k/v/o biases (tiny_decoders' llama override), full RoPE, head_dim 8


CASES = {
    "llama": (llama, 96, 8, [(0, 4), (1, 5), (2, 6), (3, 7)]),
    "llama-gqa-source": (lambda: make("llama", kv_heads=4, attention_bias=False), 96, 8, None),
    "qwen2": (lambda: make("qwen2", kv_heads=4), 96, 8, None),  # q/k/v biases
    "phi-partial-rotary": (lambda: make("phi", kv_heads=8, qk_layernorm=False), 96, 4, [(0, 2), (1, 3)]),
    "stablelm-partial-rotary": (
        lambda: make("stablelm", kv_heads=8, qk_layernorm=False, use_qkv_bias=True),
        96,
        2,
        [(0, 1)],
    ),
    "helium-interleaved": (lambda: make("helium", kv_heads=8), 96, 8, [(0, 1), (2, 3), (4, 5), (6, 7)]),
    "t5": (lambda: make_t5("flan"), 128, 0, []),
}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_alignment_alone_keeps_the_source_logits(case):
    build, vocab, rotary, planes = CASES[case]
    source = build().double()
    ed = case == "t5"
    blocks = blocks_of(source)  # every attention block; T5: encoder, decoder self- and cross-attention
    if planes is not None:
        assert rope_planes(source.config.model_type, rotary) == planes
    moments = moments_of(capture_inputs(source, blocks, batches_for(vocab, encoder_decoder=ed)))
    aligned = copy.deepcopy(source)
    moved = 0.0
    for block in blocks:
        groups = max(block.kv_heads // 4, 1)
        rows = align_heads(source, block, groups, moments, rotary)
        k = source.get_submodule(block.kv_keys[0].rsplit(".", 1)[0]).weight.double()
        moved = max(moved, (rows.k[:, :-1] - k).abs().max().item())
        write_block(aligned, block, rows)
    assert moved > 1e-2  # the alignment really moved the heads
    held_out = batches_for(vocab, n=1, encoder_decoder=ed, seed=7)[0]
    torch.testing.assert_close(logits(aligned, held_out), logits(source, held_out), atol=1e-9, rtol=1e-9)


def rope_rotation(d: int, planes: list[tuple[int, int]], angles: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE at one position, written out: plane (a, b) maps (x_a, x_b) -> rotated by the angle."""
    r = torch.eye(d, dtype=torch.float64)
    for (a, b), t in zip(planes, angles, strict=True):
        c, s = torch.cos(t), torch.sin(t)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def plane_rotated(w: torch.Tensor, planes, angles) -> torch.Tensor:
    return rope_rotation(w.shape[0], planes, angles) @ w


def test_key_transforms_commute_with_rope_and_recover_exact_plane_rotations():
    g = torch.Generator().manual_seed(0)
    d, n, rotary = 8, 13, 6  # partial rotary: dims 6, 7 are not rotated
    planes = rope_planes("llama", rotary)
    assert planes == [(0, 3), (1, 4), (2, 5)]
    x = torch.randn(300, n - 1, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.ones(300, 1, dtype=torch.float64)], dim=1)
    cov = x.T @ x
    base = torch.randn(d, n, generator=g, dtype=torch.float64)
    heads = []
    for _ in range(3):  # each head: base with its RoPE planes rotated and an orthogonal map on the rest
        w = plane_rotated(base, planes, torch.rand(3, generator=g, dtype=torch.float64) * 6)
        q, _ = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=torch.float64))
        w[6:] = q @ w[6:]
        heads.append(w)
    maps = align_group(heads, cov, key_transform(planes, d))
    aligned = [a @ w for a, w in zip(maps, heads, strict=True)]
    for a, w in zip(maps, aligned, strict=True):
        torch.testing.assert_close(a @ a.T, torch.eye(d, dtype=torch.float64))  # orthogonal
        for t in (0.3, 1.7, -2.2):  # commutes with RoPE at any position
            r = rope_rotation(d, planes, torch.full((3,), t, dtype=torch.float64))
            torch.testing.assert_close(a @ r, r @ a)
        torch.testing.assert_close(x @ w.T, x @ aligned[0].T)  # the heads' outputs now coincide
    mean = torch.stack(heads).mean(0)
    assert sum((x @ (w - mean).T).pow(2).sum() for w in heads) > 1.0  # while the plain mean loses a lot


def test_a_plane_reflection_is_not_taken_for_keys_but_is_for_values():
    g = torch.Generator().manual_seed(1)
    d, n = 4, 9
    planes = rope_planes("llama", d)
    x = torch.randn(200, n, generator=g, dtype=torch.float64)
    cov = x.T @ x
    w = torch.randn(d, n, generator=g, dtype=torch.float64)
    flip = torch.eye(d, dtype=torch.float64)
    flip[2, 2] = -1  # reflects the plane (0, 2): RoPE's rotation would become its inverse
    keys = align_group([w, flip @ w], cov, key_transform(planes, d))
    assert all(torch.linalg.det(a[[0, 2]][:, [0, 2]]) > 0 for a in keys)
    values = align_group([w, flip @ w], cov, procrustes)
    torch.testing.assert_close(x @ (values[0] @ w).T, x @ (values[1] @ flip @ w).T)  # any orthogonal map


def hand_errors(xs, heads_before, pooled, maps):
    """sum over heads of |X (A_h^T pooled) - X W_h|^2: what each query (or o_proj) sees in the source's frame."""
    return sum((xs @ (a.T @ pooled).T - xs @ w.T).pow(2).sum().item() for w, a in zip(heads_before, maps, strict=True))


def test_aligned_then_pooled_reproduces_the_heads_no_worse_than_the_plain_mean():
    """Tiny Llama 8 -> 2 K/V heads: the errors of the K and V head outputs on the calibration inputs, by hand. The
    transform of head h is read back from the converted model's weights (queries: A_h q; o_proj: o A_h^T)."""
    source = make("llama", kv_heads=8)
    blocks = blocks_of(source)
    inputs = capture_inputs(source, blocks, batches_for(96, n=4, length=24))
    moments = moments_of(inputs)
    target, plan = convert_model(source, GQASpec(groups=2, init="mean"), return_plan=True)
    mean = copy.deepcopy(target)
    for block in blocks:
        aligned_init(source, target, block, 2, moments, 8)
    totals = {"plain": 0.0, "fitted": 0.0}
    for block in blocks:
        p = block.prefix
        xs = inputs[block.kv_keys[0]]
        src, new, old = (m.get_submodule(p) for m in (source, target, mean))

        def rows(linear, heads):
            w = torch.cat([linear.weight, linear.bias[:, None]], dim=1).double()
            return list(w.view(heads, 8, -1).unbind(0))

        k_src, v_src, q_src, q_new = rows(src.k_proj, 8), rows(src.v_proj, 8), rows(src.q_proj, 8), rows(new.q_proj, 8)
        o_src = src.o_proj.weight.double().view(-1, 8, 8).unbind(1)
        o_new = new.o_proj.weight.double().view(-1, 8, 8).unbind(1)
        key_maps = [torch.linalg.lstsq(q_src[h].T, q_new[h].T).solution.T for h in range(8)]  # q_new = A q_src
        value_maps = [torch.linalg.lstsq(o_src[h], o_new[h]).solution.T for h in range(8)]  # o_new = o_src A^T
        for a in key_maps + value_maps:
            torch.testing.assert_close(a @ a.T, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
        for role, src_heads, maps in (("k", k_src, key_maps), ("v", v_src, value_maps)):
            new_heads, old_heads = rows(getattr(new, f"{role}_proj"), 2), rows(getattr(old, f"{role}_proj"), 2)
            for g in range(2):
                members = range(4 * g, 4 * g + 4)
                torch.testing.assert_close(old_heads[g], torch.stack([src_heads[h] for h in members]).mean(0))
                aligned = [maps[h] @ src_heads[h] for h in members]
                torch.testing.assert_close(new_heads[g], torch.stack(aligned).mean(0), atol=1e-5, rtol=1e-5)
                before = [src_heads[h] for h in members]
                plain = hand_errors(xs, before, old_heads[g], [torch.eye(8, dtype=torch.float64)] * 4)
                fitted = hand_errors(xs, before, new_heads[g], [maps[h] for h in members])
                assert fitted <= plain * (1 + 1e-5), (p, role, g, fitted, plain)
                totals["plain"] += plain
                totals["fitted"] += fitted
    assert totals["fitted"] < 0.5 * totals["plain"], totals  # and here it helps a lot


@pytest.mark.parametrize("case", ["t5", "llama"])
def test_aligned_init_on_the_converted_model_runs_every_block(case):
    """T5: decoder self- and cross-attention (the converter's default); Llama: MQA. Logits stay finite and differ
    from the mean's (the init did something)."""
    build, vocab, rotary, _ = CASES[case]
    source = build()
    ed = case == "t5"
    spec = GQASpec(groups=1, init="mean", **({"attention": ["decoder_self", "cross"]} if ed else {}))
    target, plan = convert_model(source, spec, return_plan=True)
    mean = copy.deepcopy(target)
    blocks = [b for b in blocks_of(source) if b.kind in plan.kv_heads and len(set(plan.kv_heads[b.kind])) == 2]
    moments = moments_of(capture_inputs(source, blocks, batches_for(vocab, encoder_decoder=ed)))
    for block in blocks:
        aligned_init(source, target, block, 1, moments, rotary)
    batch = batches_for(vocab, n=1, encoder_decoder=ed, seed=3)[0]
    got = logits(target, batch)
    assert torch.isfinite(got).all() and (got - logits(mean, batch)).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (lambda: make("qwen3", kv_heads=8), "qwen3 normalises queries and keys per head"),
        (lambda: make("stablelm", kv_heads=8), "stablelm normalises queries and keys per head"),
        (lambda: make("olmo2", kv_heads=8), "olmo2 normalises queries and keys per head"),
        (lambda: make("phi3", kv_heads=8), "phi3 fuses its q/k/v projections"),
    ],
)
def test_refusals_are_one_line(model, words):
    source = model()
    blocks = blocks_of(source)
    message = aligned_refusal(source.config.to_dict(), blocks)
    assert message.startswith(f"--init aligned: {words}") and "\n" not in message
    target = copy.deepcopy(source)
    with pytest.raises(HfGqaError, match=words):
        aligned_init(source, target, blocks[0], 1, {}, 8)
    assert aligned_refusal(make("llama", kv_heads=8).config.to_dict(), blocks_of(make("llama", kv_heads=8))) is None
