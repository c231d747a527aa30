"""bertforge serve: every route answers as its pipeline does, concurrent requests are batched, bad requests are
refused with 4xx naming the field, a failing batch fails only its own requests, and the page works in a browser."""

import asyncio
import contextlib
import json
import os

import numpy as np
import pytest
import torch

from bertforge import BertConfig
from bertforge.errors import BertforgeError
from bertforge.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.model import BertModel
from bertforge.pipelines import (
    FeatureExtractionPipeline,
    FillMaskPipeline,
    QuestionAnsweringPipeline,
    TextClassificationPipeline,
    TokenClassificationPipeline,
    pipeline,
)
from bertforge.tokenizer import train_tokenizer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

TEXT = "the cat sat on the mat. the dog sat on the log. a bird flew over the house.\n" * 20
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny_model(tmp_path, model_class, **config_fields):
    """A tiny model of ``model_class`` (random weights, seed 0) saved with a tokenizer trained on TEXT."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 80, show_progress=False)
    torch.manual_seed(0)
    folder = tmp_path / model_class.__name__
    model_class(BertConfig.preset("tiny", vocab_size=len(tokenizer), **config_fields)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def classifier(tmp_path):
    return tiny_model(tmp_path, BertForSequenceClassification, id2label={0: "neg", 1: "pos"},
                      label2id={"neg": 0, "pos": 1})  # fmt: skip


@pytest.fixture
def tagger(tmp_path):
    return tiny_model(tmp_path, BertForTokenClassification, id2label=dict(enumerate(TAGS)),
                      label2id={t: i for i, t in enumerate(TAGS)})  # fmt: skip


@pytest.fixture
def reader(tmp_path):
    return tiny_model(tmp_path, BertForQuestionAnswering)


@pytest.fixture
def masked_lm(tmp_path):
    return tiny_model(tmp_path, BertForPreTraining)


@pytest.fixture
def encoder(tmp_path):
    return tiny_model(tmp_path, BertModel)


def _send(app, path, bodies):
    """POST every body (text or bytes as they are, anything else as JSON) to ``path`` at once; the responses and
    the /metrics text after them."""

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            raw = [body if isinstance(body, str | bytes) else json.dumps(body) for body in bodies]
            responses = await asyncio.gather(*(client.post(path, content=body) for body in raw))
            return responses, (await client.get("/metrics")).text

    return asyncio.run(scenario())


# Long enough that requests sent together share one batch even on a loaded CI machine (200 ms was not, once);
# each test that asserts a single batch waits this long for it.
TOGETHER_MS = 2000


def _batches(metrics):
    return int(next(line.split()[1] for line in metrics.splitlines() if line.startswith("bertforge_batch_size_count")))


def _close(answer, expected):
    """Equal, floats within 1e-5 (a batch's padding changes scores by float rounding only), JSON lists vs tuples."""
    if isinstance(expected, dict):
        assert isinstance(answer, dict) and answer.keys() == expected.keys()
        for key in expected:
            _close(answer[key], expected[key])
    elif isinstance(expected, list | tuple | np.ndarray):
        assert isinstance(answer, list) and len(answer) == len(expected)
        for got, want in zip(answer, expected, strict=True):
            _close(got, want)
    elif isinstance(expected, float | np.floating):
        assert answer == pytest.approx(float(expected), abs=1e-5)
    else:
        assert answer == expected


def _app(folder, **options):
    from bertforge.serve import create_app

    # in the server's own process unless a test asks for the model process: a child per app would cost each test
    # seconds of start-up
    return create_app(str(folder), **{"max_batch_tokens": 10_000, "max_wait_ms": 200, "inference": "thread", **options})


def test_predict_matches_the_pipeline_and_batches_concurrent_requests(classifier):
    texts = ["the cat sat on the mat.", "a bird flew.", "the dog sat on the log over the house."] * 4
    responses, metrics = _send(_app(classifier), "/predict", [{"inputs": t} for t in texts])
    assert all(r.status_code == 200 for r in responses)
    _close([r.json() for r in responses], pipeline("text-classification", model=classifier)(texts))
    assert _batches(metrics) < len(texts)  # concurrent requests shared forwards


def test_counting_a_request_leaves_the_batch_tokenizer_as_the_batch_set_it(classifier):
    """The event loop counts tokens while the batcher thread encodes: they must not share the engine whose
    truncation each call sets, or a count could turn a batch's truncation off before it encodes."""
    from bertforge.serve import model_pipelines, model_routes

    architecture = "BertForSequenceClassification"
    task, _ = model_routes(architecture, model_pipelines(str(classifier), architecture, "fp32", "none"))
    engine = task.run.tokenizer._engine
    task.run.tokenizer("the cat sat " * 20, truncation=True, max_length=8)  # a batch sets its truncation
    setting = engine.truncation
    assert task.tokens("the cat sat " * 20) == 62  # counted in full, while the batch's engine still cuts at 8
    assert engine.truncation == setting and setting["max_length"] == 8


def test_text_pairs_are_answered_as_the_pipeline_answers_each_alone(classifier):
    """A text alone, a pair, and a list mixing both, sent at once: each answer is its input's own."""
    first, second = "the cat sat on the mat.", "a bird flew over the house."
    pair = {"text": first, "text_pair": second}
    bodies = [{"inputs": first}, {"inputs": pair}, {"inputs": [second, pair, {"text": second}]}]
    responses, metrics = _send(_app(classifier, max_wait_ms=TOGETHER_MS), "/predict", bodies)
    classify = pipeline("text-classification", model=classifier)
    assert [r.status_code for r in responses] == [200, 200, 200]
    _close(responses[0].json(), classify(first))
    _close(responses[1].json(), classify(pair))
    _close(responses[2].json(), [classify(second), classify((first, second)), classify(second)])
    assert classify(pair) != classify(first)  # the second text is read, not dropped
    assert _batches(metrics) == 1


def test_ner_answers_the_pipelines_entities(tagger):
    texts = ["the cat sat on the mat.", "a bird flew over the house.", "the dog sat on the log."]
    bodies = [{"inputs": texts[0]}, {"inputs": texts[1:]}]
    responses, metrics = _send(_app(tagger, max_wait_ms=TOGETHER_MS), "/ner", bodies)
    expected = pipeline("ner", model=tagger)(texts)
    assert any(expected) and [r.status_code for r in responses] == [200, 200]
    _close(responses[0].json(), expected[0])
    _close(responses[1].json(), expected[1:])
    assert _batches(metrics) == 1


def test_qa_answers_the_pipelines_spans(reader):
    asked = [{"question": "who sat on the mat?", "context": "the cat sat on the mat. the dog sat on the log."},
             {"question": "what flew?", "context": "a bird flew over the house."}]  # fmt: skip
    responses, metrics = _send(_app(reader, max_wait_ms=TOGETHER_MS), "/qa", [asked[0], asked, asked[1:]])
    expected = pipeline("question-answering", model=reader)(asked)
    assert [r.status_code for r in responses] == [200, 200, 200]
    _close(responses[0].json(), expected[0])
    _close(responses[1].json(), expected)
    _close(responses[2].json(), expected[1:])
    assert _batches(metrics) == 1


def test_fill_mask_gives_the_pipelines_candidates_for_each_requests_top_k(masked_lm):
    """Requests with different top_k share one forward; each gets what the pipeline gives for its own top_k."""
    one, two = "the [MASK] sat on the mat.", "a [MASK] flew over the [MASK]."
    bodies = [{"inputs": one}, {"inputs": one, "top_k": 2}, {"inputs": [one, two], "top_k": 3}]
    responses, metrics = _send(_app(masked_lm, max_wait_ms=TOGETHER_MS), "/fill-mask", bodies)
    fill = pipeline("fill-mask", model=masked_lm)
    assert [r.status_code for r in responses] == [200, 200, 200]
    _close(responses[0].json(), fill(one))
    _close(responses[1].json(), fill(one, top_k=2))
    _close(responses[2].json(), fill([one, two], top_k=3))
    assert len(responses[0].json()) == 5 and len(responses[2].json()[1]) == 2  # the default; two masks
    assert _batches(metrics) == 1


@pytest.mark.parametrize("model", ["encoder", "classifier", "tagger"])
def test_embed_serves_every_encoder_with_the_pipelines_vectors(model, request):
    folder = request.getfixturevalue(model)
    texts = ["the cat sat on the mat.", "a bird flew."]
    responses, _ = _send(_app(folder), "/embed", [{"inputs": texts[0]}, {"inputs": texts}])
    if model == "tagger":  # a checkpoint without a pooler, which the pipeline's BertModel needs: its encoder
        tagger = BertForTokenClassification.from_pretrained(folder)
        embed = FeatureExtractionPipeline(tagger.bert, pipeline("ner", model=folder).tokenizer, torch.device("cpu"),
                                          "fp32")  # fmt: skip
    else:
        embed = pipeline("feature-extraction", model=folder)
    assert [r.status_code for r in responses] == [200, 200]
    np.testing.assert_allclose(responses[0].json(), embed(texts[0]), atol=1e-5)
    np.testing.assert_allclose(responses[1].json(), embed(texts), atol=1e-5)


@pytest.mark.parametrize(
    ("model", "routes"),
    [("classifier", ["/predict", "/embed"]), ("tagger", ["/ner", "/embed"]), ("reader", ["/qa", "/embed"]),
     ("masked_lm", ["/fill-mask", "/embed"]), ("encoder", ["/embed"])],
)  # fmt: skip
def test_info_lists_the_routes_the_models_head_calls_for(model, routes, request):
    app = _app(request.getfixturevalue(model))
    info = asyncio.run(_get(app, "/info")).json()
    assert [route["path"] for route in info["routes"]] == routes
    assert info["task"] == info["routes"][0]["task"]
    assert info["labels"] == {"classifier": ["neg", "pos"], "tagger": TAGS}.get(model)
    others = {"/predict", "/ner", "/qa", "/fill-mask"} - set(routes)
    responses, _ = _send(app, sorted(others)[0], ['{"inputs": "the cat"}'])
    assert responses[0].status_code == 404  # a route the head does not call for is not there


async def _get(app, path):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(path)


BAD_REQUESTS = [  # (model, route, body, what the error message names)
    ("classifier", "/predict", '{"inputs": ["a cat", 5]}', '"inputs[1]" must be a string'),
    ("classifier", "/predict", '{"inputs": {"text_pair": "a dog"}}', 'lacks the field "text"'),
    ("classifier", "/predict", '{"inputs": {"text": "a cat", "text_pair": ""}}', '"inputs.text_pair" is an empty'),
    ("classifier", "/predict", '{"inputs": {"text": "a", "pair": "b"}}', 'unknown field "pair"'),
    ("classifier", "/predict", '{"inputs": []}', '"inputs" must be'),
    ("classifier", "/predict", '{"text": "a cat"}', 'lacks the field "inputs"'),
    ("tagger", "/ner", '{"inputs": "   "}', '"inputs" is an empty string'),
    ("tagger", "/ner", '{"inputs": {"text": "a cat"}}', '"inputs" must be a string'),
    ("tagger", "/ner", '["a cat"]', "must be a JSON object"),
    ("tagger", "/ner", json.dumps({"inputs": "a" * 100_001}), "over 100,000 characters"),
    ("reader", "/qa", '{"question": "who?"}', 'lacks the field "context"'),
    ("reader", "/qa", '{"question": "who?", "context": 7}', '"context" must be a string'),
    ("reader", "/qa", '[{"question": "who?", "context": "a cat"}, {"question": "", "context": "x"}]',
     '"[1].question" is an empty string'),
    ("reader", "/qa", "[]", "non-empty list"),
    ("reader", "/qa", '{"inputs": "who?"}', 'lacks the field "question"'),
    ("masked_lm", "/fill-mask", '{"inputs": "no mask here"}', '"inputs" has no [MASK]'),
    ("masked_lm", "/fill-mask", json.dumps({"inputs": "the cat " * 300 + "[MASK]"}), "no [MASK] in its first 512"),
    ("masked_lm", "/fill-mask", '{"inputs": "the [MASK]", "top_k": 0}', '"top_k" must be a whole number'),
    ("masked_lm", "/fill-mask", '{"inputs": "the [MASK]", "top_k": "3"}', '"top_k" must be a whole number'),
    ("masked_lm", "/fill-mask", '{"inputs": "the [MASK]", "top_k": true}', '"top_k" must be a whole number'),
    ("encoder", "/embed", '{"inputs": null}', '"inputs" must be a string'),
    ("encoder", "/embed", '{"inputs": "a cat"', "Expecting"),  # malformed JSON: the parser's message
    ("encoder", "/embed", "[" * 100_000, "nested too deeply"),
    ("encoder", "/embed", b'{"inputs": "\xff"}', "codec"),  # not UTF-8
]  # fmt: skip


@pytest.mark.parametrize(("model", "route", "body", "message"), BAD_REQUESTS)
def test_bad_requests_get_400_naming_the_field(model, route, body, message, request):
    responses, _ = _send(_app(request.getfixturevalue(model)), route, [body])
    assert responses[0].status_code == 400
    assert message in responses[0].json()["error"]


def test_bad_requests_get_4xx_and_good_ones_around_them_succeed(classifier):
    bodies = ['{"inputs": "the cat"}', "{not json", '{"inputs": 5}', '{"inputs": ""}', "x" * 2000]
    bodies.append('{"inputs": "a dog"}')
    responses, _ = _send(_app(classifier, max_request_bytes=1000), "/predict", bodies)
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


@pytest.mark.parametrize(
    ("model", "route", "pipeline_class", "body"),
    [("classifier", "/predict", TextClassificationPipeline, {"inputs": "the cat"}),
     ("tagger", "/ner", TokenClassificationPipeline, {"inputs": "the cat"}),
     ("reader", "/qa", QuestionAnsweringPipeline, {"question": "who?", "context": "the cat sat"}),
     ("masked_lm", "/fill-mask", FillMaskPipeline, {"inputs": "the [MASK] sat"}),
     ("encoder", "/embed", FeatureExtractionPipeline, {"inputs": "the cat"})],
)  # fmt: skip
def test_an_exception_in_a_batch_is_a_500_for_its_requests_and_the_route_serves_on(
    model, route, pipeline_class, body, request, monkeypatch
):
    calls = []
    original = pipeline_class.__call__

    def fails_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the model fell over")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", fails_once)
    app = _app(request.getfixturevalue(model))
    failed, _ = _send(app, route, [body])
    assert failed[0].status_code == 500 and "the model fell over" in failed[0].json()["error"]
    served, _ = _send(app, route, [body])
    assert served[0].status_code == 200


