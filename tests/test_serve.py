"""`thawing serve`: the HTTP service of a trained run, through a test client and a real uvicorn on a free port;
micro-batching, answers equal to `thawing.load(run).predict`, and 4xx JSON errors that leave the others alone.

Run: `.venv/bin/python -m pytest -q tests/test_serve.py`
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from toy import toy_config
from typer.testing import CliRunner

import thawing
from thawing.config import parse_config
from thawing.deploy.serve import ServeSettings, build_app, build_server, listen
from thawing.errors import ThawingError
from thawing.training.loop import train

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

TEXTS = ["john is in paris", "the delivery was late", "who won the game ?", "i love the film", "where is berlin ?"]


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """A tiny trained run with two sentence tasks and a token task (two input groups)."""
    root = tmp_path_factory.mktemp("serve")
    return train(parse_config(toy_config(tiny_bert_dir, root)), run_dir=str(root / "run"))


@pytest.fixture(scope="module")
def model(run):
    return thawing.load(run.path, device="cpu")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(build_app(model, ServeSettings(max_texts=8, max_text_bytes=200))) as c:
        yield c


# ------------------------------------------------------------------------------------------ answers


def test_predict_equals_the_python_api(client, model):
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": model.predict(TEXTS)}
    only = client.post("/predict", json={"texts": TEXTS[:2], "tasks": ["ner"]}).json()
    assert only == {"predictions": {"ner": model.predict(TEXTS[:2], task="ner")}}


def test_unusual_texts_are_answered(client):
    texts = ["\x00", "\u200b", "🙂 🙂", "ünïcödé wörds", "paris " * 30, "a\tb\nc"]  # within the 200-byte limit
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    ner = response.json()["predictions"]["ner"]
    assert [len(p["tags"]) for p in ner] == [len(t.split()) for t in texts]


def test_embed_equals_encode(client, model):
    body = client.post("/embed", json={"texts": TEXTS}).json()
    assert body["dimension"] == 32
    np.testing.assert_allclose(np.array(body["embeddings"]), model.encode(TEXTS), atol=1e-6)


def test_health_and_info(client, run):
    assert client.get("/health").json() == {"status": "ok", "tasks": ["sentiment", "qtype", "ner"]}
    info = client.get("/info").json()
    results = json.loads(run.results.read_text())
    assert info["metrics"] == results["tasks"] and info["splits"] == results["splits"]
    assert info["tasks"]["sentiment"] == {"type": "classification", "labels": ["negative", "positive"]}
    assert info["tasks"]["ner"]["type"] == "token-classification"
    assert info["settings"]["max_texts"] == 8 and info["stats"]["peak_rss_mb"] > 0


# ------------------------------------------------------------------------------------------ bad requests

BAD = [
    ("malformed JSON", b'{"texts": ["a"', 400, "malformed JSON"),
    ("NaN is not JSON", b'{"texts": NaN}', 400, "malformed JSON"),
    ("body too large", b"[" * 100_000 + b"]" * 100_000, 413, "limit"),
    ("not UTF-8", b'{"texts": ["\xff"]}', 400, "malformed JSON"),
    ("not an object", b'["a"]', 422, "JSON object"),
    ("no texts", b'{"tasks": ["ner"]}', 422, "'texts' must be a list"),
    ("texts a string", b'{"texts": "hello"}', 422, "'texts' must be a list"),
    ("empty list", b'{"texts": []}', 422, "'texts' is empty"),
    ("empty text", b'{"texts": ["good", "  "]}', 422, "texts[1] is empty"),
    ("non-string", b'{"texts": ["good", 3]}', 422, "texts[1] is not a string (int)"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', 422, "not valid Unicode"),
    ("too many", json.dumps({"texts": ["a"] * 9}).encode(), 413, "9 texts"),
    ("too long", json.dumps({"texts": ["a" * 201]}).encode(), 413, "201 bytes"),
    ("unknown task", b'{"texts": ["a"], "tasks": ["topic"]}', 422, "unknown task(s) topic"),
    ("tasks empty", b'{"texts": ["a"], "tasks": []}', 422, "'tasks' must be"),
    ("unknown field", b'{"texts": ["a"], "task": "ner"}', 422, "unknown field(s) task"),
]


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("body,status,message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_get_json_4xx(client, body, status, message):
    response = client.post("/predict", content=body, headers=JSON)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_more_bad_requests(client):
    deep = b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # within the body limit: the parser's recursion
    assert client.post("/predict", content=deep, headers=JSON).status_code in (400, 422)
    assert "takes texts" in client.post("/embed", json={"texts": ["a"], "tasks": ["ner"]}).json()["error"]
    assert client.post("/embed", json={"texts": [1]}).status_code == 422
    assert client.get("/predict").json() == {"error": "Method Not Allowed"}
    assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
    assert client.get("/info").json()["stats"]["rejected"] >= 4


def test_settings_are_checked():
    with pytest.raises(ThawingError, match="max_batch must be positive"):
        ServeSettings(max_batch=0)
    with pytest.raises(ThawingError, match="must hold at least one full request"):
        ServeSettings(max_texts=100, max_queue=10)
    with pytest.raises(ThawingError, match="threads must be positive"):
        ServeSettings(threads=0)


# ------------------------------------------------------------------------------------------ a real server


@contextlib.contextmanager
def _serving(model, settings):
    """The command's uvicorn server on a free port of 127.0.0.1, in a thread; yields its URL, server and thread."""
    sock = listen("127.0.0.1", 0)
    srv = build_server(model, settings, log_level="warning")
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", srv, thread
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(model):
    """A real server whose requests wait up to 300 ms for company."""
    with _serving(model, ServeSettings(max_batch=64, max_wait_ms=300, max_texts=8)) as (url, _, _):
        yield url


