"""The Metric interface, and frame helpers that keep memory bounded on long videos."""

from __future__ import annotations

import abc
from typing import Any, Iterator

import torch

from vedit.task import EditTask
from vedit.video import to_float


class MetricError(ValueError):
    """A metric that cannot be computed for this input; the message names the video and the fix."""


def frame_chunks(frames: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """Float [0, 1] chunks of at most `size` frames (uint8 input is converted one chunk at a time)."""
    for chunk in frames.split(max(1, int(size))):
        yield to_float(chunk)


class Metric(abc.ABC):
    """`metric(edited, task) -> {key: value}`; `edited` is (T, 3, H, W) uint8 or float in [0, 1].

    `config(task)` says everything that determines the values besides the edit (the metric's name and
    parameters, the models it uses, the flow estimator that runs for this task): metric values are
    stored per config, so a changed setting is recomputed and never read back stale.
    """

    name: str = "metric"
    higher_is_better: bool = True
    convention: str = ""
    prompts_needed: tuple[str, ...] = ()  # task prompts without which the metric does not apply (skipped)

    @abc.abstractmethod
    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        """Scores of the edited frames for this task."""

    def evaluate(self, edited: torch.Tensor, task: EditTask) -> tuple[dict[str, float], dict[str, list]]:
        """The scores and, for metrics that average over frames or pairs, the values before averaging
        (`{name: [value per frame]}`, or per consecutive pair (t, t+1) at index t; None where a value
        is undefined): the report site's per-frame curves. Default: the scores only."""
        return self(edited, task), {}

    def config(self, task: EditTask) -> dict[str, Any]:
        """The metric's identity for the metric store; subclasses add their models and parameters."""
        return {"metric": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}"}

    def models(self, task: EditTask) -> dict[str, Any]:
        """The models behind the values (CLIP, flow estimator): leaderboard rows never mix them."""
        return {}

    def check_frames(self, edited: torch.Tensor, task: EditTask, min_frames: int = 1) -> None:
        if edited.ndim != 4 or edited.shape[1] != 3:
            raise MetricError(f"{self.name}: edited frames of video {task.video.id!r} must be (T, 3, H, W), "
                              f"got {tuple(edited.shape)}")
        if edited.shape[0] < min_frames:
            raise MetricError(f"{self.name} needs at least {min_frames} frames; video {task.video.id!r} "
                              f"has {edited.shape[0]}")
        if edited.dtype != torch.uint8 and not torch.isfinite(edited).all():
            raise MetricError(f"{self.name}: edited frames of video {task.video.id!r} contain NaN or inf")
