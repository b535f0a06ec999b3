"""Each backbone metric loads tiny random weights through its real loading code and computes its formula."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sla2_train.metrics import (
    AestheticQuality,
    BackgroundConsistency,
    ClipTextScore,
    DynamicDegree,
    ImagingQuality,
    LPIPSDistance,
    MissingWeights,
    MotionSmoothness,
    SubjectConsistency,
)
from sla2_train.metrics.backbones.preprocess import to_float
from sla2_train.metrics.temporal import frame_consistency
from sla2_train.models import ConfigError

from .conftest import VGG_CONVS


def static(video):
    return video[:1].expand(5, -1, -1, -1).contiguous()


def test_subject_consistency_from_a_saved_dino(backbones, video):
    metric = SubjectConsistency.load(str(backbones["dino"]))
    assert metric.score(static(video), "p") == pytest.approx(1.0, abs=1e-6)
    feats = metric.features.image(video)
    assert feats.shape == (video.shape[0], 16)
    assert metric.score(video, "p") == pytest.approx(frame_consistency(feats))
    # The CLS token of the last layer after the final norm, as the checkpoint's own ViTModel computes it.
    from transformers import ViTModel

    direct = ViTModel.from_pretrained(backbones["dino"], add_pooling_layer=False)
    x = F.interpolate(to_float(video[:2]), size=(32, 38), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    cls = direct(pixel_values=(x - mean) / std, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    assert torch.allclose(feats[:2], cls, atol=1e-5)


def test_background_consistency_and_clip_text_score_from_a_saved_clip(backbones, video):
    bg = BackgroundConsistency.load(str(backbones["clip"]))
    assert bg.score(static(video), "p") == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= bg.score(video, "p") <= 1.0
    clip = ClipTextScore.load(str(backbones["clip"]))
    text = F.normalize(clip.features.text("a red fox in the snow"), dim=-1)
    frames = F.normalize(clip.features.image(video), dim=-1)
    assert clip.score(video, "a red fox in the snow") == pytest.approx(float((frames @ text).mean()), abs=1e-6)
    assert clip.score(video, "a red fox in the snow") != pytest.approx(clip.score(video, "waves on rocks"))


def test_aesthetic_quality_is_the_head_on_normalised_clip_embeddings_over_ten(backbones, video):
    metric = AestheticQuality.load(str(backbones["clip_large"]), str(backbones["aesthetic_head"]))
    state = torch.load(backbones["aesthetic_head"], weights_only=True)
    emb = F.normalize(metric.features.image(video), dim=-1)
    x = emb
    for k in (0, 2, 4, 6, 7):  # the saved MLP, applied by hand
        x = x @ state[f"layers.{k}.weight"].T + state[f"layers.{k}.bias"]
    assert metric.score(video, "p") == pytest.approx(float(x.mean() / 10), abs=1e-6)


def test_aesthetic_head_of_one_linear_layer(tmp_path, backbones, video):
    torch.save({"weight": torch.zeros(1, 12), "bias": torch.tensor([55.0])}, tmp_path / "linear.pth")
    metric = AestheticQuality.load(str(backbones["clip_large"]), str(tmp_path / "linear.pth"))
    assert metric.score(video, "p") == pytest.approx(5.5)
    torch.save({"weight": torch.zeros(3, 12)}, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match="backbones.aesthetic_head"):
        AestheticQuality.load(str(backbones["clip_large"]), str(tmp_path / "wide.pth"))


def test_imaging_quality_and_motion_smoothness_from_torchscript(backbones):
    fade = torch.stack([torch.full((24, 20, 3), 20 * t, dtype=torch.uint8) for t in range(7)])
    iq = ImagingQuality.load(str(backbones["iqa"]))
    assert iq.score(fade, "p") == pytest.approx(float(torch.arange(7).mul(20).float().mean() / 255), abs=1e-6)
    # Frames are scaled so that their long side is at most max_side; a constant frame keeps its score.
    assert ImagingQuality.load(str(backbones["iqa"]), max_side=8).score(fade, "p") == pytest.approx(
        iq.score(fade, "p"), abs=1e-5)
    assert MotionSmoothness.load(str(backbones["interpolator"])).score(fade, "p") == 1.0


def _lpips_by_hand(vgg, lin, x, y):
    """LPIPS written out layer by layer from the state dicts: the twin of metrics/backbones/lpips.py."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    feats = []
    for img in (x, y):
        h, out = (img * 2 - 1 - shift) / scale, []
        for i in VGG_CONVS:
            if i in (5, 10, 17, 24):
                h = F.max_pool2d(h, 2)
            h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
            if i in (2, 7, 14, 21, 28):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        feats.append(out)
    return sum((lin[f"lin{k}.model.1.weight"] * (a - b) ** 2).sum(1).mean((-2, -1))
               for k, (a, b) in enumerate(zip(*feats)))


