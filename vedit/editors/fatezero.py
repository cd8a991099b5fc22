"""FateZero (Qi et al., ICCV 2023): zero-shot video editing by fusing the attention maps of the source
video's DDIM inversion into the edit. SD v1-4; details the paper leaves open follow the released code
(ChenyangQiQi/FateZero, MIT: test_fatezero.py, p2p_ddim_spatial_temporal.py, prompt_attention/).

1. All frames are DDIM-inverted together with the source prompt (guidance 1), keeping the latent of
   every step; the VAE posterior is sampled (seeded by the task seed), as the released code does.
2. Editing samples from the inverted noise with [""; target prompt] and classifier-free guidance.
   In every attention layer with at most `fusion_max_tokens` query tokens (32x32 = 1024, as released:
   at 512x512 the 64x64 level is left alone) the conditional rows are fused with the inversion's
   attention at the same step (the inversion call at that timestep, whose input is the latent one
   step less noisy):
   - self-attention, steps < self_replace_steps * steps: the inversion's attention probabilities
     replace the edit's (values stay the edit's): softmax(Q_src K_src^T) V_edit. With `blend_words`,
     a mask from the inversion's cross-attention to those source words keeps the edit's own
     attention inside it: m * softmax(Q K^T) V + (1 - m) * softmax(Q_src K_src^T) V.
   - cross-attention, steps < cross_replace_steps * (steps + 1): prompt-to-prompt. `refine` (the
     released default): target tokens aligned to a source token (global alignment of the token ids)
     take the source's map, new tokens keep the edit's; `replace` (prompts with the same number of
     words): the source maps moved to the swapped words (a token-to-token matrix); `equalizer`
     scales target words' maps afterwards.
   `attention_source=reconstruction` (released use_inversion_attention: false) fuses the maps of
   the source prompt's own guided sampling from the same noise instead, run beside the edit.
3. Self-attention is spatial-temporal as released (SparseCausalAttention_index [mid],
   least_sc_channel 640): in the UNet levels from `st_attention_from_level` on (SD v1-4: widths
   >= 640) every frame attends to the keys/values of the middle frame; the first level attends within
   its frame. Tune-A-Video's temporal layers are identities on the untuned checkpoint and are left
   out (except that the released pseudo-3D UNet leaves the zero-initialised temporal attention's output
   bias at its random init, a small per-channel constant after each transformer block: not reproduced).

Nothing is stored per layer: each editing UNet call carries the inversion's rows ([source; uncond;
cond] x all frames), so the source attention of a step is recomputed in the same call (the released
code keeps every map of every step, on the CPU for 32x32 layers, which does not fit 50 frames). What
the blend mask needs (the source's per-token cross-attention at the blend layers, averaged over
heads and layers) is kept per inversion step, in half precision. Attention runs through SDPA except
where probabilities are mixed (cross-attention of the fused steps).

Shape editing in the released code loads a Tune-A-Video checkpoint tuned on the video (config/shape);
that is out of scope here: with the base checkpoint it is this editor with blend_words and
blend_threshold 0.3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer
from vedit.ops.attention import SDPA_KERNELS, attend, attention_processors, sdpa_kernels, self_attention_layers
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

CONTROLLERS = ("refine", "replace")
ENCODINGS = ("sample", "mean")
SOURCES = ("inversion", "reconstruction")
MAX_TOKENS = 77
KV_NAMES = ("first", "mid", "last")


# ---- prompt-to-prompt word alignment --------------------------------------------------------------

def word_token_positions(tokenizer, prompt: str) -> list[list[int]]:
    """Token positions (1 = after the start token) of each space-separated word of `prompt`. CLIP's
    tokenizer splits words on their own, so a word's tokens are those it has alone."""
    positions, pos = [], 1
    for word in prompt.split(" "):
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        positions.append([p for p in range(pos, pos + n) if p < MAX_TOKENS - 1])
        pos += n
    return positions


def word_indices(tokenizer, prompt: str, words: Sequence[str]) -> list[int]:
    """Token positions of every occurrence of these words (exact matches of space-separated words)."""
    spans = word_token_positions(tokenizer, prompt)
    return sorted({p for word, span in zip(prompt.split(" "), spans) if word in words for p in span})


