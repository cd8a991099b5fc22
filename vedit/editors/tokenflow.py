"""TokenFlow (Geyer, Bar-Tal, Bagon, Dekel; ICLR 2024): consistent video editing by propagating the
self-attention outputs ("tokens") of a few jointly edited key frames along the source video's own
feature correspondences. SD 2.1 base; defaults follow the released code (omerbt/TokenFlow, MIT), the
paper's variants are switches.

1. Every frame is DDIM-inverted (guidance 1, the inversion prompt, empty by default) with
   `inversion_steps` (500, the released preprocess; the paper says 1000), keeping its latent at each
   of the `steps` sampling timesteps and the noisiest one: the source trajectory, cached per video,
   backbone, inversion prompt and steps, so every further target prompt on a video skips this phase.
2. Start latent (the released rule): the clean latent re-noised to the first sampling timestep with
   the noise implied by the noisiest inversion latent (`start_latent: inverted` starts from the
   inverted latent at that timestep itself).
3. Every denoising step i (the PnP variant, the released default):
   a. key pass: one key frame per batch of `batch_size` frames (seeded random, or the batch centre).
      The UNet runs on [source latent_i; x_i; x_i] of the key frames with [inversion prompt;
      negative prompt; target prompt]. In every self-attention layer the edit rows attend jointly to
      all key frames (extended attention); plug-and-play injects the source rows' resnet features
      (`up_blocks.1.resnets.1`, steps < pnp_f_t) and self-attention queries/keys (decoder layers but
      the first, steps < pnp_attn_t). Each layer keeps its input and output; the denoised key frames
      themselves are discarded, as in the released code.
   b. propagation pass: all frames go through the UNet with every self-attention output replaced by
      the key frames' outputs at the nearest-neighbour tokens. The NN field is the cosine similarity
      between the frame's and the key frame's source-row self-attention inputs at that layer and step;
      two key frames are blended per frame (`keyframe_pairs`: the released sigmoid weights over the
      key frames of batches b and b-1, or the paper's past/future linear rule).
   c. classifier-free guidance and a DDIM step for all frames from the propagation pass.
   The SDEdit variant skips the injection and starts from the input latents noised to `sdedit_start`.

Two batched UNet calls per step (key frames, then all frames), where the released code makes one per
batch of 8 frames; the NN search is a batched matmul per layer; attention runs through SDPA.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer
from vedit.ops.attention import SDPA_KERNELS, attend, attention_processors, self_attention_layers
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

VARIANTS = ("pnp", "sdedit")
KEYFRAMES = ("random", "fixed")
PAIRINGS = ("released", "nearest")
START_LATENTS = ("released", "inverted")
SDEDIT_NOISE = ("ddim", "random")
NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"  # configs/config_pnp.yaml
PNP_RESNET = "up_blocks.1.resnets.1"  # the resnet whose features plug-and-play injects
PNP_ATTN_SKIP = "up_blocks.1.attentions.0."  # q/k injection in every decoder self-attention but this one


def keyframe_schedule(num_frames: int, batch_size: int, steps: int, mode: str,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(steps, batches) key-frame indices: one per batch of `batch_size` consecutive frames, drawn
    uniformly in the batch at every step ("random") or the batch centre ("fixed")."""
    starts = torch.arange(0, num_frames, batch_size)
    sizes = (num_frames - starts).clamp(max=batch_size)
    if mode == "fixed":
        return (starts + sizes // 2).expand(steps, -1).clone()
    return starts + (torch.rand(steps, len(starts), generator=generator, dtype=torch.float64) * sizes).long()


def keyframe_pairs(keys: torch.Tensor, num_frames: int, batch_size: int, mode: str = "nearest"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame: the two key frames its tokens come from (indices into `keys`) and the weight of the first.

    nearest (the paper): the last key frame at or before the frame and the first at or after it,
      weighted linearly by temporal distance (a key frame takes its own tokens; frames beyond the
      first/last key frame take that one's).
    released (the released code): the key frame of the frame's batch b and of batch b-1, weighted
      sigmoid(d_{b-1} / (d_b + d_{b-1})) by the distances to the two batch centres (batch 0: its own).
    """
    f = torch.arange(num_frames)
    if mode == "nearest":
        k = len(keys)
        before = torch.searchsorted(keys, f, right=True) - 1
        after = torch.searchsorted(keys, f)
        a = torch.where(before < 0, after, before).clamp(0, k - 1)
        b = torch.where(after >= k, before, after).clamp(0, k - 1)
        d_a, d_b = (f - keys[a]).abs().double(), (keys[b] - f).abs().double()
        return a, b, torch.where(a == b, torch.ones_like(d_a), d_b / (d_a + d_b).clamp(min=1))
    batch = f // batch_size
    prev = (batch - 1).clamp(min=0)
    centre = batch_size // 2
    d1 = (f - (batch * batch_size + centre)).abs().double()
    d2 = (f - (prev * batch_size + centre)).abs().double()
    w = torch.where(batch > 0, torch.sigmoid(d2 / (d1 + d2).clamp(min=1)), torch.ones_like(d1))
    return batch, prev, w


def nearest_tokens(query: torch.Tensor, keys: torch.Tensor, max_elements: int = 2**28) -> torch.Tensor:
    """Per frame, the index of the key token with the largest dot product (cosine similarity for unit
    vectors) with each query token: query (n, N, C), keys (n, M, C) -> (n, N). Frames go in chunks so
    the similarity matrix stays bounded."""
    step = max(1, max_elements // (query.shape[1] * keys.shape[1]))
    return torch.cat([torch.bmm(q, k.transpose(1, 2)).argmax(-1) for q, k in zip(query.split(step), keys.split(step))])


def propagate_tokens(feats: torch.Tensor, key_feats: torch.Tensor, key_out: torch.Tensor,
                     pair_a: torch.Tensor, pair_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """TokenFlow's propagation: w * out[a][NN_a(p)] + (1 - w) * out[b][NN_b(p)] for every token p.

    feats (n, N, C): the frames' source features; key_feats (K, M, C); key_out (B, K, M, D) the key
    frames' outputs per branch; pair_a, pair_b (n,) indices into the K key frames; weight (n,) of a.
    Returns (B, n, N, D). NN fields come from the source features; every branch uses the same field.
    """
    m = key_feats.shape[1]
    feats, key_feats = F.normalize(feats, dim=-1), F.normalize(key_feats, dim=-1)
    flat = key_out.flatten(1, 2)  # (B, K*M, D)
    out = None
    for pair, w in ((pair_a, weight), (pair_b, 1 - weight)):
        match = nearest_tokens(feats, key_feats[pair])
        index = (pair.view(-1, 1) * m + match).flatten()
        term = flat.index_select(1, index).view(flat.shape[0], *match.shape, -1) \
            * w.to(flat.dtype).view(1, -1, 1, 1)
        out = term if out is None else out + term
    return out


def extended_attention(attn, x: torch.Tensor, kv: torch.Tensor, inject_qk: bool) -> torch.Tensor:
    """x (3, n, N, C): a layer's input rows [source; uncond; cond]; kv (3, K, M, C): the key frames' inputs.

    Source rows: plain self-attention per frame. Edit rows: every query of the n frames attends to
    all K*M key-frame tokens of its branch; with `inject_qk` queries and keys come from the source
    rows (plug-and-play), values from the branch's own. Returns (3, n, N, C).
    """
    n, tokens, c = x.shape[1:]
    source = attend(attn, x[0], x[0], x[0])
    query = (x[0] if inject_qk else x[1:]).reshape(-1, n * tokens, c).expand(2, -1, -1)
    key = (kv[0] if inject_qk else kv[1:]).reshape(-1, kv.shape[1] * kv.shape[2], c).expand(2, -1, -1)
    edit = attend(attn, query, key, kv[1:].reshape(2, -1, c)).view(2, n, tokens, -1)
    return torch.cat([source[None], edit])


class _Tokens:
    """What the self-attention processors share within one denoising step."""

    def __init__(self) -> None:
        self.mode = "key"  # "key" pass | "propagate" | "attend-keys" (no propagation)
        self.inject_qk = False
        self.inject_resnet = False
        self.frames = torch.empty(0, dtype=torch.long)  # frames of the rows in the current call
        self.pair_a = self.pair_b = self.weight = torch.empty(0)  # per frame, from keyframe_pairs
        self.key_in: dict[str, torch.Tensor] = {}  # layer -> (3, K, N, C) key-pass inputs
        self.key_out: dict[str, torch.Tensor] = {}  # layer -> (3, K, N, C) key-pass outputs


class TokenFlowAttnProcessor:
    """A spatial self-attention layer under TokenFlow: extended attention over the key frames in the
    key pass (kept), propagated key-frame outputs in the propagation pass."""

    def __init__(self, name: str, tokens: _Tokens, pnp_layer: bool) -> None:
        self.name, self.tokens, self.pnp_layer = name, tokens, pnp_layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs) -> torch.Tensor:
        s = self.tokens
        x = hidden_states.unflatten(0, (3, -1))
        inject = self.pnp_layer and s.inject_qk
        if s.mode == "key":
            out = extended_attention(attn, x, x, inject)
            s.key_in[self.name], s.key_out[self.name] = x, out
        elif s.mode == "propagate":
            f = s.frames
            out = propagate_tokens(x[0], s.key_in[self.name][0], s.key_out[self.name],
                                   s.pair_a[f], s.pair_b[f], s.weight[f])
        else:
            out = extended_attention(attn, x, s.key_in[self.name], inject)
        return out.flatten(0, 1)


@contextmanager
def _resnet_injection(unet, tokens: _Tokens) -> Iterator[None]:
    """Plug-and-play feature injection: the resnet's conv2 output of the source rows replaces the
    edit rows' (before the residual sum) while `tokens.inject_resnet` is set."""

    def hook(module, args, output):
        if tokens.inject_resnet:
            source = output[: output.shape[0] // 3]
            return torch.cat([source, source, source])
        return None

    resnet = unet.get_submodule(PNP_RESNET)
    # with backbone.compile=true this block runs eagerly: torch.compile ignores hooks added after it
    compiled, resnet._compiled_call_impl = getattr(resnet, "_compiled_call_impl", None), None
    handle = resnet.conv2.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        resnet._compiled_call_impl = compiled


def epsilon(model_output: torch.Tensor, x_t: torch.Tensor, alpha_t: float, prediction_type: str) -> torch.Tensor:
    """The noise prediction from a UNet output of any diffusers prediction type, at x_t with alpha_t."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0
        return alpha_t**0.5 * model_output + (1 - alpha_t) ** 0.5 * x_t
    if prediction_type == "sample":
        return (x_t - alpha_t**0.5 * model_output) / (1 - alpha_t) ** 0.5
    raise EditorError(f"tokenflow: scheduler prediction_type={prediction_type!r} is not supported; "
                      "use a checkpoint predicting epsilon, v_prediction or sample")


@EDITORS.register("tokenflow")
class TokenFlowEditor(Editor):
    """TokenFlow on SD 2.1 base. See the module docstring for the method."""

    name = "tokenflow"
    SPEED_PARAMS = ("unet_batch", "vae_batch", "attention_kernels")

    def __init__(self, backbone, estimators=None, variant: str = "pnp", steps: int = 50,
                 guidance_scale: float = 7.5, negative_prompt: str = NEGATIVE_PROMPT,
                 inversion_prompt: str | None = "", inversion_steps: int | None = 500, batch_size: int = 8,
                 keyframes: str = "random", propagation: bool = True, pairing: str = "released",
                 start_latent: str = "released",
                 pnp: bool = True, pnp_f_t: float = 0.8, pnp_attn_t: float = 0.5, sdedit_start: float = 0.9,
                 sdedit_noise: str = "ddim", unet_batch: int | None = None, vae_batch: int = 8,
                 attention_kernels: Sequence[str] | None = None, latent_cache: MutableMapping | None = None) -> None:
        super().__init__(backbone, estimators)
        self.check_params({k: v for k, v in locals().items() if k not in ("self", "__class__", *self.INJECTED)})
        self.variant, self.steps, self.guidance_scale = variant, int(steps), float(guidance_scale)
        self.negative_prompt, self.inversion_prompt = negative_prompt, inversion_prompt
        self.inversion_steps, self.batch_size = int(inversion_steps or steps), int(batch_size)
        self.keyframes, self.propagation, self.pairing = keyframes, bool(propagation), pairing
        self.start_latent = start_latent
        self.pnp = bool(pnp) and variant == "pnp"
        self.pnp_f_t, self.pnp_attn_t = float(pnp_f_t), float(pnp_attn_t)
        self.sdedit_start, self.sdedit_noise = float(sdedit_start), sdedit_noise
        self.unet_batch, self.vae_batch = unet_batch, int(vae_batch)
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.latent_cache = latent_cache
        self.layer_names = self_attention_layers(backbone.unet, "all")
        self.pnp_layers = {n for n in self.layer_names
                           if n.startswith("up_blocks.") and not n.startswith(PNP_ATTN_SKIP)}
        self.prediction_type = backbone.scheduler_config.get("prediction_type", "epsilon")
        self._latent_dtype = torch.float64 if backbone.dtype == torch.float64 else torch.float32

    # ---- inputs -------------------------------------------------------------------------------

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Raise EditorError naming the parameter, its value and what is allowed (ParamError with a
        did-you-mean for an unknown key, as every editor)."""
        super().check_params(params)

        def bad(key: str, allowed: str) -> EditorError:
            return EditorError(f"tokenflow: {key}={params[key]!r} is invalid; allowed: {allowed}")

        choices = {"variant": VARIANTS, "keyframes": KEYFRAMES, "pairing": PAIRINGS, "start_latent": START_LATENTS,
                   "sdedit_noise": SDEDIT_NOISE}
        for key, allowed in choices.items():
            if key in params and params[key] not in allowed:
                raise bad(key, " | ".join(allowed))
        for key in ("steps", "batch_size", "vae_batch"):
            if key in params and (not isinstance(params[key], int) or params[key] < 1):
                raise bad(key, "an integer >= 1")
        for key, none in (("inversion_steps", "the sampling steps"), ("unet_batch", "all frames in one call")):
            if params.get(key) is not None and (not isinstance(params[key], int) or params[key] < 1):
                raise bad(key, f"null ({none}) or an integer >= 1")
        for key in ("pnp_f_t", "pnp_attn_t"):
            if key in params and not 0.0 <= float(params[key]) <= 1.0:
                raise bad(key, "a fraction of the schedule in [0, 1]")
        if "guidance_scale" in params and float(params["guidance_scale"]) < 1.0:
            raise bad("guidance_scale", ">= 1.0")
        if "sdedit_start" in params and not 0.0 < float(params["sdedit_start"]) <= 1.0:
            raise bad("sdedit_start", "a fraction of the schedule in (0, 1]")
        if params.get("variant") == "sdedit" and int(params.get("sdedit_start", 0.9) * params.get("steps", 50)) < 2:
            raise bad("sdedit_start", "sdedit_start * steps >= 2 (at least one denoising step)")
        kernels_rule = P.subset(*SDPA_KERNELS, optional=True)
        if "attention_kernels" in params and (allowed := kernels_rule(params["attention_kernels"])):
            raise bad("attention_kernels", allowed)
        if "negative_prompt" in params and not isinstance(params["negative_prompt"], str):
            raise bad("negative_prompt", "a string (may be empty)")
        if "inversion_prompt" in params and params["inversion_prompt"] is not None \
                and not isinstance(params["inversion_prompt"], str):
            raise bad("inversion_prompt", "a string (empty by default) or null for the task's source prompt")

    def check_inputs(self, task: EditTask) -> None:
        super().check_inputs(task)
        in_channels = self.backbone.unet.config.in_channels
        if in_channels != 4:
            raise EditorError(f"tokenflow needs a text-to-image UNet (4 input channels), but backbone family "
                              f"{self.backbone.family!r} has {in_channels}; use method.family=sd21")

    # ---- the method ---------------------------------------------------------------------------

    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        timer = PhaseTimer(self.device)
        inversion_prompt = task.source_prompt if self.inversion_prompt is None else self.inversion_prompt
        with timer.phase("preprocessing"):
            embeds = self.backbone.encode_prompt([inversion_prompt, self.negative_prompt, task.target_prompt])
        with timer.phase("inversion"):
            source, noisiest, cached = self.source_latents(task, inversion_prompt, embeds[:1])
        with timer.phase("sampling"):
            generator = torch.Generator().manual_seed(int(task.seed))
            keys = keyframe_schedule(task.video.num_frames, self.batch_size, self.steps, self.keyframes, generator)
            latents = self.sample(source, embeds, keys, generator, noisiest)
            frames = torch.cat([self.backbone.decode_latents(c).cpu() for c in latents.split(self.vae_batch)])
        first, t = self.first_step(), task.video.num_frames
        return timer.result(frames, variant=self.variant, inversion_cached=cached, first_step=first,
                            inversion_steps=0 if cached else self.inversion_steps,
                            unet_calls=(self.steps - first) * (1 + -(-t // (self.unet_batch or t))),
                            keyframes=keys[first:].tolist())

    def first_step(self) -> int:
        """PnP: 0. SDEdit: the released code keeps timesteps[int(1 - start * steps):], the last
        int(start * steps) - 1 steps (44 of 50 at start 0.9)."""
        return 0 if self.variant == "pnp" else self.steps - (int(self.sdedit_start * self.steps) - 1)

    def source_latents(self, task: EditTask, prompt: str, embeds: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The source trajectory (steps + 1, T, 4, h, w): each frame's inverted latent at every sampling
        timestep, then its clean latent; the noisiest inversion latent (T, 4, h, w), at the inversion's
        last timestep; whether they came from `latent_cache` (which holds them per video, backbone,
        inversion prompt and steps: a second target prompt on a video runs no inversion)."""
        ids = tuple(sorted(self.backbone.ids.items()))
        key = ("tokenflow-inversion", task.video.content_hash(), ids, prompt, self.inversion_steps,
               self.steps, str(self.backbone.dtype))
        if self.latent_cache is not None and key in self.latent_cache:
            entry = self.latent_cache[key]
            return (entry["trajectory"].to(self.device, self._latent_dtype),
                    entry["noisiest"].to(self.device, self._latent_dtype), True)
        x0 = torch.cat([self.backbone.encode_images(c) for c in task.video.chunks(self.vae_batch)])
        # stored in the backbone's dtype (as the released code stores them), so that a fresh and a
        # cached run start from the same values
        trajectory, noisiest = (v.to(self.backbone.dtype) for v in self.invert(x0.to(self._latent_dtype), embeds))
        if self.latent_cache is not None:
            self.latent_cache[key] = {"trajectory": trajectory.cpu(), "noisiest": noisiest.cpu()}
        return trajectory.to(self._latent_dtype), noisiest.to(self._latent_dtype), False

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM inversion (guidance 1) with `inversion_steps`: the latents at the sampling timesteps
        then x0 (steps + 1, T, 4, h, w), and the noisiest latent (T, 4, h, w)."""
        inv = DDIM(self.backbone.scheduler(), self.inversion_steps)
        sampling = DDIM(self.backbone.scheduler(), self.steps).timesteps.tolist()
        position = {int(t): k for k, t in enumerate(inv.timesteps)}
        missing = [t for t in sampling if t not in position]
        if missing:
            raise EditorError(f"tokenflow: inversion_steps={self.inversion_steps} does not pass through the sampling "
                              f"timesteps {missing[:3]} of steps={self.steps}; use a multiple of steps that divides "
                              "the training timesteps (e.g. 50, 100, 250, 500 for 50 steps) or null (= steps)")
        keep = [position[t] for t in sampling] + [self.inversion_steps]  # ... then x0
        out, noisiest = [], []
        for chunk in x0.split(self.unet_batch or len(x0)):
            emb = embeds.expand(len(chunk), -1, -1)
            trajectory = inv.invert(chunk, lambda x, t, i: self._eps(x, t, emb, inv))
            out.append(torch.stack([trajectory[k] for k in keep]))
            noisiest.append(trajectory[0])
        return torch.cat(out, dim=1), torch.cat(noisiest)

    def noisiest_timestep(self) -> int:
        """The timestep of the noisiest inversion latent (999 for 500 inversion steps)."""
        return int(DDIM(self.backbone.scheduler(), self.inversion_steps).timesteps[0])

    @torch.no_grad()
    def sample(self, source: torch.Tensor, embeds: torch.Tensor, keys: torch.Tensor,
               generator: torch.Generator | None = None, noisiest: torch.Tensor | None = None) -> torch.Tensor:
        """Edit all frames: source (steps + 1, T, 4, h, w) trajectory, embeds (3, L, D) [inversion;
        negative; target], keys (steps, K) key frames per step, noisiest (T, 4, h, w) the noisiest
        inversion latent (None: source[0]). Returns the clean latents (T, 4, h, w)."""
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        num_frames, first = source.shape[1], self.first_step()
        x = self.start_latents(source, noisiest if noisiest is not None else source[0], ddim, first, generator)
        tokens = _Tokens()
        processors = {n: TokenFlowAttnProcessor(n, tokens, n in self.pnp_layers) for n in self.layer_names}
        n_resnet, n_attn = int(self.steps * self.pnp_f_t), int(self.steps * self.pnp_attn_t)
        chunks = torch.arange(num_frames, device=self.device).split(self.unet_batch or num_frames)
        with attention_processors(self.backbone.unet, processors), _resnet_injection(self.backbone.unet, tokens):
            for i in range(first, self.steps):
                t = ddim.timesteps[i]
                step_keys = keys[i].to(self.device)
                pairs = keyframe_pairs(keys[i], num_frames, self.batch_size, self.pairing)
                tokens.pair_a, tokens.pair_b, tokens.weight = (p.to(self.device) for p in pairs)
                tokens.inject_resnet, tokens.inject_qk = self.pnp and i < n_resnet, self.pnp and i < n_attn
                tokens.mode = "key"
                self._unet(source[i][step_keys], x[step_keys], t, embeds)
                tokens.mode = "propagate" if self.propagation else "attend-keys"
                eps = []
                for frames in chunks:
                    tokens.frames = frames
                    eps.append(self._guided_eps(source[i][frames], x[frames], t, embeds, ddim))
                tokens.key_in.clear()
                tokens.key_out.clear()
                x = ddim.step(x, torch.cat(eps), i)[0]
        return x

    def start_latents(self, source: torch.Tensor, noisiest: torch.Tensor, ddim: DDIM, first: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The latents sampling starts from, at timesteps[first].

        The released code (get_ddim_eps) takes the noise implied by the noisiest inversion latent,
        eps = (x_N - sqrt(a_N) x0) / sqrt(1 - a_N) at its timestep N, and re-noises the clean latent
        x0 with it: PnP to timesteps[0] (`start_latent: released`; `inverted`: the inverted latent
        at timesteps[0] itself), SDEdit to timesteps[first] (`sdedit_noise: ddim`; `random`: one
        Gaussian noise shared by all frames).
        """
        x0 = source[-1]
        if self.variant == "pnp" and self.start_latent == "inverted":
            return source[0].clone()
        if self.variant == "sdedit" and self.sdedit_noise == "random":
            noise = torch.randn(x0.shape[1:], generator=generator, dtype=x0.dtype).to(x0.device).expand_as(x0)
        else:
            a_n = ddim.alpha(self.noisiest_timestep())
            noise = (noisiest - a_n**0.5 * x0) / (1 - a_n) ** 0.5
        return ddim.add_noise(x0, noise, first)

    # ---- UNet calls ---------------------------------------------------------------------------

    def _unet(self, source: torch.Tensor, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One UNet call on rows [source; x (uncond); x (cond)] with [inversion; negative; target] embeddings."""
        sample = torch.cat([source, x, x]).to(self.backbone.dtype)
        emb = embeds.repeat_interleave(len(x), dim=0)
        return self.backbone.unet(sample, t, encoder_hidden_states=emb).sample.to(x.dtype)

    def _guided_eps(self, source, x, t, embeds, ddim: DDIM) -> torch.Tensor:
        out = self._unet(source, x, t, embeds)[len(x):]
        guided = classifier_free_guidance(out, self.guidance_scale)
        return epsilon(guided, x, ddim.alpha(int(t)), self.prediction_type)

    def _eps(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, ddim: DDIM) -> torch.Tensor:
        out = self.backbone.unet(x.to(self.backbone.dtype), t, encoder_hidden_states=embeds).sample.to(x.dtype)
        return epsilon(out, x, ddim.alpha(int(t)), self.prediction_type)
