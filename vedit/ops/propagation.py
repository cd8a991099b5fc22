"""Propagate stylised key frames to the whole video (Rerender-A-Video Sec. 4.2, EbSynth-style).

Each key frame is carried forward to the frames up to the next key frame and backward to the frames
down to the previous one by guided patch synthesis (`vedit.ops.patchmatch`). Guides per target frame,
as the released code (video_blend.py, blender/guide.py) builds them:

    colour     the input frame                                     weight 6
    edges      per colour channel, the 4-neighbour Laplacian       weight 0.5
               (4 p - neighbours) clipped to [0, 1] (`edge_guide`)
    temporal   the previous propagated frame, warped by the flow   weight 0.5
    positional a coordinate ramp carried from the key frame        weight 2
               along the flow chain (`pos_guide`: the released
               image is (row, column, 0), so EbSynth gives each
               coordinate a third of the weight)

and on the source side the key frame's colour, edges, its stylised output and the un-warped ramp.
The temporal and positional guides are warped nearest-neighbour and their occluded pixels filled by
OpenCV's TELEA inpainting (radius 30) (`guide_warp`); the temporal guide counts everywhere
(`temporal_mask` false). The flow chain also seeds the NNF. The vote is EbSynth's plain mean of the
overlapping patches. Frames between two key frames get both results, blended as the released code
does (`vedit.ops.blend`: temporal selection carried along the flow, the Lab mean/std blend, then
screened Poisson blending toward the selected result's gradients).

Opt-in variants of ours (off by default; measured effect in conf/method/rerender.yaml):
`edge_guide="luminance"` (0.5 + Laplacian of the luminance, one channel), `guide_warp="bilinear"`
(bilinear warps, no inpainting), `temporal_mask` (temporal guide off where occluded), `pos_guide="xy"`
(the positional weight split over the 2 coordinates),
`selective_vote` (each pixel takes the one overlapping-patch proposal whose key-frame colour best
matches its own, `vedit.ops.patchmatch.selective_vote`) and `blend_temperature` (temporal blend
weights tilted per pixel toward the lower error, `vedit.ops.blend.error_aware_weight`).

Speed: a frame's temporal guide needs the previous frame's result, so chains are sequential; but all
chains (forward and backward from every key frame) advance one frame per step in one batch, so a
video with key interval K needs about K - 1 batched steps, whatever its length. Inpainting runs on
the CPU (OpenCV), one thread per image channel: the temporal guide in 8 bits as the released code, the
positional guide in float (the released 8-bit ramp quantises coordinates to 1/255 of the frame).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vedit.errors import EditorError
from vedit.ops.blend import BLEND_MODES, blend_pair, error_aware_weight, select_by_error, select_temporal, temporal_weight
from vedit.ops.patchmatch import GraphedSearch, Guide, RowWindow, guided_synthesis
from vedit.ops.warp import backward_warp, pixel_grid

DEFAULT_WEIGHTS = {"color": 6.0, "edge": 0.5, "temporal": 0.5, "pos": 2.0}
SELECTIONS = ("temporal", "error")
EDGE_GUIDES = ("released", "luminance")
GUIDE_WARPS = ("nearest_inpaint", "bilinear")
POS_GUIDES = ("released", "xy")
INPAINT_RADIUS = 30  # the released code's cv2.inpaint radius


def _laplacian(x: torch.Tensor, padding: str) -> torch.Tensor:
    """Per channel: the 4-neighbour Laplacian (neighbours - 4 p)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=padding), kernel.view(1, 1, 3, 3).expand(c, 1, 3, 3), groups=c)


def laplacian_edges(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W): 0.5 + Laplacian of the luminance, clamped to [0, 1] (ours)."""
    gray = (frames * torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)).sum(1, True)
    return (0.5 + _laplacian(gray, "replicate")).clamp(0, 1)


def released_edges(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, H, W): the released code's edge guide, per colour channel 4 p minus
    the 4 neighbours (cv2.filter2D on the 8-bit frame: reflect-101 borders, negative values saturated to 0)."""
    return (-_laplacian(frames, "reflect")).clamp(0, 1)


