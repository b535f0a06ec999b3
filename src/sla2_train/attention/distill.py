"""Stage-1 objectives: what the router and α are trained on (docs/method.md, "Stage 1 objective").

A step looks at a subset of query blocks (`DistillRows`) and the teacher's view of them: the full softmax
rows P, full attention O = PV and the true pooled block mass B_ij = mean over the rows r of query block i of
Σ_{t in key block j} P_rt. An objective is a set of weighted terms, each a callable
(attention, rows, scores) -> scalar, so a config lists them (hydra.utils.instantiate) and nothing branches on
names:

- SoftTopkMSE: the paper's loss, MSE(full attention, SLA2 through SoftTop-k).
- BlockMassKL: KL(B_i || softmax of the router's scores over key blocks). Hard Top-k keeps the blocks with
  the highest scores; it is right exactly when the scores rank blocks as B does, and B is dense signal.
- AlphaHardMSE: MSE(full attention, SLA2 at the hard Top-k mask) with the mask fixed, so only α learns,
  and it learns the mix that inference runs. Its minimum per head is the least-squares α of `alpha_fit`.
- IdentityDecay: ||W_q − I||² + ||W_k − I||², a pull toward the heuristic router.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

import torch
from torch.utils.checkpoint import checkpoint

from . import reference as ref
from .backend import lambda_solver
from .precision import no_autocast


@dataclass
class DistillRows:
    """Query blocks `blocks` (ascending) of one [B, H, N, D] input, and the dense teacher on their rows."""

    q: torch.Tensor  # [B, H, R, D], the rows of `blocks`
    k: torch.Tensor  # [B, H, N, D]
    v: torch.Tensor
    blocks: torch.Tensor  # long [nb]
    block_q: int
    block_k: int

    @cached_property
    def probs(self) -> torch.Tensor:
        """Full softmax rows P [B, H, R, N] in float32 (no gradient: the teacher is frozen)."""
        with torch.no_grad():
            return torch.softmax(ref.scaled_scores(self.q.float(), self.k.float()), dim=-1)

    @cached_property
    def full(self) -> torch.Tensor:
        return self.probs @ self.v.float()

    @cached_property
    def block_mass(self) -> torch.Tensor:
        """True pooled block mass [B, H, nb, nk]; each row sums to 1."""
        return ref.pooled_block_mass(self.probs, self.block_q, self.block_k)

    def chunks(self, blocks_per_chunk: int) -> list[DistillRows]:
        """The same rows as consecutive groups of `blocks_per_chunk` query blocks (a ragged last block, which
        is always the last of `blocks`, stays last in its group)."""
        rows_per_chunk = blocks_per_chunk * self.block_q
        return [DistillRows(self.q[:, :, i * rows_per_chunk:(i + 1) * rows_per_chunk], self.k, self.v,
                            self.blocks[i * blocks_per_chunk:(i + 1) * blocks_per_chunk], self.block_q, self.block_k)
                for i in range(ref.num_blocks(len(self.blocks), blocks_per_chunk))]


def select_rows(q, k, v, block_q: int, block_k: int, num_query_blocks: int | None, generator=None) -> DistillRows:
    """All query blocks, or `num_query_blocks` of them drawn at random (bounds the O(rows · N) memory)."""
    nq = ref.num_blocks(q.shape[-2], block_q)
    blocks = torch.arange(nq, device=q.device)
    if num_query_blocks is not None and num_query_blocks < nq:
        # Ascending order keeps a ragged last block last, where pooling and token expansion expect it.
        blocks = torch.randperm(nq, generator=generator, device="cpu")[:num_query_blocks].sort().values
        blocks = blocks.to(q.device)
    rows = (blocks[:, None] * block_q + torch.arange(block_q, device=q.device)).flatten()
    rows = rows[rows < q.shape[-2]]
    return DistillRows(q[:, :, rows], k, v, blocks, block_q, block_k)


def _alpha(attention, scores: torch.Tensor, mask: torch.Tensor, n_k: int) -> torch.Tensor:
    b, h, nq = scores.shape[:3]
    return attention.alpha(attention._mass(scores, mask, n_k)).expand(b, h, nq)


class SoftTopkMSE:
    """MSE between full attention and SLA2 through SoftTop-k (the paper's stage-1 loss).

    tau / detach_lambda: None takes the attention module's own options."""

    mean_over = "rows"  # what the term averages over: Stage1Objective weighs query-block chunks by it

    def __init__(self, weight: float = 1.0, tau: float | None = None, detach_lambda: bool | None = None):
        self.weight, self.tau, self.detach_lambda = weight, tau, detach_lambda

    def __call__(self, attention, rows: DistillRows, scores: torch.Tensor) -> torch.Tensor:
        tau = attention.tau if self.tau is None else self.tau
        detach = attention.detach_lambda if self.detach_lambda is None else self.detach_lambda
        k_sel = ref.topk_count(scores.shape[-1], attention.sparsity)
        u = ref.soft_topk_logits(scores, k_sel, tau, detach, lambda_solver(attention, scores))
        alpha = _alpha(attention, scores, torch.sigmoid(u), rows.k.shape[-2])
        b = rows.blocks
        student = ref.sla2_attention_soft(
            rows.q, rows.k, rows.v, u[:, :, b], alpha[:, :, b], rows.block_q, rows.block_k
        )
        return torch.nn.functional.mse_loss(student.float(), rows.full)


class BlockMassKL:
    """KL(true pooled block mass || softmax over key blocks of the router's scores), per query block.

    A key block stands for its token count (the ragged last one for fewer), as in the router's own mass
    estimate. Mean over query blocks, heads and batch."""

    mean_over = "blocks"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, attention, rows: DistillRows, scores: torch.Tensor) -> torch.Tensor:
        counts = ref.block_token_counts(rows.k.shape[-2], rows.block_k, scores.device, torch.float32)
        log_r = torch.log_softmax(scores[:, :, rows.blocks].float() + counts.log(), dim=-1)
        target = rows.block_mass
        kl = torch.special.xlogy(target, target) - target * log_r
        return kl.sum(-1).mean()


