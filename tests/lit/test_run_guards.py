"""Runs that would go silently wrong are refused before they start, with one line naming the key to set."""

from pathlib import Path

import pytest
import torch

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref
from sla2_train.attention.reference import memory
from sla2_train.data import write_synthetic_shards


@pytest.fixture
def run_args(tmp_path):
    return [
        "logger=none", f"output_root={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0", "trainer.limit_val_batches=0", "callbacks.progress.refresh_rate=0",
    ]


def _refused(train_entry, cfg, capsys, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_entry.main(cfg)
    assert exit_info.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "overrides, words",
    [
        # The user's own command: a random-weight 1.3B, refused before anything is built.
        (["model=wan2_1", "stage=qat"], ["model.path is not set", "model=wan2_1", "model.random_init=true"]),
        (["model=wan2_1_14b"], ["model.path is not set", "model.random_init=true"]),
        # Weights allowed to be random, but stage 2 would fine-tune through the untrained router.
        (["model=wan2_1", "model.random_init=true", "stage=qat"], ["stage=qat", "init_from", "stage.allow_untrained_router=true"]),
        (["model=tiny", "stage=qat"], ["stage=qat", "init_from", "stage.allow_untrained_router=true"]),
    ],
)
def test_silent_wrong_runs_are_refused(run_args, compose_config, train_entry, capsys, isolated_logging, overrides, words):
    line = _refused(train_entry, compose_config(*run_args, *overrides), capsys)
    assert all(w in line for w in words), line
    assert not (Path(run_args[1].split("=", 1)[1])).exists()


def test_what_the_guards_allow_still_runs(run_args, compose_config, train_entry, isolated_logging):
    # The untrained router on purpose, and a dense baseline (no router at all), both train.
    for extra in (["stage=qat", "stage.allow_untrained_router=true"], ["stage=qat", "attention=full"]):
        cfg = compose_config(*run_args, "model=tiny", "trainer.max_steps=1", "resume=false", *extra)
        train_entry.main(cfg)
        assert (Path(cfg.ckpt_dir) / "last.ckpt").is_file()


def test_real_preset_on_the_cpu_trainer_is_refused_with_the_reason(
    run_args, compose_config, train_entry, capsys, isolated_logging, monkeypatch, tmp_path
):
    # The 1.3B's attention shape at the 480p length; one thin layer keeps building it cheap. The refusal
    # compares the N×N scores with the memory available, which is fixed here so the test says the same anywhere.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 32 * 10**9)
    monkeypatch.setattr("sla2_train.run_guards.available_bytes", lambda device: 32 * 10**9)
    cfg = compose_config(
        *run_args, "model=wan2_1", "model.random_init=true", "trainer=cpu", "model.transformer.arch.num_layers=1",
        "model.transformer.arch.ffn_dim=32", "data.num_train=2", "data.num_val=0", "data.samples_per_shard=2",
        "data.max_text_len=4", "data.batch_size=1",
    )
    line = _refused(train_entry, cfg, capsys)
    assert "model=wan2_1 cannot train on cpu" in line and "N=32,760" in line and "trainer=gpu" in line, line
    assert "103.0 GB" in line and "32.0 GB" in line, line


def _big(n: int, heads: int = 1, dim: int = 4) -> torch.Tensor:
    return torch.randn(1, heads, n, dim)


@pytest.mark.parametrize("entry", ["full", "sla2", "sla2_soft", "sla", "module_op"])
def test_dense_reference_that_cannot_fit_fails_in_one_line_without_allocating(monkeypatch, entry):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * 10**9)
    n, bq, bk = 32760, 128, 64
    q, k, v = _big(n), _big(n), _big(n)
    nq, nk = ref.num_blocks(n, bq), ref.num_blocks(n, bk)
    mask = torch.zeros(1, 1, nq, nk, dtype=torch.bool)
    mask[..., 0] = True
    alpha = torch.full((1, 1, nq), 0.9)
    calls = {
        "full": lambda: ref.full_attention(q, k, v),
        "sla2": lambda: ref.sla2_attention(q, k, v, mask, alpha, bq, bk),
        "sla2_soft": lambda: ref.sla2_attention_soft(q, k, v, mask.float(), alpha, bq, bk),
        "sla": lambda: ref.sla_attention(q, k, v, mask, torch.zeros(1, 4, 4), bq, bk),
        # The module's CPU path: the reference behind the custom op (what trainer=cpu runs).
        "module_op": lambda: SLA2Attention(1, 4, sparsity=0.97, block_q=bq, block_k=bk)(q, k, v, layout="bhnd"),
    }
    with pytest.raises(memory.DenseTooLarge) as err:
        calls[entry]()
    message = str(err.value)
    assert "\n" not in message and "N=32,760" in message and "8.6 GB" in message and "4.0 GB" in message, message


def test_dense_reference_that_fits_is_not_refused(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * 10**9)
    q, k, v = _big(300, heads=2), _big(300, heads=2), _big(300, heads=2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    torch.testing.assert_close(ref.full_attention(q, k, v), expected)


def test_shards_made_for_another_model_fail_in_one_line_naming_both(
    run_args, compose_config, train_entry, capsys, isolated_logging, tmp_path
):
    # Shards of the real model's 480p latents given to the tiny model ran until the OOM killer stopped them.
    shards = tmp_path / "shards-480p"
    write_synthetic_shards(shards, 2, latent_shape=(16, 21, 60, 104), text_dim=32, max_text_len=4, samples_per_shard=2)
    args = [a for a in run_args if not a.startswith("data.cache_dir")]
    cfg = compose_config(*args, "model=tiny", "data=webdataset", f"data.train_shards={shards}")
    line = _refused(train_entry, cfg, capsys)
    assert "[16, 21, 60, 104]" in line and "[4, 3, 14, 18]" in line, line
    assert "model.latent_shape" in line and "model=wan2_1" in line, line
    assert not (tmp_path / "out").exists()


def test_eval_of_a_real_preset_without_weights_is_refused(compose_config, eval_entry, capsys, isolated_logging, tmp_path):
    cfg = compose_config("model=wan2_1", "logger=none", f"output_root={tmp_path / 'out'}", name="eval")
    line = _refused(eval_entry, cfg, capsys)
    assert "model.path is not set" in line and "model.random_init=true" in line, line


@pytest.mark.parametrize("case", ["missing", "empty", "all_damaged"])
def test_unusable_shard_folders_are_one_line_from_the_entry_point(
    run_args, compose_config, train_entry, capsys, isolated_logging, tmp_path, case
):
    folder = tmp_path / "shards"
    if case != "missing":
        folder.mkdir()
    if case == "all_damaged":
        for i in range(5):
            (folder / f"s{i}.tar").write_bytes(torch.randint(0, 255, (4096,), dtype=torch.uint8).numpy().tobytes())
    args = [a for a in run_args if not a.startswith("data.cache_dir")]
    cfg = compose_config(*args, "model=tiny", "data=webdataset", f"data.train_shards={folder}")
    line = _refused(train_entry, cfg, capsys)
    expected = {"missing": "no such shard folder", "empty": "no .tar shards in folder",
                "all_damaged": "none of the 5 shards holds a usable sample (skipped: corrupt_shard 5)"}[case]
    assert line.startswith("error: data.train_shards: ") and expected in line, line
    assert not (tmp_path / "out").exists()
