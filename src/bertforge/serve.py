"""`bertforge serve`: an HTTP inference server with dynamic batching (FastAPI + uvicorn, the `serve` extra).

Requests from many clients go into one queue; a single worker thread takes requests until their token count
reaches ``max_batch_tokens`` or the oldest has waited ``max_wait_ms``, runs one pipeline call over all of them
(the pipelines sort by length and unpad), and hands each request its own results. One forward over 32 sentences
costs far less than 32 forwards of one, which is the whole point of serving through a batcher.
"""

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from bertforge.errors import BertforgeError

ROUTE_TASKS = {  # the model's architecture → (route, pipeline task); NER, QA, fill-mask and /embed are to come
    "BertForSequenceClassification": ("/predict", "text-classification"),
}


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

    def observe_batch(self, size: int, waited: float, took: float) -> None:
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


MAX_TEXT_CHARS = 100_000  # longer texts are refused rather than tokenized: the pipelines would cut them anyway


def _texts(body: Any) -> tuple[list[str], bool]:
    """The texts of a ``{"inputs": "text" | ["text", ...]}`` body and whether it was a single one; ValueError if not."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise ValueError('expected a JSON object with "inputs": a string or a list of strings')
    inputs = body["inputs"]
    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError('"inputs" must be a non-empty string or a non-empty list of strings')
    for text in texts:
        if not text.strip():
            raise ValueError('"inputs" holds an empty string')
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f'"inputs" holds a text over {MAX_TEXT_CHARS:,} characters')
    return texts, single


def create_app(model: str, max_batch_tokens: int = 4096, max_wait_ms: float = 5.0, precision: str = "fp32",
               quantize: str = "none", max_request_bytes: int = 1 << 20) -> Any:  # fmt: skip
    """The FastAPI application serving the classifier in ``model`` (the routes follow its head)."""
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    from bertforge.assets import model_architecture
    from bertforge.pipelines import pipeline

    architecture = model_architecture(model)
    if architecture not in ROUTE_TASKS:
        raise BertforgeError(f"{model}: bertforge serve does not know the head {architecture}")
    route, task = ROUTE_TASKS[architecture]
    runner = pipeline(task, model=model, precision=precision, quantize=quantize)
    metrics = Metrics()
    page = resources.files("bertforge").joinpath("serve_page.html").read_text(encoding="utf-8")

    def run(items: list[Any]) -> list[Any]:
        return [{"label": r["label"], "score": r["score"]} for r in runner(items)]

    batcher = Batcher(run, max_batch_tokens, max_wait_ms, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        batcher.close()  # uvicorn stops accepting first, then the queued requests finish here

    app = FastAPI(title="bertforge serve", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        metrics.errors[str(status)] = metrics.errors.get(str(status), 0) + 1
        return JSONResponse({"error": message}, status_code=status)

    @app.post(route)
    async def predict(request: Request) -> Any:
        metrics.requests[route] = metrics.requests.get(route, 0) + 1
        raw = await request.body()
        if len(raw) > max_request_bytes:
            return error(413, f"request body over {max_request_bytes:,} bytes")
        try:
            texts, single = _texts(json.loads(raw))
        except ValueError as problem:  # json.JSONDecodeError is a ValueError
            return error(400, str(problem))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        tokens = sum(len(runner.tokenizer.tokenize(text)) + 2 for text in texts)
        batcher.submit(Job(texts, tokens, future, loop))
        try:
            results = await future
        except Exception as problem:
            return error(500, f"inference failed: {problem}")
        return results[0] if single else results

    @app.get("/")
    async def home() -> Any:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> Any:
        return {"model": model, "architecture": architecture, "task": task, "route": route,
                "labels": getattr(runner, "labels", None), "max_length": runner.settings.max_length}  # fmt: skip

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
