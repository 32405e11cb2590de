"""GPT-NeoX / Pythia: re-expressed exactly as a stock Phi checkpoint, which has GQA in transformers.

GPT-NeoX with a parallel residual (every Pythia) computes `x + attn(ln1(x)) + mlp(ln2(x))`; Phi computes
`x + attn(ln(x)) + mlp(ln(x))` with one LayerNorm. Folding each LayerNorm's affine into the projections that read it
(`W diag(gamma)`, `b + W beta`) and giving Phi's LayerNorm gamma=1, beta=0 makes the two the same function. The
interleaved `query_key_value` ([q|k|v] per head) splits into Phi's q/k/v projections, `embed_out` becomes Phi's
`lm_head` with a zero bias (a sequence- or token-classification head becomes Phi's `score`, unchanged),
and partial rotary carries over. The GQA conversion then runs on the Phi checkpoint,
so the output loads in plain transformers without hf-gqa.
"""

from collections.abc import Iterable

import torch
from transformers import GPTNeoXConfig

from ..core.tensormap import TensorMap, TensorOp
from ..errors import UnsupportedModelError
from .base import AttentionBlock, Family
from .decoders import NativeGQA

_HEADS = {
    "GPTNeoXForCausalLM": "PhiForCausalLM",
    "GPTNeoXModel": "PhiModel",
    "GPTNeoXForSequenceClassification": "PhiForSequenceClassification",  # `score` (no bias) in both
    "GPTNeoXForTokenClassification": "PhiForTokenClassification",  # `classifier` becomes Phi's `score` (with bias)
}
_CLASSIFIERS = {"GPTNeoXForSequenceClassification": "score", "GPTNeoXForTokenClassification": "classifier"}
# What a classification head's config carries over (the labels; its dropout while training).
_LABEL_KEYS = ("id2label", "label2id", "problem_type", "classifier_dropout")


