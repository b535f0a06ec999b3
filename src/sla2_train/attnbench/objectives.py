"""The benchmark's stage-1 recipe: objectives and α calibrations as instantiable configs, and the defaults
training runs with.

`stage` is the loss that training runs with: `objective.loss` of conf/stage/distill.yaml in the checkout the
package is installed from (editable install), so the benchmark always measures the configured default; the
optimizer's rates, the SoftTop-k temperature (schedule) and the α calibration come from the same files
(`recipe_defaults`). The named objectives are the alternatives the default was chosen against.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[3] / "conf"
STAGE_CONFIG = CONF / "stage" / "distill.yaml"
ATTENTION_CONFIG = CONF / "attention" / "sla2.yaml"

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
    "least_absolute": {"_target_": _D + "LeastAbsoluteFit"},
    "mass": {"_target_": _D + "MeasuredMassFit"},
    "none": None,
}


def _load(path: Path):
    if not path.is_file():
        raise ValueError(f"the stage-1 recipe is read from {path}, which is not there (not a checkout?)")
    return OmegaConf.load(path)


def stage_objective_config():
    return _load(STAGE_CONFIG).objective.loss


def recipe_defaults() -> dict:
    """The training recipe of conf/stage/distill.yaml (+ attention τ) as the benchmark's option defaults."""
    stage, attention = _load(STAGE_CONFIG), _load(ATTENTION_CONFIG)
    lr = float(stage.optimizer.lr)
    schedule = stage.get("tau_schedule")
    calibration = stage.get("calibrate_alpha")
    fit = None if calibration is None else calibration.fit
    targets = {None if cfg is None else cfg["_target_"]: name for name, cfg in CALIBRATIONS.items()}
    return {
        "lr": lr,
        "alpha_lr": float((stage.get("group_lr") or {}).get("alpha", lr)),
        "weight_decay": float(stage.optimizer.get("weight_decay", 0.0)),
        "tau": float(attention.tau if schedule is None else schedule.end),
        "tau_start": None if schedule is None else float(schedule.start),
        "calibrate": targets[None if fit is None else fit["_target_"]],
        "calibrate_at": "end" if calibration is None else str(calibration.when),
        # training distils every query block of a layer per step (null) unless the config bounds it; 0 = all
        "query_blocks": int(stage.objective.get("query_blocks") or 0),
    }


def _build(table: dict, name: str, what: str, also: tuple[str, ...] = ()):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose from {[*also, *sorted(table)]}")
    return None if table[name] is None else instantiate(table[name])


def build_objective(name: str, aux_kl: float = 0.0, identity_decay: float = 0.0):
    """`stage` (the configured training loss) or a named alternative, plus optional weighted extra terms."""
    if name == "stage":
        objective = instantiate(stage_objective_config())
    else:
        objective = _build(OBJECTIVES, name, "--objective", also=("stage",))
    extra = {"--aux-kl": ("aux_mass_kl", aux_kl, "BlockMassKL"),
             "--identity-decay": ("identity_decay", identity_decay, "IdentityDecay")}
    for flag, (key, weight, target) in extra.items():
        if weight < 0:
            raise ValueError(f"{flag} must be >= 0, got {weight}")
        if weight > 0:
            objective.terms[key] = instantiate({"_target_": _D + target, "weight": weight})
    return objective


def build_calibration(name: str):
    return _build(CALIBRATIONS, name, "--calibrate")
