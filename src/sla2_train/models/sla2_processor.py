"""A diffusers attention processor that runs Wan's self-attention through SLA2Attention.

It is an nn.Module so that the SLA2 router and α are submodules of `blocks[i].attn1` and save, load and
shard with the transformer. Everything up to the attention call replicates diffusers' WanAttnProcessor
line for line (projections, q/k RMSNorm, head split, RoPE), so a dense run is bit-identical to stock Wan.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_qkv_projections
from torch import nn


def apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Copied from WanAttnProcessor.__call__ (a closure there, so it cannot be imported).
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class SLA2WanProcessor(nn.Module):
    """Self-attention processor for `WanAttention` (attn1 only).

    dense:   run diffusers' own attention instead of SLA2 (the teacher in stage 1, the baseline in eval).
    capture: keep this call's (q, k, v) [B, N, H, D], detached, in `.captured` for the caller to read.
    """

    # diffusers' set_attention_backend / context parallelism write these on every processor.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.dense = False
        self.capture = False
        self.captured: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attn.is_cross_attention:
            raise ValueError("SLA2WanProcessor is for self-attention (blocks[i].attn1) only, not cross-attention")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)

        if self.capture:
            self.captured = (query.detach(), key.detach(), value.detach())

        if self.dense:
            hidden_states = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
        else:
            if attention_mask is not None:
                raise ValueError("SLA2 attention takes no attention_mask (Wan's self-attention never passes one)")
            hidden_states = self.attention(query, key, value, layout="bnhd")
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states
