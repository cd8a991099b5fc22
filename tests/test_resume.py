"""Resume and failure isolation, for real: sweeps in subprocesses, killed with SIGKILL and rerun.

The sweeps use a test-only editor `sleepy` (registered inside the subprocess only, so the registry
of the test process stays clean): it copies the source, appends "<time> <video>|<prompt>|<seed>" to a
counter file when it starts, sleeps, and raises a simulated CUDA OOM for one prompt when asked.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vedit.store import ResultStore

REPO = Path(__file__).resolve().parents[1]

BOOT = r'''
import os, sys, time
from vedit.editors.base import Editor, PhaseTimer
from vedit.registry import EDITORS, METRICS

class Sleepy(Editor):
    name = "sleepy"
    def edit(self, task):
        with open(os.environ["VEDIT_TEST_COUNTER"], "a") as f:
            f.write(f"{time.time()} {task.video.id}|{task.target_prompt}|{task.seed}\n")
        if os.environ.get("VEDIT_TEST_FAIL") and "marble" in task.target_prompt:
            raise RuntimeError("CUDA out of memory (simulated)")
        time.sleep(float(os.environ.get("VEDIT_TEST_SLEEP", "0")))
        timer = PhaseTimer()
        with timer.phase("sampling"):
            frames = task.video.frames.clone()
        return timer.result(frames)

class MeanPixel:
    name, higher_is_better, convention = "mean_pixel", True, "mean of the edited frames in [0, 1]"
    def __call__(self, edited, task):
        return {"mean_pixel": float(edited.double().mean())}

EDITORS.register("sleepy", Sleepy)
METRICS.register("mean_pixel", MeanPixel)
from vedit.run import main
sys.argv = ["vedit.run", *sys.argv[1:]]
main()
'''


def sweep_args(store: Path, out: Path, *extra: str) -> list[str]:
    """A tiny sweep: 2 synthetic videos x 3 prompts x seeds 0,1 = 12 cells, one process (basic launcher)."""
    return [sys.executable, "-c", BOOT, "-m", "method=identity", "method.name=sleepy", "data=synthetic",
            "data.num_frames=4", "data.size=[32,32]", "backbone=tiny", "metrics=tiny", "metrics.names=[mean_pixel]",
            "seed=0,1", f"store_dir={store}", f"hydra.sweep.dir={out}", "hydra/job_logging=disabled", *extra]


def env(counter: Path, **extra: str) -> dict:
    return {**os.environ, "VEDIT_TEST_COUNTER": str(counter), "PYTHONPATH": str(REPO), **extra}


def starts(counter: Path) -> list[tuple[float, str]]:
    if not counter.exists():
        return []
    lines = [line.split(" ", 1) for line in counter.read_text().splitlines() if line]
    return [(float(t), cell) for t, cell in lines]


def reference_means() -> dict[tuple[str, str], float]:
    """What an uninterrupted run stores: identity output, so the mean of the source frames as stored
    (8-bit: metrics are computed on the stored frames)."""
    from vedit.data.synthetic import SyntheticDataset

    ds = SyntheticDataset(num_videos=2, num_frames=4, size=(32, 32))
    out = {}
    for vid in ds.video_ids():
        item = ds.load(vid)
        for prompt in item.edit_prompts:
            out[(vid, prompt)] = float((item.video.frames * 255).round().to(torch.uint8).float().div(255).double().mean())
    return out


def test_sigkill_resume_failure_isolation_and_retry(tmp_path):
    store_dir, counter = tmp_path / "store", tmp_path / "counter.txt"
    rng = random.Random(0)
    kills = 0
    for attempt in range(2):  # start, wait until it is computing, kill at a random moment
        before = len(starts(counter))
        proc = subprocess.Popen(sweep_args(store_dir, tmp_path / f"out{attempt}"), cwd=REPO,
                                env=env(counter, VEDIT_TEST_SLEEP="0.3", VEDIT_TEST_FAIL="1"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(starts(counter)) == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2, "the sweep finished before it could be killed; raise VEDIT_TEST_SLEEP"
    done = subprocess.run(sweep_args(store_dir, tmp_path / "final", "allow_failures=true"), cwd=REPO,
                          capture_output=True, text=True,
                          env=env(counter, VEDIT_TEST_SLEEP="0.0", VEDIT_TEST_FAIL="1"))
    assert done.returncode == 0, done.stderr[-3000:]

    store = ResultStore(store_dir)
    records = list(store.records())
    assert len(records) == 12 and not list(store.tmp.iterdir()) and not store.claimed()
    ref = reference_means()
    for rec in records:
        if "marble" in rec["target_prompt"]:  # the failing cell is recorded with its reason; the rest went on
            assert rec["status"] == "failed" and "CUDA out of memory" in rec["error"]
        else:
            assert rec["status"] == "ok"
            assert rec["metrics"]["mean_pixel"] == pytest.approx(ref[(rec["video"], rec["target_prompt"])], abs=1e-12)
            assert (Path(rec["_dir"]) / "edited.mp4").stat().st_size > 0
    # a finished cell is never started again; at most the cell in progress is lost per kill
    finished = {f"{r['video']}|{r['target_prompt']}|{r['seed']}": r["finished_at"] for r in records}
    log = starts(counter)
    assert all(t <= finished[cell] for t, cell in log)
    assert len(finished) <= len(log) <= len(finished) + kills

    # failed cells are retried only when asked (the reruns above did not: no start after a finish)
    retry = subprocess.run(sweep_args(store_dir, tmp_path / "retry", "retry_failed=true"), cwd=REPO,
                           capture_output=True, text=True, env=env(counter))
    assert retry.returncode == 0, retry.stderr[-3000:]
    retried = [cell for _, cell in starts(counter)[len(log):]]
    assert sorted(retried) == sorted(c for c in finished if "marble" in c)
    assert all(r["status"] == "ok" for r in store.records())


def test_claims_exclude_live_processes_and_break_dead_ones(tmp_path):
    store = ResultStore(tmp_path)
    assert store.claim("a") and not store.claim("a")  # held by this (live) process
    assert store.claimed() == ["a"]
    store.release("a")
    assert store.claim("a")
    store.release("a")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import json
    import socket

    (store.claims / "b").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "time": 0}))
    assert store.claimed() == []
    assert store.claim("b")  # the dead process's claim is broken
    assert json.loads((store.claims / "b").read_text())["pid"] == os.getpid()
    assert not list(store.claims.glob("b.stale.*"))


def test_claim_of_another_host_is_stale_only_after_timeout(tmp_path):
    import json

    store = ResultStore(tmp_path, stale_after=60)
    path = store.claims / "c"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    assert not store.claim("c")
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert store.claim("c")
