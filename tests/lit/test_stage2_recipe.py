"""Stage 2's recipe parts each do what they claim: LR schedule, gradient accumulation, EMA, caption dropout,
dense teacher, the router trained during stage 2."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from sla2_train.export.checkpoint_format import read_training_checkpoint
from sla2_train.lit.batch import latents_and_text
from sla2_train.lit.caption_dropout import CaptionDropout
from sla2_train.lit.param_groups import parameter_groups
from sla2_train.lit.schedules import WarmupConstant, WarmupCosine

COSINE = ("stage.scheduler={_target_:torch.optim.lr_scheduler.LambdaLR,_partial_:true,"
          "lr_lambda:{_target_:sla2_train.lit.schedules.WarmupCosine,warmup_steps:4,total_steps:12,final_ratio:0.1}}")
EMA = "stage.ema={_target_:sla2_train.lit.ema.WeightEMA,decay:0.6}"
TEACHER = "stage.objective.teacher={_target_:sla2_train.lit.teacher.DenseTeacher,weight:2.0}"


def fit(module, batches, callbacks=(), **trainer_kwargs):
    """Train `module` on `batches` (dicts, one per step) with a bare CPU trainer; returns the trainer."""
    kwargs = dict(max_steps=-1, max_epochs=1, gradient_clip_val=None)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
        **kwargs,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def with_fixed_noise(batch, seed):
    """The batch plus its own σ and ε, for objectives that must not draw noise (comparisons across batch splits)."""
    g = torch.Generator().manual_seed(seed)
    b = batch["latents"].shape[0]
    return {**batch, "sigma": torch.rand(b, generator=g), "noise": torch.randn(batch["latents"].shape, generator=g)}


def fixed_noise_flow_loss(model, batch, flow):
    """The flow-matching loss at the batch's own σ and ε: a function of the weights and the batch only."""
    x0, text = latents_and_text(batch)
    noisy = flow.noisy(x0, batch["noise"], batch["sigma"])
    pred = model(noisy, flow.timesteps(batch["sigma"]), text, return_dict=False)[0]
    return F.mse_loss(pred, flow.target(x0, batch["noise"])), {}


def split(batch, size):
    """`batch` cut into batches of `size` samples along dim 0."""
    b = batch["latents"].shape[0]
    return [{k: (v[i:i + size] if torch.is_tensor(v) else v[i:i + size]) for k, v in batch.items()}
            for i in range(0, b, size)]


def cosine_factor(step, warmup=4, total=12, final=0.1):
    if step < warmup:
        return (step + 1) / warmup
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# ---- learning rate --------------------------------------------------------------------------------------
def test_schedule_factors_at_given_steps():
    cos = WarmupCosine(warmup_steps=10, total_steps=110, final_ratio=0.2)
    assert [cos(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.6) and cos(110) == pytest.approx(0.2)
    assert cos(500) == pytest.approx(0.2)  # held after total_steps
    const = WarmupConstant(warmup_steps=4)
    assert [const(s) for s in (0, 1, 3, 4, 100)] == pytest.approx([0.25, 0.5, 1.0, 1.0, 1.0])
    assert WarmupConstant(0)(0) == 1.0


@pytest.mark.parametrize("kwargs, word", [({"warmup_steps": -1}, "warmup_steps"),
                                          ({"total_steps": 0}, "total_steps"), ({"final_ratio": 2.0}, "final_ratio")])
def test_bad_schedule_values_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        WarmupCosine(**kwargs)


class LearningRates(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_every_group_follows_warmup_then_cosine_per_optimizer_step(build_module, make_batch):
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true", COSINE)
    lrs = LearningRates()
    # accumulation 2: the schedule counts optimizer steps, so each factor holds for two batches
    fit(module, [make_batch(cfg, 1) for _ in range(14)], callbacks=[lrs], accumulate_grad_batches=2)
    assert len(lrs.seen) == 14
    for i, seen in enumerate(lrs.seen):
        f = cosine_factor(i // 2)
        assert seen["dit"] == pytest.approx(1e-5 * f) and seen["alpha"] == pytest.approx(1e-3 * f), i


# ---- gradient accumulation ------------------------------------------------------------------------------
def test_accumulating_two_batches_equals_one_doubled_batch(build_module, make_batch):
    """Plain SGD on a loss that is a per-sample mean: the mean of two half-batch gradients is the full batch's.
    Compared as updates, each tensor's within 1e-3 of its own norm plus the float32 rounding of the weights it
    was added to: sums in another order move single elements by a few 1e-6, more than an element-wise bound on
    small weights allows (it failed one run in ten), and α's logits take updates near their own rounding step; a
    mis-scaled or dropped half batch moves the update by half its norm."""
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true", "stage.optimizer._target_=torch.optim.SGD",
                               "stage.optimizer.lr=0.5", "~stage.group_lr")
    module.stage.objective = fixed_noise_flow_loss
    batches = [with_fixed_noise(make_batch(cfg, 4), seed) for seed in range(2)]
    start = copy.deepcopy(module.model.state_dict())
    doubled = copy.deepcopy(module)
    fit(module, [half for b in batches for half in split(b, 2)], accumulate_grad_batches=2)
    fit(doubled, batches, accumulate_grad_batches=1)
    accumulated, whole = module.model.state_dict(), doubled.model.state_dict()
    moved = [n for n in start if not torch.equal(start[n], whole[n])]
    assert len(moved) > len(start) // 2
    for name in start:
        step_accumulated, step_whole = accumulated[name] - start[name], whole[name] - start[name]
        gap, size = float((step_accumulated - step_whole).norm()), float(step_whole.norm())
        rounding = 4 * torch.finfo(torch.float32).eps * float(start[name].float().norm())
        assert gap <= 1e-3 * size + rounding, (name, gap, size, rounding)


def test_trainer_configs_expose_accumulation(compose_config):
    for trainer in ("cpu", "gpu"):
        assert compose_config(f"trainer={trainer}").trainer.accumulate_grad_batches == 1
    assert compose_config("trainer=cpu", "trainer.accumulate_grad_batches=4").trainer.accumulate_grad_batches == 4


# ---- EMA ------------------------------------------------------------------------------------------------
class Weights(pl.Callback):
    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad})


