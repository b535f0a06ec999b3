"""The table's spread: standard errors per row and SLA2 − dense paired on the same prompt and noise."""

import math
import statistics

import pytest

from sla2_train.evaluation.logging_out import flat_metrics
from sla2_train.evaluation.paired import add_paired
from sla2_train.evaluation.report import paired_table
from sla2_train.evaluation.speed import summarise_rows

DENSE = {(0, 0): 0.50, (0, 1): 0.30, (1, 0): 0.90, (1, 1): 0.70, (2, 0): 0.10, (2, 1): 0.40}
SHIFT = {(0, 0): -0.05, (0, 1): -0.02, (1, 0): -0.04, (1, 1): 0.01, (2, 0): -0.03, (2, 1): -0.05}


def videos(sla2_extra=None):
    out = []
    for (p, s), d in DENSE.items():
        out.append({"row": "dense", "prompt_index": p, "seed": s, "seconds": 1.0, "forward_ms": 1.0,
                    "metrics": {"prompt_following": d, "temporal_flickering": 0.9}})
    for (p, s), d in reversed(list(DENSE.items())):  # another order: pairing is by prompt and seed
        m = {"prompt_following": d + SHIFT[(p, s)], "temporal_flickering": 0.9, "psnr": 20.0 + p}
        m.update((sla2_extra or {}).get((p, s), {}))
        out.append({"row": "sla2 0.97 int8/fp8", "prompt_index": p, "seed": s, "seconds": 1.0, "forward_ms": 1.0,
                    "metrics": m})
    return out


def test_paired_difference_and_standard_errors():
    vs = videos()
    rows = summarise_rows(vs)
    add_paired(rows, vs)
    dense, sla2 = rows
    assert "paired_vs_dense" not in dense
    assert dense["metrics_sem"]["prompt_following"] == pytest.approx(
        statistics.stdev(DENSE.values()) / math.sqrt(len(DENSE)))
    assert dense["metrics_sem"]["temporal_flickering"] == 0.0
    pf = sla2["paired_vs_dense"]["prompt_following"]
    diffs = [SHIFT[k] for k in DENSE]
    assert pf["n"] == 6
    assert pf["diff"] == pytest.approx(statistics.mean(diffs))
    assert pf["sem"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    assert pf["relative"] == pytest.approx(statistics.mean(diffs) / statistics.mean(DENSE.values()))
    # the paired error is far below the unpaired one: the prompts' spread cancels
    assert pf["sem"] < 0.2 * dense["metrics_sem"]["prompt_following"]
    assert "psnr" not in sla2["paired_vs_dense"] and sla2["metrics_sem"]["psnr"] > 0  # no dense PSNR to pair with

    table = paired_table(rows)
    head, _, line = table.splitlines()
    assert head == "| Attention − dense | Temporal Flicker | Prompt following | paired videos |"
    assert line.startswith("| sla2 0.97 int8/fp8 | +0 ± 0 (+0.0%) | -0.03 ± 0.0093 (-6.2%) | 6 |"), line

    logged = flat_metrics({"rows": rows})
    assert logged["eval/sla2_0.97_int8/fp8/vs_dense/prompt_following"] == pytest.approx(-0.03)
    assert "eval/sla2_0.97_int8/fp8/vs_dense_sem/prompt_following" in logged


def test_unpaired_and_non_finite_values():
    """A video without its dense twin is left out of the pairs; a non-finite value (PSNR of identical videos)
    gives no mean rather than a wrong one; a single video has no standard error."""
    vs = videos({(0, 0): {"psnr": float("inf")}})
    vs = [v for v in vs if not (v["row"] == "dense" and v["prompt_index"] == 2)]
    rows = summarise_rows(vs)
    add_paired(rows, vs)
    sla2 = rows[1]
    assert sla2["paired_vs_dense"]["prompt_following"]["n"] == 4
    assert sla2["metrics_sem"]["psnr"] is None
    one = [v for v in vs if v["prompt_index"] == 0 and v["seed"] == 0]
    rows = summarise_rows(one)
    add_paired(rows, one)
    assert rows[0]["metrics_sem"]["prompt_following"] is None
    assert rows[1]["paired_vs_dense"]["prompt_following"]["sem"] is None
    assert "-0.05 (-10.0%)" in paired_table(rows)
