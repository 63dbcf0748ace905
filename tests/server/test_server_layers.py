"""A server started at a depth (`serve --layers N`) names it and refuses the whole model's name."""

import httpx
import numpy as np

from matryoshka import Encoder


def test_the_server_names_the_depth_it_serves(serve, sentences):
    cut = Encoder(device="cpu", layers=3)
    with serve(model_encoder=cut) as url:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["layers"]) for m in models] == [("all-MiniLM-L6-v2@3-layers", 3)]
        body = {"model": "all-MiniLM-L6-v2@3-layers", "input": sentences[:3], "dimensions": 64}
        answer = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == "all-MiniLM-L6-v2@3-layers"
        vectors = np.array([item["embedding"] for item in answer.json()["data"]])
        np.testing.assert_allclose(vectors, cut.encode(sentences[:3], dim=64), atol=2e-6)
        whole = httpx.post(f"{url}/v1/embeddings", json={**body, "model": "all-MiniLM-L6-v2"}, timeout=60)
        assert whole.status_code == 404
        assert "this server serves 'all-MiniLM-L6-v2@3-layers'" in whole.json()["error"]["message"]
