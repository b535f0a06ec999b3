"""The training objectives a stage config names: `objective(model, batch, flow) -> (loss, logs)`.

AttentionDistillation (stage 1): SLA2 (SoftTop-k) regressed onto full attention, layer by layer. The frozen DiT runs densely on noised latents at flow-matching timesteps; each self-attention layer's
q, k, v (after q/k norm and RoPE) are captured, and SLA2Attention.distill_loss compares its SoftTop-k
output with full attention on those same q, k, v. Layers see the dense model's activations, never
SLA2's, so the teacher is exactly the model being approximated.

FlowMatchingLoss (stage 2): the flow-matching (rectified-flow) loss of the DiT itself, run with SLA2 attention,
plus optionally `teacher.weight` · MSE(student velocity, a frozen dense teacher's velocity) (teacher.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sla2_train.diffusion import FlowMatching
from sla2_train.models import ConfigError, dense_capture, sla2_processors
from sla2_train.models.compilation import compiled_backend

from .batch import latents_and_text
from .router_term import RouterDistillation
from .teacher import DenseTeacher


class AttentionDistillation:
    """layers_per_step: distil a random subset of layers per step (bounds the memory of the captures).
    query_blocks: query blocks per layer in the dense teacher (bounds its O(rows·N) memory).
    chunk_blocks: evaluate a layer's loss that many query blocks at a time under activation checkpointing (the
    same loss and gradients with O(chunk·N) memory, the loss's forward run twice); None = all at once.
    loss: the per-layer stage-1 objective (sla2_train.attention.distill); None = the paper's SoftTop-k MSE."""

    def __init__(self, layers_per_step: int | None = None, query_blocks: int | None = None, loss=None,
                 chunk_blocks: int | None = None):
        for name, value in (("layers_per_step", layers_per_step), ("query_blocks", query_blocks),
                            ("chunk_blocks", chunk_blocks)):
            if value is not None and value < 1:
                raise ValueError(f"stage.objective.{name} must be >= 1 or null, got {value}")
        self.layers_per_step = layers_per_step
        self.query_blocks = query_blocks
        self.chunk_blocks = chunk_blocks
        self.loss = loss

    def check(self, model: nn.Module, train: list[str] = ()) -> None:
        variants = {p.attention.variant for p in sla2_processors(model)}
        if variants != {"sla2"}:
            got = sorted(variants) or ["full (dense model)"]
            raise ConfigError(f"stage 1's distillation (stage=distill, stage=qat_router) trains SLA2's router and needs "
                              f"attention=sla2; got variant {got}")
        backend = compiled_backend(model)
        if backend is not None:
            # the capture stores each layer's q, k, v on its processor from inside the block: a compiled block
            # would have to replay that side effect and recompile whenever the captured layers change
            raise ConfigError(f"stage 1's distillation (stage=distill, stage=qat_router) captures q, k, v inside "
                              f"the blocks and runs them eager; set model.transformer.compile=null (got {backend!r})")

    def layers(self, model: nn.Module) -> list[int]:
        """This step's layers: all, or `layers_per_step` of them drawn at random."""
        num_layers = len(sla2_processors(model))
        if self.layers_per_step is None or self.layers_per_step >= num_layers:
            return list(range(num_layers))
        return sorted(torch.randperm(num_layers)[: self.layers_per_step].tolist())

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], flow: FlowMatching
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, text = latents_and_text(batch)
        sigma = flow.sample_sigmas(x0.shape[0], x0.device)
        noisy = flow.noisy(x0, torch.randn_like(x0), sigma)
        layers = self.layers(model)
        with torch.no_grad(), dense_capture(model, layers) as procs:
            model(noisy, flow.timesteps(sigma), text, return_dict=False)
            captures = [(p.attention, p.captured) for p in procs]
        return self.loss_on(model, layers, captures)

    def loss_on(self, model: nn.Module, layers: list[int], captures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean per-layer loss on captured (attention, (q, k, v)) of `layers`."""
        losses, logs = [], {}
        for i, (attention, (q, k, v)) in zip(layers, captures):
            mse = attention.distill_loss(
                q, k, v, layout="bnhd", num_query_blocks=self.query_blocks, objective=self.loss,
                blocks_per_chunk=self.chunk_blocks,
            )
            losses.append(mse)
            logs[f"distill/loss/layer_{i}"] = mse.detach()
        loss = torch.stack(losses).mean()
        chosen = set(layers)
        # DDP (find_unused_parameters=False) needs every trainable parameter in each step's graph: the layers
        # not sampled this step join with weight 0. Their gradient is then zero rather than None, on one
        # GPU as on many, so a run behaves the same at every world size.
        left_out = [
            p for i, proc in enumerate(sla2_processors(model)) if i not in chosen
            for p in proc.parameters() if p.requires_grad
        ]
        if left_out:
            loss = loss + 0.0 * torch.stack([p.sum() for p in left_out]).sum()
        return loss, logs


class FlowMatchingLoss:
    """teacher: None (default, the paper's stage 2) or a DenseTeacher whose velocity the student also matches.
    router: None (default: the router stays as stage 1 left it) or a RouterDistillation (router_term.py) that
    keeps training the router against the fine-tuned DiT's full attention."""

    def __init__(self, teacher: DenseTeacher | None = None, router: RouterDistillation | None = None):
        self.teacher = teacher
        self.router = router

    def check(self, model: nn.Module, train: list[str] = ()) -> None:
        # Stage.apply calls this once, after init_from: the teacher keeps the weights the run starts from.
        if self.router is not None:
            self.router.check(model, train)
        if self.teacher is not None and self.teacher.used:
            self.teacher.attach(model)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], flow: FlowMatching
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, text = latents_and_text(batch)
        noise = torch.randn_like(x0)
        sigma = flow.sample_sigmas(x0.shape[0], x0.device)
        inputs = (flow.noisy(x0, noise, sigma), flow.timesteps(sigma), text)
        term = None
        if self.router is None:
            pred = model(*inputs, return_dict=False)[0]
        else:  # the same forward, its layers' q, k, v kept for the router's term
            pred, term, term_logs = self.router(model, inputs)
        loss = F.mse_loss(pred.float(), flow.target(x0, noise).float())
        logs = {"flow/mse": loss.detach(), "flow/sigma_mean": sigma.mean()}
        if term is not None:
            loss = loss + term
            logs.update({f"flow/{k}": v for k, v in term_logs.items()})
        teacher = self.teacher
        if teacher is None or not teacher.used:
            return loss, logs
        target = teacher(*inputs)
        if teacher.weight > 0:
            match = F.mse_loss(pred.float(), target.float())
            logs["flow/teacher_mse"] = match.detach()
            loss = loss + teacher.weight * match
        if teacher.guided_weight > 0:
            uncond = (inputs[0], inputs[1], teacher.empty_text(text))
            pred_u = model(*uncond, return_dict=False)[0]
            guided = F.mse_loss(teacher.guided(pred, pred_u).float(), teacher.guided(target, teacher(*uncond)).float())
            logs["flow/teacher_guided_mse"] = guided.detach()
            loss = loss + teacher.guided_weight * guided
        return loss, logs
