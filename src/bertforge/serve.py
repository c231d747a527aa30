"""`bertforge serve`: an HTTP inference server with dynamic batching (FastAPI + uvicorn, the `serve` extra).

Requests from many clients go into one queue per route; a worker thread per route takes the requests that queued
while its last batch ran, up to ``max_batch_tokens`` tokens (and waits for more until the oldest has waited
``max_wait_ms``; by default it does not wait), runs one pipeline call over all of them (the pipelines sort by length
and unpad), and hands each request its own results. One forward over 32 sentences costs far less than 32 forwards
of one, which is the whole point of serving through a batcher. By default the pipelines live in a child process
(:class:`ModelProcess`), so that their forward passes do not wait on the event loop's Python work.

The routes follow the model's head (config.json "architectures"): ``/predict`` for a sequence classifier, ``/ner``
for a token classifier, ``/qa`` for question answering, ``/fill-mask`` for a masked-LM model, and ``/embed`` for
every encoder, the task models' included.
"""

import asyncio
import contextlib
import copy
import functools
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from bertforge.assets import model_architecture
from bertforge.errors import BertforgeError
from bertforge.pipelines import (
    FeatureExtractionPipeline,
    FillMaskPipeline,
    QuestionAnsweringPipeline,
    TextClassificationPipeline,
    TokenClassificationPipeline,
    pipeline,
)
from bertforge.settings import FILL_MASK_TOP_K, SERVE_MAX_BATCH_TOKENS, SERVE_MAX_WAIT_MS
from bertforge.tokenizer import BertTokenizer


@dataclass
class Job:
    """One request's inputs waiting in the queue, and the future its handler awaits."""

    items: list[Any]
    tokens: int  # the request's token count, which the batch budget is measured in
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Metrics:
    """Counters and sums exported at /metrics in the Prometheus text format."""

    requests: dict[str, int] = field(default_factory=dict)  # route → count
    errors: dict[str, int] = field(default_factory=dict)  # status code → count
    batches: int = 0
    batch_items: int = 0
    batch_size_buckets: dict[int, int] = field(default_factory=lambda: dict.fromkeys((1, 2, 4, 8, 16, 32, 64, 128), 0))
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # each route's batcher thread observes its batches

    def observe_batch(self, size: int, waited: float, took: float) -> None:
        with self.lock:
            self.batches += 1
            self.batch_items += size
            for bound in self.batch_size_buckets:
                if size <= bound:
                    self.batch_size_buckets[bound] += 1
            self.queue_seconds += waited
            self.inference_seconds += took

    def text(self) -> str:
        lines = ["# TYPE bertforge_requests_total counter"]
        lines += [f'bertforge_requests_total{{route="{r}"}} {n}' for r, n in sorted(self.requests.items())]
        lines.append("# TYPE bertforge_errors_total counter")
        lines += [f'bertforge_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.errors.items())]
        lines.append("# TYPE bertforge_batch_size histogram")
        lines += [f'bertforge_batch_size_bucket{{le="{b}"}} {n}' for b, n in self.batch_size_buckets.items()]
        lines += [
            f'bertforge_batch_size_bucket{{le="+Inf"}} {self.batches}',
            f"bertforge_batch_size_sum {self.batch_items}",
            f"bertforge_batch_size_count {self.batches}",
            "# TYPE bertforge_queue_seconds_total counter",
            f"bertforge_queue_seconds_total {self.queue_seconds:.6f}",
            "# TYPE bertforge_inference_seconds_total counter",
            f"bertforge_inference_seconds_total {self.inference_seconds:.6f}",
        ]
        return "\n".join(lines) + "\n"


class Batcher:
    """A worker thread that runs queued jobs through ``run`` in token-budgeted batches."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch_tokens: int, max_wait_ms: float,
                 metrics: Metrics) -> None:  # fmt: skip
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.metrics = metrics
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="bertforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        self.jobs.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (first := self.jobs.get()) is not None:
            batch, tokens, stop = [first], first.tokens, False
            deadline = first.enqueued + self.max_wait
            while tokens < self.max_batch_tokens:
                try:
                    job = self.jobs.get(timeout=max(deadline - time.perf_counter(), 0))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
                tokens += job.tokens
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        items = [item for job in batch for item in job.items]
        try:
            results: list[Any] | BaseException = self.run(items)
        except Exception as error:  # one failing batch fails only its own requests
            results = error
        took = time.perf_counter() - started
        self.metrics.observe_batch(len(items), sum(started - job.enqueued for job in batch), took)
        offset = 0
        for job in batch:
            if isinstance(results, BaseException):
                answer: Any = results
            else:
                answer = results[offset : offset + len(job.items)]
            offset += len(job.items)
            job.loop.call_soon_threadsafe(_settle, job.future, answer)


def _settle(future: asyncio.Future, answer: Any) -> None:
    if future.cancelled():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def require_serve_extra() -> None:
    """Fail with one clear line when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise BertforgeError(
            f"bertforge serve needs the serve extra: pip install 'bertforge[serve]' ({error})"
        ) from None


INFERENCE_MODES = ("process", "thread")  # where the model runs: a child process (the default) or the server's own
MAX_TEXT_CHARS = 100_000  # longer texts are refused rather than tokenized: the pipelines would cut them anyway
MAX_TOP_K = 100  # fill-mask candidates per [MASK]: the batch's forward keeps its largest top_k for every token


@dataclass
class Route:
    """One POST route: its pipeline task, how it reads a request body, and the batched pipeline call behind it."""

    path: str
    task: str
    max_length: int  # tokens per input the pipeline reads; longer inputs are windowed or cut, as it does elsewhere
    read: Callable[[Any], tuple[list[Any], bool]]  # JSON body → items, and whether the body held a single one;
    # ValueError, naming the field, for a body the route cannot take
    tokens: Callable[[Any], int]  # an item's token count, which the batch budget is measured in
    run: Callable[[list[Any]], list[Any]]  # the items of a whole batch → one JSON-ready answer per item, in order
    labels: list[str] | None = None  # the classes or tags the model tells apart, for /info
    pairs: bool = False  # a sentence-pair classifier: its page asks for two texts


def _object(body: Any, required: tuple[str, ...], optional: tuple[str, ...] = (), name: str = "the body") -> dict:
    """``body`` when it is a JSON object with the ``required`` fields and no others than ``optional``."""
    expected = ", ".join(f'"{f}"' for f in (*required, *optional))
    if not isinstance(body, dict):
        raise ValueError(f"{name} must be a JSON object with {expected}")
    missing = [f for f in required if f not in body]
    if missing:
        raise ValueError(f'{name} lacks the field "{missing[0]}"')
    # an unknown field is refused rather than ignored: a misspelt "text_pair" or "top_k" would change the answer
    unknown = [f for f in body if f not in required and f not in optional]
    if unknown:
        raise ValueError(f'{name} has an unknown field "{unknown[0]}" (expected {expected})')
    return body


def _text(value: Any, name: str) -> str:
    """``value`` when it is a usable text: a string, not blank, at most ``MAX_TEXT_CHARS`` long."""
    if not isinstance(value, str):
        raise ValueError(f'"{name}" must be a string, not {type(value).__name__}')
    if not value.strip():
        raise ValueError(f'"{name}" is an empty string')
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f'"{name}" is over {MAX_TEXT_CHARS:,} characters')
    return value


