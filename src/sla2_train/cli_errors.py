"""Entry points report the user's mistakes as one line naming the problem and the key they typed.

`config_errors_as_one_line` wraps the build phase (compose → instantiate): anything it raises is a bad value.
`run_errors_as_one_line` wraps the run itself, and turns only the errors our code raises on purpose (data that
cannot be used, a dense attention that cannot fit) into one line; any other error keeps its traceback.
A run that fails in its build phase leaves no output folder behind, unless the folder held an earlier run.
"""

from __future__ import annotations

import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sla2_train.config_types import check_config_types

CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, HydraException, OmegaConfBaseException)

# What Hydra itself writes into a job's output folder before the job runs.
_HYDRA_FILES = re.compile(r"^(\.hydra|.*\.log)$")


def root_cause(err: BaseException) -> BaseException:
    """The error under Hydra's instantiation wrappers."""
    while isinstance(err, HydraException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _message(err: BaseException) -> str:
    """The error's first line; for an error a DataLoader worker re-raised, the worker's own message."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        return re.sub(r"^[\w.]+: ", "", last)  # "pkg.module.ErrorClass: message" → "message"
    if type(err).__name__ == "MissingMandatoryValue":
        return f"{getattr(err, 'full_key', '')} is required and has no value (set it on the command line)"
    return (text.splitlines() or [type(err).__name__])[0]


def _has_key(cfg: DictConfig | None, key: str) -> bool:
    if cfg is None:
        return False
    *parent, last = key.split(".")
    node = OmegaConf.select(cfg, ".".join(parent), throw_on_resolution_failure=False) if parent else cfg
    return isinstance(node, DictConfig) and last in node


def _key_in_message(line: str, cfg: DictConfig | None) -> str | None:
    """The key a message names first: `data.train_shards: ...`, or `attention: sparsity must ...`."""
    lead = re.match(r"^([A-Za-z_]\w*(?:\.\w+)*)", line)
    if lead and "." in lead.group(1) and _has_key(cfg, lead.group(1)):
        return lead.group(1)
    group = re.match(r"^([A-Za-z_]\w*(?:\.\w+)*): (.*)$", line)
    if group:
        for word in re.findall(r"[A-Za-z_]\w*", group.group(2)):
            if _has_key(cfg, f"{group.group(1)}.{word}"):
                return f"{group.group(1)}.{word}"
        if _has_key(cfg, group.group(1)):
            return group.group(1)
    return None


def _typed_key(full_key: str, cfg: DictConfig | None) -> str:
    """Hydra names the node it was instantiating (`module.stage`); the user typed what it points to (`stage`)."""
    if cfg is None or "." not in full_key:
        return full_key
    parent, last = full_key.rsplit(".", 1)
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False)
    if isinstance(node, DictConfig) and last in node and OmegaConf.is_interpolation(node, last):
        raw = str(node._get_node(last)._value())
        if re.fullmatch(r"\$\{[\w.]+\}", raw):
            return raw[2:-1]
    return full_key


def one_line(err: BaseException, cfg: DictConfig | None = None) -> str:
    """The problem in one line, with the config key the user typed when the message does not already name it."""
    root = root_cause(err)
    line = _message(root)
    named = _key_in_message(line, cfg)
    if named or re.match(r"^[A-Za-z_]\w*(\.\w+)+ ", line):
        return line if named is None or named in line else f"{line} (config key: {named})"
    found = re.search(r"full_key: (\S+)", str(err)) or re.search(r"full_key: (\S+)", str(root))
    if not found or found.group(1) in line:
        return line
    return f"{line} (config key: {_typed_key(found.group(1), cfg)})"


def _fresh_output_dir() -> Path | None:
    """The Hydra output folder of this job if it held nothing but what Hydra wrote for it (None otherwise)."""
    if not HydraConfig.initialized():
        return None
    # a config composed with return_hydra_config (the compose API, not a job) has no output folder
    out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    if out is None:
        return None
    out = Path(out)
    if not out.is_dir() or any(not _HYDRA_FILES.match(p.name) for p in out.iterdir()):
        return None
    return out


def _remove_output_dir(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    here = Path.cwd().resolve()
    for parent in out.resolve().parents:  # outputs/ and the like, when this run made them and left them empty
        if parent == here or here not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


@contextmanager
def config_errors_as_one_line(cfg: DictConfig | None = None, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Wrap the build phase (config checks → instantiate): a bad value is one line, exit code 2, no output folder.

    cfg: the composed config; its values are type-checked first, and messages are mapped back to its keys.
    also: further exception types that mean bad input for this entry point.
    """
    fresh = _fresh_output_dir()
    try:
        if cfg is not None:
            check_config_types(cfg)
        yield
    except CONFIG_ERRORS + also as err:
        print(f"error: {one_line(err, cfg)}", file=sys.stderr)
        if fresh is not None:
            _remove_output_dir(fresh)
        sys.exit(2)


@contextmanager
def run_errors_as_one_line(cfg: DictConfig | None = None) -> Iterator[None]:
    """Wrap the run: data that cannot be used or a dense attention that cannot fit is one line, exit code 1."""
    from sla2_train.attention.reference.memory import DenseTooLarge
    from sla2_train.data.errors import DataError

    try:
        yield
    except (DataError, DenseTooLarge) as err:
        print(f"error: {one_line(err, cfg)}", file=sys.stderr)
        sys.exit(1)
