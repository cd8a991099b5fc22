"""Every config group composes, and what it describes instantiates (offline, tiny where weights are needed)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from vedit.backbones import build_backbone
from vedit.registry import EDITORS
from vedit.run import CONF_DIR
from vedit.video import write_video

CONF = Path(CONF_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_every_option_of_every_group_composes():
    groups = ["method", "backbone", "data", "metrics", "tracker", "suite", "experiment"]
    for group in groups:
        assert options(group), group
        for name in options(group):
            cfg = composed(f"{group}={name}")
            assert cfg.store_dir and cfg.method.name, (group, name)


@pytest.mark.parametrize("method", options("method"))
def test_every_method_instantiates_on_the_tiny_backbone_of_its_family(method):
    cfg = composed(f"method={method}", "backbone=tiny")
    backbone = build_backbone("tiny", cfg.method.family) if cfg.method.family else None
    editor = EDITORS.get(cfg.method.name)(backbone, None, **cfg.method.params) if backbone else EDITORS.get(cfg.method.name)(None)
    assert editor.name == cfg.method.name


def test_data_configs_instantiate(tmp_path):
    synthetic = instantiate(composed("data=synthetic").data)
    assert len(synthetic) == 2
    write_video(tmp_path / "clip.mp4", torch.rand(4, 3, 32, 32))
    (tmp_path / "prompts.yaml").write_text("videos: {clip: {source_prompt: a, edit_prompts: [b]}}\n")
    folder = instantiate(composed("data=folder", f"data.root={tmp_path}").data)
    assert folder.video_ids() == ["clip"]
    frames = tmp_path / "swap" / "animal" / "cat" / "frames"
    frames.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(frames / f"{i:05d}.jpg")
    swap = instantiate(composed("data=videoswap", f"data.root={tmp_path / 'swap'}").data)
    assert len(swap) == 1


@pytest.fixture
def hydra_config():
    """Set Hydra's global config for one test and clear it after, so no later test sees it."""
    yield HydraConfig.instance().set_config
    HydraConfig.instance().cfg = None


def test_tracker_and_tiny_metric_configs_instantiate(tmp_path, hydra_config):
    for name in options("tracker"):
        cfg = composed(f"tracker={name}", "+tracker.trackers.0.path=" + str(tmp_path / "log.jsonl"))
        hydra_config(cfg)  # the wandb group resolves ${hydra:sweep.dir}
        trackers = [instantiate(t) for t in cfg.tracker.trackers]
        assert trackers and all(hasattr(t, "log_cell") for t in trackers)
    clip = instantiate(composed("metrics=tiny").metrics.clip)
    emb = clip.encode_texts(["a cat"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_demo_experiment_sweeps_the_two_baselines_offline():
    cfg = composed("experiment=demo")
    assert cfg.backbone.kind == "tiny" and cfg.metrics.clip._target_.endswith("tiny_clip")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params.method == "identity,framewise"


@pytest.mark.parametrize("name", ["davis", "folder", "tgve", "videoswap"])
def test_every_transform_and_dataset_option_is_in_the_data_config(name):
    """So `data.transform.multiple=32` or `data.frame_rate=25` needs no `+` (and shows its default)."""
    import dataclasses
    import inspect

    from vedit.data.rebuild import dataset_targets
    from vedit.data.transforms import Transform
    from vedit.registry import DATASETS

    data = composed(f"data={name}").data
    assert set(data.transform) - {"_target_"} == {f.name for f in dataclasses.fields(Transform)}
    cls = DATASETS.get(dataset_targets()[data._target_])
    assert set(data) - {"_target_"} == set(inspect.signature(cls).parameters)
