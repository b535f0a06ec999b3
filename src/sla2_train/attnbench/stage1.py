"""Stage 1 on an attention set: train one layer's router and α, as the Lightning stage does on captures."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sla2_train.attention import SLA2Attention


@dataclass
class Stage1Recipe:
    """objective: an attention/distill.py objective; lr / alpha_lr: AdamW rates of the router and of α;
    weight_decay: AdamW's decoupled decay of the router (toward zero; IdentityDecay pulls toward the heuristic);
    batch: contents per step; query_blocks: query blocks per content and step (None = all);
    tau: SoftTop-k temperature; tau_start: if set, τ moves linearly from tau_start to tau over the steps (as
    lit.temperature.TemperatureSchedule does in training);
    calibrate: an α fit (distill.LeastAbsoluteFit / LeastSquaresFit / MeasuredMassFit) or None; calibrate_at:
    "start" fits α to the untrained router's mask on the first batch before training (then α trains with the
    objective), "end" to the trained router's mask on the whole train set after training."""

    objective: object
    steps: int = 200
    lr: float = 1e-3
    alpha_lr: float = 3e-2
    weight_decay: float = 0.0
    batch: int = 2
    query_blocks: int | None = None
    tau: float = 0.1
    tau_start: float | None = None
    detach_lambda: bool = False
    alpha_mode: str = "per_head"
    calibrate: object | None = None
    calibrate_at: str = "end"
    seed: int = 0

    def __post_init__(self):
        if self.calibrate_at not in ("start", "end"):
            raise ValueError(f"calibrate_at must be start or end, got {self.calibrate_at!r}")

    def tau_at(self, step: int) -> float:
        if self.tau_start is None:
            return self.tau
        t = step / max(1, self.steps - 1)
        return (1 - t) * self.tau_start + t * self.tau

    def build(self, num_heads: int, head_dim: int, sparsity: float, block_q: int, block_k: int) -> SLA2Attention:
        return SLA2Attention(
            num_heads, head_dim, sparsity=sparsity, block_q=block_q, block_k=block_k, topk="soft",
            tau=self.tau, detach_lambda=self.detach_lambda, alpha_mode=self.alpha_mode,
        )

    def train(self, contents, sparsity: float, block_q: int, block_k: int, log=None) -> SLA2Attention:
        """contents: list of (q, k, v) [1, H, N, D] of one layer; returns the trained module (topk='hard')."""
        q0 = contents[0][0]
        attn = self.build(q0.shape[1], q0.shape[-1], sparsity, block_q, block_k).to(q0.device)
        opt = torch.optim.AdamW(
            [
                {"params": list(attn.router_parameters()), "lr": self.lr, "weight_decay": self.weight_decay},
                {"params": list(attn.alpha_parameters()), "lr": self.alpha_lr, "weight_decay": 0.0},
            ]
        )
        g = torch.Generator().manual_seed(self.seed)
        order: list[int] = []
        for step in range(self.steps):
            if len(order) < self.batch:
                order += torch.randperm(len(contents), generator=g).tolist()
            pick, order = order[: self.batch], order[self.batch :]
            q, k, v = (torch.cat([contents[i][j] for i in pick]) for j in range(3))
            if step == 0 and self.calibrate is not None and self.calibrate_at == "start":
                attn.calibrate_alpha(q, k, v, layout="bhnd", fit=self.calibrate)  # training's first-batch fit
            attn.tau = self.tau_at(step)
            loss = attn.distill_loss(q, k, v, layout="bhnd", num_query_blocks=self.query_blocks, generator=g,
                                     objective=self.objective)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log is not None:
                log(step, loss.item())
        attn.tau = self.tau
        if self.calibrate is not None and self.calibrate_at == "end":
            q, k, v = (torch.cat([c[j] for c in contents]) for j in range(3))
            attn.calibrate_alpha(q, k, v, layout="bhnd", fit=self.calibrate)
        attn.topk = "hard"
        return attn