def _one_or_many(value: Any, name: str, single: bool, what: str) -> list[Any]:
    """``[value]`` for a single item, else ``value`` when it is a non-empty list (of ``what``)."""
    if single:
        return [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{name}" must be {what} or a non-empty list of them')
    return value


def _texts(inputs: Any) -> tuple[list[str], bool]:
    """The texts of an ``"inputs": "text" | ["text", ...]`` field and whether it held a single one."""
    single = isinstance(inputs, str)
    texts = _one_or_many(inputs, "inputs", single, "a string")
    return [_text(text, "inputs" if single else f"inputs[{i}]") for i, text in enumerate(texts)], single


def classifier_route(runner: TextClassificationPipeline) -> Route:
    """``/predict``: ``{"inputs": text | {"text", "text_pair"} | [...]}`` → ``{"label", "score"}`` per input."""
    count = _token_counter(runner.tokenizer)

    def read(body: Any) -> tuple[list[str | tuple[str, str]], bool]:
        inputs = _object(body, ("inputs",))["inputs"]
        single = isinstance(inputs, str | dict)
        what = 'a string or a {"text", "text_pair"} object'
        items: list[str | tuple[str, str]] = []
        for index, item in enumerate(_one_or_many(inputs, "inputs", single, what)):
            name = "inputs" if single else f"inputs[{index}]"
            if not isinstance(item, dict):
                items.append(_text(item, name))
                continue
            fields = _object(item, ("text",), ("text_pair",), name=f'"{name}"')
            text, pair = _text(fields["text"], f"{name}.text"), fields.get("text_pair")
            items.append(text if pair is None else (text, _text(pair, f"{name}.text_pair")))
        return items, single

    def tokens(item: str | tuple[str, str]) -> int:
        return count(item) if isinstance(item, str) else count(item[0]) + count(item[1]) - 1  # one [CLS]

    return Route("/predict", "text-classification", runner.settings.max_length, read, tokens, runner, runner.labels,
                 pairs=runner.settings.text_pair_column is not None)  # fmt: skip


def ner_route(runner: TokenClassificationPipeline) -> Route:
    """``/ner``: ``{"inputs": text | [...]}`` → the list of entities per text (type, score, word, start, end)."""

    def read(body: Any) -> tuple[list[str], bool]:
        return _texts(_object(body, ("inputs",))["inputs"])

    return Route("/ner", "token-classification", runner.settings.max_length, read,
                 _token_counter(runner.tokenizer), runner, runner.labels)  # fmt: skip


def qa_route(runner: QuestionAnsweringPipeline) -> Route:
    """``/qa``: ``{"question", "context"}`` or a list of them → ``{"answer", "score", "start", "end"}`` each."""
    count = _token_counter(runner.tokenizer)

    def read(body: Any) -> tuple[list[dict[str, str]], bool]:
        single = isinstance(body, dict)
        if not single and not (isinstance(body, list) and body):
            raise ValueError('the body must be a {"question", "context"} object or a non-empty list of them')
        items = []
        for index, record in enumerate([body] if single else body):
            where = "" if single else f"[{index}]."
            fields = _object(record, ("question", "context"), name="the body" if single else f'"[{index}]"')
            items.append({"question": _text(fields["question"], f"{where}question"),
                          "context": _text(fields["context"], f"{where}context")})  # fmt: skip
        return items, single

    def tokens(item: dict[str, str]) -> int:
        return count(item["question"]) + count(item["context"]) - 1  # one [CLS]

    return Route("/qa", "question-answering", runner.settings.max_length, read, tokens, runner)


def fill_mask_route(runner: FillMaskPipeline) -> Route:
    """``/fill-mask``: ``{"inputs": text | [...], "top_k"?}`` → per text the best-first candidates of its
    [MASK] (a list of such lists for several [MASK]s)."""
    tokenizer = _own_copy(runner.tokenizer)

    def read(body: Any) -> tuple[list[tuple[str, int]], bool]:
        fields = _object(body, ("inputs",), ("top_k",))
        top_k = fields.get("top_k", FILL_MASK_TOP_K)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f'"top_k" must be a whole number from 1 to {MAX_TOP_K}')
        texts, single = _texts(fields["inputs"])
        for index, text in enumerate(texts):
            # checked here, with the pipeline's own cut, since the pipeline refuses a text without a [MASK] by
            # raising, which would fail every request of the batch
            ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
            if tokenizer.mask_token_id not in ids:
                name = "inputs" if single else f"inputs[{index}]"
                raise ValueError(f'"{name}" has no [MASK] in its first {tokenizer.model_max_length} tokens')
        return [(text, top_k) for text in texts], single

    count = _token_counter(tokenizer)

    def run(items: list[tuple[str, int]]) -> list[Any]:
        # One forward for the whole batch with its largest top_k; each request keeps the head of its list, which is
        # what its own top_k gives, since candidates come best first.
        results = runner([text for text, _ in items], top_k=max(top_k for _, top_k in items))
        return [
            result[:top_k] if isinstance(result[0], dict) else [candidates[:top_k] for candidates in result]
            for result, (_, top_k) in zip(results, items, strict=True)
        ]

    return Route("/fill-mask", "fill-mask", tokenizer.model_max_length, read, lambda item: count(item[0]), run)


