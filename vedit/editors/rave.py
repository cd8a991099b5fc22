"""RAVE (Kara, Kurtkaya, Yesiltepe, Rehg, Yanardag; CVPR 2024): zero-shot video editing with an image
diffusion model (SD 1.5 + ControlNet depth) that denoises the frames arranged in grids, shuffling the
frames between grids at every step so that attention and convolutions mix the whole video. Details
the paper leaves open follow the released code (rehg-lab/RAVE, MIT: configs/truck.yaml,
pipelines/sd_controlnet_rave.py).

1. Control: each frame's depth (vedit's depth estimator, min-max normalised per frame as ControlNet's
   MiDaS preprocessor does; the released default preprocessor is ZoeDepth) as a grey image.
2. Inversion: the frames are encoded as grids in frame order (`vae_on_grids`, as the released code;
   else one by one), then each frame's latent is DDIM-inverted on its own (guidance 1, the inversion
   prompt, empty by default, with its depth through the ControlNet at scale 1) up to the first sampling
   timestep; cached per video, backbone, prompt, steps and control. `inversion=noise` noises the clean
   latents with seeded Gaussian noise instead (the released is_ddim_inversion=false).
3. Sampling, every DDIM step i: a random permutation of all frames (seeded by the task seed) is applied
   to the current arrangement, as the released code draws torch.randperm before every step; position p
   of the arrangement is cell p % g^2 of grid p // g^2, and frame k of a grid sits at row k // g,
   column k % g (row-major). Every grid takes one DDIM step as one image: ControlNet on the depth grid
   (`control_scale`, during `control_guidance`) + UNet with classifier-free guidance (negative prompt,
   target prompt). Steps with i / steps <= `cond_step_start` run unguided (the negative branch alone):
   at the released 0.0, step 0.
4. The last step's grids are decoded as grids (`vae_on_grids`) and split back into frames.

Any frame count: ceil(T / g^2) grids; the cells after the arrangement's last frame hold copies of its
first frames (those frames are denoised in their own cells; the copies' outputs are dropped). The
released code drops the frames that do not fill a last grid instead.

Batching: every grid of a step goes through ControlNet + UNet in one call (at most `grid_batch` grids
per call, in equal chunks), where the released code runs 4 grids per call; inversion runs
`inversion_batch` frames per call (released: 36).
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping, Sequence

import torch

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer
from vedit.ops.attention import SDPA_KERNELS, sdpa_kernels
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.transfer import to_device
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask
from vedit.video import to_float

INVERSIONS = ("ddim", "noise")


def _text(optional: bool = False) -> P.Rule:
    allowed = "a string (may be empty)" + (" or null" if optional else "")
    return lambda v: None if isinstance(v, str) or (optional and v is None) else allowed


def grid_count(num_frames: int, grid_size: int) -> int:
    """Grids of grid_size x grid_size cells that hold `num_frames` frames (the last one may be partial)."""
    return -(-num_frames // grid_size**2)


def shuffle_orders(num_frames: int, steps: int, shuffle: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(steps, T): row i is step i's arrangement, the frame at each position. Each step applies a fresh
    random permutation to the previous step's arrangement (order_i = order_{i-1}[randperm(T)]), as the
    released code does; shuffle=False keeps every frame in place."""
    order = torch.arange(num_frames)
    out = torch.empty(steps, num_frames, dtype=torch.long)
    for i in range(steps):
        if shuffle:
            order = order[torch.randperm(num_frames, generator=generator)]
        out[i] = order
    return out