def inpaint_telea(images: torch.Tensor, holes: torch.Tensor, radius: int = INPAINT_RADIUS,
                  eight_bit: bool = False) -> torch.Tensor:
    """Fill `holes` (B, 1, H, W), 1 = fill, of images (B, C, H, W) with OpenCV's TELEA inpainting on the CPU,
    per channel in float32, or (`eight_bit`, values in [0, 1]) in 8 bits as the released code inpaints its
    guide images, the hole pixels then taken from it (OpenCV fills the channels of an 8-bit colour image
    independently: per channel is the same result, in parallel). Items without holes are returned as they are."""
    masks = (holes[:, 0] > 0.5).to("cpu", torch.uint8).numpy()
    todo = [b for b in range(images.shape[0]) if masks[b].any()]
    if not todo:
        return images
    host = images[todo].to("cpu", torch.float32).numpy()
    if eight_bit:
        host = (host.clip(0, 1) * 255).round().astype(np.uint8)

    def fill(job: tuple[int, int]) -> None:
        k, c = job
        host[k, c] = cv2.inpaint(np.ascontiguousarray(host[k, c]), masks[todo[k]], radius, cv2.INPAINT_TELEA)

    jobs = [(k, c) for k in range(len(todo)) for c in range(host.shape[1])]
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        list(pool.map(fill, jobs))  # OpenCV releases the GIL: the channels fill in parallel
    filled = torch.from_numpy(host / 255.0 if eight_bit else host).to(images.device, images.dtype)
    out = images.clone()
    out[todo] = torch.where(holes[todo] > 0.5, filled, images[todo])
    return out


@dataclass
class _Chain:
    """Propagation of key frame `key` (position `slot` in key_indices) along `targets`, one per step."""

    slot: int
    key: int
    direction: int  # +1 forward in time, -1 backward
    targets: list[int]


def key_chains(key_indices: list[int], num_frames: int) -> list[_Chain]:
    """The chains of a propagation: forward and backward from each key frame, up to its neighbours."""
    chains = []
    for slot, key in enumerate(key_indices):
        nxt = key_indices[slot + 1] if slot + 1 < len(key_indices) else num_frames
        prv = key_indices[slot - 1] if slot > 0 else -1
        if nxt - key > 1:
            chains.append(_Chain(slot, key, 1, list(range(key + 1, nxt))))
        if key - prv > 1:
            chains.append(_Chain(slot, key, -1, list(range(key - 1, prv, -1))))
    return chains


def _check(source: torch.Tensor, key_indices: list[int], key_outputs: torch.Tensor,
           flows: dict[str, torch.Tensor | None], patch_size: int, blend: str, selection: str,
           edge_guide: str, guide_warp: str, pos_guide: str) -> None:
    if source.ndim != 4 or source.shape[1] != 3:
        raise EditorError(f"propagate_keyframes: source must be (T, 3, H, W), got {tuple(source.shape)}")
    t, _, h, w = source.shape
    if not key_indices or sorted(set(key_indices)) != list(key_indices) or key_indices[0] < 0 or key_indices[-1] >= t:
        raise EditorError(f"propagate_keyframes: key_indices={key_indices} must be a non-empty, strictly increasing "
                          f"list of frame indices in [0, {t - 1}]")
    if key_outputs.shape != (len(key_indices), 3, h, w):
        raise EditorError(f"propagate_keyframes: key_outputs has shape {tuple(key_outputs.shape)}; expected "
                          f"{(len(key_indices), 3, h, w)} (one stylised frame per key index, at the source size)")
    for name, value in flows.items():
        channels = 2 if name.startswith("flow") else 1
        if value is None or tuple(value.shape) != (t - 1, channels, h, w):
            got = None if value is None else tuple(value.shape)
            raise EditorError(f"propagate_keyframes: {name} is {got}; expected {(t - 1, channels, h, w)} "
                              "(estimate it with vedit.estimators.Estimators.flow)")
    if patch_size < 1 or patch_size % 2 == 0:
        raise EditorError(f"propagate_keyframes: patch_size={patch_size} must be a positive odd number")
    if blend not in BLEND_MODES:
        raise EditorError(f"propagate_keyframes: blend={blend!r} is not one of {BLEND_MODES}")
    if selection not in SELECTIONS:
        raise EditorError(f"propagate_keyframes: selection={selection!r} is not one of {SELECTIONS}")
    if edge_guide not in EDGE_GUIDES:
        raise EditorError(f"propagate_keyframes: edge_guide={edge_guide!r} is not one of {EDGE_GUIDES}")
    if guide_warp not in GUIDE_WARPS:
        raise EditorError(f"propagate_keyframes: guide_warp={guide_warp!r} is not one of {GUIDE_WARPS}")
    if pos_guide not in POS_GUIDES:
        raise EditorError(f"propagate_keyframes: pos_guide={pos_guide!r} is not one of {POS_GUIDES}")


