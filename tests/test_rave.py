"""RAVE: grid layout, per-step shuffling and unshuffling, any frame count, the released defaults, the
paper backbone from a Hugging Face cache layout (offline), all on the tiny SD 1.5 + ControlNet depth backbone."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vedit.backbones import build_backbone
from vedit.backbones.weights import PAPER_WEIGHTS
from vedit.data.synthetic import SyntheticDataset
from vedit.editors.params import ParamError
from vedit.editors.rave import RaveEditor, fill_cells, from_grids, grid_count, shuffle_orders, to_grids
from vedit.errors import EditorError
from vedit.task import EditTask
from vedit.video import Video

REPO = Path(__file__).resolve().parents[1]
FAMILY = "sd15-controlnet-depth"
SMALL = {"steps": 3, "inversion_steps": 3}
# configs/truck.yaml of rehg-lab/RAVE (the README's example config), in our parameter names
RELEASED = {"steps": 50, "inversion_steps": 50, "guidance_scale": 7.5, "negative_prompt": "", "inversion_prompt": "",
            "grid_size": 3, "shuffle": True, "inversion": "ddim", "inversion_control": True, "control_scale": 1.0,
            "control_guidance": [0.0, 1.0], "cond_step_start": 0.0, "vae_on_grids": True}


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny", FAMILY, dtype="float64", seed=0)


def synthetic_task(frames: int, seed: int = 0, size: tuple[int, int] = (32, 32), video_seed: int = 0) -> EditTask:
    item = SyntheticDataset(num_videos=1, num_frames=frames, size=size, seed=video_seed).load("synthetic_000")
    return EditTask(item.video, item.source_prompt, item.edit_prompts[0], seed=seed, side=item.side,
                    dataset="synthetic")


# ---- layout and shuffling ------------------------------------------------------------------------

@pytest.mark.parametrize("g,h,w", [(3, 2, 5), (2, 4, 4), (1, 3, 2)])
def test_grid_layout_is_row_major_and_frames_grid_frames_is_the_identity(g, h, w):
    n = 2 * g * g
    frames = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1).expand(n, 2, h, w).clone()
    frames[:, 1] += torch.arange(h * w, dtype=torch.float64).view(h, w) / 1000  # each pixel tells where it was
    grids = to_grids(frames, g)
    assert grids.shape == (2, 2, g * h, g * w)
    for k in range(n):
        grid, cell = divmod(k, g * g)
        row, col = divmod(cell, g)
        assert torch.equal(grids[grid, :, row * h:(row + 1) * h, col * w:(col + 1) * w], frames[k])
    assert torch.equal(from_grids(grids, g), frames)


def test_each_step_is_a_fresh_permutation_applied_to_the_last_arrangement():
    t, steps = 11, 6
    orders = shuffle_orders(t, steps, generator=torch.Generator().manual_seed(3))
    assert orders.shape == (steps, t)
    for row in orders:
        assert torch.equal(row.sort().values, torch.arange(t))  # every frame exactly once
    assert len({tuple(r.tolist()) for r in orders}) == steps
    gen, order = torch.Generator().manual_seed(3), torch.arange(t)
    for row in orders:  # the released bookkeeping: indices = [indices[i] for i in randperm(T)]
        order = order[torch.randperm(t, generator=gen)]
        assert torch.equal(row, order)
    assert torch.equal(shuffle_orders(t, steps, generator=torch.Generator().manual_seed(3)), orders)
    assert not torch.equal(shuffle_orders(t, steps, generator=torch.Generator().manual_seed(4)), orders)
    assert torch.equal(shuffle_orders(t, 2, shuffle=False), torch.arange(t).expand(2, t))


@pytest.mark.parametrize("t,g", [(5, 2), (9, 3), (10, 3), (2, 3)])
def test_cells_hold_every_frame_once_then_copies(t, g):
    order = torch.randperm(t, generator=torch.Generator().manual_seed(t))
    cells = fill_cells(order, grid_count(t, g) * g * g)
    assert len(cells) == grid_count(t, g) * g * g >= t
    assert torch.equal(cells[:t], order)
    assert torch.equal(cells[t:], order.repeat(len(cells))[: len(cells) - t])  # copies of the first frames


# ---- the editor --------------------------------------------------------------------------------

def _inputs(backbone, t: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, 4, 4, 4, generator=gen, dtype=torch.float64)
    control = torch.rand(t, 1, 32, 32, generator=gen, dtype=torch.float64)
    negative, target = backbone.encode_prompt(["", "a red car"]).chunk(2)
    return x, control, negative, target


@pytest.mark.parametrize("t,g", [(8, 2), (7, 2)])
def test_unshuffling_restores_frame_order(backbone, t, g):
    """Permuting the video and the arrangements alike puts the same latents in the same cells, so the
    edit of the permuted video, unpermuted, is the edit of the video: each frame's result goes back to it."""
    editor = RaveEditor(backbone, steps=3, grid_size=g, grid_batch=None)
    x, control, negative, target = _inputs(backbone, t)
    orders = shuffle_orders(t, 3, generator=torch.Generator().manual_seed(1))
    out = editor.sample(x, control, negative, target, orders)
    p = torch.randperm(t, generator=torch.Generator().manual_seed(2))
    p_inv = torch.argsort(p)
    permuted = editor.sample(x[p], control[p], negative, target, p_inv[orders])
    torch.testing.assert_close(permuted[p_inv], out, rtol=1e-12, atol=1e-12)
    others = shuffle_orders(t, 3, generator=torch.Generator().manual_seed(5))
    other = editor.sample(x, control, negative, target, others)
    assert (other - out).abs().max() > 1e-6  # the arrangement matters: the test above could fail


