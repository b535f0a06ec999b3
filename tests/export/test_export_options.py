"""Export and install across attention options, EMA weights, and bad input as one clear line."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from hydra.utils import instantiate

from sla2_train import install_sla2
from sla2_train.export import EMA_KEY, export_checkpoint, read_weights
from sla2_train.models import ConfigError, set_attention_mode


def save_checkpoint(module, path, ema=None):
    """What Lightning writes for SLA2Module (state_dict + on_save_checkpoint's entries), plus an EMA entry."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    if ema is not None:
        checkpoint[EMA_KEY] = {"state_dict": ema}
    torch.save(checkpoint, path)
    return path


def trained_module(compose_config, *overrides):
    """SLA2Module with every weight perturbed, as if training had moved router, α and DiT off their init."""
    torch.manual_seed(torch.seed() % 2**31)
    cfg = compose_config(*overrides)
    module = instantiate(cfg.module)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module, cfg


@pytest.mark.parametrize(
    "overrides",
    [
        ("attention.alpha_mode=per_head",),
        ("attention.alpha_mode=per_block", "attention.sparsity=0.7"),
        ("attention.alpha_mode=predicted", "attention.block_k=8", "stage=qat"),
        ("attention=sla", "stage=qat"),
    ],
)
def test_installed_transformer_computes_what_the_trained_one_does(compose_config, tmp_path, overrides):
    module, cfg = trained_module(compose_config, *overrides)
    out = export_checkpoint(save_checkpoint(module, tmp_path / "last.ckpt"), tmp_path / "exported")
    bare = WanTransformer3DModel.from_pretrained(out / "transformer")
    install_sla2(bare, out)
    model = module.model.eval()
    set_attention_mode(model, topk="hard")
    c, f, h, w = cfg.model.latent_shape
    quant = [m.quant for m in model.modules() if hasattr(m, "quant")]
    assert quant and quant == [m.quant for m in bare.modules() if hasattr(m, "quant")]  # the mode travelled too
    for batch in (1, 3):
        x = torch.randn(batch, c, f, h, w)
        t, text = torch.rand(batch) * 1000, torch.randn(batch, cfg.model.text_len, cfg.model.text_dim)
        with torch.no_grad():
            expected = model(x, t, text).sample
            err = (bare(x, t, text).sample - expected).abs()
            # Equal up to float rounding (CPU matmuls round by the operands' memory alignment, so two copies of a
            # weight can differ in the last bit), which the low-bit branch can turn into one quantisation step on
            # a few elements: bounded, and rare on average. Without it, rounding is all there is.
            assert err.max() < 1e-3 and err.mean() < 1e-6, (float(err.max()), float(err.mean()))
            set_attention_mode(model, quant=False)
            set_attention_mode(bare, quant=False)
            torch.testing.assert_close(bare(x, t, text).sample, model(x, t, text).sample, rtol=1e-5, atol=1e-5)
            set_attention_mode(model, quant=quant[0])
            set_attention_mode(bare, quant=quant[0])
    # Fresh SLA2 modules (identity router, initial α) compute something else: the saved state was used.
    fresh = WanTransformer3DModel.from_pretrained(out / "transformer")
    instantiate(cfg.attention).apply(fresh, cfg.model.latent_shape)
    with torch.no_grad():
        assert (fresh(x, t, text).sample - expected).abs().max() > 1e-4


def test_ema_weights_are_exported_when_the_checkpoint_has_them(compose_config, tmp_path):
    module, _ = trained_module(compose_config, "stage=qat")
    state = module.state_dict()
    # An EMA of the trainable weights only: everything else comes from state_dict.
    ema = {k: v + 1.0 for k, v in list(state.items())[:5]}
    ckpt = save_checkpoint(module, tmp_path / "last.ckpt", ema=ema)
    out = export_checkpoint(ckpt, tmp_path / "ema", dtype="bfloat16")
    raw = export_checkpoint(ckpt, tmp_path / "raw", ema=False)
    assert json.loads((out / "transformer" / "sla2.json").read_text())["ema"] is True
    exported, not_averaged = read_weights(out).weights, read_weights(raw).weights
    for name, value in state.items():
        key = name.removeprefix("model.")
        want = ema.get(name, value)
        is_sla2 = ".attn1.processor." in key
        assert exported[key].dtype == (torch.float32 if is_sla2 else torch.bfloat16)  # SLA2 stays fp32
        torch.testing.assert_close(exported[key].float(), want.to(exported[key].dtype).float())
        assert torch.equal(not_averaged[key], value)


def test_ema_for_unknown_names_is_refused(compose_config, tmp_path):
    module, _ = trained_module(compose_config)
    ckpt = save_checkpoint(module, tmp_path / "last.ckpt", ema={"model.nope.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="EMA weights for names the model lacks"):
        export_checkpoint(ckpt, tmp_path / "out")


def test_the_architecture_comes_from_the_checkpoint_or_the_base(compose_config, tmp_path, tiny_pipeline):
    module, _ = trained_module(compose_config)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    del checkpoint["sla2"]["transformer"]  # as a checkpoint that does not record it
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match="records no transformer config; pass --base"):
        export_checkpoint(tmp_path / "old.ckpt", tmp_path / "a")
    base = tiny_pipeline(tmp_path / "base")
    out = export_checkpoint(tmp_path / "old.ckpt", tmp_path / "b", base=base, symlink_base=True)
    assert (out / "vae").is_symlink() and (out / "transformer" / "config.json").is_file()
    assert torch.equal(read_weights(out).weights["proj_out.weight"], module.model.proj_out.weight)
    other = tiny_pipeline(tmp_path / "other", "model.transformer.arch.ffn_dim=48")
    ckpt = save_checkpoint(module, tmp_path / "new.ckpt")
    with pytest.raises(ConfigError, match=r"^--base .*another architecture.*ffn_dim=64 \(base: 48\)"):
        export_checkpoint(ckpt, tmp_path / "c", base=other)


@pytest.mark.parametrize(
    "args, words",
    [
        (["{tmp}/no.ckpt", "{tmp}/out"], ["checkpoint", "no.ckpt"]),
        (["{ckpt}", "{tmp}/out", "--base", "{tmp}/nobase"], ["--base", "nobase", "does not exist"]),
        (["{ckpt}", "{tmp}"], ["exists and is not empty"]),
        (["{tmp}/garbage.ckpt", "{tmp}/out"], ["garbage.ckpt", "not a readable PyTorch checkpoint"]),
    ],
)
def test_bad_input_is_one_line(compose_config, tmp_path, capsys, args, words):
    from sla2_train.export.cli import main

    module, _ = trained_module(compose_config)
    ckpt = save_checkpoint(module, tmp_path / "last.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as code:
        main([a.format(tmp=tmp_path, ckpt=ckpt) for a in args])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(w in err[0] for w in words), err[0]
