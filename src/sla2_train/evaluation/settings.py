"""Everything that decides a generated video, recorded beside every result, and the folder it names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def checkpoint_identity(ckpt: str | None) -> dict[str, Any] | None:
    """Path, size and modification time: a re-trained checkpoint at the same path is another checkpoint. A folder
    (trainer=fsdp's sharded checkpoint, an exported folder) counts its files: its own entry changes with neither."""
    if not ckpt:
        return None
    p = Path(ckpt).expanduser()
    stats = [f.stat() for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p.stat()]
    return {"path": str(p.resolve()), "bytes": sum(s.st_size for s in stats),
            "mtime": int(max((s.st_mtime for s in stats), default=p.stat().st_mtime))}


def generation_settings(cfg, prompts: list[str], seeds: list[int], frames: dict[str, int], folder: str,
                        dtype: str, quant_modes: list[bool]) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "model_path": folder,
        "random_weights": cfg.model.path is None,
        "checkpoint": checkpoint_identity(cfg.ckpt),
        "dense_weights": cfg.dense_weights if cfg.ckpt else None,  # which transformer the dense rows ran
        "attention": OmegaConf.to_container(cfg.attention, resolve=True),
        "quant_rows": quant_modes,
        "prompt_set": cfg.prompts,
        "prompts_expanded": False,
        "prompts": prompts,
        "videos_per_prompt": cfg.videos_per_prompt,
        "seeds": seeds,
        **frames,
        "fps": cfg.fps,
        "num_inference_steps": cfg.num_inference_steps,
        "scheduler": OmegaConf.to_container(cfg.eval.scheduler, resolve=True),
        "guidance_scale": cfg.guidance_scale,
        "negative_prompt": cfg.negative_prompt,
        "max_sequence_length": cfg.max_sequence_length,
        "dtype": dtype,
        "device": cfg.device,
    }


def results_folder(parent: str | Path, settings: dict[str, Any]) -> Path:
    """<parent>/<digest of the settings>: one folder per (checkpoint, attention options, eval settings); a
    folder already holding results is never written again (a repeat gets -1, -2, ...)."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    base = Path(parent) / digest
    folder, n = base, 0
    while (folder / "eval.json").exists():
        n += 1
        folder = base.with_name(f"{digest}-{n}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
