from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vedit.data.transforms import Transform
from vedit.registry import DATASETS, EDITORS, METRICS, Registry, UnknownNameError

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(UnknownNameError) as e:
        EDITORS.get("pix2vidoe")
    msg = str(e.value)
    assert "Did you mean 'pix2video'?" in msg
    assert "framewise" in msg and "identity" in msg


def test_lazy_entry_imports_on_first_lookup_and_decorator_replaces_it():
    reg = Registry("thing")
    reg.register("od", "collections:OrderedDict")
    from collections import OrderedDict

    assert reg.get("od") is OrderedDict
    reg.register("od")(OrderedDict)  # the module registering itself: same object, no error
    with pytest.raises(ValueError, match="already registered"):
        reg.register("od")(dict)


def test_every_registered_editor_has_a_method_config_and_back():
    names = {p.stem for p in (CONF / "method").glob("*.yaml")}
    assert names == set(EDITORS.names())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in names:  # as Hydra composes them (a preset may extend another method's config)
            cfg = OmegaConf.to_container(compose("config", overrides=[f"method={name}"]).method)
            assert cfg["name"] == name
            assert {"name", "family", "params"} <= set(cfg) <= {"name", "family", "params", "resolution"}, name
            if "resolution" in cfg:  # the released code's data.transform, noted when a run differs
                Transform(**cfg["resolution"])


def test_registered_datasets_and_metrics_resolve():
    for reg in (DATASETS, METRICS):
        for name in reg.names():
            assert callable(reg.get(name)), name
