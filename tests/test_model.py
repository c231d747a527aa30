"""BertModel behaviour: padding invariance, the two attention paths, named outputs, clear input errors."""

import pytest
import torch

from bertforge import BertConfig, BertforgeError, BertModel
from bertforge.kernels import BATCHED_ATTENTION_MAX_LENGTH


def tiny_model(**overrides) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        **{"max_position_embeddings": 64, **overrides},
    )
    return BertModel(config).eval()


def random_batch(batch=3, length=11, vocab=99, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    types = torch.randint(0, 2, (batch, length), generator=generator)
    return ids, types


def test_initialisation_follows_bert():
    model = tiny_model()
    weight = model.layers[0].feed_forward.up.weight
    assert abs(weight.std().item() - 0.02) < 0.004
    assert torch.all(model.layers[0].feed_forward.up.bias == 0)
    assert torch.all(model.embeddings.norm.weight == 1)
    assert torch.all(model.embeddings.word.weight[0] == 0)  # [PAD] row


@pytest.mark.parametrize("implementation", ["sdpa", "reference"])
def test_padding_never_changes_real_token_outputs(implementation):
    model = tiny_model(attention_implementation=implementation)
    ids, types = random_batch()
    lengths = [11, 6, 2]
    padded_ids = torch.zeros(3, 16, dtype=torch.long)
    padded_types = torch.zeros(3, 16, dtype=torch.long)
    mask = torch.zeros(3, 16, dtype=torch.long)
    with torch.no_grad():
        for row, length in enumerate(lengths):
            padded_ids[row, :length] = ids[row, :length]
            padded_types[row, :length] = types[row, :length]
            mask[row, :length] = 1
        padded = model(padded_ids, mask, padded_types)
        for row, length in enumerate(lengths):
            alone = model(ids[row : row + 1, :length], token_type_ids=types[row : row + 1, :length])
            torch.testing.assert_close(
                padded.last_hidden_state[row, :length], alone.last_hidden_state[0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(padded.pooler_output[row], alone.pooler_output[0], atol=1e-5, rtol=0)


def test_attention_paths_agree():
    fast, reference = tiny_model(), tiny_model(attention_implementation="reference")
    ids, types = random_batch()
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4, [1] * 3 + [0] * 8])
    with torch.no_grad():
        a, b = fast(ids, mask, types), reference(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)


def test_optional_outputs_have_documented_shapes():
    model = tiny_model()
    ids, types = random_batch()
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = model(ids, mask, types, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 11, 32)
    assert out.pooler_output.shape == (3, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 11, 11)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, 11))
    assert torch.all(out.attentions[0][1, :, :, 5:] == 0)  # padding keys get exactly zero probability


def test_without_pooler():
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=99), add_pooling_layer=False)
    ids, _ = random_batch()
    assert model(ids).pooler_output is None


def test_dropout_is_active_in_training_only():
    model = tiny_model()
    ids, _ = random_batch()
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
        model.train()
        assert not torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)


def test_every_parameter_gets_a_gradient():
    model = tiny_model().train()
    ids, types = random_batch()
    out = model(ids, torch.ones_like(ids), types)
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.full((1, 65), 5), "exceeds max_position_embeddings 64"),
        (torch.tensor([[5, 99]]), "outside the vocabulary"),
        (torch.tensor([5, 6]), "shape"),
    ],
)
def test_bad_inputs_say_what_to_change(ids, message):
    with pytest.raises(BertforgeError, match=message):
        tiny_model()(ids)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_mask_drops_the_asked_share_and_keeps_the_mean(p):
    from bertforge.kernels import Dropout, draw_drop_mask

    torch.manual_seed(0)
    dropped, scale = draw_drop_mask(torch.Size([1000, 1001]), p, torch.device("cpu"))  # not a multiple of 4
    assert dropped.shape == (1000, 1001) and dropped.dtype == torch.bool
    assert abs(dropped.float().mean().item() - p) < 0.002  # ~1M draws: the standard error is under 0.0005
    assert abs(1 / scale - (1 - p)) < 1e-4
    torch.manual_seed(0)
    assert torch.equal(draw_drop_mask(torch.Size([1000, 1001]), p, torch.device("cpu"))[0], dropped)  # seeded

    dropout = Dropout(p).train()
    x = (torch.rand(1000, 1000) + 1).requires_grad_()
    out = dropout(x)
    survivors = out != 0
    torch.testing.assert_close(out[survivors], x[survivors] * scale)  # inverted dropout keeps the expectation
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.01
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, survivors.float() * scale)
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("keep", [True, False])  # probabilities kept for the backward pass, or recomputed there
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cpu_training_attention_equals_autograd_through_the_formula(bf16, keep, dropout):
    """The CPU training attention has a hand-written backward pass; its output and gradients must be autograd's
    through the same formula (probabilities rounded to the inputs' dtype) with the same dropout mask."""
    from bertforge.kernels import SoftmaxAttentionFunction, draw_drop_mask

    dtype = torch.bfloat16 if bf16 else torch.float32
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=generator).to(dtype).requires_grad_() for _ in range(3))
    key_mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    key_mask[1, ..., 6:] = False
    grad_out = torch.randn(2, 3, 9, 8, generator=generator).to(dtype)

    torch.manual_seed(4)
    ours = SoftmaxAttentionFunction.apply(q, k, v, key_mask, dropout, keep)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad_out)

    torch.manual_seed(4)
    scores = (q @ k.transpose(-1, -2)).float() / 8**0.5
    probs = scores.masked_fill(~key_mask, torch.finfo(torch.float32).min).softmax(-1)
    if dropout:
        dropped, scale = draw_drop_mask(probs.shape, dropout, torch.device("cpu"))
        formula = (probs.masked_fill(dropped, 0).to(dtype) @ v) * scale
        assert 0.2 < dropped.float().mean() < 0.4
    else:
        formula = probs.to(dtype) @ v
    formula_grads = torch.autograd.grad(formula, (q, k, v), grad_out)

    assert ours.dtype == dtype
    tolerance = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, formula, **tolerance)
    for name, mine, reference in zip("qkv", ours_grads, formula_grads, strict=True):
        torch.testing.assert_close(mine, reference, **tolerance, msg=name)
    assert torch.count_nonzero(ours_grads[1][1, :, 6:]) == 0  # padding keys get no gradient


