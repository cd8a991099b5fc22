"""Building the diffusion components an editor needs: `paper`, `tiny` or `random`.

- paper:  the checkpoints each paper used, via `from_pretrained` (Hub ids or local paths);
          offline with no local copy it fails before any work, naming the model id.
- tiny:   the same diffusers/transformers classes at tiny sizes, seeded, for tests and demos.
- random: full-size architectures with random weights, for GPU performance benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from vedit.backbones import architectures as arch
from vedit.backbones.weights import CONTROLNET_HED, PAPER_WEIGHTS, SINGLE_FILE_CONFIG, SINGLE_FILE_SUFFIXES
from vedit.errors import error_summary

KINDS = ("paper", "tiny", "random")
SINGLE_FILE_PARTS = ("unet", "vae", "text_encoder")  # what a single-file checkpoint (backbone.paths.checkpoint) holds
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class BackboneUnavailable(RuntimeError):
    """The `paper` weights are not on this machine and cannot be downloaded."""


@dataclass
class Backbone:
    kind: str
    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    controlnet: Any = None
    motion_adapter: Any = None
    depth_estimator: Any = None
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def describe(self) -> dict:
        """What a result record stores about the backbone."""
        return {"kind": self.kind, "family": self.family, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device), "ids": dict(self.ids)}

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Text embeddings (B, 77, D) as the UNet's cross-attention expects them."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents (B, 4, H/8, W/8); the posterior mean by default."""
        x = images.to(self.device, self.dtype) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1] (float32)."""
        x = self.vae.decode(latents.to(self.dtype) / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], batch: int = 2) -> None:
        """Call every component once on constant inputs at image `size` (H, W).

        A fresh CUDA process pays one-time set-up on each model's first call (lazy kernel loading,
        cuBLAS/cuDNN handles and plans: ~0.5 s per model on an H200); after this, a run's first cell
        costs what later cells do. No random numbers are drawn and nothing is kept.
        """
        from vedit.estimators.depth import dpt_depth

        h, w = size
        text = self.encode_prompt([""]).expand(batch, -1, -1)
        latents = self.encode_images(torch.full((1, 3, h, w), 0.5)).expand(batch, -1, -1, -1)
        self.decode_latents(latents[:1])
        sample = latents.new_zeros(batch, self.unet.config.in_channels, *latents.shape[-2:])
        t = torch.full((batch,), 500, device=self.device)
        residuals = {}
        if self.controlnet is not None:
            hint = torch.zeros(batch, 3, h, w, device=self.device, dtype=self.dtype)
            down, mid = self.controlnet(latents, t, encoder_hidden_states=text, controlnet_cond=hint,
                                        return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        self.unet(sample, t, encoder_hidden_states=text, **residuals)
        if self.depth_estimator is not None:
            dpt_depth(torch.full((1, 3, h, w), 0.5), self.depth_estimator)


def build_backbone(kind: str, family: str, device: str | torch.device = "cpu", dtype: str = "float32",
                   seed: int = 0, paths: dict[str, str] | None = None, controlnet: str = "canny",
                   local_files_only: bool | None = None) -> Backbone:
    """Build the components of `family` ("sd2-depth", "sd15-controlnet", "sd15-animatediff", "sd15", "sd21", "sd14")."""
    if kind not in KINDS:
        raise ValueError(f"backbone kind={kind!r} is unknown; choose one of {KINDS}")
    if family not in arch.FAMILIES:
        raise ValueError(f"backbone family={family!r} is unknown; choose one of {sorted(arch.FAMILIES)}")
    if dtype not in DTYPES:
        raise ValueError(f"backbone dtype={dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    device = torch.device(device)
    torch_dtype = DTYPES[dtype]
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # silence the per-module ".to(dtype)" notices
    if kind == "paper":
        parts = _load_paper(family, paths or {}, controlnet, local_files_only)
    else:
        parts = _build_from_config(kind, family, device, seed)
    for name, module in parts.items():
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    if "depth_estimator" in parts:  # DPT runs in float32: its output feeds a normalisation
        parts["depth_estimator"].to(torch.float32)
    # a checkpoint's own scheduler config (prediction type, betas) where the family lists one
    scheduler_config = dict(parts.pop("scheduler", None) or arch.SCHEDULER)
    return Backbone(kind=kind, family=family, device=device, dtype=torch_dtype,
                    scheduler_config=scheduler_config, **parts)


def _build_from_config(kind: str, family: str, device: torch.device, seed: int) -> dict:
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

    from vedit.backbones.tokenizer import clip_tokenizer

    spec = (arch.TINY if kind == "tiny" else arch.FAMILIES)[family]
    vae_cfg = arch.TINY_VAE if kind == "tiny" else arch.VAE
    # Random full-size models are initialised directly on the target device (seconds, not minutes).
    build_device = device if kind == "random" else torch.device("cpu")
    torch.manual_seed(seed)
    with build_device:
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**spec["unet"]),
            "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**spec["text"])),
        }
        if spec.get("controlnet"):
            parts["controlnet"] = ControlNetModel.from_unet(parts["unet"])
        if "motion_adapter" in spec:
            parts["motion_adapter"] = MotionAdapter(**spec["motion_adapter"])
        if "depth_estimator" in spec:
            parts["depth_estimator"] = DPTForDepthEstimation(DPTConfig(**spec["depth_estimator"]))
    parts["tokenizer"] = clip_tokenizer()
    parts["ids"] = {k: f"{kind}:{family}:{k}" for k in parts if k != "tokenizer"}
    return parts


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false")


def _load_paper(family: str, paths: dict[str, str], controlnet: str, local_files_only: bool | None) -> dict:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, DPTForDepthEstimation

    loaders = {name: cls.from_pretrained for name, cls in (
        ("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel),
        ("tokenizer", CLIPTokenizer), ("controlnet", ControlNetModel), ("motion_adapter", MotionAdapter),
        ("depth_estimator", DPTForDepthEstimation))}
    loaders["scheduler"] = DDIMScheduler.load_config  # the config dict: editors build their DDIM from it
    entries = dict(PAPER_WEIGHTS[family])
    if controlnet == "hed" and "controlnet" in entries:
        entries["controlnet"] = (CONTROLNET_HED, None)
    local_only = _offline() if local_files_only is None else local_files_only
    parts: dict[str, Any] = {"ids": {}}
    single_files: dict[str, Any] = {}  # single-file checkpoint -> its loaded pipeline
    for name, (model_id, subfolder) in entries.items():
        if name in SINGLE_FILE_PARTS and "checkpoint" in paths and name not in paths:
            model_id, subfolder = str(paths["checkpoint"]), name  # a single file, or a diffusers repo / folder
        source = str(paths.get(name, model_id))
        kwargs = {"subfolder": subfolder} if subfolder and source == model_id else {}
        try:
            if source.endswith(SINGLE_FILE_SUFFIXES) and name in SINGLE_FILE_PARTS:
                if source not in single_files:
                    single_files[source] = _load_single_file(source, paths.get("config", SINGLE_FILE_CONFIG),
                                                             local_only)
                parts[name] = getattr(single_files[source], name)
            else:
                parts[name] = loaders[name](source, local_files_only=local_only, **kwargs)
        except Exception as e:  # noqa: BLE001 - hub, OS and parse errors all mean "not available"
            raise BackboneUnavailable(
                f"backbone=paper needs {name} weights {source!r}"
                + (f" (subfolder {subfolder!r})" if kwargs else "")
                + f" and could not load them: {error_summary(e)}\n"
                "Ways out: (1) put the model in the Hugging Face cache (set HF_HOME to where it is, or run "
                f"`huggingface-cli download {_download_args(model_id)}` on a machine with network and copy the "
                "cache); "
                f"(2) point to a local copy with backbone.paths.{name}=/path/to/model (a diffusers folder, or a "
                "single .safetensors checkpoint for unet/vae/text_encoder); "
                "(3) run without real weights with backbone=tiny (CPU, for tests) or backbone=random (GPU, for speed)."
            ) from e
        parts["ids"][name] = source
    return parts


def _download_args(model_id: str) -> str:
    """`huggingface-cli download` arguments for a Hub id or a huggingface.co file URL."""
    prefix = "https://huggingface.co/"
    if model_id.startswith(prefix) and "/blob/" in model_id:
        repo, _, file = model_id[len(prefix):].partition("/blob/")
        return f"{repo} {file.partition('/')[2]}"
    return model_id


def _load_single_file(path: str, config: str, local_only: bool):
    """An SD 1.x single-file checkpoint (e.g. Chilloutmix) as a diffusers pipeline, on the CPU."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=local_only,
                                                    safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
