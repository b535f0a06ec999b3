"""The stage-1 recipe sweep: variants judged on validation, the chosen one and the defaults on held-out."""

import json
from pathlib import Path

import pytest

from sla2_train.attnbench import sweep
from sla2_train.attnbench.cli import build_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY_SET = ("--grid 2 4 8 --head-dim 16 --regimes local global --block-q 16 --block-k 8 --train-contents 3 "
            "--validation-contents 1 --heldout-contents 1 --sparsities 0.75 --batch 1 --steps 2")


def test_a_variant_changes_only_what_it_names():
    args = sweep.variant_args(TINY_SET, "--tau 0.7 --detach-lambda", "cpu")
    base = sweep.variant_args(TINY_SET, "", "cpu")
    changed = {k for k in vars(args) if getattr(args, k) != getattr(base, k)}
    assert changed == {"tau", "detach_lambda"} and args.tau == 0.7 and args.steps == 2
    assert base.train_contents == sweep.BASE_TRAIN_CONTENTS  # the set holds more, for variants that ask
    assert sweep.variant_args(TINY_SET, "--train-contents 3", "cpu").train_contents == 3
    assert build_recipe(args).tau == 0.7


def test_sweep_chooses_on_validation_and_reports_held_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "BASE_TRAIN_CONTENTS", 2)
    grid = ["", "--tau 0.3", "--train-contents 3"]
    out = tmp_path / "sweep"
    assert sweep.main(["--device", "cpu", "--sets", "default", "--set-options", TINY_SET, "--grid", *grid,
                       "--out", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    got = report["sets"]["default"]
    assert [r["variant"] for r in got["validation"]] == ["(defaults)", "--tau 0.3", "--train-contents 3"]
    assert all(r["split"] == "validation" for r in got["validation"])
    assert got["chosen"] == sweep.best(got["validation"])["variant"]
    held = [r["variant"] for r in got["heldout"]]
    assert held[0] == "(defaults)" and held[-1] == got["chosen"]
    assert all(r["split"] == "heldout" for r in got["heldout"])
    md = (out / "sweep.md").read_text()
    assert "| `--tau 0.3` | validation |" in md and "Held-out, `(defaults)`" in md and report["card"] in md


def test_best_ranks_by_the_worst_sparsity_among_variants_whose_alpha_is_never_worse():
    rows = [{"variant": "a", "alpha_ok": False, "min_gap_closed": 0.9, "mean_gap_closed": 0.9},
            {"variant": "b", "alpha_ok": True, "min_gap_closed": 0.4, "mean_gap_closed": 0.5},
            {"variant": "c", "alpha_ok": True, "min_gap_closed": 0.3, "mean_gap_closed": 0.7},  # worse worst case
            {"variant": "d", "alpha_ok": True, "min_gap_closed": None, "mean_gap_closed": None}]
    assert sweep.best(rows)["variant"] == "b"


def test_bad_sets_are_refused(capsys, tmp_path):
    assert sweep.main(["--sets", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown --sets ['huge']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds only"):
        sweep.load_sets(sweep.set_args(TINY_SET, "cpu")).train.first_draws(9)


def test_a_spent_budget_skips_variants_but_keeps_the_defaults_and_held_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "BASE_TRAIN_CONTENTS", 2)
    out = tmp_path / "sweep"
    assert sweep.main(["--device", "cpu", "--sets", "default", "--set-options", TINY_SET, "--budget-s", "0",
                       "--grid", "", "--tau 0.7", "--out", str(out)]) == 0
    got = json.loads((out / "sweep.json").read_text())["sets"]["default"]
    assert [r["variant"] for r in got["validation"]] == ["(defaults)"] and got["skipped"] == ["--tau 0.7"]
    assert [r["variant"] for r in got["heldout"]] == ["(defaults)"]
    assert "Skipped (budget): `--tau 0.7`." in (out / "sweep.md").read_text()


def test_the_testbed_set_reads_the_shipped_model_and_is_not_in_the_default_sweep():
    args = sweep.set_args(sweep.SETS["testbed"], "cpu")
    assert args.source == "testbed" and (ROOT / args.model_path / "transformer" / "config.json").is_file()
    assert args.heldout_contents >= 12  # 3 scenes measured 0.40 and 0.70 for the same router
    assert sweep.parser().parse_args([]).sets == ["default", "large"]
