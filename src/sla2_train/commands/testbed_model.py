"""sla2-testbed-model: build the untrained testbed folder (tokenizer, UMT5, PixelPatchVAE, scheduler, transformer).

    sla2-testbed-model out=build/testbed-init

Config: conf/testbed_model.yaml (the architecture is model=testbed's). docs/testbed.md says what it is for.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from sla2_train.cli_errors import config_errors_as_one_line

from . import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="testbed_model", version_base=None)
def main(cfg: DictConfig) -> None:
    with config_errors_as_one_line(cfg, also=(FileExistsError,)):
        folder = instantiate(cfg.folder)
        print(folder.build(cfg.out, overwrite=cfg.overwrite))


if __name__ == "__main__":
    main()
