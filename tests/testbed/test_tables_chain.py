"""scripts/testbed/tables.sh end to end on a CPU at a small size (docs/testbed.md): every training run of the
chain, the attention table with Table 2's rows, videos of stage 2 and of stage 1 alone at two sparsities, of the
heuristic's and the best-mass oracle's blocks, on training-split prompts, the paired comparisons and the
breakdowns by object, stage 1 run again on stage 2's transformer (REFIT_ROUTER), a stage 2 that trains the
router too (JOINT_ROUTER), each router's stage 2 with a dense teacher (TEACHER), with the other router's α
(SWAP_ALPHA) and on the base DiT's blocks (BASE_MASKS), stage 1 validated on held-out clips (STAGE1_VAL) and the
two QAT stage 2s filmed with the best-mass oracle's blocks (EVAL_BESTMASS); then a sparsity to film that the chain
does not train, and an unknown prompt split, are refused in one line. (REFIT_ALPHA's runs are left out: two more
trainings and videos of the same kind, a minute of CI.)"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from sla2_train.testbed.captions import parse_caption
from sla2_train.testbed.scenes import HELDOUT_COMBINATIONS

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "TRAINER": "cpu", "DEVICE": "cpu", "HEIGHT": "32", "WIDTH": "64", "SPARSITIES": "0.5 0.75",
    "EVAL_SPARSITIES": "0.5 0.75", "STEPS": "1", "N_TRAIN": "4", "PROMPTS": "3", "EVAL_PROMPTS": "1",
    "REFIT_ALPHA": "0", "REFIT_ROUTER": "1", "JOINT_ROUTER": "1", "EVAL_STAGE1": "1", "PARALLEL": "2",
    "EVAL_PARALLEL": "2", "WORKERS": "1", "OMP_NUM_THREADS": "1", "STAGE1_VAL": "2", "STAGE1_VAL_EVERY": "1",
    "EVAL_BESTMASS": "1", "TEACHER": "1", "SWAP_ALPHA": "1", "BASE_MASKS": "1",
    "PYTHON": sys.executable,
    "TABLE_ARGS": "num_inference_steps=2 steps=[0,1]", "EVAL_ARGS": "num_inference_steps=2",
    # small batches: the chain's wiring is under test, and stage 2's default batch of 8 is most of a run's CPU time
    "STAGE1_ARGS": "data.batch_size=1", "STAGE2_ARGS": "trainer.max_steps=2 data.batch_size=2", "EVAL_SPLIT": "train",
}


def _chain(work: Path, **changes) -> subprocess.CompletedProcess:
    env = {**os.environ, **SETTINGS, **changes, "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "kernels"), env.get("PYTHONPATH", "")])
    return subprocess.run(["bash", "scripts/testbed/tables.sh", str(work), "data.num_workers=0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_chain_trains_measures_and_films_every_run(tmp_path):
    import torch

    work = tmp_path / "w"
    res = _chain(work)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    steps = {}
    for ckpt in work.glob("runs/*/*/checkpoints/last.ckpt"):
        steps[ckpt.parts[-4]] = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    stage2 = ["stage2-0.5", "stage2-0.75", "stage2-heuristic-0.75", "stage2-bf16-0.75", "stage2-joint-0.75",
              "stage2-teacher-0.75", "stage2-heuristic-teacher-0.75", "stage2-swapalpha-0.75",
              "stage2-heuristic-swapalpha-0.75", "stage2-basemask-0.75", "stage2-heuristic-basemask-0.75"]
    assert steps == {"stage1-0.5": 1, "stage1-0.75": 1, "stage1-heuristic-0.75": 1,  # STAGE2_ARGS: stage 2 only
                     "stage2-router-0.75": 1, **{run: 2 for run in stage2}}
    # REFIT_ROUTER: stage 1 on stage 2's transformer keeps that transformer and trains the router further
    refit, qat = (torch.load(next(work.glob(f"runs/{run}/*/checkpoints/last.ckpt")), map_location="cpu",
                             weights_only=True)["state_dict"] for run in ("stage2-router-0.75", "stage2-0.75"))
    assert refit.keys() == qat.keys()
    assert all(torch.equal(refit[k], qat[k]) for k in qat if ".router." not in k and ".alpha" not in k)
    assert any(not torch.equal(refit[k], qat[k]) for k in qat if ".router.proj_" in k)
    # JOINT_ROUTER: stage 2 from stage 1 that moves the router as well as the DiT
    joint, stage1 = (torch.load(next(work.glob(f"runs/{run}/*/checkpoints/last.ckpt")), map_location="cpu",
                                weights_only=True)["state_dict"] for run in ("stage2-joint-0.75", "stage1-0.75"))
    for part in (".router.proj_", ".to_q."):
        assert any(not torch.equal(joint[k], stage1[k]) for k in stage1 if part in k), part
    # TEACHER: each router's stage 2 ran both of the teacher's terms
    for run in ("stage2-teacher-0.75", "stage2-heuristic-teacher-0.75"):
        with open(next(work.glob(f"runs/{run}/*/csv/version_0/metrics.csv"))) as f:
            rows = list(csv.DictReader(f))
        for key in ("train/flow/teacher_mse", "train/flow/teacher_guided_mse"):
            logged = [float(r[key]) for r in rows if r.get(key)]
            assert logged and all(math.isfinite(v) and v > 0 for v in logged), (run, key, logged)
    # SWAP_ALPHA: each router's stage 1 with the other's α (the heuristic's router at identity), which its stage 2
    # starts from
    stage1, heuristic = (torch.load(next(work.glob(f"runs/{run}/*/checkpoints/last.ckpt")), map_location="cpu",
                                    weights_only=True)["state_dict"]
                         for run in ("stage1-0.75", "stage1-heuristic-0.75"))
    for name, router, alpha in (("learned-router-heuristic-alpha", stage1, heuristic),
                                ("heuristic-router-learned-alpha", heuristic, stage1)):
        swapped = torch.load(work / "swap" / f"{name}.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        assert swapped.keys() == router.keys()
        for k, v in swapped.items():
            assert torch.equal(v, (alpha if ".alpha." in k else router)[k]), (name, k)
    assert any(not torch.equal(stage1[k], heuristic[k]) for k in stage1 if ".alpha." in k)
    for run, router in (("stage2-swapalpha-0.75", stage1), ("stage2-heuristic-swapalpha-0.75", heuristic)):
        trained = torch.load(next(work.glob(f"runs/{run}/*/checkpoints/last.ckpt")), map_location="cpu",
                             weights_only=True)["state_dict"]  # stage 2 keeps the router it started from
        assert all(torch.equal(trained[k], router[k]) for k in router if ".router.proj_" in k), run
    # BASE_MASKS: each router's stage 2 trained on the base DiT's blocks
    for run in ("stage2-basemask-0.75", "stage2-heuristic-basemask-0.75"):
        saved = torch.load(next(work.glob(f"runs/{run}/*/checkpoints/last.ckpt")), map_location="cpu",
                           weights_only=True)
        assert saved["sla2"]["attention"]["selection"] == "base", run
    # STAGE1_VAL: each stage 1 validated on clips of held-out combinations, the router's error in its CSV log
    val_prompts = (work / "val" / "prompts.txt").read_text().split("\n")
    val_claims = [[(c.colour, c.shape, c.direction) for c in parse_caption(p)] for p in val_prompts if p.strip()
                  and not p.startswith("#")]
    assert len(val_claims) == 2 and all(set(c) & HELDOUT_COMBINATIONS for c in val_claims)
    for s in ("0.5", "0.75"):
        with open(next(work.glob(f"runs/stage1-{s}/*/csv/version_0/metrics.csv"))) as f:
            logged = [float(r["val/router/sla2_l1"]) for r in csv.DictReader(f) if r.get("val/router/sla2_l1")]
        assert logged and all(math.isfinite(v) and v > 0 for v in logged), (s, logged)
    heuristic = torch.load(next(work.glob("runs/stage1-heuristic-0.75/*/checkpoints/last.ckpt")), map_location="cpu",
                           weights_only=True)["state_dict"]
    eye = torch.eye(heuristic["model.blocks.0.attn1.processor.attention.router.proj_q"].shape[-1])
    assert all(torch.equal(w, eye.expand_as(w)) for name, w in heuristic.items() if ".router.proj_" in name)

    table = json.loads((work / "table" / "attention_table.json").read_text())
    measured = {(row["sparsity"], row["method"]) for row in table["rows"] if row["mean"] is not None}
    for s in (0.5, 0.75):
        for method in ("sparse_heuristic", "sla", "sla2_untrained", "sla2_stage1", "sla2_stage2", "bestmass"):
            assert (s, method) in measured
    # Table 2's variants, and none for BASE_MASKS' runs (filmed only)
    assert {method for _, method in measured if method.startswith("sla2_stage2:")} == {
        "sla2_stage2:heuristic_router_qat", "sla2_stage2:bf16_finetune", "sla2_stage2:qat_router_refit",
        "sla2_stage2:qat_joint_router", "sla2_stage2:qat_teacher", "sla2_stage2:heuristic_router_qat_teacher",
        "sla2_stage2:qat_heuristic_alpha", "sla2_stage2:heuristic_router_qat_learned_alpha"}
    assert all(s == 0.75 for s, method in measured if method.startswith("sla2_stage2:"))
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
    assert filmed == {  # EVAL_STAGE1: stage 1 alone at each, and the heuristic's and the oracle's blocks at the last
        "stage2-0.75": (0.75, "router", "stage2-0.75"),
        "stage2-heuristic-0.75": (0.75, "router", "stage2-heuristic-0.75"),
        "stage2-bf16-0.75": (0.75, "router", "stage2-bf16-0.75"), "stage2-0.5": (0.5, "router", "stage2-0.5"),
        "stage2-router-0.75": (0.75, "router", "stage2-router-0.75"),
        "stage2-joint-0.75": (0.75, "router", "stage2-joint-0.75"),
        "stage2-teacher-0.75": (0.75, "router", "stage2-teacher-0.75"),
        "stage2-heuristic-teacher-0.75": (0.75, "router", "stage2-heuristic-teacher-0.75"),
        "stage2-swapalpha-0.75": (0.75, "router", "stage2-swapalpha-0.75"),
        "stage2-heuristic-swapalpha-0.75": (0.75, "router", "stage2-heuristic-swapalpha-0.75"),
        "stage2-basemask-0.75": (0.75, "base", "stage2-basemask-0.75"),  # BASE_MASKS, filmed on the same blocks
        "stage2-heuristic-basemask-0.75": (0.75, "base", "stage2-heuristic-basemask-0.75"),
        "stage2-bestmass-0.75": (0.75, "bestmass", "stage2-0.75"),  # EVAL_BESTMASS: each QAT DiT, the oracle's blocks
        "stage2-heuristic-bestmass-0.75": (0.75, "bestmass", "stage2-heuristic-0.75"),
        "stage1-0.5": (0.5, "router", "stage1-0.5"), "stage1-0.75": (0.75, "router", "stage1-0.75"),
        "stage1-heuristic-0.75": (0.75, "router", "stage1-heuristic-0.75"),
        "stage1-bestmass-0.75": (0.75, "bestmass", "stage1-0.75")}

    for a, b in (("stage2-0.75", "stage2-heuristic-0.75"), ("stage2-0.75", "stage2-bf16-0.75"),
                 ("stage2-router-0.75", "stage2-0.75"), ("stage2-joint-0.75", "stage2-0.75"),
                 ("stage2-joint-0.75", "stage2-heuristic-0.75"), ("stage2-teacher-0.75", "stage2-0.75"),
                 ("stage2-heuristic-teacher-0.75", "stage2-heuristic-0.75"),
                 ("stage2-teacher-0.75", "stage2-heuristic-teacher-0.75"),
                 ("stage2-swapalpha-0.75", "stage2-0.75"), ("stage2-heuristic-swapalpha-0.75", "stage2-heuristic-0.75"),
                 ("stage2-swapalpha-0.75", "stage2-heuristic-0.75"), ("stage2-heuristic-swapalpha-0.75", "stage2-0.75"),
                 ("stage2-basemask-0.75", "stage2-0.75"), ("stage2-heuristic-basemask-0.75", "stage2-heuristic-0.75"),
                 ("stage2-basemask-0.75", "stage2-heuristic-basemask-0.75"),
                 ("stage2-bestmass-0.75", "stage2-0.75"), ("stage2-heuristic-bestmass-0.75", "stage2-heuristic-0.75"),
                 ("stage2-bestmass-0.75", "stage2-heuristic-bestmass-0.75"),
                 ("stage2-0.75", "stage1-0.75"), ("stage2-0.5", "stage1-0.5"),
                 ("stage1-0.75", "stage1-heuristic-0.75"), ("stage1-bestmass-0.75", "stage1-0.75")):
        compared = json.loads((work / f"compare-{a}-vs-{b}.json").read_text())
        assert compared["paired"]["prompt_following"]["n"] == 1  # EVAL_PROMPTS=1: one video a side
        assert f"/eval-{a}/" in compared["a"]["path"] and f"/eval-{b}/" in compared["b"]["path"]

    by_colour = json.loads((work / "breakdown-colour.json").read_text())
    assert by_colour["per_object"] and by_colour["columns"][0] == "dense"
    assert set(by_colour["columns"][1:]) == set(filmed)

    refused = _chain(tmp_path / "x", EVAL_SPARSITIES="0.6")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "tables.sh: EVAL_SPARSITIES has 0.6, not one of SPARSITIES (0.5 0.75)"
    refused = _chain(tmp_path / "x", EVAL_SPLIT="test")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "tables.sh: EVAL_SPLIT must be heldout or train, got 'test'"
    assert not (tmp_path / "x").exists()
