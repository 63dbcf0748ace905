import json

import pytest

from matryoshka.datasets import load_stsb

QUERY_COUNT = 10
DISTRACTOR_COUNT = 30


@pytest.fixture(scope="session")
def eval_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, eval_cache_dir):
    """Evaluation tests share one session cache, never the user's ~/.cache."""
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(eval_cache_dir))


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory):
    """A tiny BEIR set from real STS-B test pairs: each query's gold-similar partner (relevance 2) among
    distractors, plus one distractor judged relevance 1 for the first query."""
    pairs = load_stsb("test")
    related = [i for i, score in enumerate(pairs.scores) if score >= 4][:QUERY_COUNT]
    queries = {f"q{i}": pairs.first[i] for i in related}
    docs = {f"d{i}": pairs.second[i] for i in related}
    taken = set(queries.values()) | set(docs.values())
    distractors = [s for s in dict.fromkeys(pairs.first[200:]) if s not in taken][:DISTRACTOR_COUNT]
    docs |= {f"x{n}": text for n, text in enumerate(distractors)}
    root = tmp_path_factory.mktemp("tinybeir")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items())
    )
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t2" for i in related]
    lines.append(f"q{related[0]}\tx0\t1")
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root