@pytest.mark.parametrize(
    ("model", "bodies"),
    [("classifier", {"/predict": [{"inputs": "the cat sat"}, {"inputs": ["a bird flew.", "the dog"]}],
                     "/embed": [{"inputs": ["the cat sat", "a bird"]}]}),
     ("masked_lm", {"/fill-mask": [{"inputs": "the [MASK] sat", "top_k": 2}, {"inputs": "a [MASK] flew."}]})],
)  # fmt: skip
def test_the_model_process_answers_as_the_server_process_does(model, bodies, request):
    folder = request.getfixturevalue(model)
    in_process, in_child = _app(folder), _app(folder, inference="process")
    try:
        for route, sent in bodies.items():
            expected, _ = _send(in_process, route, sent)
            answered, _ = _send(in_child, route, sent)
            assert [r.status_code for r in answered] == [200] * len(sent)
            _close([r.json() for r in answered], [r.json() for r in expected])
    finally:
        in_child.state.model_process.close()


class _EndsTheProcessThatUnpicklesIt:
    def __reduce__(self):
        return os._exit, (3,)


def test_a_model_process_that_dies_fails_its_call_and_the_next_call_starts_a_new_one(classifier):
    app = _app(classifier, inference="process")
    model_process = app.state.model_process
    try:
        with pytest.raises(RuntimeError, match=r"the model process ended \(exit code 3\)"):
            model_process.call(0, _EndsTheProcessThatUnpicklesIt())  # dies mid-call, as on a crash
        served, _ = _send(app, "/predict", [{"inputs": "the cat"}])
        assert served[0].status_code == 200 and served[0].json()["label"] in ("neg", "pos")
    finally:
        model_process.close()
    assert not model_process.process.is_alive()


