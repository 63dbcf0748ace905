"""Vector search over nested embeddings: chunked on-disk storage and funnel search."""

from matryoshka.index.api import MatryoshkaIndex
from matryoshka.index.search import exact_search
from matryoshka.index.stages import SearchResult, Stage

__all__ = ["MatryoshkaIndex", "SearchResult", "Stage", "exact_search"]