class AlphaHardMSE:
    """MSE between full attention and SLA2 at the hard Top-k mask, which is held fixed: only α learns, and
    it learns the mix that inference runs (α → 1 where the linear branch does not help)."""

    mean_over = "rows"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, attention, rows: DistillRows, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.detach()
        mask = ref.hard_topk(scores, ref.topk_count(scores.shape[-1], attention.sparsity)).mask
        alpha = _alpha(attention, scores, mask, rows.k.shape[-2])[:, :, rows.blocks]
        sel = mask[:, :, rows.blocks]
        with torch.no_grad():
            o_s, o_l = hard_branches(rows.q.float(), rows.k.float(), rows.v.float(), sel, rows.block_q, rows.block_k)
        out = ref.alpha_mix(o_s, o_l, ref.effective_alpha(alpha, sel.all(dim=-1)), rows.block_q)
        return torch.nn.functional.mse_loss(out, rows.full)


class IdentityDecay:
    """||W_q − I||² + ||W_k − I||² summed over heads: keeps an under-determined router near the heuristic."""

    mean_over = None  # independent of the rows: computed once

    def __init__(self, weight: float = 1e-4):
        self.weight = weight

    def __call__(self, attention, rows: DistillRows, scores: torch.Tensor) -> torch.Tensor:
        r = attention.router
        eye = torch.eye(r.proj_q.shape[-1], dtype=r.proj_q.dtype, device=r.proj_q.device)
        return (r.proj_q - eye).square().sum() + (r.proj_k - eye).square().sum()


class Stage1Objective:
    """Σ weight · term over named terms; `last` holds each term's value of the latest call, for logging. A term's
    `mean_over` ("rows", "blocks" or None for a term that does not depend on the rows; "rows" when absent) is
    what chunked evaluation weighs its chunks by."""

    def __init__(self, terms: Mapping[str, object]):
        if not terms:
            raise ValueError("stage.objective.loss.terms is empty: name at least one stage-1 loss term")
        self.terms = dict(terms)
        self.last: dict[str, torch.Tensor] = {}

    def __call__(self, attention, rows: DistillRows, scores: torch.Tensor,
                 blocks_per_chunk: int | None = None) -> torch.Tensor:
        """The weighted sum of the terms. blocks_per_chunk: evaluate the row-dependent terms over that many query
        blocks at a time, each chunk under activation checkpointing, and combine them by their share of what the
        term averages over: the same loss and gradients, with memory O(chunk · N) for the teacher's softmax
        rows and the student's masked attention instead of O(rows · N) held until the backward (for every layer
        of the step). The chunks' forward runs again in the backward."""
        if blocks_per_chunk is None or blocks_per_chunk >= len(rows.blocks):
            values = {name: term(attention, rows, scores) for name, term in self.terms.items()}
        else:
            values = self._chunked(attention, rows, scores, blocks_per_chunk)
        self.last = {name: value.detach() for name, value in values.items()}
        return sum(term.weight * values[name] for name, term in self.terms.items())

    def _chunked(self, attention, rows: DistillRows, scores: torch.Tensor, blocks_per_chunk: int) -> dict:
        over = {name: getattr(term, "mean_over", "rows") for name, term in self.terms.items()}
        per_row = [name for name in self.terms if over[name]]
        values = {name: self.terms[name](attention, rows, scores) for name in self.terms if not over[name]}
        size = {"rows": rows.q.shape[-2], "blocks": len(rows.blocks)}
        for part in rows.chunks(blocks_per_chunk):
            share = {"rows": part.q.shape[-2] / size["rows"], "blocks": len(part.blocks) / size["blocks"]}
            parts = checkpoint(lambda s, p=part: tuple(self.terms[n](attention, p, s) for n in per_row), scores,
                               use_reentrant=False)
            for name, value in zip(per_row, parts):
                values[name] = values.get(name, 0.0) + share[over[name]] * value
        return values


