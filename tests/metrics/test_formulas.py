"""VBench formulas and FLOP counts on constructed inputs whose answers are known."""

import math

import pytest
import torch
import torch.nn.functional as F

from sla2_train.metrics import dense_attention_flops, sla2_attention_flops, video_psnr, video_ssim
from sla2_train.metrics.temporal import (
    frame_consistency,
    is_dynamic,
    linear_blend,
    motion_smoothness,
    sample_at_fps,
    temporal_flickering,
    top_flow_magnitude,
)


def const_video(values, h=6, w=5):
    return torch.stack([torch.full((h, w, 3), v, dtype=torch.uint8) for v in values])


def test_temporal_flickering_known_values(video):
    assert temporal_flickering(const_video([7, 7, 7])) == 1.0
    assert temporal_flickering(const_video([0, 255, 0, 255])) == 0.0
    assert temporal_flickering(const_video([10, 20, 40])) == pytest.approx((255 - 15) / 255)
    v = video.double()
    brute = sum((v[t] - v[t - 1]).abs().mean() for t in range(1, v.shape[0])) / (v.shape[0] - 1)
    assert temporal_flickering(video) == pytest.approx(float((255 - brute) / 255), rel=1e-9)


def test_temporal_flickering_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        temporal_flickering(torch.zeros(3, 4, 4, 3))


def test_frame_consistency_known_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert frame_consistency(torch.stack([e1, 3 * e1, e1])) == pytest.approx(1.0)
    # t=1: cos 1 to both; t=2: cos 1/√2 to both.
    f = torch.stack([e1, e1, (e1 + e2)])
    assert frame_consistency(f) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # Negative cosines count as 0 (VBench's max(0, ·)).
    assert frame_consistency(torch.stack([e1, -e1])) == 0.0
    assert frame_consistency(torch.stack([e1, e2, e1])) == pytest.approx((0 + 0.5) / 2)


def test_frame_consistency_matches_a_loop(video):
    feats = torch.randn(9, 5)
    first, acc = F.normalize(feats[0], dim=0), 0.0
    for t in range(1, 9):
        cur, prev = F.normalize(feats[t], dim=0), F.normalize(feats[t - 1], dim=0)
        acc += (max(0.0, float(cur @ prev)) + max(0.0, float(cur @ first))) / 2
    assert frame_consistency(feats) == pytest.approx(acc / 8, rel=1e-6)


def test_motion_smoothness_is_exact_for_a_linear_fade_with_blending():
    fade = const_video([0, 20, 40, 60, 80, 100, 120])
    assert motion_smoothness(fade, linear_blend) == 1.0
    # A black "interpolator" misses the odd frames by their whole brightness: frames 1, 3, 5 = 20, 60, 100.
    black = motion_smoothness(fade, lambda a, b: torch.zeros_like(a))
    assert black == pytest.approx((255 - 60) / 255)


def test_motion_smoothness_uses_even_frames_to_rebuild_odd_ones(video):
    seen = []

    def spy(a, b):
        seen.append((a.clone(), b.clone()))
        return a

    motion_smoothness(video, spy, batch=2)
    a = torch.cat([s[0] for s in seen])
    b = torch.cat([s[1] for s in seen])
    frames = video.permute(0, 3, 1, 2).float() / 255
    assert torch.equal(a, frames[0:-2:2]) and torch.equal(b, frames[2::2])


def test_top_flow_magnitude_and_dynamic_threshold():
    flow = torch.zeros(2, 2, 20, 20)
    flow[0, 0].view(-1)[:20] = 6.0  # exactly the top 5% (20 of 400 pixels): magnitude 10 with v = 8
    flow[0, 1].view(-1)[:20] = 8.0
    flow[1, 0] = 3.0
    assert top_flow_magnitude(flow).tolist() == pytest.approx([10.0, 3.0])
    # 256×256, 16 frames: threshold 6 px, at least round(4·16/16) = 4 moving pairs.
    assert is_dynamic(torch.tensor([7.0] * 4 + [0.0] * 11), 16, 256, 256)
    assert not is_dynamic(torch.tensor([7.0] * 3 + [0.0] * 12), 16, 256, 256)
    assert not is_dynamic(torch.tensor([5.0] * 15), 16, 256, 256)
    assert is_dynamic(torch.tensor([5.0] * 15), 16, 128, 200)  # threshold 3 at 128 px
    assert sample_at_fps(torch.arange(16), 16).tolist() == list(range(0, 16, 2))
    assert sample_at_fps(torch.arange(5), 6).tolist() == list(range(5))


def test_pixel_psnr_and_ssim_known_values(video):
    ref = video.permute(3, 0, 1, 2)[None].float() / 255
    shifted = (video.int() + 5).clamp(max=255)
    mse = float(((shifted.float() - video.float()) / 255).pow(2).mean())
    pred = shifted.permute(3, 0, 1, 2)[None].float() / 255
    assert video_psnr(pred, ref, data_range=1.0) == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    assert video_psnr(ref, ref, data_range=1.0) == math.inf
    assert video_ssim(ref, ref, data_range=1.0) == pytest.approx(1.0)
    assert video_ssim(torch.rand_like(ref), ref, data_range=1.0) < 0.2


def test_attention_flops_conventions():
    assert dense_attention_flops(2, 3, 100, 8) == 4 * 2 * 3 * 100 * 100 * 8
    # Every key block selected: the sparse part is dense attention and the linear branch is empty.
    full = sla2_attention_flops(1, 2, 256, 16, 64, 32, selected_blocks=8)
    assert full["sparse"] == dense_attention_flops(1, 2, 256, 16) and full["linear"] == 0
    sparse = sla2_attention_flops(1, 2, 256, 16, 64, 32, selected_blocks=1)
    assert sparse["sparse"] == dense_attention_flops(1, 2, 256, 16) / 8
    assert sparse["linear"] == 2 * 2 * 256 * 16 * 16 + 2 * 4 * 1 * 16 * 16 + 2 * 2 * 256 * 16 * 17
    assert sparse["total"] == sparse["sparse"] + sparse["linear"] + sparse["router"]
    # Wan2.1-1.3B at 480p, 97%: kept blocks = round(0.03 · 512) = 15 of 512 key blocks.
    wan = sla2_attention_flops(1, 12, 32760, 128, 128, 64, selected_blocks=15)
    assert wan["total"] / dense_attention_flops(1, 12, 32760, 128) == pytest.approx(0.0334, abs=0.002)
