"""Named stage-1 objectives and α calibrations for the benchmark's command line, as instantiable configs.

`default` is the objective conf/stage/distill.yaml trains with (a test keeps the two equal).
"""

from __future__ import annotations

from hydra.utils import instantiate

_D = "sla2_train.attention.distill."

OBJECTIVES = {
    "default": {
        "_target_": _D + "Stage1Objective",
        "terms": {"mass_kl": {"_target_": _D + "BlockMassKL"}, "alpha": {"_target_": _D + "AlphaHardMSE"}},
    },
    "mass_kl": {"_target_": _D + "Stage1Objective", "terms": {"mass_kl": {"_target_": _D + "BlockMassKL"}}},
    "paper": {"_target_": _D + "Stage1Objective", "terms": {"soft_mse": {"_target_": _D + "SoftTopkMSE"}}},
    "paper_kl": {
        "_target_": _D + "Stage1Objective",
        "terms": {"soft_mse": {"_target_": _D + "SoftTopkMSE"}, "mass_kl": {"_target_": _D + "BlockMassKL"}},
    },
}

CALIBRATIONS = {
    "least_squares": {"_target_": _D + "LeastSquaresFit"},
    "mass": {"_target_": _D + "MeasuredMassFit"},
    "none": None,
}


def build(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose from {sorted(table)}")
    return None if table[name] is None else instantiate(table[name])
