"""Texts and cached full-dim vectors the adapter benchmarks share (one definition, so cache keys match)."""

from __future__ import annotations

import csv

import numpy as np

from matryoshka.cache import cached_encode_full
from matryoshka.datasets import BeirData, data_path, load_beir, load_stsb
from matryoshka.encoder import Encoder

FLICKR_CAPTIONS = 10000  # distinct train-split captions used as an out-of-domain fitting collection


def scifact() -> BeirData:
    return load_beir(data_path("scifact"))


def stsb_train_sentences() -> list[str]:
    pairs = load_stsb("train")
    return list(dict.fromkeys(pairs.first + pairs.second))


def flickr_captions(limit: int = FLICKR_CAPTIONS) -> list[str]:
    """Distinct captions of the Flickr8k train images, in file order."""
    captions: dict[str, None] = {}
    with data_path("flickr8k_caption_pairs", "pairs.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["split"] == "train":
                captions.setdefault(row["anchor"])
                captions.setdefault(row["positive"])
            if len(captions) >= limit:
                break
    return list(captions)[:limit]


def vectors(texts: list[str], encoder: Encoder | None = None) -> np.ndarray:
    return cached_encode_full(encoder or Encoder(device="cpu"), texts)


def stsb_test() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Full-dim vectors of the distinct STS-B test sentences, the row of each pair's sides, gold scores."""
    pairs = load_stsb("test")
    sentences = list(dict.fromkeys(pairs.first + pairs.second))
    row = {sentence: i for i, sentence in enumerate(sentences)}
    first = np.array([row[s] for s in pairs.first])
    second = np.array([row[s] for s in pairs.second])
    return vectors(sentences), first, second, pairs.scores


def stsb_spearman(adapter, dims, test=None) -> dict[int, float]:
    """STS-B test Spearman x100 of the adapted vectors' cosine at every dim."""
    from matryoshka.dims import truncate
    from matryoshka.eval.metrics import spearman

    full, first, second, gold = test or stsb_test()
    adapted = adapter.transform(full)
    out = {}
    for dim in dims:
        cut = truncate(adapted, dim)
        out[dim] = 100 * spearman(np.sum(cut[first] * cut[second], axis=1), gold)
    return out


def scifact_ndcg(adapter, dims, data=None, doc_vectors=None, query_vectors=None) -> dict[int, float]:
    """SciFact test nDCG@10 x100 of exact search over the adapted vectors at every dim."""
    from matryoshka.eval.metrics import ndcg_at_k, run_from_search
    from matryoshka.index.search import exact_search

    data = data or scifact()
    docs = adapter.transform(doc_vectors if doc_vectors is not None else vectors(data.doc_texts))
    queries = adapter.transform(query_vectors if query_vectors is not None else vectors(data.query_texts))
    out = {}
    for dim in dims:
        scores, rows = exact_search(queries, docs, 10, dim)
        run = run_from_search(data.query_ids, data.doc_ids, scores, rows)
        out[dim] = 100 * ndcg_at_k(run, data.qrels, 10)
    return out
