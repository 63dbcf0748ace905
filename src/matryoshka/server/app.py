"""The HTTP app: OpenAI-compatible embeddings, models, search, health, metrics and the web page.

Dims are checked only by ``Encoder.check_dim`` and shortened only by ``truncate``; errors leave as
OpenAI's error body (see :mod:`matryoshka.server.errors`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.models import ALIASES
from matryoshka.server.curve import retention_curve
from matryoshka.server.engine import EmbeddingEngine, EncodeTimeout, Overloaded
from matryoshka.server.errors import (
    ApiError,
    CatchUnexpected,
    Limits,
    install_error_handlers,
    texts_from_input,
)
from matryoshka.server.metrics import RequestMetrics, ServerMetrics
from matryoshka.server.schemas import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ModelCard,
    ModelList,
    RetentionCurve,
    SearchHit,
    SearchRequest,
    SearchResponse,
    StageReport,
    Usage,
)
from matryoshka.server.search import IndexService, PlanMissing
from matryoshka.server.security import BodyReadTimeout, BodySizeLimit, LoadShedding, bearer_ok
from matryoshka.server.tokens import decode_token_input, is_token_input

SEARCH_MODES = ("dimensions", "funnel", "latency_ms", "recall")


def create_app(
    engine: EmbeddingEngine,
    index: IndexService | None = None,
    api_key: str | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    """The app serving ``engine``'s model (and ``index`` for search).

    ``api_key`` guards /v1, /metrics, /docs, /openapi.json and all of /health but its status.
    """
    metrics = ServerMetrics()
    engine.on_batch = metrics.batch_size.observe
    metrics.queue_depth.set_function(lambda: engine.admitted)
    info, served = engine.encoder.info, engine.encoder.name
    depth = served.removeprefix(info.name)  # "@3-layers" for a model cut to 3 layers, else ""
    model_names = {served} | {
        f"{alias}{depth}" for alias in [str(info.path), *(a for a, n in ALIASES.items() if n == info.name)]
    }
    curve: dict[str, Any] = {}
    curve_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()
            if index is not None:
                index.close()

    # /docs and /openapi.json are served below, behind the key like the API they describe.
    unguarded_docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="matryoshka", version="0.1.0", lifespan=lifespan, **unguarded_docs)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=limits.body_timeout_s)
    app.add_middleware(LoadShedding, engine=engine)
    app.add_middleware(CatchUnexpected)  # a 500 leaves as a whole answer; the connection stays usable
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts 413s, 500s and shed 503s too

    install_error_handlers(app)

    async def authorised(request: Request) -> None:
        if api_key and not bearer_ok(request.headers.get("authorization"), api_key):
            raise ApiError(
                401, "missing or invalid API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    guarded = [Depends(authorised)]

    def keyed(request: Request) -> bool:
        return not api_key or bearer_ok(request.headers.get("authorization"), api_key)

    if index is not None and not index.index.store.manifest["source"].get("model"):
        # Registered before the search route, so it answers every text query for this index.
        @app.post("/v1/search", dependencies=guarded, include_in_schema=False)
        async def search_needs_a_model() -> None:
            """An index of bare vectors (built with no model) cannot be searched with text: refuse that."""
            raise ApiError(
                400,
                f"index {index.name!r} holds vectors from no recorded model (it was built from vectors "
                "alone), so this server cannot encode text queries for it: rebuild it with --model, or "
                "search it with query vectors through the Python API",
                "query",
                "index_has_no_model",
            )

    def check_model(name: str) -> None:
        if name not in model_names:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {served!r}",
                "model",
                "model_not_found",
            )

    async def encode(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        try:
            return await engine.embed(texts)
        except Overloaded as exc:
            raise ApiError(
                503, str(exc), code="overloaded", kind="server_busy", headers={"Retry-After": "1"}
            ) from None
        except EncodeTimeout as exc:
            raise ApiError(
                503, str(exc), code="timeout", kind="server_busy", headers={"Retry-After": "1"}
            ) from None

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        dependencies=guarded,
        responses={400: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def embeddings(body: EmbeddingRequest) -> EmbeddingResponse:
        """OpenAI's embeddings endpoint; ``dimensions`` gives the re-normalised prefix."""
        check_model(body.model)
        dim = engine.encoder.check_dim(body.dimensions)
        given = decode_token_input(body.input) if is_token_input(body.input) else body.input
        texts = texts_from_input(given, limits)
        full, tokens = await encode(texts)
        vectors = truncate(full, dim).astype("<f4")
        if body.encoding_format == "base64":
            values: list = [base64.b64encode(vector.tobytes()).decode("ascii") for vector in vectors]
        else:
            values = vectors.tolist()
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=value) for i, value in enumerate(values)],
            model=served,
            usage=Usage(prompt_tokens=sum(tokens), total_tokens=sum(tokens)),
        )

    @app.get("/v1/models", response_model=ModelList, dependencies=guarded)
    async def models() -> ModelList:
        dims = sorted(info.supported_dims, reverse=True) if info.supported_dims else None
        return ModelList(
            data=[
                ModelCard(
                    id=served, full_dim=info.full_dim, supported_dims=dims, layers=engine.encoder.cut_layers
                )
            ]
        )

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        dependencies=guarded,
        responses={
            400: {"model": ErrorBody},
            404: {"model": ErrorBody},
            409: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
    )
    async def search(body: SearchRequest) -> SearchResponse:
        """Top k of the served index for a text query: at a prefix, through a funnel, or by default."""
        if index is None:
            raise ApiError(
                404, "no index is loaded: start the server with --index DIR", "index", "index_not_found"
            )
        if body.index is not None and body.index != index.name:
            raise ApiError(
                404,
                f"index {body.index!r} is not served here; this server serves {index.name!r}",
                "index",
                "index_not_found",
            )
        chosen = [name for name in SEARCH_MODES if getattr(body, name) is not None]
        if len(chosen) > 1:
            raise ApiError(
                400, f"give at most one of {', '.join(SEARCH_MODES)} (got {', '.join(chosen)})", chosen[1]
            )
        budget = {name: getattr(body, name) for name in ("latency_ms", "recall") if name in chosen}
        funnel = body.funnel
        if body.dimensions is not None:
            funnel = str(engine.encoder.check_dim(body.dimensions))
        texts_from_input(body.query, limits)
        started = time.perf_counter()
        full, _ = await encode([body.query])
        encoded = time.perf_counter()
        try:
            result, stages = await index.search(full[0], body.k, funnel, budget)
        except PlanMissing as exc:
            raise ApiError(409, str(exc), chosen[0], "plan_missing") from None
        except MatryoshkaError as exc:
            raise ApiError(400, str(exc), chosen[0] if chosen else None, "invalid_value") from None
        done = time.perf_counter()
        hits = [
            SearchHit(id=key, score=float(score), text=text)
            for key, score, text in zip(result.ids[0], result.scores[0], result.texts[0], strict=False)
        ]
        report = [
            StageReport(
                stage=stats.stage,
                dim=stage.dim,
                precision=stage.precision,
                kept=stats.kept,
                ms=1000 * stats.seconds,
                bytes_read=stats.bytes_read,
            )
            for stage, stats in zip(stages, result.stages, strict=True)
        ]
        timings = {
            "encode": 1000 * (encoded - started),
            "search": 1000 * (done - encoded),
            "total": 1000 * (done - started),
        }
        return SearchResponse(
            index=index.name,
            hits=hits,
            stages=report,
            bytes_per_vector=stages[0].bytes_per_vector(index.dtype),
            timings_ms=timings,
        )

    @app.get("/v1/retention", response_model=RetentionCurve, dependencies=guarded)
    async def retention() -> dict:
        """What each prefix keeps (STS-B Spearman per dim), computed once in the encoder's thread."""
        async with curve_lock:
            if not curve:
                curve.update(await engine.run_exclusive(retention_curve, engine.encoder))
        return curve

    @app.get("/health")
    async def health(request: Request) -> dict:
        """Liveness for anyone; what is served (model, queue, index) only with the key, when one is set."""
        if not keyed(request):
            return {"status": "ok"}
        return {
            "status": "ok",
            "model": served,
            "full_dim": info.full_dim,
            "queue_texts": engine.admitted,
            "max_queue": engine.max_queue,
            "index": None if index is None else index.describe(),
        }

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="matryoshka API")

    app.mount("/", StaticFiles(directory=str(files("matryoshka.server") / "static"), html=True), name="page")
    app.state.engine, app.state.metrics, app.state.index = engine, metrics, index
    return app
