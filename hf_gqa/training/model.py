"""The model side of uptraining: load or convert, freeze what should not train, build hooks, fold, describe.

Variants that train in a form different from their inference form (WGQA's learned mixing weights, SimGQA's
regrouping) plug in through three points, none of which the recipe needs to know about:

- `hf_gqa.convert(source, variant=..., groups=...)` returns the model to train (its training form);
- training hooks (`hf_gqa.training.TrainingHook`), named in the recipe's `hooks` option, run after each optimizer step;
- `hf_gqa.fold(model)`, when hf-gqa has it, turns the trained model into its inference form before it is saved.
"""

import ast
import importlib
import re

from ..conversion.memory import convert, load_source
from ..conversion.memory import fold as fold_training_form
from ..conversion.sizes import kv_cache_bytes_per_token
from ..core.hooks import TrainingHook
from ..errors import HfGqaError
from ..registry import required_hooks, resolve
from ..variants.wgqa import is_training_form


def load_for_uptraining(
    model_name_or_path: str,
    convert_variant: str | None = None,
    groups: int | None = None,
    init: str = "mean",
    attention: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    dtype=None,
    **variant_options,
):
    """The model to uptrain: `model_name_or_path` as it is (a converted checkpoint, or a model to fine-tune), or,
    with `convert_variant`, that source converted in memory (`hf_gqa.convert`), in training mode.
    `variant_options` that are not None go to `hf_gqa.convert` too (e.g. WGQA's `weights`, `weights_init`)."""
    if convert_variant:
        model = convert(
            model_name_or_path,
            groups=groups,
            variant=convert_variant,
            init=init,
            attention=tuple(attention) if attention else None,
            seed=seed,
            dtype=dtype,
            **{k: v for k, v in variant_options.items() if v is not None},
        )
    else:
        if groups is not None or any(v is not None for v in variant_options.values()):
            raise HfGqaError("conversion options need --convert-variant (the model is otherwise used as it is)")
        model = load_source(model_name_or_path, dtype=dtype)
        _forget_gguf_quantization(model)
    return model.train()


