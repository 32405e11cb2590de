"""The uptraining loop of `recipes/uptrain_summarization.py`: `train(args)`, with Accelerate, on summarization.

`train` builds the run (model, tokenizer, hooks, data, optimizer, schedule), resumes it from a checkpoint when asked,
trains, evaluates every `eval_steps` and at the end, and saves the model in its inference form with its results.
A resumed run repeats the losses of an uninterrupted one: the data order, the dropout seeds (per micro-step) and the
hooks' states are part of the checkpoint. With `--distill`, a frozen teacher (`run.teacher`, see distill.py) adds its
KL term to each micro-batch's loss, and the log records the CE and KL parts (`ce_loss`, `kl_loss`).
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .._version import __version__
from ..core.hooks import TrainingState, run_hooks
from ..variants.wgqa.weights_log import log_mixing_weights
from .arguments import UptrainArguments, check_args
from .checkpoint import Progress, load_checkpoint, resolve_resume, save_checkpoint, seed_micro_step
from .data import (
    write_jsonl,
)
from .distill import distillation_loss, teacher_logits
from .distributed import (
    StatisticsSync,
    check_hooks_supported,
    check_sharding_supported,
    check_world_size,
    shards_weights,
)
from .evaluation import decode_throughput, evaluate_summarization
from .lora import merge_lora
from .model import (
    describe_model,
    fold,
    trainable_parameters,
)
from .publish import publish_model
from .run import Loop, Run, build_run, check_output_dir, new_window, prepare_output_dir
from .runlog import RunLogger
from .trackers import make_accelerator


def train(args: UptrainArguments) -> dict:
    """Uptrain `args.model_name_or_path` as `args` says; returns the final metrics (also in `all_results.json`)."""
    check_args(args)
    accelerator = make_accelerator(args)  # with the trackers of --report-to (trackers.py)
    check_world_size(accelerator)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir, trust=args.trust_checkpoint)
    output_dir = check_output_dir(args, resume is not None)
    set_seed(args.seed)
    run = build_run(args, accelerator, output_dir)
    prepare_output_dir(output_dir, args, accelerator, resume is not None)
    _start(run, resume)
    start = time.perf_counter()
    _train_steps(run)
    train_runtime = time.perf_counter() - start
    results, final, predictions = _final_evaluation(run, train_runtime)
    # FSDP, ZeRO-3: every process takes part in gathering the whole weights, which the main process saves
    state_dict = accelerator.get_state_dict(run.model) if shards_weights(accelerator) else None
    if accelerator.is_main_process:
        _save_results(run, results, final, predictions, state_dict)
        publish_model(output_dir, args, results)  # the model card, and the upload with --push-to-hub
    run.logger.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


# --- building the run ---------------------------------------------------------------------------------------------


def _start(run: Run, resume: Path | None) -> None:
    """Load the checkpoint to resume from, start the hooks and the log, and describe the run."""
    accelerator = run.accelerator
    run.progress = Progress()
    check_hooks_supported(accelerator, run.hooks)
    check_sharding_supported(accelerator, accelerator.unwrap_model(run.model), bool(run.args.lora_r))
    if resume is not None:  # hf-gqa loads the checkpoint itself: no pickle unless trusted (see checkpoint.py)
        parts = (run.model, run.optimizer, run.scheduler, run.progress, run.hooks)
        load_checkpoint(accelerator, resume, *parts, trust=run.args.trust_checkpoint)
        accelerator.print(f"resumed from {resume} at step {run.progress.step}")
    # After a resume, hooks restore what lives outside the weights (e.g. T5 SimGQA's per-layer bias order).
    run_hooks(run.hooks, _hook_state(run), "on_train_begin")
    if accelerator.is_main_process:  # WGQA's learned K/V weights, for `hf-gqa report` (variants/wgqa/weights_log.py)
        log_mixing_weights(accelerator.unwrap_model(run.model), run.output_dir, run.progress.step, first=True)
    run.logger = RunLogger(
        run.output_dir,
        enabled=accelerator.is_main_process,
        accelerator=accelerator,
        config=dataclasses.asdict(run.args),
        resume_step=run.progress.step if resume is not None else None,
    )
    run.resolved = _describe_run(run)
    run.generation_kwargs = {
        "max_new_tokens": run.args.generation_max_new_tokens or run.args.max_target_length,
        "num_beams": run.args.num_beams,
        "do_sample": False,
    }


def _describe_run(run: Run) -> dict:
    """The settings resolved at run time, written with the options to `run_args.json`, and printed."""
    args, accelerator = run.args, run.accelerator
    trainable, total = trainable_parameters(accelerator.unwrap_model(run.model))
    resolved = {
        "max_train_steps": run.max_train_steps,
        "steps_per_epoch": run.steps_per_epoch,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "total_batch_size": args.per_device_train_batch_size
        * accelerator.num_processes
        * args.gradient_accumulation_steps,
        "train_examples": len(run.data.train_dataset),
        "eval_examples": len(run.data.eval_dataset),
        "trainable_parameters": trainable,
        "parameters": total,
    }
    if run.teacher is not None:
        resolved["teacher"] = args.teacher_name_or_path or args.model_name_or_path
        resolved["teacher_dtype"] = str(run.teacher.dtype).removeprefix("torch.")
    if accelerator.is_main_process:
        (run.output_dir / "run_args.json").write_text(
            json.dumps({"args": dataclasses.asdict(args), "resolved": resolved}, indent=2) + "\n", encoding="utf-8"
        )
    accelerator.print(
        f"uptraining {type(accelerator.unwrap_model(run.model)).__name__}: {trainable:,} of {total:,} parameters "
        f"train; {len(run.data.train_dataset):,} examples, {run.max_train_steps:,} steps of "
        f"{resolved['total_batch_size']} ({run.num_epochs} epoch(s) of {run.steps_per_epoch})"
    )
    return resolved


def _hook_state(run: Run) -> TrainingState:
    return TrainingState(
        model=run.accelerator.unwrap_model(run.model),
        step=run.progress.step,
        optimizer=run.optimizer.optimizer,
        max_steps=run.max_train_steps,
    )


# --- training -------------------------------------------------------------------------------------------------------


def _train_steps(run: Run) -> None:
    """Train to `max_train_steps`, from where a resumed run stopped (its epoch, and its place in that epoch)."""
    args, accelerator, progress = run.args, run.accelerator, run.progress
    loop = Loop(
        step_loss=torch.zeros((), device=accelerator.device),
        bar=tqdm(total=run.max_train_steps, initial=progress.step, disable=not accelerator.is_local_main_process),
        step_count=torch.zeros((), device=accelerator.device),
        statistics=StatisticsSync(accelerator.unwrap_model(run.model), accelerator),
    )
    run.model.train()
    first_epoch, steps_done_in_epoch = divmod(progress.step, run.steps_per_epoch)
    # One optimizer step takes the next `global_batch` examples of the epoch's order: process p's micro-batch m of
    # the step is the sampler's batch (m * processes + p) of it (accelerate's sharding of the batch sampler).
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    for epoch in range(first_epoch, run.num_epochs):
        if progress.step >= run.max_train_steps:
            break
        skip = steps_done_in_epoch if epoch == first_epoch else 0
        run.data.sampler.start_epoch(epoch, skip * global_batch)
        order = run.data.sampler.order(epoch)
        for batch in run.data.train_loader:
            if loop.step_micro == 0:  # a new optimizer step: the label tokens its loss is the mean over
                start = (progress.step - epoch * run.steps_per_epoch) * global_batch
                loop.step_tokens = sum(run.data.label_tokens[i] for i in order[start : start + global_batch])
            _micro_step(run, loop, batch)
            if not accelerator.sync_gradients:
                continue
            _optimizer_step_done(run, loop)
            if progress.step >= run.max_train_steps:
                break
    loop.bar.close()
    run_hooks(run.hooks, _hook_state(run), "on_train_end")


def _micro_step(run: Run, loop: Loop, batch: dict) -> None:
    """Forward and backward on one micro-batch; the optimizer steps when the accumulation is complete.

    The step's loss is the mean over the label tokens of its whole global batch (every process, every micro-batch),
    as one process computing the global batch at once would have it: each micro-batch back-propagates its summed
    loss (the model's mean times its label tokens) over the step's token count `loop.step_tokens`, times the number
    of processes (DDP, FSDP and DeepSpeed average the gradients over them) and of accumulation steps (which
    `accelerator.backward` divides by). A mean per micro-batch, averaged, would weigh a token of a micro-batch with
    few label tokens more than one of a micro-batch with many, differently for each split of the global batch."""
    args, accelerator, model = run.args, run.accelerator, run.model
    seed_micro_step(args.seed, run.progress.micro_step, accelerator.process_index)
    count = _label_tokens(batch, run.is_encoder_decoder)
    loop.statistics.before()
    with accelerator.accumulate(model):
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        loss = outputs.loss
        if run.teacher is not None:
            loss = _distill(run, loop, outputs, batch, count)
        scale = accelerator.num_processes * accelerator.gradient_accumulation_steps / max(loop.step_tokens, 1)
        accelerator.backward(loss * count * scale)
        loop.statistics.after()
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    run.progress.micro_step += 1
    loop.step_loss += loss.detach().float() * count
    loop.step_count += count
    loop.step_micro += 1
    loop.window["tokens"] += float(_tokens(batch, run.is_encoder_decoder))
    loop.window["samples"] += batch["input_ids"].shape[0]


def _distill(run: Run, loop: Loop, outputs, batch: dict, count: torch.Tensor) -> torch.Tensor:
    """The distillation loss of a micro-batch (distill.py), a mean over its `count` label tokens; its CE and KL parts
    are summed over those tokens for the log."""
    args = run.args
    with run.accelerator.autocast():
        target = teacher_logits(run.teacher, batch)
    parts = distillation_loss(
        outputs.loss,
        outputs.logits,
        target,
        batch["labels"],
        alpha=args.distill_alpha,
        temperature=args.distill_temperature,
        shift=not run.is_encoder_decoder,
    )
    if loop.step_ce is None:
        loop.step_ce, loop.step_kl = torch.zeros_like(loop.step_loss), torch.zeros_like(loop.step_loss)
    loop.step_ce += parts.ce.detach().float() * count
    loop.step_kl += parts.kl.detach().float() * count
    return parts.loss


def _label_tokens(batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """The label tokens the model's loss on `batch` is the mean over (decoder-only: shifted, from position 1)."""
    labels = batch["labels"] if is_encoder_decoder else batch["labels"][:, 1:]
    return (labels != -100).sum().float()


def _tokens(batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    tokens = batch["attention_mask"].sum()
    return tokens + (batch["labels"] != -100).sum() if is_encoder_decoder else tokens


def _optimizer_step_done(run: Run, loop: Loop) -> None:
    """After one optimizer step: its mean loss, the hooks, and the log, evaluation and checkpoint when due."""
    args, accelerator, progress = run.args, run.accelerator, run.progress
    progress.step += 1
    sums = [loop.step_loss, loop.step_count] + ([loop.step_ce, loop.step_kl] if loop.step_ce is not None else [])
    sums = accelerator.reduce(torch.stack(sums), reduction="sum").tolist()  # over the processes
    if abs(sums[1] - loop.step_tokens) > 0.5 + 1e-6 * loop.step_tokens:
        raise RuntimeError(
            f"step {progress.step}: the processes' batches held {sums[1]:.0f} label tokens, the loss was scaled "
            f"for {loop.step_tokens} (the data loader does not shard the sampler's batches as expected)"
        )
    mean_loss = sums[0] / max(sums[1], 1)  # the mean over the global batch's label tokens
    if loop.step_ce is not None:
        progress.ce_sum += sums[2] / max(sums[1], 1)
        progress.kl_sum += sums[3] / max(sums[1], 1)
        loop.step_ce.zero_()
        loop.step_kl.zero_()
    loop.step_loss.zero_()
    loop.step_count.zero_()
    loop.step_micro = 0
    progress.loss_sum += mean_loss
    progress.loss_steps += 1
    loop.window["steps"] += 1
    run_hooks(run.hooks, _hook_state(run))
    loop.bar.update(1)
    if progress.step % args.logging_steps == 0 or progress.step == run.max_train_steps:
        _log_train(run, loop)
    if args.eval_steps and progress.step % args.eval_steps == 0 and progress.step < run.max_train_steps:
        metrics, _ = _evaluate(run, run.model)
        run.logger.log("eval", progress.step, **metrics)
        accelerator.print(_metrics_line(progress.step, metrics))
    if args.checkpointing_steps and progress.step % args.checkpointing_steps == 0:
        limit = args.checkpoints_total_limit
        save_checkpoint(accelerator, run.output_dir, progress.step, limit, progress=progress, hooks=run.hooks)


def _log_train(run: Run, loop: Loop) -> None:
    """Log the mean loss since the last record and the window's throughput, then open a new window."""
    accelerator, progress, window = run.accelerator, run.progress, loop.window
    elapsed = max(time.perf_counter() - window["time"], 1e-9)
    tokens = accelerator.reduce(torch.tensor(window["tokens"], device=accelerator.device), "sum").item()
    samples = window["samples"] * accelerator.num_processes
    record = {
        "epoch": round(progress.step / run.steps_per_epoch, 4),
        "loss": progress.loss_sum / progress.loss_steps,
        "learning_rate": run.scheduler.get_last_lr()[0],
        "samples_per_second": samples / elapsed,
        "tokens_per_second": tokens / elapsed,
    }
    if run.teacher is not None:  # the two parts: loss = distill_alpha * ce_loss + (1 - distill_alpha) * kl_loss
        record.update(ce_loss=progress.ce_sum / progress.loss_steps, kl_loss=progress.kl_sum / progress.loss_steps)
        progress.ce_sum, progress.kl_sum = 0.0, 0.0
    run.logger.log("train", progress.step, **record)
    if accelerator.is_main_process:
        log_mixing_weights(accelerator.unwrap_model(run.model), run.output_dir, progress.step)
    loop.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:,.0f}")
    progress.loss_sum, progress.loss_steps = 0.0, 0
    loop.window = new_window()


# --- evaluation and results -----------------------------------------------------------------------------------------


def _evaluate(run: Run, eval_model) -> tuple[dict, list[dict]]:
    """Loss, generated summaries and ROUGE on the eval split, as `eval_*` metrics, and the predictions."""
    metrics, predictions = evaluate_summarization(
        eval_model,
        run.data.eval_loader,
        run.tokenizer,
        run.accelerator,
        run.data.references,
        run.generation_kwargs,
        run.args.use_stemmer,
        True,
    )
    return {f"eval_{k}": v for k, v in metrics.items()}, predictions


def _metrics_line(step: int, metrics: dict) -> str:
    names = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_loss", "eval_gen_len")
    return f"step {step}: " + ", ".join(f"{n.removeprefix('eval_')} {metrics[n]:.2f}" for n in names if n in metrics)


def _final_evaluation(run: Run, train_runtime: float) -> tuple[dict, Any, list[dict]]:
    """Score the model in its inference form (LoRA merged, training-form variants folded): it is what gets saved.
    Returns the results, that model and its predictions."""
    accelerator, progress = run.accelerator, run.progress
    train_losses = [r["loss"] for r in run.logger.records if r.get("kind") == "train"]
    accelerator.wait_for_everyone()
    final = fold(merge_lora(accelerator.unwrap_model(run.model)))
    final.eval()
    metrics, predictions = _evaluate(run, final)
    run.logger.log("eval", progress.step, **metrics)
    accelerator.print(_metrics_line(progress.step, metrics))
    results = dict(metrics)
    results.update(train_loss=train_losses[-1] if train_losses else None, train_steps=progress.step)
    results["train_runtime_s"] = train_runtime  # of this invocation (a resumed run counts from its restart)
    return results, final, predictions


def _decode_benchmark(run: Run, final) -> dict:
    """Decode tokens/s of `final` on the first eval batch (with the KV cache)."""
    eval_dataset, accelerator = run.data.eval_dataset, run.accelerator
    size = min(len(eval_dataset), run.args.per_device_eval_batch_size)
    batch = run.data.collator([eval_dataset[i] for i in range(size)])
    key = "input_ids" if run.is_encoder_decoder else "prompt_input_ids"
    mask = "attention_mask" if run.is_encoder_decoder else "prompt_attention_mask"
    return decode_throughput(
        final,
        batch[key].to(accelerator.device),
        batch[mask].to(accelerator.device),
        new_tokens=run.args.decode_benchmark_tokens,
        pad_token_id=run.tokenizer.pad_token_id,
    )


def _save_results(run: Run, results: dict, final, predictions: list[dict], state_dict=None) -> None:
    """(Main process.) Complete `results` and write the model, the predictions and `all_results.json`."""
    args, output_dir = run.args, run.output_dir
    if args.decode_benchmark_tokens:
        results.update(_decode_benchmark(run, final))
    results["model"] = describe_model(final)
    results["config"] = {**dataclasses.asdict(args), **run.resolved}
    results["hf_gqa_version"] = __version__
    final.save_pretrained(output_dir / "model", state_dict=state_dict)
    run.tokenizer.save_pretrained(output_dir / "model")
    write_jsonl(output_dir / "eval_predictions.jsonl", sorted(predictions, key=lambda p: p["index"]))
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    run.accelerator.print(
        f"saved the model to {output_dir / 'model'} and the results to {output_dir / 'all_results.json'}"
    )


__all__ = ["train"]
