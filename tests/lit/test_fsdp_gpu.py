"""trainer=fsdp as a GPU run takes it (bf16-mixed, CUDA, FSDP's mixed precision), on one GPU under torchrun:
what the CPU chain (test_fsdp_cpu.py) cannot show is that the replicated SLA2 processors reach the GPU and
train there beside the sharded bf16 transformer."""

import pytest
import torch

from sla2_train.export import read_weights

SLA2 = ".attn1.processor."


@pytest.mark.gpu
def test_stage1_then_stage2_on_one_gpu(tmp_path, torchrun_train, build_module):
    def train(stage: str, *extra: str):
        run = torchrun_train(tmp_path, "trainer=fsdp", "trainer.devices=1", "trainer.max_steps=3", "logger=csv",
                             f"stage={stage}", f"output_root={tmp_path / 'out'}",
                             f"data.cache_dir={tmp_path / 'cache'}", *extra, nproc=1)
        assert run.returncode == 0, run.stderr[-3000:]
        (ckpt,) = (tmp_path / "out").glob(f"*-{stage}-*/checkpoints/last.ckpt")
        assert ckpt.is_dir()
        return read_weights(ckpt).weights, ckpt

    stage1, folder = train("distill")
    stage2, _ = train("qat", f"init_from={folder}")
    sla2 = [k for k in stage1 if SLA2 in k]
    assert sla2 and all(stage1[k].dtype == torch.float32 for k in sla2)  # outside FSDP's bf16 parameters
    untrained = build_module()[0].model.state_dict()  # router at identity, α at alpha_init
    assert all(not torch.equal(stage1[k], untrained[k]) for k in sla2), "router or α did not train"
    assert all(torch.equal(stage2[k], stage1[k]) for k in sla2 if ".router." in k)
    assert any(not torch.equal(stage2[k], stage1[k]) for k in sla2 if ".alpha." in k)
    dit = [k for k in stage2 if SLA2 not in k and stage2[k].is_floating_point()]
    assert sum(not torch.equal(stage2[k], stage1[k]) for k in dit) > 0.9 * len(dit)
    assert all(torch.isfinite(v).all() for v in stage2.values() if v.is_floating_point())
