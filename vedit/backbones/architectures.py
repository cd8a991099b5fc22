"""Architectures as data: diffusers/transformers configs per backbone family, full size and tiny.

Full-size configs are the published checkpoints' configs (SD 1.5, SD 2 depth, SD 2.1 base, ControlNet v1.0,
AnimateDiff motion adapter v1-5-2); `random` builds them with random weights, `tiny` shrinks widths
and depths but keeps the structure (4 UNet levels, 8x VAE downsampling, decoder self-attention in
up_blocks.1-3, the CLIP vocabulary) so every code path of the editors runs.
"""

from __future__ import annotations

SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

UNET_SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, down_block_types=_DOWN, up_block_types=_UP,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32,
)
UNET_SD2_DEPTH = dict(
    UNET_SD15, in_channels=5, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
)
UNET_SD21 = dict(UNET_SD2_DEPTH, in_channels=4)  # SD 2.1 base (512): SD 2 text-to-image UNet
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], norm_num_groups=32, scaling_factor=0.18215,
)
TEXT_CLIP_L = dict(  # SD 1.5: OpenAI CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
TEXT_OPENCLIP_H = dict(  # SD 2: OpenCLIP ViT-H/14 text tower (penultimate layer kept)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
MOTION_ADAPTER_V152 = dict(
    block_out_channels=[320, 640, 1280, 1280], motion_layers_per_block=2,
    motion_mid_block_layers_per_block=1, motion_num_attention_heads=8, motion_norm_num_groups=32,
    motion_max_seq_length=32, use_motion_mid_block=True,
)
DPT_HYBRID = dict(  # the depth estimator shipped in stabilityai/stable-diffusion-2-depth
    is_hybrid=True, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=384,
    backbone_out_indices=[2, 5, 8, 11], neck_hidden_sizes=[256, 512, 768, 768],
    readout_type="project", reassemble_factors=[1, 1, 1, 0.5],
)

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=_DOWN, up_block_types=_UP,
    block_out_channels=[16, 32, 32, 32], layers_per_block=1, cross_attention_dim=32,
    attention_head_dim=4, norm_num_groups=8,
)
TINY_VAE = dict(VAE, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=64)
TINY_TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
)
TINY_MOTION_ADAPTER = dict(
    block_out_channels=[16, 32, 32, 32], motion_layers_per_block=1, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True,
)
TINY_DPT = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
    fusion_hidden_size=16, head_in_index=-1, is_hybrid=False, reassemble_factors=[4, 2, 1, 0.5],
)

# family -> which components it has and their full / tiny configs
FAMILIES: dict[str, dict] = {
    "sd15": dict(unet=UNET_SD15, text=TEXT_CLIP_L),
    "sd15-controlnet": dict(unet=UNET_SD15, text=TEXT_CLIP_L, controlnet=True),
    "sd15-animatediff": dict(unet=UNET_SD15, text=TEXT_CLIP_L, motion_adapter=MOTION_ADAPTER_V152,
                             depth_estimator=DPT_HYBRID),
    "sd15-controlnet-depth": dict(unet=UNET_SD15, text=TEXT_CLIP_L, controlnet=True, depth_estimator=DPT_HYBRID),
    "sd2-depth": dict(unet=UNET_SD2_DEPTH, text=TEXT_OPENCLIP_H, depth_estimator=DPT_HYBRID),
    "sd21": dict(unet=UNET_SD21, text=TEXT_OPENCLIP_H),
    "sd14": dict(unet=UNET_SD15, text=TEXT_CLIP_L),  # SD v1-4: the SD 1.5 architecture
}
TINY: dict[str, dict] = {
    "sd15": dict(unet=TINY_UNET, text=TINY_TEXT),
    "sd15-controlnet": dict(unet=TINY_UNET, text=TINY_TEXT, controlnet=True),
    "sd15-animatediff": dict(unet=TINY_UNET, text=TINY_TEXT, motion_adapter=TINY_MOTION_ADAPTER,
                             depth_estimator=TINY_DPT),
    "sd15-controlnet-depth": dict(unet=TINY_UNET, text=TINY_TEXT, controlnet=True, depth_estimator=TINY_DPT),
    "sd2-depth": dict(unet=dict(TINY_UNET, in_channels=5, use_linear_projection=True), text=TINY_TEXT,
                      depth_estimator=TINY_DPT),
    "sd21": dict(unet=dict(TINY_UNET, use_linear_projection=True), text=TINY_TEXT),
    "sd14": dict(unet=TINY_UNET, text=TINY_TEXT),
}
