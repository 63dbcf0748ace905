import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from matryoshka import Encoder
from matryoshka.index import MatryoshkaIndex
from matryoshka.server.app import Limits, create_app
from matryoshka.server.engine import EmbeddingEngine
from matryoshka.server.security import uvicorn_options


@contextmanager
def running(app, limits=Limits()):
    """Serve ``app`` with uvicorn in a thread on a free loopback port, with the connection limits
    ``matryoshka serve`` sets; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(limits))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def serve_app():
    """``running`` as a fixture, for a test that serves an app it made itself."""
    return running


@pytest.fixture(scope="module")
def serve(encoder):
    """Start a server for the model of the session's encoder: ``serve(**engine_and_app_options)``."""

    @contextmanager
    def start(api_key=None, limits=Limits(), index=None, model_encoder=None, **engine_options):
        engine = EmbeddingEngine(model_encoder or encoder, **engine_options)
        with running(create_app(engine, index=index, api_key=api_key, limits=limits), limits) as url:
            yield url

    return start


@pytest.fixture(scope="module")
def declared_encoder(tmp_path_factory, encoder):
    """The same MiniLM files declared as trained for 384/256/128/64/32 dims (as a trained model is)."""
    root = tmp_path_factory.mktemp("models") / "minilm-declared"
    root.mkdir()
    for entry in encoder.info.path.iterdir():
        (root / entry.name).symlink_to(entry)
    (root / "matryoshka.json").write_text(
        json.dumps({"name": "minilm-declared", "full_dim": 384, "supported_dims": [384, 256, 128, 64, 32]})
    )
    declared = Encoder(root, device="cpu")
    declared._model = encoder.model  # identical files: reuse the loaded weights instead of loading twice
    return declared


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, encoder, sentences, full_vectors):
    path = tmp_path_factory.mktemp("index") / "stsb"
    index = MatryoshkaIndex.create(path, model=encoder)
    index.add(full_vectors, texts=sentences, ids=[f"s{i}" for i in range(len(sentences))])
    index.calibrate()
    index.close()
    return path
