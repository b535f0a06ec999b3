"""sla2-attnbench: stage 1 on a train split of captured attention, measured at hard Top-k on a held-out split.

    sla2-attnbench                                   # synthetic video-like attention, a few minutes on 2 cores
    sla2-attnbench --source wan                      # a tiny random Wan through the capture hook
    sla2-attnbench --source wan --model-path DIR --latent-shape 16 21 60 104   # a real Wan folder
    sla2-attnbench --source files --train A.safetensors --heldout B.safetensors
    sla2-attnbench --split validation --tau 0.3                # judge a recipe change on the validation split
Writes attnbench.json and attnbench.md to --out. The stage-1 recipe defaults to the one training runs
(conf/stage/distill.yaml); choose changes on --split validation, report --split heldout for the chosen one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

import torch

from .bench import run
from .objectives import CALIBRATIONS, OBJECTIVES, build_calibration, build_objective, recipe_defaults
from .report import write
from .sets import AttentionSet, Splits
from .stage1 import Stage1Recipe
from .synthetic import REGIMES
from .synthetic_sets import synthetic_sets

# A Wan2.1-architecture transformer small enough to capture on CPU (random weights).
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sla2-attnbench", description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("synthetic", "wan", "testbed", "files"), default="synthetic")
    p.add_argument("--grid", type=int, nargs=3, default=(4, 16, 24), help="synthetic (frames, height, width)")
    p.add_argument("--regimes", nargs="+", default=["local", "diffuse", "global", "content"],
                   help=f"one synthetic head per regime, of {sorted(REGIMES)}")
    p.add_argument("--layers", type=int, default=1, help="synthetic layers (different weights)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--train-contents", type=int, default=6)
    p.add_argument("--heldout-contents", type=int, default=3)
    p.add_argument("--validation-contents", type=int, default=3)
    p.add_argument("--split", default="heldout", help="the set measured: heldout, or validation (to choose a recipe)")
    p.add_argument("--model-path", default=None, help="--source wan: a local diffusers Wan folder (else tiny random)")
    p.add_argument("--latent-shape", type=int, nargs=4, default=(4, 4, 16, 24), help="--source wan: [C, F, H, W]")
    p.add_argument("--video-size", type=int, nargs=3, default=(17, 64, 128),
                   help="--source testbed (--model-path: a testbed folder): rendered clips' (frames, height, width)")
    p.add_argument("--train", default=None, help="--source files: train set (.safetensors)")
    p.add_argument("--heldout", default=None, help="--source files: held-out set (.safetensors)")
    p.add_argument("--validation", default=None, help="--source files: validation set (.safetensors), optional")
    p.add_argument("--save-sets", default=None, help="also save the train/held-out/validation sets to this folder")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.97])
    p.add_argument("--block-q", type=int, default=32)
    p.add_argument("--block-k", type=int, default=16)
    p.add_argument("--device", default="cpu", help="where stage 1 trains and the metrics run (cpu, cuda)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--oracle", action="store_true", help="also fit stage 1 on the measured set (pooled router bound)")
    r = p.add_argument_group("stage-1 recipe", "defaults: conf/stage/distill.yaml and conf/attention/sla2.yaml, "
                             "the recipe training runs")
    r.add_argument("--objective", default="stage",
                   help=f"stage (conf/stage/distill.yaml's objective.loss) or one of {sorted(OBJECTIVES)}")
    r.add_argument("--aux-kl", type=float, default=0.0, help="add BlockMassKL with this weight to the objective")
    r.add_argument("--identity-decay", type=float, default=0.0,
                   help="add IdentityDecay (pull toward the heuristic router) with this weight")
    defaults = recipe_defaults()
    r.add_argument("--calibrate", default=defaults["calibrate"], help=f"α fit: {sorted(CALIBRATIONS)}")
    r.add_argument("--calibrate-at", default=defaults["calibrate_at"], choices=("start", "end"),
                   help="fit α before training (untrained router's mask) or after it (trained router's mask)")
    r.add_argument("--query-blocks", type=int, default=defaults["query_blocks"],
                   help="query blocks per content and step (0 = all, as stage.objective.query_blocks=null trains)")
    r.add_argument("--lr", type=float, default=defaults["lr"])
    r.add_argument("--alpha-lr", type=float, default=defaults["alpha_lr"])
    r.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    r.add_argument("--tau", type=float, default=defaults["tau"])
    r.add_argument("--tau-start", type=float, default=defaults["tau_start"],
                   help="anneal τ linearly from this to --tau over the steps")
    r.add_argument("--detach-lambda", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/attnbench")
    return p


def load_sets(args) -> Splits:
    if args.source == "synthetic":
        return synthetic_sets(tuple(args.grid), args.regimes, args.layers, args.train_contents,
                              args.heldout_contents, args.head_dim, args.seed, args.validation_contents)
    if args.source == "files":
        if not (args.train and args.heldout):
            raise ValueError("--source files needs --train and --heldout (.safetensors attention sets)")
        train = AttentionSet.load(args.train)
        empty = AttentionSet([[] for _ in train.layers], train.names, train.head_labels, train.per_draw)
        return Splits(train, AttentionSet.load(args.heldout),
                      AttentionSet.load(args.validation) if args.validation else empty)
    from sla2_train.models import wan_transformer

    from .captures import wan_sets

    if args.source == "testbed":
        from .testbed_sets import testbed_sets

        if not args.model_path:
            raise ValueError("--source testbed needs --model-path (a testbed model folder, e.g. assets/testbed-t2v)")
        return testbed_sets(wan_transformer(path=args.model_path), args.model_path, args.video_size,
                            args.train_contents, args.heldout_contents, seed=args.seed,
                            validation_contents=args.validation_contents)
    model = wan_transformer(None if args.model_path else TINY_WAN, path=args.model_path)
    return wan_sets(model, args.latent_shape, 16, args.train_contents, args.heldout_contents, seed=args.seed,
                    validation_contents=args.validation_contents)


def build_recipe(args) -> Stage1Recipe:
    """The stage-1 recipe the options describe (ValueError on a bad one)."""
    return Stage1Recipe(
        build_objective(args.objective, args.aux_kl, args.identity_decay), steps=args.steps, lr=args.lr,
        alpha_lr=args.alpha_lr, weight_decay=args.weight_decay, batch=args.batch,
        query_blocks=args.query_blocks or None, tau=args.tau, tau_start=args.tau_start,
        detach_lambda=args.detach_lambda, calibrate=build_calibration(args.calibrate),
        calibrate_at=args.calibrate_at, seed=args.seed,
    )


def card(device: torch.device) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}, {datetime.date.today().isoformat()}"


def save_sets(splits: Splits, folder: str) -> None:
    for name, s in splits._asdict().items():
        if s.layers and s.layers[0]:
            s.save(os.path.join(folder, f"{name}.safetensors"))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)  # the parser's defaults are read from conf/
        recipe = build_recipe(args)
        device = torch.device(args.device)
        splits = load_sets(args)
        measured = splits.measured(args.split)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"sla2-attnbench: {err}", file=sys.stderr)
        return 2
    if args.save_sets:
        save_sets(splits, args.save_sets)
    torch.manual_seed(args.seed)
    rows = run(splits.train.to(device), measured.to(device), recipe, args.sparsities, args.block_q, args.block_k,
               args.oracle)
    command = "sla2-attnbench " + shlex.join(sys.argv[1:] if argv is None else argv)
    json_path, md_path = write(args.out, rows, vars(args), command, card(device))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
