"""The worker's HTTP API on Faust's web server (DESIGN.md "HTTP API of the worker", a contract).

:func:`register_api` is called by :func:`streams.app.create_platform` before the worker starts. Routes:

================================  ==========================================================================
``GET  /v1/users/{id}/sequence``  stored recent actions, newest first (``SequenceCodec.to_json``)
``GET  /v1/users/{id}/features``  realtime + daily vectors and sequence statistics (:mod:`streams.features`)
``POST /v1/users/{id}/score``     body ``{"candidates": [item_id, ...]}`` → the TransAct scorer's answer
``GET  /metrics``                 Prometheus text of the worker's registry
``GET  /livez``                   200 while the process answers
``GET  /readyz``                  200 once table recovery finished, 503 before
================================  ==========================================================================

Routing: a user's state lives on the worker that owns the user's partition of the ``sequences`` table.
A request for a user owned by another worker is forwarded to it (owner found with Faust's
``app.router.key_store``, the lookup behind ``app.table_route``) and its answer is returned; the header
``X-Actionstream-Worker`` names the worker that served the state. We do not use ``table_route`` itself:
it forwards neither the body of a POST nor a timeout, copies ``Host``/``Content-Length`` verbatim and has
no loop guard. Ours forwards the body, ``Authorization`` and ``Content-Type``, marks the hop with
``X-Actionstream-Routed-By`` (a routed request is never routed again: if ownership moved meanwhile the
answer is 503 "retry"), and maps an unreachable owner to 502.

Security and limits (issue 7): when ``settings.api_token`` is set, every route except ``/livez``,
``/readyz`` and ``/metrics`` (exempt so Prometheus scrapes without a secret; it carries no user data)
needs ``Authorization: Bearer <token>``, else 401. This includes Faust's own pages (``/table/...``,
``/router/...``). The score body is capped at ``max_body_bytes`` (413) and ``max_candidates`` (400).

Every request, errors and 404s included, is timed into ``actionstream_http_request_duration_seconds
{route, method, status}`` with ``route`` = the route template (``/v1/users/{user_id}/features``, or
``unmatched`` for unknown paths: no unbounded label values; status 499 = the client disconnected).

Scoring: ``platform.scorer`` (a :class:`transact.inference.Scorer`, set by whoever loads the checkpoint)
runs on one dedicated thread, never on the event loop; the handler only reads the user's stored sequence
and daily record (on the owning worker) and awaits :func:`score_body`. Until a scorer is set the route
answers 503 ``{"error": "model not loaded"}``; with more than ``MAX_PENDING_SCORES`` requests waiting it
answers 503 "busy" instead of queueing without bound.

User endpoints answer 503 while the worker is recovering its tables (the state would be incomplete).
Keys of the ``realtime`` / ``daily`` tables are the UTF-8 bytes of the user id (like ``sequences``);
``realtime`` values are float32 bytes, ``daily`` values the record's JSON bytes (contracts_topics.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

import aiohttp
import numpy as np
import orjson
from aiohttp import web
from faust.types import TP
from faust.web import Request, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from yarl import URL

from streams.events import now_ms
from streams.features import assemble_features, vector_from_bytes
from streams.metrics import WorkerMetrics
from streams.sequence import Act, SequenceCodec, decode

__all__ = ["ROUTED_HEADER", "WORKER_HEADER", "ApiError", "ApiPlatform", "Scorer", "parse_candidates",
           "register_api", "score_body"]

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Actionstream-Routed-By"
WORKER_HEADER = "X-Actionstream-Worker"
AUTH_EXEMPT = frozenset({"/livez", "/readyz", "/metrics"})
MAX_USER_ID_CHARS = 128
MAX_ITEM_ID_CHARS = 128
FORWARD_TIMEOUT_S = 5.0
MAX_PENDING_SCORES = 16  # score requests queued for the scoring thread before 503 "busy"
NO_MODEL_VERSION = "none"
CLIENT_CLOSED = 499  # status label of a request whose client disconnected (nginx's convention)


class Scorer(Protocol):
    """The TransAct ranking model as the API uses it: :class:`transact.inference.Scorer`.

    ``score`` is synchronous CPU work; the API runs it on a one-thread executor, never on the event loop.
    """

    heads: tuple[str, ...]

    @property
    def model_version(self) -> str: ...

    def score(self, seq: Sequence[Act], candidates: Sequence[str], request_ts: int,
              daily: np.ndarray | None = None) -> np.ndarray: ...


class ApiPlatform(Protocol):
    """What the API needs from :class:`streams.app.Platform` (``scorer`` is optional: read with getattr)."""

    app: Any                      # faust.App
    settings: Any                 # WorkerSettings: api_token, max_candidates, max_body_bytes
    metrics: WorkerMetrics
    registry: CollectorRegistry
    codec: SequenceCodec
    tables: Any                   # .sequences (Faust table), optional .realtime / .daily (bytes keys)
    sequences: Any                # streams.tables.SequenceStore: get_blob(user_id), owner(user_key)
    # optional attributes, read with getattr: scorer (Scorer), encoder (transact.inference.Encoder)

    def is_ready(self) -> bool: ...


class ApiError(Exception):
    """A client-visible error: JSON ``{"error": message, ...}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


