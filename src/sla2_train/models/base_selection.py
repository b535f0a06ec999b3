"""attention.selection=base: every SLA2 layer's key blocks chosen on the frozen base model's attention.

With selection="router" a layer's router scores the q, k of the model it sits in, so when stage 2 fine-tunes the
DiT, the blocks move with the fine-tune (the heuristic router's at once, pooled q·kᵀ of the new q and k; a
learned router's through projections fitted to the old ones). With selection="base" the blocks are what the same
router picks on the q, k that the model as it was built (its folder's weights) makes densely for the same input:
the mask is decoupled from the fine-tune while everything else trains and samples as usual. A diagnostic for
whether a router's model keeps or loses what it draws by being fine-tuned together with its own masks.

The frozen copy is taken when SLA2Swap installs the attention, before any checkpoint is loaded (stage 1's
transformer weights are the folder's, so a stage 2 from stage 1 and eval.py of any checkpoint see the same base).
It is held outside the module tree: not in the state dict, not trained, not sharded. Before each forward of the
model a pre-hook runs the copy densely on the same arguments (a dense forward of the model too: eval's attention
probe scores each layer's SLA2 on the q, k captured in the dense forward, with that forward's blocks); after each
of the copy's self-attention layers its q, k go through the model's router of that layer (read at that moment, so
a learned router counts as trained) and the hard Top-k lands in the layer's `given`. One dense forward more per
forward; every process holds a whole copy (FSDP does not shard it), so it is meant for models of the testbed's
size.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sla2_train.attention.backend import router_blocks

from .attention_swap import sla2_processors
from .capture import capture_qkv

BASE_SELECTION = "_sla2_base_selection"  # the model's attribute holding its BaseSelection (not a submodule)
# name segments that torch's FSDP and checkpoint wrappers add between a module and its wrapped child
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _unwrapped(name: str) -> str:
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


class BaseSelection:
    """Installed on `model` (a Wan transformer with SLA2 processors of selection="base") by SLA2Swap."""

    def __init__(self, model: nn.Module):
        self.layers = [p.attention for p in sla2_processors(model)]
        if not self.layers:
            raise ValueError("selection='base' needs SLA2 layers in the model")
        # a list keeps the copy out of model.modules(): not saved, not moved by .to(), not given to an optimizer
        self._base = [copy.deepcopy(model).requires_grad_(False).eval()]
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy's tensor, the model's twin)
        self._paired_with: tuple[int, ...] = ()  # the identities of the model's tensors the pairs were made from
        setattr(model, BASE_SELECTION, self)
        model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        for proc, layer in zip(sla2_processors(self.base), self.layers):
            proc.register_forward_hook(self._selector(layer))

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._follow(model)
        for layer in self.layers:
            layer.given = None
        with torch.no_grad(), capture_qkv(self.base, dense=True):
            self.base(*args, **kwargs)

    def _follow(self, model: nn.Module) -> None:
        """The copy's tensors on the model's device and in its dtypes, tensor by tensor: a model cast for inference
        keeps its `_keep_in_fp32_modules` in float32 beside a bf16 DiT, and one dtype for the whole copy would not
        match both. Runs before every forward, so the pairing by name is made once and again only when the model's
        tensors are other objects (`.to()` replaces buffers; FSDP its parameters)."""
        # ids stay unique while compared: the pairs hold the tensors they were made from, so none is freed and reused
        identities = tuple(map(id, (*model.parameters(), *model.buffers())))
        if identities != self._paired_with:
            self._pairs, self._paired_with = self._pair(model), identities
        for t, own in self._pairs:
            if t.device != own.device or t.dtype != own.dtype:
                t.data = t.data.to(own.device, own.dtype)

    def _pair(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each of the copy's tensors with the model's tensor of its name. The copy is the model's deepcopy, so the
        names pair up once the wrappers that FSDP or activation checkpointing put around the model's blocks since
        are read through."""
        live = {_unwrapped(n): t for n, t in (*model.named_parameters(), *model.named_buffers())}
        pairs = []
        for name, t in (*self.base.named_parameters(), *self.base.named_buffers()):
            own = live.get(name)
            if own is None:  # e.g. FSDP with use_orig_params=false, whose flat parameters hide the names
                raise RuntimeError(f"attention.selection=base: the model no longer has a tensor named {name!r} "
                                   "to place the base copy's by (FSDP needs trainer.strategy.use_orig_params=true)")
            pairs.append((t, own))
        return pairs

    @staticmethod
    def _selector(layer):
        """After one of the copy's self-attention layers: its q, k [B, N, H, D] → `layer`'s blocks."""

        def select(proc: nn.Module, _inputs, _output) -> None:
            q, k, _ = proc.captured
            proc.captured = None  # one layer's q, k, v at a time, not the whole model's
            layer.given = router_blocks(layer, q, k)

        return select