def propagate_keyframes(source: torch.Tensor, key_indices: list[int], key_outputs: torch.Tensor,
                        flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, occ_fwd: torch.Tensor, occ_bwd: torch.Tensor,
                        patch_size: int = 5, pyramid_levels: int | None = None, coarsest_side: int | None = None,
                        iterations: int = 6, weights: dict[str, float] | None = None, uniformity: float = 3500.0,
                        feature_dims: int | None = 32, style_weight: float = 0.0, search_vote_iters: int = 1,
                        weighted_vote: bool = False, selective_vote: bool = False, selection: str = "temporal",
                        blend: str = "meanstd", poisson: bool = True, blend_temperature: float | None = None,
                        edge_guide: str = "released", guide_warp: str = "nearest_inpaint", temporal_mask: bool = False,
                        pos_guide: str = "released",
                        chain_batch: int | None = None, cuda_graphs: bool = False,
                        device: torch.device | str | None = None, seed: int = 0) -> torch.Tensor:
    """Fill the non-key frames of a video from its stylised key frames -> (T, 3, H, W) in [0, 1].

    source (T, 3, H, W) input frames in [0, 1]; key_outputs (K, 3, H, W) the stylised frames at
    `key_indices`, returned unchanged in their places. Flows and occlusions follow `vedit.task`.
    Synthesis (`vedit.ops.patchmatch.guided_synthesis`): `patch_size`; `pyramid_levels` (None: down to
    a short side of `coarsest_side`, None = 4 patch widths); `iterations` of PatchMatch per search;
    guide `weights`; `uniformity`; `feature_dims` the PCA size of patch features (None: full
    patches); `style_weight` > 0 adds EbSynth's style term with `search_vote_iters` search/vote
    alternations per level; `weighted_vote`, `selective_vote` other votes than the plain mean.
    Blending (`vedit.ops.blend`): `selection` "temporal" (released code) or "error" (lower error);
    `blend` one of BLEND_MODES; `poisson`; `blend_temperature` (None: purely temporal weights).
    Guides: `edge_guide` one of EDGE_GUIDES; `guide_warp` "nearest_inpaint" (released code) or
    "bilinear"; `temporal_mask` turns the temporal guide off where the flow is occluded; `pos_guide`
    "released" (weight split over 3 channels, one of them constant) or "xy" (over the 2 coordinates).
    `chain_batch`: at most this many chains per synthesis call (None: all), which bounds the working
    memory of a long video's many chains; the frames are the same (random draws are made as for all
    chains at once). `cuda_graphs`: on CUDA, replay the PatchMatch iterations from graphs captured at
    their first call in this propagation (`vedit.ops.patchmatch.GraphedSearch`; the same frames, fewer
    launches). Runs on `device` (default: the source's), float16 patch features on CUDA.
    """
    _check(source, key_indices, key_outputs,
           {"flow_fwd": flow_fwd, "flow_bwd": flow_bwd, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}, patch_size, blend,
           selection, edge_guide, guide_warp, pos_guide)
    if chain_batch is not None and chain_batch < 1:
        raise EditorError(f"propagate_keyframes: chain_batch={chain_batch} must be >= 1 (or None: all chains at once)")
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    device = torch.device(device) if device is not None else source.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(seed)
    search = GraphedSearch(generator) if cuda_graphs and device.type == "cuda" else None
    t, _, h, w = source.shape
    frames = source.to(device, torch.float32)
    keys = key_outputs.to(device, torch.float32)
    edges = released_edges(frames) if edge_guide == "released" else laplacian_edges(frames)
    # the released guide image (row, column, 0) has 3 channels for EbSynth's split of the weight: 2/3 of it on (x, y)
    pos_weight = weights["pos"] * (2 / 3 if pos_guide == "released" else 1.0)
    ramp_px = pixel_grid(h, w, device=device)
    norm = torch.tensor([max(w - 1, 1), max(h - 1, 1)], device=device, dtype=torch.float32).view(1, 2, 1, 1)
    flow_fwd, flow_bwd = flow_fwd.to(device, torch.float32), flow_bwd.to(device, torch.float32)
    occ_fwd, occ_bwd = occ_fwd.to(device, torch.float32), occ_bwd.to(device, torch.float32)

    chains = key_chains(list(key_indices), t)
    results: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (frame, direction) -> (image, error)
    coords = {id(c): ramp_px[0] for c in chains}
    previous = {id(c): keys[c.slot] for c in chains}
    for step in range(max((len(c.targets) for c in chains), default=0)):
        active = [c for c in chains if step < len(c.targets)]
        state = generator.get_state()
        size = chain_batch or len(active)
        for start in range(0, len(active), size):
            generator.set_state(state)
            group = active[start:start + size]
            target_idx = [c.targets[step] for c in group]
            # Flow that samples the previous frame of the chain at this frame's pixels, and its occlusion.
            flow = torch.stack([flow_bwd[i - 1] if c.direction > 0 else flow_fwd[i] for c, i in zip(group, target_idx)])
            occ = torch.stack([occ_bwd[i - 1] if c.direction > 0 else occ_fwd[i] for c, i in zip(group, target_idx)])
            pos, temporal = _warp_guides(torch.stack([coords[id(c)] for c in group]),
                                         torch.stack([previous[id(c)] for c in group]), flow, occ, guide_warp)
            slots = [c.slot for c in group]
            key_idx, styles = [key_indices[s] for s in slots], _rows(keys, slots)
            guides = [
                Guide(_rows(frames, key_idx), _rows(frames, target_idx), weights["color"]),
                Guide(_rows(edges, key_idx), _rows(edges, target_idx), weights["edge"]),
                Guide(ramp_px.expand(len(group), -1, -1, -1) / norm, pos / norm, pos_weight),
                Guide(styles, temporal, weights["temporal"], masked=temporal_mask),
            ]
            init = torch.stack([pos[:, 0].round().clamp(0, w - 1), pos[:, 1].round().clamp(0, h - 1)], 1).long()
            out, err, _ = guided_synthesis(
                [g for g in guides if g.weight], styles, patch_size, pyramid_levels, iterations, uniformity,
                init=init, target_mask=1 - occ, dtype=dtype, feature_dims=feature_dims, generator=generator,
                style_weight=style_weight, search_vote_iters=search_vote_iters, weighted_vote=weighted_vote,
                vote_guide=guides[0] if selective_vote else None, coarsest_side=coarsest_side,
                window=RowWindow(start, start + len(group), len(active)), search=search)
            for k, (c, i) in enumerate(zip(group, target_idx)):
                results[(i, c.direction)] = (out[k], err[k])
                coords[id(c)], previous[id(c)] = pos[k], out[k]

    output = frames.clone()
    output[list(key_indices)] = keys
    single = [i for i in range(t) if i not in key_indices and ((i, 1) in results) != ((i, -1) in results)]
    for i in single:
        output[i] = results.get((i, 1), results.get((i, -1)))[0]
    for prev, nxt in zip(key_indices, key_indices[1:]):
        between = list(range(prev + 1, nxt))
        if between:
            output[between] = _blend_between(prev, nxt, results, flow_bwd, selection, blend, poisson,
                                             blend_temperature)
    return output.clamp(0, 1).to(source.device)


