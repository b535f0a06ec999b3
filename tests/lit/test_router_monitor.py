"""Stage-1 monitoring: validation measures every layer's hard-Top-k path against full attention (rel-L1,
recall of the best-mass blocks, captured mass against α), and the SoftTop-k temperature follows its schedule."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from sla2_train.attention import SLA2Attention
from sla2_train.lit.monitoring import hard_topk_metrics
from sla2_train.lit.temperature import TemperatureSchedule
from sla2_train.models import sla2_processors

HEADS, DIM, BLOCK, NK = 2, 8, 16, 4


def graded_keys(scale=0.6):
    """Every query is the same vector u; key block j is j·scale·u: block 3 holds the most softmax mass,
    block 0 the least, and within a block all scores tie (so each branch's output is known in closed form)."""
    u = torch.randn(1, HEADS, 1, DIM)
    u = u / u.norm(dim=-1, keepdim=True) * 2.0
    n = BLOCK * NK
    q = u.expand(1, HEADS, n, DIM).clone()
    grade = torch.arange(NK).repeat_interleave(BLOCK).float() * scale
    k = u * grade[None, None, :, None]
    v = torch.randn(1, HEADS, n, DIM)
    weights = torch.softmax(grade * (u * u).sum(-1) / DIM ** 0.5, dim=-1)  # [1, H, N] one row's probabilities
    return q, k, v, weights


def closed_form(weights, v, block):
    """(mass, sparse-only rel-L1) when every query keeps key block `block` only."""
    full = (weights[..., None] * v).sum(-2)  # [1, H, D], the same for every query row
    cols = slice(block * BLOCK, (block + 1) * BLOCK)
    mass = weights[..., cols].sum(-1)  # [1, H]
    sparse = v[:, :, cols].mean(-2)  # equal scores inside the block
    l1 = (sparse - full).abs().sum(-1) / full.abs().sum(-1)
    return mass[0], l1[0]


@pytest.mark.parametrize("flip", [False, True])
def test_metrics_on_a_constructed_case(flip):
    q, k, v, weights = graded_keys()
    attn = SLA2Attention(HEADS, DIM, sparsity=0.75, block_q=BLOCK, block_k=BLOCK, alpha_init=0.8)  # 1 block of 4
    if flip:  # a router that ranks blocks backwards picks the one with the least mass
        with torch.no_grad():
            attn.router.proj_q.neg_()
    m = hard_topk_metrics(attn, q, k, v)
    chosen = 0 if flip else NK - 1
    mass, sparse_l1 = closed_form(weights, v, chosen)
    assert torch.equal(m["recall"], torch.full((HEADS,), 0.0 if flip else 1.0))
    torch.testing.assert_close(m["mass"], mass)
    torch.testing.assert_close(m["sparse_l1"], sparse_l1)
    torch.testing.assert_close(m["alpha"], torch.full((HEADS,), 0.8))
    # SLA2 = 0.8·sparse + 0.2·linear, the linear branch over the three other blocks written out: weights
    # φ(q)·φ(k_j) with φ the softmax over the head dimension, every query row alike
    full = (weights[..., None] * v).sum(-2)
    rest = torch.ones(BLOCK * NK, dtype=torch.bool)
    rest[chosen * BLOCK:(chosen + 1) * BLOCK] = False
    w = (torch.softmax(q[:, :, :1], -1) * torch.softmax(k[:, :, rest], -1)).sum(-1)  # [1, H, tokens left]
    linear = (w[..., None] * v[:, :, rest]).sum(-2) / w.sum(-1, keepdim=True)
    sla2 = 0.8 * v[:, :, chosen * BLOCK:(chosen + 1) * BLOCK].mean(-2) + 0.2 * linear
    torch.testing.assert_close(m["sla2_l1"], ((sla2 - full).abs().sum(-1) / full.abs().sum(-1))[0])
    # measuring a subset of the query blocks gives the same numbers here: every row is alike
    part = hard_topk_metrics(attn, q, k, v, query_blocks=2)
    for name in m:
        torch.testing.assert_close(part[name], m[name])


def test_keeping_every_block_is_exact():
    q, k, v, _ = graded_keys()
    attn = SLA2Attention(HEADS, DIM, sparsity=0.05, block_q=BLOCK, block_k=BLOCK)  # keeps all 4 blocks
    m = hard_topk_metrics(attn, q, k, v)
    torch.testing.assert_close(m["mass"], torch.ones(HEADS))
    torch.testing.assert_close(m["recall"], torch.ones(HEADS))
    torch.testing.assert_close(m["sla2_l1"], torch.zeros(HEADS), atol=1e-5, rtol=0)


class Logged(pl.Callback):
    def __init__(self):
        self.tau = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tau.append([p.attention.tau for p in sla2_processors(pl_module.model)])


def test_validation_logs_each_layer_and_tau_follows_its_schedule(build_module, make_batch):
    module, cfg = build_module(
        "stage=distill", "stage.monitor.query_blocks=null",
        "stage.tau_schedule={_target_:sla2_train.lit.temperature.TemperatureSchedule,start:0.5,end:0.1,steps:2}",
    )
    logged = Logged()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         max_steps=3, callbacks=[logged])
    batches = [make_batch(cfg) for _ in range(3)]
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    assert logged.tau == [[pytest.approx(t)] * 2 for t in (0.5, 0.3, 0.1)]
    metrics = trainer.callback_metrics
    layers = len(sla2_processors(module.model))
    for name in ("sla2_l1", "sparse_l1", "recall", "mass", "alpha", "mass_minus_alpha"):
        per_layer = [metrics[f"val/router/layer_{i}/{name}"] for i in range(layers)]
        torch.testing.assert_close(metrics[f"val/router/{name}"], torch.stack(per_layer).mean())
    for i in range(layers):
        assert 0 <= metrics[f"val/router/layer_{i}/recall"] <= 1 and 0 < metrics[f"val/router/layer_{i}/mass"] <= 1
        torch.testing.assert_close(metrics[f"val/router/layer_{i}/mass_minus_alpha"],
                                   metrics[f"val/router/layer_{i}/mass"] - metrics[f"val/router/layer_{i}/alpha"])
    # what is logged is what the monitor measured on the validation batch
    monitor, measured = module.stage.monitor, []
    module.stage.monitor = lambda *args: measured.append(monitor(*args)) or measured[-1]
    trainer.validate(module, DataLoader(batches[:1], batch_size=None), verbose=False)
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/router/")}
    assert len(measured) == 1 and set(measured[0]) == set(logged)
    for key, value in measured[0].items():
        torch.testing.assert_close(logged[key], value, msg=key)

def test_temperature_schedule_values():
    s = TemperatureSchedule(start=1.0, end=0.2, steps=4)
    assert [s(i) for i in (0, 1, 2, 4, 9)] == pytest.approx([1.0, 0.8, 0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="steps"):
        TemperatureSchedule(1.0, 0.1, 0)
    with pytest.raises(ValueError, match="start and end"):
        TemperatureSchedule(0.0, 0.1, 5)
