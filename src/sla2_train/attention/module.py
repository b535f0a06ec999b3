"""SLA2Attention: the one attention module that holds the router, α and options.

Each call validates q, k, v once, then backend.choose decides once where it runs: hard Top-k SLA2 through the
torch.library ops (the Triton kernels on CUDA, the reference behind the same ops on CPU), everything else on
the module's pure-PyTorch reference path below (SoftTop-k, the SLA and full variants, backend="reference", CUDA
calls the kernels do not cover). backend.py says which, and why.
"""

from __future__ import annotations

import torch
from torch import nn

from . import reference as ref
from .alpha import build_alpha
from .backend import OPS, choose, lambda_solver, run_ops
from .checks import BACKENDS, SELECTIONS, TOPK_MODES, VARIANTS, check_choice, check_options, check_qkv
from .distill import MeasuredMassFit, stage1_loss
from .precision import no_autocast
from .router import BlockRouter


class SLA2Attention(nn.Module):
    """Sparse-linear attention with a learnable router and mixing ratio (docs/method.md).

    variant: "sla2" (α-mix), "sla" (SLA v1 baseline: O_s + proj(O_l), heuristic router) or "full".
    alpha_mode: "per_head", "per_block" (needs seq_len) or "predicted" (length-free).
    topk: "hard" (inference, stage 2) or "soft" (SoftTop-k, stage 1; dense O(N²)).
    quant: low-bit sparse branch (INT8 QKᵀ, FP8 PV) with a straight-through backward (stage 2).
    backend: "auto" (Triton on CUDA when it can, the reference behind the ops on CPU, else the reference
    path), "reference" or "triton" (raises when a hard Top-k SLA2 call cannot run on the kernels; SoftTop-k
    and the SLA/full variants still run the reference path).
    selection: "router" (the router's hard Top-k) or "bestmass", an oracle for evaluation: each query block's
    key blocks holding the most true softmax mass (full attention computed to find them, O(N²) work), with α
    as trained; what a perfect router by kept mass would give (hard Top-k SLA2 only); or "base": the blocks
    that the layer's router picks on the frozen base model's dense q, k of the same input, written into
    `given` before each call by models/base_selection.py (hard Top-k SLA2 only), so that the mask stays what
    it was before fine-tuning while the model that reads it changes.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        variant: str = "sla2",
        sparsity: float = 0.95,
        block_q: int = 128,
        block_k: int = 64,
        alpha_mode: str = "per_head",
        alpha_init: float = 0.9,
        seq_len: int | None = None,
        topk: str = "hard",
        tau: float = 0.1,
        detach_lambda: bool = False,
        quant: bool = False,
        backend: str = "auto",
        selection: str = "router",
    ):
        super().__init__()
        check_choice("variant", variant, VARIANTS)
        check_choice("topk", topk, TOPK_MODES)
        check_choice("backend", backend, BACKENDS)
        check_choice("selection", selection, SELECTIONS)
        if selection != "router" and variant != "sla2":
            raise ValueError(f"selection={selection!r} is an SLA2 option; variant={variant!r} has its own selection")
        check_options(num_heads, head_dim, sparsity, block_q, block_k, tau)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.variant, self.block_q, self.block_k = variant, block_q, block_k
        self.sparsity, self.topk, self.tau, self.detach_lambda = sparsity, topk, tau, detach_lambda
        self.quant, self.backend, self.selection = quant, backend, selection
        self.given: torch.Tensor | None = None  # selection="base": int [B, H, nq, k] set before each call
        if variant == "full":
            return
        self.router = BlockRouter(num_heads, head_dim, learnable=variant == "sla2")
        if variant == "sla2":
            nq = None if seq_len is None else ref.num_blocks(seq_len, block_q)
            self.alpha = build_alpha(alpha_mode, num_heads, alpha_init, nq)
        else:
            # SLA's output projection of the linear branch starts at zero: an untrained SLA is sparse-only.
            self.proj_o = nn.Parameter(torch.zeros(num_heads, head_dim, head_dim))

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant}, heads={self.num_heads}, head_dim={self.head_dim}, sparsity={self.sparsity}, "
            f"block_q={self.block_q}, block_k={self.block_k}, topk={self.topk}, quant={self.quant}"
            + ("" if self.selection == "router" else f", selection={self.selection}")
        )

    def router_parameters(self):
        return iter(()) if self.variant != "sla2" else self.router.parameters()

    def alpha_parameters(self):
        if self.variant == "sla":
            return iter((self.proj_o,))
        return iter(()) if self.variant == "full" else self.alpha.parameters()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bnhd") -> torch.Tensor:
        """q, k, v: [B, N, H, D] ("bnhd", diffusers' layout) or [B, H, N, D] ("bhnd"); returns q's layout."""
        check_qkv(q, k, v, layout, self.num_heads, self.head_dim)
        if choose(self, q) == OPS:
            return run_ops(self, q, k, v, layout)
        if layout == "bnhd":  # views only: the reference takes any strides
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        o = self._reference(q, k, v)
        return o.transpose(1, 2) if layout == "bnhd" else o

    def _reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.variant == "full":
            return ref.full_attention(q, k, v)
        scores = self._scores(q, k)
        k_sel = ref.topk_count(scores.shape[-1], self.sparsity)
        if self.variant == "sla":
            mask = ref.hard_topk(scores, k_sel).mask
            return ref.sla_attention(q, k, v, mask, self.proj_o, self.block_q, self.block_k)
        self.alpha.check_length(scores.shape[-2])
        if self.topk == "soft":
            if self.quant:
                raise ValueError("quant=True needs topk='hard': the low-bit branch runs on a hard block mask")
            if self.selection != "router":
                raise ValueError(f"selection={self.selection!r} needs topk='hard': SoftTop-k trains the router's "
                                 "own selection")
            solve = lambda_solver(self, scores)
            u = ref.soft_topk_logits(scores, k_sel, self.tau, self.detach_lambda, solve)
            alpha = self.alpha(self._mass(scores, torch.sigmoid(u), k.shape[-2]))
            return ref.sla2_attention_soft(q, k, v, u, alpha, self.block_q, self.block_k)
        if self.selection == "bestmass":
            chosen, kept = self.bestmass(q, k, k_sel)
            mask, alpha = chosen.mask, self.alpha(kept if self.alpha.needs_mass else None)
        else:
            if self.selection == "base":
                mask = ref.indexed.index_mask(self.given_indices(q.shape[0], scores.shape[-2], k_sel),
                                              scores.shape[-1])
            else:
                # Hard Top-k has no gradient: the router is trained only through SoftTop-k (stage 1).
                mask = ref.hard_topk(scores.detach(), k_sel).mask
            alpha = self.alpha(self._mass(scores.detach(), mask, k.shape[-2]))
        return ref.sla2_attention(q, k, v, mask, alpha, self.block_q, self.block_k, self.quant)

    def bestmass(self, q: torch.Tensor, k: torch.Tensor, k_sel: int):
        """selection="bestmass": (BlockSelection, kept true mass [B, H, nq]) for q, k [B, H, N, D], in float32."""
        with no_autocast(q.device):
            return ref.bestmass_selection(q.detach(), k.detach(), self.block_q, self.block_k, k_sel)

    def given_indices(self, batch: int, nq: int, k_sel: int) -> torch.Tensor:
        """selection="base": the indices set in `given`, checked against this call's shape."""
        given = self.given
        if given is None:
            raise RuntimeError("selection='base' takes its blocks from the frozen base model, which did not run "
                               "before this call (the model needs models.base_selection installed; SLA2Swap "
                               "installs it)")
        want = (batch, self.num_heads, nq, k_sel)
        if tuple(given.shape) != want or given.dtype.is_floating_point:
            raise RuntimeError(f"selection='base': the base model's blocks {tuple(given.shape)} ({given.dtype}) do "
                               f"not fit this call's {want} (another input than the base saw?)")
        return given

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Router scores in at least fp32, as the kernels' router and the op path compute them: pooled in
        bf16/fp16, near-tied blocks swap places, and the hard Top-k of the reference path chose other blocks.
        Under autocast too (precision.py): stage 1 learns on the scores inference ranks."""
        acc = torch.promote_types(q.dtype, torch.float32)
        with no_autocast(q.device):
            return self.router(q.to(acc), k.to(acc), self.block_q, self.block_k)

    def _mass(self, scores: torch.Tensor, mask: torch.Tensor, n_k: int) -> torch.Tensor | None:
        if not self.alpha.needs_mass:
            return None
        counts = ref.block_token_counts(n_k, self.block_k, scores.device)
        return ref.selected_mass(scores, mask, counts)

    def distill_loss(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: str = "bnhd",
        num_query_blocks: int | None = None,
        generator: torch.Generator | None = None,
        objective=None,
        blocks_per_chunk: int | None = None,
    ) -> torch.Tensor:
        """Stage-1 loss on the frozen model's captured q, k, v (attention/distill.py; default: the paper's MSE
        between full attention and SoftTop-k SLA2).

        The teacher is dense in the key dimension, so memory is O(rows · N); `num_query_blocks` evaluates
        only that many query blocks, drawn at random (the router still scores every block), and
        `blocks_per_chunk` evaluates them that many at a time under activation checkpointing (the same loss
        and gradients, memory O(chunk · N), the chunks' forward run again in the backward).
        """
        if self.variant != "sla2":
            raise ValueError(f"distill_loss trains SLA2's router and alpha; this module is variant={self.variant!r}")
        check_qkv(q, k, v, layout, self.num_heads, self.head_dim)
        if layout == "bnhd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return stage1_loss(self, q, k, v, num_query_blocks, generator, objective, blocks_per_chunk)

    @torch.no_grad()
    def measure_mass(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bnhd", query_chunk: int = 1024
    ):
        """(measured rowsum(P⊙M), router estimate), each [H, nq] averaged over the batch, for α calibration.

        The true mass needs each query row's full softmax; rows go `query_chunk` at a time, so memory is
        O(query_chunk · N) instead of O(N²) (one 1024-row chunk at N = 32760: 1.6 GB for 12 heads).
        """
        check_qkv(q, k, v, layout, self.num_heads, self.head_dim)
        if layout == "bnhd":
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        n = q.shape[-2]
        scores = self._scores(q, k)
        mask = ref.hard_topk(scores, ref.topk_count(scores.shape[-1], self.sparsity)).mask
        row_mass = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # [B, H, N]
        for rows, blocks in ref.query_chunks(n, self.block_q, query_chunk):
            tok = ref.expand_block_mask(mask[:, :, blocks], rows.stop - rows.start, n, self.block_q, self.block_k)
            with no_autocast(q.device):
                p = torch.softmax(ref.scaled_scores(q[:, :, rows].float(), k.float()), dim=-1)
            row_mass[:, :, rows] = (p * tok).sum(dim=-1)
        measured = ref.mean_pool(row_mass[..., None], self.block_q)[..., 0].mean(dim=0)
        counts = ref.block_token_counts(n, self.block_k, scores.device)
        return measured, ref.selected_mass(scores.float(), mask, counts).mean(dim=0)

    @torch.no_grad()
    def calibrate_alpha(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bnhd", fit=None
    ) -> None:
        """Set α from one calibration batch (docs/method.md): `fit` (attention/distill.py) gives the target α and
        the router's mass estimate; default MeasuredMassFit, the measured selected mass."""
        check_qkv(q, k, v, layout, self.num_heads, self.head_dim)
        if layout == "bnhd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        self.alpha.init_from_mass(*(fit or MeasuredMassFit())(self, q, k, v))
