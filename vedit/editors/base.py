"""The Editor interface and the per-phase timer every editor reports with."""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

import torch

from vedit.editors.params import Rule, check
from vedit.errors import EditorError
from vedit.ops.attention import sdpa_kernels
from vedit.task import EditResult, EditTask

if TYPE_CHECKING:
    from vedit.backbones import Backbone
    from vedit.estimators import Estimators


def round_up(n: int, multiple: int | None) -> int:
    """n rounded up to a multiple of `multiple` (None: n): the rows of a batch padded to a few shapes."""
    return n + (-n % multiple if multiple else 0)


class PhaseTimer:
    """Wall-clock seconds per phase; synchronises the device so GPU work is counted."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def peak_memory(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

    def result(self, frames: torch.Tensor, **info) -> EditResult:
        """uint8 frames are returned as they are (no float copy); float frames as float32 in [0, 1]."""
        frames = frames if frames.dtype == torch.uint8 else frames.detach().float().cpu().clamp(0, 1)
        return EditResult(frames=frames, timings=dict(self.seconds),
                          peak_memory_bytes=self.peak_memory(), info=info)


class Editor:
    """`edit(task) -> EditResult`. Editors never download, read configs or write files."""

    name: str = "editor"
    min_frames: int = 2
    # keys of the run's `estimators` config that change this editor's output: part of its cells' keys
    estimators_used: tuple[str, ...] = ()
    # key -> rule (vedit.editors.params) for the constructor's method parameters; keys without a rule
    # are only checked to exist
    PARAMS: ClassVar[dict[str, Rule]] = {}
    INJECTED: ClassVar[tuple[str, ...]] = ("backbone", "estimators", "latent_cache")  # given by the runner
    # parameters that change speed and memory only (the same frames up to floating-point batching
    # effects, tested in test_speed_params): left out of cell keys and leaderboard labels, kept in records
    SPEED_PARAMS: ClassVar[tuple[str, ...]] = ()
    attention_kernels: list[str] | None = None  # SDPA kernels `edit` allows (vedit.ops.attention.SDPA_KERNELS)
    prompts_needed: ClassVar[tuple[str, ...]] = ("source_prompt", "target_prompt")  # checked by check_inputs

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Raise ParamError naming each unknown key (with a did-you-mean) and each value outside its
        rule, with the allowed range. Called by the runner before any model is built."""
        signature = inspect.signature(cls.__init__).parameters
        known = [k for k, p in signature.items() if k != "self" and k not in cls.INJECTED
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        check(cls.name, params, known, cls.PARAMS)

    def __init__(self, backbone: Backbone | None = None, estimators: Estimators | None = None) -> None:
        self.backbone = backbone
        if estimators is None:
            from vedit.estimators import Estimators

            estimators = Estimators()
        self.estimators = estimators

    @property
    def device(self) -> torch.device:
        return self.backbone.device if self.backbone is not None else torch.device("cpu")

    def check_inputs(self, task: EditTask) -> None:
        """Raise EditorError naming the input when the task cannot be edited."""
        task.video.check_editable(multiple=8, min_frames=self.min_frames)
        for arg in self.prompts_needed:
            value = getattr(task, arg)
            if not isinstance(value, str) or not value.strip():
                raise EditorError(
                    f"{self.name}: {arg}={value!r} for video {task.video.id!r} is missing; "
                    "give it in the dataset's prompts file or pick a dataset that provides it"
                )

    def edit(self, task: EditTask) -> EditResult:
        """Edit one task: `_edit`, with attention limited to `attention_kernels`. Editors override
        `_edit`, or `edit` itself."""
        with sdpa_kernels(self.attention_kernels):
            return self._edit(task)

    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """Pay a fresh process's one-time GPU set-up before the first edit (vedit.run calls this once,
        with the first video's size (H, W) and length): one call of each backbone model, under the
        editor's attention kernels; editors add the batch shapes their edits start with. Nothing an
        edit computes depends on it."""
        if self.backbone is not None:
            with sdpa_kernels(self.attention_kernels):
                self.backbone.warmup(size)

    def _edit(self, task: EditTask) -> EditResult:
        raise NotImplementedError(f"{type(self).__name__} defines neither edit(task) nor _edit(task)")
