"""Dynamic int8 quantisation of the encoder's linear layers, for CPU inference.

Weights become int8 with one scale per output feature; each input row (token) is quantised on the fly with its
own scale, so a matmul is int8 × int8 → int32 (VNNI instructions where the CPU has them), rescaled to float
(Jacob et al., 2018; the scheme of PyTorch's own dynamic quantisation). The projections and feed-forward layers
hold nearly all of a BERT's arithmetic; embeddings, LayerNorm, softmax, the pooler and task heads stay in float.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor, nn

from bertforge.errors import BertforgeError
from bertforge.model import BertLayer
from bertforge.runtime import pick_device

QUANTIZATIONS = ("none", "int8")


def symmetric_int8(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """x ≈ q · scale, q in [-127, 127], one scale per slice along ``dim`` (its absolute maximum / 127)."""
    # amax and amin separately: torch.aminmax measured 10-20x slower on (1000, 384) rows, |x|.amax() 1.3x.
    high, low = x.amax(dim=dim, keepdim=True), x.amin(dim=dim, keepdim=True)
    scale = torch.maximum(high, low.neg_()).clamp_min_(1e-12).div_(127)
    return (x / scale).round_().to(torch.int8), scale


EXACT_FP32_DEPTH = 1024  # int8 products summed in fp32 stay exact integers: 1024 · 127² < 2²⁴


@functools.cache
def int8_kernel_is_fast() -> bool:
    """Whether this CPU's int8 matmul (torch._int_mm) outruns fp32. With VNNI or AMX it does, 2-4×; on an AVX2-only
    AMD EPYC it ran 50× *slower* than fp32 (3 against 141 GOP/s, bench/RESULTS.md, 2026-12-07 session 34), a
    reference loop. Timed once per process on a small product; either answer gives the same results (see
    :func:`int8_matmul`), only the speed differs."""
    a, b = torch.ones(64, 256, dtype=torch.int8), torch.ones(256, 256, dtype=torch.int8)
    af, bf = a.float(), b.float()

    def seconds(matmul) -> float:
        matmul()  # the first call may set up a kernel
        started = time.perf_counter()
        for _ in range(5):
            matmul()
        return time.perf_counter() - started

    return seconds(lambda: torch._int_mm(a, b)) < 2 * seconds(lambda: af @ bf)


def int8_matmul(a: Tensor, b: Tensor, b_float: Tensor | None = None) -> Tensor:
    """(M, K) int8 @ (K, N) int8 → (M, N) int32, exactly. Where the int8 kernel is slow (:func:`int8_kernel_is_fast`)
    the same integers come from fp32 matmuls over slices of at most ``EXACT_FP32_DEPTH`` of K, whose sums fp32
    holds exactly, added in int32: bit for bit what the int8 kernel gives, at fp32 speed. ``b_float``: ``b`` as
    float, if the caller keeps it."""
    if int8_kernel_is_fast():
        if a.shape[0] <= 16:  # the int8 kernel wants more than 16 rows; pad a few zero rows
            return torch._int_mm(torch.cat([a, a.new_zeros(17 - a.shape[0], a.shape[1])]), b)[: a.shape[0]]
        return torch._int_mm(a, b)
    b_float = b.float() if b_float is None else b_float
    a_float, depth = a.float(), a.shape[1]
    product = None
    for start in range(0, depth, EXACT_FP32_DEPTH):
        end = start + EXACT_FP32_DEPTH
        part = (a_float[:, start:end] @ b_float[start:end]).to(torch.int32)  # (M, N), exact integers
        product = part if product is None else product.add_(part)
    return product


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` computing x Wᵀ + b with int8 weights and per-token int8 inputs."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = symmetric_int8(linear.weight.detach().float(), dim=1)  # (N, K), (N, 1)
        self.register_buffer("weight_t", weight.t().contiguous())  # (K, N), the layout the int8 matmul reads
        self.register_buffer("weight_scale", scale.view(1, -1))  # (1, N)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("bias", bias)  # (N,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_t_float: Tensor | None = None  # weight_t as float, on CPUs whose int8 kernel is slow

    def forward(self, x: Tensor) -> Tensor:
        """(..., K) → (..., N) in x's dtype."""
        rows = x.reshape(-1, self.in_features).float()  # (M, K)
        quantised, scale = symmetric_int8(rows, dim=1)  # (M, K) int8, (M, 1)
        if not int8_kernel_is_fast() and self.weight_t_float is None:
            self.weight_t_float = self.weight_t.float()  # kept for int8_matmul's fp32 route: converted once
        product = int8_matmul(quantised, self.weight_t, self.weight_t_float)  # (M, N) int32
        # acc · s_x · s_w + bias, in place on one new (M, N) float tensor: int32 × float broadcasting (product *
        # scale) takes a slow type-promoting path, measured 2.7x the time of a conversion and in-place products.
        out = product.float().mul_(scale).mul_(self.weight_scale).add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def inference_device(quantization: str, requested: str = "auto") -> torch.device:
    """The device to run on: int8 layers run on the CPU, so there "auto" means the CPU and a GPU is an error."""
    if quantization == "none":
        return pick_device(requested)
    device = pick_device("cpu" if requested == "auto" else requested)
    if device.type != "cpu":
        raise BertforgeError(f"quantize={quantization!r} is for CPU inference; use device 'cpu' or 'auto'")
    return device


def quantize_encoder(model: nn.Module, quantization: str = "int8") -> nn.Module:
    """Replace the linear layers inside every encoder layer of ``model`` with :class:`Int8Linear`, in place.

    For inference on the CPU only: the result cannot be trained, and checkpoints should be saved before.
    """
    if quantization not in QUANTIZATIONS:
        raise BertforgeError(f"quantize {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return model
    layers = [module for module in model.modules() if isinstance(module, BertLayer)]
    if not layers:
        raise BertforgeError("no BERT encoder layers to quantise in this model")
    if next(model.parameters()).device.type != "cpu":
        raise BertforgeError("int8 quantisation is for CPU inference; move the model to the CPU first")
    for layer in layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    return model.eval()
