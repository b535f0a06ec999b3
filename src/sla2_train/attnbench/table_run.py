"""The attention table's measurement: calibration trajectories, then held-out trajectories of the dense model, then
each stage-2 model's own held-out trajectories, every capture walked chunk by chunk into error sums.

Which trajectories a row is measured on:
- every row but stage 2: the model folder's dense trajectories of the held-out prompts;
- SLA2 after stage 1 + 2: the stage-2 model's own dense trajectories of the same prompts and noise (its
  transformer weights differ, so its q, k, v do), with its router, α and the low-bit sparse branch against
  full attention of those q, k, v. Its gap closed uses the heuristic and best-mass masks on the same captures.
  Each stage-2 variant (Table 2's ablations: another router or another stage 2, named in `stage2_variants`) is
  measured the same way on its own model's trajectories, into sums of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from sla2_train.attention import SLA2Attention

from .calibration import Calibration
from .chunks import BESTMASS, IDENTITY, RouterMasks, walk
from .stage_weights import StageWeights, install
from .table_methods import ErrorSums, FittedAlpha, Method, SLAProjection, own_alpha, sparse_only
from .table_parts import TableParts
from .trajectories import Sampling, capture_trajectories


@dataclass
class TableJob:
    model: torch.nn.Module  # the dense model folder's transformer, SLA2 processors installed (for the capture)
    pipe: object  # WanPipeline around `model`
    sampling: Sampling
    prompts: list[str]  # measured (held out)
    calib_prompts: list[str]  # α and SLA's W are fitted on these
    calib_source: str  # how they were chosen, for the report
    sparsities: list[float]
    layers: list[int]
    steps: list[int] | None
    block_q: int
    block_k: int
    seq_len: int
    fit: object  # the stage-1 recipe's α fit (HardMaskFit)
    parts: TableParts  # the finished passes kept on disk (table_parts.py)
    stage1: dict[float, list[SLA2Attention]] = field(default_factory=dict)  # per sparsity, per block (all blocks)
    stage1_paths: dict[float, str] = field(default_factory=dict)
    stage2: dict[float, StageWeights] = field(default_factory=dict)
    query_chunk: int = 1024
    stage2_variants: dict[str, dict[float, StageWeights]] = field(default_factory=dict)  # name → per sparsity
    frame_tokens: int | None = None  # tokens per latent frame (the mask statistics' own-frame share)


@dataclass
class TableSums:
    base: ErrorSums
    stage2: ErrorSums
    sla_ridge: dict[tuple[float, int], list[float]]  # (sparsity, layer) → SLA's chosen λ factor per head (inf: W = 0)
    variants: dict[str, ErrorSums] = field(default_factory=dict)  # stage-2 variant name → its sums


def _consumer(job: TableJob, measured, routers_of, add):
    """consume(layer, q, k, v, where) for capture_trajectories: add(layer, chunk, where) for each chunk."""
    def consume(layer: int, q, k, v, where) -> None:
        for chunk in walk(q, k, v, job.block_q, job.block_k, measured, routers_of(layer), job.query_chunk):
            add(layer, chunk, where)
    return consume


def calibrate(job: TableJob, identity: RouterMasks) -> Calibration:
    calib = Calibration(job.fit, sla_mask=IDENTITY)
    measured = {s: [IDENTITY, BESTMASS] for s in job.sparsities}
    capture_trajectories(job.pipe, job.model, job.calib_prompts, job.sampling, job.layers, job.steps,
                         _consumer(job, measured, lambda layer: {IDENTITY: identity},
                                   lambda layer, chunk, where: calib.add(layer, chunk, where)), "calibration",
                         on_prompt=lambda i: setattr(calib, "fold", i))
    return calib


def base_methods(job: TableJob, calib: Calibration, layer: int) -> dict[float, list[Method]]:
    methods = {}
    for s in job.sparsities:
        methods[s] = [
            Method("sparse_heuristic", IDENTITY, sparse_only),
            Method("sla", IDENTITY, SLAProjection(calib.sla_proj(s, layer))),
            Method("sla2_untrained", IDENTITY, FittedAlpha(calib.alpha(s, layer, IDENTITY))),
            Method("bestmass", BESTMASS, FittedAlpha(calib.alpha(s, layer, BESTMASS))),
        ]
        if s in job.stage1:
            methods[s].append(Method("sla2_stage1", f"stage1 {s}", own_alpha))
    return methods


def measure_base(job: TableJob, identity: RouterMasks, methods: dict[int, dict[float, list[Method]]]) -> ErrorSums:
    """The rows measured on the dense model's trajectories; `methods` per layer (base_methods)."""
    sums = ErrorSums(job.frame_tokens)
    measured = {s: [IDENTITY, BESTMASS] + ([f"stage1 {s}"] if s in job.stage1 else []) for s in job.sparsities}

    def routers_of(layer: int) -> dict[str, RouterMasks]:
        trained = {f"stage1 {s}": RouterMasks(attn[layer], own_alpha=True) for s, attn in job.stage1.items()}
        return {IDENTITY: identity, **trained}

    capture_trajectories(job.pipe, job.model, job.prompts, job.sampling, job.layers, job.steps,
                         _consumer(job, measured, routers_of, lambda layer, c, where: sums.add(layer, c, methods[layer], where)),
                         "held-out")
    return sums


