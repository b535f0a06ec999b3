"""Time the testbed model's dense pretraining step without Lightning: eager against compiled blocks.

    python scripts/testbed/bench_step.py                          # 64×128 and 128×256 pixels, batch 32, one GPU
    python scripts/testbed/bench_step.py --sizes 64x128 --steps 50 --out $OUT/testbed_step

One step is what `experiment=testbed_pretrain` does per batch minus the loader and the EMA: bf16 autocast over
fp32 weights, flow-matching-sized MSE, backward, gradient-norm clip, AdamW. Variants: eager with the default
(foreach) AdamW, eager with fused AdamW, the blocks compiled as `model.transformer.compile=inductor` builds them
for training (sla2_train.models.compilation), and one torch.compile over the whole transformer, both with fused
AdamW. Prints a table, writes bench_step.json to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

from sla2_train.attnbench.testbed_sets import TEXT_LEN
from sla2_train.models import wan_transformer

PATCH_VAE = 4  # pixels per latent cell of the testbed's PixelPatchVAE
# name -> (how the transformer is compiled, fused AdamW): None eager, "blocks" as model.transformer.compile=inductor
# builds it for training, "model" one torch.compile over the whole transformer
VARIANTS = {"eager": (None, False), "eager, fused AdamW": (None, True),
            "compiled blocks, fused AdamW": ("blocks", True), "compiled model, fused AdamW": ("model", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(folder: str, latent_shape: tuple[int, ...], batch: int, compiled: str | None, fused: bool,
              steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = wan_transformer(path=folder, compile="inductor" if compiled == "blocks" else None).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    if compiled == "model":
        model = torch.compile(model)
    x = torch.randn(batch, *latent_shape, device=device)
    t = torch.rand(batch, device=device) * 1000
    text = torch.randn(batch, TEXT_LEN, model.config.text_dim, device=device)

    def one_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x, t, text, return_dict=False)[0]
        (out.float() - x).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        one_step()
    _sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    return {"ms_per_step": ms, "samples_per_s": batch / ms * 1e3, "warmup_s": warm_s,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", default="assets/testbed-t2v")
    p.add_argument("--sizes", nargs="+", default=["64x128", "128x256"], help="HEIGHTxWIDTH pixels, 17 frames")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    p.add_argument("--device", default="cuda", help="cuda (what the numbers are for) or cpu (a quick check)")
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/bench_step"))
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        latent_shape = (48, 17, height // PATCH_VAE, width // PATCH_VAE)
        for name, (compiled, fused) in VARIANTS.items():
            r = step_time(args.model_path, latent_shape, args.batch, compiled, fused, args.steps, args.warmup, device)
            rows.append({"size": size, "variant": name, **r})
            print(f"{size:>8} | {name:30s} | {r['ms_per_step']:7.1f} ms/step | {r['samples_per_s']:6.0f} samples/s"
                  f" | warm-up {r['warmup_s']:5.1f} s | peak {r['peak_gib'] or 0:5.1f} GiB", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {"card": card, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "batch": args.batch, "steps": args.steps, "rows": rows}
    (out / "bench_step.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_step.json'}")


if __name__ == "__main__":
    main()
