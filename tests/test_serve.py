"""bertforge serve: answers equal to the pipeline's, concurrent requests batched, bad requests refused with 4xx."""

import asyncio

import pytest
import torch

from bertforge import BertConfig
from bertforge.heads import BertForSequenceClassification
from bertforge.pipelines import pipeline
from bertforge.tokenizer import train_tokenizer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

TEXT = "the cat sat on the mat. the dog sat on the log. a bird flew over the house.\n" * 20


@pytest.fixture
def classifier(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 80, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tokenizer))
    config.id2label = {0: "neg", 1: "pos"}
    config.label2id = {"neg": 0, "pos": 1}
    folder = tmp_path / "model"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def _call(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post("/predict", content=body) for body in requests)), (
            await client.get("/metrics")
        ).text


def test_predict_matches_the_pipeline_and_batches_concurrent_requests(classifier):
    from bertforge.serve import create_app

    app = create_app(str(classifier), max_batch_tokens=10_000, max_wait_ms=200)
    texts = ["the cat sat on the mat.", "a bird flew.", "the dog sat on the log over the house."] * 4
    import json

    responses, metrics = asyncio.run(_call(app, [json.dumps({"inputs": t}) for t in texts]))
    expected = pipeline("text-classification", model=classifier)(texts)
    for response, want in zip(responses, expected, strict=True):
        assert response.status_code == 200
        assert response.json()["label"] == want["label"]
        assert response.json()["score"] == pytest.approx(want["score"], abs=1e-5)
    counts = [line.split()[1] for line in metrics.splitlines() if line.startswith("bertforge_batch_size_count")]
    assert int(counts[0]) < len(texts)  # concurrent requests shared forwards


def test_bad_requests_get_4xx_and_good_ones_around_them_succeed(classifier):
    from bertforge.serve import create_app

    app = create_app(str(classifier), max_request_bytes=1000)
    bodies = ['{"inputs": "the cat"}', "{not json", '{"inputs": 5}', '{"inputs": ""}', "x" * 2000]
    bodies.append('{"inputs": "a dog"}')
    responses, _ = asyncio.run(_call(app, bodies))
    assert [r.status_code for r in responses] == [200, 400, 400, 400, 413, 200]
    assert all("error" in r.json() for r in responses[1:5])


def test_a_failing_batch_fails_only_its_requests_and_the_next_one_works():
    from bertforge.serve import Batcher, Job, Metrics

    def run(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return [text.upper() for text in items]

    batcher = Batcher(run, max_batch_tokens=1, max_wait_ms=0, metrics=Metrics())

    async def ask(text):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batcher.submit(Job([text], 1, future, loop))
        return await future

    async def scenario():
        with pytest.raises(RuntimeError, match="boom"):
            await ask("boom")
        return await ask("fine")

    assert asyncio.run(scenario()) == ["FINE"]
    batcher.close()