def _forget_gguf_quantization(model) -> None:
    """A GGUF source arrives dequantised but still marked as quantized, which `save_pretrained` refuses."""
    quantization = getattr(model.config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    method = method or getattr(quantization, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf":
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False


def freeze_relative_attention_bias(model) -> int:
    """Stop training T5's relative position bias; returns how many parameters were frozen.

    With a bias that needs no gradient, `scaled_dot_product_attention` keeps its fused kernel in training (a
    trainable float mask sends it to the math kernel, which materialises B x H x S x S and repeats K/V).
    """
    frozen = 0
    for name, parameter in model.named_parameters():
        if "relative_attention_bias" in name and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def fold(model):
    """The inference form of a trained model: `hf_gqa.fold(model)` for a training form (WGQA's weighted K/V), the
    model itself otherwise."""
    return fold_training_form(model) if is_training_form(model.config) else model


_HOOK = re.compile(r"^\s*(?:(?P<module>[A-Za-z_][\w.]*):)?(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<args>.*)\))?\s*$", re.S)
HOOK_NAMESPACES = ("hf_gqa.training", "hf_gqa")


def parse_hook_spec(spec: str) -> tuple[str | None, str, dict]:
    """`"module.path:Class(key=value, ...)"` (module optional) -> (module, class name, keyword arguments).

    Values are Python literals (`ast.literal_eval`; nothing is evaluated). Without a module, the class is looked up
    in `hf_gqa.training`, then `hf_gqa`.
    """
    match = _HOOK.match(spec)
    if not match:
        raise HfGqaError(f"hook {spec!r}: expected 'module.path:Class(key=value, ...)'")
    kwargs = {}
    if match["args"] and match["args"].strip():
        try:
            call = ast.parse(f"f({match['args']})", mode="eval").body
            if call.args:
                raise ValueError("positional arguments")
            for keyword in call.keywords:
                if keyword.arg is None:
                    raise ValueError("** arguments")
                if keyword.arg in kwargs:
                    raise ValueError(f"{keyword.arg} given twice")
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except (SyntaxError, ValueError, TypeError) as error:
            raise HfGqaError(f"hook {spec!r}: arguments must be key=literal pairs ({error})") from None
    return match["module"], match["name"], kwargs


def resolve_hook(spec: str) -> tuple[type[TrainingHook], dict]:
    """The hook class a spec names and its keyword arguments, without calling anything: the class must be a
    `TrainingHook` subclass (`hf_gqa.core.hooks`), so a spec such as `subprocess:run(args=..., shell=True)` is refused
    before it runs. The spec's module is imported, as any Python import: name only modules you trust."""
    module_name, name, kwargs = parse_hook_spec(spec)
    cls = None
    for candidate in [module_name] if module_name else HOOK_NAMESPACES:
        try:
            module = importlib.import_module(candidate)
        except ImportError as error:
            raise HfGqaError(f"hook {spec!r}: cannot import {candidate!r}: {error}") from None
        cls = getattr(module, name, None)
        if cls is not None:
            break
    if cls is None:
        raise HfGqaError(f"hook {spec!r}: no class {name!r} in {module_name or ' or '.join(HOOK_NAMESPACES)}")
    if not (isinstance(cls, type) and issubclass(cls, TrainingHook)):
        raise HfGqaError(
            f"hook {spec!r}: {name} is not a training hook (a subclass of hf_gqa.training.TrainingHook); "
            "nothing was called"
        )
    return cls, kwargs


def build_hooks(specs: list[str] | None) -> list[TrainingHook]:
    """Instantiate training hooks from their specs (see `parse_hook_spec` and `resolve_hook`)."""
    hooks = []
    for spec in specs or []:
        cls, kwargs = resolve_hook(spec)
        try:
            hooks.append(cls(**kwargs))
        except TypeError as error:
            raise HfGqaError(f"hook {spec!r}: {error}") from None
    return hooks


def default_hooks(model, hooks: list[TrainingHook]) -> list[TrainingHook]:
    """Hooks a model needs that `hooks` lacks: `DGQAReallocate` for a DGQA model."""
    return required_hooks(model, hooks)


def grouped_kv_modules(model) -> list[str]:
    """Names of the modules holding the converted (grouped) keys and values, e.g. T5's
    `decoder.block.0.layer.0.SelfAttention.k`; for fused layouts (GPT-2's `c_attn`) the fused projection."""
    config = model.config.to_dict()
    try:
        resolved = resolve(config)
    except HfGqaError:
        return []
    family, view = resolved.family, resolved.view
    kinds = set(config.get("gqa_attention") or family.default_attention)
    keys = list(model.state_dict().keys())
    modules = dict(model.named_modules())
    names = []
    for block in family.attention_blocks(view, keys=keys):
        if block.kind not in kinds:
            continue
        full = (
            resolved.form.full_training_keys(block, config)
            if resolved.form
            else block.kv_keys + block.optional_kv_keys
        )
        for key in full:
            name = key.rsplit(".", 1)[0]
            if name in modules and name not in names:
                names.append(name)
    return names


def describe_model(model) -> dict:
    """What a report needs: variant, heads, parameters and KV-cache bytes per token of a (final) model."""
    config = model.config.to_dict()
    info = {"model_type": config.get("model_type"), "parameters": int(model.num_parameters())}
    info["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    try:
        resolved = resolve(config)
    except HfGqaError:
        return info
    blocks = resolved.family.attention_blocks(resolved.view)
    info["num_heads"] = resolved.family.num_heads(resolved.view)
    info["kv_heads"] = {b.kind: b.kv_heads for b in blocks}
    info["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(config, next(model.parameters()).dtype)
    info["variant"] = config.get("gqa_variant")
    info["converted_attention"] = config.get("gqa_attention")
    return info


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


__all__ = [
    "build_hooks",
    "describe_model",
    "fold",
    "freeze_relative_attention_bias",
    "grouped_kv_modules",
    "load_for_uptraining",
    "parse_hook_spec",
    "resolve_hook",
    "trainable_parameters",
]