def align_tokens(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """Global alignment (match 1, mismatch -1, gap 0) of two token-id sequences; per target token the
    index of its source token, -1 where it is new. Ties go to a gap in the source, then in the target,
    then a (mis)match, as in the released seq_aligner."""
    n, m = len(source), len(target)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 1: target token unmatched, 2: source token unmatched, 3: pair
    move[0, 1:], move[1:, 0] = 1, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            best = max(left, up, diag)
            score[i, j] = best
            move[i, j] = 1 if best == left else 2 if best == up else 3
    out, i, j = [-1] * m, n, m
    while i > 0 or j > 0:
        if move[i, j] == 3:
            i, j = i - 1, j - 1
            out[j] = i
        elif move[i, j] == 1:
            j -= 1
        else:
            i -= 1
    return out


def refinement_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas), each (77,): target token j takes the source map at mapper[j] where alphas[j]
    is 1, keeps its own where 0 (a new token). Padding positions map to themselves."""
    src, tgt = tokenizer(source).input_ids[:MAX_TOKENS], tokenizer(target).input_ids[:MAX_TOKENS]
    aligned = align_tokens(src, tgt)
    mapper = torch.arange(MAX_TOKENS)
    alphas = torch.ones(MAX_TOKENS)
    mapper[: len(tgt)] = torch.tensor([max(a, 0) for a in aligned])
    alphas[: len(tgt)] = torch.tensor([float(a >= 0) for a in aligned])
    return mapper, alphas


def replacement_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(77, 77) matrix M with target map n = sum_w source map w * M[w, n], for prompts with the same
    number of words: tokens of unchanged words map one to one; a swapped word's source tokens spread
    evenly over its target tokens. After the last swapped word the released code maps position j to
    position j (not shifted by a difference in token counts); so does this."""
    sw, tw = source.split(" "), target.split(" ")
    if len(sw) != len(tw):
        raise EditorError(f"fatezero: controller=replace needs prompts with the same number of words, got "
                          f"{source!r} ({len(sw)}) and {target!r} ({len(tw)}); use controller=refine")
    s_pos, t_pos = word_token_positions(tokenizer, source), word_token_positions(tokenizer, target)
    swapped = [(s_pos[k], t_pos[k]) for k in range(len(tw)) if tw[k] != sw[k] and s_pos[k] and t_pos[k]]
    m = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    i = j = k = 0
    while i < MAX_TOKENS and j < MAX_TOKENS:
        if k < len(swapped) and swapped[k][0][0] == i:
            s, t = swapped[k]
            if len(s) == len(t):
                m[s, t] = 1.0
            else:
                m[torch.tensor(s)[:, None], torch.tensor(t)[None, :]] = 1.0 / len(t)
            i, j, k = i + len(s), j + len(t), k + 1
        elif k < len(swapped):
            m[i, j] = 1.0
            i, j = i + 1, j + 1
        else:
            m[j, j] = 1.0
            i, j = i + 1, j + 1
    return m


# ---- blend mask -----------------------------------------------------------------------------------

def blend_mask(word_maps: torch.Tensor, out_size: tuple[int, int], threshold: float) -> torch.Tensor:
    """The released SpatialBlender's mask: word_maps (f, h, w) (cross-attention to the blend words, summed
    over them, averaged over heads and layers) -> 3x3 max-pool -> nearest resize to out_size -> divided
    by each frame's maximum -> > threshold. Returns (f, H, W) in {0, 1}: 1 keeps the edit's own attention."""
    maps = F.max_pool2d(word_maps[None].float(), 3, 1, 1)
    maps = F.interpolate(maps, size=out_size)[0]
    maps = maps / maps.amax(dim=(-2, -1), keepdim=True)
    return maps.gt(threshold).float()


# ---- attention --------------------------------------------------------------------------------------