def test_cpu_training_attention_takes_the_hand_written_path_only_where_it_is_faster(monkeypatch):
    from bertforge import kernels

    calls = []
    original = kernels.SoftmaxAttentionFunction.apply
    monkeypatch.setattr(
        kernels.SoftmaxAttentionFunction, "apply", lambda *args: calls.append(args[-1]) or original(*args)
    )
    longest = kernels.MATERIALIZED_ATTENTION_MAX_LENGTH
    for length, dtype, grad in ((16, torch.bfloat16, True), (16, torch.bfloat16, False), (16, torch.float32, True),
                                (longest + 1, torch.bfloat16, True)):  # fmt: skip
        qkv = torch.randn(1, length, 3 * 128, dtype=dtype, requires_grad=grad)  # two heads of 64
        kernels.attention(qkv, 2, None, "sdpa", dropout=0.0)  # only the first is hand-written
    kernels.attention(qkv, 2, None, "sdpa", dropout=0.1)  # long, training, dropout: recomputes
    qkv = torch.randn(1, 16, 3 * 128, requires_grad=True)
    kernels.attention(qkv, 2, None, "sdpa", dropout=0.1)  # short, fp32, dropout: keeps
    kernels.attention(qkv, 2, None, "reference", dropout=0.1)  # the formula, written out
    kernels.attention(qkv, 2, None, "sdpa", dropout=0.1, need_weights=True)  # probabilities asked: the formula
    assert calls == [True, False, True]


def test_cpu_and_reference_attention_agree_in_expectation_under_dropout():
    """Same weights, same inputs: the two attention paths draw different masks but average to the same output."""
    model = tiny_model(attention_probs_dropout_prob=0.2, hidden_dropout_prob=0.0).train()
    ids, types = random_batch(batch=2, length=9)
    means = {}
    with torch.no_grad():
        for implementation in ("sdpa", "reference"):
            model.config.attention_implementation = implementation
            torch.manual_seed(0)
            runs = [model(ids, torch.ones_like(ids), types).last_hidden_state for _ in range(300)]
            means[implementation] = torch.stack(runs).mean(0)
        model.eval()
        exact = model(ids, torch.ones_like(ids), types).last_hidden_state
    assert (means["sdpa"] - means["reference"]).abs().mean() < 0.05 * exact.abs().mean()


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_lean_feed_forward_backward_equals_autograd(bf16, activation):
    from bertforge.model import FeedForward

    torch.manual_seed(0)
    feed_forward = FeedForward(BertConfig.preset("tiny", vocab_size=100, hidden_act=activation))
    x = torch.randn(3, 7, 128, requires_grad=True)
    results = []
    for lean in (True, False):
        feed_forward.zero_grad()
        x.grad = None
        feed_forward.gelu_approximation = {"gelu": "none", "gelu_new": "tanh"}[activation] if lean else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = feed_forward(x)
        (out.float() ** 2).sum().backward()
        results.append([out, x.grad, *(p.grad for p in feed_forward.parameters())])
    for lean, plain in zip(*results, strict=True):
        assert lean.dtype == plain.dtype
        torch.testing.assert_close(lean, plain, rtol=0, atol=0)


def padded_batch(seed=3, longest=11):
    """Four sequences of ``longest``, 4, 1 and 7 real tokens, right-padded; real tokens of a row are contiguous."""
    ids, types = random_batch(batch=4, length=longest, seed=seed)
    mask = torch.zeros_like(ids)
    for row, length in enumerate((longest, 4, 1, 7)):
        mask[row, :length] = 1
    return ids, mask, types


