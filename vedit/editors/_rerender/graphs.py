"""Rerender's wavefront calls replayed from CUDA graphs (`sampling_graphs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vedit.ops.cuda_graphs import Captured, capture

if TYPE_CHECKING:
    from vedit.editors._rerender.sampler import KeyFrameSampler


class StaticKV:
    """`WavefrontAttention`'s K/V in a form a CUDA graph can capture: per layer (`layout`: its input's shape and
    dtype), buffers for the first and previous key frames' features (filled before each replay) and row masks
    choosing the layer's own input instead; always the fixed length [first; previous]. The same values as the
    eager path. The buffers are made before the capture: made inside it, replays gave wrong frames (H200)."""

    def __init__(self, rows: int, device: torch.device, layout: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
        self.first_is_own = torch.zeros(rows, 1, 1, dtype=torch.bool, device=device)
        self.second_is_first = torch.zeros(rows, 1, 1, dtype=torch.bool, device=device)
        self.buffers = {name: (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                        for name, (shape, dtype) in layout.items()}
        self.inputs: dict[str, torch.Tensor] = {}  # each layer's input, as the graph writes it

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        first, second = self.buffers[name]
        self.inputs[name] = x
        first = torch.where(self.first_is_own, x, first)
        return torch.cat([first, torch.where(self.second_is_first, first, second)], dim=1)


class WavefrontGraphs:
    """The wavefront's UNet + ControlNet calls replayed from CUDA graphs (`sampling_graphs`), one per call shape.

    A shape's first call in the process runs eagerly: it pays the kernels' first-call set-up, which a capture
    should not record, and notes each attention layer's input shape. Its second call is captured and replayed,
    later ones replay. Cross-frame attention runs in its capturable form (`StaticKV`): the features a call
    reads are copied into the graph's buffers before the replay, the ones it records copied out after. Held
    by the editor, so the graphs (and their shared memory pool) serve every later cell of the process.
    """

    def __init__(self) -> None:
        self.layouts: dict[tuple, dict] = {}  # per call shape: its attention layers' input shapes
        self.captured: dict[tuple, Captured] = {}
        self.pool: tuple | None = None

    def __call__(self, sampler: KeyFrameSampler, inputs: list[torch.Tensor], rows: list[tuple[int, int, bool]]) -> torch.Tensor:
        """`sampler.forward(*inputs)` with `sampler.wave_attention` serving `rows`; the output is the graph's
        own tensor, overwritten by the next replay."""
        attention, key = sampler.wave_attention, tuple((v.shape, v.dtype) for v in inputs)
        if key not in self.layouts:
            attention.begin_call(rows)
            attention.layout = self.layouts[key] = {}
            try:
                return sampler.forward(*inputs)
            finally:
                attention.layout = None
        entry = self.captured.get(key)
        if entry is None:
            attention.static = static = StaticKV(inputs[0].shape[0], inputs[0].device, self.layouts[key])
            try:
                entry = self.captured[key] = capture(sampler.forward, inputs, self.pool)
            finally:
                attention.static = None
            entry.keep, self.pool = static, entry.graph.pool()
        attention.fill(entry.keep, rows)
        out = entry.replay(inputs)
        attention.record(entry.keep, rows)
        return out
