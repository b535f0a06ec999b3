"""Two evaluation runs' videos against each other, paired by prompt and noise:

    sla2-eval-compare RUN_A RUN_B [--row-a NAME] [--row-b NAME] [--out FILE.json]

RUN_A and RUN_B are eval.py reports (`eval.json`) or folders holding exactly one. Each side's row defaults to its
run's one row besides dense; `--row-a` / `--row-b` name one (`dense` included) where a run has several. Videos
are paired by prompt text and seed, so two runs of the same prompts and seeds compare video by video (two
checkpoints, two sparsities, QAT against a bf16 fine-tune); videos only one side has are left out and counted.
Prints, per metric scored on both sides, each side's mean over the paired videos and A − B ± the standard error
of the paired differences (paired.py: they remove the prompt-to-prompt spread both runs share, which side-by-side
means of a few dozen prompts cannot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .paired import paired_differences
from .report import METRIC_COLUMNS, cell, plus_minus


class CompareError(ValueError):
    """A bad input, reported in one line."""


def load_report(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("eval.json"))
        if len(found) != 1:
            raise CompareError(f"{path}: {len(found)} eval.json files under it; name one")
        path = found[0]
    if not path.is_file():
        raise CompareError(f"{path}: no such file or folder")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise CompareError(f"{path}: not a readable eval.json ({exn})") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list) or not isinstance(
            report.get("videos"), list):
        raise CompareError(f"{path}: not an eval.py report (no rows or videos)")
    return path, report


def pick_row(report: dict[str, Any], name: str | None, path: Path, flag: str) -> str:
    names = [r["name"] for r in report["rows"]]
    if name is not None:
        if name not in names:
            raise CompareError(f"{flag} {name!r}: {path} has the rows {names}")
        return name
    others = [n for n in names if n != "dense"]
    if len(others) != 1:
        raise CompareError(f"{path} has {len(others)} rows besides dense {others}: choose one with {flag}")
    return others[0]


def videos_of(report: dict[str, Any], row: str) -> dict[tuple[str, int], dict[str, float]]:
    """{(prompt, seed): metrics} of one row's videos."""
    return {(v["prompt"], v["seed"]): v["metrics"] for v in report["videos"] if v["row"] == row}


def compare(a: str | Path, b: str | Path, row_a: str | None = None, row_b: str | None = None) -> dict[str, Any]:
    sides = []
    for path, row, flag in ((a, row_a, "--row-a"), (b, row_b, "--row-b")):
        path, report = load_report(path)
        row = pick_row(report, row, path, flag)
        sides.append({"path": str(path), "row": row, "videos": videos_of(report, row)})
    va, vb = sides[0]["videos"], sides[1]["videos"]
    shared = va.keys() & vb.keys()
    if not shared:
        raise CompareError(f"{sides[0]['path']} and {sides[1]['path']} share no (prompt, seed) video")
    # the metrics in A's order; paired_differences leaves out those B did not score on a shared video
    paired = paired_differences(va, vb, dict.fromkeys(m for v in va.values() for m in v))
    return {
        "a": {"path": sides[0]["path"], "row": sides[0]["row"]},
        "b": {"path": sides[1]["path"], "row": sides[1]["row"]},
        "paired": paired,
        "unpaired": {"a": len(va.keys() - shared), "b": len(vb.keys() - shared)},
    }


def table(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    lines = [f"A: {a['row']} ({a['path']})", f"B: {b['row']} ({b['path']})", "",
             "| metric | A | B | A − B (paired) | paired videos |", "|---|---|---|---|---|"]
    for k, stat in result["paired"].items():
        mean_b = stat["base_mean"]
        mean_a = None if mean_b is None or stat["diff"] is None else mean_b + stat["diff"]  # the mean of a difference
        cells = [METRIC_COLUMNS.get(k, k), cell(mean_a), cell(mean_b), plus_minus(stat), str(stat["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    unpaired = result["unpaired"]
    if unpaired["a"] or unpaired["b"]:
        lines += ["", f"left out, without a partner: {unpaired['a']} videos of A, {unpaired['b']} of B"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sla2-eval-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="eval.json of run A, or a folder holding one")
    parser.add_argument("run_b", help="eval.json of run B, or a folder holding one")
    parser.add_argument("--row-a", help="A's row (default: its one row besides dense)")
    parser.add_argument("--row-b", help="B's row (default: its one row besides dense)")
    parser.add_argument("--out", help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    return print_result(lambda: compare(args.run_a, args.run_b, args.row_a, args.row_b), table, args.out)


def print_result(compute, to_table, out: str | None) -> int:
    """A comparison command's end: the result's table on stdout (and JSON at `out`), or its CompareError as one
    line on stderr (exit code 2)."""
    try:
        result = compute()
    except CompareError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(to_table(result), end="")
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
