"""Swappable self-attention processors for cross-frame feature injection.

Editors decide *where* keys/values come from (anchor frame, previous frame, key frames); this
module supplies the mechanics: picking layers by name, a diffusers attention processor whose K/V
input is provided by a callback, and a context manager that installs processors and restores the
originals afterwards (diffusers style: the UNet is unchanged after the call).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

# (layer name, the layer's normalised input (B, N, C)) -> K/V input (B, M, C)
KVSource = Callable[[str, torch.Tensor], torch.Tensor]


def self_attention_layers(unet: torch.nn.Module, layers: str | Sequence[str] = "decoder") -> list[str]:
    """Names of the spatial self-attention modules (`...attn1`) of a UNet.

    layers: "decoder" (up_blocks, the Pix2Video/Rerender default), "all", or an explicit list of
    names. Temporal attention of motion modules is never included.
    """
    spatial = [n for n, _ in unet.named_modules()
               if n.endswith("attn1") and "motion_modules" not in n and "temporal" not in n]
    if isinstance(layers, str):
        if layers == "decoder":
            return [n for n in spatial if n.startswith("up_blocks.")]
        if layers == "all":
            return spatial
        raise ValueError(f"layers={layers!r}: use 'decoder', 'all' or a list of names such as {spatial[:2]}")
    unknown = [n for n in layers if n not in spatial]
    if unknown:
        raise ValueError(f"layers: {unknown} are not spatial self-attention layers; known: {spatial}")
    return list(layers)


class InjectedKVAttnProcessor:
    """Attention with the query from the layer's input and keys/values from `kv_source(name, x)`.

    With `kv_source` returning its input unchanged this is exactly diffusers' self-attention.
    """

    def __init__(self, name: str, kv_source: KVSource) -> None:
        self.name = name
        self.kv_source = kv_source

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError(f"{self.name}: cross-frame injection expects a transformer block's attn1")
        kv_input = self.kv_source(self.name, hidden_states)
        return attend(attn, hidden_states, kv_input, kv_input)


def attend(attn, hidden_states: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor) -> torch.Tensor:
    """diffusers' Attention math (SDPA) with separate key and value inputs; the query from hidden_states."""
    b = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(key_input), attn.to_v(value_input)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


@contextmanager
def attention_processors(unet: torch.nn.Module, processors: dict[str, object]) -> Iterator[None]:
    """Install `{layer name: processor}` on the UNet for the duration of the block, then restore."""
    saved = unet.attn_processors
    if processors:
        new = dict(saved)
        for name, proc in processors.items():
            key = f"{name}.processor"
            if key not in new:
                raise KeyError(f"{name!r} is not an attention layer of this UNet")
            new[key] = proc
        unet.set_attn_processor(new)
    try:
        yield
    finally:
        if processors:
            unet.set_attn_processor(saved)


SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}


@contextmanager
def sdpa_kernels(names: Sequence[str] | None) -> Iterator[None]:
    """Let `F.scaled_dot_product_attention` use only these kernels (PyTorch picks among them as usual);
    None = all of them. Without "cudnn", no cuDNN attention graph is built for each new input shape
    (~0.4 s each in a fresh process on an H200)."""
    if not names:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, SDPA_KERNELS[n]) for n in names]):
        yield
