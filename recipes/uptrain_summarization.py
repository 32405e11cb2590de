#!/usr/bin/env python
"""Uptrain a grouped-query-attention model on summarization, with Accelerate, and score it with ROUGE.

    accelerate launch recipes/uptrain_summarization.py --config recipes/configs/t5-small_gqa.yaml
    python recipes/uptrain_summarization.py --config recipes/configs/t5-small_gqa.yaml --seed 1   # one process

The same script runs on one CPU, one GPU or several (`accelerate config`, or a config of `recipes/accelerate/`:
DDP, FSDP, DeepSpeed ZeRO-2/3, picks the processes and the mixed precision). On N processes a step's loss is the
mean over the label tokens of its global batch (per-device batch x processes x accumulation steps), so the same
global batch gives the same losses on 1 or N processes; evaluation scores each example once. N CPU processes:
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...` (`--cpu --num_processes N` starts one
process unless MPI is set up).

It follows transformers' `run_summarization_no_trainer.py`, as a thin script over `hf_gqa.training`:
the options are `hf_gqa.training.arguments.UptrainArguments` and the loop is `hf_gqa.training.loop.train`, beside
the data, ROUGE, evaluation, checkpoints, LoRA and hooks, where the tests cover them.

- Model: `--model-name-or-path` is a converted checkpoint, used as it is, or a source converted in memory with
  `--convert-variant` (`mha`, `gqa`, `mqa`, and any variant hf-gqa registers) and `--groups`, so one config runs MHA,
  GQA and MQA from the same source. Encoder-decoders (T5) learn `source_prefix + text -> summary`; decoder-only models
  learn `prompt_template(text) + summary`, with the loss on the summary tokens only.
- Distillation (`--distill`): the source before conversion (or `--teacher-name-or-path`), frozen, is a teacher:
  loss = a * CE + (1 - a) * T^2 * KL(teacher || student) over the summary tokens (`--distill-alpha`,
  `--distill-temperature`, `--teacher-dtype`); the log records both parts (`ce_loss`, `kl_loss`).
- Steps: `num_train_epochs` epochs, or a `step_budget`; `alpha` uptrains for that fraction of it (Ainslie et al.:
  a few percent of the pre-training steps); `max_train_steps` overrides both. AdamW, linear decay by default.
- Every `checkpointing_steps` optimizer steps, `accelerator.save_state` writes `OUTPUT/checkpoints/step-N`;
  `--resume-from-checkpoint latest` continues from the newest with the same losses as an uninterrupted run.
- Every `eval_steps` and at the end: loss, generated summaries (greedy or beam, with the KV cache) and ROUGE-1, -2,
  -L and -Lsum. At the end: the model in its inference form (LoRA merged, training-form variants folded) in
  `OUTPUT/model`, `OUTPUT/all_results.json` (final metrics, model sizes, decode speed and the run's config),
  `OUTPUT/eval_predictions.jsonl`, and the log (`log.jsonl`, `train_log.csv`, `eval_log.csv`, TensorBoard if
  installed).

Options come from `--config FILE.yaml` (keys as in `--help`, `-` or `_`) and the command line, which wins.
"""

import sys

from hf_gqa.errors import HfGqaError
from hf_gqa.training.arguments import UptrainArguments, build_parser, check_args, conversion_options, parse_args
from hf_gqa.training.loop import train

__all__ = ["UptrainArguments", "build_parser", "check_args", "conversion_options", "main", "parse_args", "train"]


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
