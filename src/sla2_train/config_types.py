"""Config values checked against the type hints of what they are passed to, before anything is built.

`attention.sparsity=high` would otherwise reach `0 < sparsity` deep inside the model build and come back as
"'<' not supported between instances of 'float' and 'str'", attributed to the node Hydra was instantiating.
Checked here, the error names the key the user typed and the type it takes.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Callable, Iterator, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping)


class ConfigTypeError(TypeError):
    """A config value of the wrong type; the message starts with the key as the user typed it."""


def _matches(value: Any, hint: Any) -> bool | None:
    """True / False when the hint decides; None when it cannot (classes, Any, callables, ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        verdicts = [_matches(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if value is None:
        return False if hint in (bool, int, float, str) or origin in _SEQUENCES + _MAPPINGS else None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        return None if item is None else all(_matches(v, item) is not False for v in value)
    if hint in _MAPPINGS or origin in _MAPPINGS:
        return isinstance(value, dict)
    return None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is Literal:
        return f"one of {list(args)}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if hint in _SEQUENCES or origin in _SEQUENCES:
        return f"a list of {_describe(args[0])}" if args and args[0] is not Ellipsis else "a list"
    if hint in _MAPPINGS or origin in _MAPPINGS:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Type hints of the parameters `target` takes; {} where they cannot be resolved."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
        params = inspect.signature(target).parameters
    except Exception:  # forward references a library never resolves, builtins without signatures, ...
        return {}
    return {name: hints[name] for name in params if name in hints}


def _targets(node: DictConfig, path: str) -> Iterator[tuple[str, DictConfig]]:
    """(path, node) of every `_target_` node written in the config, not those reached by interpolation."""
    if "_target_" in node:
        yield path, node
    for key in node:
        if isinstance(key, str) and not OmegaConf.is_interpolation(node, key) and not OmegaConf.is_missing(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                yield from _targets(child, f"{path}{key}.")


def _typed_key(node: DictConfig, key: str, path: str) -> str:
    """The key the user sets: for `block_q: ${model.attn_block_q}` that is model.attn_block_q."""
    if OmegaConf.is_interpolation(node, key):
        raw = str(node._get_node(key)._value())
        if raw.startswith("${") and raw.endswith("}") and raw.count("${") == 1 and ":" not in raw:
            return raw[2:-1]
    return f"{path}{key}"


def check_config_types(cfg: DictConfig) -> None:
    """Every plain value under a `_target_` against the type hints of the callable it goes to.

    A target that forwards **options to another callable names it in `config_options_of` (SLA2Swap →
    SLA2Attention), so those options are checked too.
    """
    for path, node in _targets(cfg, ""):
        if path.startswith("hydra."):
            continue
        try:
            target = get_object(str(node["_target_"]))
        except Exception:
            continue  # a bad _target_ is Hydra's to report
        targets = [target, getattr(target, "config_options_of", None)]
        for key in node:
            if not isinstance(key, str) or key.startswith("_") or OmegaConf.is_missing(node, key):
                continue
            try:
                value = node[key]
            except Exception:
                continue  # an interpolation that does not resolve: instantiate reports it with its key
            if isinstance(value, DictConfig) and "_target_" in value:
                continue
            plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
            for t in filter(None, targets):
                hints = _hints(t)
                if key in hints and _matches(plain, hints[key]) is False:
                    raise ConfigTypeError(f"{_typed_key(node, key, path)} must be {_describe(hints[key])}, got {plain!r}")
