"""The spread behind the table's means: each metric's standard error over a row's videos (speed.summarise_rows),
and each SLA2 row's difference from dense measured on the same prompt and noise (paired per video), which is what a claim like
"within 2% of dense" rests on. Paired differences remove the prompt-to-prompt spread that both rows share, so
they resolve far smaller differences than the two rows' means side by side."""

from __future__ import annotations

import math
from typing import Any, Sequence


def mean_and_sem(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean); None where a value is not finite, sem None for fewer than 2."""
    if not values or not all(math.isfinite(v) for v in values):
        return None, None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_differences(own: dict[Any, dict[str, float]], base: dict[Any, dict[str, float]],
                       metrics) -> dict[str, dict[str, Any]]:
    """Per metric scored in both sets of videos (each {video key: metrics}): {diff: mean of (own − base) over
    the videos both have, sem, n: videos paired, base_mean: base's mean over them, relative: diff / base_mean}."""
    paired = {}
    for k in metrics:
        keys = [key for key, m in own.items() if k in m and k in base.get(key, {})]
        if not keys:
            continue  # a metric against the dense video (PSNR, SSIM, ...) has no dense value
        diff, sem = mean_and_sem([own[key][k] - base[key][k] for key in keys])
        ref, _ = mean_and_sem([base[key][k] for key in keys])
        paired[k] = {"diff": diff, "sem": sem, "n": len(keys), "base_mean": ref,
                     "relative": diff / ref if diff is not None and ref else None}
    return paired


def add_paired(rows: list[dict[str, Any]], videos: Sequence[dict[str, Any]], dense: str = "dense") -> None:
    """Adds `paired_vs_dense` to every row but dense: paired_differences(row, dense) over the row's metrics."""
    by_row: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    for v in videos:
        by_row.setdefault(v["row"], {})[(v["prompt_index"], v["seed"])] = v["metrics"]
    base = by_row.get(dense, {})
    for row in rows:
        if row["name"] == dense or not base:
            continue
        row["paired_vs_dense"] = paired_differences(by_row.get(row["name"], {}), base, row["metrics"])
