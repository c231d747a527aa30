"""Pretraining heads: sparse MLM equals dense restricted to masked positions; parity with transformers."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from bertforge import BertConfig
from bertforge.heads import IGNORE_INDEX, BertForMaskedLM, BertForPreTraining

HF_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def batch(seed=0, B=3, T=12, vocab=99):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 6:] = 1
    labels = torch.full((B, T), IGNORE_INDEX)
    chosen = torch.rand(B, T, generator=g) < 0.3
    chosen[:, 0] = True
    chosen &= mask.bool()
    labels[chosen] = torch.randint(5, vocab, (B, T), generator=g)[chosen]
    return ids, mask, types, labels, torch.tensor([0, 1, 0])


@pytest.mark.parametrize("logits_per_chunk", [1 << 22, 200])  # one chunk; chunks of two rows
def test_sparse_mlm_loss_and_gradients_equal_dense(logits_per_chunk, monkeypatch):
    import bertforge.heads

    monkeypatch.setattr(bertforge.heads, "LOGITS_PER_CHUNK", logits_per_chunk)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**HF_TINY, hidden_dropout_prob=0, attention_probs_dropout_prob=0))
    ids, mask, types, labels, _ = batch()
    sparse = model(ids, mask, types, mlm_labels=labels)
    sparse.mlm_loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    dense_logits = model(ids, mask, types).mlm_logits  # (B, T, V) at every position
    assert dense_logits.shape == (3, 12, 99)
    dense_loss = F.cross_entropy(dense_logits.reshape(-1, 99), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    dense_loss.backward()
    torch.testing.assert_close(sparse.mlm_loss, dense_loss)
    assert sparse.mlm_logits is None  # training keeps no (M, V) logits
    with torch.no_grad():
        inference = model(ids, mask, types, mlm_labels=labels)
    torch.testing.assert_close(inference.mlm_logits, dense_logits[labels != IGNORE_INDEX])
    torch.testing.assert_close(inference.mlm_loss, dense_loss)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None or name in sparse_grads:
            torch.testing.assert_close(sparse_grads[name], parameter.grad, msg=name)
    assert sparse.mlm_count.item() == (labels != IGNORE_INDEX).sum().item()


def test_chunked_vocabulary_loss_under_bf16_autocast_matches_autograd():
    from bertforge.heads import VocabularyCrossEntropyFunction

    torch.manual_seed(0)
    x = torch.randn(37, 16, requires_grad=True)
    weight, bias = torch.randn(301, 16, requires_grad=True), torch.randn(301, requires_grad=True)
    targets = torch.randint(0, 301, (37,))
    results = []
    for chunked in (True, False):
        x.grad = weight.grad = bias.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunked:
                loss = VocabularyCrossEntropyFunction.apply(x, weight, bias, targets, len(targets))
            else:
                loss = F.cross_entropy(F.linear(x, weight, bias).float(), targets)
        loss.backward()
        results.append((loss, x.grad, weight.grad, bias.grad))
    for chunked, plain in zip(*results, strict=True):
        assert chunked.dtype == plain.dtype
        torch.testing.assert_close(chunked, plain, rtol=2e-2, atol=2e-3)


def test_chunked_vocabulary_loss_ignores_padding_rows():
    """Rows after ``count`` (padding to a stable row count) add no loss and get no gradient, in every chunk."""
    from bertforge import heads
    from bertforge.heads import VocabularyCrossEntropyFunction

    torch.manual_seed(0)
    x = torch.randn(37, 16)
    weight, bias = torch.randn(301, 16, requires_grad=True), torch.randn(301, requires_grad=True)
    targets = torch.randint(0, 301, (37,))
    results = []
    for padding in (0, 11):
        rows = torch.cat([x, torch.randn(padding, 16)]).requires_grad_()
        weight.grad = bias.grad = None
        loss = VocabularyCrossEntropyFunction.apply(rows, weight, bias, targets, len(targets))
        loss.backward()
        results.append((loss, rows.grad[:37], weight.grad, bias.grad))
        assert rows.grad[37:].abs().sum() == 0
    for padded, plain in zip(*results, strict=True):
        torch.testing.assert_close(padded, plain)
    old_chunk = heads.LOGITS_PER_CHUNK
    heads.LOGITS_PER_CHUNK = 301 * 10  # chunks of 10 rows: the padding starts inside the fourth
    try:
        rows = torch.cat([x, torch.randn(11, 16)]).requires_grad_()
        weight.grad = bias.grad = None
        loss = VocabularyCrossEntropyFunction.apply(rows, weight, bias, targets, len(targets))
        loss.backward()
    finally:
        heads.LOGITS_PER_CHUNK = old_chunk
    torch.testing.assert_close(loss, results[1][0])
    torch.testing.assert_close(weight.grad, results[1][2])
    assert rows.grad[37:].abs().sum() == 0


def test_chunked_vocabulary_loss_with_a_frozen_table_skips_only_its_gradient():
    """With the tied table frozen (``freeze_word_embeddings``) the rows and the bias get the same gradients."""
    from bertforge.heads import VocabularyCrossEntropyFunction

    torch.manual_seed(0)
    x, weight, bias = torch.randn(37, 16), torch.randn(301, 16), torch.randn(301)
    targets = torch.randint(0, 301, (37,))
    results = []
    for frozen in (False, True):
        rows, offset = x.clone().requires_grad_(), bias.clone().requires_grad_()
        table = weight.clone().requires_grad_(not frozen)
        loss = VocabularyCrossEntropyFunction.apply(rows, table, offset, targets, len(targets))
        loss.backward()
        results.append((loss, rows.grad, offset.grad, table.grad))
    (loss, rows_grad, bias_grad, table_grad), (frozen_loss, frozen_rows_grad, frozen_bias_grad, no_grad) = results
    assert table_grad is not None and no_grad is None
    torch.testing.assert_close(frozen_loss, loss)
    torch.testing.assert_close(frozen_rows_grad, rows_grad)
    torch.testing.assert_close(frozen_bias_grad, bias_grad)


def test_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(BertConfig(**HF_TINY))
    assert "mlm.decoder.weight" not in model.state_dict()
    with torch.no_grad():
        model.bert.embeddings.word.weight[7] += 1.0
    ids = torch.tensor([[2, 7, 3]])
    logits = model(ids).mlm_logits
    assert logits.shape == (1, 3, 99)


@pytest.mark.parametrize("direction", ["bertforge → transformers", "transformers → bertforge"])
def test_pretraining_logits_match_transformers(tmp_path, direction):
    torch.manual_seed(1)
    if direction == "bertforge → transformers":
        ours = BertForPreTraining(BertConfig(**HF_TINY)).eval()
        ours.save_pretrained(tmp_path)
        theirs = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    else:
        theirs = transformers.BertForPreTraining(transformers.BertConfig(**HF_TINY)).eval()
        with torch.no_grad():
            theirs.cls.predictions.bias.normal_()  # make the untested-by-default bias non-zero
        theirs.save_pretrained(tmp_path)
        ours = BertForPreTraining.from_pretrained(tmp_path).eval()
    ids, mask, types, labels, nsp = batch(seed=2)
    with torch.no_grad():
        mine = ours(ids, mask, types)
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(mine.mlm_logits[real], reference.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.nsp_logits, reference.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        loss = ours(ids, mask, types, mlm_labels=labels, next_sentence_label=nsp).loss
        reference_loss = theirs(
            input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp
        ).loss
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)


def test_masked_lm_round_trips_through_transformers(tmp_path):
    torch.manual_seed(2)
    ours = BertForMaskedLM(BertConfig(**HF_TINY)).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, types, _, _ = batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask, types).mlm_logits[mask.bool()],
            theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[mask.bool()],
            atol=1e-5,
            rtol=1e-5,
        )
    reloaded = BertForMaskedLM.from_pretrained(tmp_path)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_masked_lm_loads_from_a_pretraining_checkpoint_skipping_nsp_and_pooler(tmp_path, caplog):
    torch.manual_seed(3)
    full = BertForPreTraining(BertConfig(**HF_TINY)).eval()
    full.save_pretrained(tmp_path)
    with caplog.at_level("INFO", logger="bertforge"):
        mlm_only = BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert "nsp, pooler not used by BertForMaskedLM, skipped" in caplog.text
    ids, mask, types, _, _ = batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(mlm_only(ids, mask, types).mlm_logits, full(ids, mask, types).mlm_logits)


def test_encoder_without_mlm_head_cannot_serve_as_masked_lm(tmp_path):
    from bertforge import BertforgeError, BertModel

    BertModel(BertConfig(**HF_TINY)).save_pretrained(tmp_path)
    with pytest.raises(BertforgeError, match=r"missing weights: mlm\.bias, mlm\.transform\.weight"):
        BertForMaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("direction", ["bertforge → transformers", "transformers → bertforge"])
@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_task_heads_match_transformers(tmp_path, direction, task):
    from bertforge.heads import BertForQuestionAnswering, BertForTokenClassification

    labels = {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}, "label2id": {"O": 0, "B-PER": 1, "I-PER": 2}}
    if task == "question-answering":
        labels = {}  # transformers sizes qa_outputs by num_labels (2 by default): start and end
    ours_class, theirs_class = {
        "token-classification": (BertForTokenClassification, transformers.BertForTokenClassification),
        "question-answering": (BertForQuestionAnswering, transformers.BertForQuestionAnswering),
    }[task]
    torch.manual_seed(5)
    if direction == "bertforge → transformers":
        ours = ours_class(BertConfig(**HF_TINY, **labels)).eval()
        ours.save_pretrained(tmp_path)
        theirs = theirs_class.from_pretrained(tmp_path).eval()
    else:
        theirs = theirs_class(transformers.BertConfig(**HF_TINY, **labels)).eval()
        theirs.save_pretrained(tmp_path)
        ours = ours_class.from_pretrained(tmp_path).eval()
    ids, mask, types, _, _ = batch(seed=6)
    with torch.no_grad():
        mine = ours(ids, mask, types)
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    if task == "token-classification":
        torch.testing.assert_close(mine.logits[real], reference.logits[real], atol=1e-5, rtol=1e-5)
        tags = torch.randint(0, 3, ids.shape)
        tags[~real] = IGNORE_INDEX
        with torch.no_grad():
            torch.testing.assert_close(
                ours(ids, mask, types, labels=tags).loss,
                theirs(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=tags).loss,
            )
    else:
        torch.testing.assert_close(mine.start_logits[real], reference.start_logits[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.end_logits[real], reference.end_logits[real], atol=1e-5, rtol=1e-5)
        starts, ends = torch.tensor([1, 3, 40]), torch.tensor([2, 5, 41])  # the last lies outside: ignored
        full = torch.ones_like(mask)  # transformers' loss keeps padding in the softmax; ours leaves it out
        with torch.no_grad():
            torch.testing.assert_close(
                ours(ids, full, types, start_positions=starts, end_positions=ends).loss,
                theirs(input_ids=ids, attention_mask=full, token_type_ids=types, start_positions=starts,
                       end_positions=ends).loss,
            )  # fmt: skip
            losses = {}
            for unpad in (True, False):  # padding is out of the loss, whichever way it was computed
                ours.bert.unpad = unpad
                losses[unpad] = ours(ids, mask, types, start_positions=starts, end_positions=ends).loss
            torch.testing.assert_close(losses[True], losses[False])
