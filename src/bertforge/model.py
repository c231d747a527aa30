"""The BERT encoder (Devlin et al., 2019), in plain PyTorch, readable top to bottom.

    BertEmbeddings → BertLayer × L (self-attention → add & norm → feed-forward → add & norm) → BertPooler

Shape legend used in the comments:
    B  batch size                 T  sequence length (tokens, padding included)
    H  hidden size                A  attention heads            D  head size = H / A
    F  feed-forward inner size    V  vocabulary size            N  real tokens of a batch, when packed

The arithmetic is the formulas in the docstrings; :mod:`bertforge.kernels` holds the faster ways of running
it (CPU dropout, packed batches without padding, hand-written backward passes), and its :func:`attention` is
the one place that chooses how attention runs. Parameter names are our own; :mod:`bertforge.checkpoint` is the
one place that maps them to and from Hugging Face's names, and gives every model save_pretrained/from_pretrained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.checkpoint import PretrainedModule
from bertforge.config import BertConfig
from bertforge.errors import BertforgeError
from bertforge.kernels import (
    GELU_APPROXIMATIONS,
    Dropout,
    GeluFeedForwardFunction,
    PackedBatch,
    attention,
    compiles_kernels_per_shape,
)

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
            implementation: "sdpa" (the fastest kernel) or "reference" (the formula written out); see
                :func:`bertforge.kernels.attention`.
            need_weights: also return the attention probabilities (uses the reference path; not when packed).
            packed: x holds the real tokens of a padded batch; each sequence attends within itself.

        Returns:
            Output vectors shaped as x and, when asked, (B, A, T, T) attention probabilities.
        """
        qkv = self.qkv(x)  # (B, T, 3H), or (N, 3H) when packed
        dropout = self.dropout_prob if self.training else 0.0
        context, probs = attention(qkv, self.num_heads, key_mask, implementation, dropout, need_weights, packed)
        return self.out(context), probs  # (B, T, H), or (N, H) when packed


class FeedForward(nn.Module):
    """Position-wise feed-forward network: H → F → activation → H."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATION_FUNCTIONS[config.hidden_act]
        self.gelu_approximation = GELU_APPROXIMATIONS.get(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, H) → (B, T, H), or (N, H) → (N, H) when packed."""
        # Training keeps less for the backward pass (GeluFeedForwardFunction); quantised layers take the plain path.
        lean = self.gelu_approximation is not None and all(isinstance(m, nn.Linear) for m in (self.up, self.down))
        if lean and torch.is_grad_enabled():
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


class BertPreTrainedModel(PretrainedModule):
    """Shared by the encoder and every task model: BERT initialisation; checkpoints come from PretrainedModule."""

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
            packed = PackedBatch.from_mask(real, stable_rows=compiles_kernels_per_shape(input_ids.device))
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
