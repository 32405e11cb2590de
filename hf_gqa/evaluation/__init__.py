"""Measuring checkpoints side by side (`compare`), with lm-evaluation-harness tasks among the figures (`harness`,
the extra `hf-gqa[lm-eval]`)."""

from .compare import PROMPT_TOKENS, decode_prompt, decode_speed, evaluate_models, summary_nll
from .harness import HarnessTasks, lm_eval_version, prepare_tasks, run_tasks

__all__ = [
    "PROMPT_TOKENS",
    "HarnessTasks",
    "decode_prompt",
    "decode_speed",
    "evaluate_models",
    "lm_eval_version",
    "prepare_tasks",
    "run_tasks",
    "summary_nll",
]
