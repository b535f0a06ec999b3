"""FSDP for Wan with SLA2: the transformer sharded one unit per block, the SLA2 processors whole on every rank.

Why the processors stay out of the shards. FSDP gathers a unit's parameters only inside that unit's forward and
backward; between them each rank holds a slice. Stage 1 computes its loss after the dense forward, on the q, k, v
it captured (SLA2Attention.distill_loss), and α is calibrated, logged and monitored there as well: on sharded
router and α tensors all of that would read slices, and their gradients would never reach the shards. Kept
whole, they behave as under DDP: every rank holds the same copy and their gradients are averaged over ranks
before each optimizer step. They are small beside the DiT (Wan2.1-14B: 40 layers · 40 heads · two 128×128
projections ≈ 52 M parameters, plus α), so the copy per rank costs well under 1 GB with its Adam state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.fsdp import FullyShardedDataParallel

from sla2_train.models import SLA2WanProcessor


def wan_block_policy() -> set[type]:
    return {WanTransformerBlock}


def replicated_modules(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP leaves whole: every SLA2 processor (router, α)."""
    return [m for m in model.modules() if isinstance(m, SLA2WanProcessor)]


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average the gradients of replicated trainable parameters over ranks in one collective. A parameter
    without a gradient on this rank counts as zero, so every rank takes part with the same buffer."""
    trained = [p for p in params if p.requires_grad]
    if world_size == 1 or not trained:
        return
    for p in trained:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in trained])
    dist.all_reduce(flat)
    flat /= world_size
    for p, g in zip(trained, flat.split([p.numel() for p in trained])):
        p.grad.copy_(g.view_as(p.grad))


class SLA2FSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the SLA2 processors kept whole on each rank (see the module docstring).

    Also runs on CPU processes (gloo): Lightning refuses its own FSDPStrategy there, torch's FSDP does not.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        for key in ("ignored_states", "ignored_modules", "activation_checkpointing", "activation_checkpointing_policy"):
            if key in kwargs:
                raise ValueError(f"trainer.strategy.{key} is not an option of SLA2FSDPStrategy: it keeps the SLA2 "
                                 "processors out of the shards itself, and activation checkpointing is "
                                 "model.transformer.gradient_checkpointing")
        super().__init__(*args, **kwargs)
        self._replicated: list[nn.Parameter] = []
        self._names: dict[int, str] = {}  # id(parameter) → its name in the LightningModule, as the checkpoint has it

    def _setup_model(self, model: nn.Module) -> nn.Module:
        keep = replicated_modules(model)
        for m in keep:  # FSDP moves only the parameters it manages
            m.to(self.root_device)
        self._replicated = [p for m in keep for p in m.parameters()]
        names = {id(p): n for n, p in model.named_parameters()}
        self._names = {id(p): names[id(p)] for p in self._replicated}
        # device_id as a device rather than Lightning's index, which is None on CPU, where FSDP then refuses
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            ignored_states=keep,
            **self.kwargs,
        )

    def optimizer_step(self, optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        # After the closure's backward (the last micro-batch's, with accumulation) and before clipping and the
        # step: FSDP reduce-scatters the gradients it manages, these it leaves to us.
        def closure_then_average() -> Any:
            result = closure()
            average_gradients(self._replicated, self.world_size)
            return result

        return super().optimizer_step(optimizer, closure_then_average, model, **kwargs)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir() and self.lightning_module.trainer.state.fn == TrainerFn.FITTING:
            self._load_replicated_optimizer_state(path)
        return checkpoint

    def _load_replicated_optimizer_state(self, path: Path) -> None:
        """Lightning reads a sharded checkpoint's optimizer state as chunks of every tensor spread over the
        ranks (FSDP's layout); the replicated parameters' moments came back as such chunks, which the optimizer
        cannot use. Read them again whole: the checkpoint holds each once, complete."""
        wanted: dict[str, Any] = {}
        slots = []
        for idx, optimizer in enumerate(self.optimizers):
            for p in self._replicated:
                for name, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0:
                        whole = torch.empty(value.shape, dtype=value.dtype, device=p.device)
                        state = wanted.setdefault(f"optimizer_{idx}", {"state": {}})["state"]
                        state.setdefault(self._names[id(p)], {})[name] = whole
                        slots.append((optimizer.state[p], name, whole))
        if not wanted:
            return
        dcp_load(wanted, checkpoint_id=str(path))
        for state, name, whole in slots:
            state[name] = whole
