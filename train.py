"""Train SLA2 into a Wan2.1 transformer: compose the config (conf/), instantiate, fit.

    python train.py                                   # tiny model, synthetic data, stage 1 (distill), CPU
    python train.py model=wan2_1 model.path=/models/Wan2.1-T2V-1.3B-Diffusers trainer=gpu stage=qat ...
    python train.py -m attention.sparsity=0.9,0.95    # one run per sparsity
"""

from __future__ import annotations

import logging

import hydra
from hydra_plugins.sla2_train_launcher import register_launchers
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("train")

register_launchers()  # hydra/launcher=slurm|slurm_local, also from an editable install


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # Heavy imports here, so a mistyped override fails in a fraction of a second.
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from sla2_train.cli_errors import config_errors_as_one_line, run_errors_as_one_line
    from sla2_train.lit.loggers import finish_runs
    from sla2_train.lit.resume import checkpoint_to_resume
    from sla2_train.run_guards import check_attention_fits, check_run_config

    # Lightning adds its own console handler at import; Hydra's already prints (and files) these records.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    with config_errors_as_one_line(cfg):
        check_run_config(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        module = instantiate(cfg.module)
        loggers = list(instantiate(cfg.logger).values())
        callbacks = list(instantiate(cfg.callbacks).values())
        for logger in loggers:  # the full resolved config, so a W&B/CSV run says exactly what it was
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
        check_attention_fits(module.model, trainer.strategy.root_device, cfg.model.latent_shape,
                             datamodule.batch_size, trainer.precision, cfg.model.name)
        ckpt_path = checkpoint_to_resume(cfg.ckpt_dir, cfg.resume)
    if ckpt_path:
        log.info("resuming from %s (resume=false starts over)", ckpt_path)
    elif cfg.resume:
        log.info("starting fresh: no checkpoint in %s", cfg.ckpt_dir)
    else:
        log.info("starting fresh: resume=false (a checkpoint in %s is replaced)", cfg.ckpt_dir)
    failed = True
    try:
        with run_errors_as_one_line(cfg):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        failed = False
    finally:
        finish_runs(loggers, failed)
    loss = trainer.callback_metrics.get("train/loss")
    return None if loss is None else float(loss)


if __name__ == "__main__":
    main()
