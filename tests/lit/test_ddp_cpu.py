"""train.py under torchrun with two CPU processes (gloo): the DDP path a GPU run takes, minus the GPU."""

import pytest
import torch


@pytest.mark.parametrize(
    "stage,extra",
    [("distill", []), ("qat", ["stage.allow_untrained_router=true"]), ("distill", ["stage.objective.layers_per_step=1"])],
    ids=["distill", "qat", "distill-sampled-layers"],
)
def test_two_process_ddp_trains_and_checkpoints(tmp_path, torchrun_train, stage, extra):
    run = torchrun_train(tmp_path, "trainer=ddp_cpu", "trainer.max_steps=3", "logger=csv", f"stage={stage}",
                         f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = list((tmp_path / "out").glob(f"*-{stage}-*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1, "both ranks must agree on one output folder"
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
