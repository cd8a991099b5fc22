"""Synthetic videos with exact ground truth, generated from a seed (no files).

Each video is a stack of layers over an infinite textured background: textured shapes that
translate (smooth sinusoidal paths), rotate and scale. Every layer is a similarity transform of a
texture defined analytically in the layer's own coordinates, and frames are rendered by inverse
mapping each pixel centre into every layer, so the ground truth is exact by construction:

- flow_fwd / flow_bwd: the motion of the topmost surface at each pixel, from the known transforms.
- occ_fwd / occ_bwd: 1 where that surface is not the topmost one at the flowed position in the
  other frame (hidden by a nearer layer or outside the frame), and in the band at object edges
  where bilinear sampling at the flowed position would mix in another surface (one of its four
  neighbouring pixels shows another layer, or it lies beyond the outermost pixel centres). So a
  warp error over the non-occluded pixels compares each surface only with itself: the identity
  edit scores ~0 (below 1e-4 on the 0-1 scale).
- correspondence: the surface point's pixel coordinates in frame 0; NaN where not visible there.
- depth: a constant per layer, larger = nearer (background 0.1, objects up to 1.0).
- mask: the subject, which is object 0 (always the nearest object; it occludes the others).

Scene units: positions are in units of min(H, W) around the frame centre, so a video rendered at
another size shows the same scene, and frame t is the same whatever the number of frames.
Textures are sums of low-frequency sinusoids, so bilinear warping of the source video under the
ground-truth flow reproduces it up to tiny interpolation errors outside the occlusion masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from vedit.data.base import Dataset, VideoItem
from vedit.registry import DATASETS
from vedit.video import Video

SHAPES = ("square", "disc", "triangle", "diamond")
COLOURS = {"red": (0.85, 0.15, 0.12), "blue": (0.15, 0.3, 0.85), "green": (0.2, 0.7, 0.25),
           "yellow": (0.9, 0.8, 0.15)}
BACKGROUND_DEPTH = 0.1


@dataclass
class Layer:
    """A textured shape moving with a similarity transform: p = c(t) + s(t) R(theta(t)) u."""

    shape: str  # one of SHAPES, or "background" (covers the plane)
    colour: tuple[float, float, float]
    size: float  # half-extent in scene units
    centre: np.ndarray  # (2,) at t = 0
    amplitude: np.ndarray  # (2,) of the sinusoidal path
    omega: float  # path angular frequency, radians per frame
    phase: np.ndarray  # (2,)
    velocity: np.ndarray  # (2,) constant drift per frame (the background pan)
    angle0: float
    spin: float  # radians per frame
    scale_amp: float  # relative scale oscillation
    scale_omega: float
    tex_freq: np.ndarray  # (K, 2) spatial angular frequencies in local units
    tex_phase: np.ndarray  # (K,)
    tex_amp: np.ndarray  # (K, 3)
    depth: float
    colour_name: str = ""

    def pose(self, t: int) -> tuple[np.ndarray, float, float]:
        c = self.centre + self.amplitude * np.sin(self.omega * t + self.phase) + self.velocity * t
        angle = self.angle0 + self.spin * t
        scale = 1.0 + self.scale_amp * math.sin(self.scale_omega * t)
        return c, angle, scale

    def to_local(self, t: int, p: torch.Tensor) -> torch.Tensor:
        """Scene points (..., 2) -> layer coordinates at frame t."""
        c, angle, scale = self.pose(t)
        d = p - torch.as_tensor(c, dtype=p.dtype)
        cos, sin = math.cos(angle), math.sin(angle)
        return torch.stack([cos * d[..., 0] + sin * d[..., 1], -sin * d[..., 0] + cos * d[..., 1]], -1) / scale

    def to_scene(self, t: int, u: torch.Tensor) -> torch.Tensor:
        c, angle, scale = self.pose(t)
        cos, sin = math.cos(angle), math.sin(angle)
        rotated = torch.stack([cos * u[..., 0] - sin * u[..., 1], sin * u[..., 0] + cos * u[..., 1]], -1)
        return rotated * scale + torch.as_tensor(c, dtype=u.dtype)

    def inside(self, u: torch.Tensor) -> torch.Tensor:
        x, y, r = u[..., 0], u[..., 1], self.size
        if self.shape == "background":
            return torch.ones_like(x, dtype=torch.bool)
        if self.shape == "square":
            return (x.abs() <= r) & (y.abs() <= r)
        if self.shape == "disc":
            return x * x + y * y <= r * r
        if self.shape == "diamond":
            return x.abs() + y.abs() <= r
        # triangle pointing up, inscribed in the circle of radius r
        return (y <= r / 2) & (math.sqrt(3) * x - y <= r) & (-math.sqrt(3) * x - y <= r)

    def texture(self, u: torch.Tensor) -> torch.Tensor:
        """(..., 2) local points -> (..., 3) colours."""
        freq = torch.as_tensor(self.tex_freq, dtype=u.dtype)
        waves = torch.sin(u @ freq.T + torch.as_tensor(self.tex_phase, dtype=u.dtype))  # (..., K)
        return torch.as_tensor(self.colour, dtype=u.dtype) + waves @ torch.as_tensor(self.tex_amp, dtype=u.dtype)


def _random_texture(rng: np.random.Generator, k: int, max_freq: float, amp: float) -> tuple:
    directions = rng.uniform(0, 2 * math.pi, k)
    radii = rng.uniform(0.3, 1.0, k) * max_freq
    freq = np.stack([np.cos(directions), np.sin(directions)], 1) * radii[:, None]
    return freq, rng.uniform(0, 2 * math.pi, k), rng.uniform(-amp, amp, (k, 3)) / math.sqrt(k)


def make_layers(rng: np.random.Generator, num_objects: int, static: bool) -> list[Layer]:
    """Background first, then objects from farthest to nearest (object 0, the subject, last)."""
    motion = 0.0 if static else 1.0
    bg_colour = tuple(rng.uniform(0.35, 0.6, 3))
    freq, phase, amp = _random_texture(rng, 8, max_freq=2 * math.pi / 0.4, amp=0.35)
    layers = [Layer("background", bg_colour, 0.0, np.zeros(2), np.zeros(2), 0.0, np.zeros(2),
                    motion * rng.uniform(-0.006, 0.006, 2), 0.0, 0.0, 0.0, 0.0, freq, phase, amp,
                    BACKGROUND_DEPTH)]
    names = list(COLOURS)
    for i in reversed(range(num_objects)):
        freq, phase, amp = _random_texture(rng, 4, max_freq=2 * math.pi / 0.3, amp=0.2)
        layers.append(Layer(
            shape=SHAPES[i % len(SHAPES)], colour=COLOURS[names[i % len(names)]],
            size=rng.uniform(0.15, 0.22), centre=rng.uniform(-0.15, 0.15, 2),
            amplitude=motion * rng.uniform(0.08, 0.2, 2), omega=rng.uniform(0.15, 0.3),
            phase=rng.uniform(0, 2 * math.pi, 2), velocity=np.zeros(2), angle0=rng.uniform(0, 2 * math.pi),
            spin=motion * rng.uniform(-0.08, 0.08), scale_amp=motion * rng.uniform(0.05, 0.15),
            scale_omega=rng.uniform(0.2, 0.4), tex_freq=freq, tex_phase=phase, tex_amp=amp,
            depth=1.0 - 0.25 * i, colour_name=names[i % len(names)],
        ))
    return layers


class Scene:
    """Renders a list of layers and derives the exact ground truth at a given pixel size."""

    def __init__(self, layers: list[Layer], size: tuple[int, int]) -> None:
        self.layers, (self.h, self.w) = layers, size
        self.unit = float(min(self.h, self.w))
        self.origin = torch.tensor([(self.w - 1) / 2, (self.h - 1) / 2], dtype=torch.float64)
        ys, xs = torch.meshgrid(torch.arange(self.h, dtype=torch.float64),
                                torch.arange(self.w, dtype=torch.float64), indexing="ij")
        self.pixels = torch.stack([xs, ys], -1)  # (H, W, 2)

    def to_scene(self, p: torch.Tensor) -> torch.Tensor:
        return (p - self.origin) / self.unit

    def to_pixels(self, q: torch.Tensor) -> torch.Tensor:
        return q * self.unit + self.origin

    def top_layer(self, t: int, p: torch.Tensor) -> torch.Tensor:
        """Index of the topmost layer at pixel positions p (..., 2) in frame t; -1 outside the frame."""
        q = self.to_scene(p)
        top = torch.zeros(p.shape[:-1], dtype=torch.long)
        for index, layer in enumerate(self.layers[1:], start=1):
            top[layer.inside(layer.to_local(t, q))] = index
        x, y = p[..., 0], p[..., 1]
        top[(x < -0.5) | (x > self.w - 0.5) | (y < -0.5) | (y > self.h - 0.5)] = -1
        return top

    def render(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) colours in [0, 1] and (H, W) topmost layer index at frame t."""
        q = self.to_scene(self.pixels)
        top = self.top_layer(t, self.pixels)
        image = torch.zeros(self.h, self.w, 3, dtype=torch.float64)
        for index, layer in enumerate(self.layers):
            sel = top == index
            image[sel] = layer.texture(layer.to_local(t, q[sel]))
        return image.clamp(0, 1).permute(2, 0, 1), top

    def map_points(self, top: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """Pixel positions in frame t_to of each pixel's topmost surface (layer map `top`) at t_from."""
        q = self.to_scene(self.pixels)
        out = torch.empty_like(q)
        for index, layer in enumerate(self.layers):
            sel = top == index
            out[sel] = layer.to_scene(t_to, layer.to_local(t_from, q[sel]))
        return self.to_pixels(out)

    def visible(self, top: torch.Tensor, target: torch.Tensor, t_to: int, top_to: torch.Tensor) -> torch.Tensor:
        """Whether the surface `top` carried to pixel positions `target` is the topmost one in frame t_to
        there and bilinear sampling of frame t_to (layer map `top_to`) at `target` sees only that surface."""
        x, y, eps = target[..., 0], target[..., 1], 1e-6  # neighbours with weight < eps do not count
        ok = (self.top_layer(t_to, target) == top) & (x >= -eps) & (x <= self.w - 1 + eps) & (y >= -eps) & \
            (y <= self.h - 1 + eps)
        for ys in ((y + eps).floor(), (y - eps).ceil()):
            for xs in ((x + eps).floor(), (x - eps).ceil()):
                ok &= top_to[ys.clamp(0, self.h - 1).long(), xs.clamp(0, self.w - 1).long()] == top
        return ok


def render_video(layers: list[Layer], num_frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Frames (T, 3, H, W) float32 and the side data (conventions of `vedit.task`)."""
    scene = Scene(layers, size)
    frames, tops = zip(*(scene.render(t) for t in range(num_frames)))
    grid = scene.pixels
    flow_fwd, flow_bwd, occ_fwd, occ_bwd, corr = [], [], [], [], []
    for t in range(num_frames - 1):
        fwd = scene.map_points(tops[t], t, t + 1)
        bwd = scene.map_points(tops[t + 1], t + 1, t)
        flow_fwd.append(fwd - grid)
        flow_bwd.append(bwd - grid)
        occ_fwd.append(~scene.visible(tops[t], fwd, t + 1, tops[t + 1]))
        occ_bwd.append(~scene.visible(tops[t + 1], bwd, t, tops[t]))
    for t in range(num_frames):
        first = scene.map_points(tops[t], t, 0)
        first[scene.top_layer(0, first) != tops[t]] = float("nan")
        corr.append(first)
    depths = torch.tensor([layer.depth for layer in layers], dtype=torch.float64)
    subject = len(layers) - 1

    def stack(items: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
        x = torch.stack(items).float()
        return x.permute(0, 3, 1, 2) if channels_last else x[:, None]

    side = {"depth": stack([depths[top] for top in tops], False),
            "mask": stack([(top == subject) for top in tops], False),
            "correspondence": stack(corr, True)}
    if num_frames > 1:
        side.update(flow_fwd=stack(flow_fwd, True), flow_bwd=stack(flow_bwd, True),
                    occ_fwd=stack(occ_fwd, False), occ_bwd=stack(occ_bwd, False))
    return torch.stack(frames).float(), side


def describe_objects(layers: list[Layer]) -> str:
    objects = [f"a {layer.colour_name} {layer.shape}" for layer in reversed(layers[1:])]
    return objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]


def prompts_for(layers: list[Layer], static: bool) -> tuple[str, list[str]]:
    objects = describe_objects(layers)
    verb = "lying" if static else "moving"
    subject = layers[-1]
    return (f"{objects} {verb} over a textured background", [
        f"{objects} {verb} over a sandy beach",
        f"a watercolor painting of {objects} {verb} over a textured background",
        f"{describe_objects(layers[:-1] + [replace(subject, colour_name='golden')])} {verb} over a marble floor",
    ])


@DATASETS.register("synthetic")
class SyntheticDataset(Dataset):
    """`num_videos` generated videos with exact side data; see the module docstring.

    `static=True` keeps every layer still (zero flow, no occlusion), for tests.
    """

    name = "synthetic"

    def __init__(self, num_videos: int = 2, num_frames: int = 8, size: tuple[int, int] | list[int] = (64, 64),
                 seed: int = 0, num_objects: int = 2, static: bool = False, fps: float = 8.0) -> None:
        if num_videos < 1 or num_frames < 1:
            raise ValueError(f"synthetic dataset: num_videos={num_videos} and num_frames={num_frames} must be >= 1")
        if not 1 <= num_objects <= len(SHAPES):
            raise ValueError(f"synthetic dataset: num_objects={num_objects} must be in 1..{len(SHAPES)}")
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"synthetic dataset: size={size} must be [height, width], each at least 8")
        self.num_videos, self.num_frames, self.size = num_videos, num_frames, (int(size[0]), int(size[1]))
        self.seed, self.num_objects, self.static, self.fps = seed, num_objects, static, fps

    def video_ids(self) -> list[str]:
        return [f"synthetic_{i:03d}" for i in range(self.num_videos)]

    def layers(self, video_id: str) -> list[Layer]:
        if video_id not in self.video_ids():
            raise KeyError(f"synthetic dataset has no video {video_id!r}; ids: {', '.join(self.video_ids())}")
        index = int(video_id.rsplit("_", 1)[1])
        return make_layers(np.random.default_rng([self.seed, index]), self.num_objects, self.static)

    def load(self, video_id: str) -> VideoItem:
        layers = self.layers(video_id)
        frames, side = render_video(layers, self.num_frames, self.size)
        source, edits = prompts_for(layers, self.static)
        return VideoItem(Video(frames, fps=self.fps, id=video_id), source, edits, side)

    def describe(self) -> dict:
        return {"name": self.name, "num_videos": self.num_videos, "num_frames": self.num_frames,
                "size": list(self.size), "seed": self.seed, "num_objects": self.num_objects,
                "static": self.static}


def stylised_clip(seed: int, frames: int = 11, size: int = 64) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """A synthetic clip, its exact side data and a ground-truth stylisation for propagation experiments
    that is not a per-pixel colour map: half a colour transform of the frame, half a texture painted on
    every surface of the scene (the layers re-rendered with other textures), which moves with the scene's
    exact correspondence. Returns (frames, side, stylised frames)."""
    dataset = SyntheticDataset(num_videos=1, num_frames=frames, size=(size, size), seed=seed)
    vid = dataset.video_ids()[0]
    item = dataset.load(vid)
    rng = np.random.default_rng([seed, 99])
    painted = []
    for layer in dataset.layers(vid):
        freq, phase, amp = _random_texture(rng, 6, max_freq=2 * math.pi / 0.12, amp=0.6)
        painted.append(replace(layer, tex_freq=freq, tex_phase=phase, tex_amp=amp,
                               colour=tuple(rng.uniform(0.3, 0.7, 3))))
    texture = render_video(painted, frames, (size, size))[0]
    x = item.video.frames
    colour = torch.stack([x[:, 2], 1 - x[:, 0], x[:, 1].sqrt()], 1)
    return x, item.side, (0.5 * colour + 0.5 * texture).clamp(0, 1)
