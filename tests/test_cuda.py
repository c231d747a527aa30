"""CUDA paths: the same model, heads and recipes on a GPU agree with the CPU.

These run only where PyTorch sees a CUDA device (CI has none; they were run on a lent H100/H200, see the
closing notes of the speed issues). Everything else in the suite runs on CUDA too when one is present, since
the recipes and pipelines default to ``device: auto``.
"""

import pytest
import torch
import transformers

from bertforge import BertConfig
from bertforge.heads import BertForPreTraining, BertForSequenceClassification

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls would differ from the CPU by ~1e-3; the comparisons here are for fp32 arithmetic."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def pretraining_batch(device, seed=0, B=4, T=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 15:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 12:] = 1
    labels = torch.full((B, T), -100)
    chosen = (torch.rand(B, T, generator=g) < 0.3) & mask.bool()
    labels[chosen] = ids[chosen]
    nsp = torch.tensor([0, 1, 1, 0])
    return [t.to(device) for t in (ids, mask, types, labels, nsp)]


def training_step(model, device, precision="fp32"):
    """Loss and every parameter's gradient after one forward/backward of the pretraining loss."""
    model.zero_grad(set_to_none=True)
    ids, mask, types, labels, nsp = pretraining_batch(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(ids, mask, types, mlm_labels=labels, next_sentence_label=nsp).loss
    loss.backward()
    return loss.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


def test_training_step_on_cuda_equals_the_cpu_in_fp32():
    """Covers the fused-qkv attention, the lean feed-forward backward and the chunked vocabulary loss on CUDA."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY, hidden_dropout_prob=0, attention_probs_dropout_prob=0)).train()
    cpu_loss, cpu_grads = training_step(model, torch.device("cpu"))
    gpu_loss, gpu_grads = training_step(model.cuda(), torch.device("cuda"))
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-5, atol=1e-5)
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_training_step_on_cuda_stays_close_to_fp32():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY, hidden_dropout_prob=0, attention_probs_dropout_prob=0)).cuda()
    device = torch.device("cuda")
    fp32_loss, fp32_grads = training_step(model, device)
    bf16_loss, bf16_grads = training_step(model, device, "bf16")
    assert abs(bf16_loss.item() - fp32_loss.item()) < 0.02 * fp32_loss.item()
    differences = {}
    for name, grad in fp32_grads.items():
        assert torch.isfinite(bf16_grads[name]).all(), name
        differences[name] = ((bf16_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)).item()
    # bf16 keeps 8 bits of mantissa: ~1% per product, more on small summed gradients such as biases.
    worst = max(differences, key=differences.get)
    assert differences[worst] < 0.2, f"{worst}: bf16 gradient differs from fp32 by {differences[worst]:.3f}"
    assert sum(differences.values()) / len(differences) < 0.03, differences


def test_attention_dropout_on_cuda_is_seeded_and_trains():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).cuda().train()
    device = torch.device("cuda")
    torch.manual_seed(5)
    first_loss, first_grads = training_step(model, device)
    torch.manual_seed(5)
    again_loss, again_grads = training_step(model, device)
    torch.manual_seed(6)
    other_loss, _ = training_step(model, device)
    torch.testing.assert_close(again_loss, first_loss)  # same seed, same dropout masks
    for name, grad in first_grads.items():
        torch.testing.assert_close(again_grads[name], grad, msg=name)
    assert other_loss.item() != first_loss.item()  # dropout is really on


def test_logits_on_cuda_match_transformers_on_cuda(tmp_path):
    torch.manual_seed(1)
    ours = BertForPreTraining(BertConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path)
    ours.cuda()
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path).cuda().eval()
    ids, mask, types, _, _ = pretraining_batch(torch.device("cuda"), seed=2)
    with torch.no_grad():
        mine = ours(ids, mask, types)
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(mine.mlm_logits[real], reference.prediction_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.nsp_logits, reference.seq_relationship_logits, atol=1e-4, rtol=1e-4)


def test_a_model_saved_from_cuda_loads_on_the_cpu(tmp_path):
    torch.manual_seed(3)
    model = BertForSequenceClassification(BertConfig(**TINY, id2label={0: "a", 1: "b", 2: "c"})).cuda().eval()
    model.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert next(loaded.parameters()).device.type == "cpu"
    ids, mask, types, _, _ = pretraining_batch(torch.device("cpu"))
    with torch.no_grad():
        expected = model(ids.cuda(), mask.cuda(), types.cuda()).logits.cpu()
        torch.testing.assert_close(loaded(ids, mask, types).logits, expected, atol=1e-5, rtol=1e-5)