def error_response(exc: ApiError) -> web.Response:
    return json_response({"error": exc.message, **exc.extra}, exc.status, exc.headers)


# ---------------------------------------------------------------------------------------------------------
# pure validation


def check_user_id(user_id: str) -> str:
    if not 1 <= len(user_id) <= MAX_USER_ID_CHARS:
        raise ApiError(400, f"user_id must be 1..{MAX_USER_ID_CHARS} characters, got {len(user_id)}")
    return user_id


def parse_candidates(body: bytes, max_candidates: int) -> list[str]:
    """Validate a score request body; return the candidate item ids.

    Args:
        body: raw request bytes, expected ``{"candidates": ["item_id", ...]}``.
        max_candidates: the most candidates one request may carry.
    Raises:
        ApiError(400): not JSON, not an object, no/invalid ``candidates`` (with the offending index).
    """
    if not body:
        raise ApiError(400, 'empty body: expected JSON {"candidates": ["item_id", ...]}')
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f'body must be a JSON object {{"candidates": [...]}}, got {type(data).__name__}')
    if "candidates" not in data:
        raise ApiError(400, 'missing field "candidates" (a list of item ids)')
    cands = data["candidates"]
    if not isinstance(cands, list):
        raise ApiError(400, f'"candidates" must be a list of item ids, got {type(cands).__name__}')
    if not cands:
        raise ApiError(400, f'"candidates" is empty: send 1..{max_candidates} item ids')
    if len(cands) > max_candidates:
        raise ApiError(400, f'too many candidates: {len(cands)} > {max_candidates} (ACTIONSTREAM_MAX_CANDIDATES)')
    for i, c in enumerate(cands):
        if not isinstance(c, str) or not c or len(c) > MAX_ITEM_ID_CHARS:
            raise ApiError(400, f"candidates[{i}] must be a non-empty string of at most {MAX_ITEM_ID_CHARS} "
                                f"characters, got {c!r:.60}")
    return cands


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) more than ``max_bytes`` before reading it all."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"body of {declared} bytes exceeds the limit of {max_bytes} bytes "
                            "(ACTIONSTREAM_MAX_BODY_BYTES)")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65_536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"body exceeds the limit of {max_bytes} bytes (ACTIONSTREAM_MAX_BODY_BYTES)")
        chunks.append(chunk)


def decode_daily(value: Any) -> dict[str, Any] | None:
    """The daily table's value (record bytes, or an already-decoded dict) as a record dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    record = orjson.loads(value)
    return record if isinstance(record, dict) else None


def score_body(scorer: Scorer, seq: Sequence[Act], candidates: list[str], request_ts: int,
               daily: Mapping[str, Any] | None) -> bytes:
    """Run the scorer and serialise the DESIGN.md answer (runs on the scoring thread, not the event loop).

    Returns:
        JSON ``{"scores": [{"item_id": c, "<head>": p, ...} for each candidate, in request order],
        "model_version": str}`` with ``p`` the head's probability (float32 precision).
    Raises:
        ValueError: the model and the stored state disagree (e.g. daily vector dimension): a server error.
    """
    vector = daily.get("vector") if daily else None
    daily_vec = np.asarray(vector, dtype=np.float32) if vector else None
    probs = scorer.score(seq, candidates, request_ts, daily_vec)  # (C, H) float32
    heads = tuple(scorer.heads)
    if probs.shape != (len(candidates), len(heads)):
        raise ValueError(f"scorer returned shape {probs.shape}, expected {(len(candidates), len(heads))}")
    rows = probs.tolist()
    return orjson.dumps({"scores": [{"item_id": c, **dict(zip(heads, row, strict=True))}
                                    for c, row in zip(candidates, rows, strict=True)],
                         "model_version": scorer.model_version})


def _urlident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))


# ---------------------------------------------------------------------------------------------------------
# wiring


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_template(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def make_middleware(platform: ApiPlatform) -> Any:
    """aiohttp middleware: bearer-token auth, JSON errors, and the HTTP latency histogram."""
    token = platform.settings.api_token.get_secret_value().encode()
    expected = b"Bearer " + token
    hist = platform.metrics.http_request_duration_seconds

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = _route_template(request)
        status = 500
        try:
            if token and route not in AUTH_EXEMPT:
                given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
                if not hmac.compare_digest(given, expected):
                    why = "missing" if not given else "invalid"
                    raise ApiError(401, f"{why} bearer token: send 'Authorization: Bearer <token>'",
                                   headers={"WWW-Authenticate": 'Bearer realm="actionstream"'})
            response = await handler(request)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            return error_response(exc)
        except asyncio.CancelledError:  # the client went away mid-request
            status = CLIENT_CLOSED
            raise
        except web.HTTPException as exc:  # aiohttp's own 404 / 405
            status = exc.status
            return json_response({"error": exc.reason}, exc.status, {k: v for k, v in exc.headers.items()
                                                                    if k.lower() == "allow"})
        except Exception:
            log.exception("unhandled error in %s %s", request.method, route)
            status = 500
            return json_response({"error": "internal server error (see the worker log)"}, 500)
        finally:
            hist.labels(route, request.method, str(status)).observe(time.perf_counter() - start)

    return middleware


class _ScoringQueue:
    """One scoring thread (torch work off the event loop) and a count of requests waiting for it."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actionstream-score")
        self.pending = 0