def test_ema_is_the_closed_form_average_and_is_what_checkpoints_export(build_module, make_batch, tmp_path):
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true", EMA, "stage.optimizer.lr=1e-2")
    trained = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    weights = Weights()
    trainer = fit(module, [make_batch(cfg, 1) for _ in range(6)], callbacks=[weights], accumulate_grad_batches=2)
    d, steps = 0.6, weights.after_step[1::2]  # the weights after each of the 3 optimizer steps
    assert module.stage.ema.updates == len(steps) == 3
    for name, theta0 in trained.items():
        closed = d ** 3 * theta0 + sum((1 - d) * d ** (3 - i) * s[name] for i, s in enumerate(steps, start=1))
        torch.testing.assert_close(module.stage.ema.shadow[name], closed, rtol=1e-5, atol=1e-6, msg=name)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    averaged = checkpoint["ema"]["state_dict"]
    assert set(averaged) == {"model." + n for n in trained} and set(averaged) <= set(checkpoint["state_dict"])
    read = read_training_checkpoint(path)
    assert read.ema
    name = next(n for n in trained if not torch.equal(module.stage.ema.shadow[n], steps[-1][n]))
    torch.testing.assert_close(read.weights[name], module.stage.ema.shadow[name])
    assert torch.equal(read_training_checkpoint(path, ema=False).weights[name], steps[-1][name])


def test_ema_resumes_from_the_checkpoint(build_module):
    module, _ = build_module("stage=qat", "stage.allow_untrained_router=true", EMA)
    ema = module.stage.ema
    ema.reset(module.model)
    ema.updates = 7
    name = next(iter(ema.shadow))
    ema.shadow[name] += 1.0
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    other, _ = build_module("stage=qat", "stage.allow_untrained_router=true", EMA)
    other.on_load_checkpoint(checkpoint)
    assert other.stage.ema.updates == 7 and torch.equal(other.stage.ema.shadow[name], ema.shadow[name])


# ---- caption dropout ------------------------------------------------------------------------------------
def text_batch(b=400, length=6, dim=5):
    lengths = torch.randint(1, length + 1, (b,))
    mask = torch.arange(length)[None] < lengths[:, None]
    return {"latents": torch.zeros(b, 1), "text_embeds": torch.randn(b, length, dim) * mask[..., None], "text_mask": mask}


