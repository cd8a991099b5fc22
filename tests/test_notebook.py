"""The leaderboard notebook executes on a store produced here and renders the tables and plots."""

from __future__ import annotations

import pytest
from conftest import execute_leaderboard_notebook

from vedit.store import ResultStore

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")


def test_notebook_renders_stored_results(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "store")
    info = {"m": {"higher_is_better": True, "convention": "test"}}
    for method, offset in [("a", 0.0), ("b", 0.5)]:
        for i, video in enumerate(["v1", "v2", "v3"]):
            key = f"{method}{video}"
            store.commit(key, store.new_workdir(key), {
                "method": method, "backbone_kind": "tiny", "video": video, "source_prompt": "s",
                "target_prompt": "t", "seed": 0, "data": {"name": "d"}, "status": "ok", "metrics": {"m": i + offset},
                "metric_info": info, "cost": {"seconds_per_frame": 1.0 + offset, "peak_gpu_memory_gb": 0.0}})
    outputs = execute_leaderboard_notebook(tmp_path / "store", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "6 cells" in text and "a [tiny]" in text and "-0.5" in text  # paired a - b = -0.5
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # quality vs cost and per-video plots