def embed_route(runner: FeatureExtractionPipeline) -> Route:
    """``/embed``: ``{"inputs": text | [...]}`` → a unit-length sentence vector (a list of floats) per text."""

    def read(body: Any) -> tuple[list[str], bool]:
        return _texts(_object(body, ("inputs",))["inputs"])

    def run(texts: list[str]) -> list[list[float]]:
        return [vector.tolist() for vector in runner(texts)]

    return Route("/embed", "feature-extraction", _max_positions(runner), read, _token_counter(runner.tokenizer), run)


def _max_positions(runner: Any) -> int:
    """The encoder's position count: a :class:`RemotePipeline` was told it, a pipeline reads its model's config."""
    return runner.max_positions if isinstance(runner, RemotePipeline) else runner.model.config.max_position_embeddings


def _token_counter(tokenizer: BertTokenizer) -> Callable[[str], int]:
    """A text's token count with its [CLS] and [SEP], from a copy of ``tokenizer`` (see :func:`_own_copy`)."""
    own = _own_copy(tokenizer)
    return lambda text: len(own.tokenize(text)) + 2


def _own_copy(tokenizer: BertTokenizer) -> BertTokenizer:
    """A copy of ``tokenizer`` for one thread's use. Each call sets truncation on the engine it encodes with, and
    the event loop reads requests while each route's batcher thread encodes its batch, so threads sharing one
    engine could undo a batch's truncation between its setting and its encoding."""
    return copy.deepcopy(tokenizer)


