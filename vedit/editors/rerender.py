"""`rerender`: Rerender-A-Video (Yang et al., SIGGRAPH Asia 2023), zero-shot video-to-video translation.

Key frames (every `key_interval`-th frame, plus the last frame so that every other frame lies
between two key frames) are translated one after the other with SD 1.5 + ControlNet (Canny or HED
edges), DDIM, classifier-free guidance, starting from the input frame's latent noised to
`x0_strength` (SDEdit: denoising starts at step int(steps * (1 - x0_strength))). Every key frame
uses the same seeded noise. The prompt is the target prompt followed by `added_prompt`, the
unconditional branch uses `negative_prompt` (the released code's strings). The hierarchical
cross-frame constraints (paper Sec. 4.1, Fig. 4b), each a switch with its period given as
fractions of the schedule, each end inclusive or not as the released code compares it
(`period_steps`, `PERIOD_ENDS`; at 20 steps: shape fusion 0..2, pixel fusion 11..15, AdaIN 16..19):

- cross-frame attention (all steps): in every decoder self-attention layer the keys/values come
  from [first key frame; previous key frame] at the same step and guidance branch (the current
  frame is excluded); the first key frame uses plain self-attention and its inputs are recorded.
- shape-aware fusion, period (0, 0.1): the predicted x0 outside occlusion is replaced by the first
  key frame's predicted x0 at the same step, warped by the flow to the first frame (divided by 8
  for latents). With x0_strength < 0.9 the period ends before the start step, so it does nothing:
  that is the paper's default behaviour and is kept.
- pixel-aware fusion, period (0.5, 0.8): the frame is first sampled without it (the direct
  result); the first and previous key-frame outputs warped to this frame fill the non-occluded
  pixels and the direct result the rest (Eq. 10); that pixel reference is encoded with the
  fidelity-oriented encoder (`vedit.ops.vae`) and, at each step of the period, the latent is
  pulled toward the noised reference outside occlusion (Eq. 11, structure-guided inpainting) with
  weight `mask_strength` 0.5; the latent's noise direction is rescaled to keep its noise level
  (sqrt(1 - w^2), times `inner_strength` 0.9 in the flat interior of the mask).
  The direct and fused passes are identical until the period starts, so the fused pass resumes
  from the direct pass's latent at that step (`reuse_direct_pass`; off = run both in full).
- colour (AdaIN), period (0.8, 1.0): the predicted x0 is matched to the first key frame's
  per-channel mean and std at the same step.

Flow between key frames (`key_flow`): `direct` (default, as the paper and released code) estimates
the flow from key frame k straight to the first key frame and to the previous key frame
(`Estimators.flow_between`); `chained` composes the adjacent-frame flows instead
(`vedit.ops.warp.chain_to_first`), occluded where the chain breaks. Occlusion (`occlusion`) is the
released code's forward-backward rule (`vedit.ops.warp.rerender_occlusion`, plain norms) recomputed from
the flows, for key frames and propagation alike ("estimator": the estimator's own masks). Occlusion
masks are dilated (9x9) and blurred (Gaussian, kernel 9, sigma 18) before blending, as in the reference
implementation. The pixel reference is noised with the same noise for every key frame (the released
code reseeds before each; `pixel_fusion.reference_noise`), and its fidelity-oriented encoding rejects
latent cells by the released rule (`pixel_fusion.fidelity_mask`, `vedit.ops.vae`).

Colour correction (off by default): the inputs' Lab histograms are matched to a translation of frame
0 from pure noise (paper Sec. 5.4), then the input's luminosity is put back (`restore_luminosity`, as
the released code's luminosity blend does).

Schedules: `sequential` is the loop above, one key frame and one guidance pair per UNet call.
`wavefront` (default) runs the same per-frame arithmetic with independent work batched into one
UNet+ControlNet call (per-row timesteps and control images): key frame n's step s reads the
first and previous key frames' step-s features, so its direct pass runs one step behind key
frame n-1, and its fused pass starts once its direct pass and key frame n-1 are finished (sharing
calls with key frame n+1's direct pass). `wavefront_plan` lists the calls; see its docstring. On CUDA the
calls are replayed from CUDA graphs, one per call shape (`sampling_graphs`, `WavefrontGraphs`): the same frames.

Non-key frames come from `vedit.ops.propagation.propagate_keyframes` (EbSynth-style guided patch
synthesis and temporal-aware blending).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from vedit.editors import params as P
from vedit.editors._rerender.attention import KeyFrameAttention, WavefrontAttention
from vedit.editors._rerender.fusion import (PixelFusion, adain, cell_min, flat_region, inpainting_rescale,
                                            match_colour, pixel_reference, restore_luminosity, soften_occlusion)
from vedit.editors._rerender.graphs import StaticKV, WavefrontGraphs
from vedit.editors._rerender.keyframes import chained_flow, flow_from_correspondence, key_frame_indices
from vedit.editors._rerender.sampler import KeyFrame, KeyFrameSampler, Lane
from vedit.editors._rerender.schedule import Pass, is_final_pass, period_steps, start_step, wavefront_plan
from vedit.editors.base import Editor, EditorError, PhaseTimer, round_up
from vedit.ops.attention import (SDPA_KERNELS, InjectedKVAttnProcessor, attention_processors, sdpa_kernels,
                                 self_attention_layers)
from vedit.ops.ddim import DDIM
from vedit.ops.propagation import EDGE_GUIDES, GUIDE_WARPS, POS_GUIDES, key_chains, propagate_keyframes
from vedit.ops.vae import MASK_RULES
from vedit.ops.warp import chain_to_first, rerender_occlusion
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

SCHEDULES = ("wavefront", "sequential")
KEY_FLOWS = ("direct", "chained")
OCCLUSIONS = ("released", "estimator")
ADDED_PROMPT = "best quality, extremely detailed"
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality")
PROPAGATION_PARAMS = set(inspect.signature(propagate_keyframes).parameters) - {
    "source", "key_indices", "key_outputs", "flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd", "chain_batch", "cuda_graphs",
    "device", "seed"}
# (start inclusive, end inclusive) per period, as the released code compares steps with steps * period
PERIOD_ENDS = {"shape_fusion": (True, True), "pixel_fusion": (False, False), "color_adain": (True, True)}
SHAPE_FUSION = {"enabled": True, "period": (0.0, 0.1)}
PIXEL_FUSION = {"enabled": True, "period": (0.5, 0.8), "mask_strength": 0.5, "inner_strength": 0.9,
                "smooth_boundary": True, "fidelity_threshold": 0.25, "fidelity_mask": "released",
                "reference_noise": "shared"}
REFERENCE_NOISE = ("shared", "per_key")
COLOR_ADAIN = {"enabled": True, "period": (0.8, 1.0)}


# ----------------------------------------------------------------------------- the editor

def _switch(name: str, defaults: dict, given: dict | None) -> dict:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise EditorError(f"rerender: {name} has unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(given or {})}


@EDITORS.register("rerender")
class RerenderEditor(Editor):
    name = "rerender"
    estimators_used = ("flow", "edges")
    SPEED_PARAMS = ("schedule", "reuse_direct_pass", "sampling_batch_size", "batch_multiple", "attention_kernels",
                    "sampling_graphs", "propagation_batch", "propagation_graphs")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "guidance_scale": P.number(), "x0_strength": P.number(0, 1, low_open=True),
        "key_interval": P.integer(1), "control": P.choice("canny", "hed"), "canny_low": P.number(0),
        "canny_high": P.number(0), "control_scale": P.number(0), "cross_frame_attention": P.boolean(),
        "attention_layers": P.layers("decoder", "all"),
        "shape_fusion": P.fields({"enabled": P.boolean(), "period": P.period()}),
        "pixel_fusion": P.fields({"enabled": P.boolean(), "period": P.period(), "mask_strength": P.number(0, 1),
                                  "inner_strength": P.number(0, 1), "smooth_boundary": P.boolean(),
                                  "fidelity_threshold": P.number(0), "fidelity_mask": P.choice(*MASK_RULES),
                                  "reference_noise": P.choice(*REFERENCE_NOISE)}),
        "color_adain": P.fields({"enabled": P.boolean(), "period": P.period()}),
        "color_correction": P.boolean(), "reuse_direct_pass": P.boolean(), "schedule": P.choice(*SCHEDULES),
        "occlusion": P.choice(*OCCLUSIONS),
        "sampling_batch_size": P.integer(1, optional=True), "batch_multiple": P.integer(1, optional=True),
        "attention_kernels": P.subset(*SDPA_KERNELS, optional=True), "propagation_batch": P.integer(1, optional=True),
        "sampling_graphs": P.boolean(), "propagation_graphs": P.boolean(),
        "propagation": P.fields({"patch_size": P.integer(1), "iterations": P.integer(1),
                                 "uniformity": P.number(0), "poisson": P.boolean(), "edge_guide": P.choice(*EDGE_GUIDES),
                                 "guide_warp": P.choice(*GUIDE_WARPS), "temporal_mask": P.boolean(),
                                 "pos_guide": P.choice(*POS_GUIDES)}, strict=False),
    }

    def __init__(self, backbone, estimators=None, steps: int = 20, guidance_scale: float = 7.5,
                 x0_strength: float = 0.75, key_interval: int = 10, control: str = "canny",
                 canny_low: int = 50, canny_high: int = 100, control_scale: float = 0.7,
                 cross_frame_attention: bool = True, attention_layers: str | list[str] = "decoder",
                 shape_fusion: dict | None = None, pixel_fusion: dict | None = None,
                 color_adain: dict | None = None, color_correction: bool = False,
                 reuse_direct_pass: bool = True, propagation: dict | None = None, schedule: str = "wavefront",
                 sampling_batch_size: int | None = None, batch_multiple: int | None = 2,
                 attention_kernels: Sequence[str] | None = ("flash", "efficient", "math"),
                 sampling_graphs: bool = True, propagation_batch: int | None = None, propagation_graphs: bool = True,
                 added_prompt: str = ADDED_PROMPT,
                 negative_prompt: str = NEGATIVE_PROMPT, key_flow: str = "direct", occlusion: str = "released") -> None:
        super().__init__(backbone, estimators)
        if not 0.0 < x0_strength <= 1.0:
            raise EditorError(f"rerender: x0_strength={x0_strength} must be in (0, 1] (1 = start from pure noise)")
        if int(key_interval) < 1:
            raise EditorError(f"rerender: key_interval={key_interval} must be a positive integer")
        if control not in ("canny", "hed"):
            raise EditorError(f"rerender: control={control!r} is unknown; use 'canny' or 'hed'")
        if schedule not in SCHEDULES:
            raise EditorError(f"rerender: schedule={schedule!r} is unknown; use one of {SCHEDULES}")
        if key_flow not in KEY_FLOWS:
            raise EditorError(f"rerender: key_flow={key_flow!r} is unknown; use one of {KEY_FLOWS}")
        if occlusion not in OCCLUSIONS:
            raise EditorError(f"rerender: occlusion={occlusion!r} is unknown; use one of {OCCLUSIONS}")
        if sampling_batch_size is not None and int(sampling_batch_size) < 1:
            raise EditorError(f"rerender: sampling_batch_size={sampling_batch_size} must be >= 1 (or null = no limit)")
        if batch_multiple is not None and int(batch_multiple) < 1:
            raise EditorError(f"rerender: batch_multiple={batch_multiple} must be >= 1 (or null = no padding)")
        self.steps, self.guidance_scale, self.x0_strength = steps, guidance_scale, x0_strength
        self.key_interval, self.control, self.canny = int(key_interval), control, (canny_low, canny_high)
        self.control_scale = control_scale
        self.cross_frame_attention, self.attention_layers = cross_frame_attention, attention_layers
        self.shape_fusion = _switch("shape_fusion", SHAPE_FUSION, shape_fusion)
        self.pixel_fusion = _switch("pixel_fusion", PIXEL_FUSION, pixel_fusion)
        self.color_adain = _switch("color_adain", COLOR_ADAIN, color_adain)
        self.color_correction, self.reuse_direct_pass = color_correction, reuse_direct_pass
        self.propagation = dict(propagation or {})
        unknown = set(self.propagation) - PROPAGATION_PARAMS
        if unknown:
            raise EditorError(f"rerender: propagation has unknown keys {sorted(unknown)}; known: {sorted(PROPAGATION_PARAMS)}")
        self.schedule = schedule
        self.sampling_batch_size = None if sampling_batch_size is None else int(sampling_batch_size)
        self.batch_multiple = None if batch_multiple is None else int(batch_multiple)
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.sampling_graphs = bool(sampling_graphs)
        self.wavefront_graphs = WavefrontGraphs()
        self.propagation_batch = None if propagation_batch is None else int(propagation_batch)
        self.propagation_graphs = bool(propagation_graphs)
        self.added_prompt, self.negative_prompt, self.key_flow = added_prompt or "", negative_prompt or "", key_flow
        self.occlusion = occlusion

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """The backbone's models; with the wavefront schedule, one UNet + ControlNet call with cross-frame
        attention at each batch shape an edit of `num_frames` frames at `size` makes; then one propagation of
        a 3-frame constant clip (keys 0 and 2, still flows). Constant inputs; nothing is kept."""
        super().warmup(size, num_frames)
        dev, bb = self.device, self.backbone
        if self.schedule == "wavefront":
            latent = torch.zeros(1, 4, *(v // bb.vae_scale for v in size), device=dev, dtype=bb.dtype)
            sampler = KeyFrameSampler(self, DDIM(bb.scheduler(), self.steps), bb.encode_prompt(["", ""]), latent, 0)
            key = KeyFrame(index=0, control=torch.zeros(2, 3, *size, device=dev, dtype=bb.dtype), is_first=True)
            keys = key_frame_indices(num_frames, self.key_interval_for(num_frames))
            i = sampler.start
            with sdpa_kernels(self.attention_kernels), attention_processors(bb.unet, self.processors(sampler.wave_attention)):
                for count in sorted({round_up(len(call), self.batch_multiple) for call in sampler.plan(len(keys))}):
                    # first-key-frame rows: K/V [own; own], the length every call's attention has
                    sampler.wavefront_call([Lane(key, latent, latent)] * count, [(0, i, False)] * count, [i] * count)
        frames, still = torch.full((3, 3, *size), 0.5, device=dev), torch.zeros(2, 2, *size, device=dev)
        occluded = torch.zeros(2, 1, *size, device=dev)
        propagate_keyframes(frames, [0, 2], frames[[0, 2]], still, still, occluded, occluded,
                            cuda_graphs=self.propagation_graphs, **self.propagation)

    def constraint_steps(self) -> dict[str, list[int]]:
        """The DDIM steps at which each constraint runs (empty when switched off): its period's steps
        (ends per PERIOD_ENDS) from the SDEdit start step on."""
        start = start_step(self.x0_strength, self.steps)
        windows = {"cross_frame_attention": list(range(start, self.steps)) if self.cross_frame_attention else []}
        for name, ends in PERIOD_ENDS.items():
            switch = getattr(self, name)
            windows[name] = [i for i in period_steps(switch["period"], self.steps, ends)
                             if start <= i < self.steps] if switch["enabled"] else []
        return windows

    def prompts(self, task: EditTask) -> tuple[str, str]:
        """(prompt, negative prompt) of key-frame translation: the target prompt + ', ' + added_prompt."""
        prompt = task.target_prompt if not self.added_prompt else f"{task.target_prompt}, {self.added_prompt}"
        return prompt, self.negative_prompt

    # -- inputs

    def key_interval_for(self, num_frames: int) -> int:
        """key_interval clamped to the clip: at most T - 1, so that the first and last frames are keys."""
        return max(1, min(self.key_interval, num_frames - 1))

    def processors(self, source) -> dict[str, InjectedKVAttnProcessor]:
        """Cross-frame attention's processors (none when it is off), reading K/V from `source`."""
        if not self.cross_frame_attention:
            return {}
        return {n: InjectedKVAttnProcessor(n, source) for n in self_attention_layers(self.backbone.unet, self.attention_layers)}

    def _flows(self, task: EditTask) -> dict[str, torch.Tensor]:
        try:
            flows = self.estimators.flow(task)
        except EditorError:
            raise  # the estimators' own errors name the video and the way out
        except Exception as e:  # noqa: BLE001 - any estimator failure is reported with the video named
            raise EditorError(
                f"rerender: optical flow for video {task.video.id!r} failed ({type(e).__name__}: {e}); "
                "check the flow estimator (estimators.flow=raft|dis|gt) or give the dataset's ground-truth flow"
            ) from e
        t, _, h, w = task.video.frames.shape
        for key, channels in (("flow_fwd", 2), ("flow_bwd", 2), ("occ_bwd", 1)):
            value = flows.get(key) if isinstance(flows, dict) else None
            if value is None or tuple(value.shape) != (t - 1, channels, h, w):
                got = None if value is None else tuple(value.shape)
                raise EditorError(f"rerender: the flow estimator gave {key}={got} for video {task.video.id!r}; "
                                  f"expected {(t - 1, channels, h, w)}")
        return self._with_occlusion(flows)

    def _with_occlusion(self, flows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`flows` with occ_fwd / occ_bwd by the `occlusion` rule: "released" recomputes them from the flows
        (`vedit.ops.warp.rerender_occlusion`), "estimator" keeps the estimator's (or the dataset's)."""
        if self.occlusion == "estimator":
            return flows
        occ_fwd, occ_bwd = rerender_occlusion(flows["flow_fwd"], flows["flow_bwd"])
        return {**flows, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}

    # -- the edit

    @torch.no_grad()
    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        bb, timer = self.backbone, PhaseTimer(self.backbone.device)
        frames = task.video.frames
        t_count, _, height, width = frames.shape
        key_interval = self.key_interval_for(t_count)
        keys = key_frame_indices(t_count, key_interval)
        prompt, negative = self.prompts(task)
        with timer.phase("preprocessing"):
            if self.control == "hed":
                edges = self.estimators.edges(task, kind="hed")
            else:
                edges = self.estimators.edges(task, kind="canny", low=self.canny[0], high=self.canny[1])
            flow_estimator = self.estimators.flow_method_for(task)
            flows = self._flows(task)
            key_flows = self._key_flows(task, keys, flows)
            text = bb.encode_prompt([negative, prompt])  # [uncond; cond]
        ddim = DDIM(bb.scheduler(), self.steps)
        latent_size = (height // bb.vae_scale, width // bb.vae_scale)
        gen = torch.Generator("cpu").manual_seed(task.seed)
        noise = torch.randn((1, 4, *latent_size), generator=gen).to(bb.device, bb.dtype)
        sampler = KeyFrameSampler(self, ddim, text, noise, task.seed)
        wavefront = self.schedule == "wavefront"
        processors = self.processors(sampler.wave_attention if wavefront else sampler.attention)
        control = edges.float().expand(-1, 3, -1, -1)
        with timer.phase("sampling"):
            inputs = frames
            if self.color_correction:
                inputs = restore_luminosity(match_colour(frames, sampler.free_sample(control[:1])[0]), frames)
            with attention_processors(bb.unet, processors):
                translate = sampler.translate_keys_wavefront if wavefront else sampler.translate_keys
                outputs = translate(keys, inputs, control, key_flows)
        with timer.phase("propagation"):
            result = self._propagate(task, keys, outputs, flows)
        if not torch.isfinite(result).all():
            raise EditorError(f"rerender: the output for video {task.video.id!r} contains NaN/inf; "
                              "run the backbone in float32 or bfloat16 instead of float16")
        return timer.result(result, key_indices=keys, key_interval=key_interval, schedule=self.schedule,
                            unet_calls=sampler.unet_calls, prompt=prompt, negative_prompt=negative,
                            flow_estimator=flow_estimator, key_flow=self.key_flow,
                            constraint_steps=self.constraint_steps())

    def _key_flows(self, task: EditTask, keys: list[int], flows: dict) -> list[tuple]:
        """Per key frame after the first: ((flow, occlusion) to the first key frame, (flow, occlusion)
        to the previous one), on the editor's device; `key_flow` says direct or chained."""
        if self.key_flow == "direct":
            pairs = sorted({(keys[0], k) for k in keys[1:]} | {(a, b) for a, b in zip(keys, keys[1:])})
            direct = self._with_occlusion(self.estimators.flow_between(task, pairs))
            at = {pair: n for n, pair in enumerate(pairs)}

            def pair(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
                n = at[(a, b)]
                return (direct["flow_bwd"][n:n + 1].to(self.device), direct["occ_bwd"][n:n + 1].to(self.device))

            return [None] + [(pair(keys[0], k), pair(keys[n], k)) for n, k in enumerate(keys[1:])]
        bwd, occ = flows["flow_bwd"].to(self.device), flows["occ_bwd"].to(self.device)
        to_first = chain_to_first(bwd, occ)
        return [None] + [(flow_from_correspondence(to_first[k:k + 1]), chained_flow(bwd, occ, k, keys[n]))
                         for n, k in enumerate(keys[1:])]

    def _propagate(self, task: EditTask, keys: list[int], outputs: torch.Tensor, flows: dict) -> torch.Tensor:
        frames = task.video.frames
        if len(keys) == frames.shape[0]:
            return outputs.cpu()
        dev = self.device
        side = {k: flows[k].to(dev) for k in ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd")}
        params = {"seed": task.seed, "chain_batch": self.propagation_batch, "cuda_graphs": self.propagation_graphs,
                  **self.propagation}
        try:
            return propagate_keyframes(frames.to(dev), keys, outputs.to(dev).float(), **side, **params).cpu()
        except torch.OutOfMemoryError as e:
            chains = self.propagation_batch or len(key_chains(keys, frames.shape[0]))
            raise EditorError(f"rerender: propagating {frames.shape[0]} frames of video {task.video.id!r} ran out of "
                              f"GPU memory with {chains} chains per synthesis call; set "
                              "method.params.propagation_batch to fewer (e.g. 4), and "
                              "method.params.propagation_graphs=false: the same frames, less memory") from e


# moved to vedit.editors._rerender; importable from here as before
_Sampler, _Lane = KeyFrameSampler, Lane
__all__ = ["ADDED_PROMPT", "NEGATIVE_PROMPT", "PERIOD_ENDS", "KeyFrame", "KeyFrameAttention", "KeyFrameSampler", "Lane",
           "Pass", "PixelFusion", "RerenderEditor", "StaticKV", "WavefrontAttention", "WavefrontGraphs", "adain",
           "cell_min", "chained_flow", "flat_region", "flow_from_correspondence", "inpainting_rescale", "is_final_pass",
           "key_frame_indices", "match_colour", "period_steps", "pixel_reference", "restore_luminosity",
           "soften_occlusion", "start_step", "wavefront_plan"]
