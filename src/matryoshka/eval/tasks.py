"""Evaluation tasks: STS-B, any BEIR-format retrieval set and Flickr8k caption retrieval, scored at any
prefix of cached vectors.

A task encodes its texts once per model at full dim (through the on-disk cache), then scores any
dim as a ``truncate`` of those vectors; evaluating seven dims costs one encoding pass. Vectors are
held in named blocks (``first``/``second`` for STS, ``queries``/``corpus`` for retrieval) so a
baseline can transform every block the same way before it is truncated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from matryoshka.cache import cached_encode_full
from matryoshka.datasets import BeirData, data_dir, load_beir, load_flickr_retrieval, load_stsb
from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import mrr_at_k, ndcg_at_k, pearson, qrels_recall_at_k, run_from_search, spearman
from matryoshka.index.search import exact_search

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder

Blocks = dict[str, np.ndarray]
STS_RELATED_SCORE = 4.0  # gold score (0-5) from which an STS pair counts as related for the similarity gap
RANDOM_PAIRS_SEED = 0
RETRIEVAL_DEPTH = 100  # deepest cut-off of the retrieval metrics (Recall@100)


class Task(Protocol):
    """What the retention report needs from a task."""

    name: str
    metric: str  # the headline metric, one of the keys :meth:`score` returns

    def embed(self, encoder: Encoder) -> Blocks: ...
    def fit_texts(self) -> list[str]: ...
    def fit_vectors(self, encoder: Encoder) -> np.ndarray: ...
    def score(self, blocks: Blocks, dim: int) -> dict[str, float]: ...
    def similarity_gap(self, blocks: Blocks, dim: int) -> float: ...
    def search_blocks(self, blocks: Blocks) -> tuple[np.ndarray, np.ndarray]: ...


def _pair_cosines(first: np.ndarray, second: np.ndarray, dim: int) -> np.ndarray:
    return np.sum(truncate(first, dim) * truncate(second, dim), axis=1)


class StsTask:
    """STS benchmark: Spearman and Pearson (x100) of prefix cosine against the gold scores.

    Baselines are fitted on the train split's sentences, never on the evaluated split.
    """

    metric = "spearman"

    def __init__(self, split: str = "test", limit: int | None = None, fit_limit: int | None = None) -> None:
        self.pairs = load_stsb(split)
        if limit is not None:
            self.pairs.first, self.pairs.second = self.pairs.first[:limit], self.pairs.second[:limit]
            self.pairs.scores = self.pairs.scores[:limit]
        self.name = f"stsb:{split}" if limit is None else f"stsb:{split}[:{limit}]"
        self.fit_limit = fit_limit
        self.gold = np.asarray(self.pairs.scores)
        rng = np.random.default_rng(RANDOM_PAIRS_SEED)
        self.random_partner = rng.permutation(len(self.gold))

    @property
    def size(self) -> str:
        return f"{len(self.gold)} sentence pairs"

    def embed(self, encoder: Encoder) -> Blocks:
        sentences = list(dict.fromkeys(self.pairs.first + self.pairs.second))
        vectors = cached_encode_full(encoder, sentences)
        row = {sentence: i for i, sentence in enumerate(sentences)}
        return {
            "first": vectors[[row[s] for s in self.pairs.first]],
            "second": vectors[[row[s] for s in self.pairs.second]],
        }

    def fit_texts(self) -> list[str]:
        """The texts baselines and adapters are fitted on: the distinct train-split sentences."""
        train = load_stsb("train")
        return list(dict.fromkeys(train.first + train.second))[: self.fit_limit]

    def fit_vectors(self, encoder: Encoder) -> np.ndarray:
        return cached_encode_full(encoder, self.fit_texts())

    def score(self, blocks: Blocks, dim: int) -> dict[str, float]:
        cosine = _pair_cosines(blocks["first"], blocks["second"], dim)
        return {"spearman": 100 * spearman(cosine, self.gold), "pearson": 100 * pearson(cosine, self.gold)}

    def similarity_gap(self, blocks: Blocks, dim: int) -> float:
        """Mean cosine of pairs with gold >= 4 minus that of randomly re-paired sentences."""
        related = _pair_cosines(blocks["first"], blocks["second"], dim)[self.gold >= STS_RELATED_SCORE]
        unrelated = _pair_cosines(blocks["first"], blocks["second"][self.random_partner], dim)
        return float(related.mean() - unrelated.mean())

    def search_blocks(self, blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
        """Queries and corpus for the search-time column: first sentences against second sentences."""
        return blocks["first"], blocks["second"]


class BeirTask:
    """A BEIR-format set: nDCG@10, Recall@10/100 and MRR@10 (x100) of exact search at each prefix.

    ``source`` is a BEIR directory or an already loaded :class:`BeirData` (then ``name`` names it).
    Baselines are fitted on the corpus vectors (no relevance labels involved).
    """

    metric = "ndcg@10"

    def __init__(self, source: str | Path | BeirData, name: str | None = None) -> None:
        if isinstance(source, BeirData):
            self.data = source
        else:
            self.directory = Path(source)
            self.data = load_beir(self.directory)
        self.name = name or f"beir:{self.directory.name}"
        rng = np.random.default_rng(RANDOM_PAIRS_SEED)
        self.random_docs = rng.integers(0, len(self.data.doc_ids), size=len(self.data.query_ids))
        row = {doc: i for i, doc in enumerate(self.data.doc_ids)}
        self.relevant_pairs = np.array(
            [
                (q, row[doc])
                for q, qid in enumerate(self.data.query_ids)
                for doc, rel in self.data.qrels[qid].items()
                if rel > 0 and doc in row
            ],
            dtype=np.int64,
        ).reshape(-1, 2)

    @property
    def size(self) -> str:
        return f"{len(self.data.query_ids)} queries, {len(self.data.doc_ids)} documents"

    def embed(self, encoder: Encoder) -> Blocks:
        return {
            "queries": cached_encode_full(encoder, self.data.query_texts),
            "corpus": cached_encode_full(encoder, self.data.doc_texts),
        }

    def fit_texts(self) -> list[str]:
        """The texts baselines and adapters are fitted on: the corpus (no query, no qrel)."""
        return self.data.doc_texts

    def fit_vectors(self, encoder: Encoder) -> np.ndarray:
        return cached_encode_full(encoder, self.fit_texts())

    def score(self, blocks: Blocks, dim: int) -> dict[str, float]:
        """Exact search finds each query's top 100; they are re-scored in float64 before ranking, so
        float32 rounding cannot order near-ties (SciFact has one 6e-8 apart at 256 dims)."""
        _, rows = exact_search(blocks["queries"], blocks["corpus"], RETRIEVAL_DEPTH, dim)
        queries = truncate(np.asarray(blocks["queries"], dtype=np.float64), dim)
        candidates = truncate(np.asarray(blocks["corpus"], dtype=np.float64)[rows.ravel()], dim)
        scores = np.einsum("qd,qkd->qk", queries, candidates.reshape(*rows.shape, dim))
        run = run_from_search(self.data.query_ids, self.data.doc_ids, scores, rows)
        qrels = self.data.qrels
        return {
            "ndcg@10": 100 * ndcg_at_k(run, qrels, 10),
            "recall@10": 100 * qrels_recall_at_k(run, qrels, 10),
            "recall@100": 100 * qrels_recall_at_k(run, qrels, 100),
            "mrr@10": 100 * mrr_at_k(run, qrels, 10),
        }

    def similarity_gap(self, blocks: Blocks, dim: int) -> float:
        """Mean cosine of judged-relevant (query, document) pairs minus each query with a random document."""
        queries, corpus = blocks["queries"], blocks["corpus"]
        q, d = self.relevant_pairs[:, 0], self.relevant_pairs[:, 1]
        related = _pair_cosines(queries[q], corpus[d], dim)
        unrelated = _pair_cosines(queries, corpus[self.random_docs], dim)
        return float(related.mean() - unrelated.mean())

    def search_blocks(self, blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
        return blocks["queries"], blocks["corpus"]


def flickr_task(split: str = "heldout") -> BeirTask:
    """Flickr8k caption retrieval (:func:`matryoshka.datasets.load_flickr_retrieval`): each held-out
    image's first caption retrieves the other captions of its image among those of all held-out images;
    scored like any BEIR set, baselines fitted on the corpus captions."""
    return BeirTask(load_flickr_retrieval(split), name=f"flickr8k:{split}")


def parse_task(spec: str) -> Task:
    """``stsb`` (test split), ``stsb:SPLIT``, ``beir:DIR`` (a path, or a folder under the data root), or
    ``flickr8k`` (caption retrieval on the held-out images; ``flickr8k:train`` on the train images)."""
    kind, _, argument = spec.partition(":")
    if kind == "stsb":
        return StsTask(argument or "test")
    if kind == "flickr8k":
        return flickr_task(argument or "heldout")
    if kind == "beir":
        if not argument:
            raise MatryoshkaError("task beir needs a directory: beir:DIR (e.g. beir:scifact)")
        directory = Path(argument)
        if not directory.is_dir() and not directory.is_absolute():
            try:
                staged = data_dir() / argument
            except MatryoshkaError:
                staged = directory
            directory = staged if staged.is_dir() else directory
        if not directory.is_dir():
            raise MatryoshkaError(f"missing data: no BEIR directory {argument!r} (nor under the data root)")
        return BeirTask(directory)
    raise MatryoshkaError(f"unknown task {spec!r}: use stsb, stsb:SPLIT, beir:DIR or flickr8k")
