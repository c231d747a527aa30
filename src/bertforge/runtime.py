"""Where and in what precision a model runs: the device and precision choice shared by training and inference.

Kept apart from the training helpers (:mod:`bertforge.train`) so that inference modules need not import them.
Inference defaults to fp32, the same answer on every machine; training defaults to ``"auto"``: bf16 autocast
only where the hardware multiplies bf16 natively.
"""

from __future__ import annotations

import contextlib
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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast keeps weights and optimizer state in fp32 and runs matmuls in bf16."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
