"""The pieces an uptraining run is made of, built from its arguments: output folder, model, tokenizer, hooks, data,
optimizer, scheduler and step plan (`build_run`). `hf_gqa.training.loop.train` runs them."""

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..errors import HfGqaError
from ..io.output import check_output_safe
from ..io.sources import load_tokenizer
from .arguments import UptrainArguments, conversion_options
from .checkpoint import Progress
from .data import (
    ResumableSampler,
    SummarizationCollator,
    label_token_counts,
    load_summarization_splits,
    tokenize_summarization,
)
from .distill import load_teacher
from .lora import apply_lora
from .model import (
    build_hooks,
    default_hooks,
    freeze_relative_attention_bias,
    load_for_uptraining,
)
from .runlog import RunLogger


@dataclass
class RunData:
    """The tokenised splits and their loaders."""

    train_dataset: Any
    eval_dataset: Any
    references: list[str]
    collator: SummarizationCollator
    sampler: ResumableSampler
    train_loader: DataLoader
    eval_loader: DataLoader
    label_tokens: list[int] = field(default_factory=list)  # per training example: the label tokens its loss counts


@dataclass
class Run:
    """What a run holds once built (see `train`)."""

    args: UptrainArguments
    accelerator: Accelerator
    output_dir: Path
    model: Any
    tokenizer: Any
    is_encoder_decoder: bool
    hooks: list
    data: RunData
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int
    progress: Progress | None = None
    logger: RunLogger | None = None
    resolved: dict = field(default_factory=dict)
    generation_kwargs: dict = field(default_factory=dict)
    teacher: Any = None  # with --distill: the frozen teacher (distill.py), on this process's device, not prepared


def new_window() -> dict:
    return {"time": time.perf_counter(), "tokens": 0.0, "samples": 0, "steps": 0}


@dataclass
class Loop:
    """The training loop's running sums: the current optimizer step's loss and the logging window's throughput."""

    step_loss: torch.Tensor
    bar: Any
    step_micro: int = 0
    step_count: torch.Tensor | None = None  # the label tokens of this process's micro-batches in the current step
    step_tokens: int = 0  # the label tokens of the current step's global batch (all processes, all micro-batches)
    statistics: Any = None  # distributed.StatisticsSync: training statistics summed over the processes
    step_ce: torch.Tensor | None = None  # with --distill: the step's CE and T^2 * KL parts
    step_kl: torch.Tensor | None = None
    window: dict = field(default_factory=new_window)


def check_output_dir(args: UptrainArguments, resuming: bool) -> Path:
    """Refuse a non-empty output folder unless the run resumes there or may overwrite it (nothing written yet); and,
    whatever the options, the working directory, home, root or a folder above them, an output that is the model,
    its tokenizer or the checkpoint to resume from, or one whose `model/` or `checkpoints/` (written over, removed
    by --overwrite-output-dir) holds the model or tokenizer. Returns the folder, `~` expanded."""
    output_dir = Path(args.output_dir).expanduser()
    models = {"the model": args.model_name_or_path, "the tokenizer": args.tokenizer_name}
    models["the teacher"] = args.teacher_name_or_path if args.distill else None
    check_output_safe(output_dir, models, replaced=("model", "checkpoints"))
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":  # it belongs in OUT/checkpoints
        check_output_safe(output_dir, {"the checkpoint to resume from": args.resume_from_checkpoint}, replaced=())
    busy = output_dir.is_dir() and any(output_dir.iterdir())
    if busy and not resuming and args.resume_from_checkpoint != "latest" and not args.overwrite_output_dir:
        raise HfGqaError(
            f"output folder {str(output_dir)!r} is not empty; pass --resume-from-checkpoint latest to continue "
            "the run there, or --overwrite-output-dir to start afresh"
        )
    return output_dir


def prepare_output_dir(output_dir: Path, args: UptrainArguments, accelerator: Accelerator, resuming: bool) -> None:
    if accelerator.is_main_process:
        if args.overwrite_output_dir and not resuming:  # stale checkpoints must not be resumed from later
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def build_run(args: UptrainArguments, accelerator: Accelerator, output_dir: Path) -> Run:
    """Model, hooks, data, optimizer and schedule, prepared by Accelerate. A resumed run rebuilds the same run and
    then loads the checkpoint's state (`_start`)."""
    model, tokenizer, is_encoder_decoder = _build_model(args)
    teacher = _build_teacher(args, accelerator, model)
    hooks = build_hooks(args.hooks)
    hooks += default_hooks(model, hooks)  # e.g. DGQA's re-allocation, which a DGQA model needs
    data = _build_data(args, accelerator, tokenizer, is_encoder_decoder)
    optimizer = _build_optimizer(args, model)
    model, optimizer, data.train_loader, data.eval_loader = accelerator.prepare(
        model, optimizer, data.train_loader, data.eval_loader
    )
    steps_per_epoch, max_train_steps, num_epochs = _plan_steps(args, len(data.train_loader))
    scheduler = _build_scheduler(args, accelerator, optimizer, max_train_steps)
    return Run(
        args=args,
        accelerator=accelerator,
        output_dir=output_dir,
        model=model,
        tokenizer=tokenizer,
        is_encoder_decoder=is_encoder_decoder,
        hooks=hooks,
        data=data,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        max_train_steps=max_train_steps,
        num_epochs=num_epochs,
        teacher=teacher,
    )


