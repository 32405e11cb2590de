#!/usr/bin/env python
"""Uptrain a grouped-query-attention model on summarization, with Accelerate, and score it with ROUGE.

    accelerate launch recipes/uptrain_summarization.py --config recipes/configs/t5-small_gqa.yaml
    python recipes/uptrain_summarization.py --config recipes/configs/t5-small_gqa.yaml --seed 1   # one process

The same script runs on one CPU, one GPU or several (`accelerate config` picks the processes and the mixed
precision). It follows transformers' `run_summarization_no_trainer.py`; what is reusable lives in `hf_gqa.training`
(data, ROUGE, evaluation, checkpoints, LoRA, hooks), where the tests cover it.

- Model: `--model-name-or-path` is a converted checkpoint, used as it is, or a source converted in memory with
  `--convert-variant` (`mha`, `gqa`, `mqa`, and any variant hf-gqa registers) and `--groups`, so one config runs MHA,
  GQA and MQA from the same source. Encoder-decoders (T5) learn `source_prefix + text -> summary`; decoder-only models
  learn `prompt_template(text) + summary`, with the loss on the summary tokens only.
- Steps: `num_train_epochs` epochs, or a `step_budget`; `alpha` uptrains for that fraction of it (Ainslie et al.:
  a few percent of the pre-training steps); `max_train_steps` overrides both. AdamW, linear decay by default.
- Every `checkpointing_steps` optimizer steps, `accelerator.save_state` writes `OUTPUT/checkpoints/step-N`;
  `--resume-from-checkpoint latest` continues from the newest with the same losses as an uninterrupted run.
- Every `eval_steps` and at the end: loss, generated summaries (greedy or beam, with the KV cache) and ROUGE-1, -2,
  -L and -Lsum. At the end: the model in its inference form (LoRA merged, training-form variants folded) in
  `OUTPUT/model`, `OUTPUT/all_results.json` (final metrics, model sizes, decode speed and the run's config),
  `OUTPUT/eval_predictions.jsonl`, and the log (`log.jsonl`, `train_log.csv`, `eval_log.csv`, TensorBoard if
  installed).

Options come from `--config FILE.yaml` (keys as below, `-` or `_`) and the command line, which wins.
"""

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

