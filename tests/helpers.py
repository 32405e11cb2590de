"""Helpers shared by test modules: the CLI in this process, safetensors folders as dicts, a pooled-heads oracle."""

import torch
from safetensors import safe_open

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
