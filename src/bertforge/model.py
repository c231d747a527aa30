"""The BERT encoder (Devlin et al., 2019), in plain PyTorch, readable top to bottom.

    BertEmbeddings → BertLayer × L (self-attention → add & norm → feed-forward → add & norm) → BertPooler

Shape legend used in the comments:
    B  batch size                 T  sequence length (tokens, padding included)
    H  hidden size                A  attention heads            D  head size = H / A
    F  feed-forward inner size    V  vocabulary size

Parameter names are our own; :mod:`bertforge.checkpoint` is the one place that maps them to and from
Hugging Face's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.config import BertConfig
from bertforge.errors import BertforgeError

ACTIVATION_FUNCTIONS = {
    "gelu": F.gelu,  # the exact erf form BERT was trained with
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass
class BertModelOutput:
    """What :class:`BertModel` returns."""

    last_hidden_state: Tensor  # (B, T, H) token vectors of the last layer
    pooler_output: Tensor | None  # (B, H) tanh(dense([CLS] vector)); None without a pooler
    hidden_states: tuple[Tensor, ...] | None = None  # L + 1 tensors (B, T, H): embeddings, then each layer
    attentions: tuple[Tensor, ...] | None = None  # L tensors (B, A, T, T) of attention probabilities


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


@dataclass
class PackedBatch:
    """Where the N real tokens of a padded (B, T) batch go when packed into one (N, ·) run.

    Sequence b's tokens are packed rows ``sum(lengths[:b])`` to ``sum(lengths[:b + 1])``, in their order.
    """

    index: Tensor  # (N,) flat positions b·T + t of the real tokens, sequence by sequence
    lengths: list[int]  # B real-token counts, summing to N
    batch_shape: tuple[int, int]  # (B, T)

    @classmethod
    def from_mask(cls, attention_mask: Tensor) -> PackedBatch:
        """From a (B, T) mask, nonzero at real tokens."""
        real = attention_mask.bool()
        index = real.flatten().nonzero().squeeze(1)  # (N,), sorted: sequence by sequence
        return cls(index, real.sum(1).tolist(), tuple(real.shape))

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) → (N, ...)."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) → (B, T, ...), zeros at padding."""
        padded = x.new_zeros(self.batch_shape[0] * self.batch_shape[1], *x.shape[1:])
        return padded.index_copy(0, self.index, x).view(*self.batch_shape, *x.shape[1:])


class BertEmbeddings(nn.Module):
    """Token vectors = word + learned position + segment (token type) embedding, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids and segment ids → (B, T, H); or packed (N,) ids, segments and positions → (N, H)."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: softmax(QKᵀ/√D + mask)·V (Vaswani et al., 2017)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.dropout_prob = config.attention_probs_dropout_prob
        # One (H → 3H) projection for query, key and value: one matmul instead of three.
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        implementation: str,
        need_weights: bool = False,
        packed: PackedBatch | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend over the sequence.

        Args:
            x: (B, T, H) input vectors, or (N, H) when ``packed``.
            key_mask: (B, 1, 1, T) bool, True where a key may be attended (a real token); None attends to all.
            implementation: "sdpa" (PyTorch's fused kernel) or "reference" (the formula written out).
            need_weights: also return the attention probabilities (uses the reference path; not when packed).
            packed: x holds the real tokens of a padded batch; each sequence attends within itself.

        Returns:
            Output vectors shaped as x and, when asked, (B, A, T, T) attention probabilities.
        """
        A, D = self.num_heads, self.head_size
        if packed is not None and packed.batch_shape[1] > BATCHED_ATTENTION_MAX_LENGTH:
            contexts = []
            for part in self.qkv(x).split(packed.lengths):  # (L, 3H) for each sequence of L real tokens
                q, k, v = part.view(1, -1, 3, A, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (1, A, L, D)
                context, _ = self.attend(q, k, v, None, implementation, need_weights=False)
                contexts.append(context[0].transpose(0, 1).reshape(-1, A * D))  # (A, L, D) → (L, H)
            return self.out(torch.cat(contexts)), None  # (N, H)
        qkv = self.qkv(x)  # (B, T, 3H), or (N, 3H) when packed
        if packed is not None:
            qkv = packed.unpack(qkv)  # (B, T, 3H), zeros at padding (masked out as keys)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, A, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, A, T, D)
        context, probs = self.attend(q, k, v, key_mask, implementation, need_weights)
        context = context.transpose(1, 2).reshape(B, T, A * D)  # (B, A, T, D) → (B, T, H)
        if packed is not None:
            context = packed.pack(context)  # (N, H)
        return self.out(context), probs

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, implementation: str, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """(B, A, T, D) queries, keys and values → (B, A, T, D) context, and the probabilities when asked."""
        dropout = self.dropout_prob if self.training else 0.0
        if implementation == "sdpa" and not need_weights and q.device.type == "cpu" and q.requires_grad:
            short = q.shape[-2] <= MATERIALIZED_ATTENTION_MAX_LENGTH
            keep = short and (q.dtype != torch.float32 or dropout > 0)
            if keep or dropout > 0:
                return SoftmaxAttentionFunction.apply(q, k, v, key_mask, dropout, keep), None
        if implementation == "sdpa" and not need_weights:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout), None
        return reference_attention(q, k, v, key_mask, dropout)


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