def measure_stage2(job: TableJob, identity: RouterMasks, weights: StageWeights, what: str = "stage 2") -> ErrorSums:
    """Load the stage-2 weights into the model (its transformer changes for good: every later load replaces all
    of it) and measure on its own trajectories."""
    s = weights.sparsity
    sums = ErrorSums(job.frame_tokens)
    trained = install(job.model, weights, job.seq_len)
    methods = {s: [Method("sla2_stage2", "stage2", own_alpha, quant=True),
                   Method("sparse_heuristic", IDENTITY, sparse_only),
                   Method("bestmass", BESTMASS, sparse_only)]}
    measured = {s: [IDENTITY, BESTMASS, "stage2"]}
    capture_trajectories(
        job.pipe, job.model, job.prompts, job.sampling, job.layers, job.steps,
        _consumer(job, measured, lambda layer: {IDENTITY: identity, "stage2": RouterMasks(trained[layer], True)},
                  lambda layer, c, where: sums.add(layer, c, methods, where)),
        f"{what} at {s:g}")
    return sums


def identity_router(model: torch.nn.Module, job: TableJob) -> RouterMasks:
    """The untrained router (identity projections): SLA's pooled heuristic."""
    attn1 = model.blocks[0].attn1
    device = next(model.parameters()).device
    untrained = SLA2Attention(attn1.heads, attn1.inner_dim // attn1.heads, block_q=job.block_q, block_k=job.block_k)
    return RouterMasks(untrained.to(device), own_alpha=False)


def measure(job: TableJob) -> TableSums:
    identity = identity_router(job.model, job)
    calib = calibrate(job, identity)
    methods = {layer: base_methods(job, calib, layer) for layer in job.layers}  # fits α and SLA's W (and its λ)
    base = job.parts.measured_or_kept("base", list(job.stage1_paths.values()),
                            lambda: measure_base(job, identity, methods))
    runs = {"": job.stage2, **job.stage2_variants}  # "": the stage2 row; the others Table 2's variants
    sums2 = {name: ErrorSums() for name in runs}
    for name, weights in runs.items():
        for s in sorted(weights):  # last: each changes the model's transformer weights
            what = f"stage 2 ({name})" if name else "stage 2"
            part = job.parts.measured_or_kept(f"stage2-{f'variant-{name}-' if name else ''}{s:g}",
                                    [weights[s].path],
                                    lambda: measure_stage2(job, identity, weights[s], what))
            sums2[name].sums.update(part.sums)
    return TableSums(base, sums2.pop(""), {key: r.tolist() for key, r in calib.sla_ridge.items()}, sums2)


def sums_of(method: str, sums: TableSums) -> ErrorSums:
    return sums.stage2 if method == "sla2_stage2" else sums.base

