"""Shared by the benchmarks: machine description, child-process runs with peak memory, and ratio tables."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "fma")


def machine() -> str:
    """CPU model, the SIMD flags that decide kernel choice, core count and library versions."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == (platform.processor() or "unknown CPU"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = " ".join(flag for flag in INTERESTING_FLAGS if flag in flags) or "none of " + ",".join(INTERESTING_FLAGS)
    return f"{model} | flags: {present} | threads: {torch.get_num_threads()} | torch {torch.__version__}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, *arguments: str) -> dict:
    """Run ``python -m module`` in a fresh process, so its peak memory is its own; it prints one JSON line last."""
    command = [sys.executable, "-m", module, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def transformers_adamw(model: torch.nn.Module, learning_rate: float) -> torch.optim.AdamW:
    """The optimizer of the transformers sides: AdamW, weight decay 0.01 except on biases and LayerNorm, eps 1e-6
    (bertforge's recipe), and the fused kernel, which the transformers Trainer picks by default on torch >= 2.8
    (``adamw_torch_fused``) and bertforge uses too, so speed ratios compare the models, not the optimizers."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, eps=1e-6, fused=True)
