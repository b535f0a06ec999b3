"""Collect what scripts/multigpu/run.sh produced into OUT_DIR/results.json and a Markdown table, results.md.

    python scripts/multigpu/summarize.py OUT_DIR

Per step: exit code, seconds, command. Per training run (a folder under OUT_DIR/runs/): throughput and peak
memory per GPU (the ThroughputLog callback's JSON per rank), the sample-key split per epoch (SampleKeysLog),
the step its last.ckpt reached, and from its logs the start-up batch/lr line and whether it resumed.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from sla2_train.export.sharded_checkpoint import REST
from sla2_train.lit.sample_keys import read_sample_keys, split_summary

GIB = 2**30


def _steps(out: Path) -> list[dict]:
    rows = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, seconds, command = line.split("\t", 3)
        log = out / "logs" / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        batch_lines = [ln.split("training: ", 1)[1] for ln in text.splitlines() if "training: world size" in ln]
        rows.append({"step": name, "rc": int(rc), "seconds": int(seconds), "command": command,
                     "resumed": "resuming from" in text, "batch_and_lr": batch_lines[0] if batch_lines else None})
    return rows


def _last_step(folder: Path) -> int | None:
    ckpt = folder / "checkpoints" / "last.ckpt"
    state = ckpt / REST if ckpt.is_dir() else ckpt  # FSDP: a folder of shards, the loop state beside them
    if not state.is_file():
        return None
    return int(torch.load(state, map_location="cpu", weights_only=True)["global_step"])


def _throughput(folder: Path) -> dict | None:
    ranks = [json.loads(p.read_text()) for p in sorted((folder / "throughput").glob("rank*.json"))]
    if not ranks or any(r["seconds"] is None for r in ranks):
        return None
    peak = [r["peak_allocated_bytes"] for r in ranks]
    return {
        "gpus": ranks[0]["world_size"],
        "device": ranks[0]["device"],
        "samples_per_s": sum(r["samples_timed"] for r in ranks) / max(r["seconds"] for r in ranks),
        "step_time_s": max(r["step_time_s"] for r in ranks),
        "steps_timed": ranks[0]["steps_timed"],
        "peak_allocated_gib_per_gpu": None if None in peak else [p / GIB for p in peak],
        "per_rank": ranks,
    }


def _runs(out: Path) -> dict[str, dict]:
    runs = {}
    for folder in sorted({p.parent for p in (out / "runs").glob("**/throughput")} |
                         {p.parent for p in (out / "runs").glob("**/sample_keys")}):
        keys = read_sample_keys(folder / "sample_keys")
        runs[str(folder.relative_to(out / "runs"))] = {
            "throughput": _throughput(folder),
            "sample_keys": split_summary(keys) if keys else None,
            "last_step": _last_step(folder),
        }
    return runs


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown(results: dict) -> str:
    lines = [f"# Multi-GPU runs, {results['date']}", "", f"Command: `{results['command']}`; "
             f"devices: {', '.join(sorted(results['devices'])) or '—'}; torch {results['torch']}.", "",
             "| step | rc | s | resumed | batch and lr |", "| --- | --- | --- | --- | --- |"]
    for s in results["steps"]:
        lines.append(f"| {s['step']} | {s['rc']} | {s['seconds']} | {'yes' if s['resumed'] else ''} | "
                     f"{s['batch_and_lr'] or ''} |")
    lines += ["", "| run | GPUs | samples/s | step s | peak GiB per GPU | last step | epochs: samples per rank, union, "
              "ranks disjoint |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in results["runs"].items():
        t = run["throughput"] or {}
        peak = t.get("peak_allocated_gib_per_gpu")
        split = run["sample_keys"]
        epochs = "; ".join(f"{e}: {list(v['samples'].values())}, {v['union']}, {'yes' if v['disjoint'] else 'NO'}"
                           for e, v in split["epochs"].items()) if split else ""
        lines.append(f"| {name} | {t.get('gpus', '—')} | {_fmt(t.get('samples_per_s'), '.3f')} | "
                     f"{_fmt(t.get('step_time_s'), '.3f')} | {', '.join(f'{p:.1f}' for p in peak) if peak else '—'} | "
                     f"{_fmt(run['last_step'], 'd')} | {epochs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    runs = _runs(out)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"scripts/multigpu/run.sh {out}",
        "host": platform.node(),
        "torch": torch.__version__,
        "devices": sorted({r["throughput"]["device"] for r in runs.values() if r["throughput"]}),
        "steps": _steps(out),
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    failed = [s["step"] for s in results["steps"] if s["rc"] != 0]
    print(f"{len(results['steps'])} steps, failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