def _build_model(args: UptrainArguments) -> tuple[Any, Any, bool]:
    """The model to train (converted, frozen where asked, with LoRA), its tokenizer, and whether it is an
    encoder-decoder."""
    options = conversion_options(args)
    model = load_for_uptraining(args.model_name_or_path, convert_variant=options.pop("variant", None), **options)
    tokenizer = load_tokenizer(args.tokenizer_name or args.model_name_or_path)
    if tokenizer is None:
        raise HfGqaError(
            f"no tokenizer found at {args.tokenizer_name or args.model_name_or_path!r}; give --tokenizer-name"
        )
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_encoder_decoder and model.config.model_type.startswith("t5") and not args.source_prefix:
        print("warning: T5 checkpoints expect --source-prefix 'summarize: '", file=sys.stderr)
    if args.freeze_relative_attention_bias:
        freeze_relative_attention_bias(model)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.lora_r:
        model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    return model, tokenizer, is_encoder_decoder


def _build_teacher(args: UptrainArguments, accelerator: Accelerator, model):
    """With --distill, the frozen teacher (`distill.load_teacher`), loaded anew so it shares nothing with the
    student, on this process's device: it has no gradients, so no DDP wrapping."""
    if not args.distill:
        return None
    teacher = load_teacher(args.teacher_name_or_path or args.model_name_or_path, model, dtype=args.teacher_dtype)
    return teacher.to(accelerator.device)


def _build_data(args: UptrainArguments, accelerator: Accelerator, tokenizer, is_encoder_decoder: bool) -> RunData:
    """The splits, tokenised once (the main process first, so the others read its cache), and their loaders."""
    with accelerator.main_process_first():
        splits = load_summarization_splits(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_file=args.train_file,
            validation_file=args.validation_file,
            text_column=args.text_column,
            summary_column=args.summary_column,
            train_split=args.train_split,
            eval_split=args.eval_split,
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            cache_dir=args.cache_dir,
        )
        common = dict(
            tokenizer=tokenizer,
            is_encoder_decoder=is_encoder_decoder,
            max_source_length=args.max_source_length,
            max_target_length=args.max_target_length,
            source_prefix=args.source_prefix,
            prompt_template=args.prompt_template,
            num_proc=args.preprocessing_num_workers,
        )
        train_dataset = tokenize_summarization(splits["train"], desc="tokenizing train", **common)
        eval_dataset = tokenize_summarization(splits["eval"], with_index=True, desc="tokenizing eval", **common)
    references = list(splits["eval"]["summary"])
    collator = SummarizationCollator(
        tokenizer.pad_token_id, pad_to_multiple_of=8 if accelerator.mixed_precision != "no" else None
    )
    # On more than one process, complete each epoch to full batches on every process (see ResumableSampler).
    multiple = args.per_device_train_batch_size * accelerator.num_processes if accelerator.num_processes > 1 else 1
    sampler = ResumableSampler(len(train_dataset), seed=args.seed, multiple_of=multiple)
    train_loader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, sampler=sampler, collate_fn=collator
    )
    eval_loader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    label_tokens = label_token_counts(train_dataset, shift=not is_encoder_decoder)
    return RunData(train_dataset, eval_dataset, references, collator, sampler, train_loader, eval_loader, label_tokens)


def _build_optimizer(args: UptrainArguments, model) -> torch.optim.AdamW:
    """AdamW over what trains (LoRA, frozen bias); no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )


def _plan_steps(args: UptrainArguments, batches_per_epoch: int) -> tuple[int, int, int]:
    """(steps per epoch, optimizer steps, epochs), from the prepared loader's length (per process)."""
    steps_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
    budget = args.step_budget or math.ceil(args.num_train_epochs * steps_per_epoch)
    max_train_steps = args.max_train_steps if args.max_train_steps is not None else round(args.alpha * budget)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    return steps_per_epoch, max_train_steps, num_epochs


def _build_scheduler(args: UptrainArguments, accelerator: Accelerator, optimizer, max_train_steps: int):
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer.optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max(max_train_steps, 1) * accelerator.num_processes,
    )
    return accelerator.prepare(scheduler)


# --- starting: resume, hooks, logs ----------------------------------------------------------------------------------


__all__ = ["Loop", "Run", "RunData", "build_run", "check_output_dir", "new_window", "prepare_output_dir"]
