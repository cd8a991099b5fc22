"""Rerender's cross-frame attention: K/V sources for the sequential loop and for batched wavefront calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vedit.ops.transfer import to_device

if TYPE_CHECKING:
    from vedit.editors._rerender.graphs import StaticKV


class KeyFrameAttention:
    """K/V source for cross-frame attention: records the current frame's attention inputs per
    step, and serves [first key frame; previous key frame] inputs recorded at the same step."""

    def __init__(self) -> None:
        self.first: dict[int, dict[str, torch.Tensor]] = {}
        self.prev: dict[int, dict[str, torch.Tensor]] = {}
        self.current: dict[int, dict[str, torch.Tensor]] = {}
        self.use_refs = False
        self._recording: dict[str, torch.Tensor] = {}
        self._refs: dict[str, torch.Tensor] = {}

    def begin_step(self, i: int) -> None:
        self._recording = self.current.setdefault(i, {})
        if self.use_refs:
            first, prev = self.first[i], self.prev[i]
            # [first; first] attends exactly like [first]: skip the copy for the second key frame
            self._refs = first if prev is first else {n: torch.cat([first[n], prev[n]], dim=1) for n in first}

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self._recording[name] = x
        return self._refs[name] if self.use_refs else x

    def finish_frame(self, is_first: bool) -> None:
        if is_first:
            self.first = self.current
        self.prev, self.current, self.use_refs = self.current, {}, True


class WavefrontAttention:
    """K/V source for a batched call of several key-frame passes (2 rows each, [uncond; cond]).

    Features are kept per (key frame position, step) from the pass that the sequential loop would
    leave in place (the fused pass where it runs, else the direct pass). Row group j of a call at
    step s of key frame n attends to: itself (n = 0), the first key frame (n = 1, as the sequential
    loop does for [first; first]), or [first; key frame n-1] (n >= 2). When a call mixes K/V
    lengths, the shorter ones are doubled ([a; a] attends like [a], up to rounding) so that one
    attention call serves the whole batch; `fixed_length` doubles them in every call, so that the
    K/V length never varies (one attention shape per batch size).
    """

    def __init__(self, fixed_length: bool = False) -> None:
        self.features: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._rows: list[tuple[int, int, bool]] = []
        self.fixed_length = fixed_length
        self.static: StaticKV | None = None  # set while a call is captured into a CUDA graph
        self.layout: dict[str, tuple[torch.Size, torch.dtype]] | None = None  # when set, each layer's input shape

    def begin_call(self, rows: list[tuple[int, int, bool]]) -> None:
        """rows: per row group (key frame position, step, whether to record its features)."""
        self._rows = rows

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.static is not None:
            return self.static(name, x)
        if self.layout is not None:
            self.layout[name] = (x.shape, x.dtype)
        single = len(self._rows) == 1
        firsts, seconds = [], []
        for j, (n, i, record) in enumerate(self._rows):
            own = x[2 * j: 2 * j + 2]
            if record:
                self.features.setdefault((n, i), {})[name] = own if single else own.clone()  # a view pins the batch
            firsts.append(own if n == 0 else self.features[(0, i)][name])
            seconds.append(self.features[(n - 1, i)][name] if n >= 2 else None)
        if all(s is None for s in seconds) and not self.fixed_length:
            return x if single and self._rows[0][0] == 0 else torch.cat(firsts)
        seconds = [f if s is None else s for f, s in zip(firsts, seconds)]
        return torch.cat([torch.cat(firsts), torch.cat(seconds)], dim=1)

    def release(self, n: int) -> None:
        for k in [k for k in self.features if k[0] == n]:
            del self.features[k]

    def fill(self, static: StaticKV, rows: list[tuple[int, int, bool]]) -> None:
        """Before a graph replay: the K/V this call reads, as `__call__` would serve it (fixed length)."""
        for mask, values in ((static.first_is_own, [n == 0 for n, _, _ in rows]),
                             (static.second_is_first, [n < 2 for n, _, _ in rows])):
            mask.copy_(to_device(torch.tensor(values).repeat_interleave(2).view(-1, 1, 1), mask.device))
        for name, (first, second) in static.buffers.items():
            for j, (n, i, _) in enumerate(rows):
                if n > 0:
                    first[2 * j: 2 * j + 2].copy_(self.features[(0, i)][name])
                if n >= 2:
                    second[2 * j: 2 * j + 2].copy_(self.features[(n - 1, i)][name])

    def record(self, static: StaticKV, rows: list[tuple[int, int, bool]]) -> None:
        """After a graph replay: keep the features of the rows that record (copies: the next replay overwrites)."""
        for name, own in static.inputs.items():
            for j, (n, i, keep) in enumerate(rows):
                if keep:
                    self.features.setdefault((n, i), {})[name] = own[2 * j: 2 * j + 2].clone()