def test_an_unknown_inference_mode_is_a_one_line_error(classifier):
    with pytest.raises(BertforgeError, match="--inference must be one of process, thread, not 'gpu'"):
        _app(classifier, inference="gpu")


@contextlib.contextmanager
def served_page(folder, tmp_path):
    """Headless chromium, through its WebDriver, on the page of a `bertforge serve` child process."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    webdriver = pytest.importorskip("selenium.webdriver")

    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt-get install chromium chromium-driver"
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bertforge", "serve", "--model", str(folder), "--port",
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
        yield browser
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        assert server.wait(timeout=30) == 0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_page_shows_the_label_in_a_real_browser(classifier, tmp_path):
    """Type a sentence, submit, the label appears."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with served_page(classifier, tmp_path) as browser:
        text = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "text"))  # drawn from /info
        text.send_keys("the cat sat on the mat.")
        browser.find_element(By.ID, "submit").click()
        label = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "label")).text
        expected = pipeline("text-classification", model=classifier)("the cat sat on the mat.")["label"]
        assert expected in label
        assert "curl -X POST" in browser.find_element(By.ID, "curl").text


def test_a_pair_classifier_gets_two_boxes_and_the_pairs_label_in_a_real_browser(classifier, tmp_path):
    """A classifier fine-tuned on pairs (its run saved text_pair_column): /info says so, the page asks for both."""
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pair_model = tmp_path / "pair-run" / "model"
    shutil.copytree(classifier, pair_model)
    (pair_model.parent / "finetune_config.json").write_text(json.dumps({"text_pair_column": "hypothesis"}))
    assert asyncio.run(_get(_app(pair_model), "/info")).json()["routes"][0]["pairs"] is True
    assert asyncio.run(_get(_app(classifier), "/info")).json()["routes"][0]["pairs"] is False
    first, second = "the cat sat on the mat.", "a bird flew over the house."
    with served_page(pair_model, tmp_path) as browser:
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "text")).send_keys(first)
        browser.find_element(By.ID, "text_pair").send_keys(second)
        browser.find_element(By.ID, "submit").click()
        label = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "label")).text
        expected = pipeline("text-classification", model=pair_model)({"text": first, "text_pair": second})
        assert expected["label"] in label and f"{expected['score']:.3f}" in label
        assert '"text_pair":"a bird flew over the house."' in browser.find_element(By.ID, "curl").text


def test_the_page_marks_the_answer_in_the_context_in_a_real_browser(reader, tmp_path):
    """QA: two boxes; the answer appears marked inside the context, and curl shows the request."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    question, context = "who sat on the mat?", "the cat sat on the mat. the dog sat on the log."
    with served_page(reader, tmp_path) as browser:
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "question")).send_keys(question)
        browser.find_element(By.ID, "context").send_keys(context)
        browser.find_element(By.ID, "submit").click()
        answer = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "answer"))
        expected = pipeline("question-answering", model=reader)(question=question, context=context)
        assert answer.text.startswith(expected["answer"])  # then the mark's small "answer" label
        assert '"question":"who sat on the mat?"' in browser.find_element(By.ID, "curl").text
