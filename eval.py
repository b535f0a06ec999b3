"""Dense vs SLA2 from prompts to videos: generate, score (VBench-style), time, and report.

    python eval.py
    python eval.py ckpt=outputs/tiny-distill-sla2-0.95/checkpoints/last.ckpt attention.sparsity=0.95
    python eval.py -m attention.sparsity=0.9,0.95,0.97
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra_plugins.sla2_train_launcher import register_launchers
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("eval")


def _sweep_folder() -> Path | None:
    """The multirun sweep's folder, or None for a single run (or a config composed outside @hydra.main)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def _add_to_sweep_table(sweep: Path, folder: Path) -> None:
    from sla2_train.evaluation import combined_table

    listing = sweep / "results.txt"
    with listing.open("a") as f:
        f.write(f"{folder.resolve()}\n")
    folders = [Path(line) for line in listing.read_text().splitlines() if line]
    (sweep / "table.md").write_text(combined_table(folders))
    log.info("combined table of %d runs → %s", len(folders), sweep / "table.md")

register_launchers()  # hydra/launcher=slurm|slurm_local, also from an editable install


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from sla2_train import evaluation
    from sla2_train.evaluation.logging_out import log_report
    from sla2_train.cli_errors import config_errors_as_one_line
    from sla2_train.run_guards import check_weights

    with config_errors_as_one_line(cfg):
        check_weights(cfg)
        ev = evaluation.build(cfg)
        loggers = list(instantiate(cfg.logger).values())
    report = evaluation.run(ev)
    evaluation.write_report(ev.folder, report)
    log.info("\n%s→ %s", (ev.folder / "table.md").read_text(), ev.folder)
    log_report(loggers, report, ev.folder, OmegaConf.to_container(cfg, resolve=True))
    sweep = _sweep_folder()
    if sweep is not None:
        _add_to_sweep_table(sweep, ev.folder)
    report["folder"] = str(ev.folder)
    return report


if __name__ == "__main__":
    main()
