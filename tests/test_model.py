"""BertModel behaviour: padding invariance, the two attention paths, named outputs, clear input errors."""

import pytest
import torch

from bertforge import BertConfig, BertforgeError, BertModel


def tiny_model(**overrides) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        **overrides,
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


def test_recomputed_attention_dropout_gives_the_same_gradients(monkeypatch):
    """On the CPU, attention with dropout is recomputed in the backward pass to save memory; the dropout mask must
    be the one the forward pass drew, so loss and gradients equal those of the plain computation."""
    import bertforge.model

    def run():
        torch.manual_seed(0)
        model = tiny_model(attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.0).train()
        ids, types = random_batch()
        torch.manual_seed(1)
        loss = model(ids, torch.ones_like(ids), types).last_hidden_state.pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    recomputed_loss, recomputed = run()
    monkeypatch.setattr(bertforge.model, "checkpoint", lambda f, *args, use_reentrant, **kwargs: f(*args, **kwargs))
    plain_loss, plain = run()
    torch.testing.assert_close(recomputed_loss, plain_loss, rtol=0, atol=0)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, msg=name)


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
