"""Tiny decoder-only models built from configs, shared by the family, variant and streaming tests."""

import textwrap

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

SMALL = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    max_position_embeddings=128,
)
# Per family: what makes a tiny model valid, and the options that switch on what a converter must handle.
OVERRIDES = {
    "gemma": dict(head_dim=16),  # head_dim != hidden_size / heads
    "gemma2": dict(head_dim=16),
    "gemma3_text": dict(head_dim=16),
    "qwen3": dict(head_dim=8),
    "exaone4": dict(head_dim=8),
    "helium": dict(head_dim=8),
    "ministral": dict(head_dim=8),
    "glm": dict(head_dim=8),
    "smollm3": dict(head_dim=8),
    "mixtral": dict(num_local_experts=2, num_experts_per_tok=1),
    "qwen2_moe": dict(
        num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32
    ),
    "qwen3_moe": dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, head_dim=8),
    "olmoe": dict(num_experts=2, num_experts_per_tok=1),
    "granitemoe": dict(num_local_experts=2, num_experts_per_tok=1),
    "granite": dict(attention_bias=True),
    "llama": dict(attention_bias=True),
    "cohere": dict(use_qk_norm=True),
    "stablelm": dict(qk_layernorm=True),
    "phi": dict(qk_layernorm=True),
}
IDS = torch.randint(3, 96, (2, 11), generator=torch.Generator().manual_seed(0))


def make(model_type: str, kv_heads: int = 8, **overrides):
    config = AutoConfig.for_model(
        model_type, **{**SMALL, "num_key_value_heads": kv_heads, **OVERRIDES.get(model_type, {}), **overrides}
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and norm weights start at 0 and 1: make them matter
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def make_neox(dtype=torch.float32, **overrides):
    config = GPTNeoXConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=128,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        **overrides,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model.to(dtype)


STOCK_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["hf_gqa"] = None
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    assert type(model).__name__ == sys.argv[2] and model.config.num_key_value_heads == 1
    """
)


GPT2_SMALL = dict(
    vocab_size=128,
    n_embd=64,
    n_head=8,
    n_layer=2,
    n_positions=64,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=1,
)


def make_gpt2(cls=GPT2LMHeadModel, seed: int = 0, **overrides):
    """A tiny GPT-2 whose attention matters: sharper Q/K, random biases."""
    torch.manual_seed(seed)
    model = cls(GPT2Config(**{**GPT2_SMALL, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "attn.c_attn" in name:
                p.normal_(0, 0.3 if p.dim() == 2 else 0.5)
    return model.eval()
