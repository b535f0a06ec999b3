"""scripts/testbed/tables.sh (docs/testbed.md) in two ways.

With PLAN=1 and every option on (REFIT_ALPHA, REFIT_ROUTER, JOINT_ROUTER, TEACHER, SWAP_ALPHA, BASE_MASKS,
EVAL_STAGE1, EVAL_BESTMASS, STAGE1_VAL) at two sparsities: the commands it would run, each training, table and
video command composed with Hydra and type-checked as train.py, the table and eval.py would, and each run wired to
the checkpoints it must start from or film, in waves that finish them first; a sparsity to film that the chain
does not train, and an unknown prompt split, are refused in one line.

End to end on a CPU at a small size, at one sparsity (a second adds the same commands under other names, whose
wiring the plan checks) and with the options off (each option's runs are the same commands with other overrides,
checked above; what they train is tested where it is built: lit/test_stage2_recipe.py,
models/test_base_selection.py, testbed/test_swap_alpha.py, attention/test_bestmass.py): every training run of the
core chain, stage 1 validated on held-out clips, the attention table with Table 2's rows, videos of stage 2 and of
the heuristic router and the bf16 fine-tune, on training-split prompts, the paired comparisons and the breakdowns
by object.
"""

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sla2_train.testbed.captions import parse_caption
from sla2_train.testbed.scenes import HELDOUT_COMBINATIONS

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "TRAINER": "cpu", "DEVICE": "cpu", "HEIGHT": "32", "WIDTH": "64", "SPARSITIES": "0.5 0.75",
    "EVAL_SPARSITIES": "0.5 0.75", "STEPS": "1", "N_TRAIN": "4", "PROMPTS": "3", "EVAL_PROMPTS": "1",
    "PARALLEL": "2", "EVAL_PARALLEL": "2", "WORKERS": "1", "OMP_NUM_THREADS": "1", "STAGE1_VAL": "2",
    "STAGE1_VAL_EVERY": "1", "PYTHON": sys.executable,
    "TABLE_ARGS": "num_inference_steps=2 steps=[0,1]", "EVAL_ARGS": "num_inference_steps=2",
    # small batches: the chain's wiring is under test, and stage 2's default batch of 8 is most of a run's CPU time
    "STAGE1_ARGS": "data.batch_size=1", "STAGE2_ARGS": "trainer.max_steps=2 data.batch_size=2", "EVAL_SPLIT": "train",
}
EVERY_OPTION = {option: "1" for option in ("REFIT_ALPHA", "REFIT_ROUTER", "JOINT_ROUTER", "TEACHER", "SWAP_ALPHA",
                                           "BASE_MASKS", "EVAL_STAGE1", "EVAL_BESTMASS")}


