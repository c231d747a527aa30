"""Speed paths for the encoder of :mod:`bertforge.model`: the same arithmetic, faster on the CPU or leaner in memory.

    Dropout, draw_drop_mask      dropout from 16 random bits per element, its mask kept as bool
    PackedBatch                  the real tokens of a padded (B, T) batch packed into one (N, ·) run
    stable_row_count             row counts that repeat, for CPUs that compile a bf16 kernel per shape
    attention                    the one attention dispatcher: packed layouts, and the kernel that is fastest here
    SoftmaxAttentionFunction     attention with a hand-written backward pass, for training on the CPU
    GeluFeedForwardFunction      the feed-forward block, keeping less for its backward pass

Each is tested against autograd through the plain formula (tests/test_model.py). Shapes use the legend of
:mod:`bertforge.model`, plus N, the number of real tokens in a packed batch (in bf16 on the CPU its
(N, ·) runs carry E padding rows after them: :class:`PackedBatch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- dropout on the CPU -----------------------------------------------------------------------------------------
# PyTorch's CPU dropout draws one 32-bit random number per element through `bernoulli_` (~7 ns each, a tenth of a
# small BERT's training step) and keeps an fp32 mask for the backward pass. Here each element takes 16 bits of one
# 64-bit draw (~1.5 ns) and the mask is kept as bool (a quarter of the memory). On CUDA, PyTorch's fused dropout is
# faster than this and is used instead.


def draw_drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[Tensor, float]:
    """A bool mask of ``shape``, True where an element is dropped, and the scale 1 / (1 - p') for its survivors.

    Each element is dropped with probability p' = round(p · 65536) / 65536 (within 8e-6 of p), from the default
    generator, so ``torch.manual_seed`` makes it repeatable.
    """
    count = math.prod(shape)
    threshold = round(p * 65536)  # how many of the 65,536 values of a 16-bit draw mean "drop"
    bits = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    dropped = bits.view(torch.int16)[:count] < threshold - 32768  # (count,), int16 values are uniform
    return dropped.view(shape), 65536 / (65536 - threshold)


class MaskDropoutFunction(torch.autograd.Function):
    """Inverted dropout (Srivastava et al., 2014) with a mask from :func:`draw_drop_mask`, kept as bool."""

    @staticmethod
    def forward(ctx, x, p: float):
        dropped, scale = draw_drop_mask(x.shape, p, x.device)
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return x.masked_fill(dropped, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        (dropped,) = ctx.saved_tensors
        return grad_out.masked_fill(dropped, 0).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` that uses :class:`MaskDropoutFunction` when training on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.p > 0 and x.device.type == "cpu":
            return MaskDropoutFunction.apply(x, self.p)
        return super().forward(x)


# ---- unpadded execution ----------------------------------------------------------------------------------------
# Batches of real text are padded to their longest member: in Rotten Tomatoes batches of 32, about half of the
# positions are padding. Everything but attention treats tokens independently, so packing the real tokens into
# one (N, H) run skips that work exactly (as in NVIDIA's and MosaicBERT's "unpadded" BERT). Attention needs the
# sequences apart: up to BATCHED_ATTENTION_MAX_LENGTH padded positions it runs as one masked call on the (B, T)
# layout, beyond that sequence by sequence over real tokens only. Measured on a 2-core Zen 4 (bench/RESULTS.md):
# the batched call is 10-18% faster per training step at T = 64 and 128, and 22-65% slower at T = 192 and 256.
BATCHED_ATTENTION_MAX_LENGTH = 128


# oneDNN, which runs PyTorch's bf16 matmuls on the CPU, compiles a kernel for each shape it meets. Where the CPU has
# AMX tiles, compiling one costs more than running it: a bf16 (M, 256) x (256, 8192) matmul took 7.2 ms with a new M
# at every call against 1.7 ms with the same M (2-core Intel Xeon; fp32 6.1-6.8 ms either way; bench/RESULTS.md,
# 2026-12-06, session 32). Packed batches and masked-token gathers bring a new row count at every training step, so
# in bf16 on the CPU their row counts are rounded up to one of 16 steps per power of two (at most 1/16 more rows).
def stable_row_count(rows: int) -> int:
    """``rows`` rounded up to a multiple of 1/16 of its power of two (at least 16): few distinct counts."""
    step = max(16, 1 << max(rows.bit_length() - 5, 0))
    return -(-rows // step) * step


def compiles_kernels_per_shape(device: torch.device) -> bool:
    """True where matmuls run in bf16 on the CPU (autocast on), whose kernels are compiled per shape."""
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return device.type == "cpu" and bf16


@dataclass
class PackedBatch:
    """Where the N real tokens of a padded (B, T) batch go when packed into one (N + E, ·) run.

    Sequence b's tokens are packed rows ``sum(lengths[:b])`` to ``sum(lengths[:b + 1])``, in their order; the E
    rows after the N real ones are padding positions, carried only so that the row count repeats between batches
    (:func:`stable_row_count`): they are never attended to and never unpacked.
    """

    index: Tensor  # (N + E,) flat positions b·T + t: the real tokens sequence by sequence, then E padding positions
    lengths: list[int]  # B real-token counts, summing to N
    batch_shape: tuple[int, int]  # (B, T)
    tokens: int  # N

    @classmethod
    def from_mask(cls, attention_mask: Tensor, stable_rows: bool = False) -> PackedBatch:
        """From a (B, T) mask, nonzero at real tokens; ``stable_rows`` adds padding rows up to a stable count."""
        mask = attention_mask.bool()
        real = mask.flatten()
        index = real.nonzero().squeeze(1)  # (N,), sorted: sequence by sequence
        tokens = len(index)
        filler = min(stable_row_count(tokens), len(real)) - tokens if stable_rows else 0
        if filler > 0:
            index = torch.cat([index, (~real).nonzero().squeeze(1)[:filler]])
        return cls(index, mask.sum(1).tolist(), tuple(mask.shape), tokens)

    @property
    def filler(self) -> int:
        """E, the padding rows after the real ones."""
        return len(self.index) - self.tokens

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) → (N + E, ...)."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N + E, ...) → (B, T, ...), zeros at padding."""
        real = self.tokens
        padded = x.new_zeros(self.batch_shape[0] * self.batch_shape[1], *x.shape[1:])
        return padded.index_copy(0, self.index[:real], x[:real]).view(*self.batch_shape, *x.shape[1:])


# ---- attention --------------------------------------------------------------------------------------------------
# PyTorch's fused CPU attention (flash attention) is fast forward, but in bf16 its backward pass is slow at BERT's
# short sequences: up to T = 128, matmuls over the full (B, A, T, T) probabilities made a BERT-tiny training step
# ~20% faster (2-core Zen 4, bench/RESULTS.md), and those probabilities are small there (12 MB per layer at B = 32,
# A = 12, T = 128 in bf16). In fp32 the fused kernel was as fast or faster, so it stays, as it does for longer
# sequences. Attention dropout, which the fused CPU kernel cannot do, always takes the hand-written path, keeping
# the probabilities up to T = 128 and recomputing them in the backward pass beyond.
MATERIALIZED_ATTENTION_MAX_LENGTH = 128


def attention(
    qkv: Tensor,
    num_heads: int,
    key_mask: Tensor | None,
    implementation: str,
    dropout: float,
    need_weights: bool = False,
    packed: PackedBatch | None = None,
) -> tuple[Tensor, Tensor | None]:
    """softmax(QKᵀ/√D + mask)·V for every head; the one place that chooses how it runs.

    Args:
        qkv: (B, T, 3H) queries, keys and values side by side; (N, 3H) when ``packed``.
        num_heads: A; each head attends with D = H / A features.
        key_mask: (B, 1, 1, T) bool, True where a key may be attended (a real token); None attends to all.
        implementation: "sdpa" (the fastest kernel available) or "reference" (:func:`reference_attention`).
        dropout: probability of dropping each attention probability; 0 outside training.
        need_weights: also return the probabilities (always the reference path; never asked when packed).
        packed: qkv holds the real tokens of a padded batch; each sequence attends within itself.

    Returns:
        (B, T, H) context vectors, (N, H) when packed; and (B, A, T, T) probabilities when ``need_weights``.
    """
    if packed is not None and packed.batch_shape[1] > BATCHED_ATTENTION_MAX_LENGTH:
        # Long sequences: one call per sequence on its L real tokens, so there is no padding to mask.
        contexts = []
        for part in qkv[: packed.tokens].split(packed.lengths):  # (L, 3H) for each sequence of L real tokens
            context, _ = attention(part[None], num_heads, None, implementation, dropout)  # (1, L, H)
            contexts.append(context[0])
        contexts.append(qkv.new_zeros(packed.filler, qkv.shape[1] // 3))  # the padding rows attend to nothing
        return torch.cat(contexts), None  # (N + E, H)
    if packed is not None:
        # Short sequences: one masked call on the padded layout; its zero rows at padding are masked out as keys.
        context, probs = attention(packed.unpack(qkv), num_heads, key_mask, implementation, dropout, need_weights)
        return packed.pack(context), probs  # (B, T, H) → (N + E, H)

    B, T, _ = qkv.shape
    q, k, v = qkv.view(B, T, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, A, T, D)
    short = T <= MATERIALIZED_ATTENTION_MAX_LENGTH
    probs = None
    if implementation == "reference" or need_weights:
        context, probs = reference_attention(q, k, v, key_mask, dropout)
    elif q.device.type == "cpu" and q.requires_grad and (dropout > 0 or (short and q.dtype != torch.float32)):
        context = SoftmaxAttentionFunction.apply(q, k, v, key_mask, dropout, short)  # keeps probabilities if short
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
    return context.transpose(1, 2).reshape(B, T, -1), probs  # (B, A, T, D) → (B, T, H)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, dropout: float
) -> tuple[Tensor, Tensor]:
    """softmax(QKᵀ/√D + mask)·V step by step; q, k, v are (B, A, T, D), key_mask (B, 1, 1, T) bool."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, A, T, T)
    if key_mask is not None:
        # Padding keys get the lowest finite score, so exp() makes their probability exactly zero.
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)  # (B, A, T, T), each row sums to 1 over real keys
    context = F.dropout(probs, p=dropout) @ v  # (B, A, T, D)
    return context, probs


class SoftmaxAttentionFunction(torch.autograd.Function):
    """softmax(QKᵀ/√D + mask), optionally with dropout, times V, with a hand-written backward pass.

    Keeps q, k, v, the bool dropout mask and, when ``keep``, the probabilities in v's dtype; otherwise the
    backward pass recomputes them (one matmul and a softmax). Matmuls run in q's dtype (bf16 under autocast),
    the softmax and its gradient in fp32. Rows of padding queries are computed like any other and discarded by
    the caller.
    """

    @staticmethod
    def forward(ctx, q, k, v, key_mask, p: float, keep: bool):
        with torch.autocast(q.device.type, enabled=False):  # dtypes are chosen here, the same in both passes
            probs = SoftmaxAttentionFunction.probabilities(q, k, key_mask).to(v.dtype)  # (B, A, T, T)
            dropped, scale = draw_drop_mask(probs.shape, p, q.device) if p > 0 else (None, 1.0)
            kept = probs if dropped is None else probs.masked_fill(dropped, 0)
            context = kept @ v  # (B, A, T, D)
            if dropped is not None:
                context.mul_(scale)  # scaling here touches T/D times fewer numbers
        ctx.save_for_backward(q, k, v, key_mask, dropped, probs if keep else None)
        ctx.scale = scale
        return context

    @staticmethod
    def probabilities(q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        scores = (q @ k.transpose(-1, -2)).float().mul_(1 / math.sqrt(q.shape[-1]))  # (B, A, T, T)
        if key_mask is not None:
            scores.masked_fill_(~key_mask, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1)

    @staticmethod
    def backward(ctx, grad_context):
        q, k, v, key_mask, dropped, probs = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            if probs is None:
                probs = SoftmaxAttentionFunction.probabilities(q, k, key_mask).to(v.dtype)  # recomputed
            grad_context = grad_context.to(v.dtype) * ctx.scale  # (B, A, T, D)
            kept = probs if dropped is None else probs.masked_fill(dropped, 0)
            grad_v = kept.transpose(-1, -2) @ grad_context
            grad_probs = (grad_context @ v.transpose(-1, -2)).float()  # (B, A, T, T)
            if dropped is not None:
                grad_probs.masked_fill_(dropped, 0)
            # Softmax backward: dL/ds = p ⊙ (dL/dp − Σ_j p_j dL/dp_j), p the probabilities before dropout.
            probs = probs.float()
            grad_scores = grad_probs.sub_((grad_probs * probs).sum(-1, keepdim=True)).mul_(probs)
            grad_scores = grad_scores.mul_(1 / math.sqrt(q.shape[-1])).to(q.dtype)
            return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v, None, None, None


# ---- feed-forward -----------------------------------------------------------------------------------------------
# The activations GeluFeedForwardFunction computes (config hidden_act → F.gelu's `approximate`); others, and
# quantised layers, take the plain path.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class GeluFeedForwardFunction(torch.autograd.Function):
    """down(gelu(up(x))) that keeps only x and the (B, T, F) pre-activation for the backward pass.

    Autograd would also keep gelu's (B, T, F) output for the down-projection's weight gradient; recomputing it
    from the pre-activation is one cheap elementwise pass and saves F·4 bytes per token per layer (a quarter of
    a small BERT's training activations). Gradients are those autograd computes, in the same precision.
    """

    @staticmethod
    def forward(ctx, x, up_weight, up_bias, down_weight, down_bias, approximate: str):
        pre = F.linear(x, up_weight, up_bias)  # (B, T, F); bf16 under autocast
        out = F.linear(F.gelu(pre, approximate=approximate), down_weight, down_bias)  # (B, T, H)
        ctx.save_for_backward(x, pre, up_weight, down_weight)
        ctx.approximate = approximate
        ctx.bias_dtypes = (up_bias.dtype, down_bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, pre, up_weight, down_weight = ctx.saved_tensors
        compute = pre.dtype  # the dtype the forward matmuls ran in (autocast's, or the weights')
        pre2, grad2 = pre.reshape(-1, pre.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]).to(compute)  # (N, ·)
        activated = F.gelu(pre2, approximate=ctx.approximate)  # (N, F), recomputed
        grad_down_weight = (grad2.t() @ activated).to(down_weight.dtype)  # (H, F)
        grad_pre = torch.ops.aten.gelu_backward(grad2 @ down_weight.to(compute), pre2, approximate=ctx.approximate)
        x2 = x.reshape(-1, x.shape[-1]).to(compute)  # (N, H)
        grad_up_weight = (grad_pre.t() @ x2).to(up_weight.dtype)  # (F, H)
        grad_x = (grad_pre @ up_weight.to(compute)).to(x.dtype).reshape(x.shape)
        up_bias_dtype, down_bias_dtype = ctx.bias_dtypes
        grad_up_bias, grad_down_bias = grad_pre.sum(0).to(up_bias_dtype), grad2.sum(0).to(down_bias_dtype)
        return grad_x, grad_up_weight, grad_up_bias, grad_down_weight, grad_down_bias, None
