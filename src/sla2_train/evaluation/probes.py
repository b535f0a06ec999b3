"""Per-layer attention error along the dense trajectory, and attention time per transformer forward.

Both read the (q, k, v) that each self-attention layer received in the dense model's forward (after q/k norm
and RoPE, captured by models.dense_capture), so every SLA2 setting is judged, and timed, on the same inputs:
errors do not compound across layers in this number (PSNR/SSIM of the videos show compounding).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from sla2_train.metrics import relative_l1
from sla2_train.models import set_attention_mode

from .timing import synchronize, time_ms


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, N, H, D] → [B, N, H, D] through SDPA (flash on CUDA in bf16: O(N) memory at Wan lengths)."""
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


class AttentionProbe:
    """A forward hook for the transformer run inside dense_capture.

    After every forward: each layer's rel-L1 of SLA2 (once per low-bit setting in `quant_modes`) against full
    attention, also summed per sampling step (`steps` of `per_step` calls each, the same in every video). At
    forward `time_at` of the first video it measures: each setting's attention time summed over the layers (dense
    SDPA under the key "dense"). `seconds` is the probe's own time, taken off the dense video's. `snapshot`,
    `added_since` and `add` carry a finished unit's share of the sums across processes (progress.py).
    """

    def __init__(self, model, procs, quant_modes: Sequence[bool], device, time_at: int | None, repeats: int = 3,
                 steps: int = 1, per_step: int = 1):
        self.model, self.procs, self.quant_modes = model, procs, list(quant_modes)
        self.device, self.time_at, self.repeats = device, time_at, repeats
        self.steps, self.per_step = steps, per_step  # a video's sampling steps, transformer calls a step
        self.error_sums = {q: torch.zeros(len(procs), dtype=torch.float64) for q in self.quant_modes}
        # per sampling step, the layers' mean error summed over the step's calls of every video
        self.step_sums = {q: torch.zeros(steps, dtype=torch.float64) for q in self.quant_modes}
        self.forwards, self.seconds = 0, 0.0
        self.attention_ms: dict[str, float] = {}
        self.shape: tuple[int, ...] | None = None

    def __call__(self, module, args, output) -> None:
        synchronize(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            self._measure()
        synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.forwards += 1

    def _measure(self) -> None:
        full = [full_attention(*p.captured) for p in self.procs]
        self.shape = tuple(self.procs[0].captured[0].shape)
        for quant in self.quant_modes:
            set_attention_mode(self.model, quant=quant)
            errors = [float(relative_l1(p.attention(*p.captured, layout="bnhd"), f)) for p, f in zip(self.procs, full)]
            self.error_sums[quant] += torch.tensor(errors, dtype=torch.float64)
            self.step_sums[quant][self._step()] += sum(errors) / len(errors)
        # Timed once, in a video's middle forward: the first video's, or a resumed run's first sampled one's.
        if not self.attention_ms and self.forwards % (self.steps * self.per_step) == self.time_at:
            self.attention_ms["dense"] = sum(
                time_ms(lambda p=p: full_attention(*p.captured), self.device, self.repeats) for p in self.procs)
            for quant in self.quant_modes:
                set_attention_mode(self.model, quant=quant)
                self.attention_ms[quant_label(quant)] = sum(
                    time_ms(lambda p=p: p.attention(*p.captured, layout="bnhd"), self.device, self.repeats)
                    for p in self.procs)

    def snapshot(self) -> dict:
        return {"errors": {q: t.clone() for q, t in self.error_sums.items()},
                "steps": {q: t.clone() for q, t in self.step_sums.items()}, "forwards": self.forwards}

    def added_since(self, snapshot: dict) -> dict:
        """What the forwards since `snapshot` added, as JSON (progress.py keeps it per finished unit)."""
        return {"forwards": self.forwards - snapshot["forwards"],
                "errors": {quant_label(q): (t - snapshot["errors"][q]).tolist() for q, t in self.error_sums.items()},
                "steps": {quant_label(q): (t - snapshot["steps"][q]).tolist() for q, t in self.step_sums.items()},
                "attention_ms": dict(self.attention_ms), "shape": self.shape}

    def add(self, added: dict) -> None:
        """Take in a unit measured by an earlier process (`added_since`'s output)."""
        for q in self.quant_modes:
            self.error_sums[q] += torch.tensor(added["errors"][quant_label(q)], dtype=torch.float64)
            self.step_sums[q] += torch.tensor(added["steps"][quant_label(q)], dtype=torch.float64)
        self.forwards += added["forwards"]
        self.attention_ms = self.attention_ms or dict(added["attention_ms"])
        self.shape = self.shape or (tuple(added["shape"]) if added["shape"] else None)

    def _step(self) -> int:
        return (self.forwards // self.per_step) % self.steps

    def mean_errors(self, quant: bool) -> list[float]:
        return (self.error_sums[quant] / max(self.forwards, 1)).tolist()

    def mean_errors_per_step(self, quant: bool) -> list[float]:
        """Per sampling step, the layers' mean error averaged over the step's calls of every video."""
        calls = self.forwards // self.steps  # each step's share of the calls
        return (self.step_sums[quant] / max(calls, 1)).tolist()


def quant_label(quant: bool) -> str:
    return "int8/fp8" if quant else "bf16"
