"""eval.json and the Markdown table in the paper's layout (rows: dense and each SLA2 setting; columns:
quality metrics, attention FLOPs, speed), for one run or combined over a multirun sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

# Column order: VBench dimensions first, then fidelity to the dense video, then the attention error.
METRIC_COLUMNS = {
    "imaging_quality": "Imaging Q.",
    "clip_text_score": "CLIP text (≈ Overall Cons.)",
    "aesthetic_quality": "Aesthetic Q.",
    "motion_smoothness": "Motion Smooth.",
    "subject_consistency": "Subject Cons.",
    "background_consistency": "Background Cons.",
    "dynamic_degree": "Dynamic Deg.",
    "temporal_flickering": "Temporal Flicker",
    "psnr": "PSNR vs dense (dB)",
    "ssim": "SSIM vs dense",
    "lpips": "LPIPS vs dense ↓",
    "rel_l1_mean": "Attn rel-L1 ↓",
    "velocity_rel_l1": "Velocity rel-L1 ↓",
    "guidance_rel_l1": "Guidance Δ rel-L1 ↓",
    "prompt_following": "Prompt following",
    "prompt_following_chance": "Prompt following, chance",
    "prompt_following_present": "Prompt: present",
    "prompt_following_shape": "Prompt: shape",
    "prompt_following_direction": "Prompt: direction",
}
SPEED_COLUMNS = {
    "attention_tflops_dense_equivalent": "Attn TFLOPs/video (dense-eq.)",
    "attention_tflops_actual": "Attn TFLOPs/video (actual)",
    "seconds_per_video": "s/video",
    "speedup": "Speedup",
    "forward_ms": "DiT ms/forward",
    "attention_ms_per_forward": "Attn ms/forward",
    "attention_share": "Attn share",
}


def json_safe(value):
    # PSNR of identical videos is +inf, which strict JSON cannot hold.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def cell(value) -> str:
    """A number for a Markdown table cell ("–" for none; strings pass through)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    present = {k for r in rows for k in r["metrics"]}
    # Every computed metric gets a column: known ones in the paper's order, any other by its name after them.
    metrics = [k for k in METRIC_COLUMNS if k in present] + sorted(present - set(METRIC_COLUMNS))
    speed = [k for k in SPEED_COLUMNS if any(k in r for r in rows)]
    head = ["Attention", *(METRIC_COLUMNS.get(k, k) for k in metrics), *(SPEED_COLUMNS[k] for k in speed)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], *(cell(r["metrics"].get(k)) for k in metrics)]
        cells += [f"{100 * r[k]:.1f}%" if k == "attention_share" and k in r else cell(r.get(k)) for k in speed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plus_minus(stat: dict[str, Any]) -> str:
    """A paired difference as "+d ± sem (+r%)" (paired.paired_differences)."""
    diff, sem = stat.get("diff"), stat.get("sem")
    if diff is None:
        return "–"
    rel = f" ({100 * stat['relative']:+.1f}%)" if stat.get("relative") is not None else ""
    return f"{diff:+.4g} ± {sem:.2g}{rel}" if sem is not None else f"{diff:+.4g}{rel}"


def paired_table(rows: Sequence[dict[str, Any]]) -> str:
    """Each SLA2 row minus dense on the same prompts and noise: mean ± standard error over the paired videos,
    and relative to the dense mean (add_paired in paired.py); empty without SLA2 rows."""
    rows = [r for r in rows if r.get("paired_vs_dense")]
    if not rows:
        return ""
    present = {k for r in rows for k in r["paired_vs_dense"]}
    metrics = [k for k in METRIC_COLUMNS if k in present] + sorted(present - set(METRIC_COLUMNS))
    head = ["Attention − dense", *(METRIC_COLUMNS.get(k, k) for k in metrics), "paired videos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stats = r["paired_vs_dense"]
        n = max(s["n"] for s in stats.values())
        lines.append("| " + " | ".join([r["name"], *(plus_minus(stats.get(k, {})) for k in metrics), str(n)]) + " |")
    return "\n".join(lines) + "\n"


def step_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per sampling step, each SLA2 row's mean per-layer attention error and its velocity errors (velocity.py)
    on the dense trajectory; empty when no row has them."""
    columns = []  # (row name, label, values per step)
    for r in rows:
        if "rel_l1_per_step" in r:
            columns.append((r["name"], "attention", r["rel_l1_per_step"]))
        for key, values in r.get("velocity_rel_l1_per_step", {}).items():
            columns.append((r["name"], key, values))
    if not columns:
        return ""
    head = ["step", *(f"{name}: {label}" for name, label, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in range(max(len(values) for _, _, values in columns)):
        lines.append("| " + " | ".join([str(step), *(cell(v[step] if step < len(v) else None)
                                                      for _, _, v in columns)]) + " |")
    return "\n".join(lines) + "\n"


def settings_line(settings: dict[str, Any]) -> str:
    s = settings
    sched = s["scheduler"].get("_target_", "?").rsplit(".", 1)[-1]
    shift = s["scheduler"].get("flow_shift", s["scheduler"].get("shift"))
    return (f"{s['model']} ({'random weights' if s['random_weights'] else s['model_path']}), "
            f"checkpoint {s['checkpoint']['path'] if s['checkpoint'] else 'none'}"
            f"{' (dense rows: the base weights of the folder)' if s.get('dense_weights') == 'base' else ''}; "
            f"{s['num_frames']}×{s['height']}×"
            f"{s['width']} at {s['fps']} fps, {s['num_inference_steps']} steps {sched} shift {shift}, guidance "
            f"{s['guidance_scale']}, {len(s['prompts'])} prompts of '{s['prompt_set']}' × {s['videos_per_prompt']} "
            f"videos (seeds {s['seeds']}), {s['dtype']} on {s['device']}")


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "eval.json").write_text(json.dumps(json_safe(report), indent=1))
    text = [markdown_table(report["rows"])]
    paired = paired_table(report["rows"])
    if paired:
        text += ["SLA2 − dense, paired by prompt and noise (mean ± standard error):", "", paired]
    steps = step_table(report["rows"])
    if steps:
        text += ["By sampling step, on the dense trajectory (relative L1: attention, each layer's output on its "
                 "dense inputs, mean over layers; cond / uncond / guidance / guided, the transformer's velocity "
                 "for the prompt, for the negative prompt, their difference, and uncond + g·difference):", "",
                 steps]
    text += ["", settings_line(report["settings"]), f"timing: {report['timing']}"]
    text += [f"- {line}" for line in report["skipped"].values()]
    (folder / "table.md").write_text("\n".join(text) + "\n")


def combined_table(result_folders: Sequence[Path]) -> str:
    """One table over several runs (a multirun sweep): the first run's dense row, then every SLA2 row."""
    reports = [json.loads((Path(f) / "eval.json").read_text()) for f in result_folders]
    rows = [r for r in reports[0]["rows"] if r["name"] == "dense"]
    for rep in reports:
        rows += [r for r in rep["rows"] if r["name"] != "dense"]
    notes = [f"- {Path(f).name}: {settings_line(rep['settings'])}" for f, rep in zip(result_folders, reports)]
    paired = paired_table(rows)
    paired = f"\nSLA2 − dense, paired by prompt and noise (mean ± standard error):\n\n{paired}" if paired else ""
    return markdown_table(rows) + paired + "\n" + "\n".join(notes) + "\n"
