"""The benchmark's stage-1 objectives and α calibrations, as instantiable configs.

`stage` is the loss that training runs with: `objective.loss` of conf/stage/distill.yaml in the checkout the
package is installed from (editable install), so the benchmark always measures the configured default.
The others are the alternatives it was chosen against.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

STAGE_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "stage" / "distill.yaml"

_D = "sla2_train.attention.distill."


def _terms(**terms):
    return {"_target_": _D + "Stage1Objective", "terms": {k: {"_target_": _D + v} for k, v in terms.items()}}


OBJECTIVES = {
    "paper": _terms(soft_mse="SoftTopkMSE"),
    "mass_kl": _terms(mass_kl="BlockMassKL"),
    "mass_kl_alpha": _terms(mass_kl="BlockMassKL", alpha="AlphaHardMSE"),
    "paper_kl": _terms(soft_mse="SoftTopkMSE", mass_kl="BlockMassKL"),
}

CALIBRATIONS = {
    "least_squares": {"_target_": _D + "LeastSquaresFit"},
    "mass": {"_target_": _D + "MeasuredMassFit"},
    "none": None,
}


def stage_objective_config():
    if not STAGE_CONFIG.is_file():
        raise ValueError(f"--objective stage reads {STAGE_CONFIG}, which is not there (not a checkout?)")
    return OmegaConf.load(STAGE_CONFIG).objective.loss


def _build(table: dict, name: str, what: str, also: tuple[str, ...] = ()):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose from {[*also, *sorted(table)]}")
    return None if table[name] is None else instantiate(table[name])


def build_objective(name: str):
    """`stage` (the configured training loss) or a named alternative."""
    if name == "stage":
        return instantiate(stage_objective_config())
    return _build(OBJECTIVES, name, "--objective", also=("stage",))


def build_calibration(name: str):
    return _build(CALIBRATIONS, name, "--calibrate")
