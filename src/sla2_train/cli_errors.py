"""Entry points report configuration mistakes as one line naming the problem, not a traceback."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, HydraException, OmegaConfBaseException)


def one_line(err: BaseException) -> str:
    """The first line of the error under Hydra's wrappers, plus the config key Hydra/OmegaConf attached."""
    root = err
    while isinstance(root, HydraException) and root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines() or [type(root).__name__]
    key = re.search(r"full_key: (\S+)", str(err)) or re.search(r"full_key: (\S+)", str(root))
    where = f" (config key: {key.group(1)})" if key and key.group(1) not in lines[0] else ""
    return f"{lines[0]}{where}"


@contextmanager
def config_errors_as_one_line() -> Iterator[None]:
    """Wrap the build phase (compose → instantiate) only: errors while training keep their traceback."""
    try:
        yield
    except CONFIG_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
