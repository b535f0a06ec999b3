"""Put an exported SLA2 state into a diffusers WanPipeline or WanTransformer3DModel loaded with from_pretrained."""

from __future__ import annotations

from pathlib import Path

from diffusers import WanTransformer3DModel
from torch import nn

from sla2_train.models import ConfigError, SLA2Swap, set_attention_mode, sla2_processors

from .folder import SLA2_MARK, read_sla2, transformer_folder

# The SLA2Attention options sla2.json records that shape the modules; topk is hard at inference.
BUILD_OPTIONS = ("variant", "sparsity", "block_q", "block_k", "alpha_mode", "tau")


def _seq_len(options: dict, state: dict) -> int | None:
    """alpha_mode=per_block has one α per query block: the saved α fixes the length (any N with as many blocks)."""
    if options["alpha_mode"] != "per_block":
        return None
    logits = [v for k, v in state.items() if k.endswith("alpha.logit")]
    return logits[0].shape[-1] * options["block_q"]


def install_sla2(pipe_or_transformer, folder: str | Path, *, quant: bool | None = None) -> WanTransformer3DModel:
    """Replace the self-attention (`blocks[i].attn1` only; cross-attention is untouched) of a WanPipeline's
    transformer, or of a bare WanTransformer3DModel, by SLA2 with the router and α of an exported folder
    (the pipeline root or its transformer/). Inference runs hard Top-k: the Triton kernels on CUDA, the
    PyTorch reference elsewhere. `quant`: the low-bit sparse branch; None = as trained (stage 2: on).

    The SLA2 tensors go to the transformer's device in fp32; call this after `pipe.to("cuda")`.
    Returns the transformer.
    """
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if not isinstance(transformer, WanTransformer3DModel):
        raise TypeError(f"install_sla2 takes a WanPipeline or a WanTransformer3DModel, got {type(transformer).__name__}")
    if getattr(pipe_or_transformer, "transformer_2", None) is not None:
        raise ValueError("install_sla2: this pipeline has a second transformer (transformer_2); SLA2 was trained for one")
    where = transformer_folder(folder, "install_sla2")
    state, meta = read_sla2(where)
    attention = meta.get("attention") or {}
    if attention.get("variant", "full") == "full":
        return transformer  # exported from a dense run: nothing to install
    missing = [k for k in BUILD_OPTIONS if k not in attention]
    if missing:
        raise ConfigError(f"install_sla2: {str(where / 'sla2.json')!r} lacks the attention options {missing}")
    options = {k: attention[k] for k in BUILD_OPTIONS}
    SLA2Swap(**options).install(transformer, _seq_len(options, state))
    missing_keys, unexpected = transformer.load_state_dict(state, strict=False)
    missing_keys = [k for k in missing_keys if SLA2_MARK in k]
    if missing_keys or unexpected:
        raise ConfigError(
            f"install_sla2: {str(where)!r} does not fit this transformer: {len(missing_keys)} SLA2 tensors missing "
            f"(e.g. {missing_keys[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    use_quant = bool(attention.get("quant", False)) if quant is None else bool(quant)
    set_attention_mode(transformer, topk="hard", quant=use_quant)
    device = next(transformer.parameters()).device
    for proc in sla2_processors(transformer):
        proc.to(device)
    return transformer

