"""The stage-1 recipe sweep: every variant of a grid trained on the train split and judged on the validation
split, on two synthetic sets (the benchmark's default and a larger one; `--sets testbed` adds the shipped testbed
model's captured attention); the best variant on validation and the current default are then measured once on
the held-out split.

    python -m sla2_train.attnbench.sweep --device cuda --out $OUT/stage1_sweep      # ~3-4 min on one H200

Writes sweep.json (every run's summary) and sweep.md (ready-to-paste tables) to --out and prints the tables.
A variant is a list of sla2-attnbench options on top of the defaults (conf/stage/distill.yaml's recipe); the
sweep gives the first set 60% of --budget-s and the rest to the others, and starts a validation run only while
that run and the set's two held-out runs, each timed like the set's last run, fit before the set's deadline;
each set always gets its defaults and its held-out runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean

import torch

from .bench import run
from .cli import build_recipe, card, load_sets
from .cli import parser as bench_parser
from .report import summarise
from .sets import AttentionSet

# One change (or a pair) at a time against the defaults (conf/stage/distill.yaml, conf/attention/sla2.yaml and
# sla2-attnbench's own: τ 0.1, 60 steps, AdamW 1e-3, α by least absolute error after training); "" is the defaults.
GRID = (
    "",
    "--tau 0.3 --steps 30",  # the best on the small set's validation split, worse than identity on the large set
    "--tau 0.3",
    "--tau 0.5",
    "--tau-start 0.5 --tau 0.1",
    "--tau-start 1.0 --tau 0.3",
    "--steps 15",
    "--steps 30",
    "--steps 120",
    "--lr 3e-4",
    "--lr 3e-3",
    "--alpha-lr 3e-2",
    "--aux-kl 0.01",
    "--aux-kl 0.1",
    "--identity-decay 1e-4",
    "--identity-decay 1e-2",
    "--detach-lambda",
    "--train-contents 12",
    "--calibrate-at start",
    "--calibrate least_squares",
    "--calibrate mass",
    "--objective mass_kl",
)

# name -> sla2-attnbench options of the set; the sets hold the most train contents any variant asks for.
SETS = {
    "default": "--grid 4 16 24 --train-contents 12 --validation-contents 4 --heldout-contents 4",
    "large": "--grid 8 32 48 --train-contents 12 --validation-contents 4 --heldout-contents 4",
    # the shipped testbed model's attention on rendered scenes (docs/results.md); 3 held-out scenes are too few
    "testbed": "--source testbed --model-path assets/testbed-t2v --train-contents 12 --validation-contents 12 "
               "--heldout-contents 12",
}
DEFAULT_SETS = ("default", "large")
BASE_TRAIN_CONTENTS = 6  # the benchmark's default; a variant's --train-contents takes the first n of the set
LARGE_VARIANTS = 4  # variants run on the large set: the defaults and the best on the default set
FIRST_SET_SHARE = 0.6


def set_args(set_options: str, device: str) -> argparse.Namespace:
    return bench_parser().parse_args([*set_options.split(), "--device", device])


def variant_args(set_options: str, variant: str, device: str) -> argparse.Namespace:
    """The set's options with the variant's on top; train contents default to the benchmark's own count."""
    args = set_args(set_options, device)
    args.train_contents = BASE_TRAIN_CONTENTS
    override, given = bench_parser().parse_args(variant.split()), set(variant.split())
    for key, value in vars(override).items():
        if f"--{key.replace('_', '-')}" in given:
            setattr(args, key, value)
    return args


def score(summary: list[dict]) -> dict:
    """Overall gap closed per sparsity, their mean, and whether SLA2 ≤ sparse-only for the learned router."""
    overall = [e for e in summary if e["layer"] == "overall"]
    heads = [e for e in summary if e["layer"] != "overall"]
    gaps = {f"{e['sparsity']:.2f}": e["gap_closed"] for e in overall}
    known = [g for g in gaps.values() if g is not None]
    return {
        "gap_closed": gaps,
        "mean_gap_closed": mean(known) if known else None,
        "min_gap_closed": min(known) if known else None,
        "alpha_ok": all(e["learned"]["sla2_l1"] <= e["learned"]["sparse_l1"] + 1e-6 for e in heads),
    }


def measure(splits, split: str, variant: str, set_options: str, device: torch.device) -> dict:
    args = variant_args(set_options, variant, str(device))
    recipe = build_recipe(args)
    train = splits.train.first_draws(args.train_contents)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    rows = run(train, splits.measured(split), recipe, args.sparsities, args.block_q, args.block_k,
               progress=lambda _: None)
    summary = summarise(rows)
    return {"variant": variant or "(defaults)", "split": split, "seconds": time.perf_counter() - start,
            **score(summary), "summary": summary}


def _rank(r: dict) -> tuple:
    """The goal holds at every sparsity, so the worst sparsity ranks first, the mean breaks ties."""
    low = float("-inf")
    return (r["min_gap_closed"] if r["min_gap_closed"] is not None else low,
            r["mean_gap_closed"] if r["mean_gap_closed"] is not None else low)


