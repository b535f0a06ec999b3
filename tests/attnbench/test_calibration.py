"""SLA's output projection in the attention table: a ridge regression whose λ is chosen by leaving one calibration
prompt out, against an independent computation (augmented least squares, errors summed directly)."""

import pytest
import torch

from sla2_train.attnbench.calibration import RIDGES, choose_ridge, held_out_error, ridge_solve


def stats(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x, t [H, rows, D] → (xᵀx, xᵀt) per head."""
    return torch.einsum("hnd,hne->hde", x, x), torch.einsum("hnd,hne->hde", x, t)


def augmented_fit(x: torch.Tensor, t: torch.Tensor, ridge: float) -> torch.Tensor:
    """min ‖t − xW‖² + λ‖W‖² with λ = ridge · tr(xᵀx)/D, as least squares on x stacked over √λ·I."""
    if ridge == float("inf"):
        return torch.zeros(x.shape[0], x.shape[-1], t.shape[-1], dtype=x.dtype)
    d = x.shape[-1]
    ws = []
    for h in range(x.shape[0]):
        lam = ridge * (x[h] ** 2).sum() / d
        a = torch.cat([x[h], lam.sqrt() * torch.eye(d, dtype=x.dtype)])
        b = torch.cat([t[h], torch.zeros(d, t.shape[-1], dtype=x.dtype)])
        ws.append(torch.linalg.lstsq(a, b).solution)
    return torch.stack(ws)


def folds(heads: int, dim: int, rows: list[int], signal: float, seed: int):
    """Nearly collinear features (a few directions plus a little noise) and a target that is signal · xW + noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(heads, 3, dim, generator=g, dtype=torch.float64)
    w_true = torch.randn(heads, dim, dim, generator=g, dtype=torch.float64) / dim ** 0.5
    out = []
    for n in rows:
        x = torch.randn(heads, n, 3, generator=g, dtype=torch.float64) @ basis
        x = x + 0.03 * torch.randn(heads, n, dim, generator=g, dtype=torch.float64)
        t = signal * x @ w_true + torch.randn(heads, n, dim, generator=g, dtype=torch.float64)
        out.append((x, t))
    return out


@pytest.mark.parametrize("heads,dim,rows", [(2, 8, [30, 50]), (3, 16, [40, 25, 60])])
@pytest.mark.parametrize("ridge", [1e-6, 1e-2, 10.0, float("inf")])
def test_ridge_solve_equals_augmented_least_squares(heads, dim, rows, ridge):
    x, t = (torch.cat(parts, 1) for parts in zip(*folds(heads, dim, rows, 1.0, seed=len(rows))))
    gram, cross = stats(x, t)
    w = ridge_solve(gram, cross, torch.full((heads,), ridge, dtype=torch.float64))
    torch.testing.assert_close(w, augmented_fit(x, t, ridge), rtol=1e-6, atol=1e-8)
    # held_out_error is the squared error less ‖t‖²
    direct = ((t - x @ w) ** 2).sum((1, 2)) - (t ** 2).sum((1, 2))
    torch.testing.assert_close(held_out_error(w, gram, cross), direct, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("signal,seed", [(0.0, 0), (0.0, 1), (3.0, 2), (3.0, 3), (0.3, 4)])
def test_choose_ridge_is_the_leave_one_out_minimum(signal, seed):
    data = folds(3, 16, [40, 40, 40], signal, seed)
    grams, crosses = zip(*(stats(x, t) for x, t in data))
    chosen = choose_ridge(list(grams), list(crosses))
    for h in range(3):
        errors = []
        for r in RIDGES:
            err = 0.0
            for i, (x, t) in enumerate(data):
                xs = torch.cat([d[0][h:h + 1] for j, d in enumerate(data) if j != i], 1)
                ts = torch.cat([d[1][h:h + 1] for j, d in enumerate(data) if j != i], 1)
                w = augmented_fit(xs, ts, r)
                err += float(((t[h] - x[h] @ w[0]) ** 2).sum())
            errors.append(err)
        assert float(chosen[h]) == RIDGES[min(range(len(RIDGES)), key=errors.__getitem__)]


def test_overfitting_is_refused_and_signal_is_kept():
    """A target unrelated to the features: a small λ overfits the left-out prompts, so a large one (or W = 0) is
    chosen. A strong linear target: a small λ is chosen."""
    for seed in range(3):
        noise = folds(2, 16, [24, 24], 0.0, seed)
        grams, crosses = zip(*(stats(x, t) for x, t in noise))
        assert (choose_ridge(list(grams), list(crosses)) >= 1.0).all()
        signal = folds(2, 16, [200, 200], 5.0, seed)
        grams, crosses = zip(*(stats(x, t) for x, t in signal))
        assert (choose_ridge(list(grams), list(crosses)) <= 1e-2).all()


def _calibration_with(folds_by_key: dict) -> "Calibration":
    from sla2_train.attnbench.calibration import Calibration

    calib = Calibration(fit=None, sla_mask="identity")
    for key, (x, t) in folds_by_key.items():  # key: (prompt, (step, branch)), as Calibration.add files a capture
        gram, cross = stats(x, t)
        calib.gram[(0.9, 0)][key], calib.cross[(0.9, 0)][key] = gram, cross
    return calib


def test_one_calibration_prompt_leaves_one_step_out():
    """With a single calibration prompt, λ is chosen by leaving one sampling step out, both its guidance branches
    together: a step's two branches are near copies, so leaving one branch out lets the other predict it and
    picks the smallest λ even for a target unrelated to the features, which the steps refuse as several prompts
    do. With one capture W = 0; with several prompts, the folds are the prompts, each summed over its captures."""
    g = torch.Generator().manual_seed(11)
    for seed in range(3):
        noise = folds(2, 16, [24, 24, 24], 0.0, seed)
        captures = {}
        for step, (x, t) in enumerate(noise):
            captures[(0, (step, "cond"))] = (x, t)
            captures[(0, (step, "uncond"))] = (x + 1e-3 * torch.randn(x.shape, generator=g, dtype=x.dtype),
                                               t + 1e-3 * torch.randn(t.shape, generator=g, dtype=t.dtype))
        by_capture = [stats(x, t) for x, t in captures.values()]
        assert (choose_ridge(*map(list, zip(*by_capture))) <= 1e-2).all()  # what leaving one branch out picks
        calib = _calibration_with(captures)
        calib.sla_proj(0.9, 0)
        assert (calib.sla_ridge[(0.9, 0)] >= 1.0).all()
    calib = _calibration_with({(0, (5, "cond")): noise[0]})
    assert float(calib.sla_proj(0.9, 0).abs().max()) == 0.0
    data = folds(2, 16, [30, 30, 30, 30], 0.3, seed=7)
    keys = [(prompt, (step, "cond")) for prompt in (0, 1) for step in (2, 5)]
    calib = _calibration_with(dict(zip(keys, data)))
    calib.sla_proj(0.9, 0)
    per_prompt = [stats(torch.cat([data[0][0], data[1][0]], 1), torch.cat([data[0][1], data[1][1]], 1)),
                  stats(torch.cat([data[2][0], data[3][0]], 1), torch.cat([data[2][1], data[3][1]], 1))]
    grams, crosses = zip(*per_prompt)
    torch.testing.assert_close(calib.sla_ridge[(0.9, 0)], choose_ridge(list(grams), list(crosses)))
