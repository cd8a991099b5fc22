"""Sweeps through Hydra launchers (joblib, submitit's local executor) and two sweeps on one store at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_resume import REPO, env, starts, sweep_args
from vedit.store import ResultStore

TINY = ["method=identity", "data=synthetic", "data.num_videos=2", "data.num_frames=4", "data.size=[32,32]",
        "backbone=tiny", "metrics=tiny", "metrics.names=[]", "seed=0,1"]


def run_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vedit.run", "-m", *TINY, f"store_dir={tmp_path / 'store'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def check_store(tmp_path: Path) -> list[dict]:
    records = list(ResultStore(tmp_path / "store").records())
    assert len(records) == 12  # 2 videos x 3 prompts x 2 seeds
    assert {r["seed"] for r in records} == {0, 1} and all(r["status"] == "ok" for r in records)
    assert len(list((tmp_path / "sweep").rglob("cells.txt"))) == 2  # one index per job
    return records


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1"],
])
def test_local_launchers_run_the_grid(tmp_path, launcher):
    pytest.importorskip("hydra_plugins.hydra_" + launcher[0].split("=")[1].split("_")[0] + "_launcher")
    done = run_sweep(tmp_path, *launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    check_store(tmp_path)
    assert "sweep results (12 cells, 0 failed" in done.stdout


def test_two_sweeps_on_one_store_lose_nothing_and_compute_each_cell_once(tmp_path):
    store_dir, counter = tmp_path / "store", tmp_path / "counter.txt"
    procs = [subprocess.Popen(sweep_args(store_dir, tmp_path / f"out{i}"), cwd=REPO,
                              env=env(counter, VEDIT_TEST_SLEEP="0.2"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    store = ResultStore(store_dir)
    records = list(store.records())
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    cells = [cell for _, cell in starts(counter)]
    assert sorted(cells) == sorted(set(cells)) and len(cells) == 12  # every cell computed exactly once
    assert not store.claimed() and not list(store.tmp.iterdir())
    # both sweeps report every cell in their job indexes (the other's cells taken from the store)
    for i in range(2):
        keys = set()
        for index in (tmp_path / f"out{i}").rglob("cells.txt"):
            keys.update(index.read_text().split())
        assert keys == {r["key"] for r in records}


@pytest.mark.parametrize("suite,target,prompts", [
    ("davis", "vedit.data.davis.DavisDataset", "benchmarks/suites/davis.yaml"),
    ("videoswap", "vedit.data.videoswap.VideoSwapDataset", "benchmarks/suites/videoswap.yaml"),
    ("clips", "vedit.data.folder.FolderDataset", "clips.yaml"),
    ("synthetic", "vedit.data.synthetic.SyntheticDataset", None),
])
def test_suite_selects_data_and_prompts(suite, target, prompts):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[f"suite={suite}", "method=identity"])
    assert cfg.data._target_ == target and cfg.data.get("prompts") == prompts
    if prompts and prompts.startswith("benchmarks/"):
        assert (REPO / prompts).exists()


def test_suite_files_have_the_prompt_layout():
    import yaml

    for name in ("davis", "videoswap", "synthetic"):
        suite = yaml.safe_load((REPO / "benchmarks" / "suites" / f"{name}.yaml").read_text())
        assert suite["suite"] == name and suite["version"] >= 1
        for vid, entry in suite["videos"].items():
            assert entry["source_prompt"] and entry["edit_prompts"], vid
            assert all(p != entry["source_prompt"] for p in entry["edit_prompts"]), vid
    videoswap = yaml.safe_load((REPO / "benchmarks/suites/videoswap.yaml").read_text())["videos"]
    categories = [v["category"] for v in videoswap.values()]
    assert len(videoswap) == 30 and all(categories.count(c) == 10 for c in ("human", "animal", "object"))
    assert all(len(v["customized"]) == len(v["edit_prompts"]) for v in videoswap.values())


def test_gpu_slots_put_processes_per_gpu_on_each_gpu(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from vedit.hydra_callbacks import OneGpuPerJob

    config = OmegaConf.create({"store_dir": str(tmp_path / "store"), "hydra": {"job": {"num": 0}}})
    callback = OneGpuPerJob(devices=4, processes_per_gpu=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # both restored after the test (the callback sets them)
    monkeypatch.setenv("VEDIT_GPU_SLOT", "")
    gpus = []
    for _ in range(4):  # each call stands for a new process (the slot variable unset): the next free slot
        monkeypatch.delenv("VEDIT_GPU_SLOT", raising=False)
        callback.on_job_start(config)
        gpus.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert gpus == ["0", "0", "1", "1"]
    monkeypatch.delenv("VEDIT_GPU_SLOT", raising=False)
    with pytest.raises(RuntimeError, match="all 4 GPU slots"):
        callback.on_job_start(config)
