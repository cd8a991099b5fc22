"""Name -> class registries with lazy imports and "did you mean" errors.

Entries are registered either by decorator (the class is imported already) or lazily as a
"module:attr" string, so that looking up `framewise` does not import every editor and its
dependencies. Editors are found without a table: every module `vedit.editors.<name>` and
`baselines.<name>` is the editor `<name>` (the module registers its class by decorator when first
looked up), and installed packages add editors through the `vedit.editors` entry-point group. A new
method is one file plus its `conf/method/<name>.yaml`; nothing here changes.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
from typing import Any, Callable, Iterable


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


# What decorators registered, per (kind, name). A Registry copied into another process (Hydra's joblib
# launcher pickles the runner by value) finds here what a module registers when imported there.
_DECORATED: dict[tuple[str, str], Any] = {}


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: Any = None) -> Callable:
        """`@reg.register("name")` on a class, or `reg.register("name", "pkg.mod:Class")`."""
        if target is not None:
            self._add(name, target)
            return target

        def decorator(obj: Any) -> Any:
            self._add(name, obj)
            _DECORATED[(self.kind, name)] = obj
            return obj

        return decorator

    def _add(self, name: str, target: Any) -> None:
        existing = self._entries.get(name)
        if existing is None or isinstance(existing, str):
            self._entries[name] = target  # an import replaces its lazy entry
        elif not isinstance(target, str) and _qualname(existing) != _qualname(target):
            raise ValueError(f"{self.kind} {name!r} is already registered to {_qualname(existing)}")

    def get(self, name: str) -> Any:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
            )
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            imported = importlib.import_module(module)
            # "module:attr", or a module that registers itself by decorator
            obj = getattr(imported, attr) if attr else _DECORATED.get((self.kind, name), self._entries[name])
            if isinstance(obj, str):
                raise UnknownNameError(f"{self.kind} {name!r}: module {module} was imported but registers no "
                                       f"{self.kind} of that name; decorate its class with .register({name!r})")
            self._entries[name] = obj
            target = obj
        return target

    def discover(self, package: str, skip: Iterable[str] = ()) -> None:
        """Register every public module `package.<name>` lazily as `<name>`, without importing it."""
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            return
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if not info.name.startswith("_") and info.name not in skip:
                self._add(info.name, f"{package}.{info.name}")

    def discover_entry_points(self, group: str) -> None:
        """Register the "module:attr" entry points of installed packages in `group` lazily."""
        for ep in importlib.metadata.entry_points(group=group):
            self._add(ep.name, ep.value)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


EDITORS = Registry("editor")
DATASETS = Registry("dataset")
METRICS = Registry("metric")

# Editors: one module per method (shared code in vedit/editors/base.py), plus installed plugins.
EDITORS.discover("vedit.editors", skip=("base", "params"))  # shared modules, not editors
EDITORS.discover("baselines")
EDITORS.discover_entry_points("vedit.editors")

# Lazy entries: importing vedit.registry stays cheap; the modules register the same objects
# by decorator when imported directly.
LAZY_ENTRIES: dict[Registry, dict[str, str]] = {
    DATASETS: {
        "synthetic": "vedit.data.synthetic:SyntheticDataset",
        "davis": "vedit.data.davis:DavisDataset",
        "folder": "vedit.data.folder:FolderDataset",
        "videoswap": "vedit.data.videoswap:VideoSwapDataset",
        "tgve": "vedit.data.tgve:TGVEDataset",
    },
    METRICS: {
        "clip_text": "vedit.metrics.clip:ClipText",
        "clip_image": "vedit.metrics.clip:ClipImage",
        "clip_consistency": "vedit.metrics.clip:ClipConsistency",
        "clip_image_allpairs": "vedit.metrics.clip:ClipImageAllPairs",
        "frame_acc": "vedit.metrics.clip:FrameAccuracy",
        "warp_mse": "vedit.metrics.warp:WarpMSE",
        "warp_mse_01": "vedit.metrics.warp:WarpMSE01",
        "warp_error": "vedit.metrics.warp:WarpError",
        "warp_error_l1": "vedit.metrics.warp:WarpErrorL1",
        "motion_alignment": "vedit.metrics.warp:MotionAlignment",
        "pick_score": "vedit.metrics.pick_score:PickScore",
        "aesthetic_score": "vedit.metrics.aesthetic:AestheticScore",
        "dino_consistency": "vedit.metrics.dino:DinoConsistency",
        "viclip_text": "vedit.metrics.viclip:ViClipText",
        "dover": "vedit.metrics.dover:DoverScore",
    },
}
for _registry, _entries in LAZY_ENTRIES.items():
    for _name, _target in _entries.items():
        _registry.register(_name, _target)
