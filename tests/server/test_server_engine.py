"""The micro-batching engine, driven directly in one event loop, so batch composition is deterministic."""

import asyncio

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.errors import MatryoshkaError
from matryoshka.server.engine import EmbeddingEngine, EncodeTimeout, Overloaded
from matryoshka.server.security import check_bind, is_loopback


def run_engine(engine, work):
    async def main():
        await engine.start()
        try:
            return await work()
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_forward_passes(encoder, sentences, full_vectors):
    sizes = []
    engine = EmbeddingEngine(encoder, max_batch=8, on_batch=sizes.append)
    requests = [sentences[i : i + 3] for i in range(0, 30, 3)]  # 10 requests of 3 texts

    async def work():
        return await asyncio.gather(*(engine.embed(texts) for texts in requests))

    results = run_engine(engine, work)
    assert sizes == [6, 6, 6, 6, 6]  # two 3-text requests per pass: a third would exceed 8
    vectors = np.concatenate([result[0] for result in results])
    np.testing.assert_allclose(vectors, full_vectors[:30], atol=2e-6)
    assert engine.admitted == 0


def test_max_batch_one_is_one_text_per_pass(encoder, sentences):
    sizes = []
    engine = EmbeddingEngine(encoder, max_batch=1, on_batch=sizes.append)
    run_engine(engine, lambda: asyncio.gather(*(engine.embed([s]) for s in sentences[:5])))
    assert sizes == [1] * 5


def test_queue_bound_refuses_what_does_not_fit(encoder, sentences):
    engine = EmbeddingEngine(encoder, max_queue=4)

    async def work():
        return await asyncio.gather(*(engine.embed([s]) for s in sentences[:10]), return_exceptions=True)

    results = run_engine(engine, work)
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 6 and all(isinstance(r, tuple) for r in results[:4])
    assert "limit 4" in str(refused[0])


def test_timed_out_requests_are_dropped_and_counted_back(encoder, sentences):
    sizes = []
    engine = EmbeddingEngine(encoder, timeout_s=0.001, batch_wait_ms=20, on_batch=sizes.append)

    async def work():
        outcome = await asyncio.gather(engine.embed(sentences[:2]), return_exceptions=True)
        await asyncio.sleep(0.05)  # let the batcher pick up and drop the timed-out job
        return outcome

    (outcome,) = run_engine(engine, work)
    assert isinstance(outcome, EncodeTimeout)
    assert sizes == []  # the expired job never reached the model
    assert engine.admitted == 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("10.1.2.3", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_a_key_or_insecure():
    with pytest.raises(MatryoshkaError, match=r"refusing to listen on 0\.0\.0\.0 without an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "key")
    check_bind("0.0.0.0", None, insecure=True)
    check_bind("127.0.0.1", None)


def test_serve_cli_refuses_public_bind_without_key(monkeypatch):
    monkeypatch.delenv("MATRYOSHKA_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "error: refusing to listen on 0.0.0.0 without an API key" in result.output
