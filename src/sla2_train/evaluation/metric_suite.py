"""The configured metrics (config group eval/metrics), built before any video is generated.

A metric whose weights are not configured is skipped with one line naming the key; a configured path that
does not exist stops the run (ConfigError) before hours of sampling, not after.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate

from sla2_train.cli_errors import root_cause
from sla2_train.metrics import MissingWeights, VideoMetric

log = logging.getLogger("eval")


def build_metrics(specs: Mapping[str, Any]) -> tuple[list[VideoMetric], dict[str, str]]:
    """(metrics, {name: skip line}); a spec set to null is switched off without a line."""
    metrics, skipped = [], {}
    for name, spec in specs.items():
        if spec is None:
            continue
        try:
            metrics.append(instantiate(spec))
        except Exception as err:
            root = root_cause(err)
            if not isinstance(root, MissingWeights):
                raise root from None
            skipped[name] = f"{name} skipped: {root}"
            log.warning(skipped[name])
    return metrics, skipped


def score_video(metrics: list[VideoMetric], video: torch.Tensor, prompt: str,
                reference: torch.Tensor | None) -> dict[str, float]:
    """Every metric on one video; metrics against the dense video are left out for the dense video itself."""
    return {m.name: m.score(video, prompt, reference)
            for m in metrics if reference is not None or not m.needs_reference}


def video_details(metrics: list[VideoMetric], video: torch.Tensor, prompt: str) -> dict[str, Any]:
    """{metric name: its details} for the metrics that keep any (VideoMetric.details)."""
    found = {m.name: m.details(video, prompt) for m in metrics}
    return {name: d for name, d in found.items() if d is not None}
