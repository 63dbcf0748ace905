"""Vector search over nested embeddings: chunked on-disk storage and funnel search."""

from matryoshka.index.api import MatryoshkaIndex, SearchResult
from matryoshka.index.search import Stage, exact_search

__all__ = ["MatryoshkaIndex", "SearchResult", "Stage", "exact_search"]
