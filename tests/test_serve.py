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


def test_the_page_shows_the_label_in_a_real_browser(classifier, tmp_path):
    """Headless chromium through its WebDriver: type a sentence, submit, the label appears."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt-get install chromium chromium-driver"
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bertforge", "serve", "--model", str(classifier), "--port",
                               str(port)])  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'c'}"):
        options.add_argument(flag)
    browser = None
    try:
        for _ in range(300):  # bounded: 30 s; uvicorn listens only once the model is loaded
            if _listening(port):
                break
            time.sleep(0.1)
        service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
        browser = webdriver.Chrome(options=options, service=service)
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "text").send_keys("the cat sat on the mat.")
        browser.find_element(By.ID, "submit").click()
        label = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "label")).text
        expected = pipeline("text-classification", model=classifier)("the cat sat on the mat.")["label"]
        assert expected in label
        assert "curl -X POST" in browser.find_element(By.ID, "curl").text
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        assert server.wait(timeout=30) == 0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
