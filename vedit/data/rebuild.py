"""A dataset rebuilt from a stored record's config, which is untrusted input.

A record's `config.data` is what Hydra resolved when the cell ran; anyone who can write the store can
change it. It is never passed to `instantiate`: its `_target_` only selects one of the registered
datasets (and the one Transform class), and everything else must be plain keyword arguments.
"""

from __future__ import annotations

import inspect
from typing import Any

from vedit.registry import DATASETS, LAZY_ENTRIES
from vedit.untrusted import UntrustedInputError

TRANSFORM_TARGET = "vedit.data.transforms.Transform"
_HYDRA_KEYS = ("_args_", "_partial_", "_convert_", "_recursive_")


def dataset_targets() -> dict[str, str]:
    """`module.Class` -> registered dataset name, for the datasets vedit ships."""
    return {target.replace(":", "."): name for name, target in LAZY_ENTRIES[DATASETS].items()}


def dataset_from_config(config: dict, where: str = "stored data config") -> Any:
    """The registered dataset `config["_target_"]` names, built from the config's plain values."""
    if not isinstance(config, dict):
        raise UntrustedInputError(f"{where}: expected a mapping, got {type(config).__name__}")
    targets = dataset_targets()
    target = config.get("_target_")
    if target not in targets:
        raise UntrustedInputError(f"{where}: _target_={target!r} is not one of vedit's datasets "
                                  f"({', '.join(sorted(targets))}); a stored config is never instantiated")
    kwargs = _plain({k: v for k, v in config.items() if k != "_target_"}, where)
    if isinstance(kwargs.get("transform"), dict):
        kwargs["transform"] = _transform(kwargs["transform"], f"{where}: transform")
    cls = DATASETS.get(targets[target])
    _check_arguments(cls, kwargs, where)
    return cls(**kwargs)


def _transform(config: dict, where: str) -> Any:
    from vedit.data.transforms import Transform

    if config.get("_target_") != TRANSFORM_TARGET:
        raise UntrustedInputError(f"{where}: _target_={config.get('_target_')!r}; only {TRANSFORM_TARGET} is allowed")
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    _check_arguments(Transform, kwargs, where)
    return Transform(**kwargs)


def _plain(value: Any, where: str, target_allowed: bool = False) -> Any:
    """`value` if it holds only JSON values and no Hydra keys (a `_target_` only where `target_allowed`)."""
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or k in _HYDRA_KEYS or (k == "_target_" and not target_allowed):
                raise UntrustedInputError(f"{where}: key {k!r} is not allowed in a stored config")
        return {k: _plain(v, f"{where}.{k}", target_allowed=k == "transform") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, where) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise UntrustedInputError(f"{where}: a value of type {type(value).__name__} is not allowed in a stored config")


def _check_arguments(cls: type, kwargs: dict, where: str) -> None:
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise UntrustedInputError(f"{where}: {cls.__name__} takes no argument {unknown[0]!r} "
                                  f"(it takes {', '.join(p for p in params if p != 'self')})")
