"""Fixtures for the data tests: shard folders with known, freshly random contents."""

from __future__ import annotations

import pickle

import pytest
import torch

from sla2_train.data.format import encode_sample
from sla2_train.data.index import build_index, write_index
from sla2_train.data.writer import ShardWriter


def random_sample(latent_shape, text_dim, max_len):
    """Fresh random tensors, never zeros; text length varies per sample."""
    length = int(torch.randint(1, max_len + 1, (1,)))
    latents = torch.randn(*latent_shape) * 2 + 0.5
    text = torch.randn(length, text_dim) + 1.0
    return latents, text


@pytest.fixture
def make_shards(tmp_path):
    """make_shards(name, n, per_shard, ...) → (folder, {key: (latents fp32, text fp32)}) as stored (after dtype)."""

    def make(name="ds", num=10, per_shard=3, latent_shape=(3, 2, 5, 7), text_dim=6, max_len=9, dtype="float32"):
        folder = tmp_path / name
        truth, lens = {}, []
        with ShardWriter(folder, per_shard) as writer:
            for i in range(num):
                latents, text = random_sample(latent_shape, text_dim, max_len)
                key = f"{name}-{i:05d}"
                writer.write(key, encode_sample(key, latents, text, {"caption": f"c{i}"}, dtype))
                # Truth is what the shard can hold: the tensors rounded to the storage dtype.
                cast = getattr(torch, dtype)
                truth[key] = (latents.to(cast).float(), text.to(cast).float())
                lens.append(text.shape[0])
        write_index(folder, build_index(writer.finished, latent_shape, text_dim, dtype, lens, {k: "h" + k for k in truth}))
        return folder, truth

    return make


# ---- preparation fixtures: tiny Wan VAE / UMT5 / tokenizer saved to disk, synthetic videos -------------------

import av  # noqa: E402
import numpy as np  # noqa: E402

CAPTION_WORDS = "a red fox runs across snowy field under bright sun while birds fly over tall pine trees".split()


def write_video(path, num_frames, fps, width, height, seed=0, codec="mpeg4"):
    """A square of random colour moving over a gradient, with the frame index as the brightness of a bar."""
    rng = np.random.default_rng(seed)
    color = rng.integers(60, 255, 3)
    x0, y0 = rng.integers(0, max(1, width // 2)), rng.integers(0, max(1, height // 2))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)[None]
            x, y = (x0 + 2 * i) % (width - 8), (y0 + i) % (height - 8)
            img[y : y + 8, x : x + 8] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class _Bomb:
    """Unpickling this creates a marker file: proof that code in a payload ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def pickle_bomb(tmp_path):
    """(pickled payload that creates `marker` when unpickled, marker path): no test may ever create it."""
    marker = tmp_path / "pwned"
    return pickle.dumps(_Bomb(str(marker))), marker


@pytest.fixture(scope="session")
def video_writer():
    return write_video


@pytest.fixture(scope="session")
def random_caption():
    """random_caption(generator) → 2..11 words of the tiny tokenizer's vocabulary."""

    def make(gen):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        return " ".join(CAPTION_WORDS[int(i)] for i in torch.randint(0, len(CAPTION_WORDS), (n,), generator=gen))

    return make


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    """A local 'Wan diffusers folder' with a tiny random AutoencoderKLWan, UMT5 encoder and tokenizer."""
    from diffusers import AutoencoderKLWan
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("tiny_wan")
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    mean, std = (torch.randn(4) * 0.5).tolist(), (torch.rand(4) + 0.5).tolist()
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=mean, latents_std=std)
    vae.save_pretrained(root / "vae")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(CAPTION_WORDS)], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(root / "tokenizer")
    config = UMT5Config(vocab_size=tok.get_vocab_size(), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    assert AutoTokenizer.from_pretrained(root / "tokenizer")("a fox").input_ids[-1] == 1  # eos appended, as T5 does
    return root
