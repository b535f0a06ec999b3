"""What the loggers receive: flat finite numbers, and for W&B the side-by-side video table and the error plot."""

import math

import torch

from sla2_train.evaluation.logging_out import flat_metrics, wandb_media
from sla2_train.evaluation.video_io import write_mp4


def _report(folder):
    video = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    videos = []
    for row in ("dense", "sla2 0.9 bf16"):
        for seed in (0, 1):
            rel = f"videos/{row.replace(' ', '_')}/s{seed}.mp4"
            write_mp4(folder / rel, video, fps=8)
            videos.append({"row": row, "prompt": "a fox", "seed": seed, "video": rel})
    rows = [{"name": "dense", "metrics": {"temporal_flickering": 0.9}, "seconds_per_video": 2.0},
            {"name": "sla2 0.9 bf16", "metrics": {"psnr": math.inf, "ssim": 0.9}, "seconds_per_video": 1.0,
             "rel_l1_per_layer": [0.1, 0.2], "rel_l1_per_step": [0.3, 0.25],
             "velocity_rel_l1_per_step": {"cond": [0.5, 0.4], "guided": [0.7, 0.6]}}]
    return {"rows": rows, "videos": videos}


def test_flat_metrics_are_finite_and_named_by_row(tmp_path):
    flat = flat_metrics(_report(tmp_path))
    assert flat["eval/dense/temporal_flickering"] == 0.9 and flat["eval/sla2_0.9_bf16/seconds_per_video"] == 1.0
    assert "eval/sla2_0.9_bf16/psnr" not in flat  # +inf (identical videos) is left out
    assert flat["eval/sla2_0.9_bf16/rel_l1/layer_1"] == 0.2
    assert flat["eval/sla2_0.9_bf16/rel_l1/step_0"] == 0.3
    assert flat["eval/sla2_0.9_bf16/velocity_rel_l1/guided/step_1"] == 0.6


def test_wandb_table_puts_dense_and_sla2_videos_side_by_side(tmp_path):
    import wandb

    media = wandb_media(_report(tmp_path), tmp_path)
    table = media["eval/videos"]
    assert table.columns == ["prompt", "seed", "dense", "sla2 0.9 bf16"]
    assert len(table.data) == 2 and all(isinstance(cell, wandb.Video) for row in table.data for cell in row[2:])
    assert "eval/rel_l1_per_layer" in media
