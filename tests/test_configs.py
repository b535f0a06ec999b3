"""Every config composes (Hydra compose API), the entry point takes sweeps, and bad input is one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def run_train(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def test_groups_have_the_expected_options():
    assert {"tiny", "wan2_1", "wan2_1_14b"} <= set(options("model"))
    assert {"full", "sla", "sla2"} <= set(options("attention"))
    assert {"distill", "qat"} <= set(options("stage"))
    assert {"cpu", "gpu", "ddp", "fsdp"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))
    assert options("experiment")


@pytest.mark.parametrize("experiment", [None, *options("experiment")])
@pytest.mark.parametrize("stage", options("stage"))
def test_every_stage_and_experiment_composes_with_the_tiny_model(stage, experiment):
    overrides = [f"stage={stage}", "model=tiny"] + ([f"experiment={experiment}"] if experiment else [])
    cfg = compose_config(*overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["model"]["name"] == "tiny" and resolved["stage"]["name"] == stage
    assert resolved["run_name"].startswith(f"tiny-{stage}-")


@pytest.mark.parametrize("group", ["model", "attention", "trainer", "logger", "callbacks"])
def test_every_option_of_every_group_composes(group):
    for option in options(group):
        cfg = compose_config(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("scheduler", options("eval/scheduler"))
@pytest.mark.parametrize("random_model", options("eval/random_model"))
def test_eval_config_composes(scheduler, random_model):
    cfg = compose_config(f"eval/scheduler={scheduler}", f"eval/random_model={random_model}", name="eval")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["output_dir"].endswith("tiny-sla2-0.95")
    instantiate(cfg.eval.scheduler)


@pytest.mark.parametrize("stage", options("stage"))
@pytest.mark.parametrize("attention", ["sla2", "sla", "full"])
def test_module_builds_for_each_stage_and_attention(stage, attention):
    cfg = compose_config("model=tiny", f"stage={stage}", f"attention={attention}")
    if stage in ("distill", "qat_router") and attention != "sla2":  # both train the router
        with pytest.raises(Exception, match="attention=sla2"):
            instantiate(cfg.module)
        return
    module = instantiate(cfg.module)
    assert any(p.requires_grad for p in module.parameters())


def test_cpu_trainer_instantiates():
    cfg = compose_config("trainer=cpu", "logger=none")
    trainer = instantiate(cfg.trainer, logger=[], callbacks=[])
    assert trainer.max_steps == cfg.trainer.max_steps


def test_multirun_over_sparsities(tmp_path):
    proc = run_train("-m", "attention.sparsity=0.9,0.95", "model=tiny", "trainer.max_steps=2",
                     "trainer.limit_val_batches=0", "logger=csv", "data.num_workers=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for s in ("0.9", "0.95"):
        ckpt = tmp_path / "outputs" / f"tiny-distill-sla2-{s}" / "checkpoints" / "last.ckpt"
        assert ckpt.is_file()
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert saved["sla2"]["attention"]["sparsity"] == float(s) and saved["global_step"] == 2


@pytest.mark.parametrize(
    "override, words",
    [
        ("attention.bogus=1", ["attention.bogus"]),  # unknown key: Hydra rejects it before anything runs
        ("model=wan9", ["model", "wan9"]),
    ],
)
def test_unknown_config_keys_and_options_fail_fast_without_traceback(tmp_path, override, words):
    proc = run_train(override, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and all(w in proc.stderr for w in words), proc.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        ("attention.sparsity=1.0", "error: attention: sparsity must be in (0, 1), got 1.0 (config key: attention.sparsity)"),
        ("attention.sparsity=high", "error: attention.sparsity must be a number, got 'high'"),
    ],
)
def test_bad_value_is_one_line_naming_the_key_and_leaves_no_output_folder(tmp_path, override, expected):
    proc = run_train(override, "logger=none", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [expected], lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))


@pytest.mark.parametrize("model, shift", [("wan2_1", 3.0), ("wan2_1_14b", 5.0)])
def test_noise_shift_follows_the_model_resolution_in_training_and_eval(model, shift):
    # Wan2.1's flow_shift is 3.0 at 480p and 5.0 at 720p (the 14B preset's latents are 720p).
    train = OmegaConf.to_container(compose_config(f"model={model}"), resolve=True, throw_on_missing=False)
    evaluation = OmegaConf.to_container(compose_config(f"model={model}", name="eval"), resolve=True)
    assert train["flow"]["shift"] == evaluation["eval"]["scheduler"]["flow_shift"] == shift


def test_the_default_sparsity_sweep_selects_three_different_block_counts(monkeypatch):
    """`python train.py -m attention.sparsity=0.9,0.95,0.97` must compare three different models."""
    from sla2_train.attention import reference

    kept = {}
    topk_count = reference.topk_count

    def spy(nk, s):  # every path (op, reference) asks this one rule how many key blocks to keep
        k = topk_count(nk, s)
        kept.setdefault(sparsity, set()).add((nk, k))
        return k

    monkeypatch.setattr(reference, "topk_count", spy)
    for sparsity in (0.9, 0.95, 0.97):
        cfg = compose_config("logger=none", "stage=qat", f"attention.sparsity={sparsity}")
        assert cfg.model.name == "demo"
        model = instantiate(cfg.module.model)
        c, f, h, w = cfg.model.latent_shape
        with torch.no_grad():
            model(torch.randn(1, c, f, h, w), torch.tensor([500.0]), torch.randn(1, cfg.model.text_len, cfg.model.text_dim))
    counts = {s: {k for _, k in pairs} for s, pairs in kept.items()}
    assert all(len(c) == 1 for c in counts.values()), counts  # one count per sparsity, every layer alike
    assert len({c.pop() for c in counts.values()}) == 3, kept


def test_the_default_run_validates_before_it_stops(tmp_path):
    """The default trainer and data: validation (val/loss) runs within trainer.max_steps."""
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):  # the default data and loop, a model that costs nothing
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.validated_at = []

        def training_step(self, batch, _):
            return (batch["latents"].mean() - self.w).pow(2).sum()

        def validation_step(self, batch, _):
            self.log("val/loss", (batch["latents"].mean() - self.w).pow(2).sum(), batch_size=len(batch["keys"]))

        def on_validation_end(self):
            self.validated_at.append(self.global_step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = compose_config("logger=none", f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                         "data.num_workers=0")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                          enable_progress_bar=False)
    probe = Probe()
    trainer.fit(probe, datamodule=instantiate(cfg.data))
    assert trainer.global_step == cfg.trainer.max_steps
    assert probe.validated_at and probe.validated_at[0] < cfg.trainer.max_steps, probe.validated_at
    assert "val/loss" in trainer.callback_metrics
