"""`GQASpec`, what a conversion should do: the common options declared here plus every variant folder's options
(`hf_gqa.registry.OPTION_CLASSES`), composed into one frozen dataclass. Every CLI flag, `--config` YAML key, recipe
`convert_*` field and `hf_gqa.convert` keyword comes from these declarations."""

import dataclasses
from collections.abc import Mapping

from .calibration.options import CALIBRATION_INITS, CalibrationOptions
from .core.grouping import KV_INITS
from .core.options import Option, declared, option
from .errors import HfGqaError
from .registry import OPTION_CLASSES, list_variants

ATTENTION_KINDS = ("encoder", "decoder_self", "cross", "self")


@dataclasses.dataclass(frozen=True)
class CommonOptions:
    variant: str = option(
        "gqa",
        help="a variant (`hf-gqa list`): gqa (default): G heads; mqa: 1; mha: H; wgqa, randwgqa: G learned weighted "
        "sums (a training form); simgqa: similar heads grouped; kdgqa, dgqa, pgqa: key-norm routed or perturbed "
        "GQA; gqkva, gkva, mkva: queries grouped too",
        type=str,
        choices=list_variants,
    )
    groups: int | Mapping[str, int] | None = option(
        help="key/value heads after conversion; in YAML or Python also a mapping of attention kind -> heads "
        "(mqa and mha imply it)",
        type=int,
        short="-g",
        metavar="G",
        also=(dict,),
    )
    init: str = option(
        "mean",
        help="how a group's K/V are initialised from its heads: mean (the paper's, default), first or random "
        "(gqa, mqa); fitted on --calibration-data (gqa, mqa): aligned (each group's heads rotated onto each other, "
        "RoPE-safe, compensated in the queries and output projection, then averaged: Jin et al., 2025), "
        "activation (closed form: each new K/V head fitted to its group's activations, queries and output "
        "projection compensated) or calibrated (that, then each attention block fitted, layer by layer, to the "
        "source block's output; decoder-only safetensors checkpoints on disk one layer at a time)",
        type=str,
        choices=lambda: sorted(KV_INITS) + list(CALIBRATION_INITS),
    )
    attention: tuple[str, ...] | None = option(
        help="attention kinds to convert: T5 encoder, decoder_self, cross (default: decoder_self cross, as in "
        "Ainslie et al.); decoder-only models have one kind, self",
        type=list,
        choices=ATTENTION_KINDS,
        metavar="KIND",
    )
    seed: int = option(
        0,
        help="seed of --init random, of randwgqa's weights (per tensor) and of the calibration text (default: 0)",
        type=int,
    )


def _groups_for(self, kind: str) -> int | None:
    """The requested key/value heads for one attention kind (None: left to the variant)."""
    if isinstance(self.groups, Mapping):
        return self.groups.get(kind)
    return self.groups


def _post_init(self) -> None:
    if isinstance(self.attention, list | str):
        object.__setattr__(
            self, "attention", (self.attention,) if isinstance(self.attention, str) else tuple(self.attention)
        )
    if self.attention is not None and not (
        isinstance(self.attention, tuple) and all(isinstance(kind, str) for kind in self.attention)
    ):
        raise HfGqaError(
            f"attention must name attention kinds (e.g. ['decoder_self', 'cross']); got {self.attention!r}"
        )
    if self.attention is not None and not self.attention:
        object.__setattr__(self, "attention", None)


_CLASSES = (CommonOptions, *OPTION_CLASSES, CalibrationOptions)
OPTIONS: dict[str, Option] = {o.name: o for cls in _CLASSES for o in declared(cls)}

GQASpec = dataclasses.make_dataclass(
    "GQASpec",
    [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for cls in _CLASSES
        for f in dataclasses.fields(cls)
    ],
    frozen=True,
    namespace={
        "groups_for": _groups_for,
        "__post_init__": _post_init,
        "declared_options": classmethod(lambda cls: list(OPTIONS.values())),
    },
)
GQASpec.__module__ = __name__
GQASpec.__doc__ = "A conversion request. Options (`hf-gqa convert --help` shows the same text):\n\n" + "\n".join(
    f"    {o.name}: {o.help}" for o in OPTIONS.values()
)

__all__ = ["ATTENTION_KINDS", "OPTIONS", "CommonOptions", "GQASpec"]
