"""Write a copy of stage checkpoint A whose α comes from checkpoint B, everything else from A.

    python scripts/testbed/swap_alpha.py A.ckpt B.ckpt OUT.ckpt

Each router's α is fitted to its own masks, so two routers' stage 2s differ in α as well as in the blocks they
select (on the testbed at 97%: 0.66–0.73 after the learned router's stage 1, 0.60 for the heuristic's). Starting
stage 2 from A's router with B's α (`train.py stage=qat init_from=OUT.ckpt`) separates the two. α is every SLA2
layer's `attention.alpha.*` parameters; A and B must hold the same ones, of the same shapes (the same model,
sparsity and alpha_mode). The output keeps A's other entries (its recorded attention options among them), so
init_from checks it against the run as it would A. Tensors are read with weights_only=True.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ALPHA = ".attention.alpha."


def alpha_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in state if ALPHA in k)


def mean_alpha(state: dict[str, torch.Tensor], keys: list[str]) -> float | None:
    """The mean of σ(logit) over the per-head or per-block α logits (None for the predicted mode's weights)."""
    logits = [state[k].float().flatten() for k in keys if k.endswith(".logit")]
    return torch.sigmoid(torch.cat(logits)).mean().item() if logits else None


def swap_alpha(a: dict, b: dict) -> dict:
    """Checkpoint A (a Lightning checkpoint dict) with B's α parameters; raises ValueError naming the mismatch."""
    sa, sb = a.get("state_dict"), b.get("state_dict")
    if not isinstance(sa, dict) or not isinstance(sb, dict):
        raise ValueError("both files must be training checkpoints with a 'state_dict' (last.ckpt of a run)")
    keys = alpha_keys(sa)
    if not keys:
        raise ValueError(f"checkpoint A has no SLA2 α (no key containing {ALPHA!r})")
    if keys != alpha_keys(sb):
        raise ValueError(f"A and B hold different α parameters ({len(keys)} against {len(alpha_keys(sb))} keys): "
                         "the same model and alpha_mode are needed")
    for k in keys:
        if sa[k].shape != sb[k].shape:
            raise ValueError(f"{k}: shape {tuple(sa[k].shape)} in A, {tuple(sb[k].shape)} in B (another sparsity "
                             "or sequence length?)")
    state = dict(sa)
    state.update({k: sb[k].clone() for k in keys})
    return {**a, "state_dict": state}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkpoint whose router and DiT the output keeps")
    parser.add_argument("b", type=Path, help="checkpoint whose α the output takes")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (args.a, args.b))
        swapped = swap_alpha(a, b)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"swap_alpha: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(swapped, args.out)
    keys = alpha_keys(a["state_dict"])
    before, after = mean_alpha(a["state_dict"], keys), mean_alpha(swapped["state_dict"], keys)
    moved = "" if before is None else f", mean α {before:.4f} → {after:.4f}"
    print(f"{args.out}: {len(keys)} α tensors from {args.b}{moved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
