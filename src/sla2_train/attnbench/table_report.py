"""The attention table as Markdown and JSON: one row per method and sparsity, a column per layer and the mean.

A layer's number is Σ|O − O_full| / Σ|O_full| over all its heads, measured steps and held-out prompts.
Beside it: the sparse-only error of the method's mask (exact precision), the gap closed from the heuristic to the
best-mass mask in that error, (heuristic − method) / (heuristic − best-mass), on the same trajectories (n/a
where the heuristic is within 2% of best-mass, or better), and in how many layers the method's output is no
worse than its own sparse branch alone. A third table gives each row's mean error and gap closed at every
measured sampling step and guidance branch (the conditional and the unconditional transformer call).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Sequence

from .metrics import gap_closed
from .table_methods import ErrorSums

METHODS = {
    "sparse_heuristic": "sparse only, SLA heuristic router",
    "sla": "SLA (v1): O_s + O_l·W, heuristic router, W ridge-fitted",
    "sla2_untrained": "SLA2 untrained: heuristic router, α fitted",
    "sla2_stage1": "SLA2 after stage 1",
    "sla2_stage2": "SLA2 after stage 1 + 2 (low-bit sparse branch)",
    "bestmass": "best-mass blocks, α fitted",
}
NOT_WORSE_TOL = 1e-6
SELECTION_LABELS = {
    "kept_mass": "softmax mass kept",
    "own_frame": "selected blocks in the query's own frame",
    "heuristic_overlap": "selected blocks the heuristic also selects",
}
SAME_MASK_AS_HEURISTIC = ("sla", "sla2_untrained")  # their selection is sparse_heuristic's


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) or not values else mean(values)


def _mask_errors(sums: ErrorSums, sparsity: float, method: str, layers: Sequence[int], where=None) -> dict:
    """The mask's sparse-only error and the heuristic → best-mass gap it closes, per layer and over the layers'
    means, over `where` (one sampling step and branch; None: all)."""
    def per_layer(m: str) -> list[float]:
        return [sums.rel_l1(sparsity, m, layer, "mask", where) for layer in layers]
    mask, heuristic, best = per_layer(method), per_layer("sparse_heuristic"), per_layer("bestmass")
    return {"mask_sparse_per_layer": mask,
            "mask_sparse_mean": mean(mask),
            "gap_closed_per_layer": [gap_closed(h, m, b) for h, m, b in zip(heuristic, mask, best)],
            "gap_closed": gap_closed(mean(heuristic), mean(mask), mean(best))}


def by_step_and_branch(sums: ErrorSums, sparsity: float, method: str, layers: Sequence[int]) -> list[dict]:
    """The row's mean error and gap closed at each sampling step and guidance branch: where the router falls short
    (noise level; the conditional or the unconditional call)."""
    out = []
    for where in sums.wheres():
        errors = [sums.rel_l1(sparsity, method, layer, where=where) for layer in layers]
        if any(e is None for e in errors):
            continue
        out.append({"step": where[0], "branch": where[1], "per_layer": errors, "mean": mean(errors),
                    **_mask_errors(sums, sparsity, method, layers, where),
                    "selection": _selection(sums, sparsity, method, layers, where)})
    return out


def _selection(sums: ErrorSums, sparsity: float, method: str, layers: Sequence[int], where=None) -> dict:
    """What the row's mask selects (ErrorSums.selection), per layer and as the mean of the layers'."""
    per_layer = [sums.selection(sparsity, method, layer, where) or {} for layer in layers]
    out = {name: _mean([entry.get(name) for entry in per_layer]) for name in SELECTION_LABELS}
    return {**out, "per_layer": per_layer}


def row(sums: ErrorSums, sparsity: float, method: str, layers: Sequence[int]) -> dict:
    errors = [sums.rel_l1(sparsity, method, layer) for layer in layers]
    entry = {"sparsity": sparsity, "method": method, "label": METHODS[method], "per_layer": errors,
             "mean": _mean(errors)}
    if errors and errors[0] is None:
        return entry
    sparse = [sums.rel_l1(sparsity, method, layer, "sparse") for layer in layers]
    entry.update({
        "per_head": [sums.per_head(sparsity, method, layer) for layer in layers],
        "sparse_per_layer": sparse,
        **_mask_errors(sums, sparsity, method, layers),
        "by_step_and_branch": by_step_and_branch(sums, sparsity, method, layers),
        "selection": _selection(sums, sparsity, method, layers),
    })
    if method != "sparse_heuristic":
        entry["not_worse_than_sparse"] = [e <= s + NOT_WORSE_TOL for e, s in zip(errors, sparse)]
    return entry


def variant_row(sums: ErrorSums, sparsity: float, name: str, layers: Sequence[int]) -> dict:
    """A stage-2 variant's row: measured as SLA2 after stage 2, on its own model's trajectories."""
    entry = row(sums, sparsity, "sla2_stage2", layers)
    entry.update(method=f"sla2_stage2:{name}", label=f"SLA2 stage 2 variant `{name}` (low-bit sparse branch)")
    return entry


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(rows: list[dict], layers: Sequence[int], header: dict) -> str:
    lines = [f"Command: `{header['command']}`", f"Card: {header['card']}", ""]
    lines += [f"- {k}: {v}" for k, v in header["notes"].items()] + [""]
    head = ["sparsity", "method", *(f"layer {i}" for i in layers), "mean"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['sparsity']:.2f}", r["label"], *(_fmt(e) for e in r["per_layer"]), _fmt(r["mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["sparsity", "method", "sparse-only error of its mask (mean)", "gap closed (heuristic → best-mass)",
            "layers where output ≤ sparse only"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["mean"] is None:
            cells = [f"{r['sparsity']:.2f}", r["label"], "n/a (no checkpoint for this sparsity)", "", ""]
        else:
            flags = r.get("not_worse_than_sparse")
            cells = [f"{r['sparsity']:.2f}", r["label"], _fmt(r["mask_sparse_mean"]), _fmt(r["gap_closed"]),
                     "—" if flags is None else f"{sum(flags)}/{len(flags)}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _breakdown_lines(rows)
    lines += _selection_lines(rows)
    return "\n".join(lines) + "\n"


def _selection_lines(rows: list[dict]) -> list[str]:
    measured = [r for r in rows if r.get("selection") and r["method"] not in SAME_MASK_AS_HEURISTIC]
    if not measured:
        return []
    lines = ["", "What each mask selects (mean over layers, sampling steps and guidance branches):", ""]
    head = ["sparsity", "method", *SELECTION_LABELS.values()]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in measured:
        cells = [f"{r['sparsity']:.2f}", r["label"], *(_fmt(r["selection"][name]) for name in SELECTION_LABELS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


MAX_BREAKDOWN_COLUMNS = 8  # (step, branch) columns in the Markdown; with more, the JSON alone holds them


def _breakdown_lines(rows: list[dict]) -> list[str]:
    measured = [r for r in rows if r.get("by_step_and_branch")]
    wheres = sorted({(g["step"], g["branch"]) for r in measured for g in r["by_step_and_branch"]})
    if not wheres:
        return []
    lines = ["", "By sampling step and guidance branch: mean error over layers (gap closed).", ""]
    if len(wheres) > MAX_BREAKDOWN_COLUMNS:
        return lines[:-1] + [f"{len(wheres)} (step, branch) pairs: see `by_step_and_branch` in the JSON."]
    head = ["sparsity", "method", *(f"step {step} {branch}" for step, branch in wheres)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in measured:
        at = {(g["step"], g["branch"]): g for g in r["by_step_and_branch"]}
        cells = [f"{r['sparsity']:.2f}", r["label"]]
        for where in wheres:
            g = at.get(where)
            cells.append("" if g is None else f"{_fmt(g['mean'])} ({_fmt(g['gap_closed'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write(out: str | Path, rows: list[dict], layers: Sequence[int], header: dict) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "attention_table.json", folder / "attention_table.md"
    json_path.write_text(json.dumps({**header, "layers": list(layers), "rows": rows}, indent=1))
    md_path.write_text(markdown(rows, layers, header))
    return json_path, md_path
