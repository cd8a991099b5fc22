"""Pix2Video editor on the tiny SD 2 depth backbone (CPU, float64 where schedules are compared)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vedit.backbones import build_backbone
from vedit.errors import EditorError
from vedit.editors.base import round_up
from vedit.editors.pix2video import Pix2VideoEditor
from vedit.ops.attention import InjectedKVAttnProcessor, attention_processors, self_attention_layers
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.registry import EDITORS
from vedit.task import EditTask
from vedit.video import Video, VideoError, read_video

REPO = Path(__file__).resolve().parents[1]
from conftest import SHARED
STEPS = 4
# update_step scaled to the tiny latent (4x8x8 instead of 4x64x64) so its pull matches the full-size 100
TINY_UPDATE = 100.0 * (4 * 8 * 8) / (4 * 64 * 64)



@pytest.fixture(scope="module")
def bb64():
    return build_backbone("tiny", "sd2-depth", dtype="float64")


def random_task(frames: int = 4, seed: int = 0, identical: bool = False) -> EditTask:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, 64, 64, generator=g)
    depth = torch.rand(frames, 1, 64, 64, generator=g)
    if identical:
        video, depth = video[:1].repeat(frames, 1, 1, 1), depth[:1].repeat(frames, 1, 1, 1)
    return EditTask(Video(video, 10.0, f"random{seed}"), "a red square", "a blue circle", seed=seed,
                    side={"depth": depth})


def moving_task(frames: int = 4) -> EditTask:
    """A smooth pattern panning right by 2 pixels per frame, depth a vertical ramp: consecutive frames are similar."""
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    video = torch.stack([torch.stack([0.5 + 0.4 * torch.sin((xs - 2 * t) / 5 + c) * torch.cos(ys / 7)
                                      for c in range(3)]) for t in range(frames)])
    depth = (ys / 63).expand(frames, 1, 64, 64).clone()
    return EditTask(Video(video, 10.0, "moving"), "a pattern", "a pattern in winter", side={"depth": depth})


def editor(bb, **kw) -> Pix2VideoEditor:
    kw = {"steps": STEPS, "update_step": TINY_UPDATE, **kw}
    return Pix2VideoEditor(bb, **kw)


def sample_latents(ed: Pix2VideoEditor, task: EditTask) -> torch.Tensor:
    """The editor's clean latents for a task (the same path as edit(), before decoding)."""
    bb = ed.backbone
    depth = ed.prepare_depth(task)
    uncond, source, target = bb.encode_prompt(["", task.source_prompt, task.target_prompt]).chunk(3)
    noise, _ = ed.initial_noise(task, depth, source)
    return ed.sample(noise, depth, uncond, target)


def reference_depth(depth: torch.Tensor) -> torch.Tensor:
    """diffusers depth2img: bicubic to latent size, then 2 (d - min) / (max - min) - 1 per frame."""
    d = F.interpolate(depth.double(), size=(8, 8), mode="bicubic", align_corners=False)
    lo, hi = d.amin(dim=(1, 2, 3), keepdim=True), d.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (d - lo) / (hi - lo) - 1


def test_depth_is_normalised_per_frame_at_latent_size(bb64):
    task = random_task()
    task.side["depth"][1] *= 50.0  # a different range per frame must not matter
    d = editor(bb64).prepare_depth(task)
    assert d.shape == (4, 1, 8, 8)
    torch.testing.assert_close(d.amin(dim=(1, 2, 3)), -torch.ones(4, dtype=d.dtype))
    torch.testing.assert_close(d.amax(dim=(1, 2, 3)), torch.ones(4, dtype=d.dtype))
    torch.testing.assert_close(d, reference_depth(task.side["depth"]))


