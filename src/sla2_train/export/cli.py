"""sla2-export: a training checkpoint → a diffusers folder with the SLA2 state beside the transformer.

    sla2-export outputs/wan-qat-sla2-0.97/checkpoints/last.ckpt exported/wan-sla2-0.97 \\
        --base /models/Wan2.1-T2V-1.3B-Diffusers --dtype bfloat16
"""

from __future__ import annotations

import argparse
import logging

from .exporter import DTYPES, export_checkpoint


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sla2-export", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("checkpoint", help="Lightning checkpoint from train.py (or an exported folder to re-export)")
    p.add_argument("out", help="new folder to write")
    p.add_argument("--base", help="the diffusers Wan pipeline folder it was trained from (model.path): its text "
                                  "encoder, tokenizer, VAE and scheduler are copied, so WanPipeline loads the result")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the transformer weights (default: as trained)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even when the checkpoint has EMA ones")
    p.add_argument("--symlink-base", action="store_true", help="link the base components instead of copying them")
    return p


def main(argv: list[str] | None = None) -> None:
    from sla2_train.cli_errors import config_errors_as_one_line

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with config_errors_as_one_line():
        out = export_checkpoint(args.checkpoint, args.out, base=args.base, dtype=args.dtype, ema=not args.no_ema,
                                symlink_base=args.symlink_base)
    print(out)


if __name__ == "__main__":
    main()
