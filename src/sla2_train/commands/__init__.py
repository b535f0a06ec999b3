"""Console entry points installed by pyproject's [project.scripts] (`sla2-prepare`, `sla2-make-synthetic`)."""

from pathlib import Path

# Hydra entry points read the repository's conf/, found from this file: src/sla2_train/commands/ → repo root.
# This holds for the editable install (`pip install -e .`, scripts/install.sh) and for a source checkout on
# PYTHONPATH; another config folder can be given with Hydra's `--config-dir DIR`.
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
