"""Request and response bodies: OpenAI's embeddings shapes, plus search, models and errors.

Fields whose bad values must produce a specific message (``input``, ``dimensions``) are typed loosely
here and checked by the handlers, so a client gets "dimension 0 is out of range..." rather than a
generic validation error; every other field is checked by pydantic and reported the same OpenAI way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send `user` and future fields

    input: Any = Field(description="A string or a list of strings.")
    model: str
    dimensions: Any = Field(None, description="Length of the re-normalised prefix (default: full).")
    encoding_format: Literal["float", "base64"] = "float"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32 bytes


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "matryoshka"
    full_dim: int
    supported_dims: list[int] | None = Field(description="Declared dims; null means any prefix 1..full_dim.")
    layers: int | None = Field(None, description="Transformer layers run per text; null means all.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, le=1000)
    index: str | None = Field(None, description="Name of the index (the one served, if given).")
    dimensions: Any = Field(None, description="Exact search at this prefix.")
    funnel: str | None = Field(None, description="Stages as DIM:KEEP,..., e.g. 32:1000,128:100.")
    latency_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="The saved plan's most accurate funnel within this many ms.",
    )
    recall: float | None = Field(None, gt=0, le=1, description="The saved plan's fastest funnel reaching it.")


class SearchHit(BaseModel):
    id: str
    score: float
    text: str | None = None


class StageReport(BaseModel):
    stage: str
    dim: int
    precision: str
    kept: int
    ms: float
    bytes_read: int


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    index: str
    hits: list[SearchHit]
    stages: list[StageReport]
    bytes_per_vector: int = Field(description="Bytes per vector at the first stage, as the index stores it.")
    timings_ms: dict[str, float]


class RetentionCurve(BaseModel):
    model: str
    metric: str
    dataset: str
    pairs: int
    dims: list[int]
    scores: list[float]
    retention: list[float]  # score / full-dim score
    source: str
