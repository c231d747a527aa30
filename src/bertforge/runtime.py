"""Where and in what precision a model runs: the device and precision choice shared by training and inference.

Kept apart from the training helpers (:mod:`bertforge.train`) so that inference modules need not import them.
Inference defaults to fp32, the same answer on every machine; training defaults to ``"auto"``: bf16 autocast
only where the hardware multiplies bf16 natively.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from bertforge.errors import BertforgeError

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(requested: str = "auto") -> torch.device:
    """ "auto" takes CUDA when present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BertforgeError(f"device {requested!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def pick_precision(requested: str, device: torch.device) -> str:
    """Resolve "auto" to the fastest precision the hardware runs natively: "bf16" or "fp32"."""
    if requested not in PRECISIONS:
        raise BertforgeError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":  # emulated bf16 (GPUs before Ampere) is slower than fp32
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# On the CPU, PyTorch runs bf16 matmuls with oneDNN, which compiles a kernel for each matmul shape and keeps the
# last 1,024 in each of two caches (oneDNN's own and its ideep wrapper's), ~0.2 MB an entry. Unpadded batches
# (kernels.PackedBatch) brought new token counts, so new shapes, at every step: in SQuAD fine-tuning the caches grew
# by 10-30 MB a step, and their long-lived entries, scattered between freed activations, kept the heap from
# shrinking (3,230 MB peak after 48 steps, 1,653 MB with 64 entries; bench/RESULTS.md, 2026-12-05). Row counts now
# repeat (kernels.stable_row_count), so a step's kernels can stay cached, and where compiling one is dear (AMX) that
# matters: the quickstart's pretraining step ran 8.3 steps/s with 64 entries, 9.5 with 256 and 10.0 with 1,024
# (2-core Intel Xeon, bench/RESULTS.md, 2026-12-06, session 32). 256 keeps most of the speed and a quarter of the
# memory the default may hold.
KERNEL_CACHE_CAPACITY = 256
KERNEL_CACHE_SETTINGS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's, ideep's


def limit_kernel_caches() -> None:
    """Keep oneDNN's caches of compiled CPU kernels to :data:`KERNEL_CACHE_CAPACITY` entries each.

    oneDNN reads the sizes from the environment when it first runs, so this takes effect only before the
    process's first bf16 matmul on the CPU (:func:`autocast` calls it); a size already set in the environment is
    kept. Results do not change: a kernel compiled again is the same kernel.
    """
    for name in KERNEL_CACHE_SETTINGS:
        os.environ.setdefault(name, str(KERNEL_CACHE_CAPACITY))


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast keeps weights and optimizer state in fp32 and runs matmuls in bf16."""
    if precision == "bf16":
        if device.type == "cpu":
            limit_kernel_caches()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
