"""The options of the uptraining recipe (`recipes/uptrain_summarization.py`): `UptrainArguments`, read from
`--config FILE.yaml` and the command line by `parse_args`, and checked by `check_args`.

The conversion fields (`convert_variant`, `groups`, `convert_init`, ...) are generated from the one option declaration,
`hf_gqa.spec.OPTIONS`, so every option of `hf_gqa.convert` can be set here; `conversion_options` maps them back.
"""

import argparse
import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..conversion.cards import is_hub_id
from ..core.options import Option, load_yaml_mapping
from ..errors import HfGqaError
from ..spec import OPTIONS
from .data import DEFAULT_PROMPT_TEMPLATE
from .distill import TEACHER_DTYPES
from .model import resolve_hook
from .trackers import resolve_report_to

DESCRIPTION = "Uptrain a grouped-query-attention model on summarization, with Accelerate, and score it with ROUGE."

# Conversion options whose recipe default is the option's own (the others default to None: left to the variant).
_KEEP_DEFAULT = ("init", "seed")
_FIELD_TYPES = {int: int | None, float: float | None, str: str | None, bool: bool | None, list: list[str] | None}


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class _ModelArguments:
    model_name_or_path: str | None = _help(
        "source or converted checkpoint: Hub id, local folder or .gguf", default=None
    )
    tokenizer_name: str | None = _help("tokenizer, if not the model's", default=None)


