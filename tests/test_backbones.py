import pytest
import torch

from vedit.backbones import BackboneUnavailable, build_backbone
from vedit.backbones.tokenizer import CLIP_VOCAB_SIZE, clip_tokenizer


def test_offline_tokenizer_matches_open_clip_ids():
    import open_clip

    text = "a Swarovski crystal swan, cartoon style!"
    ours = clip_tokenizer()([text], return_tensors="pt").input_ids[0]
    ref = open_clip.tokenize([text])[0]
    assert torch.equal(ours, ref[: len(ours)])
    assert len(clip_tokenizer()) == CLIP_VOCAB_SIZE


@pytest.mark.parametrize("family,in_channels", [("sd2-depth", 5), ("sd15-controlnet", 4), ("sd15-animatediff", 4)])
def test_tiny_backbones_are_seeded_real_components(family, in_channels):
    a = build_backbone("tiny", family, seed=0)
    b = build_backbone("tiny", family, seed=0)
    assert a.unet.config.in_channels == in_channels
    assert a.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)
    assert (a.controlnet is not None) == (family == "sd15-controlnet")
    assert (a.motion_adapter is not None) == (family == "sd15-animatediff")
    assert a.vae_scale == 8
    z = a.encode_images(torch.rand(1, 3, 64, 64))
    assert z.shape == (1, 4, 8, 8)
    emb = a.encode_prompt(["a cat", "a dog"])
    assert emb.shape == (2, 77, a.unet.config.cross_attention_dim)
    assert not torch.allclose(emb[0], emb[1])


def test_paper_backbone_offline_names_the_model_and_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneUnavailable) as e:
        build_backbone("paper", "sd2-depth")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-depth" in msg
    assert "HF_HOME" in msg and "backbone.paths.unet" in msg and "backbone=tiny" in msg


def test_bad_backbone_arguments_are_named():
    with pytest.raises(ValueError, match="kind='huge'"):
        build_backbone("huge", "sd15")
    with pytest.raises(ValueError, match="family='sd3'"):
        build_backbone("tiny", "sd3")


def test_vidmp3_paper_backbone_is_chilloutmix_from_a_single_file(monkeypatch, tmp_path):
    from vedit.backbones.weights import CHILLOUTMIX, PAPER_WEIGHTS

    assert all(PAPER_WEIGHTS["sd15-animatediff"][k][0] == CHILLOUTMIX for k in ("unet", "vae", "text_encoder"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneUnavailable) as e:
        build_backbone("paper", "sd15-animatediff")
    msg = str(e.value)
    assert "swl-models/chilloutmix" in msg and "Chilloutmix-non-ema-fp16.safetensors" in msg
    assert "huggingface-cli download swl-models/chilloutmix Chilloutmix-non-ema-fp16.safetensors" in msg
    assert "backbone.paths.unet" in msg and "single .safetensors" in msg
    for paths in ({"unet": "/nowhere/chilloutmix.safetensors"}, {"checkpoint": "/nowhere/chilloutmix.safetensors"}):
        with pytest.raises(BackboneUnavailable, match=r"unet weights '/nowhere/chilloutmix.safetensors'"):
            build_backbone("paper", "sd15-animatediff", paths=paths)
    with pytest.raises(BackboneUnavailable, match=r"unet weights '/nowhere/sd15' \(subfolder 'unet'\)"):
        build_backbone("paper", "sd15-animatediff", paths={"checkpoint": "/nowhere/sd15"})


@pytest.mark.parametrize("family", ["sd2-depth", "sd15-controlnet"])
def test_warmup_calls_every_model_once_at_the_video_size_and_draws_no_random_numbers(family):
    bb = build_backbone("tiny", family, seed=0)
    models = {"unet": bb.unet, "vae.encoder": bb.vae.encoder, "vae.decoder": bb.vae.decoder,
              "text_encoder": bb.text_encoder, "controlnet": bb.controlnet, "depth": bb.depth_estimator}
    seen: dict[str, list] = {}
    for name, model in models.items():
        if model is not None:
            model.register_forward_hook(lambda m, args, kwargs, out, name=name: seen.setdefault(name, []).append(
                next(v for v in [*args, *kwargs.values()] if isinstance(v, torch.Tensor)).shape), with_kwargs=True)
    before = [p.clone() for p in bb.unet.parameters()]
    rng = torch.get_rng_state()
    bb.warmup((48, 64))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, bb.unet.parameters()))
    expected = {n for n, m in models.items() if m is not None}
    assert set(seen) == expected and all(len(v) == 1 for v in seen.values()), seen
    assert seen["unet"][0][-2:] == (6, 8) and seen["unet"][0][1] == bb.unet.config.in_channels
    assert seen["vae.encoder"][0][-2:] == (48, 64)
    if family == "sd15-controlnet":
        assert seen["controlnet"][0][-2:] == (6, 8)
