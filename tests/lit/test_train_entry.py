"""train.py end to end in-process: checkpoints resume, stage 2 starts from stage 1, bad configs are one line."""

from pathlib import Path

import pytest
import torch

from sla2_train.lit import SLA2Module
from sla2_train.models import sla2_processors


def test_resume_continues_from_the_saved_step_and_weights(run_args, compose_config, train_entry, monkeypatch):
    first = compose_config(*run_args, "trainer.max_steps=2")
    train_entry.main(first)
    last = Path(first.ckpt_dir) / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert saved["sla2"]["attention"]["variant"] == "sla2" and saved["sla2"]["stage"] == "distill"

    seen = {}

    def probe(self):
        seen["step"] = self.trainer.global_step
        seen["state"] = {k: v.clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(SLA2Module, "on_train_start", probe)
    # A different seed gives different initial weights: equality below can only come from the checkpoint.
    second = compose_config(*run_args, "trainer.max_steps=4", "seed=7")
    assert second.ckpt_dir == first.ckpt_dir
    train_entry.main(second)
    assert seen["step"] == 2
    assert seen["state"].keys() == saved["state_dict"].keys()
    assert all(torch.equal(seen["state"][k], v) for k, v in saved["state_dict"].items())
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4
    adam_steps = {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # optimizer state continued too, not restarted
    assert not all(torch.equal(resumed["state_dict"][k], v) for k, v in saved["state_dict"].items())


def test_resume_false_starts_over(run_args, compose_config, train_entry, monkeypatch):
    train_entry.main(compose_config(*run_args, "trainer.max_steps=1"))
    seen = {}
    monkeypatch.setattr(SLA2Module, "on_train_start", lambda self: seen.setdefault("step", self.trainer.global_step))
    train_entry.main(compose_config(*run_args, "trainer.max_steps=1", "resume=false"))
    assert seen["step"] == 0


def test_qat_starts_from_the_distilled_router(run_args, compose_config, train_entry, build_module):
    cfg = compose_config(*run_args, "trainer.max_steps=2")
    train_entry.main(cfg)
    ckpt = Path(cfg.ckpt_dir) / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module, _ = build_module("stage=qat", f"init_from={ckpt}")
    for i, proc in enumerate(sla2_processors(module.model)):
        for name, p in proc.attention.router.named_parameters():
            assert torch.equal(p, state[f"model.blocks.{i}.attn1.processor.attention.router.{name}"])
    # The distilled router is not the identity it started from: stage 1 really trained it.
    eye = torch.eye(p.shape[-1]).expand_as(p)
    assert not torch.allclose(p, eye)


@pytest.mark.parametrize(
    "override, words",
    [
        ("attention.sparsity=1.5", ["sparsity must be in (0, 1)", "1.5"]),
        ("model.path=/no/such/wan", ["model.path", "/no/such/wan", "does not exist"]),
        ("+model.transformer.arch.num_expertz=4", ["num_expertz"]),
        ("stage.objective.layers_per_step=0", ["layers_per_step"]),
        ("init_from=/no/such.ckpt", ["init_from", "/no/such.ckpt"]),
    ],
)
def test_bad_values_are_one_clear_line(
    run_args, compose_config, train_entry, capsys, isolated_logging, override, words
):
    cfg = compose_config(*run_args, override)
    with pytest.raises(SystemExit) as code:
        train_entry.main(cfg)
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(w in err[0] for w in words), err[0]


def test_a_resumed_run_whose_max_time_is_used_up_says_so(run_args, compose_config, train_entry, caplog):
    # Lightning's Timer keeps the training time in the checkpoint: max_time counts the runs a run continues.
    cfg = compose_config(*run_args, "trainer.max_steps=100000", "++trainer.max_time=00:00:00:01")
    train_entry.main(cfg)
    ckpt = Path(cfg.ckpt_dir) / "last.ckpt"
    reached = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < reached < 100000  # stopped by the time limit
    with caplog.at_level("WARNING", logger="sla2_train.lit.callbacks"):
        train_entry.main(cfg)
    assert any("trainer.max_time" in r.getMessage() and "earlier runs" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sla2_train.lit.callbacks"):  # time left: nothing to say
        more = compose_config(*run_args, f"trainer.max_steps={reached + 3}", "++trainer.max_time=00:00:10:00")
        train_entry.main(more)
    assert not any("trainer.max_time" in r.getMessage() for r in caplog.records)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == reached + 3  # it did train on


def test_a_non_finite_loss_stops_the_run_before_its_optimizer_step(run_args, compose_config, train_entry,
                                                                   monkeypatch):
    cfg = compose_config(*run_args, "trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=1")
    original = SLA2Module.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 1 else loss

    monkeypatch.setattr(SLA2Module, "training_step", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite distill loss nan at step 1"):
        train_entry.main(cfg)
    saved = torch.load(Path(cfg.ckpt_dir) / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1  # the poisoned step was never taken, nor saved
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