@pytest.mark.parametrize("stable_rows", [False, True])  # True: padding rows carried to a stable row count
@pytest.mark.parametrize("implementation", ["sdpa", "reference"])
@pytest.mark.parametrize("longest", [11, BATCHED_ATTENTION_MAX_LENGTH + 5])  # batched / per-sequence attention
def test_unpadded_execution_equals_the_padded_path_outputs_and_gradients(implementation, longest, stable_rows,
                                                                         monkeypatch):  # fmt: skip
    # in fp32, so that the comparison is tight; the padding rows are what bf16 on the CPU adds
    monkeypatch.setattr("bertforge.model.compiles_kernels_per_shape", lambda device: stable_rows)
    model = tiny_model(attention_implementation=implementation, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
                       max_position_embeddings=160)  # fmt: skip
    ids, mask, types = padded_batch(longest=longest)
    results = {}
    for unpad in (True, False):
        model.unpad = unpad
        model.zero_grad()
        out = model(ids, mask, types, output_hidden_states=True)
        real = mask.bool()
        loss = (out.last_hidden_state[real] ** 2).sum() + out.pooler_output.sum()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results[unpad] = (out, real, grads)
    (unpadded, real, unpadded_grads), (padded, _, padded_grads) = results[True], results[False]
    torch.testing.assert_close(unpadded.last_hidden_state[real], padded.last_hidden_state[real], rtol=1e-5, atol=1e-5)
    assert unpadded.last_hidden_state[~real].abs().sum() == 0  # padding positions are zeros, never computed
    torch.testing.assert_close(unpadded.pooler_output, padded.pooler_output, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(unpadded.hidden_states, padded.hidden_states, strict=True):
        torch.testing.assert_close(mine[real], reference[real], rtol=1e-5, atol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(unpadded_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_stable_row_counts():
    from bertforge.kernels import stable_row_count

    assert [stable_row_count(n) for n in (1, 16, 17, 350, 1800, 2000, 2048, 2049)] == [
        16, 16, 32, 352, 1856, 2048, 2048, 2176
    ]  # fmt: skip
    counts = [stable_row_count(n) for n in range(1025, 2049)]
    assert len(set(counts)) == 16 and all(c - n < 1024 / 16 for n, c in zip(range(1025, 2049), counts, strict=True))


def test_packed_batch_with_stable_rows_carries_padding_rows_after_the_real_ones():
    from bertforge.kernels import PackedBatch

    ids, mask, _ = padded_batch()  # 23 real tokens of 44 positions
    packed = PackedBatch.from_mask(mask, stable_rows=True)
    assert (packed.tokens, packed.filler) == (23, 9) and packed.lengths == [11, 4, 1, 7]
    assert mask.flatten()[packed.index[23:]].sum() == 0  # the filler rows are padding positions
    rows = packed.pack(ids[..., None].float())
    assert rows.shape == (32, 1)
    torch.testing.assert_close(packed.unpack(rows), (ids * mask)[..., None].float())  # filler never unpacked


def test_unpadded_training_with_dropout_runs_per_sequence():
    from bertforge.kernels import PackedBatch

    model = tiny_model().train()
    ids, mask, types = padded_batch()
    packed = PackedBatch.from_mask(mask)
    assert packed.lengths == [11, 4, 1, 7] and packed.index.tolist()[11:15] == [11, 12, 13, 14]
    torch.testing.assert_close(packed.unpack(packed.pack(ids[..., None].float())), (ids * mask)[..., None].float())
    out = model(ids, mask, types)
    out.pooler_output.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        left_padded = model(ids.flip(1), mask.flip(1), types.flip(1)).last_hidden_state  # padding first
    assert left_padded[~mask.flip(1).bool()].abs().sum() == 0


def matching_share(model: BertModel, samples: int = 200) -> float:
    """Share of (head, x) where x's query scores x's own key above 63 other LayerNorm-like vectors' keys."""
    H, A, D = model.config.hidden_size, model.config.num_attention_heads, model.config.head_size
    weight = model.layers[0].attention.qkv.weight.detach()
    generator = torch.Generator().manual_seed(1)
    wins = []
    for _ in range(samples):
        x = torch.randn(64, H, generator=generator)  # row 0 is the query's own vector
        for head in range(A):
            q = x[0] @ weight[head * D : (head + 1) * D].T  # (D,)
            k = x @ weight[H + head * D : H + (head + 1) * D].T  # (64, D)
            wins.append(bool((k @ q).argmax() == 0))
    return sum(wins) / len(wins)


def test_mimetic_init_makes_tokens_attend_to_themselves():
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=50))
    assert matching_share(model) < 0.2  # BERT's random start: own key rarely the best of 64
    value_rows = slice(2 * model.config.hidden_size, None)
    values = model.layers[0].attention.qkv.weight[value_rows].clone()
    model.mimetic_attention_init()
    assert matching_share(model) > 0.95
    assert torch.equal(model.layers[0].attention.qkv.weight[value_rows], values)  # only queries and keys change