# ---- attention for training on the CPU -------------------------------------------------------------------------
# PyTorch's fused CPU attention (flash attention) is fast forward, but in bf16 its backward pass is slow at BERT's
# short sequences: up to T = 128, matmuls over the full (B, A, T, T) probabilities made a BERT-tiny training step
# ~20% faster (2-core Zen 4, bench/RESULTS.md), and those probabilities are small there (12 MB per layer at B = 32,
# A = 12, T = 128 in bf16). In fp32 the fused kernel was as fast or faster, so it stays, as it does for longer
# sequences. Attention dropout, which the fused CPU kernel cannot do, always takes the hand-written path, keeping
# the probabilities up to T = 128 and recomputing them in the backward pass beyond.
MATERIALIZED_ATTENTION_MAX_LENGTH = 128


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


GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class FeedForward(nn.Module):
    """Position-wise feed-forward network: H → F → activation → H."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATION_FUNCTIONS[config.hidden_act]
        self.gelu_approximation = GELU_APPROXIMATIONS.get(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        lean = (
            self.gelu_approximation is not None and isinstance(self.up, nn.Linear) and isinstance(self.down, nn.Linear)
        )
        if lean and torch.is_grad_enabled():  # training: the memory-lean path
            return GeluFeedForwardFunction.apply(
                x, self.up.weight, self.up.bias, self.down.weight, self.down.bias, self.gelu_approximation
            )
        return self.down(self.activation(self.up(x)))  # (B, T, H) → (B, T, F) → (B, T, H)


class BertLayer(nn.Module):
    """One encoder layer, post-LayerNorm as in the original BERT: x = LN(x + Dropout(Sublayer(x)))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        implementation: str,
        need_weights: bool = False,
        packed: PackedBatch | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, H) → (B, T, H), or (N, H) → (N, H) when ``packed``; plus (B, A, T, T) attention probabilities
        when ``need_weights``."""
        attended, probs = self.attention(x, key_mask, implementation, need_weights, packed)
        x = self.attention_norm(x + self.dropout(attended))
        x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        return x, probs


class BertPooler(nn.Module):
    """Sentence vector: dense + tanh over the [CLS] token, trained by next-sentence prediction."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, T, H) → (B, H)


ModelT = TypeVar("ModelT", bound="BertPreTrainedModel")


