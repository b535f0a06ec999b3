"""Compare SLA2 with dense attention on generated latents: compose config, instantiate, sample, report.

    python eval.py
    python eval.py ckpt=outputs/tiny-distill-sla2-0.95/checkpoints/last.ckpt attention.sparsity=0.95
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("eval")


def _json_safe(value):
    # PSNR of identical latents is +inf, which strict JSON cannot hold.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    import torch
    from hydra.utils import instantiate

    from sla2_train.cli_errors import config_errors_as_one_line
    from sla2_train.lit.checkpoint_weights import load_model_weights
    from sla2_train.lit.evaluation import compare_dense_and_sla2
    from sla2_train.models import describe_attention, set_attention_mode, sla2_processors

    with config_errors_as_one_line():
        torch.manual_seed(cfg.seed)
        model = instantiate(cfg.model_with_attention)
        saved = load_model_weights(model, cfg.ckpt, key="ckpt") if cfg.ckpt else {}
        # Inference is hard Top-k; the low-bit branch is on where the checkpoint was trained with it (stage 2).
        quant = bool(saved.get("quant", False)) if cfg.quant is None else bool(cfg.quant)
        if sla2_processors(model):
            set_attention_mode(model, topk="hard", quant=quant)
        scheduler = instantiate(cfg.scheduler)
        loggers = list(instantiate(cfg.logger).values())
    model.to(cfg.device)
    seeds = [cfg.seed + i for i in range(cfg.num_samples)]
    report = compare_dense_and_sla2(
        model, scheduler, cfg.model.latent_shape, cfg.model.text_len, cfg.model.text_dim, seeds,
        cfg.num_inference_steps, cfg.device,
    )
    report = {"attention": describe_attention(model), "ckpt": cfg.ckpt, "num_inference_steps": cfg.num_inference_steps,
              **report}
    out = Path(cfg.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(report), indent=1))
    log.info("psnr %.2f dB  ssim %.4f  rel-L1 %.4f  → %s", report["psnr"], report["ssim"], report["rel_l1_mean"], out)
    metrics = {"eval/psnr": report["psnr"], "eval/ssim": report["ssim"], "eval/rel_l1_mean": report["rel_l1_mean"]}
    metrics.update({f"eval/rel_l1/layer_{i}": e for i, e in enumerate(report["rel_l1_per_layer"])})
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=0)
        logger.finalize("success")
    return report


if __name__ == "__main__":
    main()
