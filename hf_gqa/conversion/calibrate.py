"""A converted model fitted to its source on calibration text (`--init activation` / `--init calibrated`): in
memory (`calibrate_converted`) or on disk, one layer at a time (`calibrate_checkpoint`). And SimGQA's activation
similarity (`--similarity activation`), measured on the source before the plan (`measure_similarities`, in memory, or
`measure_similarities_on_disk`)."""

from functools import partial

from ..calibration.data import GENERATED, calibration_batches, generated_batches
from ..calibration.distill import distill
from ..calibration.fit import BlockReport, calibrate, converted_blocks, fit_layers, trainable
from ..calibration.layerwise import find_stack
from ..calibration.options import CALIBRATION_INITS, resolved
from ..calibration.similarity import head_similarities, head_similarities_on_disk, measures_activations
from ..calibration.streamed import calibrate_folders, skeleton
from ..errors import HfGqaError
from ..families import family_for
from .plan import ConversionPlan


def needs_calibration(spec) -> bool:
    return spec is not None and spec.init in CALIBRATION_INITS


def _refuse_reexpressed(plan: ConversionPlan, spec) -> None:
    if plan.reexpressed_from is not None:
        raise HfGqaError(f"--init {spec.init} does not support {plan.reexpressed_from} (it is re-expressed first)")


def _batches(model, spec, tokenizer) -> list[dict]:
    options = resolved(spec)
    return calibration_batches(
        model, tokenizer, options["calibration_data"], options["calibration_samples"],
        options["calibration_seq_len"], seed=spec.seed,
    )  # fmt: skip


def reads_calibration_text(spec) -> bool:
    """Whether a conversion runs the source over calibration text: a calibrated init, or activation similarity."""
    return needs_calibration(spec) or measures_activations(spec)


def measure_similarities(source, kv_heads, spec, tokenizer, progress: bool = True):
    """SimGQA's `--similarity activation`: block prefix -> `(H, H)` similarity of the K/V heads that `kv_heads`
    (the plan's attention kind -> before, after) groups, from one pass of `source` (in memory) over the calibration
    text; `plan_conversion`'s `head_similarities`."""
    if not any(before != after for before, after in kv_heads.values()):
        return {}
    return head_similarities(source, kv_heads, _batches(source, spec, tokenizer), progress)


def measure_similarities_on_disk(folder, kv_heads, spec, tokenizer, progress: bool = True):
    """`measure_similarities` of the decoder-only safetensors checkpoint in `folder`, one layer in memory at a time."""
    batches = partial(_batches, spec=spec, tokenizer=tokenizer)
    return head_similarities_on_disk(folder, kv_heads, batches, progress)


def calibrate_converted(source, converted, plan: ConversionPlan, spec, tokenizer, progress: bool = True):
    """Fit `converted` (mean-pooled from `source` as `plan` says) to `source` in place, as `spec` asks; then, with
    `--calibration-distill-steps`, distil it from `source` end to end."""
    _refuse_reexpressed(plan, spec)
    options = resolved(spec)
    _, blocks, _ = converted_blocks(source, plan.kv_heads, spec.init)  # refusals before the text is read
    batches = _batches(source, spec, tokenizer)
    reports: list[BlockReport] = calibrate(
        source, converted, plan.kv_heads, batches, spec.init,
        options["calibration_steps"], options["calibration_lr"], seed=spec.seed, progress=progress,
    )  # fmt: skip
    if options["calibration_distill_steps"]:
        params = [p for b in blocks for p in trainable(converted.get_submodule(b.prefix))]
        steps, lr = options["calibration_distill_steps"], options["calibration_distill_lr"]
        text = _distill_batches(source, options, spec.seed, tokenizer, progress) or batches
        distill(source, converted, params, text, steps, spec.seed, progress, lr=lr)
    return reports


def _distill_batches(source, options: dict, seed: int, tokenizer, progress: bool) -> list[dict] | None:
    """`--calibration-distill-data`: the source's own samples (the default for a decoder-only model: on SmolLM2 it
    generalised to another domain than the calibration text's far better), or another text, as many sequences as
    the calibration's; None: the calibration text (the default for an encoder-decoder model). `options`: the
    resolved calibration options."""
    data, samples, seq_len = (options[f"calibration_{k}"] for k in ("distill_data", "samples", "seq_len"))
    if data is None and not source.config.is_encoder_decoder:
        data = GENERATED
    if data is None:
        return None
    if data == GENERATED:
        return generated_batches(source, tokenizer, samples, seq_len, seed=seed, progress=progress)
    return calibration_batches(source, tokenizer, data, samples, seq_len, seed=seed)


def distills(spec) -> bool:
    """Whether the calibration ends with an end-to-end distillation (both models in memory)."""
    return needs_calibration(spec) and bool(resolved(spec)["calibration_distill_steps"])


def layerwise_possible(config: dict, keys) -> bool:
    """Whether a checkpoint (its config, its tensor names) can be calibrated on disk one layer at a time: a single
    stack of layers (decoder-only) whose tensors are named on disk as in memory."""
    if config.get("is_encoder_decoder") or not config.get("architectures"):
        return False
    model = skeleton(config)
    family, _ = family_for(config)
    stack = find_stack(model, family.attention_blocks(config, model.state_dict().keys()))
    if stack is None:
        return False
    names = {name for name, _ in model.named_parameters() if name.startswith(stack.container + ".")}
    return names <= set(keys)


def calibrate_checkpoint(source_folder, converted_folder, plan: ConversionPlan, spec, tokenizer, max_shard_size: int,
                         progress: bool = True) -> list[BlockReport]:  # fmt: skip
    """Fit the converted safetensors checkpoint in `converted_folder` (mean-pooled from the one in `source_folder`
    as `plan` says) to its source in place, reading one layer of each at a time."""
    _refuse_reexpressed(plan, spec)
    options = resolved(spec)

    def run(source, target, stack_of, prepare, finish):
        _, blocks, _ = converted_blocks(source, plan.kv_heads, spec.init)
        stack = stack_of(blocks)
        return fit_layers(
            source, target, blocks, stack, plan.kv_heads, _batches(source, spec, tokenizer), spec.init,
            options["calibration_steps"], options["calibration_lr"], spec.seed, progress,
            prepare=partial(prepare, stack), finish=partial(finish, stack),
        )  # fmt: skip

    return calibrate_folders(source_folder, converted_folder, run, max_shard_size)


__all__ = [
    "calibrate_checkpoint",
    "calibrate_converted",
    "distills",
    "layerwise_possible",
    "measure_similarities",
    "measure_similarities_on_disk",
    "measures_activations",
    "needs_calibration",
    "reads_calibration_text",
]
