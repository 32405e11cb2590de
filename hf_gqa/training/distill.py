"""Distillation uptraining: a frozen teacher (by default the source model before its conversion) guides the converted
student.

    loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)

CE is the model's own cross-entropy on the labels; KL is the mean, over the label positions (labels other than -100,
the positions the CE counts), of the KL divergence between the teacher's and the student's next-token distributions
at temperature T (`softmax(logits / T)`); T^2 keeps its gradients on the scale of the CE's (Hinton et al., 2015).

The teacher is a model of its own, loaded again from its checkpoint (`load_teacher`): `hf_gqa.convert` builds the
student from the source's state dict, so the student shares storage with the source model for every tensor the
conversion leaves unchanged, and training it would change such a teacher too. It runs in eval mode under
`torch.no_grad()`, needs no gradients, is not checkpointed (a resumed run loads it again, and it draws no random
numbers) and is only moved to each process's device (no DDP wrapping).
"""

import inspect
from dataclasses import dataclass

import torch

from ..conversion.memory import load_source
from ..errors import HfGqaError

TEACHER_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class DistillLoss:
    """The loss to back-propagate and its two parts (`kl` is T^2 * KL: `loss = alpha * ce + (1 - alpha) * kl`)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, shift: bool
) -> torch.Tensor:
    """Mean KL(teacher || student) at `temperature` over the label positions (labels != -100), in float32.

    `shift`: decoder-only models, whose logits at position t predict the label at t + 1 (as their CE does); an
    encoder-decoder's logits at t predict the label at t. `teacher_logits` may hold the last positions only (what
    `teacher_logits` computes for a decoder-only teacher), provided they cover every label position. Zero when there
    is no label position."""
    length, kept = student_logits.shape[1], teacher_logits.shape[1]
    if teacher_logits.shape[::2] != student_logits.shape[::2] or kept > length:
        raise HfGqaError(
            f"distillation: the teacher's logits {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)} (the teacher needs the student's vocabulary)"
        )
    mask = labels != -100
    if shift:  # one mask over the whole logits (no slice of them: its backward would copy them once more)
        mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    if kept < length and mask[:, : length - kept].any():
        raise HfGqaError(f"distillation: the teacher's logits cover the last {kept} positions, not every label's")
    student = torch.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits[mask[:, length - kept :]].float() / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(student, teacher, reduction="sum", log_target=True)
    return kl / mask.sum().clamp(min=1)


def distillation_loss(
    ce: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    shift: bool = False,
) -> DistillLoss:
    """`alpha * ce + (1 - alpha) * T^2 * KL(teacher || student)` (see `distillation_kl`), with its parts."""
    kl = temperature**2 * distillation_kl(student_logits, teacher_logits, labels, temperature, shift)
    return DistillLoss(loss=alpha * ce + (1 - alpha) * kl, ce=ce, kl=kl)


def _storages(model) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in model.state_dict().values()}


def unshare_(teacher, student) -> int:
    """Clone, in `teacher`, every tensor whose storage a tensor of `student` also uses (so that training the student
    cannot change the teacher); tied tensors stay tied. Returns how many were cloned."""
    shared = _storages(student)
    clones: dict[int, torch.Tensor] = {}
    for module in teacher.modules():
        for is_parameter, registry in ((True, module._parameters), (False, module._buffers)):
            for name, tensor in registry.items():
                if tensor is None or tensor.untyped_storage().data_ptr() not in shared:
                    continue
                if id(tensor) not in clones:
                    copy = tensor.detach().clone()
                    clones[id(tensor)] = torch.nn.Parameter(copy, requires_grad=False) if is_parameter else copy
                registry[name] = clones[id(tensor)]
    return len(clones)


def load_teacher(name_or_path: str, student, dtype=None):
    """The teacher: `name_or_path` loaded as it is (in `dtype`: one of `TEACHER_DTYPES`, default the student's), in
    eval mode, frozen, sharing no storage with `student`. Refuses a teacher whose kind (encoder-decoder or not) or
    vocabulary differs from the student's."""
    if dtype is not None and dtype not in TEACHER_DTYPES:
        raise HfGqaError(f"--teacher-dtype {dtype!r}: choose {', '.join(TEACHER_DTYPES)}")
    teacher = load_source(name_or_path, dtype=dtype or student.dtype)
    unshare_(teacher, student)
    teacher.requires_grad_(False)
    teacher.eval()
    if bool(teacher.config.is_encoder_decoder) != bool(student.config.is_encoder_decoder):
        kinds = {True: "an encoder-decoder", False: "decoder-only"}
        raise HfGqaError(
            f"distillation: the teacher {name_or_path!r} is {kinds[bool(teacher.config.is_encoder_decoder)]} and the "
            f"student {kinds[bool(student.config.is_encoder_decoder)]}"
        )
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (teacher, student)]
    if sizes[0] != sizes[1]:
        raise HfGqaError(
            f"distillation: the teacher {name_or_path!r} has a vocabulary of {sizes[0]} and the student {sizes[1]}: "
            "the teacher needs the student's vocabulary"
        )
    return teacher


def positions_to_keep(labels: torch.Tensor) -> int:
    """Decoder-only: how many last positions hold the logits the KL reads, those that predict a label (from the one
    before the earliest label of the batch on)."""
    has_label = labels != -100
    rows = has_label.any(dim=1)
    if not bool(rows.any()):
        return 1
    first = int(has_label.int().argmax(dim=1)[rows].min())
    return labels.shape[1] - max(first - 1, 0)


@torch.no_grad()
def teacher_logits(teacher, batch: dict) -> torch.Tensor:
    """The teacher's logits on a training batch: the same (encoder) input, and for an encoder-decoder the decoder
    input the student builds from the same labels. The labels are not given to the teacher (its own CE is not
    needed), nor is a KV cache built; a decoder-only teacher that takes `logits_to_keep` (transformers' causal LMs)
    computes the logits of the positions that predict a label only (`positions_to_keep`: the prompt's are not
    needed), which `distillation_kl` aligns with the student's."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if teacher.config.is_encoder_decoder:
        if hasattr(teacher, "prepare_decoder_input_ids_from_labels"):
            kwargs["decoder_input_ids"] = teacher.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        else:
            kwargs["labels"] = batch["labels"]
    elif "logits_to_keep" in inspect.signature(teacher.forward).parameters:
        kwargs["logits_to_keep"] = positions_to_keep(batch["labels"])
    return teacher(**kwargs).logits


__all__ = [
    "TEACHER_DTYPES",
    "DistillLoss",
    "distillation_kl",
    "distillation_loss",
    "load_teacher",
    "positions_to_keep",
    "teacher_logits",
    "unshare_",
]
