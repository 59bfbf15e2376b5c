"""An HTTP JSON service for a trained run (`thawing serve RUN_DIR`): predictions of every task from one encoder pass,
embeddings, and what the run is.

    POST /predict  {"texts": [...], "tasks": [...]?}  ->  {"predictions": {task: [one prediction per text]}}
    POST /predict  {"pairs": [[a, b], ...], ...}      ->  the same for pair tasks (similarity, retrieval: the cosine;
                                                          pair classification: the label)
    POST /embed    {"texts": [...]}                   ->  {"embeddings": [[...], ...], "dimension": D}
    GET  /health                                      ->  {"status": "ok", "tasks": [...]}
    GET  /info                                        ->  tasks, labels, the run's test metrics, settings, counters
    GET  /docs, /openapi.json                         ->  the API page and its schema (`--no-docs`: off)

Concurrent requests are micro-batched (microbatch.py): grouped until they hold `max_batch` texts or the first has
waited `max_wait_ms`, run by the model once in a single worker thread (so the event loop keeps accepting requests
while the model runs), each answered with its slice. Every request is validated before it joins a batch, so a bad
one is answered alone with a 4xx `{"error": ...}` and never reaches its neighbours; a batch that fails anyway is run
again request by request, so only the request that fails fails (500).

fastapi and uvicorn are optional (`pip install 'thawing[serve]'`); they are imported only here, when an app is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thawing._version import version
from thawing.api import TrainedModel
from thawing.deploy.microbatch import Busy, Closed, Job, MicroBatcher, RunFailed
from thawing.errors import ThawingError
from thawing.model import inference

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'thawing[serve]'"


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service. A request over `max_texts` texts, or with a text over `max_text_bytes` UTF-8 bytes,
    gets 413; more than `max_queue` texts waiting gets 503 (so a flood waits in clients, not in server memory)."""

    max_batch: int = 64  # texts per model run (a single larger request runs alone)
    # Texts per encoder forward inside a model run, longest first. Smaller forwards pad less: a micro-batch mixes
    # lengths, and on CPU padded tokens cost as much as real ones (64-text runs of the demo messages: 1.5x faster
    # at 16 than at 64). On a GPU the runtime's token budget decides instead.
    batch_size: int = 16
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_texts: int = 256  # per request
    max_text_bytes: int = 16_384  # per text, UTF-8
    max_queue: int = 4_096  # texts waiting for the model, all requests together
    threads: int | None = None  # torch CPU threads of the model thread (None: torch's default, one per core)
    docs: bool = True  # GET /docs (the interactive API page) and /openapi.json (the schema), as FastAPI serves them
    # Seconds a client has to send a whole request (head and body) from the connection opening or its previous
    # response; a slower one is closed (deadline.py). Keep-alive connections idle past uvicorn's 5 s close as before.
    request_timeout_s: float = 10.0
    graceful_timeout_s: int = 30  # on SIGTERM or Ctrl-C, requests in flight get this long to be answered

    def __post_init__(self) -> None:
        problems = [f"{name} must be positive" for name in ("max_batch", "batch_size", "max_texts", "max_text_bytes",
                                                                   "max_queue")
                    if getattr(self, name) < 1]
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be positive")
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be 0 or more")
        if not 0 < self.request_timeout_s < float("inf"):
            problems.append("request_timeout_s must be a positive number of seconds")
        if self.graceful_timeout_s < 0:
            problems.append("graceful_timeout_s must be 0 or more")
        if self.max_queue < self.max_texts:
            problems.append(f"max_queue ({self.max_queue}) must hold at least one full request ({self.max_texts})")
        if problems:
            raise ThawingError("; ".join(problems))

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: every text at its limit, each byte escaped as \\uXXXX (6 bytes)."""
        return self.max_texts * (6 * self.max_text_bytes + 8) + 4096


class RequestError(Exception):
    """A request the service refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------- validation
