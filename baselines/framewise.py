"""`framewise`: per-frame SDEdit (img2img) with the backbone's own conditioning, no temporal constraint.

The "no temporal constraint" bound: every frame is noised to `strength` and denoised with the
target prompt independently, with the same conditioning the methods use for that backbone family
(depth for sd2-depth, Canny ControlNet for sd15-controlnet, none for sd15 / sd15-animatediff).
Every frame uses the same seeded noise, as a per-frame image pipeline run with one seed would.
"""

from __future__ import annotations

import torch

from vedit.editors import params as P
from vedit.editors.base import Editor, PhaseTimer
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.depth import normalize_depth
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask
from vedit.video import to_float


@EDITORS.register("framewise")
class FramewiseEditor(Editor):
    name = "framewise"
    estimators_used = ("depth", "depth_anything_model", "edges")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "guidance_scale": P.number(), "strength": P.number(0, 1, low_open=True),
        "control_scale": P.number(0), "canny_low": P.number(0), "canny_high": P.number(0),
        "batch_size": P.integer(1),
    }

    def __init__(self, backbone, estimators=None, steps: int = 50, guidance_scale: float = 7.5,
                 strength: float = 0.75, control_scale: float = 1.0, canny_low: int = 50, canny_high: int = 100,
                 batch_size: int = 8) -> None:
        super().__init__(backbone, estimators)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"framewise: strength={strength} must be in (0, 1]")
        self.steps, self.guidance_scale, self.strength = steps, guidance_scale, strength
        self.control_scale, self.canny = control_scale, (canny_low, canny_high)
        self.batch_size = batch_size

    def _conditioning(self, task: EditTask, latent_size: tuple[int, int]) -> dict:
        family = self.backbone.family
        if family == "sd2-depth":
            depth = self.estimators.depth(task, model=self.backbone.depth_estimator)
            return {"depth": normalize_depth(depth.float(), latent_size)}
        if family == "sd15-controlnet":
            edges = self.estimators.edges(task, kind="canny", low=self.canny[0], high=self.canny[1])
            return {"control": edges.float().expand(-1, 3, -1, -1)}
        return {}

    @torch.no_grad()
    def edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        bb, timer = self.backbone, PhaseTimer(self.backbone.device)
        frames = task.video.pixels  # converted to float a batch at a time
        h, w = frames.shape[-2] // bb.vae_scale, frames.shape[-1] // bb.vae_scale
        with timer.phase("preprocessing"):
            cond = self._conditioning(task, (h, w))
            text = bb.encode_prompt(["", task.target_prompt])  # [uncond; cond]
        ddim = DDIM(bb.scheduler(), self.steps)
        start = min(int(self.steps * (1 - self.strength)), self.steps - 1)
        gen = torch.Generator("cpu").manual_seed(task.seed)
        noise = torch.randn((1, 4, h, w), generator=gen, dtype=torch.float32)
        out = []
        with timer.phase("sampling"):
            for i in range(0, frames.shape[0], self.batch_size):
                sl = slice(i, i + self.batch_size)
                latents = bb.encode_images(to_float(frames[sl]))
                x = ddim.add_noise(latents, noise.to(latents).expand_as(latents), start)
                eps_fn = self._eps_fn({k: v[sl] for k, v in cond.items()}, text, latents.shape[0])
                out.append(bb.decode_latents(ddim.sample(x, eps_fn, start=start)).cpu())
        return timer.result(torch.cat(out))

    def _eps_fn(self, cond: dict, text: torch.Tensor, n: int):
        bb, scale = self.backbone, self.guidance_scale
        emb = text.repeat_interleave(n, dim=0)  # n uncond rows, then n cond rows

        def eps(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            x2 = torch.cat([x, x])
            if "depth" in cond:
                x2 = torch.cat([x2, cond["depth"].to(x2).repeat(2, 1, 1, 1)], dim=1)
            kwargs = {}
            if "control" in cond:
                down, mid = bb.controlnet(x2, t, encoder_hidden_states=emb,
                                          controlnet_cond=cond["control"].to(x2).repeat(2, 1, 1, 1),
                                          conditioning_scale=self.control_scale, return_dict=False)
                kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            return classifier_free_guidance(bb.unet(x2, t, encoder_hidden_states=emb, **kwargs).sample, scale)

        return eps
