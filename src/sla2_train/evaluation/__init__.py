"""Evaluation: prompts → dense and SLA2 videos through WanPipeline → VBench-style metrics, speed, report."""

from .evaluate import Evaluation, build, run
from .prompts import load_prompts
from .random_folder import RandomWanFolder
from .report import combined_table, write_report

__all__ = ["Evaluation", "RandomWanFolder", "build", "combined_table", "load_prompts", "run", "write_report"]
