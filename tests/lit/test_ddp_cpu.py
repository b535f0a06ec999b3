"""train.py under torchrun with two CPU processes (gloo): the DDP path a GPU run takes, minus the GPU."""

import json

import pytest
import torch

from sla2_train.lit.sample_keys import read_sample_keys, split_summary

BATCH, STEPS = 2, 3  # one epoch: data.epoch_length = trainer.max_steps


@pytest.mark.parametrize(
    "stage,extra",
    # stage 1 on one sampled layer a step: every rank's routers and α still get a gradient each step (the other
    # layers' as zeros), as DDP requires; with the opt-in sample-key and throughput logs (stage 1 on every layer
    # runs distributed in test_fsdp_cpu.py)
    [("distill", ["stage.objective.layers_per_step=1", "callbacks=[default,sample_keys,throughput]",
                  "callbacks.throughput.warmup_steps=1"]),
     ("qat", ["stage.allow_untrained_router=true"]),
     # the router trained during stage 2 on one sampled layer a step (the stage's default): every rank's α and
     # router still get a gradient each step (α from the flow loss alone, the other layers' routers as zeros), as
     # DDP requires
     ("qat_router", [])],
    ids=["distill-sampled-layers", "qat", "qat_router-sampled-layers"],
)
def test_two_process_ddp_trains_and_checkpoints(tmp_path, torchrun_train, stage, extra):
    run = torchrun_train(tmp_path, "trainer=ddp_cpu", f"trainer.max_steps={STEPS}", f"data.epoch_length={STEPS}",
                         f"data.batch_size={BATCH}", "logger=csv", f"stage={stage}", f"output_root={tmp_path / 'out'}",
                         f"data.cache_dir={tmp_path / 'cache'}", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = list((tmp_path / "out").glob(f"*-{stage}-*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1, "both ranks must agree on one output folder"
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert saved["global_step"] == STEPS
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    # Rank 0 alone says what the run trains with; the lr as configured (Lightning does not scale it).
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "per-rank batch" in line]
    lr = {"qat": "lr dit 1e-05, alpha 0.001",
          "qat_router": "lr dit 1e-05, alpha 0.001, router 0.001"}.get(stage, "lr 0.001")
    assert len(lines) == 1 and f"world size 2 × per-rank batch {BATCH} × accumulation 1 = global batch {2 * BATCH}" \
        f" per optimizer step; {lr} " in lines[0], lines

    folder = ckpts[0].parents[1] / "sample_keys"
    if not any(e.startswith("callbacks=") for e in extra):
        assert not folder.exists() and not (folder.parent / "throughput").exists(), "both logs are opt-in"
        return
    for rank in (0, 1):  # the steps after the warm-up step, timed on each rank
        report = json.loads((folder.parent / "throughput" / f"rank{rank}.json").read_text())
        assert (report["rank"], report["world_size"], report["steps_timed"]) == (rank, 2, STEPS - 1)
        assert report["samples_timed"] == BATCH * (STEPS - 1) and report["samples_per_s"] > 0
        assert report["peak_allocated_bytes"] is None  # CPU: no GPU memory to report
    records = read_sample_keys(folder)
    assert sorted(records) == [0, 1] and all((folder / f"rank{r}.txt").is_file() for r in (0, 1))
    assert all([s for s, _, _ in rows] == [s for s in range(STEPS) for _ in range(BATCH)] for rows in records.values())
    epoch = split_summary(records)["epochs"][0]
    assert epoch["samples"] == {0: BATCH * STEPS, 1: BATCH * STEPS}, "per rank: batch × steps"
    assert epoch["disjoint"], f"ranks read the same samples: {epoch['shared_between_ranks']}"
    assert epoch["union"] == 2 * BATCH * STEPS, "together the ranks read global batch × steps distinct samples"
