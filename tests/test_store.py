import json
import os

from vedit.store import ResultStore, cell_key


def test_cell_key_is_stable_and_sensitive_to_every_part():
    parts = {"method": {"name": "x", "params": {"a": 1}}, "seed": 0, "video_hash": "abc"}
    assert cell_key(parts) == cell_key(json.loads(json.dumps(parts)))
    assert cell_key(parts) != cell_key({**parts, "seed": 1})
    assert cell_key(parts) != cell_key({**parts, "method": {"name": "x", "params": {"a": 2}}})


def test_commit_is_atomic_and_keeps_finished_cells(tmp_path):
    store = ResultStore(tmp_path)
    work = store.new_workdir("k1")
    (work / "edited.mp4").write_bytes(b"video")
    assert store.status("k1") is None  # nothing visible until commit
    store.commit("k1", work, {"status": "ok", "metrics": {"m": 1.0}})
    assert store.status("k1") == "ok" and (store.cell_dir("k1") / "edited.mp4").exists()
    # a second (concurrent) finisher does not overwrite the first
    other = store.new_workdir("k1")
    store.commit("k1", other, {"status": "ok", "metrics": {"m": 2.0}})
    assert store.record("k1")["metrics"] == {"m": 1.0}
    assert not other.exists()


def test_failed_cell_is_replaced_by_a_later_success(tmp_path):
    store = ResultStore(tmp_path)
    store.commit("k", store.new_workdir("k"), {"status": "failed", "error": "boom"})
    store.commit("k", store.new_workdir("k"), {"status": "ok"})
    assert store.status("k") == "ok"
    assert [r["key"] for r in store.records()] == ["k"]


def test_clean_tmp_removes_work_of_dead_processes_only(tmp_path):
    store = ResultStore(tmp_path)
    mine = store.new_workdir("a")
    host = mine.name.split(".")[1]
    dead = store.tmp / f"b.{host}.999999999.deadbeef"
    dead.mkdir()
    store.clean_tmp()
    assert mine.exists() and not dead.exists()
    assert os.getpid() == int(mine.name.split(".")[2])
