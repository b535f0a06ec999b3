"""Dense vs SLA2 from prompts to scored videos: the body of eval.py.

`build` turns the config into models, prompts and metrics (every configuration mistake surfaces here, before
any sampling); `run` generates, for every prompt and seed, the dense video (recording the per-layer attention
error and the attention times on its trajectory, and its transformer calls for the velocity replay of
velocity.py) and one video per SLA2 setting from the same noise, writes them as mp4, scores them, and returns
the report that report.py writes out. Each finished prompt and seed is kept in the results folder as it goes
(progress.py); a re-run of a stopped command takes those back and samples the rest.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from sla2_train.models import dense_capture, describe_attention, set_attention_mode, sla2_processors

from .dense_weights import BaseWeights, check_choice
from .metric_suite import build_metrics, score_video, video_details
from .paired import add_paired
from .precision import cast_keeping_fp32
from .pipeline import (check_pipeline_folder, forwards_per_step, inference_dtype, initial_noise, load_wan_pipeline,
                       video_size)
from .probes import AttentionProbe, quant_label
from .progress import Progress
from .prompts import load_prompts
from .settings import generation_settings, results_folder
from .speed import attention_flops, summarise_rows
from .timing import Clock, ForwardTimer
from .velocity import VelocityRecorder, mean_per_step, video_metrics
from .video_io import require_video_writer, to_uint8, write_mp4

log = logging.getLogger("eval")


@dataclass
class Evaluation:
    cfg: Any
    pipe: Any
    model: torch.nn.Module
    prompts: list[str]
    seeds: list[int]
    quant_modes: list[bool]  # one SLA2 row each; empty for a dense model
    metrics: list
    skipped: dict[str, str]
    settings: dict[str, Any]
    frames: dict[str, int]
    folder: Path
    base_weights: BaseWeights | None = None  # dense_weights=base with a checkpoint: the dense rows' weights
    videos: list[dict[str, Any]] = field(default_factory=list)


def _quant_modes(cfg, saved: dict) -> list[bool]:
    # Inference is hard Top-k; the low-bit branch is on where the checkpoint was trained with it (stage 2).
    if cfg.quant is None:
        return [bool(saved.get("quant", False))]
    return [bool(q) for q in cfg.quant] if not isinstance(cfg.quant, bool) else [cfg.quant]


def _model_folder(cfg) -> str:
    if cfg.model.path is not None:
        return str(check_pipeline_folder(cfg.model.path))
    recipe = instantiate(cfg.eval.random_model)
    return str(recipe.build(Path(cfg.random_models_dir), cfg.model.transformer.arch, cfg.negative_prompt,
                            device=cfg.device))


def build(cfg) -> Evaluation:
    require_video_writer()
    prompts = load_prompts(cfg.prompts, cfg.max_prompts)
    metrics, skipped = build_metrics(cfg.eval.metrics)
    dense_weights = check_choice(cfg.dense_weights)
    folder = _model_folder(cfg)
    cfg.model.path = folder  # the transformer loads from the same folder as the text encoder and VAE
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model_with_attention)
    saved, base_weights = {}, None
    if cfg.ckpt:
        from sla2_train.export.loading import load_weights

        if dense_weights == "base":
            base_weights = BaseWeights(model)
        saved = load_weights(model, cfg.ckpt, key="ckpt")
    procs = sla2_processors(model)
    quant_modes = _quant_modes(cfg, saved) if procs else []
    dtype = inference_dtype(cfg.device, cfg.dtype)
    if procs:
        # On CUDA SLA2 must run on the kernels: their dense reference would silently be O(N²) at Wan lengths.
        backend = "triton" if str(cfg.device).startswith("cuda") and cfg.attention.backend == "auto" else None
        set_attention_mode(model, topk="hard", quant=quant_modes[0], **({"backend": backend} if backend else {}))
    cast_keeping_fp32(model, dtype).to(cfg.device).eval()
    if base_weights is not None:
        base_weights.ready()
    pipe = load_wan_pipeline(Path(folder), model, instantiate(cfg.eval.scheduler), dtype, cfg.device)
    frames = video_size(pipe, cfg.model.latent_shape)
    seeds = [cfg.seed + i for i in range(cfg.videos_per_prompt)]
    settings = generation_settings(cfg, prompts, seeds, frames, folder, str(dtype).removeprefix("torch."),
                                   quant_modes)
    settings["attention_built"] = describe_attention(model)
    for m in metrics:
        m.to(cfg.device)
    return Evaluation(cfg, pipe, model, prompts, seeds, quant_modes, metrics, skipped, settings, frames,
                      results_folder(cfg.output_dir, settings), base_weights)


def _generate(ev: Evaluation, prompt: str, noise: torch.Tensor, probe: AttentionProbe | None):
    """(uint8 video [F, H, W, 3], seconds end to end without the probe's time, transformer ms per forward)."""
    cfg = ev.cfg
    timer = ForwardTimer(ev.model, cfg.device)
    probe_seconds = probe.seconds if probe is not None else 0.0
    try:
        with Clock(cfg.device) as clock:
            out = ev.pipe(prompt=prompt, negative_prompt=cfg.negative_prompt, latents=noise,
                          num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                          max_sequence_length=cfg.max_sequence_length, output_type="np", **ev.frames)
    finally:
        timer.remove()
    probe_seconds = (probe.seconds if probe is not None else 0.0) - probe_seconds
    forward_ms = sum(timer.ms) / max(len(timer.ms), 1)
    return to_uint8(out.frames[0]), clock.seconds - probe_seconds, forward_ms, len(timer.ms)


def _record(ev, row: str, prompt_index: int, seed: int, video, seconds, forward_ms, forwards, reference,
            velocity: dict[str, list[float]] | None = None):
    path = write_mp4(ev.folder / "videos" / row.replace("/", "-").replace(" ", "_") /
                     f"p{prompt_index:03d}-s{seed}.mp4", video, ev.cfg.fps)
    scores = score_video(ev.metrics, video, ev.prompts[prompt_index], reference)
    record = {"row": row, "prompt_index": prompt_index, "prompt": ev.prompts[prompt_index], "seed": seed,
              "video": str(path.relative_to(ev.folder)), "seconds": seconds, "forward_ms": forward_ms,
              "forwards": forwards, "metrics": scores}
    details = video_details(ev.metrics, video, ev.prompts[prompt_index])
    if details:
        record["details"] = details
    if velocity is not None:
        scores.update(video_metrics(velocity))
        record["velocity_rel_l1_per_step"] = velocity
    ev.videos.append(record)
    log.info("%-20s p%03d s%d  %.2f s  %s", row, prompt_index, seed, seconds,
             "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return record


def row_name(quant: bool | None, sparsity: float | None = None, selection: str = "router") -> str:
    if quant is None:
        return "dense"
    return f"sla2 {sparsity:g} {quant_label(quant)}" + ("" if selection == "router" else f" {selection}")


def _dense_video(ev: Evaluation, prompt: str, noise: torch.Tensor, probe: AttentionProbe | None,
                 recorder: VelocityRecorder | None):
    with ev.base_weights.dense() if ev.base_weights is not None else nullcontext():
        if probe is None:
            return _generate(ev, prompt, noise, None)
        with dense_capture(ev.model):
            hooks = [ev.model.register_forward_hook(probe)]
            if recorder is not None:
                recorder.start()
                hooks.append(ev.model.register_forward_hook(recorder, with_kwargs=True))
            try:
                return _generate(ev, prompt, noise, probe)
            finally:
                for hook in hooks:
                    hook.remove()


def _annotate_rows(rows, ev: Evaluation, probe: AttentionProbe | None, flops: dict, sparsity, selection) -> None:
    """Add FLOPs, attention times and shares, per-layer errors and speedups to the rows."""
    for row in rows:
        quant = next((q for q in ev.quant_modes if row_name(q, sparsity, selection) == row["name"]), None)
        row["attention_tflops_dense_equivalent"] = flops["dense"] / 1e12
        row["attention_tflops_actual"] = (flops["sla2"] if quant is not None else flops["dense"]) / 1e12
        key = "dense" if quant is None else quant_label(quant)
        if probe is not None and key in probe.attention_ms:
            row["attention_ms_per_forward"] = probe.attention_ms[key]
            row["attention_share"] = probe.attention_ms[key] / row["forward_ms"]
        if quant is not None:
            row["rel_l1_per_layer"] = probe.mean_errors(quant)
            row["rel_l1_per_step"] = probe.mean_errors_per_step(quant)
            row["metrics"]["rel_l1_mean"] = sum(row["rel_l1_per_layer"]) / len(row["rel_l1_per_layer"])
            per_step = [v["velocity_rel_l1_per_step"] for v in ev.videos
                        if v["row"] == row["name"] and "velocity_rel_l1_per_step" in v]
            if per_step:
                row["velocity_rel_l1_per_step"] = mean_per_step(per_step)
        row["speedup"] = rows[0]["seconds_per_video"] / row["seconds_per_video"]


@torch.no_grad()
def run(ev: Evaluation) -> dict[str, Any]:
    cfg, model = ev.cfg, ev.model
    procs = sla2_processors(model)
    sparsity = procs[0].attention.sparsity if procs else None
    selection = procs[0].attention.selection if procs else "router"
    per_step = forwards_per_step(cfg.guidance_scale)
    forwards = cfg.num_inference_steps * per_step
    probe = recorder = None
    if procs:
        probe = AttentionProbe(model, procs, ev.quant_modes, cfg.device, time_at=forwards // 2,
                               repeats=cfg.attention_timing_repeats, steps=cfg.num_inference_steps,
                               per_step=per_step)
        if cfg.probe_velocity:
            recorder = VelocityRecorder(per_step, cfg.guidance_scale)
    progress = Progress(ev.folder, ev.prompts, resume=cfg.resume)
    if progress.done:
        log.info("continuing %s: %d of %d prompt × seed units done (resume=false starts over)", ev.folder,
                 len(progress.done), len(ev.prompts) * len(ev.seeds))
    for pi, prompt in enumerate(ev.prompts):
        for seed in ev.seeds:
            kept = progress.done.get((pi, seed))
            if kept is not None:
                ev.videos.extend(kept["records"])
                if probe is not None:
                    probe.add(kept["probe"])
                continue
            before = probe.snapshot() if probe is not None else None
            noise = initial_noise(ev.cfg.model.latent_shape, seed, ev.cfg.device)
            dense = _dense_video(ev, prompt, noise, probe, recorder)
            records = [_record(ev, "dense", pi, seed, *dense, reference=None)]
            for quant in ev.quant_modes:
                set_attention_mode(model, quant=quant)
                # the dense trajectory's calls through this SLA2 setting (and, with dense_weights=base, the
                # checkpoint's transformer: the dense context has put it back)
                velocity = recorder.replay(model) if recorder is not None else None
                sparse = _generate(ev, prompt, noise, None)
                records.append(_record(ev, row_name(quant, sparsity, selection), pi, seed, *sparse,
                                       reference=dense[0], velocity=velocity))
            progress.add(pi, seed, records, probe.added_since(before) if probe is not None else None)
    rows = summarise_rows(ev.videos)
    add_paired(rows, ev.videos)
    flops = attention_flops(model, cfg.model.latent_shape, forwards)
    _annotate_rows(rows, ev, probe, flops, sparsity, selection)
    return {"settings": ev.settings, "rows": rows, "videos": ev.videos, "skipped": ev.skipped,
            "timing": "cuda-synchronised" if str(cfg.device).startswith("cuda") else "cpu wall clock",
            "flops_per_video": {k: v for k, v in flops.items() if k != "sla2_parts"},
            "flops_sla2_parts": flops.get("sla2_parts")}
