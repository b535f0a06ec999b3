"""The attention table's methods: which mask each runs and how it turns the branches into its output, and the
error sums measured on trajectory captures.

Every method is compared with full attention on the same captured q, k, v; three sums per head are kept:
`out` Σ|O − O_full| of the method's output, `sparse` the same for the sparse branch alone with the method's
mask in its precision (low-bit for the stage-2 method), `mask` for the exact sparse branch of that mask (what
the router's choice alone costs: the gap-closed numbers use it), and `full` Σ|O_full|; kept apart per sampling
step and guidance branch. Beside them, what the mask selects (SELECTION): two masks with the same error can
give up different blocks, and which ones a video needs is not what the error measures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from sla2_train.attention import reference as ref

from .chunks import IDENTITY, Branches, Chunk
from .metrics import l1_parts
from .trajectories import Where

PARTS = ("out", "sparse", "mask", "full")
# Sums per head of what the mask selects: the true softmax mass it keeps (over query blocks, each the mean over its
# rows), the query blocks counted, the key blocks selected, those in the query block's own frame (the latent frame
# of the block's middle token), and those the heuristic router selects too.
SELECTION = ("kept_mass", "query_blocks", "selected", "own_frame", "heuristic_overlap")
SUMS = PARTS + SELECTION


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


def _frames(first: int, count: int, size: int, n: int, frame_tokens: int) -> torch.Tensor:
    """Latent frame of blocks first … first + count − 1 of `size` tokens: the frame of each block's middle token
    (a ragged last block's middle is clamped to the sequence)."""
    middle = torch.arange(first, first + count) * size + size // 2
    return middle.clamp(max=n - 1) // frame_tokens


class ErrorSums:
    """Sums [len(SUMS), H] per (sparsity, method, layer) and, within it, per (sampling step, guidance branch) of
    the captures they were added from; a layer's numbers are over every step and branch unless `where` names one.
    `frame_tokens`: tokens per latent frame (None: the own-frame share is not measured)."""

    def __init__(self, frame_tokens: int | None = None):
        self.sums: dict[tuple, dict[Where, torch.Tensor]] = defaultdict(dict)
        self.frame_tokens = frame_tokens

    @torch.no_grad()
    def add(self, layer: int, chunk: Chunk, methods: dict[float, list[Method]], where: Where) -> None:
        t = chunk.teacher
        for b in chunk.items:
            wanted = [m for m in methods[b.sparsity] if m.mask == b.name]
            if not wanted:
                continue
            # what depends on the mask alone, once for the methods that share it
            err_mask, full = l1_parts(b.o_s, t.full)
            selection = self._selection(chunk, b)
            for m in wanted:
                o_s = (ref.fake_quant_sparse_attention(t.q, t.k, t.v, b.mask, t.block_q, t.block_k)[0]
                       if m.quant else b.o_s)
                err_out = l1_parts(m.mix(b, o_s, t.block_q), t.full)[0]
                err_sparse = err_mask if o_s is b.o_s else l1_parts(o_s, t.full)[0]
                sums = torch.cat([torch.stack([err_out, err_sparse, err_mask, full]).double(), selection]).cpu()
                groups = self.sums[(b.sparsity, m.name, layer)]
                groups[where] = groups.get(where, 0) + sums

    def _selection(self, chunk: Chunk, b: Branches) -> torch.Tensor:
        """[len(SELECTION), H] float64, on the mask's device, of one mask on one chunk (NaN where a quantity
        cannot be measured)."""
        t, mask = chunk.teacher, b.mask
        batch, heads, nb, nk = mask.shape
        nan = torch.full((heads,), float("nan"), dtype=torch.float64, device=mask.device)
        heuristic = next((o.mask for o in chunk.items if o.name == IDENTITY and o.sparsity == b.sparsity), None)
        overlap = nan if heuristic is None else (mask & heuristic).sum(dim=(0, 2, 3))
        own = nan
        if self.frame_tokens:
            n = t.k.shape[-2]
            q_frame = _frames(chunk.blocks.start, nb, t.block_q, n, self.frame_tokens)
            k_frame = _frames(0, nk, t.block_k, n, self.frame_tokens)
            own = (mask & (q_frame[:, None] == k_frame[None, :]).to(mask.device)).sum(dim=(0, 2, 3))
        per_head = [(t.block_mass * mask).sum(dim=(0, 2, 3)), torch.full_like(nan, batch * nb),
                    mask.sum(dim=(0, 2, 3)), own, overlap]
        return torch.stack([x.double() for x in per_head])

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

    def selection(self, sparsity: float, method: str, layer: int, where: Where | None = None
                  ) -> dict[str, float | None] | None:
        """The layer's kept softmax mass (mean over query blocks), and the shares of its selected key blocks that
        lie in the query block's own frame and that the heuristic also selects; None for a quantity not measured."""
        s = self._total(sparsity, method, layer, where)
        if s is None:
            return None
        total = {name: float(s[SUMS.index(name)].sum()) for name in SELECTION}

        def ratio(num: str, den: str) -> float | None:
            value = total[num] / total[den] if total[den] else float("nan")
            return None if math.isnan(value) else value
        return {"kept_mass": ratio("kept_mass", "query_blocks"), "own_frame": ratio("own_frame", "selected"),
                "heuristic_overlap": ratio("heuristic_overlap", "selected")}

    def per_head(self, sparsity: float, method: str, layer: int, part: str = "out") -> list[float] | None:
        s = self._total(sparsity, method, layer, None)
        return None if s is None else (s[PARTS.index(part)] / s[PARTS.index("full")]).tolist()
