"""backbone.compile_cache: torch.compile's caches land in the configured folder, and a second process reuses them."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from vedit.backbones.compile import use_compile_cache
    use_compile_cache(sys.argv[1])
    import torch._dynamo.utils as du
    f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos())
    x = torch.arange(8.0)
    assert torch.allclose(f(x), torch.sin(x) * 2 + x.cos())
    print(du.counters["inductor"]["fxgraph_cache_hit"], du.counters["inductor"]["fxgraph_cache_miss"])
""")


@pytest.mark.skipif(sys.platform != "linux", reason="Inductor's CPU backend needs a C++ compiler (tested on Linux)")
def test_second_process_hits_the_persistent_compile_cache(tmp_path):
    def run() -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cc")], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        hit, miss = out.stdout.split()[-2:]
        return int(hit), int(miss)

    assert run() == (0, 1)  # cold: compiled and stored
    assert any((tmp_path / "cc").rglob("*")), "nothing was written under compile_cache"
    assert run() == (1, 0)  # warm: loaded, not compiled again
