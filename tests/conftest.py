import os
from pathlib import Path

import pytest
import torch

# Tiny models are dominated by per-op overhead: intra-op threads only spin-wait (measured 20-50x slower
# on a busy 2-core machine). `make test` runs one pytest worker per core instead (pytest-xdist).
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VEDIT_CACHE", str(tmp_path_factory.getbasetemp() / "vedit-cache"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a reason when it is absent (fresh clones)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (real DAVIS frames and clips) is beside CI's checkout only")
    return path


def execute_leaderboard_notebook(store_dir: Path, monkeypatch) -> list:
    """Run notebooks/leaderboard.ipynb on a store (skips without nbformat/nbclient); its code cells' outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("VEDIT_STORE", str(store_dir))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "leaderboard.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def smooth_frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, h, w) uint8 frames of smooth random colour (bilinear upsampling of a coarse grid)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 8 + 2, w // 8 + 2, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)


def pil(frame: torch.Tensor):
    """A (3, H, W) uint8 frame as a PIL image."""
    from PIL import Image

    return Image.fromarray(frame.permute(1, 2, 0).numpy())
