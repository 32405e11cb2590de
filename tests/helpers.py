"""Helpers shared by test modules: the CLI in this process, safetensors folders as dicts, a pooled-heads oracle."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_gqa.cli import main
from hf_gqa.core.grouping import regroup_heads


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("hf-gqa: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def pooled_qkv_oracle(source, q_groups: int, kv_groups: int):
    """The source MHA with each head's query, key and value replaced by its groups' means (H heads kept)."""
    sd = source.state_dict()
    heads = source.config.num_attention_heads
    for key in list(sd):
        groups = q_groups if ".q_proj." in key else kv_groups if (".k_proj." in key or ".v_proj." in key) else None
        if groups is not None:
            sd[key] = regroup_heads(regroup_heads(sd[key], heads, groups), groups, heads)
    return type(source).from_pretrained(None, config=source.config, state_dict=sd).eval()


def student_t_p_by_hand(t: float, df: int) -> float:
    """Two-sided p of Student's t, Abramowitz & Stegun 26.7.3 / 26.7.4: with theta = atan(|t| / sqrt(df)),
    A = 2 / pi * (theta + sin(theta) * (cos(theta) + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...)) for odd df,
    A = sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...) for even df (series up to cos^(df - 2)); p = 1 - A."""
    import math

    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        series, term = 0.0, c  # cos, 2/3 cos^3, ...
        for k in range(1, df - 1, 2):
            series += term
            term *= (k + 1) / (k + 2) * c * c
        a = 2 / math.pi * (theta + (s * series if df > 1 else 0.0))
    else:
        series, term = 0.0, 1.0  # 1, 1/2 cos^2, 1*3/(2*4) cos^4, ...
        for k in range(0, df - 1, 2):
            series += term
            term *= (k + 1) / (k + 2) * c * c
        a = s * series
    return 1 - a


def paired_t_by_hand(values, initial) -> float:
    """t of the mean of `values - initial` against 0: mean / (sample sd / sqrt(n))."""
    import math

    d = [v - i for v, i in zip(values, initial, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean / (sd / math.sqrt(n))


def random_batches(
    vocab: int, n: int = 3, length: int = 24, rows: int = 4, encoder_decoder: bool = False, seed: int = 0
):
    """`n` seeded batches of `rows` random token sequences (ids from 3 up); an encoder-decoder's decoder reads them
    reversed."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (rows, length), generator=g)
        batches.append({"input_ids": ids, "decoder_input_ids": ids.flip(1)} if encoder_decoder else {"input_ids": ids})
    return batches


def drop(folder, keep) -> list[str]:
    """Remove from the folder's safetensors every tensor `keep(key)` rejects; the removed keys."""
    sd = load_file(folder / "model.safetensors")
    dropped = sorted(k for k in sd if not keep(k))
    save_file({k: v for k, v in sd.items() if keep(k)}, folder / "model.safetensors", metadata={"format": "pt"})
    return dropped


def initialised_on_meta(build, *args, seed: int | None = None, **kwargs):
    """`build(*args, **kwargs)` on the meta device, then materialised and initialised as transformers does
    (`init_weights`), after `torch.manual_seed(seed)` when given."""
    with torch.device("meta"):
        model = build(*args, **kwargs)
    model.to_empty(device="cpu")
    if seed is not None:
        torch.manual_seed(seed)
    model.init_weights()
    return model


def missing_mixers_start_at(folder, model, auto_class, dropped, expected: float) -> tuple[int, int]:
    """Save the WGQA training form `model` to `folder`, drop the mixer weights `dropped(key)` names, reload it with
    `auto_class`, and build one from its config on the meta device: every dropped mixer and every built one must
    equal `expected`. Returns how many were dropped and built."""
    model.save_pretrained(folder)
    mixers = drop(folder, lambda key: not (key.endswith("mixer.weight") and dropped(key)))
    loaded = auto_class.from_pretrained(folder).state_dict()
    for key in mixers:
        assert torch.equal(loaded[key], torch.full_like(loaded[key], expected)), key
    built = initialised_on_meta(auto_class.from_config, model.config)
    weights = [p for name, p in built.named_parameters() if name.endswith("mixer.weight")]
    assert all(torch.equal(w, torch.full_like(w, expected)) for w in weights)
    return len(mixers), len(weights)
