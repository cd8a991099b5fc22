"""The report site: per-frame metric values, the pages' links and plots, and the site in a real
browser (headless Chromium through selenium; skipped where Chromium is not installed)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from vedit.report import build, per_frame
from vedit.report.plots import pareto_front
from vedit.run import CONF_DIR, run
from vedit.store import ResultStore
from vedit.video import frames_to_uint8, write_video

TINY = ["backbone=tiny", "data=synthetic", "metrics=tiny", "data.num_videos=2", "data.num_frames=5",
        "data.size=[32,32]", "prompts_per_video=1", "tracker.trackers=[]"]
CATEGORIES = ["style", "object", "background"]
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A demo-like store: identity and framewise (2 sampling steps) on 2 synthetic videos of 5 frames."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEDIT_CACHE", str(root / "vedit-cache"))
        for method in (["method=identity"], ["method=framewise", "method.params.steps=2"]):
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose("config", overrides=[*TINY, *method, f"store_dir={root / 'store'}",
                                                   f"cache_dir={root / 'cache'}"])
            assert run(cfg).failed == 0
    return root / "store"


@pytest.fixture(scope="module")
def categories(tmp_path_factory) -> Path:
    """Constructed TGVE-like records with prompt categories: one with a hostile video id and prompt, one with
    videos (its edit in MPEG-4 part 2), one failed; the others without videos."""
    store = ResultStore(tmp_path_factory.mktemp("categories") / "store")
    info = {"clip_text": {"higher_is_better": True, "convention": "raw cosine (clip_text_x100: x100)"}}
    for i, (method, category, value) in enumerate(
            (m, c, v + 10 * k + j) for k, m in enumerate(["a", "b"]) for j, c in enumerate(CATEGORIES)
            for v in (20.0, 22.0)):
        key, work = f"c{i}", store.new_workdir(f"c{i}")
        if i == 1:  # an edit in a codec browsers do not play (MPEG-4 part 2): the site gets an H.264 copy
            write_video(work / "side_by_side.mp4", torch.rand(5, 3, 16, 32), fps=8)
            _write_mpeg4(work / "edited.mp4", torch.rand(5, 3, 16, 16))
        store.commit(key, work, {
            "method": method, "backbone_kind": "paper", "video": "../../evil" if i == 0 else f"v{i % 2}",
            "source_prompt": "src", "target_prompt": EVIL if i == 0 else f"p{i}", "seed": 0, "data": {"name": "tgve"},
            "status": "ok", "prompt_category": category, "metric_info": info,
            "metrics": {"clip_text": value / 100, "clip_text_x100": value},
            "cost": {"seconds_per_frame": 1.0 if method == "a" else 2.0}})
    store.commit("failed", store.new_workdir("failed"), {
        "method": "a", "backbone_kind": "paper", "video": "v0", "source_prompt": "src", "target_prompt": "p0",
        "seed": 0, "data": {"name": "tgve"}, "status": "failed", "prompt_category": "style",
        "error": "EditorError: out of memory at 512x512"})
    return store.root


def _write_mpeg4(path: Path, frames: torch.Tensor) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[-1], frames.shape[-2], "yuv420p"
        for img in frames_to_uint8(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def _codec(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name


def test_pareto_front_known_answer():
    # (cost, quality): (0.5, 0.2) is cheapest, (1, 1) beats (2, 0.5), (3, 2) is the best quality
    assert pareto_front([(1, 1), (2, 0.5), (3, 2), (0.5, 0.2), (3, 1.5)]) == [3, 0, 2]


def test_per_frame_values_are_stored_and_average_to_the_scores(store):
    from vedit.leaderboard import load_records

    records = load_records([store])
    assert len(records) == 4
    for r in records:
        entries = {e["metric"]: e for e in r["metric_entries"]}
        clip = entries["clip_text"]["per_frame"]["clip_text"]
        assert len(clip) == r["num_frames"] == 5
        assert sum(clip) / len(clip) == pytest.approx(entries["clip_text"]["values"]["clip_text"], abs=1e-6)
        for name in ("warp_error", "warp_error_l1"):
            pairs = [v for v in entries[name]["per_frame"][name] if v is not None]
            assert len(entries[name]["per_frame"][name]) == 4
            assert sum(pairs) / len(pairs) == pytest.approx(entries[name]["values"][name], rel=1e-6)
        series = per_frame(r)
        assert set(series) == {"clip_text", "warp_error"}
        if r["method"] == "identity":  # the source itself under ground-truth flow: every pair ~0
            assert max(series["warp_error"][0]) < 1e-4
        else:  # a random tiny backbone's frames do not follow the motion
            assert min(series["warp_error"][0]) > 1e-3


def _links(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text())


def test_site_links_stay_relative_and_plots_are_written(store, categories, tmp_path):
    out = tmp_path / "site"
    index = build([store, categories], out)
    pages = sorted((out / "videos").glob("*.html"))
    assert len(pages) == 2 + 3  # synthetic_000/001; v0, v1 and the hostile id, written inside videos/
    for page in [index, *pages]:
        assert page.stat().st_size < 60_000  # small: videos are linked, never embedded
        text = page.read_text()
        assert "data:video" not in text and "base64" not in text and EVIL not in text
        for link in _links(page):
            if link.startswith("data:"):
                continue
            assert not link.startswith(("/", "file:", "http")), link
            assert (page.parent / link).resolve().exists(), (page, link)
    synthetic = [p for p in pages if "synthetic" in p.name]
    for page in synthetic:  # source + 2 methods' edits, a record link and a curve per cell
        links = _links(page)
        assert sum(link.endswith("side_by_side.mp4") for link in links) == 1
        assert sum(link.endswith("edited.mp4") for link in links) == 2
        assert sum(link.endswith("record.json") for link in links) == 2
        assert sum(link.endswith(".svg") for link in links) == 2
    copies = list((out / "media").iterdir())  # the MPEG-4 edit only
    assert len(copies) == 1 and _codec(copies[0]) == "h264"
    assert any(f"../media/{copies[0].name}" in _links(p) for p in pages)
    svgs = {p.name: p.read_text() for p in (out / "plots").glob("*.svg")}
    assert any(n.startswith("quality_cost-synthetic") and "Pareto front" in s for n, s in svgs.items())
    bars = [s for n, s in svgs.items() if n.startswith("categories-")]
    assert len(bars) == 1 and all(c in bars[0] for c in CATEGORIES) and "clip_text_x100" in bars[0]
    assert any("failed: EditorError: out of memory at 512x512" in p.read_text() for p in pages)
    board = index.read_text()
    assert "17 cells (1 failed)" in board
    for c in CATEGORIES:  # each method has a row per category next to its overall row
        assert board.count(f'data-category="{c}"') == 2
    assert board.count('data-category=""') == 4  # identity, framewise, a, b


def _browser(profile: Path):
    """A headless Chromium driven by selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or next((p for p in ["/usr/bin/chromedriver"] if Path(p).exists()), None)
    if binary is None or driver is None:
        pytest.skip("Chromium or chromedriver is absent (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def _wait(browser, script: str, *args, timeout: float = 15.0):
    """The script's value once truthy (polled), else its last value."""
    deadline = time.time() + timeout
    while not (value := browser.execute_script(script, *args)) and time.time() < deadline:
        time.sleep(0.05)
    return value


def _errors(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


VISIBLE = "return Array.from(document.querySelectorAll('#leaderboard tbody tr:not(.hidden)'))"
TIMES = "const t = Array.from(document.querySelectorAll('video')).map(v => v.currentTime); return t"
COLUMN = VISIBLE + ".map(r => r.children[arguments[0]].dataset.v)"


def test_site_in_a_real_browser(store, categories, tmp_path, monkeypatch):
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    out = tmp_path / "site"
    index = build([store, categories], out)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser = _browser(tmp_path / "chromium-profile")
    try:
        browser.get(index.as_uri())
        assert _errors(browser) == []
        heads = browser.find_elements("css selector", "#leaderboard thead th")
        names = [h.get_attribute("textContent") for h in heads]  # .text is empty for hidden ones
        cost = names.index("s/frame ↓")
        before = browser.execute_script(COLUMN, 0)
        heads[cost].click()
        ascending = [float(v) for v in browser.execute_script(COLUMN, cost)]
        assert ascending == sorted(ascending) and len(set(ascending)) > 1
        after = browser.execute_script(COLUMN, 0)
        assert sorted(after) == sorted(before) and after != before  # the rows moved
        heads[cost].click()
        assert [float(v) for v in browser.execute_script(COLUMN, cost)] == sorted(ascending, reverse=True)
        # one column per convention by default; the rescaled copies behind the toggle
        copy = heads[names.index("clip_text_x100 ↑")]
        assert not copy.is_displayed() and heads[names.index("clip_text ↑")].is_displayed()
        browser.find_element("id", "copies").click()
        assert copy.is_displayed()
        browser.execute_script("const s = document.getElementById('preset');"
                               "s.selectedIndex = Array.from(s.options).findIndex(o => o.text === 'tgve');"
                               "s.dispatchEvent(new Event('change'));")
        shown = {h.get_attribute("data-metric") for h in heads if h.is_displayed() and h.get_attribute("data-metric")}
        assert shown == {"clip_text", "clip_image_allpairs"}  # conf/metrics/tgve.yaml's names
        browser.execute_script("const s = document.querySelector('select.filter[data-filter=category]');"
                               "s.value = 'object'; s.dispatchEvent(new Event('change'));")
        rows = browser.execute_script(VISIBLE + ".map(r => r.dataset.category + '/' + r.dataset.method)")
        assert sorted(rows) == ["object/a", "object/b"]
        browser.execute_script("const s = document.querySelector('select.filter[data-filter=category]');"
                               "s.value = ''; s.dispatchEvent(new Event('change'));"
                               "const m = document.querySelector('select.filter[data-filter=method]');"
                               "m.value = 'identity'; m.dispatchEvent(new Event('change'));")
        assert browser.execute_script(VISIBLE + ".map(r => r.dataset.method)") == ["identity"]
        browser.save_screenshot(str(shots / "index.png"))

        pages = [p for p in sorted((out / "videos").glob("*.html")) if "<video" in p.read_text()]
        assert len(pages) == 3  # synthetic_000, synthetic_001, and v1 with the re-encoded MPEG-4 edit
        for page in pages:
            browser.get(page.as_uri())
            states = _wait(browser, "const v = Array.from(document.querySelectorAll('video'));"
                                    "return v.every(x => x.readyState >= 2) && v.map(x => x.readyState);")
            assert states and len(states) == page.read_text().count("<video"), browser.execute_script(
                "return Array.from(document.querySelectorAll('video')).map(x => [x.src, x.readyState, x.error])")
            duration = browser.execute_script("return document.querySelector('video').duration")
            assert duration > 0.3
            for target, how in [(0.4 * duration, "slider"), (0.7 * duration, "one video")]:
                if how == "slider":
                    browser.execute_script("const s = document.querySelector('[data-seek]'); s.value = arguments[0];"
                                           "s.dispatchEvent(new Event('input'));", target)
                else:  # seek the last edit alone: the others follow
                    browser.execute_script("const v = document.querySelectorAll('video');"
                                           "v[v.length - 1].currentTime = arguments[0];", target)
                times = _wait(browser, TIMES + ".every(x => Math.abs(x - arguments[0]) < 0.1) && t", target)
                assert times, (how, target, browser.execute_script(TIMES))
            browser.find_element("css selector", "[data-play]").click()
            assert _wait(browser, "return Array.from(document.querySelectorAll('video')).every(v => !v.paused)")
            browser.find_element("css selector", "[data-play]").click()
            assert _wait(browser, "return Array.from(document.querySelectorAll('video')).every(v => v.paused)")
            assert _errors(browser) == []
            browser.save_screenshot(str(shots / f"{page.stem}.png"))
    finally:
        browser.quit()
    assert all(p.stat().st_size > 1000 for p in shots.glob("*.png")) and len(list(shots.glob("*.png"))) == 4


def test_wandb_sweep_table_has_the_source_and_a_video_column_per_method(store, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from omegaconf import OmegaConf

    from vedit.leaderboard import load_records
    from vedit.tracking.wandb import log_sweep_grids, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": "sweep-7"}}, "tracker": {"trackers": [
        {"_target_": "vedit.tracking.jsonl.JsonlTracker"},
        {"_target_": "vedit.tracking.wandb.WandbTracker", "project": "vedit-test", "group": "${hydra:sweep.dir}",
         "mode": "offline", "dir": str(tmp_path)}]}})
    (table,) = log_sweep_grids(config, load_records([store]))  # the jsonl tracker logs none
    methods = ["framewise (steps=2) [tiny]", "identity [tiny]"]
    assert table.columns[-3:] == ["source", *methods]
    assert len(table.data) == 2  # 2 videos x 1 prompt x 1 seed
    assert all(isinstance(v, wandb.Video) for row in table.data for v in row[-3:])
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    deadline = time.time() + 30
    while not (logged := read_offline_run(next(folder.glob("run-*.wandb"))))["finished"] and time.time() < deadline:
        time.sleep(0.2)  # wandb's service process may still be flushing the file
    assert logged["group"] == "sweep-7"
    assert [r["grid/_type"] for r in logged["history"] if "grid/_type" in r] == ["table-file"]