def test_lpips_matches_the_layer_by_layer_formula(backbones, video):
    metric = LPIPSDistance.load(str(backbones["lpips_vgg"]), str(backbones["lpips_lin"]))
    other = torch.randint(0, 256, video.shape, dtype=torch.uint8)
    assert metric.score(video, "p", reference=video) == 0.0
    vgg, lin = load_file(str(backbones["lpips_vgg"])), torch.load(backbones["lpips_lin"], weights_only=True)
    expected = _lpips_by_hand(vgg, lin, to_float(video), to_float(other)).mean()
    assert metric.score(video, "p", reference=other) == pytest.approx(float(expected), rel=1e-5)
    assert metric.score(video, "p", reference=other) == pytest.approx(metric.score(other, "p", reference=video),
                                                                       rel=1e-5)


def test_dynamic_degree_with_a_pluggable_flow(video):
    moving = DynamicDegree(lambda a, b: torch.full((a.shape[0], 2, *a.shape[-2:]), 3.0), fps=16)
    still = DynamicDegree(lambda a, b: torch.full((a.shape[0], 2, *a.shape[-2:]), 0.5), fps=16)
    # 40×48 frames: threshold 6·40/256 = 0.94 px; moving pairs have magnitude 3√2, still ones 0.5√2.
    assert moving.score(video, "p") == 1.0 and still.score(video, "p") == 0.0


def test_unset_weights_name_their_key_and_missing_files_fail(tmp_path):
    cases = [
        (lambda p: SubjectConsistency.load(p), "backbones.dino"),
        (lambda p: BackgroundConsistency.load(p), "backbones.clip"),
        (lambda p: ClipTextScore.load(p), "backbones.clip"),
        (lambda p: AestheticQuality.load(p, p), "backbones.clip_large"),
        (lambda p: ImagingQuality.load(p), "backbones.iqa"),
        (lambda p: MotionSmoothness.load(p), "backbones.interpolator"),
        (lambda p: DynamicDegree.load(p, fps=16), "backbones.raft"),
        (lambda p: LPIPSDistance.load(p, p), "backbones.lpips_vgg"),
    ]
    for load, key in cases:
        with pytest.raises(MissingWeights, match=f"set {key} to "):
            load(None)
        with pytest.raises(ConfigError, match=f"^{key}: no file or folder at"):
            load(str(tmp_path / "absent"))


def test_corrupt_weight_files_are_one_line_config_errors(tmp_path, backbones):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="backbones.iqa: .* is not a TorchScript file"):
        ImagingQuality.load(str(bad))
    with pytest.raises(ConfigError, match="backbones.lpips_vgg: cannot read weights"):
        LPIPSDistance.load(str(bad), str(backbones["lpips_lin"]))


def test_raft_without_torchvision_is_skipped_with_one_line(tmp_path):
    try:
        import torchvision  # noqa: F401
    except Exception:
        weights = tmp_path / "raft.pth"
        torch.save({}, weights)
        with pytest.raises(MissingWeights, match="install torchvision"):
            DynamicDegree.load(str(weights), fps=16)
    else:
        pytest.skip("torchvision is installed: the skip path does not apply")


def test_raft_weights_load_through_the_real_path_where_torchvision_exists(tmp_path):
    """Runs where torchvision imports (the GPU image has it; CI does not, where the skip path above is tested)."""
    video = torch.randint(0, 256, (5, 128, 144, 3), dtype=torch.uint8)  # RAFT's 4-level pyramid needs ≥ 128 px
    raft = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    saved = raft.raft_large(weights=None, progress=False).state_dict()
    path = tmp_path / "raft_large.pth"
    torch.save(saved, path)
    metric = DynamicDegree.load(str(path), fps=16)
    for name, tensor in metric.flow.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    a, b = (to_float(video[i:i + 1]) for i in (0, 1))
    flow = metric.flow(a, b)
    assert flow.shape == (1, 2, *a.shape[-2:]) and torch.isfinite(flow).all()
    assert metric.score(video, "p") in (0.0, 1.0)