def test_concurrent_clients_are_batched_and_bad_requests_stay_apart(server, model):
    good = [{"texts": [t]} for t in TEXTS] + [{"texts": TEXTS[:3], "tasks": ["sentiment"]}] * 3
    bad = [{"texts": [""]}, {"texts": ["a"], "tasks": ["nope"]}, {"texts": [7]}]
    barrier = threading.Barrier(len(good) + len(bad))

    def call(body):
        with httpx.Client(base_url=server, timeout=30) as http:
            barrier.wait()  # all at once, so they meet in the server's queue
            return http.post("/predict", json=body)

    with ThreadPoolExecutor(len(good) + len(bad)) as pool:
        responses = list(pool.map(call, good + bad))
    for body, response in zip(good, responses, strict=False):  # the good requests come first; the bad after them
        assert response.status_code == 200, response.text
        tasks = body.get("tasks") or list(model.tasks)
        expected = {t: model.predict(body["texts"], task=t) for t in tasks}
        got = response.json()["predictions"]
        assert set(got) == set(expected)
        for task in tasks:  # a text batched with others pads differently: labels equal, probabilities close
            for a, b in zip(got[task], expected[task], strict=True):
                assert a.get("label") == b.get("label") and a.get("tags") == b.get("tags")
                for label, p in a.get("probs", {}).items():
                    assert p == pytest.approx(b["probs"][label], abs=1e-5)
    assert [r.status_code for r in responses[len(good):]] == [422, 422, 422]
    stats = httpx.get(f"{server}/info").json()["stats"]
    assert stats["predict"]["requests"] == len(good)
    assert stats["predict"]["batches"] < len(good)
    assert stats["rejected"] == len(bad)