def register_api(platform: ApiPlatform) -> None:
    """Add the API's views and middleware to ``platform.app``'s web server (call before the app starts)."""
    app = platform.app
    settings = platform.settings
    codec = platform.codec
    web_app: web.Application = app.web.web_app
    web_app.middlewares.append(make_middleware(platform))
    max_body = int(settings.max_body_bytes)
    max_candidates = int(settings.max_candidates)
    forward_timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)

    sequences_table = platform.tables.sequences
    changelog_topic = sequences_table.changelog_topic.get_topic_name()

    def me() -> str:
        return str(app.conf.canonical_url)

    async def route_or_serve(request: web.Request, user_id: str, body: bytes | None,
                             serve: Callable[[], Awaitable[web.Response]]) -> web.Response:
        """Serve locally when this worker owns ``user_id``, else forward to the owner."""
        if not platform.is_ready():
            raise ApiError(503, "worker is recovering its state; retry shortly", headers={"Retry-After": "1"})
        owner = owner_of(user_id)
        if owner is None:
            try:
                response = await serve()
            except ApiError as exc:
                exc.headers[WORKER_HEADER] = me()
                raise
            response.headers[WORKER_HEADER] = me()
            return response
        if ROUTED_HEADER in request.headers:
            raise ApiError(503, "the user's partition is moving between workers (rebalance); retry shortly",
                           headers={"Retry-After": "1"})
        return await forward(request, owner, body)

    def owner_of(user_id: str) -> URL | None:
        """``None`` when this worker owns the user, else the owner's URL (503 while nobody owns it).

        The owning partition is ``streams.tables.owner_partition`` (murmur2, what ``table_route`` computes);
        the owner's URL comes from Faust's assignor metadata (``app.router.table_metadata``), which every
        worker receives at each rebalance.
        """
        partition = platform.sequences.owner(user_id.encode("utf-8", "surrogatepass"))
        if app.assignor.is_active(TP(changelog_topic, partition)):
            return None
        for url, topics in app.router.table_metadata(sequences_table.name).items():
            if partition in topics.get(changelog_topic, ()):
                owner = URL(url)
                # our own URL while not (yet) active here: assignment and metadata disagree mid-rebalance
                if _urlident(owner) != _urlident(app.conf.canonical_url):
                    return owner
        raise ApiError(503, "no worker owns this user's partition yet (rebalance); retry shortly",
                       headers={"Retry-After": "1"})

    async def forward(request: web.Request, owner: URL, body: bytes | None) -> web.Response:
        url = URL(str(owner).rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
        headers = {ROUTED_HEADER: me()}
        for name in ("Authorization", "Content-Type"):
            if name in request.headers:
                headers[name] = request.headers[name]
        try:
            async with app.http_client.request(request.method, url, data=body, headers=headers,
                                               timeout=forward_timeout) as resp:
                payload = await resp.read()
                out = web.Response(body=payload, status=resp.status, content_type=resp.content_type)
                for name in (WORKER_HEADER, "Retry-After", "WWW-Authenticate"):
                    if name in resp.headers:
                        out.headers[name] = resp.headers[name]
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forwarding %s %s to owner %s failed: %r", request.method, request.rel_url, owner, exc)
            raise ApiError(502, f"owner worker {owner} did not answer: {type(exc).__name__}",
                           headers={"Retry-After": "1"}) from None

    scoring = _ScoringQueue()

    @app.on_before_shutdown.connect
    async def _stop_scoring(app_: Any, **kwargs: Any) -> None:
        scoring.executor.shutdown(wait=False, cancel_futures=True)

    def model_version() -> str:
        """Version of the realtime model: the encoder's, else the scorer's, else "none"."""
        for name in ("encoder", "scorer"):
            model = getattr(platform, name, None)
            if model is not None:
                return str(model.model_version)
        return NO_MODEL_VERSION

    def local_state(user_id: str) -> tuple[list[Any], list[float] | None, dict[str, Any] | None]:
        """This worker's stored state of a user it owns: (sequence, realtime vector, daily record)."""
        seq = decode(platform.sequences.get_blob(user_id))
        key = user_id.encode("utf-8", "surrogatepass")
        realtime = getattr(platform.tables, "realtime", None)
        daily = getattr(platform.tables, "daily", None)
        rt = vector_from_bytes(realtime.get(key)) if realtime is not None else None
        rec = decode_daily(daily.get(key)) if daily is not None else None
        return seq, rt, rec

    @app.page("/v1/users/{user_id}/sequence", name="user_sequence")
    class SequenceView(View):
        """The user's stored recent actions, newest first."""

        async def get(self, request: Request, user_id: str) -> web.Response:
            check_user_id(user_id)

            async def serve() -> web.Response:
                seq = decode(platform.sequences.get_blob(user_id))
                return json_response({"user_id": user_id, "sequence_length": len(seq),
                                      "sequence": [codec.to_json(a) for a in seq]})

            return await route_or_serve(request, user_id, None, serve)  # type: ignore[arg-type]

    @app.page("/v1/users/{user_id}/features", name="user_features")
    class FeaturesView(View):
        """Realtime + daily vectors and sequence statistics; a user without history gets empty features."""

        async def get(self, request: Request, user_id: str) -> web.Response:
            check_user_id(user_id)

            async def serve() -> web.Response:
                seq, rt, rec = local_state(user_id)
                version = model_version()
                return json_response(assemble_features(user_id, seq, rt, rec, version, now_ms(), codec))

            return await route_or_serve(request, user_id, None, serve)  # type: ignore[arg-type]

    @app.page("/v1/users/{user_id}/score", name="user_score")
    class ScoreView(View):
        """Score candidate items for the user with TransAct (503 until a model is loaded)."""

        async def post(self, request: Request, user_id: str) -> web.Response:
            check_user_id(user_id)
            body = await read_body(request, max_body)  # type: ignore[arg-type]
            candidates = parse_candidates(body, max_candidates)

            async def serve() -> web.Response:
                scorer: Scorer | None = getattr(platform, "scorer", None)
                if scorer is None:
                    raise ApiError(503, "model not loaded")
                if scoring.pending >= MAX_PENDING_SCORES:
                    raise ApiError(503, f"scoring queue full ({MAX_PENDING_SCORES} requests waiting); retry",
                                   headers={"Retry-After": "1"})
                seq, _, daily = local_state(user_id)
                scoring.pending += 1
                try:
                    body = await asyncio.get_running_loop().run_in_executor(
                        scoring.executor, score_body, scorer, seq, candidates, now_ms(), daily)
                finally:
                    scoring.pending -= 1
                return web.Response(body=body, content_type="application/json")

            return await route_or_serve(request, user_id, body, serve)  # type: ignore[arg-type]

    @app.page("/metrics", name="metrics")
    class MetricsView(View):
        """Prometheus text exposition of the worker's registry; ``?name[]=<sample name>`` (repeatable) keeps
        only those metrics, as prometheus_client's own exporter does (a poll of a few counters then costs a
        fraction of the whole ~16 KB text)."""

        async def get(self, request: Request) -> web.Response:
            names = cast(Any, request.query).getall("name[]", [])  # aiohttp's MultiDict under Faust's Mapping type
            registry = platform.registry.restricted_registry(names) if names else platform.registry
            out = web.Response(body=generate_latest(registry))
            out.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return out

    @app.page("/livez", name="livez")
    class Livez(View):
        """Liveness: the process and its event loop answer."""

        async def get(self, request: Request) -> web.Response:
            return json_response({"status": "ok"})

    @app.page("/readyz", name="readyz")
    class Readyz(View):
        """Readiness: 200 once table recovery finished, 503 before."""

        async def get(self, request: Request) -> web.Response:
            if platform.is_ready():
                return json_response({"status": "ready"})
            return json_response({"status": "recovering"}, 503, {"Retry-After": "1"})

    log.info("feature API registered: auth %s, max_body_bytes=%d, max_candidates=%d",
             "on" if settings.api_token.get_secret_value() else "off", max_body, max_candidates)
