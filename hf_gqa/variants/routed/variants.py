"""Variants whose query-to-key/value routing stock GQA cannot express (see `hf_gqa/modeling/routing.py`).

- KDGQA, DGQA, PGQA (Khan et al., 2024): K/V mean-pooled into G heads as for GQA; the query heads are routed to them
  by key norms (KDGQA: every forward pass; DGQA: every `window` training steps, from an EMA or the change of key
  norms) or uniformly with Gaussian noise subtracted from the attention maps while training (PGQA). At conversion
  DGQA and PGQA (in evaluation) are exactly the GQA model; KDGQA routes by norms from the first forward pass.
- The GQKVA family (Javadi et al., 2023): queries are grouped too. GQKVA-gq.gkv mean-pools the query heads into gq
  and the K/V heads into gkv groups and runs one attention per (query head, K/V head) pair; GKVA-g shares each of g
  pooled query heads among H/g of the H key/value heads, MKVA is GKVA-1. The output projection takes the pairs: a pair
  gets the output columns of the original heads that fall in it (summed), or zeros if none do, and (T5) reads the mean
  relative position bias of those heads, so the converted model equals the original with each head's query and
  key/value replaced by its groups' means (T5: and its relative position bias by its pair's mean). gq = gkv = H (or
  GKVA-H) is the original MHA exactly; gq = H, gkv = 1 is MQA.

The output is the routed form: `t5_gqa` with `gqa_routing`, or `<family>_routed` for decoders, saved with its code.
"""

import torch

from ...core.grouping import regroup_heads, valid_group_counts
from ...core.tensormap import TensorOp, keep
from ...errors import HfGqaError, InvalidGroupsError
from ...modeling.routing import EVOLUTIONS, STATISTICS, uniform_counts
from ..base import Variant
from .form import FORM
from .hook import DGQAReallocate, dgqa_modules
from .options import RoutedOptions


class _Routed(Variant):
    """Shared by the routed variants: the config gets `gqa_routing`, one routing spec per converted kind."""

    mode: str
    options = RoutedOptions

    def routing_spec(self, num_heads: int, kv_heads: int, spec) -> dict:
        raise NotImplementedError

    def target_config(self, family, config, kv_heads, provenance, spec) -> dict:
        target = super().target_config(family, config, kv_heads, provenance, spec)
        num_heads = family.num_heads(config)
        routing = {kind: self.routing_spec(num_heads, after, spec) for kind, (_, after) in kv_heads.items()}
        return family.form_config(target, FORM.name, gqa_routing=routing)


class _KeyRouted(_Routed):
    """KDGQA, DGQA, PGQA: G pooled K/V heads as GQA has them; H query heads routed to them."""

    def kv_heads(self, kind, num_heads, current, requested):
        if requested is None:
            raise InvalidGroupsError(f"--groups is required for variant {self.name!r}")
        return self.check_groups(kind, num_heads, current, requested)

    def routing_spec(self, num_heads, kv_heads, spec) -> dict:
        return {"mode": self.mode, "heads": num_heads, "q_heads": num_heads, "kv_heads": kv_heads}


class KDGQA(_KeyRouted):
    name = "kdgqa"
    mode = "kdgqa"
    summary = "G key/value heads; query heads allocated to them by key norms in every forward pass (Khan et al.)"

    def check_spec(self, spec) -> None:
        super().check_spec(spec)
        if spec.statistic is not None and spec.statistic not in STATISTICS:
            raise HfGqaError(f"unknown --statistic {spec.statistic!r}; choose one of {', '.join(STATISTICS)}")

    def routing_spec(self, num_heads, kv_heads, spec) -> dict:
        return dict(
            super().routing_spec(num_heads, kv_heads, spec),
            statistic=spec.statistic or "sample",
            allocation=spec.allocation or "balanced",
        )


