"""The report to the configured loggers: numbers to every logger; to W&B also the videos side by side
(a wandb.Table of prompt × row) and the per-layer attention error as a line plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    out = {}
    for row in report["rows"]:
        prefix = "eval/" + row["name"].replace(" ", "_")
        values = {**row["metrics"], **{k: v for k, v in row.items() if isinstance(v, (int, float))}}
        out.update({f"{prefix}/{k}": float(v) for k, v in values.items() if math.isfinite(float(v))})
        for i, e in enumerate(row.get("rel_l1_per_layer", [])):
            out[f"{prefix}/rel_l1/layer_{i}"] = e
        for i, e in enumerate(row.get("rel_l1_per_step", [])):
            out[f"{prefix}/rel_l1/step_{i}"] = e
        for key, errors in row.get("velocity_rel_l1_per_step", {}).items():  # velocity.py
            for i, e in enumerate(errors):
                out[f"{prefix}/velocity_rel_l1/{key}/step_{i}"] = e
        for k, stat in row.get("paired_vs_dense", {}).items():  # paired.add_paired
            for name, key in (("vs_dense", "diff"), ("vs_dense_sem", "sem")):
                if stat[key] is not None:
                    out[f"{prefix}/{name}/{k}"] = float(stat[key])
    return out


def wandb_media(report: dict[str, Any], folder: Path) -> dict[str, Any]:
    import wandb

    names = [r["name"] for r in report["rows"]]
    table = wandb.Table(columns=["prompt", "seed", *names])
    by_key: dict[tuple, dict[str, str]] = {}
    for v in report["videos"]:
        by_key.setdefault((v["prompt"], v["seed"]), {})[v["row"]] = v["video"]
    for (prompt, seed), videos in by_key.items():
        cells = [wandb.Video(str(folder / videos[n]), format="mp4") if n in videos else None for n in names]
        table.add_data(prompt, seed, *cells)
    media: dict[str, Any] = {"eval/videos": table}
    sla2 = [r for r in report["rows"] if "rel_l1_per_layer" in r]
    if sla2:
        layers = list(range(len(sla2[0]["rel_l1_per_layer"])))
        media["eval/rel_l1_per_layer"] = wandb.plot.line_series(
            xs=layers, ys=[r["rel_l1_per_layer"] for r in sla2], keys=[r["name"] for r in sla2],
            title="attention rel-L1 vs full attention, per layer", xname="layer")
    return media


def log_report(loggers, report: dict[str, Any], folder: Path, hyperparams: dict[str, Any]) -> None:
    metrics = flat_metrics(report)
    for logger in loggers:
        from lightning.pytorch.loggers import WandbLogger

        logger.log_hyperparams(hyperparams)
        logger.log_metrics(metrics, step=0)
        if isinstance(logger, WandbLogger):
            logger.experiment.log(wandb_media(report, folder), step=0)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # each multirun job is its own W&B run
