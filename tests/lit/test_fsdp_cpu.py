"""trainer=fsdp end to end on two CPU processes (gloo): stage 1 trains the router and α and resumes, its sharded
last.ckpt feeds stage 2 through init_from, and stage 2's feeds eval.py and sla2-export."""

import csv
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from lightning.pytorch.plugins.precision import FSDPPrecision
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load

from sla2_train.export import export_checkpoint, read_weights
from sla2_train.export.loading import load_weights
from sla2_train.lit.strategies import SLA2FSDPStrategy
from sla2_train.models import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SLA2 = ".attn1.processor."
ROUTER = ".processor.attention.router."
ALPHA = ".processor.attention.alpha."


@pytest.fixture(scope="module")
def chain(tmp_path_factory, torchrun_train):
    tmp = tmp_path_factory.mktemp("fsdp")

    def train(stage: str, steps: int, *extra: str):
        run = torchrun_train(tmp, "trainer=fsdp_cpu", "logger=csv", f"stage={stage}", f"trainer.max_steps={steps}",
                             f"output_root={tmp / 'out'}", f"data.cache_dir={tmp / 'cache'}", *extra)
        assert run.returncode == 0, run.stderr[-3000:]
        (ckpt,) = (tmp / "out").glob(f"*-{stage}-*/checkpoints/last.ckpt")
        return ckpt

    # with the stage-1 monitor, which reads router and α outside any block's forward too
    stage1 = train("distill", 2, "trainer.limit_val_batches=1", "trainer.val_check_interval=2")
    at_step_2 = read_weights(stage1).weights
    assert train("distill", 3) == stage1  # the same command resumes from last.ckpt
    stage2 = train("qat", 2, f"init_from={stage1}")
    joint = train("qat_router", 2, f"init_from={stage1}")
    return SimpleNamespace(tmp=tmp, stage1=stage1, stage1_at_step_2=at_step_2, stage2=stage2, joint=joint)


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b) and torch.isfinite(a).all()


def test_stage1_trains_router_and_alpha_and_leaves_the_dit(chain, build_module):
    assert chain.stage1.is_dir() and (chain.stage1 / ".metadata").is_file()  # sharded: no rank gathered it
    trained = read_weights(chain.stage1).weights
    untrained = build_module()[0].model.state_dict()  # router at identity, α at alpha_init: whatever the seed
    sla2 = [k for k in trained if SLA2 in k]
    assert sum(ROUTER in k for k in sla2) == 4 and sum(ALPHA in k for k in sla2) == 2
    assert all(changed(trained[k], untrained[k]) for k in sla2), "router or α did not train"
    # after resuming at step 2 they kept training, and the frozen DiT stayed as it was
    before = chain.stage1_at_step_2
    assert all(changed(trained[k], before[k]) for k in sla2)
    assert all(torch.equal(trained[k], before[k]) for k in trained if SLA2 not in k)