class DGQA(_KeyRouted):
    name = "dgqa"
    mode = "dgqa"
    summary = "kdgqa re-allocated every --window training steps from an EMA (or change) of key norms (Khan et al.)"

    def check_spec(self, spec) -> None:
        super().check_spec(spec)
        if spec.window is not None and (isinstance(spec.window, bool) or spec.window < 1):
            raise HfGqaError(f"--window must be a positive number of steps, got {spec.window!r}")
        if spec.ema_alpha is not None and not 0 < spec.ema_alpha <= 1:
            raise HfGqaError(f"--ema-alpha must be in (0, 1], got {spec.ema_alpha!r}")
        if spec.evolution is not None and spec.evolution not in EVOLUTIONS:
            raise HfGqaError(f"unknown --evolution {spec.evolution!r}; choose one of {', '.join(EVOLUTIONS)}")

    def routing_spec(self, num_heads, kv_heads, spec) -> dict:
        return dict(
            super().routing_spec(num_heads, kv_heads, spec),
            window=spec.window or 300,
            alpha=0.1 if spec.ema_alpha is None else float(spec.ema_alpha),
            evolution=spec.evolution or "ema",
            allocation=spec.allocation or "balanced",
        )

    def rewrites(self, current, new, spec=None) -> bool:
        return True  # every converted block gets its allocation and statistics buffers

    @classmethod
    def required_hooks(cls, model, hooks: list) -> list:
        if dgqa_modules(model) and not any(isinstance(h, DGQAReallocate) for h in hooks):
            return [DGQAReallocate()]
        return []

    def tensor_ops(self, family, block, current, new, spec, regroup):
        ops = family.tensor_ops(block, regroup) if current != new else {}
        num_heads, anchor = block.num_heads, block.kv_keys[0]
        if anchor not in ops:
            ops[anchor] = TensorOp((anchor,), keep)  # read below: kept (an op's inputs are consumed otherwise)
        # The statistics in the checkpoint's dtype, as `from_pretrained(dtype=...)` would cast them.
        buffers = {
            "allocation": lambda w: uniform_counts(num_heads, new),
            "norm_sum": lambda w: torch.zeros(new, dtype=w.dtype),
            "norm_count": lambda w: torch.zeros((), dtype=w.dtype),
            "norm_cache": lambda w: torch.zeros(new, dtype=w.dtype),
            "cache_filled": lambda w: torch.zeros((), dtype=torch.bool),
        }
        for name, make in buffers.items():
            ops[f"{block.prefix}.routing.{name}"] = TensorOp((anchor,), make)
        return ops


class PGQA(_KeyRouted):
    name = "pgqa"
    mode = "pgqa"
    summary = "gqa with Gaussian noise subtracted from each group's attention maps while training (Khan et al.)"

    def routing_spec(self, num_heads, kv_heads, spec) -> dict:
        return dict(super().routing_spec(num_heads, kv_heads, spec), noise_in_eval=bool(spec.noise_in_eval))


class _Paired(_Routed):
    """The GQKVA family: static (query head, key/value head) pairs; q, k, v pooled, o re-assigned."""

    mode = "pairs"

    def query_heads(self, num_heads: int, spec) -> int:
        raise NotImplementedError

    def pairs(self, num_heads: int, q_heads: int, kv_heads: int) -> tuple[list[tuple[int, int]], list[int]]:
        """The pairs, and the pair of each original head."""
        raise NotImplementedError

    def routing_spec(self, num_heads, kv_heads, spec) -> dict:
        q_heads = self.query_heads(num_heads, spec)
        pairs, pair_of = self.pairs(num_heads, q_heads, kv_heads)
        # T5: a pair reads the mean relative position bias of the original heads in it, so that it computes what each
        # of them computes with its query and key/value pooled. A pair holding none (its output columns start at
        # zero) reads the mean over its query group's heads (our choice; the paper has no relative bias).
        bias_heads = []
        for p, (q, _) in enumerate(pairs):
            members = [h for h in range(num_heads) if pair_of[h] == p]
            size = num_heads // q_heads
            bias_heads.append(members or list(range(q * size, (q + 1) * size)))
        return {
            "mode": "pairs",
            "variant": self.name,
            "heads": num_heads,
            "q_heads": q_heads,
            "kv_heads": kv_heads,
            "pairs": [list(p) for p in pairs],
            "bias_heads": bias_heads,
        }

    def rewrites(self, current, new, spec=None) -> bool:
        return True

    def tensor_ops(self, family, block, current, new, spec, regroup):
        if not block.q_keys or block.o_key is None:
            raise HfGqaError(f"{self.name} needs separate query and output projections; {family.name} has none")
        num_heads, head_dim = block.num_heads, block.head_dim
        q_heads = self.query_heads(num_heads, spec)
        pairs, pair_of = self.pairs(num_heads, q_heads, new)
        ops = family.tensor_ops(block, regroup) if current != new else {}

        def pool_queries(tensor: torch.Tensor) -> torch.Tensor:
            return regroup_heads(tensor, num_heads, q_heads, "mean")

        for key in block.q_keys:
            ops[key] = TensorOp((key,), pool_queries)

        def pair_columns(weight: torch.Tensor) -> torch.Tensor:
            heads = weight.detach().float().reshape(weight.shape[0], num_heads, head_dim)
            out = torch.zeros(weight.shape[0], len(pairs), head_dim)
            out.index_add_(1, torch.tensor(pair_of), heads)
            return out.reshape(weight.shape[0], len(pairs) * head_dim).to(weight.dtype).contiguous()

        ops[block.o_key] = TensorOp((block.o_key,), pair_columns)
        return ops


