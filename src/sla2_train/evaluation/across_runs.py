"""Two groups of evaluation runs against each other, one trained model a run (training seeds of one recipe, say):

    sla2-eval-runs --a RUN ... --b RUN ... [--row-a NAME] [--row-b NAME] [--out FILE.json]

Each RUN is an eval.py report (`eval.json`) or a folder holding one; rows as in sla2-eval-compare. Every run is
reduced to its mean over the videos that all runs of both groups share (the same prompts and seeds), so the runs'
means compare like for like. Per metric it prints each group's mean over its runs ± the standard error across
runs, A − B ± the standard error of that difference (Welch: the two groups' errors added in quadrature), and every
run's own mean.

Why across runs: sla2-eval-compare's ± is the spread over prompts of one pair of trained models. Training the same
recipe again with another seed moves a model's prompt following by more than that (docs/results.md, "The same
recipe at other training seeds"), so a claim about a recipe needs several trained models a side, and this error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from .compare import CompareError, load_report, pick_row, print_result, videos_of
from .paired import mean_and_sem
from .report import METRIC_COLUMNS, cell


def _group(runs: Sequence[str | Path], row: str | None, side: str) -> list[dict[str, Any]]:
    if not runs:
        raise CompareError(f"group {side.upper()}: no runs given")
    out = []
    for run in runs:
        path, report = load_report(run)
        name = pick_row(report, row, path, f"--row-{side}")
        out.append({"path": str(path), "row": name, "videos": videos_of(report, name)})
    return out


def across_runs(a: Sequence[str | Path], b: Sequence[str | Path], row_a: str | None = None,
                row_b: str | None = None) -> dict[str, Any]:
    groups = {"a": _group(a, row_a, "a"), "b": _group(b, row_b, "b")}
    runs = groups["a"] + groups["b"]
    shared = set.intersection(*(set(r["videos"]) for r in runs))
    if not shared:
        raise CompareError("the runs share no (prompt, seed) video")
    # the metrics every run scored on every shared video, in the first run's order
    first = runs[0]["videos"]
    metrics = [m for m in dict.fromkeys(m for key in shared for m in first[key])
               if all(m in r["videos"][key] for r in runs for key in shared)]
    result: dict[str, Any] = {"videos": len(shared), "metrics": {}}
    for side, group in groups.items():
        result[side] = [{"path": r["path"], "row": r["row"], "left_out": len(r["videos"]) - len(shared)}
                        for r in group]
    for m in metrics:
        stat: dict[str, Any] = {}
        for side, group in groups.items():
            run_means = [sum(r["videos"][key][m] for key in shared) / len(shared) for r in group]
            mean, sem = mean_and_sem(run_means)
            stat[side] = {"runs": run_means, "mean": mean, "sem": sem}
        sa, sb = stat["a"], stat["b"]
        diff = None if sa["mean"] is None or sb["mean"] is None else sa["mean"] - sb["mean"]
        both = sa["sem"] is not None and sb["sem"] is not None
        stat["diff"] = diff
        stat["sem"] = math.sqrt(sa["sem"] ** 2 + sb["sem"] ** 2) if both and diff is not None else None
        result["metrics"][m] = stat
    return result


def _mean_pm(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.4g} ± {stat['sem']:.2g}" if stat["sem"] is not None else cell(stat["mean"])


def table(result: dict[str, Any]) -> str:
    lines = [f"A: {len(result['a'])} runs ({result['a'][0]['row']}); B: {len(result['b'])} runs "
             f"({result['b'][0]['row']}); each run's mean over the {result['videos']} videos all of them share", "",
             "| metric | A (± across runs) | B (± across runs) | A − B | A's runs | B's runs |",
             "|---|---|---|---|---|---|"]
    for m, stat in result["metrics"].items():
        diff = "–" if stat["diff"] is None else (
            f"{stat['diff']:+.4g} ± {stat['sem']:.2g}" if stat["sem"] is not None else f"{stat['diff']:+.4g}")
        runs = [", ".join(f"{v:.4g}" for v in stat[side]["runs"]) for side in ("a", "b")]
        lines.append("| " + " | ".join([METRIC_COLUMNS.get(m, m), _mean_pm(stat["a"]), _mean_pm(stat["b"]), diff,
                                        *runs]) + " |")
    if any(len(result[side]) < 2 for side in ("a", "b")):
        lines += ["", "a group of one run has no spread across runs: give each group two or more"]
    left = [r for side in ("a", "b") for r in result[side] if r["left_out"]]
    if left:
        lines += ["", "left out, not in every run: " + "; ".join(f"{r['left_out']} videos of {r['path']}" for r in left)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sla2-eval-runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="group A's runs: eval.json files or folders holding one")
    parser.add_argument("--b", nargs="+", required=True, help="group B's runs")
    parser.add_argument("--row-a", help="A's row (default: each run's one row besides dense)")
    parser.add_argument("--row-b", help="B's row (default: each run's one row besides dense)")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    return print_result(lambda: across_runs(args.a, args.b, args.row_a, args.row_b), table, args.out)


if __name__ == "__main__":
    sys.exit(main())