@dataclass
class _RunArguments:
    hooks: list[str] | None = _help(
        "training hooks run after each optimizer step, as 'module.path:Class(key=value, ...)'", default=None
    )
    # --- data ------------------------------------------------------------------------------------------------------
    dataset_name: str | None = _help(
        "cnn_dailymail (Hub), aclsum (offline, PyPI aclsum) or a Hub dataset", default=None
    )
    dataset_config_name: str | None = _help("the dataset's config (cnn_dailymail: 3.0.0)", default=None)
    train_file: str | None = _help("local training data: .json, .jsonl, .csv or .parquet", default=None)
    validation_file: str | None = _help("local evaluation data: .json, .jsonl, .csv or .parquet", default=None)
    text_column: str | None = _help("column of the text to summarise (default: article)", default=None)
    summary_column: str | None = _help("column of the reference summary (default: highlights)", default=None)
    train_split: str = _help("split to train on", default="train")
    eval_split: str = _help("split to evaluate on", default="validation")
    max_train_samples: int | None = _help("use only the first N training examples", default=None)
    max_eval_samples: int | None = _help("evaluate on the first N examples only", default=None)
    cache_dir: str | None = _help("datasets cache folder (tokenised data is cached there)", default=None)
    preprocessing_num_workers: int | None = _help("processes for tokenisation", default=None)
    source_prefix: str = _help("encoder-decoder: text put before each input (T5: 'summarize: ')", default="")
    prompt_template: str = _help(
        "decoder-only: the prompt, with {text} where the text goes", default=DEFAULT_PROMPT_TEMPLATE
    )
    max_source_length: int = _help("input tokens (the text is truncated)", default=512)
    max_target_length: int = _help("summary tokens in training, and new tokens in generation", default=256)
    # --- training --------------------------------------------------------------------------------------------------
    output_dir: str | None = _help("where the run writes everything", default=None)
    overwrite_output_dir: bool = _help(
        "start afresh in a non-empty output folder (its checkpoints are deleted)", default=False
    )
    per_device_train_batch_size: int = _help("batch size per process", default=8)
    per_device_eval_batch_size: int = _help("evaluation batch size per process", default=8)
    gradient_accumulation_steps: int = _help("micro-batches per optimizer step", default=1)
    learning_rate: float = _help("peak learning rate (AdamW)", default=1e-3)
    weight_decay: float = _help("AdamW weight decay (not on biases and norms)", default=0.0)
    lr_scheduler_type: str = _help("linear, cosine, constant, ... (transformers' get_scheduler)", default="linear")
    num_warmup_steps: int = _help("warm-up steps", default=0)
    max_grad_norm: float | None = _help("clip gradients to this norm (none: no clipping)", default=1.0)
    num_train_epochs: float = _help("epochs; with step_budget unset, the budget is this many epochs", default=3.0)
    step_budget: int | None = _help("the step budget alpha is a fraction of (default: num_train_epochs)", default=None)
    alpha: float = _help("uptrain for this fraction of the step budget (GQA paper: 0.05 of pre-training)", default=1.0)
    max_train_steps: int | None = _help("optimizer steps, overriding epochs, step_budget and alpha", default=None)
    seed: int = _help("seed of the data order, dropout and initialisation", default=42)
    mixed_precision: str | None = _help("no, fp16 or bf16 (default: accelerate config)", default=None)
    freeze_relative_attention_bias: bool = _help(
        "T5: do not train the relative position bias (keeps SDPA's fused kernel in training)", default=False
    )
    gradient_checkpointing: bool = _help("recompute activations in backward to save memory", default=False)
    lora_r: int = _help("LoRA rank on attention and MLP projections (0: full uptraining)", default=0)
    lora_alpha: int | None = _help("LoRA scaling numerator (default: 2 x rank)", default=None)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    distill: bool = _help(
        "distillation uptraining: a frozen teacher, the source before --convert-variant converts it (or "
        "--teacher-name-or-path), guides the student: loss = a * CE + (1 - a) * T^2 * KL(teacher || student) over the "
        "label positions, a = --distill-alpha, T = --distill-temperature",
        default=False,
    )
    teacher_name_or_path: str | None = _help(
        "with --distill: the teacher checkpoint (default: --model-name-or-path as it is, before conversion); it "
        "needs the student's tokenizer",
        default=None,
    )
    distill_alpha: float = _help("with --distill: the weight of the cross-entropy (a, in [0, 1])", default=0.5)
    distill_temperature: float = _help("with --distill: the softmax temperature T of the KL term", default=2.0)
    teacher_dtype: str | None = _help(
        "with --distill: the teacher's dtype, bfloat16, float16 or float32 (default: the student's)", default=None
    )
    # --- evaluation, checkpoints, logs -----------------------------------------------------------------------------
    eval_steps: int = _help("evaluate every N optimizer steps (0: only at the end)", default=0)
    num_beams: int = _help("beam size in generation (1: greedy)", default=1)
    generation_max_new_tokens: int | None = _help("new tokens per summary (default: max_target_length)", default=None)
    use_stemmer: bool = _help("Porter stemming in ROUGE", default=True)
    decode_benchmark_tokens: int = _help("measure decode tokens/s with this many new tokens (0: skip)", default=64)
    checkpointing_steps: int = _help("save a checkpoint every N optimizer steps (0: none)", default=500)
    checkpoints_total_limit: int | None = _help("keep only the newest N checkpoints", default=2)
    resume_from_checkpoint: str | None = _help("a checkpoint folder, or 'latest' (start afresh if none)", default=None)
    trust_checkpoint: bool = _help(
        "resume from a checkpoint folder hf-gqa would refuse for its pickles (e.g. one written by an older hf-gqa): "
        "its files are then loaded as pickles, which can run code, so only for folders you trust",
        default=False,
    )
    logging_steps: int = _help("log the mean loss every N optimizer steps", default=10)
    report_to: list[str] | None = _help(
        "experiment trackers, through Accelerate: tensorboard, trackio, wandb, mlflow, aim, comet_ml, clearml, "
        "dvclive, swanlab (installed ones), 'all' (every installed one) or 'none'; local ones write under OUT/runs "
        "(default: tensorboard when installed, else none); log.jsonl, train_log.csv and eval_log.csv are always "
        "written",
        default=None,
    )
    tensorboard: bool | None = _help(
        "deprecated: use --report-to tensorboard (true) or --report-to none (false)", default=None
    )
    run_name: str | None = _help("a label for reports (default: the variant)", default=None)
    # --- the Hub ---------------------------------------------------------------------------------------------------
    push_to_hub: bool = _help(
        "upload the final model (inference form: LoRA merged, WGQA folded) with its tokenizer and a model card "
        "holding the run's options and results (model-index) to --hub-model-id, as Trainer.push_to_hub does; needs "
        "Hub access and a token (`hf auth login` or HF_TOKEN)",
        default=False,
    )
    hub_model_id: str | None = _help(
        "with --push-to-hub: the Hub repo id, e.g. me/t5-small-gqa4-uptrained", default=None
    )
    hub_private: bool = _help("with --push-to-hub: create the repo as private", default=False)


def conversion_field_name(name: str) -> str:
    """The recipe field of conversion option `name`: `variant` -> `convert_variant`, `groups` -> `groups`, every
    other `x` -> `convert_x`."""
    return "groups" if name == "groups" else f"convert_{name}"


def _conversion_field(option: Option) -> tuple:
    default = option.default if option.name in _KEEP_DEFAULT else None
    return (
        conversion_field_name(option.name),
        _FIELD_TYPES[option.type],
        field(default=default, metadata={"help": option.help}),
    )


def _copied_fields(cls) -> list[tuple]:
    return [
        (f.name, f.type, field(default=f.default, metadata={"help": f.metadata["help"]}))
        for f in dataclasses.fields(cls)
    ]


