"""Device and precision choice (bertforge.runtime): the bound on oneDNN's kernel caches under bf16 autocast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bertforge import runtime

# A child process runs bf16 linear layers (forward and backward) over many token counts, as unpadded training
# batches do, and prints how much memory malloc holds in use afterwards compared with before.
GROWTH_SCRIPT = """
import ctypes, json, os, sys
import torch
from bertforge.runtime import autocast

if sys.argv[1] == "unbounded":
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ[name] = "1024"  # oneDNN's default: what the process had before limit_kernel_caches


class MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo
weight = torch.randn(128, 64, requires_grad=True)
before = libc.mallinfo2().uordblks
for tokens in range(100, 500):
    with autocast("bf16", torch.device("cpu")):
        out = torch.nn.functional.linear(torch.randn(tokens, 64, requires_grad=True), weight)
    out.float().sum().backward()
print(json.dumps({"growth_mb": (libc.mallinfo2().uordblks - before) / 2**20}))
"""


def test_bf16_autocast_on_the_cpu_limits_the_kernel_caches(monkeypatch):
    for name in runtime.KERNEL_CACHE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with runtime.autocast("fp32", torch.device("cpu")):
        pass
    assert all(name not in runtime.os.environ for name in runtime.KERNEL_CACHE_SETTINGS)  # fp32: no oneDNN caches
    with runtime.autocast("bf16", torch.device("cpu")):
        pass
    sizes = [runtime.os.environ[name] for name in runtime.KERNEL_CACHE_SETTINGS]
    assert sizes == [str(runtime.KERNEL_CACHE_CAPACITY)] * 2


def test_a_cache_size_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    runtime.limit_kernel_caches()
    assert runtime.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"
    assert runtime.os.environ["LRU_CACHE_CAPACITY"] == str(runtime.KERNEL_CACHE_CAPACITY)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's malloc statistics")
def test_memory_stops_growing_with_new_matmul_shapes(tmp_path):
    def growth(mode: str) -> float:
        script = tmp_path / "growth.py"
        script.write_text(GROWTH_SCRIPT)
        done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]

    unbounded = growth("unbounded")
    if unbounded < 40:
        pytest.skip(f"this PyTorch/CPU does not cache bf16 kernels per shape ({unbounded:.0f} MB for 400 shapes)")
    bounded = growth("bounded")  # 400 shapes x 3 matmuls: past 64 entries, old kernels are dropped
    assert bounded < 0.75 * unbounded, (bounded, unbounded)