def test_grid_decoding_puts_every_frame_back(backbone):
    """With 1x1 grids, decoding the last arrangement's grids is decoding each frame: the scatter is exact."""
    latents = torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    order = torch.tensor([3, 0, 4, 1, 2])
    grids = RaveEditor(backbone, grid_size=1, vae_batch=2).decode(latents, order)
    frames = RaveEditor(backbone, grid_size=1, vae_on_grids=False, vae_batch=1).decode(latents, order)
    torch.testing.assert_close(grids, frames, rtol=1e-12, atol=1e-12)


def test_identical_frames_give_identical_edits(backbone):
    """Without grid neighbours (1x1 grids) nothing but a frame's own content reaches it: a video of one
    repeated frame, shuffled every step, comes out as one repeated edited frame."""
    frame = synthetic_task(1 + 1).video.frames[:1]
    task = EditTask(Video(frame.expand(6, -1, -1, -1).clone(), fps=8, id="still"), "a road", "a river",
                    side={"depth": torch.rand(1, 1, 32, 32).expand(6, -1, -1, -1).clone()})
    out = RaveEditor(backbone, **SMALL, grid_size=1, vae_batch=4).edit(task).frames
    assert (out - frame).abs().max() > 1e-3  # edited, not passed through
    for k in range(1, 6):
        torch.testing.assert_close(out[k], out[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t,g", [(2, 3), (5, 2), (9, 3), (10, 3)])
def test_any_frame_count_edits_every_frame(backbone, t, g):
    task = synthetic_task(t)
    result = RaveEditor(backbone, **SMALL, grid_size=g).edit(task)
    assert result.frames.shape == (t, 3, 32, 32) and torch.isfinite(result.frames).all()
    assert result.info["grids"] == grid_count(t, g) and result.info["padding_cells"] == grid_count(t, g) * g * g - t
    assert (result.frames - task.video.frames).abs().flatten(1).amax(1).min() > 1e-3  # no frame left as it was


def test_first_step_is_unguided_at_the_released_cond_step_start(backbone):
    """cond_step_start=0.0 (released): step 0 takes the negative branch alone, so with one step the
    guidance scale changes nothing; with two it does."""
    x, control, negative, target = _inputs(backbone, 4)
    orders = shuffle_orders(4, 2, generator=torch.Generator().manual_seed(0))

    def run(steps, scale):
        editor = RaveEditor(backbone, steps=steps, grid_size=2, guidance_scale=scale)
        return editor.sample(x, control, negative, target, orders[:steps])

    torch.testing.assert_close(run(1, 7.5), run(1, 1.0), rtol=0, atol=0)
    assert (run(2, 7.5) - run(2, 1.0)).abs().max() > 1e-6


def test_inversion_is_cached_per_video_and_reused(backbone):
    cache: dict = {}
    editor = RaveEditor(backbone, **SMALL, grid_size=2, latent_cache=cache)
    first = editor.edit(synthetic_task(5))
    again = editor.edit(synthetic_task(5, seed=1))
    assert not first.info["inversion_cached"] and again.info["inversion_cached"] and len(cache) == 1
    assert again.info["unet_calls"] < first.info["unet_calls"]
    same_seed = editor.edit(synthetic_task(5))
    torch.testing.assert_close(same_seed.frames, first.frames, rtol=0, atol=0)
    assert (again.frames - first.frames).abs().max() > 1e-6  # another seed, other permutations
    editor.edit(synthetic_task(5, video_seed=1))
    assert len(cache) == 2


def test_noise_inversion_and_seeds(backbone):
    a = RaveEditor(backbone, **SMALL, grid_size=2, inversion="noise").edit(synthetic_task(4)).frames
    b = RaveEditor(backbone, **SMALL, grid_size=2).edit(synthetic_task(4)).frames
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-6


# ---- parameters, configs, backbone -------------------------------------------------------------

def test_yaml_lists_every_result_changing_parameter_with_its_released_value():
    cfg = yaml.safe_load((REPO / "conf/method/rave.yaml").read_text())
    assert cfg["name"] == "rave" and cfg["family"] == FAMILY
    signature = inspect.signature(RaveEditor.__init__).parameters
    constructor = {k: p.default for k, p in signature.items()
                   if k not in ("self", "backbone", "estimators", "latent_cache")}
    assert set(cfg["params"]) == set(constructor)
    for key, value in cfg["params"].items():
        expected = list(constructor[key]) if isinstance(constructor[key], tuple) else constructor[key]
        assert value == expected, key
    assert set(RaveEditor.SPEED_PARAMS) | set(RELEASED) == set(cfg["params"])
    assert {k: cfg["params"][k] for k in RELEASED} == RELEASED
    weights = PAPER_WEIGHTS[FAMILY]
    assert weights["controlnet"][0] == "lllyasviel/control_v11f1p_sd15_depth"  # PREPROCESSOR_DICT['depth_zoe']
    assert weights["unet"][0] == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the runwayml repo's mirror


def test_bad_parameters_and_backbones_are_named(backbone):
    for bad, match in (({"grid_size": 0}, "grid_size=0"), ({"inversion": "ddpm"}, "inversion='ddpm'"),
                       ({"control_guidance": [0.5, 0.2]}, "control_guidance"),
                       ({"grid_sise": 2}, "did you mean 'grid_size'")):
        with pytest.raises(ParamError, match=match):
            RaveEditor.check_params(bad)
    with pytest.raises(ParamError, match="steps=0"):
        RaveEditor(backbone, steps=0)
    plain = build_backbone("tiny", "sd15")
    with pytest.raises(EditorError, match="method.family=sd15-controlnet-depth"):
        RaveEditor(plain, **SMALL).edit(synthetic_task(2))


def test_tiny_family_has_a_controlnet_and_a_depth_model():
    bb = build_backbone("tiny", FAMILY)
    assert bb.controlnet is not None and bb.depth_estimator is not None and bb.unet.config.in_channels == 4


def _save_hub_model(hub: Path, repo_id: str, parts: dict) -> None:
    """A Hugging Face hub cache entry: models--org--name/snapshots/<rev>/<subfolder> plus refs/main."""
    root = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    for subfolder, model in parts.items():
        model.save_pretrained(snapshot / subfolder if subfolder else snapshot)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(snapshot.name)


def test_paper_backbone_runs_offline_from_the_hub_cache(tmp_path):
    """backbone=paper through `python -m vedit.run`, HF_HUB_OFFLINE=1, with tiny weights saved under the
    paper's Hub ids in a hub cache layout: every id of PAPER_WEIGHTS[sd15-controlnet-depth] is read."""
    tiny = build_backbone("tiny", FAMILY)
    hub = tmp_path / "hf" / "hub"
    by_repo: dict[str, dict] = {}
    for name, (repo_id, subfolder) in PAPER_WEIGHTS[FAMILY].items():
        by_repo.setdefault(repo_id, {})[subfolder] = getattr(tiny, name)
    for repo_id, parts in by_repo.items():
        _save_hub_model(hub, repo_id, parts)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vedit.run", "method=rave", "backbone=paper", "backbone.dtype=float32", "device=cpu",
         "data=synthetic", "data.num_videos=1", "prompts_per_video=1", "data.num_frames=5", "data.size=[32,32]", "metrics=tiny",
         "metrics.names=[]", "method.params.steps=2", "method.params.inversion_steps=2", "method.params.grid_size=2",
         f"store_dir={tmp_path / 'store'}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("cells/*/record.json")]
    assert len(records) == 1 and records[0]["status"] == "ok" and records[0]["backbone_kind"] == "paper"
    assert records[0]["config"]["method"]["family"] == FAMILY
    ids = json.dumps(records[0]["backbone"]["ids"])
    assert "lllyasviel/control_v11f1p_sd15_depth" in ids and "Intel/dpt-hybrid-midas" in ids
