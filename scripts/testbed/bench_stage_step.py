"""Time one training step of a stage's objective, and its peak memory, for several settings in one run.

    python scripts/testbed/bench_stage_step.py model=testbed model.path=assets/testbed-t2v \\
        'model.latent_shape=[48,17,32,64]' --variant stage=qat --variant stage=qat_router \\
        --variant "stage=qat_router stage.objective.router.distillation.layers_per_step=null"

Positional arguments are Hydra overrides every variant shares; each --variant adds its own (quote several). A
timed step is the stage's objective under bf16 autocast (stage 2's flow-matching loss, with the router's term for
stage=qat_router; stage 1's distillation), its backward and the stage's optimizer step. Left out, the same for
every variant: the loader, caption dropout (stage.caption_dropout), gradient clipping (trainer.gradient_clip_val),
α calibration at the start, and Lightning's logging and checks. Inputs are random latents and full-length text
embeddings of the model's shapes, collated as the loader collates them; the router starts at identity (no
init_from), which costs what a trained one does. Prints a table (median step time over
--steps steps after one untimed step), writes bench_stage_step.json to --out. --profile also runs one more step
of each variant under torch.profiler and prints its operations by time, with how many kernels the step launched
(on the GPU a step of many small launches costs per launch, whatever their sizes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from sla2_train.cli_errors import config_errors_as_one_line
from sla2_train.commands import CONF_DIR
from sla2_train.data.collate import collate
from sla2_train.models import ConfigError


def random_batch(cfg, batch: int, device: torch.device) -> dict:
    samples = [{"latents": torch.randn(*cfg.model.latent_shape), "key": str(i),
                "text_embeds": torch.randn(cfg.model.text_len, cfg.model.text_dim)} for i in range(batch)]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(samples, cfg.model.text_len).items()}


def step_cost(overrides: list[str], batch: int, steps: int, device: torch.device, with_profile: bool = False
              ) -> dict:
    # a bad override or value: one line naming it, as train.py reports it
    with config_errors_as_one_line(), initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "++stage.allow_untrained_router=true", *overrides])
        with config_errors_as_one_line(cfg, also=(ConfigError,)):
            torch.manual_seed(0)
            module = instantiate(cfg.module).to(device)  # the module's constructor applies the stage (Stage.apply)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    data = random_batch(cfg, batch, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def one_step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = module.stage.objective(module.model, data, module.flow)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        return loss.detach()

    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = one_step()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)} with {overrides}")
    result = {"s_per_step": statistics.median(times[1:]), "loss": float(loss),
              "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    if with_profile:
        result["profile"] = profiled(one_step, cuda)
    return result


def profiled(one_step, cuda: bool, rows: int = 15) -> dict:
    """One step under torch.profiler: its operations by self time (device time on a GPU), and the number of
    kernels it launched (operations without child operations on a CPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        one_step()
    events = prof.events()
    if cuda:
        launches = sum(1 for e in events if e.device_type == DeviceType.CUDA)
    else:
        launches = sum(1 for e in events if e.name.startswith("aten::")
                       and not any(c.name.startswith("aten::") for c in e.cpu_children))
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return {"launches": launches, "table": prof.key_averages().table(sort_by=key, row_limit=rows)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides every variant shares")
    p.add_argument("--variant", action="append", required=True, help="this variant's overrides (quoted)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda", help="cuda (what the numbers are for) or cpu (a quick check)")
    p.add_argument("--profile", action="store_true", help="also profile one step of each variant")
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/bench_stage_step"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for variant in args.variant:
        r = step_cost([*args.overrides, *shlex.split(variant)], args.batch, args.steps, device, args.profile)
        rows.append({"variant": variant, **r})
        print(f"{variant:80s} | {r['s_per_step']:.3f} s/step | peak {r['peak_gib'] or 0:5.1f} GiB", flush=True)
        if args.profile:
            print(f"one step launched {r['profile']['launches']} kernels\n{r['profile']['table']}", flush=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {"card": card, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "overrides": args.overrides, "batch": args.batch, "steps": args.steps, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_stage_step.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_stage_step.json'}")
    return report


if __name__ == "__main__":
    main()