def fill_cells(order: torch.Tensor, cells: int) -> torch.Tensor:
    """An arrangement of T frames over `cells` >= T positions: the positions after the last frame hold
    copies of the arrangement's first frames (cycled when there are fewer frames than spare cells)."""
    return order.repeat(-(-cells // len(order)))[:cells]


def to_grids(frames: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(G * g^2, C, h, w) frames in cell order -> (G, C, g*h, g*w) grid images, cells row-major."""
    n, c, h, w = frames.shape
    g = grid_size
    return frames.reshape(n // g**2, g, g, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n // g**2, c, g * h, g * w)


def from_grids(grids: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(G, C, g*h, g*w) grid images -> (G * g^2, C, h, w) frames in cell order (the inverse of to_grids)."""
    n, c, hh, ww = grids.shape
    g = grid_size
    h, w = hh // g, ww // g
    return grids.reshape(n, c, g, h, g, w).permute(0, 2, 4, 1, 3, 5).reshape(n * g**2, c, h, w)


@EDITORS.register("rave")
class RaveEditor(Editor):
    """RAVE on SD 1.5 + ControlNet depth. See the module docstring for the method."""

    name = "rave"
    estimators_used = ("depth", "depth_anything_model")
    SPEED_PARAMS = ("grid_batch", "inversion_batch", "vae_batch", "attention_kernels")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "inversion_steps": P.integer(1, optional=True), "guidance_scale": P.number(),
        "negative_prompt": _text(), "inversion_prompt": _text(optional=True), "grid_size": P.integer(1, 8),
        "shuffle": P.boolean(), "inversion": P.choice(*INVERSIONS), "inversion_control": P.boolean(),
        "control_scale": P.number(0), "control_guidance": P.period(), "cond_step_start": P.number(0, 1),
        "vae_on_grids": P.boolean(), "grid_batch": P.integer(1, optional=True), "inversion_batch": P.integer(1),
        "vae_batch": P.integer(1), "attention_kernels": P.subset(*SDPA_KERNELS, optional=True),
    }

    def __init__(self, backbone, estimators=None, steps: int = 50, inversion_steps: int | None = 50,
                 guidance_scale: float = 7.5, negative_prompt: str = "", inversion_prompt: str | None = "",
                 grid_size: int = 3, shuffle: bool = True, inversion: str = "ddim", inversion_control: bool = True,
                 control_scale: float = 1.0, control_guidance: Sequence[float] = (0.0, 1.0),
                 cond_step_start: float = 0.0, vae_on_grids: bool = True, grid_batch: int | None = 8,
                 inversion_batch: int = 64, vae_batch: int = 1, attention_kernels: Sequence[str] | None = None,
                 latent_cache: MutableMapping | None = None) -> None:
        super().__init__(backbone, estimators)
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__", *self.INJECTED)}
        # lists from a Hydra config arrive as ListConfig
        self.check_params({k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                           for k, v in given.items()})
        self.steps, self.inversion_steps = int(steps), int(inversion_steps or steps)
        self.guidance_scale, self.cond_step_start = float(guidance_scale), float(cond_step_start)
        self.negative_prompt, self.inversion_prompt = negative_prompt, inversion_prompt
        self.grid_size, self.shuffle, self.inversion = int(grid_size), bool(shuffle), inversion
        self.inversion_control, self.control_scale = bool(inversion_control), float(control_scale)
        self.control_guidance = tuple(float(v) for v in control_guidance)
        self.vae_on_grids = bool(vae_on_grids)
        self.grid_batch, self.inversion_batch, self.vae_batch = grid_batch, int(inversion_batch), int(vae_batch)
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.latent_cache = latent_cache
        self._latent_dtype = torch.float64 if backbone.dtype == torch.float64 else torch.float32

    # ---- inputs -------------------------------------------------------------------------------

    def check_inputs(self, task: EditTask) -> None:
        super().check_inputs(task)
        bb = self.backbone
        if bb.controlnet is None or bb.unet.config.in_channels != 4:
            raise EditorError(f"rave needs SD 1.5 with a ControlNet (a 4-channel UNet), but backbone family "
                              f"{bb.family!r} has none; use method.family=sd15-controlnet-depth")

    def prepare_control(self, task: EditTask) -> torch.Tensor:
        """(T, 1, H, W) control images in [0, 1] on the device: depth (larger = nearer) min-max
        normalised per frame, as ControlNet's MiDaS depth preprocessor; a constant map becomes 0."""
        video = task.video
        depth = self.estimators.depth(task, model=self.backbone.depth_estimator)
        t, (h, w) = video.num_frames, video.size
        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (t, 1, h, w):
            shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
            raise EditorError(f"rave: depth for video {video.id!r} must be ({t}, 1, {h}, {w}), got {shape}")
        if not torch.isfinite(depth).all():
            raise EditorError(f"rave: depth for video {video.id!r} has NaN or infinite values; "
                              "check the depth estimator or the dataset's depth maps")
        d = depth.to(self.device, self._latent_dtype)
        lo, hi = d.amin(dim=(1, 2, 3), keepdim=True), d.amax(dim=(1, 2, 3), keepdim=True)
        control = torch.where(hi > lo, (d - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(d))
        return control.to(self.backbone.dtype)

    # ---- the method ---------------------------------------------------------------------------

    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        timer = PhaseTimer(self.device)
        num_frames, seed = task.video.num_frames, int(task.seed)
        inversion_prompt = task.source_prompt if self.inversion_prompt is None else self.inversion_prompt
        with timer.phase("preprocessing"):
            control = self.prepare_control(task)
            negative, target, inverse = self.backbone.encode_prompt(
                [self.negative_prompt, task.target_prompt, inversion_prompt]).chunk(3)
        with timer.phase("inversion"):
            noise, cached = self.initial_latents(task, control, inverse, seed)
        with timer.phase("sampling"):
            orders = shuffle_orders(num_frames, self.steps, self.shuffle, torch.Generator().manual_seed(seed))
            latents = self.sample(noise, control, negative, target, orders)
            frames = self.decode(latents, orders[-1])
        grids = grid_count(num_frames, self.grid_size)
        calls = self.steps * len(self._chunks(grids))
        if self.inversion == "ddim" and not cached:
            calls += self.inversion_steps * -(-num_frames // self.inversion_batch)
        return timer.result(frames, grids=grids, padding_cells=grids * self.grid_size**2 - num_frames,
                            inversion_cached=cached, unet_calls=calls)

    def initial_latents(self, task: EditTask, control: torch.Tensor, embeds: torch.Tensor,
                        seed: int) -> tuple[torch.Tensor, bool]:
        """x_T per frame (T, 4, h, w): DDIM inversion (from `latent_cache` when it holds this video's),
        or the clean latents noised to the first sampling timestep (`inversion=noise`)."""
        if self.inversion == "noise":
            x0 = self.encode(task)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
            return DDIM(self.backbone.scheduler(), self.steps).add_noise(x0, noise.to(x0.device), 0), False
        key = self.inversion_key(task, control, embeds)
        if self.latent_cache is not None and key in self.latent_cache:
            return self.latent_cache[key].to(self.device, self._latent_dtype), True
        noise = self.invert(self.encode(task), control, embeds)
        if self.latent_cache is not None:
            self.latent_cache[key] = noise.cpu()
        return noise, False

    def inversion_key(self, task: EditTask, control: torch.Tensor, embeds: torch.Tensor) -> tuple:
        """What the inverted noise depends on: video, backbone, prompt embedding, steps, dtype, the
        encoding layout and (with inversion_control) the control images."""
        ids = tuple(sorted(self.backbone.ids.items()))
        prompt = hashlib.sha256(embeds.float().cpu().numpy().tobytes()).hexdigest()[:16]
        controls = hashlib.sha256(control.float().cpu().numpy().tobytes()).hexdigest()[:16] \
            if self.inversion_control else None
        layout = self.grid_size if self.vae_on_grids else 1
        return ("rave-ddim-inversion", task.video.content_hash(), ids, prompt, self.inversion_steps,
                str(self.backbone.dtype), layout, controls)

    @torch.no_grad()
    def encode(self, task: EditTask) -> torch.Tensor:
        """Clean latents (T, 4, h, w): the frames encoded as grids in frame order (`vae_on_grids`, the
        partial last grid filled with copies of its first frames), else frame by frame."""
        video, g, bb = task.video, self.grid_size, self.backbone
        if not self.vae_on_grids:
            return torch.cat([bb.encode_images(c) for c in video.chunks(self.vae_batch)]).to(self._latent_dtype)
        cells = fill_cells(torch.arange(video.num_frames), grid_count(video.num_frames, g) * g**2)
        latents = [from_grids(bb.encode_images(to_grids(to_float(video.pixels[chunk]), g)), g)
                   for chunk in cells.split(self.vae_batch * g**2)]
        return torch.cat(latents)[: video.num_frames].to(self._latent_dtype)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, control: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """DDIM inversion of each frame's clean latent on its own (guidance 1; the ControlNet at scale 1,
        as the released code, with `inversion_control`), `inversion_batch` frames per call."""
        ddim = DDIM(self.backbone.scheduler(), self.inversion_steps)
        out = []
        for x, c in zip(x0.split(self.inversion_batch), control.split(self.inversion_batch)):
            emb = embeds.expand(len(x), -1, -1)
            cond = c if self.inversion_control else None
            out.append(ddim.invert(x, lambda z, t, i: self._eps(z, t, emb, cond, 1.0))[0])
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, control: torch.Tensor, negative: torch.Tensor, target: torch.Tensor,
               orders: torch.Tensor) -> torch.Tensor:
        """Denoise all frames from x_T (T, 4, h, w) with control (T, 1, H, W), step i on the grids of
        arrangement orders[i] (`shuffle_orders`). Returns the clean latents in frame order."""
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        g, num_frames = self.grid_size, noise.shape[0]
        cells = grid_count(num_frames, g) * g**2
        chunks = self._chunks(cells // g**2)
        start, end = self.control_guidance
        x = noise.to(self.device, self._latent_dtype).clone()
        for i in range(self.steps):
            arrangement = to_device(fill_cells(orders[i], cells), self.device)
            grids = to_grids(x[arrangement], g)
            control_grids = to_grids(control[arrangement], g)
            fraction = i / self.steps
            guidance = self.guidance_scale if self.cond_step_start < fraction else 0.0
            use_control = start <= fraction <= end
            t = ddim.timesteps[i]
            eps = torch.cat([self._guided_eps(grids[s], t, control_grids[s] if use_control else None,
                                              negative, target, guidance) for s in chunks])
            grids = ddim.step(grids, eps, i)[0]
            x[arrangement[:num_frames]] = from_grids(grids, g)[:num_frames]
        return x

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Frames (T, 3, H, W) float on the CPU: the grids of the last step's arrangement decoded as
        images and split (`vae_on_grids`), else frame by frame."""
        bb, g, num_frames = self.backbone, self.grid_size, latents.shape[0]
        if not self.vae_on_grids:
            return torch.cat([bb.decode_latents(c).cpu() for c in latents.split(self.vae_batch)])
        arrangement = fill_cells(order, grid_count(num_frames, g) * g**2)
        frames = None
        for start in range(0, len(arrangement), self.vae_batch * g**2):
            cells = arrangement[start:start + self.vae_batch * g**2]
            images = from_grids(bb.decode_latents(to_grids(latents[to_device(cells, self.device)], g)), g).cpu()
            if frames is None:
                frames = images.new_empty(num_frames, *images.shape[1:])
            real = min(len(cells), num_frames - start)  # the cells after the last frame hold copies
            if real > 0:
                frames[cells[:real]] = images[:real]
        return frames

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """The backbone's models, then one call of each shape an edit of `num_frames` frames at `size`
        starts with: VAE encode and decode of a `vae_batch` chunk, an inversion call and a sampling
        call. Constant inputs; nothing is kept."""
        super().warmup(size, num_frames)
        bb, g = self.backbone, self.grid_size
        h, w = size
        lh, lw = h // bb.vae_scale, w // bb.vae_scale
        grids = grid_count(num_frames, g)
        with sdpa_kernels(self.attention_kernels):
            emb = bb.encode_prompt([""])
            vae_rows, vae_size = (min(grids, self.vae_batch), (g * h, g * w)) if self.vae_on_grids \
                else (min(num_frames, self.vae_batch), (h, w))
            bb.decode_latents(bb.encode_images(torch.full((vae_rows, 3, *vae_size), 0.5)))
            t = torch.tensor(500, device=self.device)
            if self.inversion == "ddim":
                rows = min(num_frames, self.inversion_batch)
                x = torch.zeros(rows, 4, lh, lw, device=self.device, dtype=self._latent_dtype)
                control = torch.zeros(rows, 1, h, w, device=self.device, dtype=bb.dtype)
                self._eps(x, t, emb.expand(rows, -1, -1), control if self.inversion_control else None, 1.0)
            rows = len(range(grids)[self._chunks(grids)[0]])
            x = torch.zeros(rows, 4, g * lh, g * lw, device=self.device, dtype=self._latent_dtype)
            control = torch.zeros(rows, 1, g * h, g * w, device=self.device, dtype=bb.dtype)
            self._guided_eps(x, t, control, emb, emb, self.guidance_scale)

    # ---- model calls --------------------------------------------------------------------------

    def _chunks(self, grids: int) -> list[slice]:
        """The grids of each sampling call: the fewest chunks of at most `grid_batch`, of equal size up to one."""
        count = -(-grids // (self.grid_batch or grids))
        size = -(-grids // count)
        return [slice(k, min(k + size, grids)) for k in range(0, grids, size)]

    def _eps(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, control: torch.Tensor | None,
             scale: float) -> torch.Tensor:
        """The UNet's noise prediction for rows x, with the ControlNet's residuals of the grey control
        images (rows, 1, H, W) at `scale` (none when control is None)."""
        bb = self.backbone
        sample = x.to(bb.dtype)
        residuals = {}
        if control is not None:
            down, mid = bb.controlnet(sample, t, encoder_hidden_states=embeds,
                                      controlnet_cond=control.expand(-1, 3, -1, -1), conditioning_scale=scale,
                                      return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return bb.unet(sample, t, encoder_hidden_states=embeds, **residuals).sample.to(x.dtype)

    def _guided_eps(self, grids: torch.Tensor, t: torch.Tensor, control: torch.Tensor | None,
                    negative: torch.Tensor, target: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guided noise of grid latents: one call on rows [negative; target]."""
        n = len(grids)
        embeds = torch.cat([negative.expand(n, -1, -1), target.expand(n, -1, -1)])
        control = None if control is None else torch.cat([control, control])
        out = self._eps(torch.cat([grids, grids]), t, embeds, control, self.control_scale)
        return classifier_free_guidance(out, guidance)
