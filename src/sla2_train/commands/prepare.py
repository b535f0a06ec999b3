"""Videos + captions → Wan VAE latents + UMT5 embeddings in webdataset shards (format: data/README.md).

    sla2-prepare videos=DIR out_dir=OUT encoders.model_path=WAN_DIFFUSERS_DIR [clip.height=720 clip.width=1280]
    torchrun --nproc_per_node=8 -m sla2_train.commands.prepare ...     # one process per GPU

Config: conf/prepare.yaml.

Re-running the same command resumes (finished samples are skipped); other settings into the same out_dir
are refused unless output.overwrite=true. Bad videos are skipped, counted and listed in failures-r*.jsonl.
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from . import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="prepare", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        try:
            preparer = instantiate(cfg)
        except InstantiationException as exn:  # e.g. ClipSpec rejecting num_frames: report the cause itself
            raise exn.__cause__ if isinstance(exn.__cause__, ValueError) else exn
        report = preparer.run()
    except (FileNotFoundError, FileExistsError, ValueError) as exn:
        # Configuration and input problems: one clear line, not a traceback.
        print(f"prepare: error: {exn}", file=sys.stderr)
        sys.exit(2)
    print(report.summary())


if __name__ == "__main__":
    main()
