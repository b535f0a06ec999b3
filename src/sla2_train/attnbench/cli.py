"""sla2-attnbench: stage 1 on a train split of captured attention, measured at hard Top-k on a held-out split.

    sla2-attnbench                                   # synthetic video-like attention, a few minutes on 2 cores
    sla2-attnbench --source wan                      # a tiny random Wan through the capture hook
    sla2-attnbench --source wan --model-path DIR --latent-shape 16 21 60 104   # a real Wan folder
    sla2-attnbench --source files --train A.safetensors --heldout B.safetensors
Writes attnbench.json and attnbench.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

import torch

from .bench import run
from .objectives import CALIBRATIONS, OBJECTIVES, build_calibration, build_objective
from .report import write
from .sets import AttentionSet
from .stage1 import Stage1Recipe
from .synthetic import REGIMES
from .synthetic_sets import synthetic_sets

# A Wan2.1-architecture transformer small enough to capture on CPU (random weights).
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sla2-attnbench", description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("synthetic", "wan", "files"), default="synthetic")
    p.add_argument("--grid", type=int, nargs=3, default=(4, 16, 24), help="synthetic (frames, height, width)")
    p.add_argument("--regimes", nargs="+", default=["local", "diffuse", "global", "content"],
                   help=f"one synthetic head per regime, of {sorted(REGIMES)}")
    p.add_argument("--layers", type=int, default=1, help="synthetic layers (different weights)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--train-contents", type=int, default=6)
    p.add_argument("--heldout-contents", type=int, default=3)
    p.add_argument("--model-path", default=None, help="--source wan: a local diffusers Wan folder (else tiny random)")
    p.add_argument("--latent-shape", type=int, nargs=4, default=(4, 4, 16, 24), help="--source wan: [C, F, H, W]")
    p.add_argument("--train", default=None, help="--source files: train set (.safetensors)")
    p.add_argument("--heldout", default=None, help="--source files: held-out set (.safetensors)")
    p.add_argument("--save-sets", default=None, help="also save the train/held-out sets to this folder")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.97])
    p.add_argument("--block-q", type=int, default=32)
    p.add_argument("--block-k", type=int, default=16)
    p.add_argument("--objective", default="stage",
                   help=f"stage (conf/stage/distill.yaml's objective.loss) or one of {sorted(OBJECTIVES)}")
    p.add_argument("--calibrate", default="least_squares", help=f"α after training: {sorted(CALIBRATIONS)}")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha-lr", type=float, default=3e-2)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--query-blocks", type=int, default=8, help="query blocks per content and step (0 = all)")
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--detach-lambda", action="store_true")
    p.add_argument("--oracle", action="store_true", help="also fit stage 1 on the held-out set (pooled router bound)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/attnbench")
    return p


def load_sets(args) -> tuple[AttentionSet, AttentionSet]:
    if args.source == "synthetic":
        return synthetic_sets(tuple(args.grid), args.regimes, args.layers, args.train_contents,
                              args.heldout_contents, args.head_dim, args.seed)
    if args.source == "files":
        if not (args.train and args.heldout):
            raise ValueError("--source files needs --train and --heldout (.safetensors attention sets)")
        return AttentionSet.load(args.train), AttentionSet.load(args.heldout)
    from sla2_train.models import wan_transformer

    from .captures import wan_sets

    model = wan_transformer(None if args.model_path else TINY_WAN, path=args.model_path)
    return wan_sets(model, args.latent_shape, 16, args.train_contents, args.heldout_contents, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        objective = build_objective(args.objective)
        calibrate = build_calibration(args.calibrate)
        train, heldout = load_sets(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sla2-attnbench: {err}", file=sys.stderr)
        return 2
    if args.save_sets:
        train.save(os.path.join(args.save_sets, "train.safetensors"))
        heldout.save(os.path.join(args.save_sets, "heldout.safetensors"))
    recipe = Stage1Recipe(objective, args.steps, args.lr, args.alpha_lr, args.weight_decay, args.batch,
                          args.query_blocks or None, args.tau, args.detach_lambda, calibrate=calibrate, seed=args.seed)
    torch.manual_seed(args.seed)
    rows = run(train, heldout, recipe, args.sparsities, args.block_q, args.block_k, args.oracle)
    command = "sla2-attnbench " + shlex.join(sys.argv[1:] if argv is None else argv)
    card = f"CPU, {torch.get_num_threads()} threads, {datetime.date.today().isoformat()}"
    json_path, md_path = write(args.out, rows, vars(args), command, card)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
