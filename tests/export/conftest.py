"""A tiny diffusers Wan pipeline on disk (random UMT5, tokenizer, VAE, the tiny transformer), and runners."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]

# A Unigram vocabulary in the tokenizers library makes a T5-like tokenizer: no sentencepiece model, no download.
WORDS = ["▁a", "▁cat", "▁dog", "▁runs", "▁on", "▁the", "▁grass", "▁red", "▁car", "▁slowly"]
LETTERS = "abcdefghijklmnopqrstuvwxyz▁"


def compose_tiny(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["model=tiny", "logger=none", *overrides])


def build_tiny_pipeline(folder: Path, *overrides: str) -> Path:
    """save_pretrained of a WanPipeline whose transformer is the `model=tiny` preset (with `overrides`)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    cfg = compose_tiny(*overrides)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, -1.0 - i) for i, w in enumerate(WORDS)] + [(c, -20.0) for c in LETTERS]
    unigram = Tokenizer(models.Unigram(vocab, unk_id=2))
    unigram.pre_tokenizer, unigram.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # as T5
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(vocab), d_model=cfg.model.text_dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8,
    ))
    c = cfg.model.latent_shape[0]
    vae = AutoencoderKLWan(base_dim=8, z_dim=c, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * c, latents_std=[1.0] * c)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.model.flow_shift)
    transformer = instantiate(cfg.model.transformer)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                transformer=transformer).save_pretrained(folder)
    return folder


def run_python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train(tmp: Path, *overrides: str) -> Path:
    """train.py for two steps on the tiny model and synthetic data; returns its last.ckpt."""
    res = run_python(
        "train.py", "model=tiny", "logger=none", f"output_root={tmp / 'out'}", f"data.cache_dir={tmp / 'cache'}",
        "data.num_workers=0", "trainer.limit_val_batches=0", "trainer.max_steps=2",
        "callbacks.progress.refresh_rate=0", *overrides,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (ckpt,) = (tmp / "out").glob(f"*-{overrides[0].split('=')[1]}-*/checkpoints/last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def trained_and_exported(tmp_path_factory):
    """base pipeline → stage 1 (2 steps) → exported → stage 2 from the exported folder (2 steps) → exported
    with the base pipeline's other components. Returns a dict of the paths."""
    from sla2_train.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    base = build_tiny_pipeline(tmp / "base")
    stage1 = train(tmp, "stage=distill", f"model.path={base}")
    stage1_folder = export_checkpoint(stage1, tmp / "stage1-exported")
    stage2 = train(tmp, "stage=qat", f"model.path={base}", f"init_from={stage1_folder}")
    res = run_python("-m", "sla2_train.export.cli", str(stage2), str(tmp / "pipeline"), "--base", str(base))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"base": base, "stage1": stage1, "stage1_folder": stage1_folder, "stage2": stage2,
            "pipeline": tmp / "pipeline"}


@pytest.fixture
def tiny_pipeline():
    """tiny_pipeline(folder, *overrides) → a tiny WanPipeline folder (see build_tiny_pipeline)."""
    return build_tiny_pipeline


@pytest.fixture
def compose_config():
    return compose_tiny