TASK_ROUTES = {  # the model's architecture → its pipeline task and the route serving it; /embed serves any encoder
    "BertForSequenceClassification": ("text-classification", classifier_route),
    "BertForTokenClassification": ("token-classification", ner_route),
    "BertForQuestionAnswering": ("question-answering", qa_route),
    "BertForMaskedLM": ("fill-mask", fill_mask_route),
    "BertForPreTraining": ("fill-mask", fill_mask_route),  # its MLM head; the NSP head is not served
}


def model_pipelines(model: str, architecture: str, precision: str, quantize: str) -> list[Any]:
    """The pipelines behind ``model``'s routes: its head's, if it has a route, then the encoder's for ``/embed``."""
    if architecture not in TASK_ROUTES:  # a bare encoder, or a head with no route: its encoder is still of use
        return [pipeline("feature-extraction", model=model, precision=precision, quantize=quantize)]
    runner = pipeline(TASK_ROUTES[architecture][0], model=model, precision=precision, quantize=quantize)
    # /embed runs the task model's own encoder (quantized with it) rather than a second copy loaded from the folder,
    # with a tokenizer of its own, since its batcher thread encodes while the task route's does
    embedder = FeatureExtractionPipeline(runner.model.bert, _own_copy(runner.tokenizer), runner.device, precision)
    return [runner, embedder]


def model_routes(architecture: str, runners: list[Any]) -> list[Route]:
    """The routes serving ``runners``: :func:`model_pipelines`' pipelines, or the server process's
    :class:`RemotePipeline` stand-ins for those of the model process."""
    if architecture not in TASK_ROUTES:
        return [embed_route(runners[0])]
    return [TASK_ROUTES[architecture][1](runners[0]), embed_route(runners[1])]


class RemotePipeline:
    """A pipeline that runs in the model process: what the routes read of it (tokenizer, settings, labels) is
    copied here, and a call is sent there."""

    def __init__(self, facts: dict[str, Any], call: Callable[..., Any]) -> None:
        self.tokenizer: BertTokenizer = facts["tokenizer"]
        self.settings = facts["settings"]
        self.labels: list[str] | None = facts["labels"]
        self.max_positions: int = facts["max_positions"]
        self._call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


def _pipeline_facts(runner: Any) -> dict[str, Any]:
    """What the routes read of a pipeline, sent from the model process to the server's."""
    return {"tokenizer": runner.tokenizer, "settings": getattr(runner, "settings", None),
            "labels": getattr(runner, "labels", None), "max_positions": _max_positions(runner)}  # fmt: skip


