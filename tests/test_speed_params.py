"""Speed-only parameters (`Editor.SPEED_PARAMS`): any value gives the same frames (float64, tiny
backbones), and they are left out of cell keys and leaderboard labels but kept in records."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from vedit.backbones import build_backbone
from vedit.data.synthetic import SyntheticDataset
from vedit.leaderboard import method_label
from vedit.registry import EDITORS
from vedit.run import CONF_DIR, run
from vedit.task import EditTask

# editor -> (backbone family, small settings, every speed parameter away from its default)
CASES = {
    "pix2video": ("sd2-depth", {"steps": 3},
                  {"schedule": "sequential", "inversion_batch_size": 1, "vae_batch": 1, "sampling_batch_size": 1,
                   "batch_multiple": None, "attention_kernels": ["math"]}),
    "rerender": ("sd15-controlnet", {"steps": 4, "x0_strength": 1.0, "key_interval": 2},
                 {"schedule": "sequential", "reuse_direct_pass": False, "sampling_batch_size": 1,
                  "batch_multiple": None, "attention_kernels": ["math"], "propagation_batch": 1,
                  "sampling_graphs": False, "propagation_graphs": False}),
    "rave": ("sd15-controlnet-depth", {"steps": 3, "inversion_steps": 3, "grid_size": 2},
             {"grid_batch": 1, "inversion_batch": 2, "vae_batch": 2, "attention_kernels": ["math"]}),
    "tokenflow": ("sd21", {"steps": 3, "inversion_steps": 9, "batch_size": 3},
                  {"unet_batch": 1, "vae_batch": 1, "attention_kernels": ["math"]}),
    "fatezero": ("sd14", {"steps": 3}, {"vae_batch": 1, "attention_kernels": ["math"]}),
    "vidmp3": ("sd15-animatediff", {"steps": 2, "tune_steps": 2, "guide_resolution": 32},
               {"gradient_checkpointing": True, "vae_batch": 1, "attention_kernels": ["math"]}),
}


def synthetic_task(frames: int = 5) -> EditTask:
    item = SyntheticDataset(num_videos=1, num_frames=frames, size=(64, 64), seed=0).load("synthetic_000")
    return EditTask(item.video, item.source_prompt, item.edit_prompts[0], seed=0, side=item.side, dataset="synthetic")


def test_every_editor_with_speed_params_is_covered_and_shows_them_in_its_yaml():
    from vedit.leaderboard import method_defaults

    declared = {name: EDITORS.get(name).SPEED_PARAMS for name in EDITORS.names() if EDITORS.get(name).SPEED_PARAMS}
    assert set(declared) == set(CASES)
    for name, speed in declared.items():
        signature = inspect.signature(EDITORS.get(name).__init__).parameters
        assert set(speed) <= set(signature) and set(speed) <= set(method_defaults(name)), name
        assert set(CASES[name][2]) == set(speed), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_speed_params_do_not_change_the_frames(name):
    family, small, others = CASES[name]
    backbone = build_backbone("tiny", family, dtype="float64", seed=0)
    task = synthetic_task()
    editor_cls = EDITORS.get(name)
    default = editor_cls(backbone, **small).edit(task).frames
    changed = editor_cls(backbone, **small, **others).edit(task).frames
    assert default.shape == changed.shape
    torch.testing.assert_close(changed, default, rtol=1e-7, atol=1e-7)


def test_cell_key_and_label_ignore_speed_params_and_records_keep_them(tmp_path):
    def sweep(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[
                "method=pix2video", "backbone=tiny", "metrics=tiny", "data=synthetic", "data.num_videos=1",
                "data.num_frames=3", "method.params.steps=2", f"store_dir={tmp_path / 'store'}",
                f"cache_dir={tmp_path / 'cache'}", *overrides])
        return run(cfg)

    first = sweep("method.params.sampling_batch_size=1").records[0]
    again = sweep("method.params.sampling_batch_size=2", "method.params.attention_kernels=[math]").records[0]
    other = sweep("method.params.guidance_scale=5.0").records[0]
    assert again["key"] == first["key"] != other["key"]
    assert again["started_at"] == first["started_at"]  # the finished cell was reused, not edited again
    assert first["config"]["method"]["params"]["sampling_batch_size"] == 1
    assert "schedule" in first["method_speed_params"]
    params = first["config"]["method"]["params"]
    assert method_label("pix2video", params, first["method_speed_params"]) == "pix2video (steps=2)"
    assert method_label("pix2video", other["config"]["method"]["params"], other["method_speed_params"]) == \
        "pix2video (guidance_scale=5.0, steps=2)"
