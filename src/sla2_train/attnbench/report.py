"""The benchmark's table: per layer/head and overall at each sparsity, as JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from .bench import ROUTERS
from .metrics import gap_closed

METRICS = ("sparse_l1", "sla2_l1", "recall", "mass", "alpha")


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (sparsity, layer, head) and one 'overall' per sparsity: errors are means over layers and
    heads; its gap closed is the mean of the heads' own (heads with a gap only: a diffuse head's relative
    error is large and noisy next to a tiny |O_full|, and would swamp a ratio of the means)."""
    out = []
    routers = [r for r in ROUTERS + ("pooled_oracle",) if any(x["router"] == r for x in rows)]
    for sparsity in sorted({r["sparsity"] for r in rows}):
        at = [r for r in rows if r["sparsity"] == sparsity]
        keys = sorted({(r["layer"], r["head"], r["label"]) for r in at}, key=lambda t: (t[0], t[1]))
        groups = [([r for r in at if (r["layer"], r["head"]) == key[:2]], key) for key in keys]
        groups.append((at, ("overall", "", "")))
        for group, (layer, head, label) in groups:
            entry = {"sparsity": sparsity, "layer": layer, "head": head, "label": label, "k": at[0]["k"]}
            for router in routers:
                chosen = [r for r in group if r["router"] == router]
                entry[router] = {m: mean(r[m] for r in chosen) for m in METRICS}
            if layer == "overall":
                heads = [e["gap_closed"] for e in out if e["sparsity"] == sparsity and e["gap_closed"] is not None]
                entry["gap_closed"] = mean(heads) if heads else None
                entry["heads_with_gap"] = len(heads)
            else:
                entry["gap_closed"] = gap_closed(*(entry[r]["sparse_l1"] for r in ROUTERS))
            entry["sla2_not_worse"] = all(entry[r]["sla2_l1"] <= entry[r]["sparse_l1"] + 1e-6 for r in routers)
            out.append(entry)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(summary: list[dict], command: str, card: str) -> str:
    routers = [r for r in ROUTERS + ("pooled_oracle",) if r in summary[0]]
    lines = [f"Command: `{command}`", f"Card: {card}", ""]
    head = ["sparsity", "layer", "head", "k"]
    head += [f"{r} {m}" for r in routers for m in ("sparse L1", "SLA2 L1")]
    head += ["recall id/learned", "mass id/learned/best", "α learned", "gap closed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [f"{e['sparsity']:.2f}", e["layer"], f"{e['head']} {e['label']}".strip(), str(e["k"])]
        cells += [_fmt(e[r][m]) for r in routers for m in ("sparse_l1", "sla2_l1")]
        cells += [f"{e['identity']['recall']:.2f}/{e['learned']['recall']:.2f}",
                  "/".join(f"{e[r]['mass']:.2f}" for r in ROUTERS), f"{e['learned']['alpha']:.2f}",
                  _fmt(e["gap_closed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out_dir: str | Path, rows: list[dict], config: dict, command: str, card: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    (out / "attnbench.json").write_text(json.dumps(
        {"command": command, "card": card, "config": config, "summary": summary, "rows": rows}, indent=1))
    (out / "attnbench.md").write_text(markdown(summary, command, card))
    return out / "attnbench.json", out / "attnbench.md"