def test_stage1_validation_measures_the_router(chain):
    with (chain.stage1.parent.parent / "csv" / "version_0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    recall = [float(r["val/router/layer_0/recall"]) for r in rows if r.get("val/router/layer_0/recall")]
    assert len(recall) == 1 and 0.0 <= recall[0] <= 1.0


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process reading, on purpose
def test_resume_restores_the_replicated_optimizer_state(chain):
    rest = torch.load(chain.stage1 / "meta.pt", weights_only=True)
    assert rest["global_step"] == 3
    name = "model.blocks.0.attn1.processor.attention.router.proj_q"
    state = {"step": torch.zeros(()), "exp_avg": torch.full((2, 16, 16), float("nan"))}
    dcp_load({"optimizer_0": {"state": {name: state}}}, storage_reader=FileSystemReader(str(chain.stage1)),
             no_dist=True)
    assert state["step"].item() == 3  # Adam went on counting from the restored 2, not from a fresh 0
    assert torch.isfinite(state["exp_avg"]).all() and state["exp_avg"].abs().sum() > 0


def test_stage2_starts_from_the_stage1_shards_and_trains_dit_and_alpha(chain):
    stage1, stage2 = read_weights(chain.stage1).weights, read_weights(chain.stage2).weights
    assert stage1.keys() == stage2.keys()
    router = [k for k in stage2 if ROUTER in k]
    assert router and all(torch.equal(stage2[k], stage1[k]) for k in router)  # loaded by init_from, then frozen
    assert any(changed(stage2[k], stage1[k]) for k in stage2 if ALPHA in k)
    dit = [k for k in stage2 if SLA2 not in k and stage2[k].is_floating_point()]
    moved = sum(changed(stage2[k], stage1[k]) for k in dit)
    assert moved > 0.9 * len(dit), f"only {moved} of {len(dit)} DiT tensors trained"


def test_stage2_with_the_router_term_trains_the_router_too(chain):
    """stage=qat_router under FSDP: α is frozen and thawed inside each step (router_term.alpha_frozen) on the
    sharded model, and the router, the DiT and α all move."""
    stage1, joint = read_weights(chain.stage1).weights, read_weights(chain.joint).weights
    for part in (ROUTER, ALPHA):
        assert any(changed(joint[k], stage1[k]) for k in joint if part in k), part
    dit = [k for k in joint if SLA2 not in k and joint[k].is_floating_point()]
    assert sum(changed(joint[k], stage1[k]) for k in dit) > 0.9 * len(dit)


def test_eval_and_export_read_the_stage2_shards(chain, eval_entry, isolated_logging):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[
            "logger=none", "num_inference_steps=2", "max_prompts=1", f"ckpt={chain.stage2}",
            f"output_root={chain.tmp / 'eval'}", f"random_models_dir={chain.tmp / 'random-models'}",
        ])
    report = eval_entry.main(cfg)
    assert [r["name"] for r in report["rows"]] == ["dense", "sla2 0.95 int8/fp8"]  # stage 2 trained low-bit
    assert report["settings"]["checkpoint"]["path"] == str(chain.stage2.resolve())
    assert report["settings"]["checkpoint"]["bytes"] > 4 * 2**10  # the folder's files, not its entry
    exported = export_checkpoint(chain.stage2, chain.tmp / "exported")
    a, b = read_weights(chain.stage2).weights, read_weights(exported).weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda f: (f / "meta.pt").unlink(), ["lacks meta.pt"]),
        (lambda f: (f / ".metadata").write_bytes(b"junk"), ["no readable .metadata"]),
        (lambda f: (f / "__1_0.distcp").unlink(), ["could not be read (FileNotFoundError", "__1_0.distcp"]),
    ],
    ids=["no-meta", "junk-index", "shard-missing"],
)
def test_a_damaged_sharded_checkpoint_is_one_line_naming_the_key(chain, build_module, tmp_path, damage, words):
    folder = tmp_path / "last.ckpt"
    shutil.copytree(chain.stage2, folder)
    damage(folder)
    with pytest.raises(ConfigError) as err:
        load_weights(build_module()[0].model, folder, key="ckpt")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"ckpt: the sharded checkpoint '{folder}'")
    assert all(w in line for w in words), line


def test_a_sharded_checkpoint_of_other_options_is_refused(chain, build_module):
    with pytest.raises(ConfigError, match=r"^init_from .*sparsity=0.95 \(this run: 0.5\)"):
        load_weights(build_module("attention.sparsity=0.5")[0].model, chain.stage2)
    with pytest.raises(ConfigError, match=r"^init_from .*does not fit this model"):
        load_weights(build_module("model.transformer.arch.ffn_dim=48")[0].model, chain.stage2)


# ---- the gradient averaging of the replicated parameters, on two forked processes ------------------------------


class ClosureThenRecord(FSDPPrecision):
    """The precision plugin's part of a step reduced to: run the closure, record the gradients the optimizer
    would step with."""

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        closure()
        self.seen = [None if p.grad is None else p.grad.clone() for p in optimizer.param_groups[0]["params"]]


def _grads(rank: int, shapes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(s, generator=g) for s in shapes]


def _average_on_rank(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    shapes = [(3, 5), (7,), (2,)]
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    params[2].requires_grad_(False)  # frozen (the router in stage 2): takes no part
    strategy = SLA2FSDPStrategy(cluster_environment=TorchElasticEnvironment())
    strategy.precision_plugin = plugin = ClosureThenRecord("32-true")
    strategy._replicated = params

    def closure():
        mine = _grads(rank, shapes)
        params[0].grad = mine[0]
        if rank == 0:  # no gradient on the other rank (a layer it did not sample)
            params[1].grad = mine[1]

    strategy.optimizer_step(torch.optim.SGD(params, lr=0.1), closure, model=pl.LightningModule())
    everyone = [_grads(r, shapes) for r in range(world)]
    torch.testing.assert_close(plugin.seen[0], sum(g[0] for g in everyone) / world)
    torch.testing.assert_close(plugin.seen[1], everyone[0][1] / world)
    assert plugin.seen[2] is None
    dist.destroy_process_group()


def test_replicated_gradients_are_averaged_over_ranks_before_the_step(tcp_port):
    mp.start_processes(_average_on_rank, args=(2, tcp_port), nprocs=2, start_method="fork")


def test_the_strategy_refuses_what_it_decides_itself():
    with pytest.raises(ValueError, match=r"^trainer.strategy.ignored_states "):
        SLA2FSDPStrategy(ignored_states=[])
    with pytest.raises(ValueError, match=r"^trainer.strategy.activation_checkpointing_policy .*gradient_checkpointing"):
        SLA2FSDPStrategy(activation_checkpointing_policy={nn.Linear})
