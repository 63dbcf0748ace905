"""POST /v1/search over a real index of STS-B sentences, checked against exact search."""

import httpx
import pytest

from matryoshka import MatryoshkaError, truncate
from matryoshka.index import MatryoshkaIndex, exact_search
from matryoshka.server.search import IndexService

QUERY = "A man is playing a guitar."


@pytest.fixture(scope="module")
def url(serve, encoder, index_dir):
    with serve(index=IndexService(index_dir, encoder)) as base:
        yield base


def search(url, **body):
    return httpx.post(f"{url}/v1/search", json={"query": QUERY, **body}, timeout=60)


def expected_ids(encoder, full_vectors, dim, k):
    query = encoder.encode_full([QUERY])
    _, rows = exact_search(truncate(query, dim), truncate(full_vectors, dim), k)
    return [f"s{r}" for r in rows[0]]


@pytest.mark.parametrize("dim", [32, 384])
def test_search_at_a_prefix_is_exact_search_at_that_prefix(url, encoder, full_vectors, sentences, dim):
    response = search(url, k=5, dimensions=dim)
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [hit["id"] for hit in body["hits"]]
    assert ids == expected_ids(encoder, full_vectors, dim, 5)
    assert [hit["text"] for hit in body["hits"]] == [sentences[int(i[1:])] for i in ids]
    scores = [hit["score"] for hit in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert [(s["dim"], s["precision"], s["kept"]) for s in body["stages"]] == [(dim, "float", 5)]
    assert body["bytes_per_vector"] == 2 * dim  # float16 storage
    assert body["index"] == "stsb" and body["timings_ms"]["total"] >= body["timings_ms"]["search"]


def test_funnel_and_default_search(url, encoder, full_vectors):
    funnel = search(url, k=5, funnel="32:50,128:20").json()
    assert [s["stage"] for s in funnel["stages"]] == ["32:50", "128:20", "384:5"]
    assert [s["kept"] for s in funnel["stages"]] == [50, 20, 5]
    assert funnel["bytes_per_vector"] == 64
    default = search(url, k=10).json()
    assert default["stages"][-1]["dim"] == 384 and len(default["hits"]) == 10
    # The calibrated funnel reaches the recall target; on this query it finds the exact top 10.
    assert [hit["id"] for hit in default["hits"]] == expected_ids(encoder, full_vectors, 384, 10)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"dimensions": 0}, 400, "dimension 0 is out of range"),
        ({"dimensions": 500}, 400, "must be between 1 and 384"),
        ({"funnel": "32:x"}, 400, "bad funnel stage '32:x'"),
        ({"dimensions": 64, "funnel": "32:100"}, 400, "give at most one of"),
        ({"latency_ms": 0}, 400, "'latency_ms'"),
        ({"recall": 1.5}, 400, "'recall'"),
        ({"recall": 0.9, "latency_ms": 5}, 400, "give at most one of"),
        ({"k": 0}, 400, "'k': Input should be greater than or equal to 1"),
        ({"query": ""}, 400, "'query'"),
        ({"index": "other"}, 404, "index 'other' is not served here"),
        ({"colour": "red"}, 400, "'colour': Extra inputs are not permitted"),
    ],
)
def test_bad_search_requests_are_4xx(url, body, status, message):
    response = search(url, **body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_health_names_the_index_and_search_needs_one(url, serve):
    assert httpx.get(f"{url}/health").json()["index"]["rows"] == 300
    with serve() as bare:
        response = httpx.post(f"{bare}/v1/search", json={"query": QUERY})
        assert response.status_code == 404
        assert "start the server with --index" in response.json()["error"]["message"]


def test_index_of_another_model_is_refused(index_dir, declared_encoder):
    with pytest.raises(MatryoshkaError, match="cannot search an index of vectors from all-MiniLM-L6-v2"):
        IndexService(index_dir, declared_encoder)


def test_budgets_need_a_saved_plan_and_never_plan_in_a_request(url, index_dir):
    manifest = (index_dir / "manifest.json").read_bytes()
    for budget in ({"recall": 0.99}, {"latency_ms": 5}):
        response = search(url, k=5, **budget)
        assert response.status_code == 409, response.text
        assert "no saved plan: run `matryoshka index plan" in response.json()["error"]["message"]
    assert (index_dir / "manifest.json").read_bytes() == manifest


@pytest.fixture(scope="module")
def planned_url(serve, encoder, sentences, full_vectors, tmp_path_factory):
    path = tmp_path_factory.mktemp("planned") / "stsb"
    index = MatryoshkaIndex.create(path, model=encoder)
    index.add(full_vectors, texts=sentences, ids=[f"s{i}" for i in range(len(sentences))])
    plan = index.plan(k=5, sample=50)
    index.close()
    with serve(index=IndexService(path, encoder)) as base:
        yield base, plan


def test_recall_and_latency_budgets_read_the_saved_plan(planned_url, encoder, full_vectors):
    url, plan = planned_url
    for budget, candidate in [
        ({"recall": 0.99}, plan.for_recall(0.99)),
        ({"latency_ms": 1e308}, plan.for_latency(1e308)),
    ]:
        response = search(url, k=5, **budget)
        assert response.status_code == 200, response.text
        body = response.json()
        assert ",".join(s["stage"] for s in body["stages"]) == candidate.funnel
        assert len(body["hits"]) == 5
    exact = search(url, k=5, recall=1.0).json()
    assert [hit["id"] for hit in exact["hits"]] == expected_ids(encoder, full_vectors, 384, 5)
    unreachable = search(url, k=5, latency_ms=1e-9)
    assert unreachable.status_code == 400 and "nearest feasible plan" in unreachable.text
    for bad in ("Infinity", "NaN"):
        response = httpx.post(
            f"{url}/v1/search", content=f'{{"query": "x", "latency_ms": {bad}}}', timeout=30,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code in (400, 422) and "error" in response.json()


def test_large_k_widens_the_default_funnel_and_short_funnels_are_refused(url, encoder, full_vectors):
    response = search(url, k=200)
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 200
    short = search(url, k=200, funnel="64:100")
    assert short.status_code == 400 and "keeps fewer rows than the 200 asked for" in short.text
