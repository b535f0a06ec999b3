"""The synthetic generator: deterministic, split by content, and each regime has the attention it claims."""

import math

import pytest
import torch

from sla2_train.attention import reference as ref
from sla2_train.attnbench.rope import apply_wan_rope, wan_rope_tables
from sla2_train.attnbench.synthetic import SyntheticLayer, regime
from sla2_train.attnbench.synthetic_sets import synthetic_sets

GRID = (2, 8, 12)


@pytest.fixture(scope="module")
def layer():
    return SyntheticLayer(GRID, ["local", "diffuse", "global", "content"], head_dim=64, model_seed=0)


def _probs(q, k):
    return torch.softmax(ref.scaled_scores(q.double(), k.double()), -1)[0]  # [H, N, N]


def test_deterministic_and_content_dependent(layer):
    a, b = layer.sample(3), layer.sample(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = layer.sample(4)
    assert not torch.allclose(a[0], c[0])
    assert a[0].shape == (1, 4, math.prod(GRID), 64)


def test_split_is_by_content_never_by_position():
    train, held, val = synthetic_sets(GRID, ["local"], 1, 3, 2, head_dim=32, validation_contents=2)
    assert [len(s.layers[0]) for s in (train, held, val)] == [3, 2, 2]
    contents = [q for s in (train, held, val) for q, _, _ in s.layers[0]]
    for i, a in enumerate(contents):
        assert a.shape == contents[0].shape  # every content covers the whole grid
        assert all(not torch.allclose(a, b) for b in contents[i + 1 :])  # no content in two splits


def test_an_empty_validation_split_is_refused_by_name():
    splits = synthetic_sets(GRID, ["local"], 1, 1, 1, head_dim=32)
    assert splits.measured("heldout") is splits.heldout
    with pytest.raises(ValueError, match="--split validation: the validation set has no contents"):
        splits.measured("validation")
    with pytest.raises(ValueError, match="--split must be heldout or validation, got 'test'"):
        splits.measured("test")


def test_regimes(layer):
    q, k, v = layer.sample(1)
    p = _probs(q, k)
    n = p.shape[-1]
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1).mean(-1) / math.log(n)
    pos = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in GRID], indexing="ij"), -1)
    dist = torch.cdist(pos.reshape(-1, 3), pos.reshape(-1, 3))
    mean_dist = (p * dist).sum(-1).mean(-1)
    local, diffuse, glob, content = range(4)
    assert entropy[diffuse] > 0.95  # nearly uniform
    assert entropy[local] < entropy[diffuse] - 0.05 and mean_dist[local] < 0.8 * mean_dist[diffuse]
    top4 = p[glob].sum(0).topk(4).values.sum() / n  # the four global keys take most of every row
    assert top4 > 0.5
    # where the content head looks depends on the content; where the local head looks, on position
    p2 = _probs(*layer.sample(2)[:2])
    overlap = torch.minimum(p, p2).sum(-1).mean(-1)
    assert overlap[content] < overlap[local] - 0.05
    span = (ref.scaled_scores(q, k).amax(-1) - ref.scaled_scores(q, k).amin(-1)).mean(-1)[0]
    assert span[local] > 3 * span[diffuse]  # peaked vs flat logits


def test_rope_makes_the_position_part_depend_on_offset_only():
    """Wan's RoPE: a constant vector at every token gives logits that depend on the offset, not the place."""
    grid, d = (3, 4, 5), 24
    tables = wan_rope_tables(grid, d)
    p = torch.randn(d, dtype=torch.float64)
    x = apply_wan_rope(p.expand(1, math.prod(grid), 1, d).clone(), tables)[0, :, 0]
    s = (x @ x.T).view(*grid, *grid)
    torch.testing.assert_close(s[0, 0, 0, 1, 2, 3], s[1, 1, 1, 2, 3, 4])
    torch.testing.assert_close(s[0, 1, 0, 2, 2, 1], s[0, 2, 1, 2, 3, 2])
    assert not torch.allclose(s[0, 0, 0, 1, 2, 3], s[0, 0, 0, 1, 2, 4])


def test_unknown_regime_is_named():
    with pytest.raises(ValueError, match="unknown attention regime 'sparse'"):
        regime("sparse")
