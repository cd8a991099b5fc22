import pickle
import sys
import types
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
    assert set(EDITORS.names()) <= names  # every editor has a config named after it
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in names:  # as Hydra composes them (a preset extends its method's config)
            cfg = OmegaConf.to_container(compose("config", overrides=[f"method={name}"]).method)
            assert cfg["name"] == name or (cfg["name"] in EDITORS and name.startswith(cfg["name"] + "_")), name
            assert {"name", "family", "params"} <= set(cfg) <= {"name", "family", "params", "resolution"}, name
            if "resolution" in cfg:  # the released code's data.transform, noted when a run differs
                Transform(**cfg["resolution"])


def test_registered_datasets_and_metrics_resolve():
    for reg in (DATASETS, METRICS):
        for name in reg.names():
            assert callable(reg.get(name)), name


def test_a_new_module_is_an_editor_without_editing_the_registry(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("")  # shared code, not an editor
    (pkg / "mymethod.py").write_text(
        "from tests_registry_reg import REG\n@REG.register('mymethod')\nclass MyMethod:\n    pass\n")
    (pkg / "broken.py").write_text("X = 1\n")  # registers nothing
    reg = Registry("editor")
    monkeypatch.setitem(sys.modules, "tests_registry_reg", types.SimpleNamespace(REG=reg))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.discover("plugpkg", skip=("base",))
    assert reg.names() == ["broken", "mymethod"]
    assert "plugpkg.mymethod" not in sys.modules  # listed without importing
    copied = pickle.loads(pickle.dumps(reg))  # as Hydra's joblib launcher ships the runner to a worker
    assert copied.get("mymethod") is reg.get("mymethod") and reg.get("mymethod").__name__ == "MyMethod"
    with pytest.raises(UnknownNameError, match="registers no editor"):
        reg.get("broken")
    with pytest.raises(UnknownNameError, match="Did you mean 'mymethod'"):
        reg.get("mymethd")


def test_installed_packages_add_editors_through_entry_points(tmp_path, monkeypatch):
    dist = tmp_path / "vedit_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vedit-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vedit.editors]\nod = collections:OrderedDict\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("editor")
    reg.discover_entry_points("vedit.editors")
    from collections import OrderedDict

    assert reg.get("od") is OrderedDict


def test_editors_are_the_modules_of_vedit_editors_and_baselines():
    assert {"pix2video", "rerender", "vidmp3", "tokenflow", "identity", "framewise"} <= set(EDITORS.names())
    assert "base" not in EDITORS.names()
