"""WanTransformer3DModel from an architecture dict (random init) or from a local diffusers folder.

No hub access: a path is a folder on disk, and a missing folder is a ConfigError naming it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

from diffusers import WanTransformer3DModel

from .checkpointing import enable_checkpointing
from .compilation import compile_blocks
from .errors import ConfigError

_WAN_ARGS = frozenset(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}


def _plain(value: Any) -> Any:
    # OmegaConf lists and diffusers' saved tuples both compare as lists, so folder checks do not trip on types.
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def check_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(arch) - _WAN_ARGS)
    if unknown:
        raise ConfigError(
            f"model.transformer.arch has keys WanTransformer3DModel does not take: {unknown} "
            f"(known: {sorted(_WAN_ARGS)})"
        )
    arch = {k: _plain(v) for k, v in arch.items()}
    if "patch_size" in arch:
        arch["patch_size"] = tuple(arch["patch_size"])
    return arch


def resolve_model_folder(path: str | Path) -> tuple[Path, str | None]:
    """(folder, subfolder): a transformer folder (config.json) or a pipeline folder (transformer/config.json)."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder, None
    if (folder / "transformer" / "config.json").is_file():
        return folder, "transformer"
    what = "does not exist" if not folder.exists() else "holds neither config.json nor transformer/config.json"
    raise ConfigError(f"model.path: the local diffusers model folder {str(folder)!r} {what}")


def _check_folder_matches(model: WanTransformer3DModel, arch: Mapping[str, Any], folder: Path) -> None:
    """A folder whose architecture differs from the chosen preset is almost always the wrong folder."""
    diffs = [
        f"{k}={_plain(model.config[k])!r} (preset: {_plain(v)!r})"
        for k, v in arch.items()
        if k in model.config and _plain(model.config[k]) != _plain(v)
    ]
    if diffs:
        raise ConfigError(
            f"model folder {str(folder)!r} does not match the chosen model preset: {', '.join(diffs)}; "
            "pick the preset that matches the folder"
        )


def wan_transformer(
    arch: Mapping[str, Any] | None = None,
    path: str | None = None,
    gradient_checkpointing: bool | str = False,
    compile: str | None = None,
) -> WanTransformer3DModel:
    """Random init from `arch` when `path` is None, else the weights of the local folder `path`.

    gradient_checkpointing: false / true (whole blocks recomputed) / "keep_attention" (see checkpointing.py).
    compile: null, or a torch.compile backend for each block (compilation.py).
    """
    arch = check_arch(arch or {})
    if path is None:
        model = WanTransformer3DModel(**arch)
    else:
        folder, subfolder = resolve_model_folder(path)
        model = WanTransformer3DModel.from_pretrained(folder, subfolder=subfolder)
        _check_folder_matches(model, arch, folder)
    enable_checkpointing(model, gradient_checkpointing)
    compile_blocks(model, compile)
    return model


def token_count(model: WanTransformer3DModel, latent_shape: Sequence[int]) -> int:
    """Self-attention sequence length N for latents [C, F, H, W]; ConfigError when they do not fit the model."""
    c, f, h, w = (int(x) for x in latent_shape)
    pt, ph, pw = model.config.patch_size
    if c != model.config.in_channels:
        raise ConfigError(f"model.latent_shape has {c} channels but the transformer takes {model.config.in_channels}")
    if f % pt or h % ph or w % pw:
        raise ConfigError(
            f"model.latent_shape [C, F, H, W]={list(latent_shape)} is not divisible by patch_size {list((pt, ph, pw))}"
        )
    return (f // pt) * (h // ph) * (w // pw)