UptrainArguments = dataclasses.make_dataclass(
    "UptrainArguments",
    [
        *_copied_fields(_ModelArguments),
        *(_conversion_field(option) for option in OPTIONS.values()),
        *_copied_fields(_RunArguments),
    ],
)
UptrainArguments.__module__ = __name__
UptrainArguments.__doc__ = (
    "The uptraining recipe's options: model, conversion (from `hf_gqa.spec.OPTIONS`), hooks, data, training, "
    "evaluation, checkpoints and logs."
)


def conversion_options(args) -> dict:
    """The `hf_gqa.convert` keywords that `args` sets (`variant` from `convert_variant`, `groups`, and each
    `convert_x` as `x`), None values left out."""
    values = {name: getattr(args, conversion_field_name(name)) for name in OPTIONS}
    return {name: value for name, value in values.items() if value is not None}


def build_parser(description: str = DESCRIPTION) -> HfArgumentParser:
    return HfArgumentParser(UptrainArguments, description=description)


def parse_args(argv: list[str] | None = None) -> UptrainArguments:
    """Options from `--config FILE.yaml`, overridden by the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = build_parser()
    if known.config:
        values = load_yaml_mapping(known.config)
        names = [f.name for f in dataclasses.fields(UptrainArguments)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise HfGqaError(f"--config {known.config!r}: unknown option {unknown[0]!r}")
        for key in ("convert_attention", "hooks", "report_to"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(args=rest)
    for field_ in dataclasses.fields(args):  # paths from YAML or the command line: `~` is the home folder
        value = getattr(args, field_.name)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, field_.name, os.path.expanduser(value))
    return args


def check_args(args: UptrainArguments) -> None:
    """One-line errors for options that cannot work together."""
    if not args.model_name_or_path:
        raise HfGqaError("--model-name-or-path is required")
    if not args.output_dir:
        raise HfGqaError("--output-dir is required")
    if not (args.dataset_name or args.train_file):
        raise HfGqaError("give --dataset-name or --train-file (and --validation-file)")
    if args.groups is not None and not args.convert_variant:
        raise HfGqaError("--groups needs --convert-variant")
    if not 0 <= args.alpha <= 1:
        raise HfGqaError(f"--alpha must be in [0, 1], got {args.alpha}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise HfGqaError(f"--{name.replace('_', '-')} must be at least 1")
    _check_distill(args)
    with warnings.catch_warnings():  # the deprecation warning is given once, when the Accelerator is made
        warnings.simplefilter("ignore", FutureWarning)
        resolve_report_to(args)  # an unknown or uninstalled tracker: one line, before anything is built
    if args.push_to_hub and not args.hub_model_id:
        raise HfGqaError("--push-to-hub needs --hub-model-id (the Hub repo, e.g. me/t5-small-gqa4-uptrained)")
    if args.hub_model_id and not is_hub_id(args.hub_model_id):
        raise HfGqaError(f"--hub-model-id {args.hub_model_id!r} is not a Hub repo id (org/name)")
    for spec in args.hooks or []:
        resolve_hook(spec)  # the class is checked before anything is built, and nothing is called yet
    for name in ("train_file", "validation_file"):
        path = getattr(args, name)
        if path and not any(c in path for c in "*?[") and not Path(path).is_file():
            raise HfGqaError(f"--{name.replace('_', '-')} {path!r}: no such file")


def _check_distill(args: UptrainArguments) -> None:
    if not args.distill:
        for name in ("teacher_name_or_path", "teacher_dtype"):
            if getattr(args, name) is not None:
                raise HfGqaError(f"--{name.replace('_', '-')} needs --distill")
        return
    if not (args.convert_variant or args.teacher_name_or_path):
        raise HfGqaError(
            "--distill needs a teacher: give --convert-variant (the source before conversion is the teacher) or "
            "--teacher-name-or-path"
        )
    if not 0 <= args.distill_alpha <= 1:
        raise HfGqaError(f"--distill-alpha must be in [0, 1], got {args.distill_alpha}")
    if not args.distill_temperature > 0:
        raise HfGqaError(f"--distill-temperature must be positive, got {args.distill_temperature}")
    if args.teacher_dtype is not None and args.teacher_dtype not in TEACHER_DTYPES:
        raise HfGqaError(f"--teacher-dtype {args.teacher_dtype!r}: choose {', '.join(TEACHER_DTYPES)}")


__all__ = [
    "DESCRIPTION",
    "UptrainArguments",
    "build_parser",
    "check_args",
    "conversion_field_name",
    "conversion_options",
    "parse_args",
]