class GQKVA(_Paired):
    name = "gqkva"
    summary = "gq query x gkv key/value heads (--q-groups gq --groups gkv), one attention per pair (Javadi et al.)"

    def check_spec(self, spec) -> None:
        super().check_spec(spec)
        if spec.q_groups is None:
            raise InvalidGroupsError("--q-groups (query heads, gq) is required for variant 'gqkva'")

    def query_heads(self, num_heads, spec) -> int:
        gq = spec.q_groups
        if isinstance(gq, bool) or not isinstance(gq, int) or gq < 1 or num_heads % gq:
            raise InvalidGroupsError(
                f"--q-groups {gq!r} does not divide the {num_heads} query heads; valid values: "
                + ", ".join(map(str, valid_group_counts(num_heads)))
            )
        return gq

    def kv_heads(self, kind, num_heads, current, requested):
        if requested is None:
            raise InvalidGroupsError("--groups (key/value heads, gkv) is required for variant 'gqkva'")
        return self.check_groups(kind, num_heads, current, requested)

    def pairs(self, num_heads, q_heads, kv_heads):
        pairs = [(i, j) for i in range(q_heads) for j in range(kv_heads)]
        pair_of = [(h // (num_heads // q_heads)) * kv_heads + h // (num_heads // kv_heads) for h in range(num_heads)]
        return pairs, pair_of


class GKVA(_Paired):
    name = "gkva"
    summary = "g pooled query heads (--groups g), each shared by H/g of the H key/value heads (Javadi et al.)"

    def query_heads(self, num_heads, spec) -> int:
        if spec.groups is None:
            raise InvalidGroupsError(f"--groups (query heads) is required for variant {self.name!r}")
        return self.check_groups("query", num_heads, num_heads, spec.groups)

    def kv_heads(self, kind, num_heads, current, requested):
        if requested is None:
            raise InvalidGroupsError(f"--groups (query heads) is required for variant {self.name!r}")
        self.check_groups(kind, num_heads, num_heads, requested)
        return self.check_groups(kind, num_heads, current, num_heads)

    def pairs(self, num_heads, q_heads, kv_heads):
        return [(h // (num_heads // q_heads), h) for h in range(num_heads)], list(range(num_heads))


class MKVA(GKVA):
    name = "mkva"
    summary = "one pooled query head shared by all H key/value heads (GKVA with g=1; Javadi et al.)"

    def query_heads(self, num_heads, spec) -> int:
        return 1

    def kv_heads(self, kind, num_heads, current, requested):
        if requested not in (None, 1):
            raise InvalidGroupsError(f"variant 'mkva' has 1 query head; got --groups {requested}")
        return super().kv_heads(kind, num_heads, current, 1)


VARIANTS = (KDGQA, DGQA, PGQA, GQKVA, GKVA, MKVA)

__all__ = ["DGQA", "GKVA", "GQKVA", "KDGQA", "MKVA", "PGQA", "VARIANTS"]
