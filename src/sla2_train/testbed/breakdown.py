"""Prompt following broken down by what the captions ask for: which objects a model loses, not only how many.

    sla2-testbed-breakdown RUN [RUN ...] [--by colour] [--out breakdown.json]

Each RUN is an eval.py result (its eval.json or a folder holding one) on testbed prompts. Every captioned object
is one item, grouped by its colour, shape, direction or speed, by how many objects its caption names, or by the
camera; per group and per row (the first run's dense row, then each run's SLA2 row) the fraction of objects
right on all three attributes, and present. From the per-object details eval.py keeps beside the
prompt-following score; a report without them (made before they were kept) gives each of a video's objects the
video's own fractions, which is exact for one-object captions and an average otherwise (the table says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from sla2_train.evaluation.compare import CompareError, load_report, pick_row

from .captions import parse_camera, parse_caption

GROUPS = ("colour", "shape", "direction", "speed", "objects", "camera")
METRIC = "prompt_following"


def objects_of(video: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """(one item per captioned object: its claim, the caption's object count and camera, right and present;
    whether the outcome is the object's own, from the report's details)."""
    claims = parse_caption(video["prompt"])
    common = {"objects": len(claims), "camera": parse_camera(video["prompt"]) or "?"}
    details = video.get("details", {}).get(METRIC)
    if details is not None:
        return [{**common, "colour": o["colour"], "shape": o["shape"], "direction": o["direction"],
                 "speed": o["speed"], "right": float(o["present"] and o["shape_right"] and o["direction_right"]),
                 "present": float(o["present"])} for o in details], True
    m = video["metrics"]
    return [{**common, "colour": c.colour, "shape": c.shape, "direction": c.direction, "speed": c.speed,
             "right": m[METRIC], "present": m[f"{METRIC}_present"]} for c in claims], False


def _label(path: Path) -> str:
    """The chain's name of a run (its eval-NAME folder), else the report's folder."""
    run = next((p.name for p in path.parents if p.name.startswith("eval-")), None)
    return run[len("eval-"):] if run else str(path.parent)


def breakdown(runs: Sequence[str | Path], by: str) -> dict[str, Any]:
    if by not in GROUPS:
        raise CompareError(f"--by {by!r}: choose one of {list(GROUPS)}")
    columns = []  # (label, videos of one row)
    for i, run in enumerate(runs):
        path, report = load_report(run)
        names = [r["name"] for r in report["rows"]]
        rows = (["dense"] if i == 0 and "dense" in names else []) + [pick_row(report, None, path, "RUN")]
        for row in rows:
            videos = [v for v in report["videos"] if v["row"] == row]
            if not videos or METRIC not in videos[0]["metrics"]:
                raise CompareError(f"{path}: row {row!r} has no {METRIC} scores (eval/metrics=testbed)")
            columns.append((row if row == "dense" else _label(path), videos))
    table: dict[str, dict[str, dict[str, float]]] = {}
    exact = True
    for label, videos in columns:
        groups: dict[str, list[dict[str, Any]]] = {}
        for video in videos:
            items, own = objects_of(video)
            exact &= own
            for item in items:
                groups.setdefault(str(item[by]), []).append(item)
        for key, items in groups.items():
            table.setdefault(key, {})[label] = {"objects": len(items),
                                                "right": sum(i["right"] for i in items) / len(items),
                                                "present": sum(i["present"] for i in items) / len(items)}
    return {"by": by, "columns": [label for label, _ in columns], "per_object": exact, "groups": table}


def markdown(result: dict[str, Any]) -> str:
    by, columns = result["by"], result["columns"]
    head = [by, "objects", *(f"{c}: right / present" for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(result["groups"]):
        cells = result["groups"][key]
        n = max(c["objects"] for c in cells.values())
        lines.append("| " + " | ".join([key, str(n), *(
            f"{cells[c]['right']:.2f} / {cells[c]['present']:.2f}" if c in cells else "–" for c in columns)]) + " |")
    note = ("each object's own outcome (the reports' per-object details)" if result["per_object"] else
            "some reports keep no per-object details: their objects carry their video's fractions")
    return "\n".join(lines) + f"\n\n{note}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sla2-testbed-breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="eval.json files or folders holding one")
    parser.add_argument("--by", default="colour", help=f"one of {', '.join(GROUPS)} (default colour)")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    try:
        result = breakdown(args.runs, args.by)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
