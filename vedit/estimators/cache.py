"""Disk caches shared by all estimators (per video, estimator and parameters) and the inversion cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def model_fingerprint(model: torch.nn.Module) -> str:
    """Identifies a model's weights cheaply (config name plus per-tensor sums) for cache keys."""
    h = hashlib.sha256(type(model).__name__.encode())
    name = getattr(getattr(model, "config", None), "_name_or_path", "")
    h.update(str(name).encode())
    with torch.no_grad():
        sums = [float(p.detach().double().sum()) for p in model.parameters()]
    h.update(np.asarray(sums, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


class DiskCache:
    """`.pt` files keyed by (video hash, estimator name, parameters); atomic writes."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    def path(self, video_hash: str, name: str, params: dict) -> Path | None:
        if self.root is None:
            return None
        key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.root / name / f"{video_hash}-{key}.pt"

    def get_or_compute(self, video_hash: str, name: str, params: dict, compute: Callable[[], Any]) -> Any:
        path = self.path(video_hash, name, params)
        if path is not None and path.exists():
            self.hits += 1  # memory-mapped (private pages): a metric reading a piece pays no copy of it
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self.misses += 1
        value = compute()
        if path is not None:
            _atomic_save(value, path)
        return value


class KeyedDiskCache(MutableMapping):
    """Tensors on disk under any key with a stable repr: the inversion cache (DDIM-inverted latents
    per video, backbone, prompt and steps), shared by all methods and sweeps."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: Any) -> Path:
        return self.root / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.pt"

    def __getitem__(self, key: Any) -> Any:
        path = self._path(key)
        if not path.exists():
            raise KeyError(key)
        return torch.load(path, map_location="cpu", weights_only=True)

    def __setitem__(self, key: Any, value: Any) -> None:
        _atomic_save(value, self._path(key))

    def __delitem__(self, key: Any) -> None:
        self._path(key).unlink()

    def __contains__(self, key: object) -> bool:
        return self._path(key).exists()

    def __iter__(self) -> Iterator[str]:  # keys are not stored, only their hashes
        return (p.stem for p in self.root.glob("*.pt"))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.pt"))


def _atomic_save(value: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(value, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
