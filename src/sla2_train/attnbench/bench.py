"""The stage-1 benchmark: per sparsity, train each layer on the train set, measure on the held-out set.

Routers compared at hard Top-k: identity (SLA's pooled heuristic: the untrained router), learned (stage 1 on
the train set), bestmass (per query block the k key blocks with the most true softmax mass), and optionally
pooled_oracle (stage 1 fitted on the held-out set itself: what the pooled bilinear router can reach at best
with this objective). Identity and bestmass get the per-head α of their masks on the train set by the recipe's
α fit (least squares if it has none); trained routers keep their own α.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from sla2_train.attention import reference as ref
from sla2_train.attention.distill import LeastSquaresFit, HardMaskFit

from .metrics import Teacher, mask_metrics
from .sets import AttentionSet
from .stage1 import Stage1Recipe

ROUTERS = ("identity", "learned", "bestmass")


def _masks(routers: dict, t: Teacher, k_sel: int) -> dict[str, torch.Tensor]:
    masks = {name: ref.hard_topk(attn._scores(t.q, t.k), k_sel).mask for name, attn in routers.items()}
    return {**masks, "bestmass": t.best_mask(k_sel)}


@torch.no_grad()
def fit_alpha(contents, routers: dict, block_q: int, block_k: int, k_sel: int, fit=None) -> dict[str, torch.Tensor]:
    """Per-head α [H] of each router's hard mask (and bestmass's) over `contents`, by `fit` (a stage-1 α fit of
    attention/distill.py; default least squares), so that every router is mixed the way training calibrates."""
    fit = fit if isinstance(fit, HardMaskFit) else LeastSquaresFit()
    stats: dict[str, torch.Tensor] = defaultdict(lambda: 0)
    for q, k, v in contents:  # one content at a time: a Teacher holds its N × N softmax
        t = Teacher(q, k, v, block_q, block_k)
        for name, mask in _masks(routers, t, k_sel).items():
            stats[name] = stats[name] + fit.mask_statistics(t.q, t.k, t.v, mask, block_q, block_k, per_head=True)
    return {name: fit.solve(s)[:, 0] for name, s in stats.items()}


@torch.no_grad()
def evaluate(contents, trained: dict, identity, block_q: int, block_k: int, k_sel: int, alphas: dict) -> dict:
    """Mean over `contents` of every router's per-head metrics: {router: {metric: [H]}}.

    Trained routers use their own α; the others the per-head α given in `alphas`."""
    sums: dict[str, dict[str, torch.Tensor]] = defaultdict(lambda: defaultdict(float))
    for q, k, v in contents:
        t = Teacher(q, k, v, block_q, block_k)
        best = t.best_mask(k_sel)
        for name, mask in _masks({"identity": identity, **trained}, t, k_sel).items():
            if name in trained:
                attn = trained[name]
                alpha = attn.alpha(attn._mass(attn._scores(t.q, t.k), mask, t.k.shape[-2]))
            else:
                alpha = alphas[name][None, :, None]
            for metric, value in mask_metrics(t, mask, alpha, best).items():
                sums[name][metric] = sums[name][metric] + value / len(contents)
    return {name: dict(values) for name, values in sums.items()}


def run(train: AttentionSet, heldout: AttentionSet, recipe: Stage1Recipe, sparsities, block_q: int, block_k: int,
        oracle: bool = False, progress=print) -> list[dict]:
    """Rows {sparsity, layer, head, label, router, k, metrics..., train_seconds} for every combination."""
    rows = []
    for sparsity in sparsities:
        for li, name in enumerate(train.names):
            start = time.perf_counter()
            trained = {"learned": recipe.train(train.layers[li], sparsity, block_q, block_k)}
            seconds = time.perf_counter() - start
            if oracle:
                trained["pooled_oracle"] = recipe.train(heldout.layers[li], sparsity, block_q, block_k)
            attn = trained["learned"]
            device = attn.router.proj_q.device
            identity = recipe.build(attn.num_heads, attn.head_dim, sparsity, block_q, block_k).to(device)
            k_sel = ref.topk_count(ref.num_blocks(train.layers[li][0][1].shape[-2], block_k), sparsity)
            alphas = fit_alpha(train.layers[li], {"identity": identity}, block_q, block_k, k_sel, recipe.calibrate)
            result = evaluate(heldout.layers[li], trained, identity, block_q, block_k, k_sel, alphas)
            progress(f"sparsity {sparsity} {name}: stage 1 trained in {seconds:.1f} s")
            for router, metrics in result.items():
                for h, label in enumerate(train.head_labels[li]):
                    rows.append({
                        "sparsity": sparsity, "layer": name, "head": h, "label": label, "router": router,
                        "k": k_sel, "train_seconds": seconds,
                        **{m: float(val[h]) for m, val in metrics.items()},
                    })
    return rows
