"""Pix2Video (Ceylan et al., ICCV 2023): text-guided video editing with a depth-conditioned image
diffusion model (SD 2 depth), frame by frame.

1. Per frame: depth -> latent-size map in [-1, 1]; DDIM inversion of the frame with the source
   prompt (guidance 1, depth conditioned) gives its initial noise.
2. Frame 1 (the anchor) is sampled with plain self-attention. Frame i > 1 is sampled with the
   chosen self-attention layers taking keys/values from the anchor's and frame i-1's layer inputs
   at the same step and guidance branch (self-attention feature injection).
3. During the first half of the steps, x_{t-1} of frame i is pulled toward frame i-1's predicted x0
   (guided latent update): L = s * mean((x0_prev - x0)^2), x_{t-1} <- x_{t-1} - dL/dx0.

Frame i at step t needs frame i-1 only at step t: its layer inputs, which a batched UNet call
computes layer by layer for every row at once, and its x0. So `schedule="lockstep"` runs every frame
at the same step in one call (in chunks of `sampling_batch_size` frames, a chunk reading the frame
before it from the previous chunk): `steps` calls of one batch shape. `"wavefront"` runs frame i at
step t beside frame i-1 at step t+1 (N + steps - 1 calls of changing size); `"sequential"` is the
paper's loop. All three do the same arithmetic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer, round_up
from vedit.ops.attention import (SDPA_KERNELS, InjectedKVAttnProcessor, attention_processors, sdpa_kernels,
                                 self_attention_layers)
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.depth import normalize_depth
from vedit.ops.transfer import to_device
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

INJECTIONS = ("anchor+previous", "anchor", "previous", "none")
SCHEDULES = ("lockstep", "wavefront", "sequential")

Item = tuple[int, int]  # (frame, step)


class _FeatureBank:
    """What later (frame, step) items need from earlier ones: self-attention inputs and predicted x0.

    The UNet call in flight processes `items`; its batch is laid out branch-major
    ([uncond rows; cond rows], one row per item), so `x.view(branches, len(items), ...)`.
    Item (f, s) reads the anchor's features at step s and frame f-1's features and x0 at step s,
    from this call when (f-1, s) is in it, else from an earlier call; entries are dropped as soon as
    their last reader has run.
    """

    def __init__(self, injection: str, num_frames: int, branches: int, update_steps: range) -> None:
        self.use_anchor = injection in ("anchor+previous", "anchor")
        self.use_prev = injection in ("anchor+previous", "previous")
        self.last = num_frames - 1
        self.branches = branches
        self.update_steps = update_steps
        self.items: list[Item] = []
        self.anchor: dict[int, dict[str, torch.Tensor]] = {}  # step -> layer -> (branches, N, C)
        self.prev: dict[Item, dict[str, torch.Tensor]] = {}  # (frame, step) -> layer -> (branches, N, C)
        self.x0: dict[Item, torch.Tensor] = {}  # (frame, step) -> (4, h, w)

    def kv_source(self, name: str, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.branches, len(self.items), *x.shape[1:])
        own = rows.unbind(1)
        for (f, s), feats in zip(self.items, own):
            if f == 0 and self.use_anchor:
                self.anchor.setdefault(s, {})[name] = feats.clone()  # a view would pin the whole batch
            if f < self.last and self.use_prev:
                self.prev.setdefault((f, s), {})[name] = feats
        # The anchor attends to itself; [own; own] keys/values give exactly its self-attention and
        # keep every row of the batch the same length.
        parts = []
        if self.use_anchor:
            parts.append([o if f == 0 else self.anchor[s][name] for (f, s), o in zip(self.items, own)])
        if self.use_prev:
            parts.append([o if f == 0 else self.prev[(f - 1, s)][name] for (f, s), o in zip(self.items, own)])
        kv = torch.cat([torch.stack(p, dim=1) for p in parts], dim=2)  # (branches, items, M, C)
        return kv.flatten(0, 1)

    def previous_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Frame f-1's predicted x0 at the same step per item (the item's own where none is used)."""
        this_call = dict(zip(self.items, x0.unbind(0)))
        return torch.stack([own if f == 0 or s not in self.update_steps
                            else this_call[(f - 1, s)] if (f - 1, s) in this_call else self.x0[(f - 1, s)]
                            for (f, s), own in this_call.items()])

    def finish(self, x0: torch.Tensor) -> None:
        """Keep this call's x0 where the next frame will read it; drop what this call consumed."""
        for (f, s), own in zip(self.items, x0.unbind(0)):
            if f < self.last and s in self.update_steps:
                self.x0[(f, s)] = own
            if f > 0:
                self.prev.pop((f - 1, s), None)
                self.x0.pop((f - 1, s), None)
            if f == self.last:
                self.anchor.pop(s, None)