def _closed_within(conn: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes `conn` while the client sends `trickle` a byte every 0.1 s (None: still open
    after `seconds`)."""
    conn.settimeout(0.1)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        if sent < len(trickle):
            with contextlib.suppress(OSError):
                conn.sendall(trickle[sent : sent + 1])
            sent += 1
        try:
            if conn.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return time.monotonic() - start
    return None


def test_slow_and_silent_connections_are_closed_but_answered_requests_are_not(model):
    """Slowloris: a connection that never sends a request, or sends it a byte at a time, holds a socket forever
    unless the server sets a deadline; a request the model takes long to answer is not cut by it."""
    with _serving(model, ServeSettings(request_timeout_s=1.0, max_wait_ms=1500)) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as silent, \
                socket.create_connection(("127.0.0.1", port)) as slow:
            assert _closed_within(silent, 8) is not None
            assert _closed_within(slow, 8, trickle=head + b'{"texts": ["a b"]}') is not None
        # waits 1.5 s for company in the server (past the 1 s deadline), then is answered on the same connection
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(2):
                assert http.post("/predict", json={"texts": TEXTS[:2]}).status_code == 200


def test_shutdown_waits_for_requests_in_flight_at_most_the_graceful_timeout(model):
    with _serving(model, ServeSettings(max_wait_ms=15_000, graceful_timeout_s=1)) as (url, srv, thread), \
            ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/predict", json={"texts": TEXTS[:1]}, timeout=30)
        time.sleep(0.5)  # the request waits in the server's micro-batch queue
        start = time.monotonic()
        srv.should_exit = True  # what uvicorn's SIGTERM handler sets
        thread.join(timeout=20)
        stopped = time.monotonic() - start
        with contextlib.suppress(httpx.HTTPError):
            pending.result()
    assert stopped < 6  # the graceful timeout (1 s) cut the wait; without one it waits for the answer (~15 s)


# ------------------------------------------------------------------------------------------ the command


def test_serve_command_names_the_extra_when_fastapi_is_missing(run, monkeypatch):
    from thawing.cli import app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    with pytest.raises(ThawingError, match=r"pip install 'thawing\[serve\]'"):
        CliRunner().invoke(app, ["serve", str(run.path)], catch_exceptions=False)


def test_serve_command_refuses_a_directory_without_a_model(tmp_path):
    from thawing.cli import app

    with pytest.raises(ThawingError, match="no trained model here"):
        CliRunner().invoke(app, ["serve", str(tmp_path)], catch_exceptions=False)


def test_listen_gives_a_tcp_socket_so_responses_are_not_delayed():
    with listen("127.0.0.1", 0) as sock:  # asyncio sets TCP_NODELAY only on connections of an IPPROTO_TCP socket
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[0] == "127.0.0.1"


def test_listen_refuses_a_taken_port():
    taken = listen("127.0.0.1", 0)
    taken.listen()
    with taken, pytest.raises(ThawingError, match="cannot listen on 127.0.0.1"):
        listen("127.0.0.1", taken.getsockname()[1])


def test_serve_command_end_to_end(run, tmp_path):
    """`thawing serve --port 0` in its own process: it prints where it listens, answers, and stops on Ctrl-C."""
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "thawing", "serve", str(run.path), "--port", "0",
                                 "--log-level", "warning"], stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while "serving" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        line = next(x for x in log.read_text().splitlines() if "serving" in x)
        url = line.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        for _ in range(100):  # the port is bound at once but answers once the app has started
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = httpx.post(f"{url}/predict", json={"texts": TEXTS[:2], "tasks": ["qtype"]}).json()
        assert [p["label"] for p in body["predictions"]["qtype"]] == [
            p["label"] for p in thawing.load(run.path, device="cpu").predict(TEXTS[:2], task="qtype")]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130), log.read_text()  # 130: the usual status after Ctrl-C
    assert "Traceback" not in log.read_text()


def test_the_api_page_and_schema_are_served_unless_switched_off(model, client):
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and {"/predict", "/embed", "/health", "/info"} <= set(schema.json()["paths"])
    assert client.get("/docs").status_code == 200
    with TestClient(build_app(model, ServeSettings(docs=False))) as closed:
        assert closed.get("/openapi.json").status_code == 404 and closed.get("/docs").status_code == 404


@pytest.mark.parametrize("kind", ["text/plain", "", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_refused_with_415(client, kind):
    """The hostile pass (#26): `Content-Type: text/plain` was served as JSON."""
    headers = {"content-type": kind} if kind else {}
    response = client.post("/predict", content=b'{"texts": ["a good film"]}', headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    charset = {"content-type": "application/json; charset=utf-8"}
    ok = client.post("/predict", content=b'{"texts": ["a good film"]}', headers=charset)
    assert ok.status_code == 200
