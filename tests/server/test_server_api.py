"""The real server on a loopback port, called with the official openai client and plain HTTP."""

import base64
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from matryoshka.server.app import Limits

TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run on the beach."]


@pytest.fixture(scope="module")
def url(serve):
    with serve(limits=Limits(max_items=16, max_chars=2000, max_body_bytes=64 * 1024)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def post(url, body, **kwargs):
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=30, **kwargs)


def test_openai_client_dimensions_64_match_encoder(client, encoder):
    # The client asks for base64 by default and decodes it itself.
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, dimensions=64)
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS, dim=64), atol=2e-6)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.model == "all-MiniLM-L6-v2"


def test_float_and_base64_formats_agree(client, url, encoder):
    floats = client.embeddings.create(model="minilm", input=TEXTS[0], dimensions=32, encoding_format="float")
    raw = post(url, {"model": "minilm", "input": TEXTS[0], "dimensions": 32, "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (32,)
    np.testing.assert_array_equal(decoded, np.array(floats.data[0].embedding, dtype=np.float32))
    np.testing.assert_allclose(decoded, encoder.encode(TEXTS[0], dim=32), atol=2e-6)


def test_full_dim_without_dimensions_and_usage_counts_tokens(client, encoder):
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    assert len(response.data[0].embedding) == 384
    tokens = sum(len(encoder.model.tokenizer(text)["input_ids"]) for text in TEXTS)
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens == 27


@pytest.mark.parametrize(
    ("change", "status", "param", "message"),
    [
        ({"dimensions": 0}, 400, "dimensions", "dimension 0 is out of range: must be between 1 and 384"),
        ({"dimensions": -8}, 400, "dimensions", "dimension -8 is out of range: must be between 1 and 384"),
        ({"dimensions": 385}, 400, "dimensions", "dimension 385 is out of range: must be between 1 and 384"),
        ({"dimensions": 64.5}, 400, "dimensions", "dimension must be an integer, got 64.5"),
        ({"dimensions": "64"}, 400, "dimensions", "dimension must be an integer, got '64'"),
        ({"dimensions": True}, 400, "dimensions", "dimension must be an integer, got True"),
        ({"input": []}, 400, "input", "'input' must not be empty"),
        ({"input": ""}, 400, "input", "'input[0]' is empty"),
        ({"input": ["ok", "  "]}, 400, "input", "'input[1]' is empty"),
        ({"input": [101, -1]}, 400, "input", "'input[0]' holds token id -1, which is not a cl100k_base"),
        ({"input": [[15339], [100300]]}, 400, "input", "'input[1]' holds token id 100300"),
        ({"input": [[15339], "text"]}, 400, "input", "a list of strings, or token arrays (lists of ints)"),
        ({"input": [True, False]}, 400, "input", "a list of strings, or token arrays (lists of ints)"),
        ({"input": None}, 400, "input", "must be a string, a list of strings, or token arrays"),
        ({"input": ["a"] * 17}, 400, "input", "'input' has 17 items; at most 16 per request"),
        ({"input": "x" * 2001}, 400, "input", "'input[0]' has 2001 characters; at most 2000"),
        ({"encoding_format": "int8"}, 400, "encoding_format", "Input should be 'float' or 'base64'"),
        ({"model": None}, 400, "model", "'model': Input should be a valid string"),
        ({"model": "text-embedding-3-small"}, 404, "model", "model 'text-embedding-3-small' is not served"),
    ],
)
def test_bad_input_is_a_clear_4xx(url, change, status, param, message):
    response = post(url, {"model": "all-MiniLM-L6-v2", "input": TEXTS, **change})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text


def test_openai_client_raises_bad_request_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError, match="must be between 1 and 384"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, dimensions=1000)


def test_missing_fields_and_broken_json_are_400(url):
    missing = post(url, {"model": "all-MiniLM-L6-v2"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "input"
    broken = httpx.post(
        f"{url}/v1/embeddings", content=b'{"input": "x', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["message"] == "the request body is not valid JSON"


def test_body_over_the_limit_is_413_declared_or_streamed(url):
    big = {"model": "all-MiniLM-L6-v2", "input": ["y" * 1000] * 70}  # ~70 kB > 64 KiB
    declared = post(url, big)
    assert declared.status_code == 413
    assert "larger than 65536 bytes" in declared.json()["error"]["message"]

    def chunks():
        yield b'{"model": "all-MiniLM-L6-v2", "input": ["'
        for _ in range(80):
            yield b"z" * 1000
        yield b'"]}'

    streamed = httpx.post(
        f"{url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_models_lists_full_and_supported_dims(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["all-MiniLM-L6-v2"]
    assert models[0].full_dim == 384 and models[0].supported_dims is None


def test_health_metrics_and_page(url):
    assert post(url, {"model": "minilm", "input": "counted"}).status_code == 200
    assert post(url, {"model": "minilm", "input": "counted", "dimensions": 0}).status_code == 400
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["full_dim"] == 384 and health["queue_texts"] == 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'matryoshka_requests_total{route="/v1/embeddings",status="200"}' in metrics
    assert 'matryoshka_requests_total{route="/v1/embeddings",status="400"}' in metrics
    assert 'matryoshka_requests_total{route="/health",status="200"}' in metrics
    assert "matryoshka_batch_texts_count" in metrics and "matryoshka_queue_texts 0.0" in metrics
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_api_key_required_when_set(serve):
    with serve(api_key="s3cret") as base:
        assert httpx.get(f"{base}/v1/models").status_code == 401
        wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/health").status_code == 200
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert len(keyed.embeddings.create(model="minilm", input="hi", dimensions=8).data[0].embedding) == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="bad", max_retries=0).models.list()


def test_full_queue_answers_503_at_once(serve):
    long_texts = [" ".join(["matryoshka embeddings nest"] * 120) + f" {i}" for i in range(8)]
    with serve(max_queue=8, max_batch=8, limits=Limits(max_items=8)) as base:
        slow: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: slow.append(post(base, {"model": "minilm", "input": long_texts}))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/health").json()["queue_texts"] < 8:
            assert time.monotonic() < deadline, "the long request never filled the queue"
        refused = post(base, {"model": "minilm", "input": "one more"})
        # Shed before the body is read: even a broken body gets the 503, not a 400.
        unread = httpx.post(
            f"{base}/v1/embeddings", content=b"{", headers={"content-type": "application/json"}
        )
        worker.join()
    assert unread.status_code == 503
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert "8 texts queued, limit 8" in refused.json()["error"]["message"]
    assert slow[0].status_code == 200


def test_request_past_the_timeout_is_503(serve):
    with serve(timeout_s=0.001, batch_wait_ms=50) as base:
        response = post(base, {"model": "minilm", "input": "too slow"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "timeout"
        assert httpx.get(f"{base}/health").json()["queue_texts"] == 0


def test_retention_curve_is_measured_on_stsb(url):
    curve = httpx.get(f"{url}/v1/retention", timeout=300).json()
    assert curve["dims"] == [8, 16, 32, 64, 128, 256, 384]
    assert curve["pairs"] == 300 and curve["dataset"] == "STS-B test"
    # Spearman of the bundled all-MiniLM-L6-v2 on the first 300 STS-B test pairs, per dim.
    expected = [0.7331, 0.8443, 0.8899, 0.9154, 0.9221, 0.9322, 0.9337]
    np.testing.assert_allclose(curve["scores"], expected, atol=2e-4)
    assert curve["retention"][-1] == 1.0
    np.testing.assert_allclose(curve["retention"][0], 0.7331 / 0.9337, atol=1e-3)


def test_declared_dims_are_enforced_and_listed(serve, declared_encoder):
    with serve(model_encoder=declared_encoder) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        card = client.models.list().data[0]
        assert (card.id, card.full_dim, card.supported_dims) == (
            "minilm-declared",
            384,
            [384, 256, 128, 64, 32],
        )
        assert (
            len(
                client.embeddings.create(model="minilm-declared", input="hi", dimensions=64).data[0].embedding
            )
            == 64
        )
        refused = post(base, {"model": "minilm-declared", "input": "hi", "dimensions": 100})
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "message": "dimension 100 is not supported by this model; supported dims: 384, 256, 128, 64, 32",
            "type": "invalid_request_error",
            "param": "dimensions",
            "code": "invalid_value",
        }
