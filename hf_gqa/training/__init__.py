"""Uptraining support: training hooks, summarization data, ROUGE, evaluation, checkpoints, LoRA, distillation and run
logs.

The recipes in `recipes/` are thin scripts over these. Everything but `hooks` needs the `recipes` extra
(`pip install 'hf-gqa[recipes]'`: accelerate, datasets, rouge-score, peft); those imports happen on first use.
"""

from ..variants.routed import DGQAReallocate, dgqa_modules
from ..variants.simgqa import SimGQARegroup, regroup_heads_
from .checkpoint import (
    HookStates,
    Progress,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    seed_micro_step,
)
from .data import (
    DEFAULT_PROMPT_TEMPLATE,
    KNOWN_DATASETS,
    ResumableSampler,
    SummarizationCollator,
    aclsum_dir,
    detokenize,
    load_summarization_splits,
    tokenize_summarization,
    write_jsonl,
)
from .distill import DistillLoss, distillation_kl, distillation_loss, load_teacher, teacher_logits
from .evaluation import decode_throughput, evaluate_summarization
from .hooks import HookCallback, TrainingHook, TrainingState, run_hooks
from .lora import apply_lora, lora_targets, merge_lora, register_peft_defaults
from .model import (
    build_hooks,
    default_hooks,
    describe_model,
    fold,
    freeze_relative_attention_bias,
    grouped_kv_modules,
    load_for_uptraining,
    parse_hook_spec,
    resolve_hook,
    trainable_parameters,
)
from .rouge import ROUGE_KEYS, compute_rouge, rouge_per_example, sentences_per_line, split_sentences
from .runlog import RunLogger

__all__ = [
    "DGQAReallocate",
    "dgqa_modules",
    "SimGQARegroup",
    "regroup_heads_",
    "DEFAULT_PROMPT_TEMPLATE",
    "KNOWN_DATASETS",
    "ROUGE_KEYS",
    "HookCallback",
    "HookStates",
    "Progress",
    "ResumableSampler",
    "RunLogger",
    "SummarizationCollator",
    "TrainingHook",
    "TrainingState",
    "aclsum_dir",
    "apply_lora",
    "build_hooks",
    "check_checkpoint",
    "default_hooks",
    "compute_rouge",
    "decode_throughput",
    "DistillLoss",
    "distillation_kl",
    "distillation_loss",
    "describe_model",
    "detokenize",
    "evaluate_summarization",
    "fold",
    "freeze_relative_attention_bias",
    "grouped_kv_modules",
    "list_checkpoints",
    "load_checkpoint",
    "load_for_uptraining",
    "load_summarization_splits",
    "load_teacher",
    "lora_targets",
    "merge_lora",
    "parse_hook_spec",
    "register_peft_defaults",
    "resolve_hook",
    "resolve_resume",
    "rouge_per_example",
    "run_hooks",
    "save_checkpoint",
    "seed_micro_step",
    "sentences_per_line",
    "split_sentences",
    "teacher_logits",
    "tokenize_summarization",
    "trainable_parameters",
    "write_jsonl",
]