@dataclass
class _Run:
    """Per-edit tensors on the device: latents of all frames, conditioning and per-step tables."""

    x: torch.Tensor  # (T, 4, h, w) current latent of every frame
    depth: torch.Tensor  # (T, 1, h, w) in [-1, 1]
    embeds: torch.Tensor  # (branches, L, D): [uncond, cond] or [cond]
    timesteps: torch.Tensor  # (steps,) long
    alpha_t: torch.Tensor  # (steps,) float64
    alpha_prev: torch.Tensor  # (steps,) float64
    update_coef: torch.Tensor  # (steps,) d(s * mean(.)^2)/dx0 factor; 0 outside the window
    bank: _FeatureBank


@EDITORS.register("pix2video")
class Pix2VideoEditor(Editor):
    """Pix2Video on the SD 2 depth backbone. See the module docstring for the method."""

    name = "pix2video"
    estimators_used = ("depth", "depth_anything_model")
    SPEED_PARAMS = ("schedule", "inversion_batch_size", "vae_batch", "sampling_batch_size", "batch_multiple",
                    "attention_kernels")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "guidance_scale": P.number(), "injection": P.choice(*INJECTIONS),
        "layers": P.layers("decoder", "all"), "latent_update": P.boolean(), "update_step": P.number(0),
        "update_window": P.period(), "schedule": P.choice(*SCHEDULES), "inversion_batch_size": P.integer(1),
        "vae_batch": P.integer(1), "sampling_batch_size": P.integer(1, optional=True),
        "batch_multiple": P.integer(1, optional=True), "attention_kernels": P.subset(*SDPA_KERNELS, optional=True),
    }

    def __init__(self, backbone, estimators=None, steps: int = 50, guidance_scale: float = 7.5,
                 injection: str = "anchor+previous", layers: str | Sequence[str] = "decoder",
                 latent_update: bool = True, update_step: float = 100.0,
                 update_window: Sequence[float] = (0.0, 0.5), schedule: str = "lockstep",
                 inversion_batch_size: int = 64, vae_batch: int = 8, sampling_batch_size: int | None = 50,
                 batch_multiple: int | None = 4,
                 attention_kernels: Sequence[str] | None = None,
                 latent_cache: MutableMapping | None = None) -> None:
        super().__init__(backbone, estimators)
        if injection not in INJECTIONS:
            raise ValueError(f"pix2video: injection={injection!r}; choose one of {INJECTIONS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"pix2video: schedule={schedule!r}; choose one of {SCHEDULES}")
        window = tuple(float(v) for v in update_window)
        if len(window) != 2 or not 0.0 <= window[0] <= window[1] <= 1.0:
            raise ValueError(f"pix2video: update_window={list(update_window)} must be [start, end] "
                             "fractions of the steps with 0 <= start <= end <= 1")
        if steps < 1 or inversion_batch_size < 1 or vae_batch < 1 or any(
                v is not None and v < 1 for v in (sampling_batch_size, batch_multiple)):
            raise ValueError("pix2video: steps, inversion_batch_size, vae_batch, sampling_batch_size and "
                             "batch_multiple must be >= 1")
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.injection = injection
        self.layers = layers if isinstance(layers, str) else [str(n) for n in layers]
        self.latent_update = bool(latent_update)
        self.update_step = float(update_step)
        self.update_window = window
        self.schedule = schedule
        self.inversion_batch_size = int(inversion_batch_size)
        self.vae_batch = int(vae_batch)
        self.sampling_batch_size = sampling_batch_size
        self.batch_multiple = batch_multiple
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.latent_cache = latent_cache
        self.layer_names = self_attention_layers(backbone.unet, self.layers)
        self._latent_dtype = torch.float64 if backbone.dtype == torch.float64 else torch.float32

    # ---- inputs -------------------------------------------------------------------------------

    def check_inputs(self, task: EditTask) -> None:
        super().check_inputs(task)
        in_channels = self.backbone.unet.config.in_channels
        if in_channels != 5:
            raise EditorError(
                f"pix2video needs a depth-conditioned UNet (5 input channels: latent + depth), but backbone "
                f"family {self.backbone.family!r} has {in_channels}; use method.family=sd2-depth"
            )

    def prepare_depth(self, task: EditTask) -> torch.Tensor:
        """Depth per frame -> (T, 1, h, w) at latent size, each frame scaled to [-1, 1] as in depth2img
        (bicubic resize, then 2 (d - min) / (max - min) - 1); a constant depth map becomes 0."""
        video = task.video
        depth = self.estimators.depth(task, model=self.backbone.depth_estimator)
        t, (h, w) = video.num_frames, video.size
        if not isinstance(depth, torch.Tensor) or depth.ndim != 4 or depth.shape[:2] != (t, 1):
            shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
            raise EditorError(f"pix2video: depth for video {video.id!r} must be ({t}, 1, H, W), got {shape}")
        if not torch.isfinite(depth).all():
            raise EditorError(f"pix2video: depth for video {video.id!r} has NaN or infinite values; "
                              "check the depth estimator or the dataset's depth maps")
        scale = self.backbone.vae_scale
        return normalize_depth(depth.to(self.device, self._latent_dtype), (h // scale, w // scale))

    # ---- the method ---------------------------------------------------------------------------

    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        timer = PhaseTimer(self.device)
        with timer.phase("preprocessing"):
            depth = self.prepare_depth(task)
            uncond, source, target = self.backbone.encode_prompt(
                ["", task.source_prompt, task.target_prompt]).chunk(3)
        with timer.phase("inversion"):
            noise, cached = self.initial_noise(task, depth, source)
        with timer.phase("sampling"):
            latents = self.sample(noise, depth, uncond, target)
            frames = torch.cat([self.backbone.decode_latents(chunk).cpu()
                                for chunk in latents.split(self.vae_batch)])
        return timer.result(frames, schedule=self.schedule, unet_calls=self.num_unet_calls(task.video.num_frames),
                            inversion_cached=cached)

    def initial_noise(self, task: EditTask, depth: torch.Tensor, source_embeds: torch.Tensor
                      ) -> tuple[torch.Tensor, bool]:
        """x_T per frame by DDIM inversion, from `latent_cache` when it holds this video's."""
        key = self.inversion_key(task, depth)
        if self.latent_cache is not None and key in self.latent_cache:
            return self.latent_cache[key].to(self.device, self._latent_dtype), True
        latents = torch.cat([self.backbone.encode_images(chunk)
                             for chunk in task.video.chunks(self.vae_batch)])
        noise = self.invert(latents.to(self._latent_dtype), depth, source_embeds)
        if self.latent_cache is not None:
            self.latent_cache[key] = noise.cpu()
        return noise, False

    def inversion_key(self, task: EditTask, depth: torch.Tensor) -> tuple:
        """(video hash, backbone ids, source prompt, steps) plus the depth and dtype the inversion used."""
        depth_hash = hashlib.sha256(depth.float().cpu().numpy().tobytes()).hexdigest()[:16]
        ids = tuple(sorted(self.backbone.ids.items()))
        return ("ddim-inversion-depth", task.video.content_hash(), ids, task.source_prompt, self.steps,
                str(self.backbone.dtype), depth_hash)

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, depth: torch.Tensor, source_embeds: torch.Tensor) -> torch.Tensor:
        """DDIM inversion (guidance 1, depth conditioned) of clean latents (T, 4, h, w) -> x_T, in batches
        of `inversion_batch_size` frames, the last padded with copies of its last frame to a multiple of
        `batch_multiple` (the copies are dropped; fewer batch shapes, as in sampling)."""
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        out = []
        for x0, d in zip(latents.split(self.inversion_batch_size), depth.split(self.inversion_batch_size)):
            n = x0.shape[0]
            x0, d = (torch.cat([v, v[-1:].expand(round_up(n, self.batch_multiple) - n, *v.shape[1:])]) for v in (x0, d))
            emb = source_embeds.expand(x0.shape[0], -1, -1)
            out.append(ddim.invert(x0, lambda x, t, i: self._eps(x, d, t, emb))[0][:n])
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, depth: torch.Tensor, uncond_embeds: torch.Tensor,
               target_embeds: torch.Tensor) -> torch.Tensor:
        """Edit all frames from their initial noise (T, 4, h, w); returns the clean latents."""
        run = self._prepare_run(noise, depth, uncond_embeds, target_embeds)
        with self._injection(run):
            for items in self._calls(noise.shape[0]):
                self._denoise(run, items)
        return run.x

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """The backbone's models, then one call of each shape an edit of `num_frames` frames at `size`
        starts with: VAE encode and decode of a `vae_batch` chunk, an inversion call, and the first
        sampling call with feature injection (on a schedule of one batch shape, its only one).
        Constant inputs; nothing is kept."""
        super().warmup(size, num_frames)
        bb, n = self.backbone, num_frames
        h, w = (v // bb.vae_scale for v in size)
        with sdpa_kernels(self.attention_kernels):
            bb.decode_latents(bb.encode_images(torch.full((min(n, self.vae_batch), 3, *size), 0.5)))
            embeds = bb.encode_prompt([""])
            first = next(self._calls(n))
            zeros = torch.zeros(max(f for f, _ in first) + 1, 4, h, w, device=self.device, dtype=self._latent_dtype)
            rows = round_up(min(n, self.inversion_batch_size), self.batch_multiple)
            self._eps(zeros[:1].expand(rows, -1, -1, -1), zeros[:1, :1].expand(rows, -1, -1, -1),
                      torch.full((rows,), 500, device=self.device), embeds.expand(rows, -1, -1))
            run = self._prepare_run(zeros, zeros[:, :1], embeds, embeds)  # the first call's frames only
            with self._injection(run):
                self._denoise(run, first)

    def num_unet_calls(self, num_frames: int) -> int:
        return sum(1 for _ in self._calls(num_frames))

    # ---- sampling internals -------------------------------------------------------------------

    def _calls(self, num_frames: int) -> Iterator[list[Item]]:
        """The (frame, step) items of each UNet call, in order: the schedule's groups, each split into
        the fewest chunks of at most `sampling_batch_size` items, of equal size up to one."""
        for group in self._groups(num_frames):
            chunks = -(-len(group) // (self.sampling_batch_size or len(group)))
            size = -(-len(group) // chunks)
            yield from (group[k:k + size] for k in range(0, len(group), size))

    def _groups(self, num_frames: int) -> Iterator[list[Item]]:
        if self.schedule == "sequential":
            for f in range(num_frames):
                for s in range(self.steps):
                    yield [(f, s)]
        elif self.schedule == "lockstep":
            for s in range(self.steps):
                yield [(f, s) for f in range(num_frames)]
        else:
            for c in range(num_frames + self.steps - 1):
                yield [(f, c - f) for f in range(max(0, c - self.steps + 1), min(num_frames - 1, c) + 1)]

    def _injection(self, run: _Run):
        """The UNet's chosen self-attention layers reading keys/values from `run.bank`."""
        processors = {} if self.injection == "none" else {
            name: InjectedKVAttnProcessor(name, run.bank.kv_source) for name in self.layer_names}
        return attention_processors(self.backbone.unet, processors)

    def _prepare_run(self, noise, depth, uncond_embeds, target_embeds) -> _Run:
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        dev = self.device
        guided = self.guidance_scale != 1.0
        embeds = torch.cat([uncond_embeds, target_embeds]) if guided else target_embeds
        lo, hi = (round(f * self.steps) for f in self.update_window)
        update_steps = range(lo, hi) if self.latent_update else range(0)
        numel = noise[0].numel()  # mean over one frame's latent
        coef = [2.0 * self.update_step / numel if s in update_steps else 0.0 for s in range(self.steps)]
        return _Run(
            x=noise.to(dev, self._latent_dtype).clone(),
            depth=depth.to(dev, self._latent_dtype),
            embeds=embeds.to(dev),
            timesteps=ddim.timesteps.to(dev),
            alpha_t=torch.tensor([ddim.alpha(int(t)) for t in ddim.timesteps], dtype=torch.float64, device=dev),
            alpha_prev=torch.tensor([ddim.alpha(ddim.prev_t(s)) for s in range(self.steps)],
                                    dtype=torch.float64, device=dev),
            update_coef=torch.tensor(coef, dtype=self._latent_dtype, device=dev),
            bank=_FeatureBank(self.injection, noise.shape[0], embeds.shape[0], update_steps),
        )

    def _denoise(self, run: _Run, items: list[Item]) -> None:
        """One batched UNet call: every item (frame f, step s) takes one DDIM step, in place in run.x.

        With `batch_multiple`, the call is padded with copies of its last item to a multiple of that
        many items: each new batch size costs a fresh process ~0.4 s of kernel set-up on an H200
        (cuDNN attention and convolution plans), and the wavefront's sizes otherwise all differ.
        The copies compute the same rows again and are dropped.
        """
        n = len(items)
        padded = items + [items[-1]] * (round_up(n, self.batch_multiple) - n)
        frame_idx, step_idx = to_device(torch.tensor(padded, dtype=torch.long).T.contiguous(), self.device)
        branches = run.embeds.shape[0]
        x_all = run.x[frame_idx]
        run.bank.items = padded
        eps = self._eps(x_all.repeat(branches, 1, 1, 1), run.depth[frame_idx].repeat(branches, 1, 1, 1),
                        run.timesteps[step_idx].repeat(branches),
                        run.embeds.repeat_interleave(len(padded), dim=0))
        if branches == 2:
            eps = classifier_free_guidance(eps, self.guidance_scale)
        run.bank.items = items
        frame_idx, step_idx, x_t, eps = frame_idx[:n], step_idx[:n], x_all[:n], eps[:n]
        x0 = DDIM.predict_x0(x_t, eps, run.alpha_t[step_idx])
        x_prev = DDIM.from_x0(x0, eps, run.alpha_prev[step_idx])
        if self.latent_update:
            # L = s * mean((x0_prev - x0)^2)  =>  dL/dx0 = 2 s (x0 - x0_prev) / numel
            coef = run.update_coef[step_idx] * (frame_idx > 0)
            x_prev = x_prev - coef.view(-1, 1, 1, 1) * (x0 - run.bank.previous_x0(x0))
        run.bank.finish(x0)
        run.x[frame_idx] = x_prev

    def _eps(self, x: torch.Tensor, depth: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        unet = self.backbone.unet
        sample = torch.cat([x, depth], dim=1).to(self.backbone.dtype)
        return unet(sample, t, encoder_hidden_states=embeds).sample.to(x.dtype)