def test_without_injection_and_update_equals_per_frame_editing(bb64):
    """Plain loop per frame: DDIM-invert with the source prompt (guidance 1), then CFG sampling."""
    task = random_task(frames=3)
    unet, guidance = bb64.unet, 7.5
    ddim = DDIM(bb64.scheduler(), STEPS)
    depth = reference_depth(task.side["depth"])
    uncond, source, target = bb64.encode_prompt(["", task.source_prompt, task.target_prompt]).chunk(3)
    expected = []
    for f in range(3):
        x0 = bb64.encode_images(task.video.frames[f:f + 1])
        d = depth[f:f + 1]
        x_t = ddim.invert(x0, lambda x, t, i: unet(torch.cat([x, d], 1), t, encoder_hidden_states=source).sample)[0]

        def guided_eps(x, t, i):
            eps = unet(torch.cat([x, d], 1).repeat(2, 1, 1, 1), t,
                       encoder_hidden_states=torch.cat([uncond, target])).sample
            return classifier_free_guidance(eps, guidance)

        expected.append(bb64.decode_latents(ddim.sample(x_t, guided_eps)))
    expected = torch.cat(expected).float()
    assert 0.05 < expected.mean() < 0.95 and expected.std() > 0.01  # not saturated by the clamp

    result = editor(bb64, injection="none", latent_update=False, guidance_scale=guidance).edit(task)
    assert result.frames.shape == (3, 3, 64, 64)
    torch.testing.assert_close(result.frames, expected, rtol=1e-6, atol=1e-6)


