"""Videos + captions → Wan VAE latents + UMT5 embeddings in webdataset shards (format: data/README.md).

    sla2-prepare videos=DIR out_dir=OUT encoders.model_path=WAN_DIFFUSERS_DIR [clip.height=720 clip.width=1280]
    torchrun --nproc_per_node=8 -m sla2_train.commands.prepare ...     # one process per GPU

Config: conf/prepare.yaml.

Re-running the same command resumes (finished samples are skipped); other settings into the same out_dir
are refused unless output.overwrite=true. Bad videos are skipped, counted and listed in failures-r*.jsonl.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from sla2_train.cli_errors import config_errors_as_one_line

from . import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="prepare", version_base=None)
def main(cfg: DictConfig) -> None:
    # Configuration and input problems (a missing key, an empty video folder, an out_dir holding another
    # dataset) are one line and exit code 2, and leave neither out_dir nor a log folder behind.
    with config_errors_as_one_line(cfg, also=(FileExistsError,)):
        report = instantiate(cfg).run()
    print(report.summary())


if __name__ == "__main__":
    main()
