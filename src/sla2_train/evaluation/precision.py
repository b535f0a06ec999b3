"""Cast a diffusers model the way from_pretrained(torch_dtype=...) does: the modules the model lists in
`_keep_in_fp32_modules` (Wan: time embedding, RoPE, norms, modulation table) stay float32, matched as diffusers
matches them: against every component of a parameter's or buffer's full name."""

from __future__ import annotations

import torch
from torch import nn


def cast_keeping_fp32(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        for tensors in (module._parameters, module._buffers):
            for key, t in tensors.items():
                if t is not None and t.is_floating_point():
                    t.data = t.data.to(torch.float32 if keep & {*name.split("."), key} else dtype)
    return model