def _warp_guides(coords: torch.Tensor, previous: torch.Tensor, flow: torch.Tensor, occ: torch.Tensor,
                 guide_warp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The positional (pixel coordinates) and temporal guides of a step: the previous step's, warped."""
    if guide_warp == "bilinear":
        return backward_warp(coords, flow), backward_warp(previous, flow)
    h, w = flow.shape[-2:]
    pos, temporal = backward_warp(coords, flow, mode="nearest"), backward_warp(previous, flow, mode="nearest")
    with ThreadPoolExecutor(2) as pool:  # both guides' inpainting at once (each on its own threads)
        pos, temporal = pool.submit(inpaint_telea, pos, occ), pool.submit(inpaint_telea, temporal, occ, eight_bit=True)
        pos, temporal = pos.result(), temporal.result()
    return torch.stack([pos[:, 0].clamp(0, w - 1), pos[:, 1].clamp(0, h - 1)], 1), temporal  # 8-bit guides saturate


def _rows(x: torch.Tensor, index: list[int]) -> torch.Tensor:
    """x[index] for a list of ints, without copying the list to the device (which can wait for its stream)."""
    return torch.stack([x[i] for i in index])


def _blend_between(prev: int, nxt: int, results: dict, flow_bwd: torch.Tensor, selection: str, blend: str,
                   poisson: bool, temperature: float | None) -> torch.Tensor:
    """The frames strictly between key frames prev and nxt from their forward and backward results."""
    between = list(range(prev + 1, nxt))
    fwd = torch.stack([results[(i, 1)][0] for i in between])
    bwd = torch.stack([results[(i, -1)][0] for i in between])
    fwd_err = torch.stack([results[(i, 1)][1] for i in between])
    bwd_err = torch.stack([results[(i, -1)][1] for i in between])
    weights = [temporal_weight(i - prev, nxt - prev) for i in between]
    if selection == "temporal":
        choose_bwd = select_temporal(fwd_err, bwd_err, weights, flow_bwd[prev:nxt - 1])
    else:
        choose_bwd = select_by_error(fwd_err, bwd_err)
    fwd_weight = torch.tensor(weights, device=fwd.device, dtype=fwd.dtype)
    if temperature is not None and temperature != float("inf"):
        fwd_weight = error_aware_weight(fwd_weight, fwd_err, bwd_err, temperature)
    return blend_pair(fwd, bwd, fwd_weight, choose_bwd, blend, poisson)
