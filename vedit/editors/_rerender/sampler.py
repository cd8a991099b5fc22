"""Rerender's key-frame sampling: DDIM with the hierarchical cross-frame constraints, sequential or wavefront."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vedit.editors._rerender.attention import KeyFrameAttention, WavefrontAttention
from vedit.editors._rerender.fusion import (PixelFusion, adain, cell_min, inpainting_rescale, pixel_reference,
                                            soften_occlusion)
from vedit.editors._rerender.schedule import Pass, is_final_pass, start_step, wavefront_plan
from vedit.editors.base import round_up
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.transfer import to_device
from vedit.ops.vae import backbone_fidelity_encode
from vedit.ops.warp import backward_warp, resize_flow

if TYPE_CHECKING:
    from vedit.editors.rerender import RerenderEditor


@dataclass
class KeyFrame:
    """What the sampler needs for one key frame."""

    index: int
    control: torch.Tensor  # (2, 3, H, W) for both guidance branches
    is_first: bool
    shape_flow: torch.Tensor | None = None  # latent flow (float32) to the first key frame
    shape_keep: torch.Tensor | None = None  # 1 where the first frame's x0 replaces this frame's


@dataclass
class Lane:
    """One pass (direct or fused) of one key frame in the wavefront: its latent between steps."""

    key: KeyFrame
    x: torch.Tensor
    direction: torch.Tensor
    fusion: PixelFusion | None = None
    saved: tuple[torch.Tensor, torch.Tensor] | None = None  # direct pass: (x, direction) where the fused pass resumes


class KeyFrameSampler:
    """The key-frame loop of one edit: DDIM with the hierarchical cross-frame constraints."""

    def __init__(self, editor: RerenderEditor, ddim: DDIM, text: torch.Tensor, noise: torch.Tensor, seed: int) -> None:
        self.ed, self.bb, self.ddim = editor, editor.backbone, ddim
        self.text, self.noise, self.seed = text, noise, seed
        self.timesteps = ddim.timesteps.to(self.bb.device)
        self.start = start_step(editor.x0_strength, ddim.num_steps)
        windows = editor.constraint_steps()
        self.shape_steps = set(windows["shape_fusion"])
        self.adain_steps = set(windows["color_adain"])
        self.pixel_steps = windows["pixel_fusion"]
        self.resume_at = self.pixel_steps[0] if self.pixel_steps else None  # where a fused pass resumes its direct one
        self.fused_begin = None if self.resume_at is None else self.resume_at if editor.reuse_direct_pass else self.start
        self.attention = KeyFrameAttention()
        self.wave_attention = WavefrontAttention(fixed_length=bool(editor.batch_multiple))
        self.first_x0: dict[int, torch.Tensor] = {}
        self.unet_calls = 0

    # -- model

    def eps(self, x: torch.Tensor, i: int, control: torch.Tensor) -> torch.Tensor:
        bb, t = self.bb, self.timesteps[i]
        self.unet_calls += 1
        x2 = torch.cat([x, x])
        down, mid = bb.controlnet(x2, t, encoder_hidden_states=self.text, controlnet_cond=control,
                                  conditioning_scale=self.ed.control_scale, return_dict=False)
        out = bb.unet(x2, t, encoder_hidden_states=self.text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
        return classifier_free_guidance(out, self.ed.guidance_scale)

    def wavefront_call(self, lanes: list[Lane], rows: list[tuple[int, int, bool]], steps: list[int]) -> list[torch.Tensor]:
        """Guided noise of several key-frame passes in one UNet+ControlNet call, each at its own step
        (rows [uncond, cond] per pass, as `eps` lays out one pass); `rows` as `WavefrontAttention.begin_call`.

        Padded with copies of the last pass to a multiple of `batch_multiple` passes (dropped after the
        call): a few batch shapes instead of one per call size, each costing kernel set-up."""
        count = len(lanes)
        pad = round_up(count, self.ed.batch_multiple) - count
        rows = rows + [rows[-1][:2] + (False,)] * pad
        lanes, steps = lanes + [lanes[-1]] * pad, steps + [steps[-1]] * pad
        inputs = [torch.cat([torch.cat([lane.x, lane.x]) for lane in lanes]),
                  to_device(self.ddim.timesteps[steps], self.bb.device).repeat_interleave(2),
                  self.text.repeat(len(lanes), 1, 1), torch.cat([lane.key.control for lane in lanes])]
        self.unet_calls += 1
        if self.ed.sampling_graphs and self.ed.batch_multiple and self.bb.device.type == "cuda":
            out = self.ed.wavefront_graphs(self, inputs, rows)
        else:
            self.wave_attention.begin_call(rows)
            out = self.forward(*inputs)
        return [classifier_free_guidance(o, self.ed.guidance_scale) for o in out.split(2)][:count]

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """ControlNet + UNet on rows x at per-row timesteps t: the UNet's output."""
        bb = self.bb
        down, mid = bb.controlnet(x, t, encoder_hidden_states=text, controlnet_cond=control,
                                  conditioning_scale=self.ed.control_scale, return_dict=False)
        return bb.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample

    def alphas(self, i: int) -> tuple[float, float]:
        return self.ddim.alpha(int(self.ddim.timesteps[i])), self.ddim.alpha(self.ddim.prev_t(i))

    # -- loops

    def denoise(self, x: torch.Tensor, direction: torch.Tensor, begin: int, control: torch.Tensor,
                key: KeyFrame | None = None, fusion: PixelFusion | None = None, save_at: int | None = None):
        """DDIM steps begin..end on latent x; `direction` is the noise part of x (from the step
        before). key=None samples without any constraint. Returns (clean latent, (x, direction) as
        they were at step `save_at` before its update)."""
        saved = None
        for i in range(begin, self.ddim.num_steps):
            a_t, a_prev = self.alphas(i)
            if fusion is not None and i in fusion.noise:
                x = fusion.blend(x, direction, a_t, i)
            if i == save_at:
                saved = (x, direction)
            if key is not None and self.ed.cross_frame_attention:
                self.attention.begin_step(i)
            eps = self.eps(x, i, control)
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if key is not None:
                x0 = self.constrain_x0(x0, i, key)
            direction = math.sqrt(1 - a_prev) * eps
            x = math.sqrt(a_prev) * x0 + direction
        return x, saved

    def constrain_x0(self, x0: torch.Tensor, i: int, key: KeyFrame) -> torch.Tensor:
        if key.is_first:
            self.first_x0[i] = x0
            return x0
        if i in self.shape_steps:
            # nearest sampling as the reference implementation; float32 keeps grid positions exact
            warped = backward_warp(self.first_x0[i].float(), key.shape_flow, mode="nearest").to(x0.dtype)
            x0 = key.shape_keep * warped + (1 - key.shape_keep) * x0
        if i in self.adain_steps:
            x0 = adain(x0, self.first_x0[i])
        return x0

    def free_sample(self, control: torch.Tensor) -> torch.Tensor:
        """Translate one frame from pure noise without constraints (the colour-correction reference)."""
        control = control.to(self.bb.device, self.bb.dtype).repeat(2, 1, 1, 1)
        x, _ = self.denoise(self.noise, torch.zeros_like(self.noise), 0, control)
        return self.bb.decode_latents(x).cpu()

    def key_frame(self, n: int, k: int, inputs: torch.Tensor, control: torch.Tensor,
                  key_flows: list[tuple]) -> tuple[KeyFrame, torch.Tensor]:
        """Key frame at position n (video frame k) and its SDEdit start latent."""
        bb = self.bb
        key = KeyFrame(index=k, control=control[k:k + 1].to(bb.device, bb.dtype).repeat(2, 1, 1, 1), is_first=n == 0)
        latent = bb.encode_images(inputs[k:k + 1])
        if n > 0:
            self.prepare_shape_fusion(key, *key_flows[n][0], latent.shape[-2:])
        a_start = self.alphas(self.start)[0]
        return key, math.sqrt(a_start) * latent + math.sqrt(1 - a_start) * self.noise

    def translate_keys(self, keys: list[int], inputs: torch.Tensor, control: torch.Tensor,
                       key_flows: list[tuple]) -> torch.Tensor:
        bb = self.bb
        outputs = []
        for n, k in enumerate(keys):
            key, x = self.key_frame(n, k, inputs, control, key_flows)
            direction = torch.zeros_like(x)
            if key.is_first:
                x, _ = self.denoise(x, direction, self.start, key.control, key)
                out = bb.decode_latents(x)
            else:
                to_first, to_prev = key_flows[n]
                out = self.translate_with_pixel_fusion(key, x, direction, outputs[0], outputs[-1], to_first, to_prev)
            self.attention.finish_frame(key.is_first)
            outputs.append(out)
        return torch.cat(outputs)

    def plan(self, num_keys: int) -> list[list[Pass]]:
        """The wavefront's calls for `num_keys` key frames (`wavefront_plan`)."""
        return wavefront_plan(num_keys, self.start, self.ddim.num_steps, self.fused_begin, self.ed.cross_frame_attention,
                              self.shape_steps | self.adain_steps, self.ed.sampling_batch_size)

    def translate_keys_wavefront(self, keys: list[int], inputs: torch.Tensor, control: torch.Tensor,
                                 key_flows: list[tuple]) -> torch.Tensor:
        """The sequential loop's arithmetic, run as `wavefront_plan` batches it."""
        bb, steps, last = self.bb, self.ddim.num_steps, len(keys) - 1
        resume_at, fused_begin = self.resume_at, self.fused_begin
        plan = self.plan(len(keys))
        starts = [self.key_frame(n, k, inputs, control, key_flows) for n, k in enumerate(keys)]
        lanes = {(n, False): Lane(key, x, torch.zeros_like(x)) for n, (key, x) in enumerate(starts)}
        outputs: dict[int, torch.Tensor] = {}
        for call in plan:
            batch = [lanes[(n, fused)] if (n, fused) in lanes else self.fused_lane(lanes, n, starts[n], outputs, key_flows[n])
                     for n, fused, _ in call]
            rows = []
            for lane, (n, fused, i) in zip(batch, call):
                if lane.fusion is not None and i in lane.fusion.noise:
                    lane.x = lane.fusion.blend(lane.x, lane.direction, self.alphas(i)[0], i)
                if n > 0 and not fused and i == resume_at:
                    lane.saved = (lane.x, lane.direction)
                rows.append((n, i, is_final_pass(n, fused, i, fused_begin) and (n == 0 or n < last)))
            eps_all = self.wavefront_call(batch, rows, [i for _, _, i in call])
            for lane, (n, fused, i), eps in zip(batch, call, eps_all):
                a_t, a_prev = self.alphas(i)
                x0 = self.constrain_x0((lane.x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t), i, lane.key)
                lane.direction = math.sqrt(1 - a_prev) * eps
                lane.x = math.sqrt(a_prev) * x0 + lane.direction
                if i + 1 == steps and (fused or fused_begin is None or n == 0):  # key frame n is done
                    outputs[n] = bb.decode_latents(lanes.pop((n, fused)).x)
                    if n >= 2:
                        self.wave_attention.release(n - 1)  # key frame n was its last reader
        return torch.cat([outputs[n] for n in range(len(keys))])

    def fused_lane(self, lanes: dict, n: int, start: tuple[KeyFrame, torch.Tensor], outputs: dict[int, torch.Tensor],
                   flows: tuple) -> Lane:
        """The fused pass of key frame n, from its finished direct pass (resumed, or restarted) and the
        outputs of the first and previous key frames."""
        key, x_start = start
        direct_lane = lanes.pop((n, False))
        fusion = self.pixel_fusion(key, self.bb.decode_latents(direct_lane.x), outputs[0], outputs[n - 1], *flows)
        x, direction = direct_lane.saved if self.ed.reuse_direct_pass else (x_start, torch.zeros_like(x_start))
        lanes[(n, True)] = Lane(key, x, direction, fusion)
        return lanes[(n, True)]

    def prepare_shape_fusion(self, key: KeyFrame, flow: torch.Tensor, occ: torch.Tensor, latent_size) -> None:
        dev, dt = self.bb.device, self.bb.dtype
        key.shape_flow = resize_flow(flow, latent_size).to(dev, torch.float32)
        key.shape_keep = cell_min(1 - soften_occlusion(occ), self.bb.vae_scale).to(dev, dt)

    def translate_with_pixel_fusion(self, key: KeyFrame, x: torch.Tensor, direction: torch.Tensor,
                                    first_out: torch.Tensor, prev_out: torch.Tensor, to_first, to_prev) -> torch.Tensor:
        bb = self.bb
        if not self.pixel_steps:
            x, _ = self.denoise(x, direction, self.start, key.control, key)
            return bb.decode_latents(x)
        direct, saved = self.denoise(x, direction, self.start, key.control, key, save_at=self.resume_at)
        fusion = self.pixel_fusion(key, bb.decode_latents(direct), first_out, prev_out, to_first, to_prev)
        if self.ed.reuse_direct_pass:
            x, _ = self.denoise(*saved, self.resume_at, key.control, key, fusion)
        else:
            x, _ = self.denoise(x, direction, self.start, key.control, key, fusion)
        return bb.decode_latents(x)

    def reference_noise(self, index: int) -> torch.Tensor:
        """(steps of the fusion period, *latent shape): the noise of the pixel reference at each fusion step.
        "shared": the same for every key frame (the released code reseeds before each); "per_key": seeded
        per key frame (video frame `index`)."""
        offset = index if self.ed.pixel_fusion["reference_noise"] == "per_key" else 0
        gen = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + offset)
        return torch.randn((len(self.pixel_steps), *self.noise.shape), generator=gen)

    def pixel_fusion(self, key: KeyFrame, direct: torch.Tensor, first_out: torch.Tensor, prev_out: torch.Tensor,
                     to_first, to_prev) -> PixelFusion:
        bb, cfg = self.bb, self.ed.pixel_fusion
        dev = direct.device
        (flow_f, occ_f), (flow_p, occ_p) = to_first, to_prev
        soft_f, soft_p = soften_occlusion(occ_f).to(dev), soften_occlusion(occ_p).to(dev)
        reference = pixel_reference(direct, backward_warp(first_out, flow_f.to(dev)),
                                    backward_warp(prev_out, flow_p.to(dev)), soft_f, soft_p)
        keep = 1 - soften_occlusion(occ_f * occ_p)
        weight = cfg["mask_strength"] * cell_min(keep, bb.vae_scale)
        rescale = inpainting_rescale(weight, cfg["inner_strength"], cfg["smooth_boundary"])
        noise = dict(zip(self.pixel_steps, self.reference_noise(key.index).to(dev, bb.dtype)))
        ref_latent = backbone_fidelity_encode(bb, reference, cfg["fidelity_threshold"], cfg["fidelity_mask"])
        return PixelFusion(ref_latent, weight.to(dev, bb.dtype), rescale.to(dev, bb.dtype), noise)