class _Fusion:
    """What the attention processors share during one UNet call.

    Rows are laid out group-major: group g holds all `frames` frames ([source; uncond; cond] when
    editing, [uncond; source; uncond; cond] with attention_source=reconstruction, [source] when
    inverting); `source` and `cond` name the groups fusion reads from and writes to."""

    def __init__(self, frames: int, max_tokens: int | None) -> None:
        self.frames = frames
        self.max_tokens = max_tokens
        self.source: int | None = None  # group index of the inversion rows, or None
        self.cond: int | None = None  # group index of the edit's conditional rows
        self.self_on = False
        self.cross_alpha = 0.0
        self.masks: dict[int, torch.Tensor] = {}  # query tokens -> (f * N, 1) blend mask
        self.record: list[torch.Tensor] | None = None  # inversion: per blend layer (f, N, 77) head-mean maps
        self.mapper: torch.Tensor | None = None  # refine: (77,) long; replace: (77, 77)
        self.alphas: torch.Tensor | None = None  # refine only
        self.equalizer: torch.Tensor | None = None  # (77,) or None

    def fused(self, tokens: int) -> bool:
        return self.max_tokens is None or tokens <= self.max_tokens


def _probs(attn, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit cross-attention: x (n, C) queries, context (L, D) -> probs (heads, n, L) (at least float32)
    and the values (heads, L, d)."""
    h = attn.heads
    q = attn.to_q(x).view(x.shape[0], h, -1).transpose(0, 1)
    k = attn.to_k(context).view(context.shape[0], h, -1).transpose(0, 1)
    v = attn.to_v(context).view(context.shape[0], h, -1).transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2))
    return (scores.to(torch.promote_types(scores.dtype, torch.float32)) * attn.scale).softmax(-1), v


def _out(attn, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.bmm(probs.to(v.dtype), v).transpose(0, 1).flatten(1)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class FateZeroAttnProcessor:
    """A spatial attention layer (attn1 or attn2) of the UNet under FateZero's fusion."""

    def __init__(self, name: str, state: _Fusion, cross: bool, kv_frames: Sequence[str | int] | None,
                 blend_layer: bool) -> None:
        self.name, self.state, self.cross = name, state, cross
        self.kv_frames, self.blend_layer = kv_frames, blend_layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask=None, temb=None, **kwargs) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError(f"{self.name}: FateZero expects a transformer block's attention")
        s = self.state
        x = hidden_states.unflatten(0, (-1, s.frames))  # (G, f, N, C)
        if self.cross:
            return self._cross(attn, x, encoder_hidden_states.unflatten(0, (-1, s.frames))[:, 0]).flatten(0, 1)
        return self._self(attn, x).flatten(0, 1)

    # spatial-temporal self-attention: keys/values from the chosen frames (None: the frame itself)
    def _kv(self, x: torch.Tensor) -> torch.Tensor:
        f = x.shape[1]
        if self.kv_frames is None:
            return x
        fixed = {"first": 0, "mid": (f - 1) // 2, "last": f - 1}
        if all(isinstance(k, str) for k in self.kv_frames):
            return torch.cat([x[:, fixed[k]] for k in self.kv_frames], dim=1)  # (G, M, C), shared by all frames
        idx = [torch.full((f,), fixed[k]) if isinstance(k, str) else (torch.arange(f) + k).clamp(0, f - 1)
               for k in self.kv_frames]
        return torch.cat([x[:, i.to(x.device)] for i in idx], dim=2)  # (G, f, M, C)

    @staticmethod
    def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g, f, n, c = q.shape
        if k.ndim == 3:  # every frame attends to the same tokens: one sequence of f * N queries per group
            return attend(attn, q.reshape(g, f * n, c), k, v).view(g, f, n, -1)
        return attend(attn, q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)).view(g, f, n, -1)

    def _self(self, attn, x: torch.Tensor) -> torch.Tensor:
        s = self.state
        kv = self._kv(x)
        e, src = s.cond, s.source
        if not (s.self_on and src is not None and e is not None and s.fused(x.shape[2])):
            return self._attend(attn, x, kv, kv)
        fused = self._attend(attn, x[src:src + 1], kv[src:src + 1], kv[e:e + 1])[0]
        mask = s.masks.get(x.shape[2])
        keep = [g for g in range(x.shape[0]) if g != e or mask is not None]
        plain = dict(zip(keep, self._attend(attn, x[keep], kv[keep], kv[keep]).unbind(0)))
        if mask is not None:
            mask = mask.view(x.shape[1], x.shape[2], 1).to(fused.dtype)
            fused = mask * plain[e] + (1 - mask) * fused
        plain[e] = fused
        return torch.stack([plain[g] for g in range(x.shape[0])])

    def _cross(self, attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        s = self.state
        g, f, n, c = x.shape
        record = s.record is not None and self.blend_layer
        mix = s.cross_alpha > 0 and s.source is not None and s.cond is not None and s.fused(n)
        if not (record or mix):
            return attend(attn, x.reshape(g, f * n, c), context, context).view(g, f, n, -1)
        out = []
        src_probs = None
        if s.source is not None:
            src_probs, v = _probs(attn, x[s.source].reshape(f * n, c), context[s.source])
            if record:
                s.record.append(src_probs.mean(0).view(f, n, -1).half())
        for k in range(g):
            if k == s.source:
                out.append(_out(attn, src_probs, v))
            elif k == s.cond and mix:
                probs, v_k = _probs(attn, x[k].reshape(f * n, c), context[k])
                out.append(_out(attn, self.mix(src_probs, probs), v_k))
            else:
                out.append(attend(attn, x[k].reshape(1, f * n, c), context[k:k + 1], context[k:k + 1])[0])
        return torch.stack(out).view(g, f, n, -1)

    def mix(self, source: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        """Prompt-to-prompt on probabilities (heads, n, 77): refine or replace, equalizer, then the
        step's cross-replace weight."""
        s = self.state
        if s.mapper.ndim == 1:
            a = s.alphas.to(edit)
            mixed = source[..., s.mapper.to(edit.device)] * a + edit * (1 - a)
        else:
            mixed = source @ s.mapper.to(edit)
        if s.equalizer is not None:
            mixed = mixed * s.equalizer.to(edit)
        return s.cross_alpha * mixed + (1 - s.cross_alpha) * edit


def _level(name: str, levels: int) -> int:
    """UNet resolution level of a layer (0 = full latent resolution)."""
    if name.startswith("mid_block"):
        return levels - 1
    block = int(re.match(r"(down|up)_blocks\.(\d+)", name).group(2))
    return block if name.startswith("down") else levels - 1 - block


def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str)  # lists, tuples and OmegaConf's ListConfig


def _kv_rule(v: Any) -> str | None:
    ok = _is_list(v) and len(v) > 0 and all(
        k in KV_NAMES or (isinstance(k, int) and not isinstance(k, bool)) for k in v)
    return None if ok else f"a non-empty list of {list(KV_NAMES)} or integer frame offsets"


def _words_rule(v: Any) -> str | None:
    ok = v is None or (_is_list(v) and len(v) > 0 and all(isinstance(w, str) and w for w in v))
    return None if ok else "null or a non-empty list of words of the source prompt"


def _equalizer_rule(v: Any) -> str | None:
    ok = v is None or (isinstance(v, Mapping) and len(v) > 0 and all(
        isinstance(k, str) and P.number(0)(x) is None for k, x in v.items()))
    return None if ok else "null or a mapping {word of the target prompt: factor >= 0}"


@EDITORS.register("fatezero")
class FateZeroEditor(Editor):
    """FateZero on SD v1-4. See the module docstring for the method."""

    name = "fatezero"
    SPEED_PARAMS = ("vae_batch", "attention_kernels")
    PARAMS = {
        "steps": P.integer(1), "guidance_scale": P.number(1.0), "cross_replace_steps": P.number(0, 1),
        "self_replace_steps": P.number(0, 1), "controller": P.choice(*CONTROLLERS), "equalizer": _equalizer_rule,
        "blend_words": _words_rule, "blend_threshold": P.number(0), "fusion_max_tokens": P.integer(1, optional=True),
        "st_attention": _kv_rule, "st_attention_from_level": P.integer(0),
        "attention_source": P.choice(*SOURCES), "encode": P.choice(*ENCODINGS),
        "vae_batch": P.integer(1), "attention_kernels": P.subset(*SDPA_KERNELS, optional=True),
    }

    def __init__(self, backbone, estimators=None, steps: int = 50, guidance_scale: float = 7.5,
                 cross_replace_steps: float = 0.8, self_replace_steps: float = 0.8, controller: str = "refine",
                 equalizer: Mapping[str, float] | None = None, blend_words: Sequence[str] | None = None,
                 blend_threshold: float = 0.3, fusion_max_tokens: int | None = 1024,
                 st_attention: Sequence[str | int] = ("mid",), st_attention_from_level: int = 1,
                 attention_source: str = "inversion", encode: str = "sample", vae_batch: int = 8,
                 attention_kernels: Sequence[str] | None = None, latent_cache: MutableMapping | None = None) -> None:
        super().__init__(backbone, estimators)
        self.check_params({k: v for k, v in locals().items() if k not in ("self", "__class__", *self.INJECTED)})
        self.steps, self.guidance_scale = int(steps), float(guidance_scale)
        self.cross_replace_steps, self.self_replace_steps = float(cross_replace_steps), float(self_replace_steps)
        self.controller = controller
        self.equalizer = dict(equalizer) if equalizer else None
        self.blend_words = list(blend_words) if blend_words else None
        self.blend_threshold = float(blend_threshold)
        self.fusion_max_tokens = fusion_max_tokens
        self.st_attention = [k if isinstance(k, str) else int(k) for k in st_attention]
        self.st_attention_from_level = int(st_attention_from_level)
        self.attention_source = attention_source
        if attention_source == "reconstruction" and self.blending:
            raise EditorError("fatezero: attention_source=reconstruction with blend_words is not supported (the "
                              "blend mask comes from the inversion); use attention_source=inversion")
        self.encode, self.vae_batch = encode, int(vae_batch)
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.latent_cache = latent_cache
        unet = backbone.unet
        self.levels = len(unet.config.block_out_channels)
        self.self_layers = self_attention_layers(unet, "all")
        # the released mask reads down_cross[2:4] + up_cross[:3]: at 512x512, the cross-attention of the
        # second-lowest level (down_blocks.2, up_blocks.1)
        blend_blocks = (f"down_blocks.{self.levels - 2}.", "up_blocks.1.")
        self.blend_layers = [n[:-1] + "2" for n in self.self_layers if n.startswith(blend_blocks)]
        self._latent_dtype = torch.float64 if backbone.dtype == torch.float64 else torch.float32

    # ---- schedule -----------------------------------------------------------------------------

    def self_window(self) -> range:
        """Steps whose self-attention is the inversion's (released: int(steps * self_replace_steps))."""
        return range(0, int(self.steps * self.self_replace_steps))

    def cross_window(self) -> range:
        """Steps whose cross-attention is fused (released: int((steps + 1) * cross_replace_steps))."""
        return range(0, int((self.steps + 1) * self.cross_replace_steps))

    @property
    def blending(self) -> bool:
        """A blend mask can be non-zero (the released configs' blend_th [2, 2] never is: maps are <= 1)."""
        return self.blend_words is not None and self.blend_threshold < 1.0

    # ---- the method ---------------------------------------------------------------------------

    def check_inputs(self, task: EditTask) -> None:
        super().check_inputs(task)
        if self.backbone.unet.config.in_channels != 4:
            raise EditorError(f"fatezero needs a text-to-image UNet (4 input channels), but backbone family "
                              f"{self.backbone.family!r} has {self.backbone.unet.config.in_channels}; "
                              "use method.family=sd14")

    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        timer = PhaseTimer(self.device)
        with timer.phase("preprocessing"):
            uncond, source, target = self.backbone.encode_prompt(["", task.source_prompt, task.target_prompt]).chunk(3)
            controls = self.prompt_controls(task.source_prompt, task.target_prompt)
        with timer.phase("inversion"):
            trajectory, maps, cached = self.inversion(task, source)
        with timer.phase("sampling"):
            latents = self.sample(trajectory, maps, torch.cat([source, uncond, target]), controls)
            frames = torch.cat([self.backbone.decode_latents(c).cpu() for c in latents.split(self.vae_batch)])
        return timer.result(frames, inversion_cached=cached, controller=controls["controller"],
                            self_steps=len(self.self_window()), cross_steps=len(self.cross_window()),
                            unet_calls=self.steps * (1 + (not cached)),
                            attention_source=self.attention_source)

    def prompt_controls(self, source: str, target: str) -> dict[str, Any]:
        """Word alignment, equalizer and blend tokens for a prompt pair. `replace` needs the same number of
        words; otherwise the released code falls back to refine, and so does this."""
        tok = self.backbone.tokenizer
        replace = self.controller == "replace" and len(source.split(" ")) == len(target.split(" "))
        out: dict[str, Any] = {"controller": "replace" if replace else "refine", "alphas": None, "equalizer": None,
                               "blend_tokens": None}
        if replace:
            out["mapper"] = replacement_mapper(tok, source, target)
        else:
            out["mapper"], out["alphas"] = refinement_mapper(tok, source, target)
        if self.equalizer:
            eq = torch.ones(MAX_TOKENS)
            for word, value in self.equalizer.items():
                eq[word_indices(tok, target, [word])] = float(value)
            out["equalizer"] = eq
        if self.blending:
            idx = word_indices(tok, source, self.blend_words)
            if not idx:
                raise EditorError(f"fatezero: blend_words={self.blend_words} do not occur in the source prompt "
                                  f"{source!r}; name words of the source prompt (space-separated, exact)")
            out["blend_tokens"] = torch.tensor(idx)
        return out

    # ---- inversion ----------------------------------------------------------------------------

    def inversion(self, task: EditTask, source_embeds: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(trajectory (steps + 1, f, 4, h, w): the latent sampling step i starts from, then x0; blend maps
        (steps, f, N, 77) half precision or None; whether it came from `latent_cache`)."""
        ids = tuple(sorted(self.backbone.ids.items()))
        key = ("fatezero-inversion", task.video.content_hash(), ids, task.source_prompt, self.steps,
               str(self.backbone.dtype), tuple(self.st_attention), self.st_attention_from_level, self.encode,
               int(task.seed) if self.encode == "sample" else None, self.blending)
        if self.latent_cache is not None and key in self.latent_cache:
            entry = self.latent_cache[key]
            maps = entry.get("maps")
            return entry["trajectory"].to(self.device, self._latent_dtype), \
                None if maps is None else maps.to(self.device), True
        x0 = self.encode_video(task)
        trajectory, maps = self.invert(x0.to(self._latent_dtype), source_embeds)
        if self.latent_cache is not None:
            self.latent_cache[key] = {"trajectory": trajectory.cpu(),
                                      **({} if maps is None else {"maps": maps.cpu()})}
        return trajectory, maps, False

    @torch.no_grad()
    def encode_video(self, task: EditTask) -> torch.Tensor:
        """Scaled latents of all frames: the VAE posterior's mean, or a sample with one noise draw for the
        whole video from the task seed (the same latents for any vae_batch)."""
        bb = self.backbone
        means, stds = [], []
        for chunk in task.video.chunks(self.vae_batch):
            dist = bb.vae.encode(chunk.to(bb.device, bb.dtype) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        z = torch.cat(means)
        if self.encode == "sample":
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(task.seed)), dtype=torch.float32)
            z = z + torch.cat(stds) * noise.to(z)
        return z * bb.vae.config.scaling_factor

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, source_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DDIM inversion of all frames at once (guidance 1, spatial-temporal attention), recording the
        blend layers' head-mean cross-attention per step when a blend mask can be non-zero."""
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        f = x0.shape[0]
        state = _Fusion(f, self.fusion_max_tokens)
        state.source = 0
        maps: list[torch.Tensor | None] = [None] * self.steps
        emb = source_embeds.expand(f, -1, -1)

        def eps(x, t, i):
            state.record = [] if self.blending else None
            out = self._unet(x, t, emb)
            if state.record is not None:
                maps[i] = torch.stack(state.record).float().mean(0).half()
            return out

        with self._processors(state):
            trajectory = torch.stack(ddim.invert(x0, eps))
        return trajectory, (torch.stack(maps) if self.blending else None)

    # ---- editing ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, trajectory: torch.Tensor, maps: torch.Tensor | None, embeds: torch.Tensor,
               controls: Mapping[str, Any]) -> torch.Tensor:
        """Edit from trajectory[0] with embeds [source; uncond; target] (3, L, D); returns clean latents."""
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        f = trajectory.shape[1]
        state = _Fusion(f, self.fusion_max_tokens)
        state.mapper, state.alphas, state.equalizer = controls["mapper"], controls["alphas"], controls["equalizer"]
        self_steps, cross_steps = self.self_window(), self.cross_window()
        x = trajectory[0].clone()
        x_rec = x.clone()  # attention_source=reconstruction: the source prompt's own sampling
        last_fused = max(len(self_steps), len(cross_steps))
        rec = self.attention_source == "reconstruction"
        with self._processors(state):
            for i in range(self.steps):
                state.self_on, state.cross_alpha = i in self_steps, float(i in cross_steps)
                with_source = i < last_fused
                state.masks = self.masks(maps[i], controls["blend_tokens"], x.shape[-2:]) \
                    if state.self_on and maps is not None else {}
                if not with_source:
                    state.source, state.cond, rows, emb = None, 1, [x, x], embeds[1:]
                elif rec:  # rows [uncond; source] of the reconstruction, then the edit's
                    state.source, state.cond, rows, emb = 1, 3, [x_rec, x_rec, x, x], embeds[[1, 0, 1, 2]]
                else:  # the inversion's call at this timestep, then the edit's rows
                    state.source, state.cond, rows, emb = 0, 2, [trajectory[i + 1], x, x], embeds
                out = self._unet(torch.cat(rows), ddim.timesteps[i], emb.repeat_interleave(f, dim=0))
                if with_source and rec:
                    x_rec = ddim.step(x_rec, classifier_free_guidance(out[:2 * f], self.guidance_scale), i)[0]
                eps = classifier_free_guidance(out[-2 * f:], self.guidance_scale)
                x = ddim.step(x, eps, i)[0]
        return x

    def masks(self, maps: torch.Tensor, tokens: torch.Tensor, latent: tuple[int, int]) -> dict[int, torch.Tensor]:
        """Blend masks per fused self-attention resolution from one step's maps (f, N, 77)."""
        h, w = latent
        lo = 2 ** (self.levels - 2)
        word = maps[..., tokens.to(maps.device)].float().sum(-1).view(maps.shape[0], -(-h // lo), -(-w // lo))
        out = {}
        for level in range(self.levels):
            size = (-(-h // 2**level), -(-w // 2**level))
            if self.fusion_max_tokens is None or size[0] * size[1] <= self.fusion_max_tokens:
                out[size[0] * size[1]] = blend_mask(word, size, self.blend_threshold).flatten()
        return out

    # ---- UNet plumbing ------------------------------------------------------------------------

    def _processors(self, state: _Fusion):
        procs = {}
        for name in self.self_layers:
            level = _level(name, self.levels)
            kv = self.st_attention if level >= self.st_attention_from_level else None
            procs[name] = FateZeroAttnProcessor(name, state, False, kv, False)
            cross = name[:-1] + "2"
            procs[cross] = FateZeroAttnProcessor(cross, state, True, None, cross in self.blend_layers)
        return attention_processors(self.backbone.unet, procs)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        return self.backbone.unet(x.to(self.backbone.dtype), t, encoder_hidden_states=embeds).sample.to(x.dtype)

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """The backbone's models, then one inversion call and one fused editing call of all `num_frames`
        frames at `size` (the batch shapes every step of an edit has). Constant inputs; nothing is kept."""
        super().warmup(size, num_frames)
        bb, f = self.backbone, num_frames
        h, w = (v // bb.vae_scale for v in size)
        with sdpa_kernels(self.attention_kernels):
            bb.decode_latents(bb.encode_images(torch.full((min(f, self.vae_batch), 3, *size), 0.5)))
            emb = bb.encode_prompt(["", "a"])
            zeros = torch.zeros(f, 4, h, w, device=self.device, dtype=self._latent_dtype)
            t = torch.tensor(500, device=self.device)
            state = _Fusion(f, self.fusion_max_tokens)
            state.mapper, state.alphas = torch.arange(MAX_TOKENS), torch.ones(MAX_TOKENS)
            with self._processors(state):
                state.source = 0
                self._unet(zeros, t, emb[1:].expand(f, -1, -1))
                state.cond, state.self_on, state.cross_alpha = 2, True, 1.0
                self._unet(torch.cat([zeros] * 3), t, emb[[1, 0, 1]].repeat_interleave(f, dim=0))
