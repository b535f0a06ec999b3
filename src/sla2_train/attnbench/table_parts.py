"""The attention table's finished parts on disk, so that an interrupted table resumes where it stopped.

A table is one dense pass over the held-out trajectories (`base`) and one pass per stage-2 model, minutes each at
the testbed's default size and hours on Wan2.1. Each pass's error sums are written to `out/parts/<name>.safetensors`
when it ends, stamped with what it was measured from: the table's settings (everything in the config but `out`
and the stage-2 lists, which only add parts) and every file it read (model folder, prompt files, the stage-1 or
stage-2 weights: small files by content, large ones by size and modification time). A
later run with `resume=true` reuses a part whose stamp is the same and measures every other one again.
Calibration (α, SLA's W) is always refitted: it takes seconds, and the base rows' α depend on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .table_methods import SUMS, ErrorSums

log = logging.getLogger(__name__)
SEP = "|"  # between a sum's sparsity, method, layer, sampling step and guidance branch in a tensor name


HASHED_BELOW = 1 << 20  # bytes: smaller files are stamped by their content, larger ones by size and mtime


def weight_stamp(path: str) -> list:
    """What a part read from `path` (a file, or every file of a folder, sorted): [path, sha256] for small files
    (prompt lists, configs: rewritten with the same text by a re-run script, they must still match), [path, size,
    mtime_ns] for large ones (weights: hashing gigabytes on every resume would cost minutes)."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        st = f.stat()
        if st.st_size < HASHED_BELOW:
            out.append([str(f), hashlib.sha256(f.read_bytes()).hexdigest()])
        else:
            out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


class TableParts:
    """Reads and writes the parts of one table. `settings`: a JSON-able dict of what every part depends on;
    `inputs`: the files every part reads (the model folder, the prompt files), stamped like weights."""

    def __init__(self, root: Path, settings: dict, resume: bool, inputs: list[str]):
        self.root, self.resume = Path(root), resume
        self.settings = {**settings, "inputs": [weight_stamp(p) for p in inputs if p and Path(p).exists()]}

    def _stamp(self, weights: list[str]) -> str:
        # SUMS: a part from a version that summed other quantities is measured again
        return json.dumps({"settings": self.settings, "weights": [weight_stamp(w) for w in weights],
                           "sums": list(SUMS)}, sort_keys=True)

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    def load(self, name: str, weights: list[str]) -> ErrorSums | None:
        """The part's sums when it was finished from the same settings and weight files; None otherwise."""
        path = self._path(name)
        if not (self.resume and path.is_file()):
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("stamp") != self._stamp(weights):
                    log.info("table part %s: settings or weights changed since %s, measuring again", name, path)
                    return None
                sums = ErrorSums()
                for key in f.keys():
                    sparsity, method, layer, step, branch = key.split(SEP)
                    sums.sums[(float(sparsity), method, int(layer))][(int(step), branch)] = f.get_tensor(key)
        except (OSError, ValueError, SafetensorError) as e:  # a damaged file costs its pass, never the table
            log.warning("table part %s: %s is unreadable (%s), measuring again", name, path, e)
            return None
        log.info("table part %s: kept from %s", name, path)
        return sums

    def measured_or_kept(self, name: str, weights: list[str], measure) -> ErrorSums:
        """The kept part's sums, or `measure()`'s, which are then saved as the part."""
        sums = self.load(name, weights)
        if sums is None:
            sums = measure()
            self.save(name, weights, sums)
        return sums

    def save(self, name: str, weights: list[str], sums: ErrorSums) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tensors = {SEP.join((repr(s), m, str(layer), str(step), branch)): t.contiguous()
                   for (s, m, layer), groups in sums.sums.items() for (step, branch), t in groups.items()}
        tmp = self._path(name).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"stamp": self._stamp(weights)})
        os.replace(tmp, self._path(name))  # a run killed while writing leaves no half part



def table_settings(cfg) -> dict:
    """What every part depends on: the resolved config but the output folder, the stage-2 lists (each stage-2
    part is stamped with its own weights) and the switch that reads parts back."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("out", "stage2", "stage2_variants", "resume", "hydra"):
        resolved.pop(key, None)
    return resolved
