"""Evaluation: prompts → dense and SLA2 videos through WanPipeline → VBench-style metrics, speed, report."""

from importlib import import_module

# each public name → the module that defines it
_HOMES = {"Evaluation": "evaluate", "build": "evaluate", "run": "evaluate", "RandomWanFolder": "random_folder",
          "load_prompts": "prompts", "combined_table": "report", "write_report": "report"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    # Lazy: the report tools (sla2-eval-compare, sla2-testbed-breakdown) only read JSON, and importing the
    # pipeline here (torch, diffusers) cost each of them 5 s a call.
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