@pytest.mark.parametrize("empty_len", [None, 2, 9])
def test_dropped_captions_are_the_empty_embedding(tmp_path, empty_len):
    empty = None
    if empty_len is not None:
        empty = torch.randn(empty_len, 5)
        save_file({"text_embeds": empty}, tmp_path / "empty.safetensors")
    dropout = CaptionDropout(rate=0.3, empty=None if empty is None else str(tmp_path / "empty.safetensors"))
    batch = text_batch()
    torch.manual_seed(3)
    out = dropout(batch)
    torch.manual_seed(3)
    assert torch.equal(dropout(batch)["caption_dropped"], out["caption_dropped"])  # seeded: reproducible
    drop = out["caption_dropped"]
    assert 0.3 * 400 - 4 * math.sqrt(400 * 0.21) < drop.sum() < 0.3 * 400 + 4 * math.sqrt(400 * 0.21)
    kept = ~drop
    assert torch.equal(out["text_embeds"][kept], batch["text_embeds"][kept])
    assert torch.equal(out["text_mask"][kept], batch["text_mask"][kept])
    expected = torch.zeros(6, 5)
    expected_mask = torch.zeros(6, dtype=torch.bool)
    if empty is not None:
        n = min(6, empty_len)
        expected[:n], expected_mask[:n] = empty[:n], True
    assert torch.equal(out["text_embeds"][drop], expected.expand(int(drop.sum()), 6, 5))
    assert torch.equal(out["text_mask"][drop], expected_mask.expand(int(drop.sum()), 6))
    # built once per length, dtype and device: no host-to-device copy (a wait for the GPU) at every step
    again = dropout.empty.embedding(6, 5, batch["text_embeds"])
    assert all(a is b for a, b in zip(again, dropout.empty.embedding(6, 5, batch["text_embeds"])))
    half = dropout.empty.embedding(6, 5, batch["text_embeds"].half())[0]
    assert half.dtype == torch.float16 and torch.equal(half.float(), expected.half().float())


def test_caption_dropout_reaches_the_objective(build_module, make_batch):
    module, cfg = build_module(
        "stage=qat", "stage.allow_untrained_router=true",
        "stage.caption_dropout={_target_:sla2_train.lit.caption_dropout.CaptionDropout,rate:1.0}",
    )
    seen = []
    objective = module.stage.objective
    module.stage.objective = lambda model, batch, flow: (seen.append(batch), objective(model, batch, flow))[1]
    module.training_step(make_batch(cfg), 0)
    assert not seen[0]["text_embeds"].any() and not seen[0]["text_mask"].any()


def test_bad_caption_dropout_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="rate"):
        CaptionDropout(rate=1.5)
    with pytest.raises(Exception, match="stage.caption_dropout.empty"):
        CaptionDropout(empty=str(tmp_path / "missing.safetensors"))


# ---- dense teacher --------------------------------------------------------------------------------------
GUIDED = ("stage.objective.teacher={_target_:sla2_train.lit.teacher.DenseTeacher,weight:1.0,guided_weight:0.5,"
          "guidance_scale:%s}")


@pytest.mark.parametrize("teacher, term, total", [
    (TEACHER, "flow/teacher_mse", lambda logs: logs["flow/mse"] + 2.0 * logs["flow/teacher_mse"]),
    (GUIDED % 5.0, "flow/teacher_guided_mse",
     lambda logs: logs["flow/mse"] + logs["flow/teacher_mse"] + 0.5 * logs["flow/teacher_guided_mse"]),
])
def test_teacher_terms_are_zero_for_the_teacher_itself_and_grow_when_the_student_moves(build_module, make_batch,
                                                                                      teacher, term, total):
    module, cfg = build_module("stage=qat", "attention=full", teacher, "stage.optimizer.lr=1e-3")
    objective, batch = module.stage.objective, make_batch(cfg)
    assert not any(p.requires_grad for p in objective.teacher.model.parameters())
    assert not any(k.startswith("stage") or "teacher" in k for k in module.state_dict())  # not saved
    torch.manual_seed(0)
    loss, logs = objective(module.model, batch, module.flow)
    assert logs[term] == 0.0
    torch.testing.assert_close(loss, logs["flow/mse"])
    optimizer = module.configure_optimizers()
    loss.backward()
    optimizer.step()
    torch.manual_seed(0)
    loss, logs = objective(module.model, batch, module.flow)
    assert logs[term] > 0
    torch.testing.assert_close(loss, total(logs))


def test_teacher_is_dense_while_the_student_is_sla2(build_module, make_batch):
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true", TEACHER)
    _, logs = module.stage.objective(module.model, make_batch(cfg), module.flow)
    assert logs["flow/teacher_mse"] > 0  # same weights, SLA2 against full attention


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_guided_velocity_at_scale_one_is_the_caption_call_and_at_zero_the_empty_prompts(build_module, make_batch,
                                                                                       scale):
    """u + g·(c − u): at g = 1 the guided match is the plain teacher match; at g = 0 it is the match of the
    empty-prompt calls, which differs from it (the student is SLA2, the teacher dense)."""
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true", GUIDED % scale)
    torch.manual_seed(0)
    _, logs = module.stage.objective(module.model, make_batch(cfg), module.flow)
    assert logs["flow/teacher_guided_mse"] > 0
    if scale == 1.0:
        torch.testing.assert_close(logs["flow/teacher_guided_mse"], logs["flow/teacher_mse"])
    else:
        assert not torch.isclose(logs["flow/teacher_guided_mse"], logs["flow/teacher_mse"])


