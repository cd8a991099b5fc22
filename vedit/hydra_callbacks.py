"""Hydra callbacks: one GPU per parallel job, and the results table printed when a multirun sweep ends."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("vedit.sweep")


class OneGpuPerJob(Callback):
    """Pin each job process to a GPU through CUDA_VISIBLE_DEVICES: `devices` process slots, slot k on
    GPU k // processes_per_gpu (1: one process per GPU; 2: two processes share each GPU).

    Runs in the job's process before the task (and before CUDA starts). Launchers such as joblib
    reuse worker processes, so the GPU is chosen per process, not per job number: the first free
    slot `gpu.<k>` in the store's claim folder (O_EXCL files, freed when the process dies). A
    process keeps its GPU for every later job it runs.
    """

    def __init__(self, devices: int = 1, processes_per_gpu: int = 1) -> None:
        self.devices, self.per_gpu = int(devices), int(processes_per_gpu)
        if self.devices < 1 or self.per_gpu < 1:
            raise ValueError(f"OneGpuPerJob(devices={devices}, processes_per_gpu={processes_per_gpu}): both must be >= 1")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("VEDIT_GPU_SLOT") is not None:
            return
        from vedit.store import ResultStore

        store = ResultStore(config.store_dir)
        for k in range(self.devices):
            if store.claim(f"gpu.{k}"):
                os.environ["VEDIT_GPU_SLOT"] = str(k)
                os.environ["CUDA_VISIBLE_DEVICES"] = str(k // self.per_gpu)
                log.info("job %s (pid %d) runs on GPU %d (slot %d)", config.hydra.job.num, os.getpid(),
                         k // self.per_gpu, k)
                return
        raise RuntimeError(f"all {self.devices} GPU slots are taken by live processes; set "
                           f"hydra.launcher.n_jobs to at most the number of slots ({self.devices})")


class PrintSweepTable(Callback):
    """Per job: the store's counts; at the end: the table, the failures grouped by error, and exit
    status 1 when any cell of the sweep failed (unless allow_failures=true)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from vedit.store import ResultStore

        counts = ResultStore(config.store_dir).counts()
        log.info("job %s done; store %s: %d ok, %d failed, %d running", config.hydra.job.get("num", "-"),
                 config.store_dir, counts["ok"], counts["failed"], counts["running"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from vedit.leaderboard import format_table, load_records
        from vedit.store import RECORD, ResultStore

        keys = set()
        for index in Path(config.hydra.sweep.dir).rglob("cells.txt"):
            keys.update(k for k in index.read_text().split() if k)
        if not keys:
            return
        from vedit.run import failure_report

        store = ResultStore(config.store_dir)
        records = load_records([p for k in sorted(keys) if (p := store.cell_dir(k) / RECORD).exists()])  # with metrics
        failed = sum(r.get("status") != "ok" for r in records)
        print(f"\nsweep results ({len(records)} cells, {failed} failed, store {config.store_dir}):")
        print(format_table(records))
        try:
            from vedit.tracking.wandb import log_sweep_grids

            log_sweep_grids(config, records)
        except Exception as e:  # noqa: BLE001 - the sweep's results are stored; its table is an extra
            log.warning("wandb: the sweep's grid table was not logged: %s: %s", type(e).__name__, e)
        if failed:
            print(failure_report(records))
            if not config.get("allow_failures"):
                raise SystemExit(f"error: {failed} cell(s) of the sweep failed (see above); "
                                 "allow_failures=true makes failed cells exit 0")
