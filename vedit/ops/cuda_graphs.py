"""CUDA graph capture for the graphed paths (PatchMatch's search, Rerender's wavefront UNet calls).

A captured graph replays its kernels on the memory it captured with: each call copies its inputs into
the graph's own input tensors, replays, and reads the graph's output tensors (overwritten by the next
replay). Graphs of one owner share a memory pool; they never run concurrently (one stream).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the graph reads these: each call copies its own inputs in
    outputs: Any  # what `fn` returned at capture; the graph writes into it at each replay
    keep: Any = None  # anything else the graph reads or writes, kept alive with it

    def replay(self, inputs: Sequence[torch.Tensor]) -> Any:
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return self.outputs


def capture(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], pool: tuple | None = None,
            generator: torch.Generator | None = None) -> Captured:
    """Capture `fn(*static_inputs)` (static copies of `inputs`) on a side stream, into memory `pool`
    (None: a new one; the graph's `graph.pool()` to share it). Nothing runs until `replay`.

    `generator` (a CUDA generator other than the default one, which capture registers itself) is
    registered with the graph: a replay draws from its current state, as the eager call would."""
    static = [t.clone() for t in inputs]
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    device = static[0].device
    stream = torch.cuda.Stream(device=device)  # capture needs a stream other than the default one
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            outputs = fn(*static)
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return Captured(graph, static, outputs)