def _chain(work: Path, **changes) -> subprocess.CompletedProcess:
    env = {**os.environ, **SETTINGS, **changes, "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "kernels"), env.get("PYTHONPATH", "")])
    return subprocess.run(["bash", "scripts/testbed/tables.sh", str(work), "data.num_workers=0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _overrides(args: list[str]) -> dict[str, str]:
    """key=value arguments as a dict (the last one of a key wins, as in Hydra), `+`/`++` prefixes dropped."""
    pairs = (a.split("=", 1) for a in args if "=" in a)
    return {k.lstrip("+"): v for k, v in pairs}


def _run_of(checkpoint: str) -> str:
    """The training run a planned checkpoint glob belongs to: WORK/runs/RUN/*/checkpoints/last.ckpt -> RUN."""
    return checkpoint.split("/runs/")[1].split("/")[0]


def _plan(work: Path) -> tuple[list[tuple[str, list[str]]], list[int]]:
    """(the planned commands as (name, argv), the index of the first command after each `plan wait`)."""
    res = _chain(work, PLAN="1", **EVERY_OPTION)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    commands, waves = [], []
    for line in res.stdout.splitlines():
        words = shlex.split(line)
        assert words[0] == "plan", line  # nothing else on stdout
        if words[1:] == ["wait"]:
            waves.append(len(commands))
        else:
            commands.append((words[1], words[2:]))
    return commands, waves


def test_the_plan_of_every_option_composes_and_wires_each_run(tmp_path):
    from hydra import compose, initialize_config_dir

    from sla2_train.config_types import check_config_types

    work = tmp_path / "w"
    commands, waves = _plan(work)
    assert not work.exists()  # PLAN writes nothing
    order = {name: i for i, (name, _) in enumerate(commands)}
    assert len(order) == len(commands)  # one command a name
    ckpt = lambda run: f"{work}/runs/{run}/*/checkpoints/last.ckpt"  # noqa: E731
    wave = lambda name: sum(order[name] >= w for w in waves)  # noqa: E731

    def after(name: str, producer: str):  # name starts in a later wave than producer, which has finished by then
        assert wave(name) > wave(producer), (name, producer)

    trains = {name: _overrides(argv[2:]) for name, argv in commands if argv[1:2] == ["train.py"]}
    assert set(trains) == {
        "stage1-0.5", "stage1-0.75", "stage1-heuristic-0.75", "stage2-heuristic-0.75", "stage2-heuristic-teacher-0.75",
        "stage2-heuristic-basemask-0.75", "stage2-0.5", "stage2-refit-0.5", "stage2-0.75", "stage2-refit-0.75",
        "stage2-bf16-0.75", "stage2-joint-0.75", "stage2-swapalpha-0.75", "stage2-heuristic-swapalpha-0.75",
        "stage2-basemask-0.75", "stage2-teacher-0.75", "stage2-router-0.75"}
    for name, o in trains.items():
        assert o["output_root"] == f"{work}/runs/{name}" and o["data.num_workers"] == "0", name  # the caller's last
        assert o["attention.sparsity"] == name.rsplit("-", 1)[1], name
        starts = o.get("init_from", "")
        if "/runs/" in starts:
            after(name, _run_of(starts))
    for s in ("0.5", "0.75"):
        assert trains[f"stage1-{s}"]["stage"] == "distill"
        assert trains[f"stage1-{s}"]["data.val_shards"] == f"{work}/val-shards"  # STAGE1_VAL
        assert trains[f"stage2-{s}"]["init_from"] == ckpt(f"stage1-{s}")
        assert trains[f"stage2-refit-{s}"]["init_from"] == ckpt(f"stage1-{s}")  # REFIT_ALPHA: α fitted at the end
        assert trains[f"stage2-refit-{s}"]["stage.calibrate_alpha"].endswith("when:end}")
    h = trains["stage1-heuristic-0.75"]
    assert (h["stage.train"], h["trainer.max_steps"], h["stage.allow_untrained_router"]) == ("[alpha]", "1", "true")
    for name in ("stage2-heuristic-0.75", "stage2-heuristic-teacher-0.75", "stage2-heuristic-basemask-0.75"):
        assert "init_from" not in trains[name] and trains[name]["stage.allow_untrained_router"] == "true", name
        assert trains[name]["stage.calibrate_alpha"].endswith("when:start}"), name
    for name in ("stage2-bf16-0.75", "stage2-joint-0.75", "stage2-basemask-0.75", "stage2-teacher-0.75"):
        assert trains[name]["init_from"] == ckpt("stage1-0.75"), name
    assert trains["stage2-bf16-0.75"]["stage.attention_mode.quant"] == "false"
    assert trains["stage2-joint-0.75"]["stage"] == "qat_router"  # JOINT_ROUTER
    for name in ("stage2-teacher-0.75", "stage2-heuristic-teacher-0.75"):  # TEACHER
        assert trains[name]["stage.objective.teacher"].startswith("{_target_:sla2_train.lit.teacher.DenseTeacher"), name
    for name in ("stage2-basemask-0.75", "stage2-heuristic-basemask-0.75"):  # BASE_MASKS
        assert trains[name]["attention.selection"] == "base", name
    assert (trains["stage2-router-0.75"]["stage"], trains["stage2-router-0.75"]["init_from"]) == (  # REFIT_ROUTER
        "distill", ckpt("stage2-0.75"))
    # SWAP_ALPHA: each stage 1's router with the other's α, made once both stage 1s have finished
    swaps = {name: argv[2:] for name, argv in commands if name.startswith("swap-")}
    assert swaps == {
        "swap-learned-router-heuristic-alpha": [ckpt("stage1-0.75"), ckpt("stage1-heuristic-0.75"),
                                                f"{work}/swap/learned-router-heuristic-alpha.ckpt"],
        "swap-heuristic-router-learned-alpha": [ckpt("stage1-heuristic-0.75"), ckpt("stage1-0.75"),
                                                f"{work}/swap/heuristic-router-learned-alpha.ckpt"]}
    for swap, run in (("swap-learned-router-heuristic-alpha", "stage2-swapalpha-0.75"),
                      ("swap-heuristic-router-learned-alpha", "stage2-heuristic-swapalpha-0.75")):
        after(swap, "stage1-heuristic-0.75")
        assert order[swap] < order[run] and trains[run]["init_from"] == swaps[swap][2]
    assert trains["stage2-heuristic-swapalpha-0.75"]["stage.allow_untrained_router"] == "true"

    # the table: Table 2's rows, each from its run's checkpoint, once every run has finished
    (table,) = [argv for name, argv in commands if name == "table"]
    t = _overrides(table[3:])
    assert t["stage1"] == f"[{ckpt('stage1-0.5')},{ckpt('stage1-0.75')}]"
    assert t["stage2"] == f"[{ckpt('stage2-0.5')},{ckpt('stage2-0.75')}]"
    rows = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("stage2_variants.")}
    assert rows == {
        "heuristic_router_qat": f"[{ckpt('stage2-heuristic-0.75')}]",
        "heuristic_router_qat_teacher": f"[{ckpt('stage2-heuristic-teacher-0.75')}]",
        "bf16_finetune": f"[{ckpt('stage2-bf16-0.75')}]", "qat_joint_router": f"[{ckpt('stage2-joint-0.75')}]",
        "qat_heuristic_alpha": f"[{ckpt('stage2-swapalpha-0.75')}]",
        "heuristic_router_qat_learned_alpha": f"[{ckpt('stage2-heuristic-swapalpha-0.75')}]",
        "qat_teacher": f"[{ckpt('stage2-teacher-0.75')}]", "qat_router_refit": f"[{ckpt('stage2-router-0.75')}]",
        "qat_alpha_refit": f"[{ckpt('stage2-refit-0.5')},{ckpt('stage2-refit-0.75')}]"}  # no rows for BASE_MASKS
    for name in trains:
        after("table", name)

    # the videos: each run's checkpoint, sparsity and blocks, on the training split's prompts
    evals = {name[len("eval-"):]: _overrides(argv[2:]) for name, argv in commands if name.startswith("eval-")}
    filmed = {run: (float(o["attention.sparsity"]), o.get("attention.selection", "router"),
                    _run_of(o["ckpt"])) for run, o in evals.items()}
    assert filmed == {
        "stage2-0.75": (0.75, "router", "stage2-0.75"), "stage2-0.5": (0.5, "router", "stage2-0.5"),
        "stage2-heuristic-0.75": (0.75, "router", "stage2-heuristic-0.75"),
        "stage2-heuristic-teacher-0.75": (0.75, "router", "stage2-heuristic-teacher-0.75"),
        "stage2-bf16-0.75": (0.75, "router", "stage2-bf16-0.75"),
        "stage2-joint-0.75": (0.75, "router", "stage2-joint-0.75"),
        "stage2-swapalpha-0.75": (0.75, "router", "stage2-swapalpha-0.75"),
        "stage2-heuristic-swapalpha-0.75": (0.75, "router", "stage2-heuristic-swapalpha-0.75"),
        "stage2-teacher-0.75": (0.75, "router", "stage2-teacher-0.75"),
        "stage2-router-0.75": (0.75, "router", "stage2-router-0.75"),
        "stage2-basemask-0.75": (0.75, "base", "stage2-basemask-0.75"),  # BASE_MASKS, filmed on the same blocks
        "stage2-heuristic-basemask-0.75": (0.75, "base", "stage2-heuristic-basemask-0.75"),
        "stage2-refit-0.75": (0.75, "router", "stage2-refit-0.75"),
        "stage2-refit-0.5": (0.5, "router", "stage2-refit-0.5"),
        "stage2-bestmass-0.75": (0.75, "bestmass", "stage2-0.75"),  # EVAL_BESTMASS: each QAT DiT, the oracle's blocks
        "stage2-heuristic-bestmass-0.75": (0.75, "bestmass", "stage2-heuristic-0.75"),
        "stage1-0.5": (0.5, "router", "stage1-0.5"), "stage1-0.75": (0.75, "router", "stage1-0.75"),  # EVAL_STAGE1
        "stage1-heuristic-0.75": (0.75, "router", "stage1-heuristic-0.75"),
        "stage1-bestmass-0.75": (0.75, "bestmass", "stage1-0.75")}
    for run, o in evals.items():
        assert o["output_root"] == f"{work}/eval-{run}" and o["prompts"] == f"{work}/prompts-train/prompts.txt", run
        assert o["quant"] == "true" and o["max_prompts"] == "1", run
        after(f"eval-{run}", _run_of(o["ckpt"]))

    # the paired comparisons (Table 2's video ablations) and the breakdowns over every video run
    report = lambda run: f"{work}/eval-{run}/eval/*/*/eval.json"  # noqa: E731
    pairs = [(argv[3], argv[4]) for name, argv in commands if name.startswith("compare-")]
    expected = [("stage2-0.75", "stage2-heuristic-0.75"), ("stage2-0.75", "stage2-bf16-0.75"),
                ("stage2-refit-0.75", "stage2-0.75"), ("stage2-router-0.75", "stage2-0.75"),
                ("stage2-joint-0.75", "stage2-0.75"), ("stage2-joint-0.75", "stage2-heuristic-0.75"),
                ("stage2-swapalpha-0.75", "stage2-0.75"), ("stage2-heuristic-swapalpha-0.75", "stage2-heuristic-0.75"),
                ("stage2-swapalpha-0.75", "stage2-heuristic-0.75"), ("stage2-heuristic-swapalpha-0.75", "stage2-0.75"),
                ("stage2-basemask-0.75", "stage2-0.75"), ("stage2-heuristic-basemask-0.75", "stage2-heuristic-0.75"),
                ("stage2-basemask-0.75", "stage2-heuristic-basemask-0.75"),
                ("stage2-teacher-0.75", "stage2-0.75"), ("stage2-heuristic-teacher-0.75", "stage2-heuristic-0.75"),
                ("stage2-teacher-0.75", "stage2-heuristic-teacher-0.75"),
                ("stage2-bestmass-0.75", "stage2-0.75"), ("stage2-heuristic-bestmass-0.75", "stage2-heuristic-0.75"),
                ("stage2-bestmass-0.75", "stage2-heuristic-bestmass-0.75"),
                ("stage2-0.5", "stage1-0.5"), ("stage2-0.75", "stage1-0.75"),
                ("stage1-0.75", "stage1-heuristic-0.75"), ("stage1-bestmass-0.75", "stage1-0.75")]
    assert pairs == [(report(a), report(b)) for a, b in expected]
    for name, _ in commands:
        if name.startswith(("compare-", "breakdown-")):
            assert all(order[name] > order[f"eval-{run}"] for run in evals) and wave(name) == len(waves), name
    breakdowns = {name: argv for name, argv in commands if name.startswith("breakdown-")}
    assert set(breakdowns) == {f"breakdown-{by}" for by in ("colour", "shape", "direction", "objects")}
    assert all(sorted(argv[3:3 + len(evals)]) == sorted(report(run) for run in evals) for argv in breakdowns.values())

    # each command as its program composes it, and the training and video configs' type check
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, argv in commands:
            if argv[1:2] == ["train.py"]:
                check_config_types(compose("config", overrides=argv[2:]))
            elif argv[1:2] == ["eval.py"]:
                check_config_types(compose("eval", overrides=argv[2:]))
            elif name == "table":
                compose("attnbench_table", overrides=table[3:])

    # what the chain cannot do is refused in one line before anything runs
    refused = _chain(tmp_path / "x", EVAL_SPARSITIES="0.6")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "tables.sh: EVAL_SPARSITIES has 0.6, not one of SPARSITIES (0.5 0.75)"
    refused = _chain(tmp_path / "x", EVAL_SPLIT="test")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "tables.sh: EVAL_SPLIT must be heldout or train, got 'test'"
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_chain_trains_measures_and_films_every_run(tmp_path):
    import torch

    work = tmp_path / "w"
    res = _chain(work, SPARSITIES="0.75", EVAL_SPARSITIES="0.75")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    steps = {}
    for ckpt in work.glob("runs/*/*/checkpoints/last.ckpt"):
        steps[ckpt.parts[-4]] = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert steps == {"stage1-0.75": 1,  # STAGE2_ARGS: stage 2 only
                     **{run: 2 for run in ("stage2-0.75", "stage2-heuristic-0.75", "stage2-bf16-0.75")}}
    # STAGE1_VAL: each stage 1 validated on clips of held-out combinations, the router's error in its CSV log
    val_prompts = (work / "val" / "prompts.txt").read_text().split("\n")
    val_claims = [[(c.colour, c.shape, c.direction) for c in parse_caption(p)] for p in val_prompts if p.strip()
                  and not p.startswith("#")]
    assert len(val_claims) == 2 and all(set(c) & HELDOUT_COMBINATIONS for c in val_claims)
    with open(next(work.glob("runs/stage1-0.75/*/csv/version_0/metrics.csv"))) as f:
        logged = [float(r["val/router/sla2_l1"]) for r in csv.DictReader(f) if r.get("val/router/sla2_l1")]
    assert logged and all(math.isfinite(v) and v > 0 for v in logged), logged

    table = json.loads((work / "table" / "attention_table.json").read_text())
    measured = {(row["sparsity"], row["method"]) for row in table["rows"] if row["mean"] is not None}
    for method in ("sparse_heuristic", "sla", "sla2_untrained", "sla2_stage1", "sla2_stage2", "bestmass"):
        assert (0.75, method) in measured
    # Table 2's variants, at the last sparsity
    assert {(s, method) for s, method in measured if method.startswith("sla2_stage2:")} == {
        (0.75, "sla2_stage2:heuristic_router_qat"), (0.75, "sla2_stage2:bf16_finetune")}
    for row in table["rows"]:
        if row["mean"] is not None:  # the breakdown covers the two measured steps, both guidance branches
            assert {(e["step"], e["branch"]) for e in row["by_step_and_branch"]} == {
                (0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")}

    filmed = {}
    for path in work.glob("eval-*/eval/*/*/eval.json"):
        report = json.loads(path.read_text())
        # EVAL_SPLIT=train: new scenes of the training split, none holding a held-out combination
        assert report["settings"]["prompt_set"] == str(work / "prompts-train" / "prompts.txt")
        claims = [c for p in report["settings"]["prompts"] for c in parse_caption(p)]
        assert claims and not {(c.colour, c.shape, c.direction) for c in claims} & HELDOUT_COMBINATIONS
        attention = report["settings"]["attention"]
        assert all(v["details"]["prompt_following"] for v in report["videos"])  # per object: claimed and seen
        filmed[path.parts[-5][len("eval-"):]] = (attention["sparsity"], attention["selection"],
                                                 Path(report["settings"]["checkpoint"]["path"]).parts[-4])
    assert filmed == {run: (float(run.rsplit("-", 1)[1]), "router", run)
                      for run in ("stage2-0.75", "stage2-heuristic-0.75", "stage2-bf16-0.75")}

    for a, b in (("stage2-0.75", "stage2-heuristic-0.75"), ("stage2-0.75", "stage2-bf16-0.75")):
        compared = json.loads((work / f"compare-{a}-vs-{b}.json").read_text())
        assert compared["paired"]["prompt_following"]["n"] == 1  # EVAL_PROMPTS=1: one video a side
        assert f"/eval-{a}/" in compared["a"]["path"] and f"/eval-{b}/" in compared["b"]["path"]
    assert sorted(p.name for p in work.glob("compare-*.json")) == [
        "compare-stage2-0.75-vs-stage2-bf16-0.75.json", "compare-stage2-0.75-vs-stage2-heuristic-0.75.json"]

    by_colour = json.loads((work / "breakdown-colour.json").read_text())
    assert by_colour["per_object"] and by_colour["columns"][0] == "dense"
    assert set(by_colour["columns"][1:]) == set(filmed)