def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_request(body: bytes, settings: ServeSettings, tasks: Sequence[str] | None,
                  pair_tasks: Sequence[str] = ()) -> tuple[list, list[str]]:
    """The texts (or pairs) and tasks of a request body, or a `RequestError` (400 malformed JSON, 413 too large, 422
    invalid).

    `tasks` are the model's task names, for a /predict request (which may name some of them); None for /embed,
    which takes texts alone. `pair_tasks`: those of them that take pairs (`"pairs": [[a, b], ...]` instead of
    `"texts"`). Returns the texts or pairs and the tasks asked for (all of them that take such inputs when the
    request names none).
    """
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; RecursionError: [[[[...
        raise RequestError(400, f"malformed JSON: {str(exc) or type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object such as {\"texts\": [\"...\"]}")
    allowed = {"texts"} if tasks is None else {"texts", "tasks"} | ({"pairs"} if pair_tasks else set())
    unknown = sorted(set(payload) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed))
        raise RequestError(422, f"unknown field(s) {', '.join(unknown)}; this endpoint takes {takes}")
    if tasks is None:
        return _texts(payload.get("texts"), settings), []
    if "pairs" in payload and "texts" in payload:
        raise RequestError(422, "give 'texts' (for text tasks) or 'pairs' (for pair tasks), not both")
    pairs = "pairs" in payload or ("texts" not in payload and set(pair_tasks) == set(tasks))
    fitting = [t for t in tasks if (t in pair_tasks) == pairs]
    if not fitting:
        raise RequestError(422, f"this model's tasks ({', '.join(tasks)}) take "
                           + ("pairs: give 'pairs': [[text, text], ...]" if not pairs else "texts: give 'texts'"))
    chosen = _tasks(payload.get("tasks"), tasks, fitting)
    inputs = _pairs(payload.get("pairs"), settings) if pairs else _texts(payload.get("texts"), settings)
    return inputs, chosen


def _pairs(pairs: Any, settings: ServeSettings) -> list[list[str]]:
    if not isinstance(pairs, list) or not pairs:
        raise RequestError(422, "'pairs' must be a non-empty list of [text, text] pairs")
    if len(pairs) > settings.max_texts:
        raise RequestError(413, f"{len(pairs)} pairs in one request; the limit is {settings.max_texts}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise RequestError(422, f"pairs[{i}] is not a [text, text] pair")
        try:
            _texts(pair, settings)
        except RequestError as exc:
            raise RequestError(exc.status, f"pairs[{i}]: {exc}") from None
    return pairs


def _texts(texts: Any, settings: ServeSettings) -> list[str]:
    if not isinstance(texts, list):
        raise RequestError(422, "'texts' must be a list of strings")
    if not texts:
        raise RequestError(422, "'texts' is empty")
    if len(texts) > settings.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {settings.max_texts}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] is not a string ({type(text).__name__})")
        if not text.strip():  # token tasks would see no words at all
            raise RequestError(422, f"texts[{i}] is empty")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800" parses as JSON but is no text
            raise RequestError(422, f"texts[{i}] is not valid Unicode") from None
        if size > settings.max_text_bytes:
            raise RequestError(413, f"texts[{i}] is {size} bytes; the limit is {settings.max_text_bytes}")
    return texts


def _tasks(asked: Any, known: Sequence[str], takes: Sequence[str]) -> list[str]:
    """The tasks asked for, of the model's `known` ones; each must be one of those that `takes` the request's inputs
    (all of which a request that names none gets)."""
    if asked is None:
        return list(takes)
    if not isinstance(asked, list) or not asked or not all(isinstance(t, str) for t in asked):
        raise RequestError(422, "'tasks' must be a non-empty list of task names")
    unknown = [t for t in asked if t not in known]
    if unknown:
        raise RequestError(422, f"unknown task(s) {', '.join(unknown)}; this model has {', '.join(known)}")
    other = [t for t in asked if t not in takes]
    if other:
        raise RequestError(422, f"task(s) {', '.join(other)} do not take these inputs (pair tasks take 'pairs', the "
                           "others 'texts')")
    return [t for t in known if t in asked]  # the model's order, each once


# ---------------------------------------------------------------------------------------------------- the model
def predict_jobs(model: TrainedModel, jobs: list[Job], batch_size: int = 16) -> list[dict[str, list[dict]]]:
    """One model run for several requests: one encoder pass per input group (tasks that share tokenization and
    prompt) over the texts of the requests that ask for one of its tasks; each request gets its slice of its tasks."""
    found: list[dict[str, list[dict]]] = [{} for _ in jobs]
    asked = [t for t in model.tasks if any(t in job.tasks for job in jobs)]
    for group in inference.input_groups(model.model, asked):
        members = [i for i, job in enumerate(jobs) if any(t in job.tasks for t in group)]
        texts = [text for i in members for text in jobs[i].texts]
        with model.runtime.autocast():
            out = inference.predict(model.model, texts, group, batch_size, model.runtime.inference_max_tokens)
        for i, (a, b) in zip(members, _spans([jobs[i] for i in members]), strict=True):
            found[i].update({t: out[t][a:b] for t in group if t in jobs[i].tasks})
    return [{t: rows[t] for t in job.tasks} for rows, job in zip(found, jobs, strict=True)]


def embed_jobs(model: TrainedModel, jobs: list[Job], batch_size: int = 16) -> list[list[list[float]]]:
    """One encoder run for several /embed requests; each gets its rows."""
    vectors = model.encode([text for job in jobs for text in job.texts], batch_size=batch_size)
    return [vectors[a:b].tolist() for a, b in _spans(jobs)]


def _spans(jobs: list[Job]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for job in jobs:
        spans.append((start, start + len(job.texts)))
        start += len(job.texts)
    return spans


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM on Linux (ru_maxrss there also counts the process that
    forked this one, before exec), else ru_maxrss (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    import resource  # Unix only, like the number it gives

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def describe(model: TrainedModel) -> dict:
    """What /info says about the model and its run: tasks with their types and labels, the run's metrics on test
    (or dev where a task has no test split: `splits` says which), the embedding size and the runtime."""
    info: dict[str, Any] = {
        "run": str(model.run.path) if model.run is not None else None,
        "tasks": {name: {"type": spec.type, "labels": spec.labels} for name, spec in model.tasks.items()},
        "embedding_size": model.model.encoder.embedding_size,
        "device": model.runtime.device,
        "precision": model.runtime.precision,
        "metrics": None,
        "splits": None,
    }
    if model.run is not None and model.run.results.is_file():
        results = model.run.read_json(model.run.results)
        info["metrics"], info["splits"] = results.get("tasks"), results.get("splits")
    return info


# ---------------------------------------------------------------------------------------------------- the app
def require_dependencies() -> None:
    """Fail clearly when the optional serving packages are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ThawingError(f"thawing serve needs fastapi and uvicorn ({exc}); install them: {INSTALL_HINT}") from None


def _set_threads(threads: int | None) -> None:
    """Set torch's CPU threads in the model thread itself (OpenMP counts them per calling thread). On a machine
    shared with other busy processes fewer threads than cores can be much faster: see docs/benchmarks.md."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _json(data: Any, status: int = 200):
    """Strict JSON (no NaN or Infinity): a non-finite number is a server error, never invalid JSON."""
    from fastapi.responses import Response

    try:
        body = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        log.error("a response held a non-finite number")
        status, body = 500, json.dumps({"error": "internal error: a result was not a finite number"})
    return Response(body, status_code=status, media_type="application/json")


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused (413) once it passes `limit` bytes, whether or not Content-Length says so; a body
    that does not say it is JSON is refused (415) before it is read."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, got {kind or 'none'}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _submit(batcher: MicroBatcher, texts: list[str], tasks: list[str]) -> Any:
    """A validated request through the batcher; its failures as HTTP answers."""
    try:
        return await batcher.submit(texts, tasks)
    except Busy as exc:
        raise RequestError(503, f"busy: {exc}; try again shortly") from None
    except Closed:
        raise RequestError(503, "the server is shutting down") from None
    except RunFailed:
        raise RequestError(500, "internal error while running the model") from None


def build_app(model: TrainedModel, settings: ServeSettings | None = None):
    """The FastAPI app serving `model`. Its micro-batchers start and stop with the app's lifespan (run it under
    uvicorn, or `with TestClient(app)`).

    Example:
        >>> app = build_app(thawing.load("runs/demo-20261126-101500"))          # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                        # doctest: +SKIP
    """
    require_dependencies()
    from fastapi import FastAPI

    settings = settings or ServeSettings()
    pair_tasks = [t for t, spec in model.tasks.items() if spec.kind.reads == "pairs"]
    batchers = {
        "predict": MicroBatcher(lambda jobs: predict_jobs(model, jobs, settings.batch_size), settings.max_batch,
                                settings.max_wait_ms, settings.max_queue),
        "embed": MicroBatcher(lambda jobs: embed_jobs(model, jobs, settings.batch_size), settings.max_batch,
                              settings.max_wait_ms, settings.max_queue),
    }
    info = describe(model)
    rejected = {"count": 0}
    app = FastAPI(title="thawing", version=version(), lifespan=lifespan(batchers, settings.threads), redoc_url=None,
                  docs_url="/docs" if settings.docs else None, openapi_url="/openapi.json" if settings.docs else None)

    answer_errors_in_json(app, rejected)

    # Plain request handlers (Starlette routes): the body is read and checked here, so every refusal is our JSON.
    async def predict(request):
        texts, tasks = parse_request(await _read_body(request, settings.max_body_bytes), settings, list(model.tasks),
                                     pair_tasks)
        return _json({"predictions": await _submit(batchers["predict"], texts, tasks)})

    async def embed(request):
        texts, _ = parse_request(await _read_body(request, settings.max_body_bytes), settings, None)
        vectors = await _submit(batchers["embed"], texts, [])
        return _json({"embeddings": vectors, "dimension": info["embedding_size"]})

    async def health(request):  # noqa: ARG001 (a Starlette route's signature)
        return _json({"status": "ok", "tasks": list(model.tasks)})

    async def about(request):  # noqa: ARG001 (a Starlette route's signature)
        stats = {name: asdict(b.stats) for name, b in batchers.items()}
        stats["rejected"] = rejected["count"]
        stats["peak_rss_mb"] = peak_rss_mb()
        return _json({**info, "settings": asdict(settings), "stats": stats})

    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/embed", embed, methods=["POST"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/info", about, methods=["GET"])
    # The routes read and check their own bodies (plain routes): their schema is written here.
    app.openapi = lambda: openapi_schema(app, list(model.tasks), settings, pair_tasks)  # type: ignore[method-assign]
    return app


def lifespan(batchers: dict[str, MicroBatcher], threads: int | None):
    """The app's lifespan: the micro-batchers started on one model thread; stopped at the end (waiting requests get
    `Closed`)."""

    @contextlib.asynccontextmanager
    async def run(app):  # noqa: ARG001 (FastAPI's lifespan signature)
        # One thread runs the model for every endpoint: off the event loop, and never two runs at once.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thawing-model",
                                      initializer=_set_threads, initargs=(threads,))
        for batcher in batchers.values():
            batcher.start(executor)
        try:
            yield
        finally:
            for batcher in batchers.values():
                await batcher.stop()
            executor.shutdown(wait=True, cancel_futures=True)

    return run


def answer_errors_in_json(app, rejected: dict[str, int]) -> None:
    """Every error as a JSON body `{"error": ...}`: a refused request (counted in `rejected`, shown by /info), an
    unknown path or method, and an unexpected failure (logged; the client learns no more than "internal error")."""
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def _refused(request, exc: RequestError):  # noqa: ARG001 (an exception handler's signature)
        if exc.status < 500:
            rejected["count"] += 1
        return _json({"error": str(exc)}, exc.status)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):  # noqa: ARG001 (an exception handler's signature)
        return _json({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):  # noqa: ARG001 (an exception handler's signature)
        log.exception("unexpected error", exc_info=exc)
        return _json({"error": "internal error"}, 500)


def openapi_schema(app, tasks: list[str], settings: ServeSettings, pair_tasks: Sequence[str] = ()) -> dict:
    """The OpenAPI document of the service (what GET /openapi.json returns and GET /docs shows)."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        texts = {"type": "array", "items": {"type": "string", "maxLength": settings.max_text_bytes}, "minItems": 1,
                 "maxItems": settings.max_texts, "description": "the inputs (token tasks split them on whitespace)"}
        chosen = {"type": "array", "items": {"type": "string", "enum": tasks},
                  "description": "the tasks to predict (default: every task)"}
        error = {"description": "a refused request", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"error": {"type": "string"}}}}}}

        def post(summary: str, properties: dict, answer: dict) -> dict:
            # /predict of a model with pair tasks takes "texts" or "pairs"
            body = {"type": "object", **({} if "pairs" in properties else {"required": ["texts"]}),
                    "properties": properties, "additionalProperties": False}
            return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
                "application/json": {"schema": body, "example": {"texts": [EXAMPLE_TEXT]}}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
                              "400": error, "413": error, "503": error}}}

        def get(summary: str) -> dict:
            return {"get": {"summary": summary, "responses": {"200": {"description": "OK", "content": {
                "application/json": {"schema": {"type": "object"}}}}}}}

        schema = get_openapi(title=app.title, version=app.version, routes=[])
        schema["paths"] = {
            "/predict": post("Every task's prediction (or the chosen tasks') for each text, from one encoder pass",
                             {"texts": texts, "tasks": chosen, **({"pairs": {
                                 "type": "array", "items": {"type": "array", "items": texts["items"], "minItems": 2,
                                                            "maxItems": 2}, "minItems": 1,
                                 "maxItems": settings.max_texts, "description": "pairs of texts, for the pair tasks "
                                 f"({', '.join(pair_tasks)}); instead of texts"}} if pair_tasks else {})},
                             {"type": "object", "properties": {"predictions": {"type": "object"}}}),
            "/embed": post("The sentence embedding of each text", {"texts": texts},
                           {"type": "object", "properties": {"embeddings": {"type": "array"},
                                                             "dimension": {"type": "integer"}}}),
            "/health": get("Whether the service is up, and its tasks"),
            "/info": get("The model's tasks, labels and test metrics, the service's settings and counters"),
        }
        app.openapi_schema = schema
    return app.openapi_schema


EXAMPLE_TEXT = "Where is my parcel?"


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to `host:port` (port 0: a free one), so a taken port fails before the model loads."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on connections of such a socket, and without
        # it every small response waits ~40 ms for a delayed ACK (measured: /health 44 ms instead of 1 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ThawingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(model: TrainedModel, sock: socket.socket, settings: ServeSettings | None = None,
          log_level: str = "info") -> None:
    """Serve `model` on a bound socket (`listen`) until interrupted: uvicorn, one process, the model in one thread."""
    build_server(model, settings, log_level).run(sockets=[sock])


def build_server(model: TrainedModel, settings: ServeSettings | None = None, log_level: str = "info") -> Any:
    """The uvicorn server of `model`'s app, with the request deadline and the shutdown deadline of `settings`; run it
    with `.run(sockets=[sock])`."""
    require_dependencies()
    import uvicorn

    from thawing.deploy.deadline import deadline_protocol

    if log_level not in LOG_LEVELS:
        raise ThawingError(f"unknown log level '{log_level}'; choose {', '.join(LOG_LEVELS)}")
    settings = settings or ServeSettings()
    config = uvicorn.Config(build_app(model, settings), log_level=log_level,
                            http=deadline_protocol(settings.request_timeout_s),
                            timeout_graceful_shutdown=settings.graceful_timeout_s)
    return uvicorn.Server(config)
