"""Optional torch.compile of the backbone's fixed-function blocks (backbone.compile=true).

Only resnets, feed-forwards and cross-attention are compiled, in place: the spatial self-attention
layers keep their swappable processors (editors install Python K/V callbacks there, which would make
a whole-UNet graph break or recompile for every call).

Compilation is lazy (at a block's first call, so inside the run's warm-up, whose seconds are recorded
apart from the cells). `use_compile_cache` points Inductor's and AOTAutograd's on-disk caches at a
persistent folder, so a later process on the same machine loads the compiled kernels instead of
building them again; the caches key their entries by graph, shapes, torch version and device
themselves. What is stored there is compiled code that runs: it is a local cache of this machine's,
never something to copy from a shared store.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def use_compile_cache(folder: str | Path) -> Path:
    """Keep torch.compile's FX-graph, AOTAutograd and Triton caches under `folder` (created); returns it."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


def compile_blocks(model: torch.nn.Module, dynamic: bool | None = None) -> int:
    """Compile every ResnetBlock2D, FeedForward and `attn2` of a UNet/ControlNet; returns how many."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, (ResnetBlock2D, FeedForward)) or name.endswith("attn2"):
            module.compile(dynamic=dynamic)
            count += 1
    return count