import hf_gqa
from hf_gqa.errors import HfGqaError
from hf_gqa.training import (
    DEFAULT_PROMPT_TEMPLATE,
    HookStates,
    Progress,
    ResumableSampler,
    RunLogger,
    SummarizationCollator,
    TrainingState,
    apply_lora,
    build_hooks,
    decode_throughput,
    default_hooks,
    describe_model,
    evaluate_summarization,
    fold,
    freeze_relative_attention_bias,
    load_for_uptraining,
    load_summarization_splits,
    merge_lora,
    parse_hook_spec,
    resolve_resume,
    run_hooks,
    save_checkpoint,
    seed_micro_step,
    tokenize_summarization,
    trainable_parameters,
    write_jsonl,
)


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class UptrainArguments:
    # --- model -----------------------------------------------------------------------------------------------------
    model_name_or_path: str | None = _help(
        "source or converted checkpoint: Hub id, local folder or .gguf", default=None
    )
    tokenizer_name: str | None = _help("tokenizer, if not the model's", default=None)
    convert_variant: str | None = _help("convert the model first with this variant (mha, gqa, mqa, ...)", default=None)
    groups: int | None = _help("key/value heads after conversion (variant gqa)", default=None)
    convert_init: str = _help("initialisation of the grouped K/V: mean, first or random", default="mean")
    convert_attention: list[str] | None = _help(
        "attention kinds to convert (T5: encoder decoder_self cross; default: decoder_self cross)", default=None
    )
    convert_seed: int = _help("seed of --convert-init random and of randwgqa's weights", default=0)
    convert_weights: str | None = _help("wgqa/randwgqa: shape of the learned K/V weights (scalar, ...)", default=None)
    convert_weights_init: str | None = _help("wgqa: initial K/V weights, mean or a number (paper: 0.5)", default=None)
    convert_similarity: str | None = _help(
        "simgqa: query (default), key or value: what decides the groups", default=None
    )
    convert_regroup_every: int | None = _help(
        "simgqa: regroup every N steps (the training form; add hooks: SimGQARegroup(every=N))", default=None
    )
    convert_q_groups: int | None = _help("gqkva: query heads gq (--groups is gkv)", default=None)
    convert_statistic: str | None = _help("kdgqa: key-norm statistic in training, sample or batch", default=None)
    convert_window: int | None = _help(
        "dgqa: re-allocate every N steps (default 300; the DGQAReallocate hook is added)", default=None
    )
    convert_ema_alpha: float | None = _help("dgqa: weight of the newest window in the EMA (default 0.1)", default=None)
    convert_evolution: str | None = _help("dgqa: ema (default) or difference of key norms", default=None)
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
    # --- evaluation, checkpoints, logs -----------------------------------------------------------------------------
    eval_steps: int = _help("evaluate every N optimizer steps (0: only at the end)", default=0)
    num_beams: int = _help("beam size in generation (1: greedy)", default=1)
    generation_max_new_tokens: int | None = _help("new tokens per summary (default: max_target_length)", default=None)
    use_stemmer: bool = _help("Porter stemming in ROUGE", default=True)
    decode_benchmark_tokens: int = _help("measure decode tokens/s with this many new tokens (0: skip)", default=64)
    checkpointing_steps: int = _help("save a checkpoint every N optimizer steps (0: none)", default=500)
    checkpoints_total_limit: int | None = _help("keep only the newest N checkpoints", default=2)
    resume_from_checkpoint: str | None = _help("a checkpoint folder, or 'latest' (start afresh if none)", default=None)
    logging_steps: int = _help("log the mean loss every N optimizer steps", default=10)
    tensorboard: bool = _help("also log to TensorBoard when it is installed", default=True)
    run_name: str | None = _help("a label for reports (default: the variant)", default=None)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(UptrainArguments, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> UptrainArguments:
    """Options from `--config FILE.yaml`, overridden by the command line."""
    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = build_parser()
    if known.config:
        try:
            values = yaml.safe_load(Path(known.config).read_text(encoding="utf-8")) or {}
        except OSError as error:
            raise HfGqaError(f"cannot read --config {known.config!r}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            raise HfGqaError(f"--config {known.config!r} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise HfGqaError(f"--config {known.config!r} must be a mapping of options")
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        names = [f.name for f in dataclasses.fields(UptrainArguments)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise HfGqaError(f"--config {known.config!r}: unknown option {unknown[0]!r}")
        for key in ("convert_attention", "hooks"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(args=rest)
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
    for spec in args.hooks or []:
        parse_hook_spec(spec)
    for name in ("train_file", "validation_file"):
        path = getattr(args, name)
        if path and not any(c in path for c in "*?[") and not Path(path).is_file():
            raise HfGqaError(f"--{name.replace('_', '-')} {path!r}: no such file")


def _check_output_dir(args: UptrainArguments, resuming: bool) -> Path:
    """Refuse a non-empty output folder unless the run resumes there or may overwrite it (nothing written yet)."""
    output_dir = Path(args.output_dir)
    busy = output_dir.is_dir() and any(output_dir.iterdir())
    if busy and not resuming and args.resume_from_checkpoint != "latest" and not args.overwrite_output_dir:
        raise HfGqaError(
            f"output folder {str(output_dir)!r} is not empty; pass --resume-from-checkpoint latest to continue "
            "the run there, or --overwrite-output-dir to start afresh"
        )
    return output_dir


def _prepare_output_dir(output_dir: Path, args: UptrainArguments, accelerator: Accelerator, resuming: bool) -> None:
    if accelerator.is_main_process:
        if args.overwrite_output_dir and not resuming:  # stale checkpoints must not be resumed from later
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def _tokens(batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    tokens = batch["attention_mask"].sum()
    return tokens + (batch["labels"] != -100).sum() if is_encoder_decoder else tokens


def train(args: UptrainArguments) -> dict:
    check_args(args)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision
    )
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    output_dir = _check_output_dir(args, resume is not None)
    set_seed(args.seed)
    main_process = accelerator.is_main_process

    # Model, tokenizer, hooks. A resumed run rebuilds the same model and then loads the checkpoint's weights.
    model = load_for_uptraining(
        args.model_name_or_path,
        convert_variant=args.convert_variant,
        groups=args.groups,
        init=args.convert_init,
        attention=args.convert_attention,
        seed=args.convert_seed,
        weights=args.convert_weights,
        weights_init=args.convert_weights_init,
        similarity=args.convert_similarity,
        regroup_every=args.convert_regroup_every,
        q_groups=args.convert_q_groups,
        statistic=args.convert_statistic,
        window=args.convert_window,
        ema_alpha=args.convert_ema_alpha,
        evolution=args.convert_evolution,
    )
    from hf_gqa.conversion.api import load_tokenizer

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
    hooks = build_hooks(args.hooks)
    hooks += default_hooks(model, hooks)  # e.g. DGQA's re-allocation, which a DGQA model needs

    # Data, tokenised once: the main process first, so the others read its cache.
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
    sampler = ResumableSampler(len(train_dataset), seed=args.seed)
    train_loader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, sampler=sampler, collate_fn=collator
    )
    eval_loader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collator)

    # Optimizer over what trains (LoRA, frozen bias); no weight decay on biases and norms.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # Steps, from the prepared loader (its length is per process).
    steps_per_epoch = max(math.ceil(len(train_loader) / args.gradient_accumulation_steps), 1)
    budget = args.step_budget or math.ceil(args.num_train_epochs * steps_per_epoch)
    max_train_steps = args.max_train_steps if args.max_train_steps is not None else round(args.alpha * budget)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer.optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max(max_train_steps, 1) * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)

    _prepare_output_dir(output_dir, args, accelerator, resume is not None)
    progress = Progress()
    accelerator.register_for_checkpointing(progress, HookStates(hooks))
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resumed from {resume} at step {progress.step}")

    def hook_state() -> TrainingState:
        return TrainingState(
            model=accelerator.unwrap_model(model),
            step=progress.step,
            optimizer=optimizer.optimizer,
            max_steps=max_train_steps,
        )

    # After a resume, hooks restore what lives outside the weights (e.g. T5 SimGQA's per-layer bias order).
    run_hooks(hooks, hook_state(), "on_train_begin")
    logger = RunLogger(
        output_dir, enabled=main_process, tensorboard=args.tensorboard, resume_step=progress.step if resume else None
    )
    trainable, total = trainable_parameters(accelerator.unwrap_model(model))
    resolved = {
        "max_train_steps": max_train_steps,
        "steps_per_epoch": steps_per_epoch,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "total_batch_size": args.per_device_train_batch_size
        * accelerator.num_processes
        * args.gradient_accumulation_steps,
        "train_examples": len(train_dataset),
        "eval_examples": len(eval_dataset),
        "trainable_parameters": trainable,
        "parameters": total,
    }
    if main_process:
        (output_dir / "run_args.json").write_text(
            json.dumps({"args": dataclasses.asdict(args), "resolved": resolved}, indent=2) + "\n", encoding="utf-8"
        )
    accelerator.print(
        f"uptraining {type(accelerator.unwrap_model(model)).__name__}: {trainable:,} of {total:,} parameters train; "
        f"{len(train_dataset):,} examples, {max_train_steps:,} steps of {resolved['total_batch_size']} "
        f"({num_epochs} epoch(s) of {steps_per_epoch})"
    )

    generation_kwargs = {
        "max_new_tokens": args.generation_max_new_tokens or args.max_target_length,
        "num_beams": args.num_beams,
        "do_sample": False,
    }

    def evaluate(eval_model) -> tuple[dict, list[dict]]:
        metrics, predictions = evaluate_summarization(
            eval_model, eval_loader, tokenizer, accelerator, references, generation_kwargs, args.use_stemmer, True
        )
        return {f"eval_{k}": v for k, v in metrics.items()}, predictions

    # Training loop.
    start = time.perf_counter()
    window = {"time": time.perf_counter(), "tokens": 0.0, "samples": 0, "steps": 0}
    step_loss, step_micro = torch.zeros((), device=accelerator.device), 0
    bar = tqdm(total=max_train_steps, initial=progress.step, disable=not accelerator.is_local_main_process)
    model.train()
    first_epoch, steps_done_in_epoch = divmod(progress.step, steps_per_epoch)
    for epoch in range(first_epoch, num_epochs):
        if progress.step >= max_train_steps:
            break
        skip = steps_done_in_epoch if epoch == first_epoch else 0
        examples_per_micro_step = args.per_device_train_batch_size * accelerator.num_processes
        sampler.start_epoch(epoch, skip * args.gradient_accumulation_steps * examples_per_micro_step)
        for batch in train_loader:
            seed_micro_step(args.seed, progress.micro_step, accelerator.process_index)
            with accelerator.accumulate(model):
                loss = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
                ).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.micro_step += 1
            step_loss += loss.detach().float()
            step_micro += 1
            window["tokens"] += float(_tokens(batch, is_encoder_decoder))
            window["samples"] += batch["input_ids"].shape[0]
            if not accelerator.sync_gradients:
                continue
            # One optimizer step done.
            progress.step += 1
            mean_loss = accelerator.reduce(step_loss / step_micro, reduction="mean").item()
            step_loss.zero_()
            step_micro = 0
            progress.loss_sum += mean_loss
            progress.loss_steps += 1
            window["steps"] += 1
            run_hooks(hooks, hook_state())
            bar.update(1)
            if progress.step % args.logging_steps == 0 or progress.step == max_train_steps:
                elapsed = max(time.perf_counter() - window["time"], 1e-9)
                tokens = accelerator.reduce(torch.tensor(window["tokens"], device=accelerator.device), "sum").item()
                samples = window["samples"] * accelerator.num_processes
                record = {
                    "epoch": round(progress.step / steps_per_epoch, 4),
                    "loss": progress.loss_sum / progress.loss_steps,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "samples_per_second": samples / elapsed,
                    "tokens_per_second": tokens / elapsed,
                }
                logger.log("train", progress.step, **record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:,.0f}")
                progress.loss_sum, progress.loss_steps = 0.0, 0
                window = {"time": time.perf_counter(), "tokens": 0.0, "samples": 0, "steps": 0}
            if args.eval_steps and progress.step % args.eval_steps == 0 and progress.step < max_train_steps:
                metrics, _ = evaluate(model)
                logger.log("eval", progress.step, **metrics)
                accelerator.print(_metrics_line(progress.step, metrics))
            if args.checkpointing_steps and progress.step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, progress.step, args.checkpoints_total_limit)
            if progress.step >= max_train_steps:
                break
    bar.close()
    run_hooks(
        hooks,
        hook_state(),
        "on_train_end",
    )
    train_runtime = time.perf_counter() - start
    train_losses = [r["loss"] for r in logger.records if r.get("kind") == "train"]

    # The model in its inference form: LoRA merged, training-form variants folded. It is what gets scored and saved.
    accelerator.wait_for_everyone()
    final = fold(merge_lora(accelerator.unwrap_model(model)))
    final.eval()
    metrics, predictions = evaluate(final)
    logger.log("eval", progress.step, **metrics)
    accelerator.print(_metrics_line(progress.step, metrics))
    results = dict(metrics)
    results.update(train_loss=train_losses[-1] if train_losses else None, train_steps=progress.step)
    results["train_runtime_s"] = train_runtime  # of this invocation (a resumed run counts from its restart)
    if main_process:
        if args.decode_benchmark_tokens:
            batch = collator([eval_dataset[i] for i in range(min(len(eval_dataset), args.per_device_eval_batch_size))])
            key = "input_ids" if is_encoder_decoder else "prompt_input_ids"
            mask = "attention_mask" if is_encoder_decoder else "prompt_attention_mask"
            results.update(
                decode_throughput(
                    final,
                    batch[key].to(accelerator.device),
                    batch[mask].to(accelerator.device),
                    new_tokens=args.decode_benchmark_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
        results["model"] = describe_model(final)
        results["config"] = {**dataclasses.asdict(args), **resolved}
        results["hf_gqa_version"] = hf_gqa.__version__
        final.save_pretrained(output_dir / "model")
        tokenizer.save_pretrained(output_dir / "model")
        write_jsonl(output_dir / "eval_predictions.jsonl", sorted(predictions, key=lambda p: p["index"]))
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        accelerator.print(
            f"saved the model to {output_dir / 'model'} and the results to {output_dir / 'all_results.json'}"
        )
    logger.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _metrics_line(step: int, metrics: dict) -> str:
    names = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_loss", "eval_gen_len")
    return f"step {step}: " + ", ".join(f"{n.removeprefix('eval_')} {metrics[n]:.2f}" for n in names if n in metrics)


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_args(argv))
    except HfGqaError as error:
        print(f"uptrain_summarization: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uptrain_summarization: interrupted; continue with --resume-from-checkpoint latest", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
