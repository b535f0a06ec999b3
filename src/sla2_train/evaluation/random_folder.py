"""A random-weight Wan2.1 diffusers folder (transformer/, text_encoder/, tokenizer/, vae/) built on disk.

Evaluation without `model.path` loads this folder through the same from_pretrained code as real weights,
so the whole chain (tokenizer → UMT5 → transformer → VAE → mp4) runs without downloading anything. The
tokenizer is a word-level one over the shipped prompt sets' words (UMT5's 256k-entry vocabulary would only
make the random embedding table large); unknown words map to <unk>.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from sla2_train.models.wan_factory import check_arch

from .precision import cast_keeping_fp32
from .prompts import SHIPPED

SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2


def _vocabulary(extra_text: str) -> dict[str, int]:
    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(SHIPPED.glob("*.txt"))) + " " + extra_text
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text.lower())))
    return {w: i for i, w in enumerate([*SPECIALS, *words])}


def save_word_tokenizer(folder: Path, extra_text: str = "") -> int:
    """A T5-style fast tokenizer (pad 0, eos 1 appended, unk 2) saved with save_pretrained; returns its size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocabulary(extra_text)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return len(vocab)


class RandomWanFolder:
    """The random folder's recipe (config group eval/random_model): UMT5 and VAE sizes, weight dtype."""

    def __init__(self, text_encoder: Mapping[str, Any], vae: Mapping[str, Any], dtype: str = "float32",
                 seed: int = 0):
        self.text_encoder, self.vae = dict(text_encoder), dict(vae)
        self.dtype, self.seed = dtype, seed

    def spec(self, arch: Mapping[str, Any], extra_text: str) -> dict[str, Any]:
        return {"transformer": {k: list(v) if isinstance(v, tuple) else v for k, v in check_arch(arch).items()},
                "text_encoder": self.text_encoder, "vae": self.vae, "dtype": self.dtype, "seed": self.seed,
                "extra_text": extra_text}

    def build(self, root: Path, arch: Mapping[str, Any], extra_text: str = "", device: str = "cpu") -> Path:
        """The folder under `root` for this recipe and transformer `arch`, built once and reused."""
        spec = self.spec(arch, extra_text)
        digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
        folder = Path(root) / f"random-wan-{digest}"
        if (folder / "model_index.json").is_file():
            return folder
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        self._write(tmp, spec, device)
        tmp.rename(folder)  # complete folders only: an interrupted build leaves .partial, rebuilt next time
        return folder

    def _write(self, folder: Path, spec: dict[str, Any], device: str) -> None:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        torch.manual_seed(self.seed)
        dtype = getattr(torch, self.dtype)
        vocab_size = save_word_tokenizer(folder / "tokenizer", spec["extra_text"])
        with torch.device(device):  # a 1.3B random init is quick on the GPU, slow on a few CPU cores
            transformer = WanTransformer3DModel(**check_arch(spec["transformer"]))
            text = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **self.text_encoder))
            vae_args = dict(self.vae)
            z = vae_args.get("z_dim", 16)
            vae_args.setdefault("latents_mean", [0.0] * z)
            vae_args.setdefault("latents_std", [1.0] * z)
            vae = AutoencoderKLWan(**vae_args)
        cast_keeping_fp32(transformer, dtype).save_pretrained(folder / "transformer")
        text.to(dtype).save_pretrained(folder / "text_encoder")
        vae.save_pretrained(folder / "vae")  # the VAE stays float32, as Wan's own folder ships it
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "WanPipeline", "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "text_encoder": ["transformers", "UMT5EncoderModel"], "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"]}, indent=1))