def best(results: list[dict]) -> dict:
    """The highest worst-sparsity validation gap closed among the variants whose α never makes SLA2 worse than
    sparse-only (all variants if none qualifies)."""
    ok = [r for r in results if r["alpha_ok"] and r["min_gap_closed"] is not None] or results
    return max(ok, key=_rank)


def _cell(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(results: list[dict], sparsities: list[str]) -> str:
    lines = ["| variant | split | " + " | ".join(f"gap closed {s}" for s in sparsities)
             + " | min | mean | SLA2 ≤ sparse | s |", "|---|---|" + "---|" * (len(sparsities) + 4)]
    for r in results:
        cells = [f"`{r['variant']}`", r["split"], *(_cell(r["gap_closed"].get(s)) for s in sparsities),
                 _cell(r["min_gap_closed"]), _cell(r["mean_gap_closed"]), "yes" if r["alpha_ok"] else "**no**",
                 f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout_table(result: dict) -> str:
    """Per-head held-out table of one run (sparse / SLA2 relative L1 of each router)."""
    lines = ["| sparsity | head | identity | learned | bestmass | recall id → learned | gap closed |",
             "|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        pair = lambda r: f"{e[r]['sparse_l1']:.3f} / {e[r]['sla2_l1']:.3f}"  # noqa: E731
        head = "overall" if e["layer"] == "overall" else f"{e['label']}"
        gap = _cell(e["gap_closed"])
        lines.append(f"| {e['sparsity']:.2f} | {head} | {pair('identity')} | {pair('learned')} | {pair('bestmass')} "
                     f"| {e['identity']['recall']:.2f} → {e['learned']['recall']:.2f} | "
                     + (f"**{gap}**" if e["layer"] == "overall" else gap) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sla2_train.attnbench.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), help=f"of {list(SETS)}")
    p.add_argument("--grid", nargs="+", default=None,
                   help="variants (quoted option strings); default: the built-in grid")
    p.add_argument("--large-variants", type=int, default=LARGE_VARIANTS)
    p.add_argument("--budget-s", type=float, default=220.0, help="the whole sweep's time budget (module docstring)")
    p.add_argument("--set-options", default=None, help="replace every set's options (tests, quick looks)")
    p.add_argument("--out", default=None, help="default: $OUT/stage1_sweep, else outputs/stage1_sweep")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out or os.path.join(os.environ.get("OUT", "outputs"), "stage1_sweep"))
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        print(f"sweep: unknown --sets {unknown}; choose from {list(SETS)}", file=sys.stderr)
        return 2
    grid = list(args.grid) if args.grid is not None else list(GRID)
    device = torch.device(args.device)
    started = time.perf_counter()
    report = {"card": card(device), "command": "python -m sla2_train.attnbench.sweep " + " ".join(sys.argv[1:]
              if argv is None else argv), "sets": {}}
    md = [f"Card: {report['card']}", f"Command: `{report['command']}`", ""]
    previous_best: list[str] = []
    for i, name in enumerate(args.sets):
        # the first set runs the whole grid, the others a few variants: it gets 60% of the budget
        deadline = started + args.budget_s * (FIRST_SET_SHARE if i == 0 and len(args.sets) > 1 else 1.0)
        options = args.set_options or SETS[name]
        splits = load_sets(set_args(options, str(device)))
        splits = type(splits)(*(s.to(device) for s in splits))
        variants = grid if not previous_best else ([""] + [v for v in previous_best if v])[: args.large_variants]
        results, skipped = [], []
        for variant in variants:
            if results and time.perf_counter() + 3 * results[-1]["seconds"] > deadline:
                print(f"[{name}] budget spent: skipping `{variant}`", flush=True)
                skipped.append(variant)
                continue
            results.append(measure(splits, "validation", variant, options, device))
            r = results[-1]
            print(f"[{name}] {r['variant']}: validation gap closed {r['gap_closed']} α ok {r['alpha_ok']} "
                  f"({r['seconds']:.0f} s)", flush=True)
        chosen = best(results)
        previous_best = [r["variant"].replace("(defaults)", "") for r in sorted(results, key=_rank, reverse=True)]
        held = [measure(splits, "heldout", v, options, device)
                for v in dict.fromkeys(["", chosen["variant"].replace("(defaults)", "")])]
        sparsities = list(results[0]["gap_closed"])
        report["sets"][name] = {"options": options, "validation": results, "chosen": chosen["variant"],
                                "heldout": held, "skipped": skipped}
        md += [f"### Set `{name}` ({options})", "", table(results + held, sparsities), "",
               f"Chosen on validation: `{chosen['variant']}`."
               + (f" Skipped (budget): {', '.join(f'`{v}`' for v in skipped)}." if skipped else ""), ""]
        for h in held:
            md += [f"Held-out, `{h['variant']}`:", "", heldout_table(h), ""]
        out.mkdir(parents=True, exist_ok=True)  # written after each set: a run cut short keeps what it measured
        (out / "sweep.json").write_text(json.dumps(report, indent=1))
        (out / "sweep.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.md'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
