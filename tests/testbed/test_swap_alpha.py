"""scripts/testbed/swap_alpha.py: checkpoint A with B's α, every other entry A's; mismatches refused in one line."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testbed" / "swap_alpha.py"
spec = importlib.util.spec_from_file_location("swap_alpha", SCRIPT)
swap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(swap)


def _ckpt(seed: int, layers: int = 2, heads: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(layers):
        p = f"model.blocks.{i}.attn1.processor.attention."
        state[p + "alpha.logit"] = torch.randn(heads, generator=g)
        state[p + "router.proj_q"] = torch.randn(heads, 4, 4, generator=g)
        state[f"model.blocks.{i}.ff.weight"] = torch.randn(4, 4, generator=g)
    return {"state_dict": state, "global_step": seed, "sla2": {"sparsity": 0.97 + seed}}


def test_the_output_has_b_alpha_and_everything_else_from_a(tmp_path):
    a, b = _ckpt(1), _ckpt(2)
    for name, c in (("a", a), ("b", b)):
        torch.save(c, tmp_path / f"{name}.ckpt")
    assert swap.main([str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"), str(tmp_path / "out" / "c.ckpt")]) == 0
    out = torch.load(tmp_path / "out" / "c.ckpt", weights_only=True)
    assert out.keys() == a.keys() and out["sla2"] == a["sla2"] and out["global_step"] == 1
    assert out["state_dict"].keys() == a["state_dict"].keys()
    for k, v in out["state_dict"].items():
        want = b if ".alpha." in k else a
        assert torch.equal(v, want["state_dict"][k]), k
    assert sum(".alpha." in k for k in out["state_dict"]) == 2


def test_mismatched_alpha_is_refused_in_one_line(tmp_path, capsys):
    a, b = _ckpt(1), _ckpt(2, heads=4)
    torch.save(a, tmp_path / "a.ckpt")
    torch.save(b, tmp_path / "b.ckpt")
    assert swap.main([str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"), str(tmp_path / "c.ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("swap_alpha: model.blocks.0.attn1.processor.attention.alpha.logit: shape (3,) in A, "
                          "(4,) in B")
    assert "\n" not in err and not (tmp_path / "c.ckpt").exists()
    with pytest.raises(ValueError, match="different α parameters"):
        swap.swap_alpha(_ckpt(1), _ckpt(2, layers=3))
    with pytest.raises(ValueError, match="no SLA2 α"):
        swap.swap_alpha({"state_dict": {"x": torch.zeros(1)}}, _ckpt(2))