def test_teacher_weights_must_not_be_negative_and_the_empty_prompt_must_exist():
    from sla2_train.lit.teacher import DenseTeacher

    with pytest.raises(ValueError, match="guided_weight must be >= 0"):
        DenseTeacher(guided_weight=-1.0)
    with pytest.raises(Exception, match="stage.objective.teacher.empty: no file at"):
        DenseTeacher(guided_weight=1.0, empty="/no/such/empty_prompt.safetensors")


def test_no_teacher_by_default(build_module, make_batch):
    module, cfg = build_module("stage=qat", "stage.allow_untrained_router=true")
    assert module.stage.objective.teacher is None
    assert "flow/teacher_mse" not in module.stage.objective(module.model, make_batch(cfg), module.flow)[1]


def test_ema_warmup_forgets_the_random_start():
    from torch import nn

    from sla2_train.lit.ema import WeightEMA

    layer = nn.Linear(3, 2)
    theta0 = layer.weight.detach().clone()
    plain, warm = WeightEMA(0.999), WeightEMA(0.999, warmup=True)
    plain.reset(layer), warm.reset(layer)
    expected, start_share = theta0.clone(), 1.0
    for n in range(690):
        with torch.no_grad():
            layer.weight.copy_(theta0 + (100.0 if n % 2 else 50.0))  # trained weights far from the start
        d = min(0.999, (1 + n) / (10 + n))
        assert warm.current_decay() == d
        expected = d * expected + (1 - d) * layer.weight.detach()
        start_share *= d
        plain.update(layer), warm.update(layer)
    torch.testing.assert_close(warm.shadow["weight"], expected, rtol=1e-5, atol=1e-4)
    # the share of the random start in the average: 0.999^690 ≈ 0.50 without warmup, ~1e-5 with it
    assert start_share < 1e-4
    share = lambda ema: 1 - (ema.shadow["weight"] - theta0).mean().item() / 75.0  # noqa: E731 (75: the mean target)
    assert share(warm) == pytest.approx(0.0, abs=0.02)
    assert share(plain) == pytest.approx(0.999 ** 690, abs=0.02)


# ---- router trained during stage 2 ------------------------------------------------------------------------
def _grads(module, objective, batch, seed):
    module.model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, logs = objective(module.model, batch, module.flow)
    loss.backward()
    groups = parameter_groups(module.model)
    return logs, {name: [None if p.grad is None else p.grad.clone() for p in params] for name, params in groups.items()}


def test_the_router_term_trains_the_router_alone(build_module, make_batch):
    """stage=qat_router: the flow-matching loss reaches the DiT and α exactly as in stage=qat (the term reads the
    forward's q, k, v detached, α is held out of it), and the router, which hard Top-k gives no gradient, gets
    the term's: stage 1's loss on the DiT as it is, from that same forward (one transformer call a step)."""
    module, cfg = build_module("stage=qat_router")
    assert module.stage.train == ["dit", "alpha", "router"]
    batch, joint = make_batch(cfg), module.stage.objective
    plain = copy.copy(joint)
    plain.router = None
    calls = []
    hook = module.model.register_forward_pre_hook(lambda *_: calls.append(1))
    logs, with_term = _grads(module, joint, batch, seed=3)
    assert len(calls) == 1
    hook.remove()
    plain_logs, without = _grads(module, plain, batch, seed=3)
    assert logs["flow/router_distill"] > 0 and "flow/router_distill" not in plain_logs
    torch.testing.assert_close(logs["flow/mse"], plain_logs["flow/mse"])
    for name in ("dit", "alpha"):
        for a, b in zip(with_term[name], without[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(g is None or not g.any() for g in without["router"])
    assert all(g is not None and torch.isfinite(g).all() for g in with_term["router"])
    assert sum(float(g.abs().sum()) for g in with_term["router"]) > 0
    assert all(p.requires_grad for p in parameter_groups(module.model)["alpha"])  # restored after the term


def test_the_router_term_needs_the_router_in_stage_train(build_module):
    # (instantiate wraps the errors; train.py prints them as one line, tests/test_cli_errors.py)
    with pytest.raises(Exception, match=r"stage.objective.router trains the router during stage 2, but "
                                          r"stage.train=\['dit', 'alpha'\] leaves it frozen"):
        build_module("stage=qat_router", "stage.train=[dit,alpha]", "~stage.group_lr.router")
    with pytest.raises(Exception, match="stage.objective.router.weight must be > 0"):
        build_module("stage=qat_router", "stage.objective.router.weight=0")
