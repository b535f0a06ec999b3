"""Stage-1 validation: is the router learning? Each SLA2 layer runs its hard-Top-k path (what inference runs)
on the q, k, v the dense model produces, and is measured against full attention with the attention
benchmark's metrics (attnbench/metrics.py), logged per layer as `val/router/layer_<i>/<metric>`:

    sla2_l1      rel-L1 of SLA2 (hard Top-k, the layer's α) against full attention
    sparse_l1    rel-L1 of the sparse branch alone
    recall       share of the router's k key blocks that are among the k blocks holding the most softmax mass
    mass         softmax mass the router's blocks capture (rowsum(P ⊙ M))
    alpha        the layer's α, what the mass should be close to
    mass_minus_alpha
and averaged over layers as `val/router/<metric>`. Metrics are means over heads.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from sla2_train.attention import reference as ref
from sla2_train.attention.precision import no_autocast
from sla2_train.attnbench.metrics import Teacher, mask_metrics
from sla2_train.diffusion import FlowMatching
from sla2_train.models import dense_capture, sla2_processors

from .batch import latents_and_text

METRICS = ("sla2_l1", "sparse_l1", "recall", "mass", "alpha")


def evenly_spaced(total: int, count: int | None) -> torch.Tensor:
    """`count` block indices spread over [0, total), the same at every validation so values compare."""
    if count is None or count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long().unique()


@torch.no_grad()
def hard_topk_metrics(attention, q, k, v, query_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """Per-head metrics [H] of one layer on q, k, v [B, H, N, D]. The full-attention reference is O(rows · N):
    `query_blocks` measures that many evenly spaced query blocks only (the router still sees every block)."""
    with no_autocast(q.device):  # float32 metrics under the trainer's autocast (attention/precision.py)
        q, k, v = q.float(), k.float(), v.float()
        scores = attention._scores(q, k)
        k_sel = ref.topk_count(scores.shape[-1], attention.sparsity)
        mask = ref.hard_topk(scores, k_sel).mask
        alpha = attention.alpha(attention._mass(scores, mask, k.shape[-2])).float().expand(*mask.shape[:-1])
        blocks = evenly_spaced(mask.shape[-2], query_blocks).to(q.device)
        rows = torch.cat([torch.arange(b * attention.block_q, min((b + 1) * attention.block_q, q.shape[-2]),
                                       device=q.device) for b in blocks.tolist()])
        t = Teacher(q[:, :, rows], k, v, attention.block_q, attention.block_k)
        m = mask_metrics(t, mask[:, :, blocks], alpha[:, :, blocks], t.best_mask(k_sel))
        return {name: m[name] for name in METRICS}


class HardTopkMonitor:
    """query_blocks: query blocks measured per layer (null: all); bounds the reference's memory."""

    def __init__(self, query_blocks: int | None = None):
        if query_blocks is not None and query_blocks < 1:
            raise ValueError(f"stage.monitor.query_blocks must be >= 1 or null, got {query_blocks}")
        self.query_blocks = query_blocks

    @torch.no_grad()
    def __call__(self, model: nn.Module, batch: Mapping[str, Any], flow: FlowMatching) -> dict[str, torch.Tensor]:
        procs = [p for p in sla2_processors(model) if p.attention.variant == "sla2"]
        if not procs:
            return {}
        x0, text = latents_and_text(batch)
        sigma = flow.sample_sigmas(x0.shape[0], x0.device)
        with dense_capture(model) as captured:
            model(flow.noisy(x0, torch.randn_like(x0), sigma), flow.timesteps(sigma), text, return_dict=False)
            layers = [(i, p.attention, p.captured) for i, p in enumerate(captured) if p in procs]
        logs: dict[str, torch.Tensor] = {}
        for i, attention, (q, k, v) in layers:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # captured as [B, N, H, D]
            m = {name: value.mean() for name, value in hard_topk_metrics(attention, q, k, v, self.query_blocks).items()}
            m["mass_minus_alpha"] = m["mass"] - m["alpha"]
            logs.update({f"val/router/layer_{i}/{name}": value for name, value in m.items()})
        for name in (*METRICS, "mass_minus_alpha"):
            logs[f"val/router/{name}"] = torch.stack([logs[f"val/router/layer_{i}/{name}"] for i, _, _ in layers]).mean()
        return logs