PAPER_OBJECTIVE = Stage1Objective({"soft_mse": SoftTopkMSE()})


def hard_branches(q, k, v, mask: torch.Tensor, block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(O_s, O_l) at a hard block mask for block-aligned query rows q [B, H, R, D]."""
    o_s, _ = ref.sparse_attention(q, k, v, mask, block_q, block_k)
    return o_s, ref.linear_attention_complement(q, k, v, mask, block_q, block_k)


def alpha_normal_equations(o_full, o_s, o_l, block_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block [B, H, nq]: num = <O_full − O_l, O_s − O_l>, den = ||O_s − O_l||², so that
    α* = num / den minimises ||α O_s + (1 − α) O_l − O_full||² (sum num and den first for a coarser α)."""
    d = (o_s - o_l).float()
    num = ((o_full.float() - o_l.float()) * d).sum(-1)
    den = d.square().sum(-1)
    pool = lambda x: ref.mean_pool(x[..., None], block_q)[..., 0]  # noqa: E731 (means; ratios are unchanged)
    return pool(num), pool(den)


def clipped_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """α* = num / den clipped to [0, 1]; 1 where the branches agree (den = 0: any α gives the same output)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 1.0).clamp(0.0, 1.0)


class MeasuredMassFit:
    """α calibration from the measured selected mass rowsum(P⊙M) (the paper's reading of α)."""

    def __call__(self, attention, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
        return attention.measure_mass(q, k, v, layout="bhnd")


class HardMaskFit:
    """α calibration given the router's hard mask: per head (or per query block for per-block α), from
    statistics of O_full − O_l against O_s − O_l pooled over the calibration samples. Query rows go
    `query_chunk` at a time (full attention of a chunk is materialised)."""

    def __init__(self, query_chunk: int = 1024):
        self.query_chunk = query_chunk

    @torch.no_grad()
    def __call__(self, attention, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
        scores = attention._scores(q, k)
        mask = ref.hard_topk(scores, ref.topk_count(scores.shape[-1], attention.sparsity)).mask
        alpha = self.fit_mask(q, k, v, mask, attention.block_q, attention.block_k,
                              per_head=attention.alpha.mode == "per_head")
        counts = ref.block_token_counts(k.shape[-2], attention.block_k, scores.device)
        estimated = ref.selected_mass(scores.float(), mask, counts).mean(0)
        return alpha, estimated

    @torch.no_grad()
    def fit_mask(self, q, k, v, mask, block_q: int, block_k: int, per_head: bool) -> torch.Tensor:
        """α [H, nq] for the hard block mask [B, H, nq, nk] on q, k, v [B, H, N, D]."""
        stats = self.mask_statistics(q, k, v, mask, block_q, block_k, per_head)
        return self.solve(stats).expand(mask.shape[1:3])

    @torch.no_grad()
    def mask_statistics(self, q, k, v, mask, block_q: int, block_k: int, per_head: bool) -> torch.Tensor:
        """`pooled` statistics of one input: summed over several inputs, `solve` gives their joint fit without
        holding them at once."""
        parts = []
        qf, kf, vf = q.float(), k.float(), v.float()
        for rows, blocks in ref.query_chunks(q.shape[-2], block_q, self.query_chunk):
            with no_autocast(q.device):  # float32 branches and teacher under a trainer's autocast (precision.py)
                o_s, o_l = hard_branches(qf[:, :, rows], kf, vf, mask[:, :, blocks], block_q, block_k)
                full = ref.full_attention(qf[:, :, rows], kf, vf)
            parts.append(self.statistics(full, o_s, o_l, block_q))
        return self.pooled(torch.cat(parts, 2), per_head)

    @staticmethod
    def pooled(stats: torch.Tensor, per_head: bool) -> torch.Tensor:
        """`statistics` [B, H, nq, ...] of one input summed over the batch → [H, nq, ...] ([H, 1, ...] per head):
        sums over several inputs are what `solve` takes for their joint fit."""
        if per_head:
            # A per-head α takes the head's own fit over all its rows, not the mean of the per-block ones.
            stats = stats.sum(2, keepdim=True)
        return stats.sum(0)


class LeastSquaresFit(HardMaskFit):
    """α* = <O_full − O_l, O_s − O_l> / ||O_s − O_l||² clipped to [0, 1]: the α that minimises the squared
    error of the α-mix, which stage 1's loss also measures."""

    def statistics(self, full, o_s, o_l, block_q: int) -> torch.Tensor:
        return torch.stack(alpha_normal_equations(full, o_s, o_l, block_q), -1)

    def solve(self, stats: torch.Tensor) -> torch.Tensor:
        return clipped_ratio(stats[..., 0], stats[..., 1])


class LeastAbsoluteFit(HardMaskFit):
    """The α in [0, 1] that minimises the summed absolute error Σ|α·d − b| of the α-mix, with d = O_s − O_l and
    b = O_full − O_l elementwise: the median of the ratios r = b/d weighted by |d|. This is the relative-L1
    error attention quality is reported in; the least-squares α, tuned to the squares, can leave the mix worse
    than the sparse branch alone in L1 on heads whose linear branch makes a few large errors smaller and many
    small ones larger.

    Exact up to `bins`: r is clamped to [0, 1] (which leaves the error's slope on [0, 1] unchanged: a ratio
    below 0 pulls α down wherever α is) and |d| summed into histograms, one bin each for r = 0 and r = 1 and
    `bins` between; α is the centre of the bin where the cumulative weight reaches half."""

    def __init__(self, query_chunk: int = 1024, bins: int = 1024):
        super().__init__(query_chunk)
        if bins < 1:
            raise ValueError(f"LeastAbsoluteFit bins must be at least 1, got {bins}")
        self.bins = bins

    def statistics(self, full, o_s, o_l, block_q: int) -> torch.Tensor:
        d = (o_s - o_l).float()
        b = (full - o_l).float()
        weight = d.abs()
        r = torch.where(weight > 0, b / torch.where(weight > 0, d, 1.0), 1.0)
        # bin 0: r ≤ 0; bin bins + 1: r ≥ 1; bins equal bins in between
        inner = (r * self.bins).long().clamp(0, self.bins - 1) + 1
        index = torch.where(r <= 0, 0, torch.where(r >= 1, self.bins + 1, inner))
        bsz, h, rows, _ = d.shape
        nq = ref.num_blocks(rows, block_q)
        group = (torch.arange(bsz * h, device=d.device).view(bsz, h, 1, 1) * nq
                 + (torch.arange(rows, device=d.device) // block_q).view(1, 1, rows, 1))
        flat = (group * (self.bins + 2) + index).flatten()
        hist = torch.bincount(flat, weights=weight.flatten().double(), minlength=bsz * h * nq * (self.bins + 2))
        return hist.view(bsz, h, nq, self.bins + 2)

    def solve(self, stats: torch.Tensor) -> torch.Tensor:
        cumulative = stats.cumsum(-1)
        total = cumulative[..., -1:]
        j = (cumulative < total / 2).sum(-1)  # first bin whose cumulative weight reaches half
        centre = ((j - 0.5) / self.bins).clamp(0.0, 1.0)
        alpha = torch.where(j == 0, 0.0, torch.where(j == self.bins + 1, 1.0, centre))
        return torch.where(total[..., 0] > 0, alpha, 1.0).float()  # all weight 0: the branches agree


def stage1_loss(attention, q, k, v, num_query_blocks=None, generator=None, objective=None,
                blocks_per_chunk=None) -> torch.Tensor:
    """The stage-1 loss of one [B, H, N, D] input (SLA2Attention.distill_loss's body)."""
    rows = select_rows(q, k, v, attention.block_q, attention.block_k, num_query_blocks, generator)
    scores = attention._scores(q, k)
    attention.alpha.check_length(scores.shape[-2])
    return (objective or PAPER_OBJECTIVE)(attention, rows, scores, blocks_per_chunk)
