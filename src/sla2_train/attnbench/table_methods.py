"""The attention table's methods: which mask each runs and how it turns the branches into its output, and the
error sums measured on trajectory captures.

Every method is compared with full attention on the same captured q, k, v; three sums per head are kept:
`out` Σ|O − O_full| of the method's output, `sparse` the same for the sparse branch alone with the method's
mask in its precision (low-bit for the stage-2 method), `mask` for the exact sparse branch of that mask (what
the router's choice alone costs: the gap-closed numbers use it), and `full` Σ|O_full|; kept apart per sampling
step and guidance branch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from sla2_train.attention import reference as ref

from .chunks import Branches, Chunk
from .metrics import l1_parts
from .trajectories import Where

PARTS = ("out", "sparse", "mask", "full")


def sparse_only(b: Branches, o_s: torch.Tensor, block_q: int) -> torch.Tensor:
    return o_s


class FittedAlpha:
    """SLA2's α-mix with a per-head α [H] fitted on calibration trajectories."""

    def __init__(self, alpha: torch.Tensor):
        self.alpha = alpha

    def __call__(self, b: Branches, o_s: torch.Tensor, block_q: int) -> torch.Tensor:
        a = self.alpha.to(o_s.device)[None, :, None].expand(b.mask.shape[:3])
        return ref.alpha_mix(o_s, b.o_l, ref.effective_alpha(a, b.mask.all(-1)), block_q)


def own_alpha(b: Branches, o_s: torch.Tensor, block_q: int) -> torch.Tensor:
    """SLA2's α-mix with the α the trained router's module runs with."""
    return ref.alpha_mix(o_s, b.o_l, ref.effective_alpha(b.alpha, b.mask.all(-1)), block_q)


class SLAProjection:
    """SLA (v1): O_s + O_l·W with a per-head W [H, Dv, Dv]."""

    def __init__(self, proj: torch.Tensor):
        self.proj = proj

    def __call__(self, b: Branches, o_s: torch.Tensor, block_q: int) -> torch.Tensor:
        return ref.sla_mix(o_s, b.o_l, self.proj.to(o_s.device))


@dataclass
class Method:
    """One row of the table at one sparsity: `mask` names the mask source, `mix` makes the output from the
    branches, `quant` runs the sparse branch low-bit (the fake-quant twin of the INT8/FP8 kernel)."""

    name: str
    mask: str
    mix: Callable[[Branches, torch.Tensor, int], torch.Tensor]
    quant: bool = False


class ErrorSums:
    """Sums [4, H] (PARTS) per (sparsity, method, layer) and, within it, per (sampling step, guidance branch) of
    the captures they were added from; a layer's numbers are over every step and branch unless `where` names one."""

    def __init__(self):
        self.sums: dict[tuple, dict[Where, torch.Tensor]] = defaultdict(dict)

    @torch.no_grad()
    def add(self, layer: int, chunk: Chunk, methods: dict[float, list[Method]], where: Where) -> None:
        t = chunk.teacher
        for b in chunk.items:
            for m in methods[b.sparsity]:
                if m.mask != b.name:
                    continue
                o_s = (ref.fake_quant_sparse_attention(t.q, t.k, t.v, b.mask, t.block_q, t.block_k)[0]
                       if m.quant else b.o_s)
                out = m.mix(b, o_s, t.block_q)
                err_out, full = l1_parts(out, t.full)
                err_sparse = l1_parts(o_s, t.full)[0]
                err_mask = l1_parts(b.o_s, t.full)[0]
                groups = self.sums[(b.sparsity, m.name, layer)]
                groups[where] = groups.get(where, 0) + torch.stack([err_out, err_sparse, err_mask, full]).double().cpu()

    def wheres(self) -> list[Where]:
        """Every (step, branch) measured, in order."""
        return sorted({w for groups in self.sums.values() for w in groups})

    def _total(self, sparsity: float, method: str, layer: int, where: Where | None) -> torch.Tensor | None:
        groups = self.sums.get((sparsity, method, layer))
        if not groups:
            return None
        if where is not None:
            return groups.get(where)
        return sum(groups.values())

    def rel_l1(self, sparsity: float, method: str, layer: int, part: str = "out", where: Where | None = None
               ) -> float | None:
        """Σ over heads, prompts and the steps and branches (`where`: one of them) of |O − O_full| over Σ|O_full|:
        the layer's relative L1."""
        s = self._total(sparsity, method, layer, where)
        if s is None:
            return None
        return float(s[PARTS.index(part)].sum() / s[PARTS.index("full")].sum())

    def per_head(self, sparsity: float, method: str, layer: int, part: str = "out") -> list[float] | None:
        s = self._total(sparsity, method, layer, None)
        return None if s is None else (s[PARTS.index(part)] / s[PARTS.index("full")]).tolist()
