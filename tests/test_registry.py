from pathlib import Path

import pytest
import yaml

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
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "method").glob("*.yaml")}
    assert set(configs) == set(EDITORS.names())
    for name, cfg in configs.items():
        assert cfg["name"] == name
        assert {"name", "family", "params"} <= set(cfg) <= {"name", "family", "params", "resolution"}, name
        if "resolution" in cfg:  # the released code's data.transform, noted when a run differs
            Transform(**cfg["resolution"])


def test_registered_datasets_and_metrics_resolve():
    for reg in (DATASETS, METRICS):
        for name in reg.names():
            assert callable(reg.get(name)), name