def test_kv_from_copies_of_own_features_equals_plain_self_attention(bb64):
    unet = bb64.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64)
    emb = torch.randn(2, 77, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([500, 20])
    plain = unet(x, t, encoder_hidden_states=emb).sample
    procs = {n: InjectedKVAttnProcessor(n, lambda name, h: torch.cat([h, h], dim=1))
             for n in self_attention_layers(unet, "all")}
    with attention_processors(unet, procs):
        doubled = unet(x, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(doubled, plain, rtol=1e-10, atol=1e-10)


def test_identical_frames_edit_identically_with_injection_and_update(bb64):
    """Every frame's features and x0 equal the anchor's, so injection and the update change nothing."""
    task = random_task(frames=4, identical=True)
    full = editor(bb64).edit(task).frames
    plain = editor(bb64, injection="none", latent_update=False).edit(task).frames
    for f in range(4):
        torch.testing.assert_close(full[f], plain[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("injection,guidance", [("anchor+previous", 7.5), ("previous", 7.5), ("anchor", 1.0)])
@pytest.mark.parametrize("schedule", ["lockstep", "wavefront"])
def test_batched_schedules_equal_sequential(bb64, schedule, injection, guidance):
    task = random_task(frames=5, seed=2)
    seq = editor(bb64, injection=injection, guidance_scale=guidance, schedule="sequential")
    ls = sample_latents(seq, task)
    assert seq.num_unet_calls(5) == 5 * STEPS
    batched = editor(bb64, injection=injection, guidance_scale=guidance, schedule=schedule)
    assert (sample_latents(batched, task) - ls).abs().max() <= 1e-6 * ls.abs().max()
    assert batched.num_unet_calls(5) == {"lockstep": STEPS, "wavefront": 5 + STEPS - 1}[schedule]
    # chunks of at most 2 frames (lockstep: 2, 2, 1 per step, each reading the frame before it from the
    # previous chunk), unpadded calls, and padding to a size that is not a power of two
    for switch in ({"sampling_batch_size": 2}, {"batch_multiple": None}, {"batch_multiple": 3}):
        other = editor(bb64, injection=injection, guidance_scale=guidance, schedule=schedule, **switch)
        assert (sample_latents(other, task) - ls).abs().max() <= 1e-6 * ls.abs().max()
    assert editor(bb64, schedule="lockstep", sampling_batch_size=2).num_unet_calls(5) == 3 * STEPS
    assert [len(c) for c in editor(bb64, schedule="lockstep", sampling_batch_size=4)._calls(5)][:2] == [3, 2]


def test_latent_update_lowers_consecutive_x0_distance(bb64):
    task = moving_task(frames=4)

    def consecutive_distance(latents):
        return ((latents[1:] - latents[:-1]) ** 2).mean().item()

    on = consecutive_distance(sample_latents(editor(bb64, latent_update=True, update_window=(0.0, 1.0)), task))
    off = consecutive_distance(sample_latents(editor(bb64, latent_update=False), task))
    assert on < 0.9 * off


@pytest.mark.parametrize("switch", [
    {"injection": "anchor"}, {"injection": "previous"}, {"injection": "none"}, {"layers": "all"},
    {"layers": ["up_blocks.3.attentions.0.transformer_blocks.0.attn1"]}, {"latent_update": False},
    {"update_window": (0.0, 1.0)}, {"update_step": 10 * TINY_UPDATE},
])
def test_ablation_switches_change_the_output(bb64, switch):
    task = moving_task(frames=3)
    default = sample_latents(editor(bb64), task)
    changed = sample_latents(editor(bb64, **switch), task)
    assert (changed - default).abs().max() > 1e-6 * default.abs().max()
    torch.testing.assert_close(changed[0], default[0], rtol=1e-9, atol=1e-9)  # the anchor never changes


def test_anchor_is_plain_self_attention(bb64):
    task = random_task(frames=3, seed=3)
    injected = sample_latents(editor(bb64), task)
    plain = sample_latents(editor(bb64, injection="none", latent_update=False), task)
    torch.testing.assert_close(injected[0], plain[0], rtol=1e-9, atol=1e-9)
    assert (injected[1:] - plain[1:]).abs().max() > 1e-6


def test_inversion_cache_is_used(bb64):
    task = random_task(frames=3)
    cache: dict = {}
    ed = editor(bb64, latent_cache=cache)
    first = ed.edit(task)
    assert len(cache) == 1 and not first.info["inversion_cached"]
    (key, noise), = cache.items()
    assert noise.shape == (3, 4, 8, 8) and task.video.content_hash() in key and task.source_prompt in key
    second = ed.edit(task)
    assert second.info["inversion_cached"]
    torch.testing.assert_close(second.frames, first.frames)
    cache[key] = noise + 1.0  # the cached noise is what sampling starts from
    assert (ed.edit(task).frames - first.frames).abs().max() > 1e-4


def test_one_frame_video_is_refused_naming_it(bb64):
    task = random_task(frames=1)
    with pytest.raises((EditorError, VideoError), match="random0"):
        editor(bb64).edit(task)


def test_missing_source_prompt_is_a_clear_error(bb64):
    task = random_task()
    task.source_prompt = ""
    with pytest.raises(EditorError, match="source_prompt"):
        editor(bb64).edit(task)


def test_wrong_backbone_family_and_bad_settings_are_refused(bb64):
    sd15 = build_backbone("tiny", "sd15")
    with pytest.raises(EditorError, match="sd2-depth"):
        Pix2VideoEditor(sd15, steps=2).edit(random_task())
    with pytest.raises(ValueError, match="injection"):
        Pix2VideoEditor(bb64, injection="anchor+next")
    with pytest.raises(ValueError, match="update_window"):
        Pix2VideoEditor(bb64, update_window=(0.6, 0.2))
    bad_depth = random_task()
    bad_depth.side["depth"] = bad_depth.side["depth"][:2]
    with pytest.raises(EditorError, match="depth"):
        editor(bb64).edit(bad_depth)


def test_inversion_in_padded_batches_equals_one_batch(bb64):
    """5 frames inverted in batches of 2 padded to 4, or 3 padded to 8, give the one-batch x_T."""
    task = random_task(frames=5, seed=3)
    depth = editor(bb64).prepare_depth(task)
    source = bb64.encode_prompt([task.source_prompt])
    latents = bb64.encode_images(task.video.frames).double()
    whole = editor(bb64, inversion_batch_size=5, batch_multiple=None).invert(latents, depth, source)
    for size, multiple in ((2, 4), (3, 8)):
        sizes = set()
        hook = bb64.unet.register_forward_hook(lambda _m, args, _o: sizes.add(args[0].shape[0]))
        try:
            padded = editor(bb64, inversion_batch_size=size, batch_multiple=multiple).invert(latents, depth, source)
        finally:
            hook.remove()
        assert sizes == {multiple} and padded.shape == whole.shape
        torch.testing.assert_close(padded, whole, rtol=1e-9, atol=1e-9)


def test_registry_and_config_agree():
    assert EDITORS.get("pix2video") is Pix2VideoEditor
    conf = yaml.safe_load((REPO / "conf/method/pix2video.yaml").read_text())
    assert conf["name"] == "pix2video" and conf["family"] == "sd2-depth"
    assert conf["params"]["steps"] == 50 and conf["params"]["guidance_scale"] == 7.5
    bb = build_backbone("tiny", "sd2-depth")
    ed = Pix2VideoEditor(bb, **conf["params"])
    assert ed.layer_names == [n for n in self_attention_layers(bb.unet, "all") if n.startswith("up_blocks.")]
    assert ed.update_window == (0.0, 0.5) and ed.update_step == 100.0


def test_synthetic_video_float32(bb64):
    from vedit.data.synthetic import SyntheticDataset

    item = next(iter(SyntheticDataset(num_videos=1, num_frames=4, size=(64, 64), seed=0)))
    task = EditTask(item.video, item.source_prompt, item.edit_prompts[0], side={"depth": item.side["depth"]})
    result = Pix2VideoEditor(build_backbone("tiny", "sd2-depth"), steps=3).edit(task)
    assert result.frames.shape == (4, 3, 64, 64)
    assert torch.isfinite(result.frames).all() and result.frames.min() >= 0 and result.frames.max() <= 1
    assert set(result.timings) == {"preprocessing", "inversion", "sampling"}


def test_davis_blackswan(bb64):
    path = SHARED / "data/davis-mini/JPEGImages/480p/blackswan"
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (real DAVIS frames) is beside the checkout only")
    video = read_video(path, "blackswan", max_frames=3)
    frames = F.interpolate(video.frames, size=(64, 64), mode="bilinear", antialias=True).clamp(0, 1)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 64, 1).expand(3, 1, 64, 64).clone()  # nearer at the bottom
    task = EditTask(Video(frames, 24.0, "blackswan"), "a black swan swimming in a river",
                    "a white duck swimming in a river", side={"depth": ramp})
    result = editor(bb64).edit(task)
    assert result.frames.shape == (3, 3, 64, 64)
    assert torch.isfinite(result.frames).all() and result.frames.min() >= 0 and result.frames.max() <= 1


@pytest.mark.parametrize("frames,params", [(5, {}), (7, {"sampling_batch_size": 3, "inversion_batch_size": 2})])
def test_warmup_calls_the_unet_at_the_shapes_the_edit_uses_and_changes_no_frame(bb64, monkeypatch, frames, params):
    """Warm-up at the video's size and length runs the inversion and sampling batch shapes of the edit
    (lockstep: its only sampling shape) with feature injection on, draws no random numbers and leaves
    the edit's frames bit for bit unchanged."""
    import vedit.editors.pix2video as pix2video_module

    task = random_task(frames=frames, seed=4)
    ed = editor(bb64, **params)
    before = ed.edit(task).frames
    calls: dict[str, list] = {"unet": [], "injected": []}
    unet_forward, kv_source = bb64.unet.forward, pix2video_module._FeatureBank.kv_source
    monkeypatch.setattr(bb64.unet, "forward", lambda sample, *a, **kw: (
        calls["unet"].append(sample.shape[0]), unet_forward(sample, *a, **kw))[1])
    monkeypatch.setattr(pix2video_module._FeatureBank, "kv_source", lambda self, name, x: (
        calls["injected"].append(x.shape[0]), kv_source(self, name, x))[1])
    rng = torch.get_rng_state()
    ed.warmup(tuple(task.video.size), frames)
    assert torch.equal(torch.get_rng_state(), rng)
    warm = {k: set(v) for k, v in calls.items()}
    calls = {"unet": [], "injected": []}
    torch.testing.assert_close(ed.edit(task).frames, before, rtol=0, atol=0)
    sampling_rows = {2 * round_up(len(c), ed.batch_multiple) for c in ed._calls(frames)}
    assert len(sampling_rows) == 1 and set(calls["unet"]) <= warm["unet"] and sampling_rows <= warm["injected"]