class BertPreTrainedModel(nn.Module):
    """Shared by the encoder and every task model: BERT initialisation and Hugging Face-layout checkpoints."""

    config: BertConfig

    def init_weights(self) -> None:
        """BERT initialisation: weights ~ N(0, initializer_range), zero biases, unit LayerNorm, zero [PAD]."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def mimetic_attention_init(self, strength: float = 0.7) -> None:
        """Start every head's query·key form near the identity: each token attends most to tokens like itself.

        Mimetic initialisation (Trockman & Kolter, 2023, "Mimetic Initialization of Self-Attention Layers"): for
        each head, Wqᵀ·Wk ≈ strength·(Z + I) with Z ~ N(0, 1/H), the best rank-D fit taken from an SVD. BERT's
        N(0, 0.02) start gives near-uniform attention, and short pretraining runs sit on a plateau until attention
        learns to match tokens; starting from matching attention, a BERT-tiny here left that plateau about 1,500
        steps sooner (bench/RESULTS.md). Only the query and key weights change; the architecture is BERT's.
        """
        H, A, D = self.config.hidden_size, self.config.num_attention_heads, self.config.head_size
        for module in self.modules():
            if not isinstance(module, SelfAttention):
                continue
            weight = module.qkv.weight  # (3H, H): query rows, key rows, value rows; y = x Wᵀ
            for head in range(A):
                target = strength * (torch.randn(H, H) / math.sqrt(H) + torch.eye(H))  # (H, H)
                U, S, Vh = torch.linalg.svd(target)
                root = S[:D, None].sqrt()  # (D, 1)
                with torch.no_grad():
                    # q·k = xᵀ Wqᵀ Wk x with Wq = √S Uᵀ and Wk = √S Vᵀ (D rows each): xᵀ (U S Vᵀ) x ≈ xᵀ target x
                    weight[head * D : (head + 1) * D] = (root * U[:, :D].T).to(weight)
                    weight[H + head * D : H + (head + 1) * D] = (root * Vh[:D]).to(weight)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face names) into ``directory``."""
        from bertforge.checkpoint import save_model

        save_model(self, directory)

    @classmethod
    def from_pretrained(cls: type[ModelT], directory: str | Path, **config_overrides: object) -> ModelT:
        """Load a bertforge or Hugging Face BERT folder; any missing or unexpected weight is an error."""
        from bertforge.checkpoint import load_model

        return load_model(cls, directory, **config_overrides)


class BertModel(BertPreTrainedModel):
    """The bidirectional Transformer encoder: token ids → contextual vectors and a pooled sentence vector."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if add_pooling_layer else None
        # On the CPU, run padded batches on their real tokens only (PackedBatch); False keeps the padded path.
        self.unpad = True
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BertModelOutput:
        """Encode a batch.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for real tokens and 0 for padding; None means no padding.
            token_type_ids: (B, T) segment ids, 0 for sentence A and 1 for sentence B; None means all 0.
            output_hidden_states: also return the embeddings and every layer's output.
            output_attentions: also return every layer's attention probabilities.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        real = None if attention_mask is None else attention_mask.bool()  # (B, T), True at real tokens
        # (B, T) → (B, 1, 1, T): broadcast over heads and query positions; padding keys are never attended.
        key_mask = None if real is None else real[:, None, None, :]
        implementation = self.config.attention_implementation

        packed = None
        # Packing costs scatters and gathers (and, for long batches, a kernel launch per sequence): worth it on the
        # CPU, not on a GPU.
        unpad = self.unpad and real is not None and input_ids.device.type == "cpu" and not output_attentions
        if unpad and not real.all() and real.any(1).all():  # some padding, and no sequence that is padding only
            packed = PackedBatch.from_mask(real)
        if packed is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # (B, T)
            x = self.embeddings(packed.pack(input_ids), packed.pack(token_type_ids), packed.pack(positions))  # (N, H)
        else:
            x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, probs = layer(x, key_mask, implementation, need_weights=output_attentions, packed=packed)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
        if packed is not None:  # back to (B, T, H), zeros at padding
            x = packed.unpack(x)
            hidden_states = [packed.unpack(h) for h in hidden_states] if hidden_states is not None else None
        return BertModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None) -> None:
        """Turn the cryptic index errors of embedding lookups into messages that say what to change."""
        if input_ids.dim() != 2:
            raise BertforgeError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise BertforgeError(f"{name} has shape {tuple(tensor.shape)}, input_ids {tuple(input_ids.shape)}")
        length, limit = input_ids.shape[1], self.config.max_position_embeddings
        if length > limit:
            raise BertforgeError(
                f"sequence length {length} exceeds max_position_embeddings {limit}; truncate the inputs "
                f"(tokenizer(..., truncation=True, max_length={limit}))"
            )
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise BertforgeError(
                f"token id {int(input_ids.max())} is outside the vocabulary of size {self.config.vocab_size}; "
                "the tokenizer and the model do not match"
            )
        if (
            token_type_ids is not None
            and token_type_ids.numel()
            and (token_type_ids.min() < 0 or token_type_ids.max() >= self.config.type_vocab_size)
        ):
            raise BertforgeError(f"token_type_ids must be in [0, {self.config.type_vocab_size})")
