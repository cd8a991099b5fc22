"""Weights as a separate registry: which checkpoints the `paper` backbone loads per family.

Each entry is a Hub id (or a local path set through the `backbone.paths` config); `subfolder`
follows the diffusers repository layout. A source ending in .safetensors / .ckpt (a local file or a
huggingface.co file URL) is a single-file Stable Diffusion checkpoint: its UNet, VAE and text encoder
are loaded together with diffusers' `from_single_file`, configs from `SINGLE_FILE_CONFIG` (or
`backbone.paths.config`); `backbone.paths.checkpoint=<file>` sets all three at once.
"""

from __future__ import annotations

# The checkpoint the VidMP3 paper cites (huggingface.co/swl-models/chilloutmix), a single file.
CHILLOUTMIX = "https://huggingface.co/swl-models/chilloutmix/blob/main/Chilloutmix-non-ema-fp16.safetensors"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SINGLE_FILE_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # component configs of SD 1.5 checkpoints

PAPER_WEIGHTS: dict[str, dict[str, tuple[str, str | None]]] = {
    # component: (model id, subfolder)
    "sd2-depth": {  # Pix2Video
        "unet": ("stabilityai/stable-diffusion-2-depth", "unet"),
        "vae": ("stabilityai/stable-diffusion-2-depth", "vae"),
        "text_encoder": ("stabilityai/stable-diffusion-2-depth", "text_encoder"),
        "tokenizer": ("stabilityai/stable-diffusion-2-depth", "tokenizer"),
        "depth_estimator": ("stabilityai/stable-diffusion-2-depth", "depth_estimator"),
    },
    "sd15-controlnet": {  # Rerender-A-Video
        "unet": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
        "vae": ("stabilityai/sd-vae-ft-mse", None),
        "text_encoder": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder"),
        "tokenizer": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        "controlnet": ("lllyasviel/sd-controlnet-canny", None),
    },
    "sd15-animatediff": {  # VidMP3: Chilloutmix base weights (SD 1.5 architecture), as the paper
        "unet": (CHILLOUTMIX, None),
        "vae": (CHILLOUTMIX, None),
        "text_encoder": (CHILLOUTMIX, None),
        "tokenizer": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        "motion_adapter": ("guoyww/animatediff-motion-adapter-v1-5-2", None),
        "depth_estimator": ("Intel/dpt-hybrid-midas", None),  # MotionGuide's depth maps
    },
    "sd21": {  # TokenFlow; the scheduler config gives the checkpoint's prediction type
        "unet": ("stabilityai/stable-diffusion-2-1-base", "unet"),
        "vae": ("stabilityai/stable-diffusion-2-1-base", "vae"),
        "text_encoder": ("stabilityai/stable-diffusion-2-1-base", "text_encoder"),
        "tokenizer": ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
        "scheduler": ("stabilityai/stable-diffusion-2-1-base", "scheduler"),
    },
    "sd14": {  # FateZero; its DDIM scheduler is built from the checkpoint's scheduler config
        "unet": ("CompVis/stable-diffusion-v1-4", "unet"),
        "vae": ("CompVis/stable-diffusion-v1-4", "vae"),
        "text_encoder": ("CompVis/stable-diffusion-v1-4", "text_encoder"),
        "tokenizer": ("CompVis/stable-diffusion-v1-4", "tokenizer"),
        "scheduler": ("CompVis/stable-diffusion-v1-4", "scheduler"),
    },
    "sd15-controlnet-depth": {  # RAVE: SD 1.5 + ControlNet v1.1 depth (its released default, depth_zoe)
        "unet": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
        "vae": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae"),
        "text_encoder": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder"),
        "tokenizer": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        "controlnet": ("lllyasviel/control_v11f1p_sd15_depth", None),
        "depth_estimator": ("Intel/dpt-hybrid-midas", None),  # MiDaS DPT-hybrid: vedit's depth (not ZoeDepth)
    },
    "sd15": {
        "unet": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
        "vae": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae"),
        "text_encoder": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder"),
        "tokenizer": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    },
}
CONTROLNET_HED = "lllyasviel/sd-controlnet-hed"
