"""How unevenly a model's block selection spreads over the key blocks: per layer and head, the longest
per-key-block list (how many query blocks select the key block selected most) against the mean list length.
The dk/dv kernel runs one program a key block, as long as its list; `sla2_kernels.selection.launch_order` starts
lists of at least `tuning.LONG_LIST_FACTOR` times the mean first.

    python scripts/testbed/key_block_popularity.py                       # the shipped testbed model, 128×256
    python scripts/testbed/key_block_popularity.py --sparsity 0.9 --scenes 4 --out popularity.json

Contents are held-out testbed scenes rendered, encoded by the model folder's VAE and captioned (as the attention
benchmark's sets are), noised at a few flow-matching levels; the capture runs dense attention on the CPU. Two
selections: bestmass (each query block's k key blocks with the most true softmax mass, what a trained router aims
at) and the untrained router's pooled scores (identity projections).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from sla2_train.attention import reference as ref
from sla2_train.attnbench.metrics import Teacher
from sla2_train.attnbench.testbed_sets import testbed_sets

SELECTIONS = ("bestmass", "pooled")


def list_lengths(mask: torch.Tensor) -> torch.Tensor:
    """[B, H, nq, nk] bool selection → [B, H, nk] list lengths (query blocks selecting each key block)."""
    return mask.sum(dim=-2)


def popularity(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparsity: float, block_q: int, block_k: int):
    """Per head [H] and selection: (longest list, mean list length) of one content [1, H, N, D]."""
    t = Teacher(q, k, v, block_q, block_k)
    nq, nk = t.block_mass.shape[-2:]
    k_sel = ref.topk_count(nk, sparsity)
    eye = torch.eye(q.shape[-1]).expand(q.shape[1], -1, -1)
    masks = {"bestmass": t.best_mask(k_sel),
             "pooled": ref.hard_topk(ref.router_scores(t.q, t.k, eye, eye, block_q, block_k), k_sel).mask}
    mean = nq * k_sel / nk
    return {name: (list_lengths(m)[0].amax(dim=-1), mean) for name, m in masks.items()}, nq


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/testbed-t2v", help="diffusers folder (transformer/, vae/, text_encoder/)")
    p.add_argument("--size", default="17x128x256", help="frames×height×width of the rendered scenes")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--sigmas", default="0.25,0.5,0.75")
    p.add_argument("--sparsity", type=float, default=0.97)
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-k", type=int, default=64)
    p.add_argument("--out", help="JSON file for the per-layer, per-head numbers")
    args = p.parse_args(argv)
    try:
        size = [int(x) for x in args.size.split("x")]
        assert len(size) == 3
    except (ValueError, AssertionError):
        p.error(f"--size {args.size}: expected frames×height×width, e.g. 17x128x256")
    for sub in ("transformer", "vae", "text_encoder"):
        if not (Path(args.model) / sub).is_dir():
            p.error(f"--model {args.model}: no {sub}/ folder there (a diffusers folder of the testbed model)")
    model = WanTransformer3DModel.from_pretrained(str(Path(args.model) / "transformer")).float()
    sets = testbed_sets(model, args.model, size, 0, args.scenes, [float(s) for s in args.sigmas.split(",")])
    rows = []
    print(f"{args.model} at {args.size}, {args.scenes} held-out scenes × σ {args.sigmas}, sparsity {args.sparsity}: "
          f"longest list ÷ mean list length, median [max] over contents")
    for name, layer in zip(sets.heldout.names, sets.heldout.layers):
        per = {s: [] for s in SELECTIONS}
        for q, k, v in layer:
            res, nq = popularity(q, k, v, args.sparsity, args.block_q, args.block_k)
            for s in SELECTIONS:
                longest, mean = res[s]
                per[s].append(longest.float() / mean)
        for h in range(len(per["bestmass"][0])):
            row = {"layer": name, "head": h, "query_blocks": nq}
            for s in SELECTIONS:
                r = torch.stack([x[h] for x in per[s]])
                row[s] = {"median": round(r.median().item(), 2), "max": round(r.max().item(), 2)}
            rows.append(row)
            print(f"  {name} head {h}: " + "  ".join(f"{s} {row[s]['median']:5.1f} [{row[s]['max']:5.1f}]"
                                                    for s in SELECTIONS))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
