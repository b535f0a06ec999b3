"""The attention table (the paper's Table 1, per layer) from held-out dense sampling trajectories, local files only.

    python -m sla2_train.attnbench.table model.path=DIR prompts=HELDOUT.txt calib_prompts=TRAIN.txt \
        stage1=[S1_90,S1_95,S1_97] stage2=[S2_90,S2_95,S2_97] sparsities=[0.9,0.95,0.97] steps=[0,10,20,29]
    ... +stage2_variants.heuristic_router_qat=[H_97] +stage2_variants.bf16_finetune=[B_97]   # Table 2's rows

Config: conf/attnbench_table.yaml. Writes attention_table.md and attention_table.json to `out`, and each finished
pass to `out/parts` (table_parts.py), from which the same command resumes after an interruption.
docs/testbed.md ("The attention table") says what each row measures.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from sla2_train.cli_errors import config_errors_as_one_line
from sla2_train.commands import CONF_DIR
from sla2_train.models import ConfigError, SLA2Swap, token_count

from .cli import card
from .stage_weights import read_stage, stage1_layers
from .table_parts import TableParts, table_settings
from .table_report import METHODS, row, variant_row, write
from .table_run import TableJob, measure, sums_of
from .trajectories import Sampling


def _prompts(cfg) -> tuple[list[str], list[str], str]:
    """(measured, calibration, how the calibration prompts were chosen)."""
    from sla2_train.evaluation.prompts import load_prompts

    prompts = load_prompts(cfg.prompts, key="prompts")
    if cfg.calib_prompts is not None:
        return prompts, load_prompts(cfg.calib_prompts, key="calib_prompts"), f"calib_prompts={cfg.calib_prompts}"
    n = cfg.calib_count
    if not 1 <= n < len(prompts):
        raise ConfigError(f"calib_count: {n} of the {len(prompts)} prompts would leave none to measure (or fit on); "
                          "give calib_prompts=FILE or a count in [1, number of prompts)")
    return prompts[n:], prompts[:n], f"the first {n} prompts of {cfg.prompts} (not measured)"


def _checked_list(values, key: str, upper: int, what: str) -> list[int] | None:
    if values is None:
        return None
    chosen = [int(v) for v in values]
    bad = [v for v in chosen if not 0 <= v < upper]
    if bad or not chosen:
        raise ConfigError(f"{key}: {bad or chosen} — {what} run from 0 to {upper - 1}")
    return sorted(set(chosen))


def build(cfg) -> TableJob:
    from sla2_train.evaluation.pipeline import check_pipeline_folder, inference_dtype, load_wan_pipeline
    from sla2_train.evaluation.precision import cast_keeping_fp32

    sparsities = [float(s) for s in cfg.sparsities]
    bad = [s for s in sparsities if not 0.0 <= s < 1.0]
    if bad or not sparsities:
        raise ConfigError(f"sparsities: {bad or sparsities} — each must be in [0, 1)")
    if not isinstance(cfg.resume, bool):
        raise ConfigError(f"resume: true or false, got {cfg.resume!r}")
    if cfg.model.path is None:
        raise ConfigError("model.path: the table samples a trained model: give its local diffusers folder")
    folder = check_pipeline_folder(cfg.model.path, key="model.path")
    prompts, calib_prompts, calib_source = _prompts(cfg)
    model = instantiate(cfg.model.transformer, path=str(folder))
    block_q, block_k = int(cfg.model.attn_block_q), int(cfg.model.attn_block_k)
    seq_len = token_count(model, cfg.model.latent_shape)
    SLA2Swap(block_q=block_q, block_k=block_k).install(model, seq_len)  # for the capture hook (they run dense)
    stage1 = read_stage(cfg.stage1, "stage1", model, sparsities, block_q, block_k)
    stage2 = read_stage(cfg.stage2, "stage2", model, sparsities, block_q, block_k)
    variants = {}
    for name, paths in (cfg.get("stage2_variants") or {}).items():
        if not str(name).isidentifier():
            raise ConfigError(f"stage2_variants.{name}: a variant's name must be a plain identifier "
                              "(letters, digits, _), e.g. +stage2_variants.heuristic_router_qat=[CKPT]")
        variants[str(name)] = read_stage(paths, f"stage2_variants.{name}", model, sparsities, block_q, block_k)
    layers = _checked_list(cfg.layers, "layers", len(model.blocks), "layers") or list(range(len(model.blocks)))
    steps = _checked_list(cfg.steps, "steps", int(cfg.num_inference_steps), "sampling steps")
    fit = instantiate(cfg.recipe.calibrate_alpha.fit) if cfg.recipe.get("calibrate_alpha") else None
    if fit is None:
        raise ConfigError("recipe.calibrate_alpha.fit: the untrained rows need an α fit (stage=distill's)")
    trained1 = {s: stage1_layers(model, w, seq_len) for s, w in stage1.items()}
    dtype = inference_dtype(cfg.device, cfg.dtype)
    cast_keeping_fp32(model, dtype).to(cfg.device).eval()
    trained1 = {s: [a.to(cfg.device) for a in layers_] for s, layers_ in trained1.items()}
    pipe = load_wan_pipeline(folder, model, instantiate(cfg.eval.scheduler), dtype, cfg.device)
    sampling = Sampling(list(cfg.model.latent_shape), int(cfg.num_inference_steps), float(cfg.guidance_scale),
                        cfg.negative_prompt, int(cfg.max_sequence_length), int(cfg.seed), cfg.device)
    parts = TableParts(Path(cfg.out) / "parts", table_settings(cfg), cfg.resume,
                       [str(folder), str(cfg.prompts), str(cfg.calib_prompts or "")])
    _, _, height, width = (int(x) for x in cfg.model.latent_shape)
    _, ph, pw = model.config.patch_size
    return TableJob(model, pipe, sampling, prompts, calib_prompts, calib_source, sparsities, layers, steps, block_q,
                    block_k, seq_len, fit, parts, trained1, {s: w.path for s, w in stage1.items()}, stage2,
                    int(cfg.query_chunk), variants, frame_tokens=(height // ph) * (width // pw))


def header(cfg, job: TableJob, command: str) -> dict:
    return {
        "command": command,
        "card": card(torch.device(job.sampling.device)),
        "notes": {
            "model": str(cfg.model.path),
            "measured prompts": f"{len(job.prompts)} of {cfg.prompts}",
            "calibration (α, SLA's W)": f"{len(job.calib_prompts)}: {job.calib_source}",
            "steps measured": "all" if job.steps is None else job.steps,
            "sampling": f"{job.sampling.num_inference_steps} steps, guidance {job.sampling.guidance_scale}, "
                        f"seed {job.sampling.seed}, {cfg.eval.scheduler._target_}",
            "blocks": f"{job.block_q}/{job.block_k}, N = {job.seq_len}",
            "stage1": job.stage1_paths,
            "stage2": {s: w.path for s, w in job.stage2.items()},
            "stage2 variants": {n: {s: w.path for s, w in v.items()} for n, v in job.stage2_variants.items()},
        },
    }


def run_table(cfg, job: TableJob, command: str):
    """Measure and write the table; (json path, markdown path)."""
    sums = measure(job)
    rows = [row(sums_of(m, sums), s, m, job.layers) for s in job.sparsities for m in METHODS]
    rows += [variant_row(sums.variants[name], s, name, job.layers)
             for name in job.stage2_variants for s in job.sparsities]
    for r in rows:
        if r["method"] == "sla":  # λ / (tr(O_lᵀO_l)/Dv) per layer and head, chosen on the calibration prompts
            r["ridge_per_layer"] = [sums.sla_ridge[(r["sparsity"], layer)] for layer in job.layers]
    return write(cfg.out, rows, job.layers, header(cfg, job, command))


@hydra.main(config_path=CONF_DIR, config_name="attnbench_table", version_base=None)
def main(cfg: DictConfig) -> None:
    with config_errors_as_one_line(cfg):
        job = build(cfg)
    command = "python -m sla2_train.attnbench.table " + shlex.join(sys.argv[1:])
    json_path, md_path = run_table(cfg, job, command)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