def _run_pipelines(connection: Any, model: str, architecture: str, precision: str, quantize: str) -> None:
    """The model process: build the pipelines, send what the routes need to know of them, then answer calls
    ``(pipeline index, args, kwargs)`` with ``("ok", result)`` or ``("error", message)`` until ``None``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the server stops us
    try:
        runners = model_pipelines(model, architecture, precision, quantize)
    except Exception as problem:
        connection.send(("error", str(problem)))
        return
    connection.send(("ok", [_pipeline_facts(runner) for runner in runners]))
    while (call := connection.recv()) is not None:
        index, args, kwargs = call
        try:
            connection.send(("ok", runners[index](*args, **kwargs)))
        except Exception as problem:
            connection.send(("error", f"{type(problem).__name__}: {problem}"))


class ModelProcess:
    """The model's pipelines in a child process. Under load, a forward pass in the server's own process competes
    with the event loop for Python's GIL: each of its ~100 PyTorch ops waits for the loop's Python work between
    them, and a batch of 16 took 97 ms there against 60 ms alone (bench/RESULTS.md, 2026-12-06). In a process of
    its own the forward holds no lock the event loop needs, and the server's threads only wait on a pipe.

    A process that dies (killed, out of memory) fails the batch it was running with a 500; the next call starts a
    new one, so the server serves on."""

    def __init__(self, model: str, architecture: str, precision: str, quantize: str) -> None:
        self.args = (model, architecture, precision, quantize)
        self.lock = threading.Lock()  # one call at a time: the task route's and /embed's batchers share the pipe
        self.runners = [RemotePipeline(facts, functools.partial(self.call, index))
                        for index, facts in enumerate(self._start())]  # fmt: skip

    def _start(self) -> list[dict[str, Any]]:
        import multiprocessing

        # spawn, not fork: a forked child would inherit the server's threads and locks mid-flight
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_run_pipelines, args=(child, *self.args), name="bertforge-model",
                                       daemon=True)  # fmt: skip
        self.process.start()
        child.close()
        status, payload = self._exchange()
        if status == "error":
            raise BertforgeError(payload)
        return payload

    def _exchange(self, message: Any = None) -> tuple[str, Any]:
        """Send ``message`` (unless None), then the process's answer; an error answer if the process is gone."""
        try:
            if message is not None:
                self.connection.send(message)
            return self.connection.recv()
        except (EOFError, OSError):
            self.process.join()
            return "error", f"the model process ended (exit code {self.process.exitcode})"

    def call(self, index: int, *args: Any, **kwargs: Any) -> Any:
        """Pipeline ``index``'s answer to ``args`` and ``kwargs``, computed in the model process."""
        with self.lock:
            if not self.process.is_alive():
                self.connection.close()
                self._start()
            status, payload = self._exchange((index, args, kwargs))
        if status == "error":
            raise RuntimeError(payload)
        return payload

    def close(self) -> None:
        """Stop the model process once its call in flight, if any, is answered."""
        with self.lock:
            if self.process.is_alive():
                with contextlib.suppress(OSError):
                    self.connection.send(None)
                self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def create_app(model: str, max_batch_tokens: int = SERVE_MAX_BATCH_TOKENS, max_wait_ms: float = SERVE_MAX_WAIT_MS,
               precision: str = "fp32", quantize: str = "none", max_request_bytes: int = 1 << 20,
               inference: str = "process") -> Any:  # fmt: skip
    """The FastAPI application serving ``model``: the routes its head calls for (:func:`model_routes`), each with
    its own batcher, plus the page, /health, /info and /metrics. ``inference``: "process" runs the model in a
    child process (:class:`ModelProcess`), "thread" in this one."""
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    if inference not in INFERENCE_MODES:
        raise BertforgeError(f"--inference must be one of {', '.join(INFERENCE_MODES)}, not {inference!r}")
    architecture = model_architecture(model)
    model_process = ModelProcess(model, architecture, precision, quantize) if inference == "process" else None
    runners = model_process.runners if model_process else model_pipelines(model, architecture, precision, quantize)
    routes = model_routes(architecture, runners)
    metrics = Metrics()
    batchers = [Batcher(route.run, max_batch_tokens, max_wait_ms, metrics) for route in routes]
    page = resources.files("bertforge").joinpath("serve_page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        for batcher in batchers:  # uvicorn stops accepting first, then the queued requests finish here
            batcher.close()
        if model_process:
            model_process.close()

    app = FastAPI(title="bertforge serve", lifespan=lifespan)
    app.state.model_process = model_process

    def error(status: int, message: str) -> JSONResponse:
        metrics.errors[str(status)] = metrics.errors.get(str(status), 0) + 1
        return JSONResponse({"error": message}, status_code=status)

    def endpoint(route: Route, batcher: Batcher) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Any:
            metrics.requests[route.path] = metrics.requests.get(route.path, 0) + 1
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_request_bytes:  # refused before the body is read
                return error(413, f"request body over {max_request_bytes:,} bytes")
            raw = await request.body()
            if len(raw) > max_request_bytes:  # chunked bodies declare no length
                return error(413, f"request body over {max_request_bytes:,} bytes")
            try:
                items, single = route.read(json.loads(raw))
            except ValueError as problem:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                return error(400, str(problem))
            except RecursionError:  # JSON nested deeper than the parser's stack
                return error(400, "the body is nested too deeply")
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            batcher.submit(Job(items, sum(route.tokens(item) for item in items), future, loop))
            try:
                results = await future
            except Exception as problem:
                return error(500, f"inference failed: {problem}")
            return results[0] if single else results

        return answer

    for route, batcher in zip(routes, batchers, strict=True):
        app.add_api_route(route.path, endpoint(route, batcher), methods=["POST"])

    @app.get("/")
    async def home() -> Any:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> Any:
        return {
            "model": model,
            "architecture": architecture,
            "task": routes[0].task,
            "labels": routes[0].labels,
            "max_length": routes[0].max_length,
            "routes": [{"path": r.path, "task": r.task, "max_length": r.max_length, "pairs": r.pairs} for r in routes],
        }

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(metrics.text())

    return app


def run_server(app: Any, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT: stop accepting, finish the requests in flight, return normally."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            # uvicorn's own version re-raises the signal after draining, so the process would end with status 143;
            # a clean drain is a clean exit, status 0
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