def _fold_weight(weight: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return (weight.double() * gamma.double()[None, :]).to(weight.dtype)


def _fold_bias(weight: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    folded = weight.double() @ beta.double()
    if bias is not None:
        folded = folded + bias.double()
    return folded.to(weight.dtype)


class GPTNeoX(Family):
    name = "gpt-neox"
    source_model_types = ("gpt_neox",)
    attention_kinds = ("self",)
    default_attention = ("self",)

    @staticmethod
    def _normalised(config: dict) -> dict:
        return GPTNeoXConfig.from_dict(config).to_dict()  # legacy keys (rotary_pct, rotary_emb_base) -> v5 ones

    def reexpress(self, config: dict, keys: Iterable[str] | None = None) -> tuple[dict, TensorMap]:
        c = self._normalised(config)
        architectures = c.get("architectures") or ["GPTNeoXForCausalLM"]
        unknown = [a for a in architectures if a not in _HEADS]
        if unknown:
            raise UnsupportedModelError(f"{unknown[0]} is not supported; hf-gqa converts {', '.join(_HEADS)}")
        if not c.get("use_parallel_residual", True):
            raise UnsupportedModelError(
                "gpt_neox with use_parallel_residual=False (a sequential residual) has no exact stock GQA "
                "equivalent; only parallel-residual GPT-NeoX (every Pythia) is supported"
            )
        has_head = architectures[0] == "GPTNeoXForCausalLM"
        classifier = _CLASSIFIERS.get(architectures[0])
        nested = has_head or classifier is not None  # the base model under `gpt_neox.` (on disk) / `model.` (Phi)
        src = "gpt_neox." if nested else ""
        if keys is not None and nested and not any(k.startswith("gpt_neox.") for k in keys):
            src = ""
        dst = "model." if nested else ""
        # transformers 5 names the head `lm_head` in memory; checkpoints on disk (Pythia) call it `embed_out`.
        head = "embed_out.weight" if keys is not None and "embed_out.weight" in set(keys) else "lm_head.weight"
        phi = {
            key: c[key]
            for key in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "attention_dropout",
                "hidden_act",
                "max_position_embeddings",
                "initializer_range",
                "layer_norm_eps",
                "use_cache",
                "tie_word_embeddings",
                "rope_parameters",
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
                "dtype",
                "_name_or_path",
            )
            if key in c
        }
        if classifier is not None:
            phi.update({key: c[key] for key in _LABEL_KEYS if key in c})
        phi.update(
            model_type="phi",
            architectures=[_HEADS[architectures[0]]],
            num_key_value_heads=c["num_attention_heads"],
            resid_pdrop=c.get("hidden_dropout", 0.0),
            embd_pdrop=0.0,
            qk_layernorm=False,
        )
        ops = self._ops(c, src, dst, has_head, head)
        if classifier is not None:  # the head, copied through as Phi's `score`
            for suffix in ("weight", "bias") if classifier == "classifier" else ("weight",):
                ops[f"score.{suffix}"] = TensorOp((f"{classifier}.{suffix}",), lambda t: t)
        return phi, TensorMap(
            ops=ops,
            passthrough=False,
            ignore=("*attention.bias", "*attention.masked_bias", "*rotary_emb.inv_freq")
            + ((head,) if c.get("tie_word_embeddings") else ()),
            name="re-expression of gpt_neox as phi",
        )

    @staticmethod
    def _ops(c: dict, src: str, dst: str, has_head: bool, head: str) -> dict[str, TensorOp]:
        heads, hidden = c["num_attention_heads"], c["hidden_size"]
        head_dim = hidden // heads
        bias = c.get("attention_bias", True)
        ops: dict[str, TensorOp] = {}

        def rename(out: str, inp: str) -> None:
            ops[out] = TensorOp((inp,), lambda t: t)

        def qkv_part(t: torch.Tensor, part: int) -> torch.Tensor:
            return t.reshape(heads, 3, head_dim, *t.shape[1:])[:, part].reshape(heads * head_dim, *t.shape[1:])

        rename(f"{dst}embed_tokens.weight", f"{src}embed_in.weight")
        for i in range(c["num_hidden_layers"]):
            s, d = f"{src}layers.{i}", f"{dst}layers.{i}"
            ln1, ln2 = f"{s}.input_layernorm", f"{s}.post_attention_layernorm"
            qkv = f"{s}.attention.query_key_value"
            for part, name in enumerate("qkv"):
                ops[f"{d}.self_attn.{name}_proj.weight"] = TensorOp(
                    (f"{qkv}.weight", f"{ln1}.weight"), lambda w, g, part=part: _fold_weight(qkv_part(w, part), g)
                )
                if bias:
                    ops[f"{d}.self_attn.{name}_proj.bias"] = TensorOp(
                        (f"{qkv}.weight", f"{ln1}.bias", f"{qkv}.bias"),
                        lambda w, b, bb, part=part: _fold_bias(qkv_part(w, part), b, qkv_part(bb, part)),
                    )
                else:
                    ops[f"{d}.self_attn.{name}_proj.bias"] = TensorOp(
                        (f"{qkv}.weight", f"{ln1}.bias"), lambda w, b, part=part: _fold_bias(qkv_part(w, part), b)
                    )
            rename(f"{d}.self_attn.dense.weight", f"{s}.attention.dense.weight")
            if bias:
                rename(f"{d}.self_attn.dense.bias", f"{s}.attention.dense.bias")
            else:
                ops[f"{d}.self_attn.dense.bias"] = TensorOp(
                    (f"{s}.attention.dense.weight",), lambda w: w.new_zeros(w.shape[0])
                )
            up = f"{s}.mlp.dense_h_to_4h"
            ops[f"{d}.mlp.fc1.weight"] = TensorOp((f"{up}.weight", f"{ln2}.weight"), _fold_weight)
            ops[f"{d}.mlp.fc1.bias"] = TensorOp((f"{up}.weight", f"{ln2}.bias", f"{up}.bias"), _fold_bias)
            rename(f"{d}.mlp.fc2.weight", f"{s}.mlp.dense_4h_to_h.weight")
            rename(f"{d}.mlp.fc2.bias", f"{s}.mlp.dense_4h_to_h.bias")
            ops[f"{d}.input_layernorm.weight"] = TensorOp((f"{ln1}.weight",), torch.ones_like)
            ops[f"{d}.input_layernorm.bias"] = TensorOp((f"{ln1}.bias",), torch.zeros_like)
        rename(f"{dst}final_layernorm.weight", f"{src}final_layer_norm.weight")
        rename(f"{dst}final_layernorm.bias", f"{src}final_layer_norm.bias")
        if has_head:
            if c.get("tie_word_embeddings"):
                head = f"{src}embed_in.weight"
            else:
                ops["lm_head.weight"] = TensorOp((head,), lambda t: t)
            ops["lm_head.bias"] = TensorOp((head,), lambda t: t.new_zeros(t.shape[0]))
        return ops

    # Only `reexpress` is used: the GQA conversion runs on the Phi checkpoint (see native.py).
    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        phi, _ = self.reexpress(config)
        return NativeGQA().attention_blocks(phi)

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        c = self._normalised(config)
        head_dim = c["hidden_size"] // c["num_attention_heads"]
        return {"self": 2 * c["num_attention_heads"] * head_dim * c["num_hidden_layers"] * bytes_per_value}

    def num_heads(self, config: dict) -> int:
        return config["num_attention_heads"]


__all__ = ["GPTNeoX"]
