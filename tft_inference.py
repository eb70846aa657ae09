"""Inference daemon: fed live LINBORG metrics, serves quantile forecasts, risk and alerts.

    python tft_inference.py --daemon --port 8000 --model-dir ./models/latest/
    python main.py infer --daemon --model-dir models/latest
    python main.py infer --data training/server_metrics.parquet --out predictions.json   # once, offline

This module is the HTTP layer only: the app factory, its middleware, the routers and the CLI.
The request/response models are in ``api_models``, the forecasting in ``forecast_engine`` and
the daemon's state (ingest, cycle, published documents, counters) in ``daemon_state``;
Docs/ARCHITECTURE.md shows how a record becomes a forecast. Docs/API_REFERENCE.md has every
endpoint. In short:

* ``POST /feed`` validates each record against the contract, stores the valid ones durably
  (SQLite WAL, committed before the answer) in 5-minute buckets, and says exactly which
  records were stored, ignored as duplicates, or rejected and why.
* A bucket is complete when data for a later bucket arrives (or the wall clock is well past
  it). Then one batched forward pass forecasts every server with enough history, off the
  event loop; the result is published and serialised once, so every GET is served from memory.
* Servers without enough history report ``warming_up`` and how many buckets they still
  need. Without a loaded model the forecast endpoints answer 503 and say why: nothing
  here ever invents a forecast.
* Security: an API key (header ``X-API-Key`` or ``Authorization: Bearer``) guards writes,
  admin and, unless ``--open-reads``, reads (the WebSocket too, with the same check); keys
  compare in constant time; requests are rate-limited per client and size-limited; errors
  never carry tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import HTTPConnection

from alertmanager_push import redact_url, validate_url
from api_models import (
    AccuracyResponse,
    AlertHistoryResponse,
    AlertsResponse,
    AnomaliesResponse,
    DemoScenario,
    DemoScenarioRequest,
    ErrorResponse,
    FeedRequest,
    FeedResponse,
    FleetPredictions,
    HealthResponse,
    HistoryResponse,
    MaintenanceRequest,
    MaintenanceResponse,
    MaintenanceWindow,
    ServerFan,
    StatusResponse,
)
from cli_options import add_options, option, settings_from
from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import (
    ACCURACY_WINDOWS_HOURS,
    ALERT_HISTORY_DAYS,
    ALERTMANAGER_DOC,
    ANOMALY_HORIZONS,
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_REFERENCE_DOC,
    DAEMON,
    HORIZONS,
    LOG_FORMAT,
    OFFLINE_PREDICTIONS_FILE,
    PROJECT_VERSION,
    RETENTION_MIN_DAYS,
    RETRAIN_DOC,
    SERVER_NAME_MAX_LENGTH,
    SERVER_NAME_PATTERN,
    STEPS_PER_HOUR,
)
from contract import bucket_iso
from daemon_state import (
    Daemon,
    DaemonSettings,
    FeedRequestError,
    SubscriberLimit,
    accuracy_document,
    history_document,
    status_document,
)
from errors import ToolkitError, UsageError, exit_code_of, run_cli
from forecast_engine import ForecastEngine, fleet_document, forecast_file, round_fan
from live_anomaly import empty_document as no_anomalies
from metrics_store import StoreFullError
from otlp_receiver import CONTENT_TYPE as OTLP_CONTENT_TYPE
from otlp_receiver import OtlpError, response_body, status_body
from otlp_receiver import check_headers as otlp_headers
from remote_write import RemoteWriteError, check_headers
from retrain_scheduler import RetrainScheduleError
from sharding import open_alert_order
from tft_model import ModelLoadError

logger = logging.getLogger(__name__)
access_log = logging.getLogger(f"{__name__}.access")
ACCESS_LOGGED_PREFIXES = ("/predictions", "/alerts", "/history")  # codex: log every prediction request
_access_log_every = False  # --access-log FILE: every prediction request; else only errors and slow ones


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The daemon's one error body (:class:`api_models.ErrorResponse`)."""
    return JSONResponse(status_code=status, content={"error": error, "detail": detail}, headers=headers)


def _disk_full(route: str, exc: StoreFullError) -> JSONResponse:
    """507 with Retry-After: nothing of the batch was stored (the store's disk is full)."""
    logger.error("%s refused: %s", route, exc)
    return _error(507, "insufficient_storage", str(exc),
                  headers={"Retry-After": str(DAEMON.disk_full_retry_after_seconds)})


# ============================================================================ dependencies
# Dependencies and routes that only read memory are ``async def``: FastAPI runs a plain ``def`` in
# its thread pool, a hop per dependency per request that halved the reads served under load.
async def get_daemon(connection: HTTPConnection) -> Daemon:
    """The daemon behind this app (tests may override it with ``app.dependency_overrides``)."""
    return connection.app.state.daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]


def presented_key(connection: HTTPConnection) -> str | None:
    """The key a client sent in a header: ``X-API-Key`` or ``Authorization: Bearer``.

    Never from the URL: query strings end up in proxy and access logs. A browser's WebSocket,
    which cannot set headers, sends the key as its first message instead.
    """
    key = connection.headers.get("x-api-key")
    if key:
        return key
    auth = connection.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def key_scopes(connection: HTTPConnection, daemon: Daemon, key: str | None = None) -> frozenset[str]:
    """Scopes of the presented (or given) key; every scope when the daemon runs without keys."""
    return daemon.keys.scopes_of(key if key is not None else presented_key(connection))


def require_scope(scope: str) -> Callable[[Request, Daemon], Awaitable[None]]:
    """A dependency: 401 without a known key, 403 when the key lacks ``scope`` (saying which it has)."""

    async def check(request: Request, daemon: DaemonDep) -> None:
        if scope == "read" and daemon.settings.open_reads:
            return
        scopes = key_scopes(request, daemon)
        if scope in scopes:
            return
        if not scopes:
            raise HTTPException(401, {"error": "unauthorized",
                                      "detail": f"Send an API key with the '{scope}' scope in the X-API-Key header "
                                                f"(or Authorization: Bearer). See {API_REFERENCE_DOC} (Security)."})
        raise HTTPException(403, {"error": "forbidden",
                                  "detail": f"This key holds the scopes {sorted(scopes)}; {request.url.path} needs "
                                            f"'{scope}'. Use a key with that scope (key file line '{scope}=KEY'). "
                                            f"See {API_REFERENCE_DOC} (Security)."})

    check.__name__ = f"require_{scope}"
    check.required_scope = scope  # type: ignore[attr-defined]  # read by RequestGuard before any body
    return check


async def require_model(daemon: DaemonDep) -> ForecastEngine:
    """The loaded model's engine, or 503 saying why there is none."""
    if daemon.engine is None:
        raise HTTPException(503, {"error": "model_not_loaded",
                                  "detail": f"No forecasts: the model is not loaded ({daemon.model_error}). "
                                            f"Fix: train one (python main.py train) and restart with "
                                            f"--model-dir, or POST /admin/reload-model."})
    return daemon.engine


EngineDep = Annotated[ForecastEngine, Depends(require_model)]
READ = [Depends(require_scope("read"))]  # forecasts, status, metrics (open with --open-reads)
INGEST = [Depends(require_scope("ingest"))]  # feeding records (/feed, remote-write)
ADMIN = [Depends(require_scope("admin"))]  # /admin/*


# ============================================================================ middleware
Handler = Callable[[Request], Awaitable[Response]]


def client_of(connection: HTTPConnection, key: str | None = None) -> str:
    """Who a request is from (the access log, per-key limits): a key's hash, else the address."""
    key = key or presented_key(connection)
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return "addr:" + (connection.client.host if connection.client else "unknown")


def rate_allow(connection: HTTPConnection) -> tuple[bool, float]:
    """Take a token: a valid key from its key's bucket, anything else from its address's (far smaller) one.

    A wrong key is counted against the address, so trying many keys never buys many buckets.
    """
    daemon: Daemon = connection.app.state.daemon
    if presented_key(connection) and key_scopes(connection, daemon):
        return daemon.limiter.allow(client_of(connection))
    return daemon.anonymous_limiter.allow("addr:" + (connection.client.host if connection.client else "unknown"))


async def limit_rate(request: Request, call_next: Handler) -> Response:
    """429 with Retry-After when a client is over its token bucket (``/health`` is never limited: a probe
    must not be locked out by a flood from its address, and it costs no more than the refusal would)."""
    if request.url.path == "/health":
        return await call_next(request)
    allowed, wait = rate_allow(request)
    if not allowed:
        return _error(429, "rate_limited", f"Too many requests; retry in {wait:.1f}s.",
                      headers={"Retry-After": str(max(1, int(np.ceil(wait))))})
    return await call_next(request)


async def shield_errors(request: Request, call_next: Handler) -> Response:
    """An unexpected error is logged with its traceback and answered 500 without one."""
    try:
        return await call_next(request)
    except Exception:  # noqa: BLE001 - never leak a traceback to a client
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal_error", "The daemon hit an unexpected error; it was logged.")


def access_logged(status: int, seconds: float) -> bool:
    """Whether a prediction request gets an access line: every one with ``--access-log FILE``, else only an
    error (``DAEMON.access_log_min_status``) or a slow one (``DAEMON.access_log_slow_seconds``), so a dashboard's
    polling
    does not fill the daemon's own log."""
    return _access_log_every or status >= DAEMON.access_log_min_status or seconds >= DAEMON.access_log_slow_seconds


async def log_access(request: Request, call_next: Handler) -> Response:
    """Count every request (and 5xx), by route and status; an access line per prediction request as
    :func:`access_logged` says."""
    began = time.perf_counter()
    response = await call_next(request)
    daemon: Daemon = request.app.state.daemon
    daemon.counters.requests += 1
    if response.status_code >= 500:
        daemon.counters.request_errors += 1
    route = request.scope.get("route")
    daemon.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
    seconds = time.perf_counter() - began
    if request.url.path.startswith(ACCESS_LOGGED_PREFIXES) and access_logged(response.status_code, seconds):
        access_log.info(json.dumps({"event": "prediction_request", "path": request.url.path,
                                    "client": client_of(request), "status": response.status_code,
                                    "ms": round(seconds * 1000, 2)}))
    return response


# Outermost first: every request is counted and logged, even one refused for rate. (Size, key and
# concurrency are checked before any of these, by RequestGuard, at the ASGI level.)
MIDDLEWARE = (log_access, shield_errors, limit_rate)


async def request_concerns(request: Request, call_next: Handler) -> Response:
    """MIDDLEWARE as one middleware layer: each concern wraps the next, the route innermost.

    Four Starlette middleware layers would pass every response body through four streams; on the
    fleet document under 16 readers that halved the requests served (bench/bench_load.py).
    """
    handler = call_next
    for concern in reversed(MIDDLEWARE):
        handler = functools.partial(concern, call_next=handler)
    return await handler(request)


# ============================================================================ the ASGI guard
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestGuard:
    """Pure ASGI, outside everything else: what a client controls is bounded before FastAPI sees it.

    * at most ``DAEMON.max_concurrent_requests`` HTTP requests at once (503 with Retry-After past it, nothing read);
    * a request with a body is checked against its route's scope *before* a byte of the body is read (401 /
      403 at once: a keyless client cannot make the daemon buffer or parse anything);
    * the body is read here, whatever the framing (Content-Length or chunked), and refused with 413 the
      moment it passes ``DAEMON.max_body_bytes`` (408 when it trickles past ``DAEMON.request_body_timeout_seconds``);
      the
      route then reads it from memory.
    Refusals are counted (``tft_refused_total{reason}``) and answered in the daemon's one error shape.
    """

    def __init__(self, app: Any, max_concurrent: int = DAEMON.max_concurrent_requests,
                 max_body: int = DAEMON.max_body_bytes,
                 body_timeout: float = DAEMON.request_body_timeout_seconds) -> None:
        self.app, self.max_concurrent, self.max_body, self.body_timeout = app, max_concurrent, max_body, body_timeout
        self.in_flight = 0
        self._scopes: list[tuple[Any, str]] | None = None  # (route, scope it needs), built on first use

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        daemon: Daemon = scope["app"].state.daemon if "app" in scope else self.app.state.daemon
        if self.in_flight >= self.max_concurrent:
            await self._refuse(daemon, scope, receive, send, 503, "overloaded", "concurrent_requests",
                               f"The daemon is handling {self.max_concurrent} requests "
                               f"(DAEMON.max_concurrent_requests); "
                               f"retry shortly.", {"Retry-After": str(DAEMON.overload_retry_after_seconds)})
            return
        self.in_flight += 1
        try:
            if scope["method"] in _BODY_METHODS:
                refusal = self._auth_refusal(daemon, scope)
                if refusal is not None:
                    await self._refuse(daemon, scope, receive, send, *refusal)
                    return
                length = dict(scope["headers"]).get(b"content-length")
                if length is not None and (not length.isdigit() or int(length) > self.max_body):
                    await self._refuse(daemon, scope, receive, send, 413, "payload_too_large", "body_bytes",
                                       self._too_large())
                    return
                try:
                    body = await asyncio.wait_for(self._read(receive), self.body_timeout)
                except _BodyTooLarge:
                    await self._refuse(daemon, scope, receive, send, 413, "payload_too_large", "body_bytes",
                                       self._too_large())
                    return
                except TimeoutError:
                    await self._refuse(daemon, scope, receive, send, 408, "request_timeout", "body_timeout",
                                       f"The body did not arrive within {self.body_timeout:g} s.")
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _read(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise TimeoutError  # the client left; nothing is answered to it anyway
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> str:
        return f"Request bodies are limited to {self.max_body} bytes (DAEMON.max_body_bytes); split the batch. " \
               f"See {API_REFERENCE_DOC} (Limits)."

    def _auth_refusal(self, daemon: Daemon, scope: dict[str, Any]) -> tuple[int, str, str, str] | None:
        """(status, error, reason, detail) when the key may not use this route; None when it may (or the
        route is unknown: the router answers that)."""
        needed = self._scope_of(scope)
        if needed is None or (needed == "read" and daemon.settings.open_reads):
            return None
        connection = HTTPConnection(scope)
        scopes = key_scopes(connection, daemon)
        if needed in scopes:
            return None
        if not scopes:
            return (401, "unauthorized", "no_key", f"Send an API key with the '{needed}' scope in the X-API-Key "
                                                   f"header (or Authorization: Bearer). See {API_REFERENCE_DOC} "
                                                   f"(Security).")
        return (403, "forbidden", "wrong_scope", f"This key holds the scopes {sorted(scopes)}; {scope['path']} needs "
                                                 f"'{needed}'. See {API_REFERENCE_DOC} (Security).")

    def _scope_of(self, scope: dict[str, Any]) -> str | None:
        from starlette.routing import Match

        if self._scopes is None:  # the routers' own routes (an app lists included routers, not their routes)
            self._scopes = [(route, route_scope(route)) for router in ROUTERS for route in router.routes]
        for route, needed in self._scopes:
            if route.matches(scope)[0] == Match.FULL:
                return needed
        return None

    @staticmethod
    async def _refuse(daemon: Daemon, scope: dict[str, Any], receive: Any, send: Any, status: int, error: str,
                      reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        daemon.counters.requests += 1
        daemon.metrics.refuse(reason)
        daemon.metrics.requests.labels("guard", str(status)).inc()
        headers = {**(headers or {}), "Connection": "close"} if status in (408, 413) else headers
        await _error(status, error, detail, headers)(scope, receive, send)


class _BodyTooLarge(Exception):
    """Control flow inside the body-size guard (answered 413 there); plain, not a ToolkitError: it never reaches
    a person or an exit code."""


def _replay(body: bytes, receive: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A receive that yields the already-read body once, then waits for the client's disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def route_scope(route: Any) -> str | None:
    """The scope a route's dependencies require (``require_scope``), or None for an open route."""
    for dependency in getattr(route, "dependencies", []) or []:
        needed = getattr(dependency.dependency, "required_scope", None)
        if needed is not None:
            return needed
    return None



async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field."""
    errors = [{"field": ".".join(str(p) for p in e.get("loc", [])), "reason": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"error": "invalid_request", "detail": errors})


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """HTTPExceptions in the daemon's one error shape."""
    detail = exc.detail if isinstance(exc.detail, dict) else {"error": "error", "detail": str(exc.detail)}
    return JSONResponse(status_code=exc.status_code, content=detail, headers=getattr(exc, "headers", None))


async def read_body(request: Request) -> bytes:
    """Read the body, refusing more than DAEMON.max_body_bytes even without a Content-Length."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DAEMON.max_body_bytes:
            raise HTTPException(413, {"error": "payload_too_large",
                                      "detail": f"Request bodies are limited to {DAEMON.max_body_bytes} bytes."})
        chunks.append(chunk)
    return b"".join(chunks)


# ============================================================================ routers
status_router = APIRouter(tags=["status"])
feed_router = APIRouter(tags=["feed"])
remote_write_router = APIRouter(tags=["feed"])  # Prometheus remote-write in (remote_write.py)
otlp_router = APIRouter(tags=["feed"])  # OpenTelemetry OTLP/HTTP metrics in (otlp_receiver.py)
forecasts_router = APIRouter(tags=["forecasts"])
admin_router = APIRouter(tags=["admin"])
demo_router = APIRouter(tags=["demo"])
stream_router = APIRouter()
ERRORS = {401: {"model": ErrorResponse, "description": "missing or wrong API key"},
          429: {"model": ErrorResponse, "description": "rate limited; see Retry-After"}}
MODEL_ERRORS = {**ERRORS, 503: {"model": ErrorResponse, "description": "no model loaded (the reason is given)"}}


@status_router.get("/health", response_model=HealthResponse, response_model_exclude_none=True)
async def health(daemon: DaemonDep) -> HealthResponse:
    """Liveness; always open. "degraded" (with the reason) while forecast cycles keep failing."""
    problem = daemon.health_problem
    shard = daemon.settings.shard
    return HealthResponse(status="degraded" if problem else "ok", model_loaded=daemon.engine is not None,
                          reason=problem, shard=str(shard) if shard else None)


@status_router.get("/status", response_model=StatusResponse, dependencies=READ, responses=ERRORS)
def status(daemon: DaemonDep) -> StatusResponse:
    """Model, fleet and daemon counters."""
    return status_document(daemon)


@status_router.get("/metrics", dependencies=READ, response_class=PlainTextResponse, responses=ERRORS)
def metrics(daemon: DaemonDep) -> PlainTextResponse:
    """Prometheus exposition: daemon counters and forecast gauges."""
    return PlainTextResponse(daemon.metrics.render(), media_type="text/plain; version=0.0.4")


@feed_router.post("/feed", response_model=FeedResponse, dependencies=INGEST,
                  responses={**ERRORS,
                             400: {"model": ErrorResponse, "description": "the body is not JSON"},
                             413: {"model": ErrorResponse, "description": "body or batch too large"},
                             415: {"model": ErrorResponse, "description": "the body is not application/json"},
                             422: {"model": FeedResponse, "description": "some records rejected; the rest stored"},
                             507: {"model": ErrorResponse, "description": "the store's disk is full; retry later"}},
                  openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                      "schema": {"$ref": "#/components/schemas/FeedRequest"}}}}})
async def feed(request: Request, daemon: DaemonDep) -> JSONResponse:
    """Store a batch of LINBORG records; 200 if all stored, 422 naming each rejected record.

    Parsing and validating a large body takes milliseconds of CPU: it runs in a worker thread
    with the storing, so the event loop keeps answering (``/health`` included) meanwhile.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return _error(415, "unsupported_media_type", f"Send the batch as application/json (got "
                                                     f"'{media_type or 'no Content-Type'}'). See {API_REFERENCE_DOC}.")
    body = await read_body(request)
    grant = daemon.keys.grant(presented_key(request))
    try:
        result = await asyncio.to_thread(daemon.ingest.body, body, grant)
    except FeedRequestError as exc:
        return _error(exc.status, exc.error, exc.detail)
    except StoreFullError as exc:
        return _disk_full("feed", exc)
    return JSONResponse(status_code=422 if result.rejected else 200, content=result.model_dump())


@remote_write_router.post("/api/v1/write", status_code=204, dependencies=INGEST, response_class=Response,
                          responses={**ERRORS,
                                     400: {"model": ErrorResponse, "description": "not snappy, or not a WriteRequest"},
                                     413: {"model": ErrorResponse, "description": "body too large"},
                                     415: {"model": ErrorResponse, "description": "not remote-write 1.0 (Content-Type, "
                                                                                  "Content-Encoding or version)"},
                                     503: {"model": ErrorResponse, "description": "the remote-write mapping is broken"},
                                     507: {"model": ErrorResponse, "description": "the store's disk is full; retry"}})
async def remote_write(request: Request) -> Response:
    """Prometheus remote-write 1.0: the body is a snappy block-compressed ``prometheus.WriteRequest``
    (Content-Type application/x-protobuf, Content-Encoding snappy). node_exporter samples become LINBORG
    records, one per instance and scrape, stored like ``POST /feed``. 204 when taken; 4xx for a batch that can
    never be taken (Prometheus drops it), 5xx when a retry can help. See Docs/COLLECTING.md.

    (The body is not declared in the OpenAPI spec: no OpenAPI tool can build a protobuf body.)"""
    daemon: Daemon = request.app.state.daemon
    receiver = daemon.remote_write
    try:
        check_headers(request.headers.get("content-type"), request.headers.get("content-encoding"),
                      request.headers.get("x-prometheus-remote-write-version"))
        body = await read_body(request)
        grant = daemon.keys.grant(presented_key(request))
        await asyncio.to_thread(receiver.write, body, grant)  # snappy, protobuf and the records: off the event loop
    except RemoteWriteError as exc:
        return _error(exc.status, exc.error, exc.detail)
    except StoreFullError as exc:
        return _disk_full("remote-write", exc)
    return Response(status_code=204)


def _otlp_error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """An OTLP failure answer: a protobuf ``google.rpc.Status`` saying what, why and how to fix it."""
    return Response(status_body(status, detail), status_code=status, media_type=OTLP_CONTENT_TYPE, headers=headers)


@otlp_router.post("/v1/metrics", dependencies=INGEST, response_class=Response,
                  responses={**ERRORS,
                             200: {"description": "taken: an ExportMetricsServiceResponse (protobuf); its "
                                                  "partial_success says what was refused and why"},
                             400: {"description": "not gzip/deflate as declared, or not an "
                                                  "ExportMetricsServiceRequest (a google.rpc.Status protobuf)"},
                             413: {"model": ErrorResponse, "description": "body too large, or inflating past the cap"},
                             415: {"description": "not OTLP/HTTP protobuf (Content-Type or Content-Encoding)"},
                             503: {"description": "the OTLP mapping is broken, or the store's disk is full: "
                                                  "retry (Retry-After)"}})
async def otlp_metrics(request: Request) -> Response:
    """OpenTelemetry OTLP/HTTP metrics: the body is an ``ExportMetricsServiceRequest`` protobuf (Content-Type
    application/x-protobuf; Content-Encoding gzip, deflate or none), from a collector's otlphttp exporter or an
    SDK's OTLP/HTTP exporter. Host metrics (the collector's hostmetrics names, host.name naming the host) become
    LINBORG records, one per host and collection, stored like ``POST /feed``. See Docs/COLLECTING.md.

    (The body is not declared in the OpenAPI spec: no OpenAPI tool can build a protobuf body.)"""
    daemon: Daemon = request.app.state.daemon
    try:
        encoding = otlp_headers(request.headers.get("content-type"), request.headers.get("content-encoding"))
        body = await read_body(request)
        grant = daemon.keys.grant(presented_key(request))
        result = await asyncio.to_thread(daemon.otlp.export, body, encoding, grant)  # inflate, decode, records
    except OtlpError as exc:
        if exc.reason:
            daemon.metrics.refuse(exc.reason)
        return _otlp_error(exc.status, exc.detail)
    except StoreFullError as exc:  # 503, not 507: OTLP clients retry only 429, 502, 503 and 504
        logger.error("OTLP refused: %s", exc)
        return _otlp_error(503, str(exc), headers={"Retry-After": str(DAEMON.disk_full_retry_after_seconds)})
    return Response(response_body(result.rejected, result.message), media_type=OTLP_CONTENT_TYPE)


@forecasts_router.get("/predictions/current", response_model=FleetPredictions, dependencies=READ,
                      responses=MODEL_ERRORS)
async def predictions_current(daemon: DaemonDep, engine: EngineDep) -> Response:
    """The latest cycle: every tracked server, most at risk first."""
    if daemon.published.result is None:  # a model, but no cycle yet
        return Response(fleet_document(None, engine.model_version, engine.sources).model_dump_json(),
                        media_type="application/json")
    return Response(daemon.published.json, media_type="application/json")


@forecasts_router.get("/predictions/{server_name}", response_model=ServerFan, dependencies=READ,
                      responses={**MODEL_ERRORS, 404: {"model": ErrorResponse, "description": "no such server"}})
async def predictions_server(server_name: str, daemon: DaemonDep, engine: EngineDep) -> ServerFan:
    """One server with its full 96-step p10/p50/p90 fan."""
    cycle = daemon.published.result
    result = cycle.servers.get(server_name) if cycle else None
    if result is None:
        raise HTTPException(404, {"error": "unknown_server",
                                  "detail": f"No server '{server_name}' in the latest cycle."})
    steps, fan = [], {}
    if result.fan is not None:
        steps = [bucket_iso(cycle.origin + k) for k in range(1, engine.spec.prediction_length + 1)]
        fan = round_fan(result.fan)
    anomalies = daemon.accuracy.anomalies.rows(server=server_name)[0] if daemon.accuracy is not None else []
    return ServerFan.model_construct(server=result.prediction, steps=steps, sources=engine.sources, fan=fan,
                                     anomalies=anomalies)


@forecasts_router.get("/alerts/active", response_model=AlertsResponse, dependencies=READ, responses=MODEL_ERRORS)
async def alerts_active(daemon: DaemonDep, _: EngineDep) -> AlertsResponse:
    """Open alerts across the fleet (risk and model_degraded), critical and soonest first; each with its
    identity and start. Alerts about servers in maintenance are listed apart, as suppressed."""
    cycle = daemon.published.result
    firing, suppressed = daemon.alerts.active()
    for alerts in (firing, suppressed):
        alerts.sort(key=lambda a: open_alert_order(a.level, a.horizon, a.minutes_to_breach, a.server_name, a.metric))
    return AlertsResponse.model_construct(prediction_time=cycle.prediction_time if cycle else None, alerts=firing,
                                          suppressed=suppressed)


@forecasts_router.get("/alerts/history", response_model=AlertHistoryResponse, dependencies=READ, responses=ERRORS)
def alerts_history(daemon: DaemonDep, hours: float = 24.0, server: str | None = None,
                   kind: Literal["risk", "model_degraded"] | None = None) -> AlertHistoryResponse:
    """Alerts open at any time in the last ``hours`` of data time (resolved ones carry ends_at), newest
    first, at most ALERT_LIFECYCLE.history_max_rows; kept ALERT_HISTORY_DAYS after they end."""
    if not 0 < hours <= ALERT_HISTORY_DAYS * 24:
        raise HTTPException(422, {"error": "invalid_request",
                                  "detail": f"hours must be in (0, {ALERT_HISTORY_DAYS * 24}]."})
    newest = daemon.last_origin if daemon.last_origin is not None else daemon.fleet.newest_bucket
    if newest is None:
        return AlertHistoryResponse(since=None, alerts=[])
    first = newest - int(hours * STEPS_PER_HOUR) + 1
    return AlertHistoryResponse(since=bucket_iso(first), alerts=daemon.alerts.history(first, server, kind))


@forecasts_router.get("/accuracy", response_model=AccuracyResponse, dependencies=READ,
                      responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no such server"}})
def accuracy(daemon: DaemonDep, window: Literal[tuple(ACCURACY_WINDOWS_HOURS)] | None = None,  # type: ignore[valid-type]
             metric: str | None = None, horizon: Literal[tuple(HORIZONS)] | None = None,  # type: ignore[valid-type]
             profile: str | None = None, server: str | None = None) -> AccuracyResponse:
    """How the served forecasts fared once their target time arrived: q-risk, MAE, coverage and skill
    against persistence per metric x horizon over rolling windows, fleet-wide and per profile (or one
    server, 24 h), the live band multipliers, the worst servers and any model_degraded warnings."""
    if server is not None and server not in daemon.fleet.servers:
        raise HTTPException(404, {"error": "unknown_server", "detail": f"No server '{server}' is tracked."})
    return accuracy_document(daemon, window, metric, horizon, profile, server)


@forecasts_router.get("/anomalies", response_model=AnomaliesResponse, dependencies=READ,
                      responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no such server"}})
def anomalies(daemon: DaemonDep, server: str | None = None, metric: str | None = None,
              horizon: Literal[ANOMALY_HORIZONS] | None = None,  # type: ignore[valid-type]
              min_score: float = 0.0) -> AnomaliesResponse:
    """Anomalous now: per server x metric, how far the actual of the last complete bucket lies outside the
    calibrated band of the forecast made 30 min / 1 h before it (|actual - p50| / half-width; 1 = on the
    band's edge), highest first, at most ANOMALY.max_rows. A model surprise, not a tier breach: risk
    alerts look ahead at the tiers."""
    if not np.isfinite(min_score) or min_score < 0:
        raise HTTPException(422, {"error": "invalid_request", "detail": "min_score must be a finite number >= 0 "
                                  "(1 = on the band's edge). See Docs/API_REFERENCE.md (Anomalous now)."})
    if server is not None and server not in daemon.fleet.servers:
        raise HTTPException(404, {"error": "unknown_server", "detail": f"No server '{server}' is tracked."})
    live = daemon.accuracy
    if live is None:  # no model: nothing was forecast, so nothing is scored
        return no_anomalies()
    if metric is not None and metric not in live.metrics:
        raise HTTPException(422, {"error": "invalid_request", "detail": f"metric must be one of {live.metrics} (the "
                                  f"model's forecast metrics, as the API names them; CPU as cpu_used_pct)."})
    return live.anomalies.document(live.model_version, server, metric, horizon, min_score)


@forecasts_router.get("/history/{server_name}", response_model=HistoryResponse, dependencies=READ,
                      responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no such server"}})
def history(server_name: str, daemon: DaemonDep, hours: float = 24.0) -> HistoryResponse:
    """Recent actuals and the 30 min / 1 h / 8 h forecasts that were made for them."""
    window = daemon.fleet.servers.get(server_name)
    if window is None:
        raise HTTPException(404, {"error": "unknown_server", "detail": f"No server '{server_name}' is tracked."})
    if not 0 < hours <= DAEMON.history_max_hours:
        raise HTTPException(422, {"error": "invalid_request",
                                  "detail": f"hours must be in (0, {DAEMON.history_max_hours}]."})
    return history_document(daemon, server_name, window.profile, hours)


@admin_router.post("/admin/retrain", status_code=202, dependencies=ADMIN,
                   responses={**ERRORS, 409: {"model": ErrorResponse, "description": "a retrain is running, or the "
                                                                                   "daemon does not follow a models "
                                                                                   "directory's latest link"}})
async def retrain_now(daemon: DaemonDep) -> dict[str, Any]:
    """Start a retrain now (separate low-priority process); its progress shows in /status "retrain"."""
    scheduler = daemon.retrainer
    if scheduler is None:
        raise HTTPException(409, {"error": "no_models_dir", "detail": f"The daemon serves {daemon.settings.model_dir}, "
                                  f"not a models directory's 'latest' link, so a retrained model could not reach it. "
                                  f"Fix: start it with --model-dir <models-dir>/latest. See {RETRAIN_DOC}."})
    try:
        started = scheduler.start()
    except RetrainScheduleError as exc:  # a shard's retrain without the other shards' stores
        raise HTTPException(409, {"error": "partial_fleet", "detail": str(exc)}) from None
    if not started:
        raise HTTPException(409, {"error": "retrain_running", "detail": f"A retrain is already running (pid "
                                  f"{scheduler.pid}); see /status \"retrain\" and its log {scheduler.last_log}."})
    return scheduler.status()


@admin_router.post("/admin/reload-model", response_model=StatusResponse, dependencies=ADMIN,
                   responses={**MODEL_ERRORS,
                              409: {"model": ErrorResponse, "description": "the new model is damaged; the loaded "
                                                                           "one keeps serving"}})
async def reload_model(daemon: DaemonDep) -> StatusResponse:
    """Reload the model from the configured directory (never from a path given by a client)."""
    serving = daemon.engine is not None
    try:
        await asyncio.to_thread(daemon.load_model)
    except (ModelLoadError, FileNotFoundError) as exc:
        if serving:
            detail = (f"The model in {daemon.settings.model_dir} was not loaded, the previous one "
                      f"({daemon.model_version}) keeps serving: {exc}")
            raise HTTPException(409, {"error": "model_reload_failed", "detail": detail}) from None
        daemon.model_error = str(exc)
        raise HTTPException(503, {"error": "model_not_loaded", "detail": str(exc)}) from None
    return status_document(daemon)


@admin_router.put("/admin/maintenance/{server_name}", response_model=MaintenanceWindow, dependencies=ADMIN,
                  responses={**ERRORS, 409: {"model": ErrorResponse, "description": "too many open windows"}})
def set_maintenance(server_name: Annotated[str, FastAPIPath(max_length=SERVER_NAME_MAX_LENGTH,
                                                             pattern=SERVER_NAME_PATTERN)],
                    body: MaintenanceRequest, request: Request, daemon: DaemonDep) -> MaintenanceWindow:
    """Open (or replace) a maintenance window for one server, from now for ``hours``: its alerts are kept
    but suppressed (listed apart in /alerts/active, not pushed as firing) while it lasts. An operator's act:
    a record's ``state: maintenance`` no longer suppresses anything."""
    try:
        return daemon.maintenance.set(server_name, body.hours, body.reason, daemon.keys.grant(
            presented_key(request)).key_id)
    except ValueError as exc:
        raise HTTPException(409, {"error": "maintenance_refused", "detail": f"{exc}. See {API_REFERENCE_DOC} "
                                                                            f"(Maintenance)."}) from None


@admin_router.delete("/admin/maintenance/{server_name}", status_code=204, dependencies=ADMIN,
                     response_class=Response,
                     responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no open window"}})
def end_maintenance(server_name: str, daemon: DaemonDep) -> Response:
    """End a server's maintenance window now."""
    if not daemon.maintenance.end(server_name):
        raise HTTPException(404, {"error": "no_maintenance", "detail": f"'{server_name}' has no open maintenance "
                                                                       f"window."})
    return Response(status_code=204)


@status_router.get("/maintenance", response_model=MaintenanceResponse, dependencies=READ, responses=ERRORS)
def maintenance_windows(daemon: DaemonDep) -> MaintenanceResponse:
    """Open maintenance windows (set by an operator), soonest ending first."""
    return MaintenanceResponse(windows=daemon.maintenance.windows())


@demo_router.get("/demo-scenario", response_model=DemoScenario, dependencies=READ, responses=ERRORS)
def get_demo_scenario(daemon: DaemonDep) -> DemoScenario:
    """Scenario the live demo stream should play (the stream polls this)."""
    return daemon.demo


@demo_router.post("/admin/demo-scenario", response_model=DemoScenario, dependencies=ADMIN, responses=ERRORS)
def set_demo_scenario(request: DemoScenarioRequest, daemon: DaemonDep) -> DemoScenario:
    """Switch the live demo stream (dashboard buttons Healthy / Degrading / Critical)."""
    daemon.demo = DemoScenario(scenario=request.scenario,
                               changed_at=datetime.now(UTC).isoformat(timespec="seconds"))
    logger.info("demo scenario set to %s", request.scenario)
    return daemon.demo


async def websocket_key(websocket: WebSocket) -> str | None:
    """The WebSocket's key: from a header, else from its first message ``{"api_key": "..."}``.

    A browser cannot set headers on a WebSocket, so it sends the key as its first text frame
    (within ``DAEMON.ws_auth_timeout_seconds``). None when neither came.
    """
    key = presented_key(websocket)
    if key:
        return key
    try:
        first = await asyncio.wait_for(websocket.receive(), timeout=DAEMON.ws_auth_timeout_seconds)
    except TimeoutError:
        return None
    try:
        message = json.loads(first.get("text") or "null")
    except json.JSONDecodeError:
        return None
    key = message.get("api_key") if isinstance(message, dict) else None
    return key if isinstance(key, str) else None


@stream_router.websocket("/ws/predictions")
async def ws_predictions(websocket: WebSocket, daemon: DaemonDep) -> None:
    """Pushes every new forecast cycle (the /predictions/current document).

    A read key, in a header or as the first message ``{"api_key": "..."}`` (never in the URL). A
    refused client is accepted and closed at once with code 4401 and the reason, so it can tell
    "wrong key" from "daemon down".
    """
    await websocket.accept()
    allowed, wait = rate_allow(websocket)  # handshakes are rate-limited like requests
    key = presented_key(websocket)
    if not allowed:
        await websocket.close(code=DAEMON.ws_rate_limited_code, reason=f"rate limited: retry in {wait:.1f}s")
        return
    if not daemon.settings.open_reads and daemon.keys.enabled:
        if "api_key" in websocket.query_params:
            await websocket.close(code=DAEMON.ws_unauthorized_code,
                                  reason="keys in URLs are not accepted (they end up in "
                                                                    "logs): send X-API-Key or a first message "
                                                                    '{"api_key": ...}')
            return
        key = await websocket_key(websocket)
        if "read" not in key_scopes(websocket, daemon, key or ""):
            await websocket.close(code=DAEMON.ws_unauthorized_code,
                                  reason="unauthorized: send a read key as X-API-Key or "
                                                                    'as the first message {"api_key": ...}')
            return
    owner = client_of(websocket, key)
    try:
        member = daemon.subscribers.add(websocket, owner)
    except SubscriberLimit as exc:
        await websocket.close(code=DAEMON.ws_try_again_code, reason=str(exc)[:120])  # a close reason fits 123 bytes
        return
    if daemon.published.result is not None:
        member.offer(daemon.published.json.decode())  # sent by the pump, with its timeout, like every later one
    pump = asyncio.create_task(daemon.subscribers.pump(member))
    listen = asyncio.create_task(_listen(websocket))
    try:
        done, _ = await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        daemon.subscribers.discard(websocket)
        for task in (pump, listen):
            task.cancel()
        await asyncio.gather(pump, listen, return_exceptions=True)
    if pump in done:  # the socket did not drain (or failed): close it without waiting on a client that never reads
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code=DAEMON.ws_policy_code, reason="too slow: documents not taken"),
                                   DAEMON.ws_close_timeout_seconds)


async def _listen(websocket: WebSocket) -> None:
    """Read what the client sends until it leaves: text frames are keep-alives, a binary frame closes it."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.close(code=DAEMON.ws_unsupported_data_code, reason="binary frames are not accepted")
                return
    except WebSocketDisconnect:
        return


# ============================================================================ the app
ROUTERS = (status_router, feed_router, remote_write_router, otlp_router, forecasts_router, admin_router, demo_router,
           stream_router)


def create_app(settings: DaemonSettings) -> FastAPI:
    """Build the FastAPI application around a :class:`Daemon` (raises ModelLoadError as the daemon does)."""
    daemon = Daemon(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI lifespan protocol
        task = asyncio.create_task(daemon.forecast_loop())
        try:
            yield
        finally:
            task.cancel()
            daemon.close()

    app = FastAPI(title="Fleet trouble forecaster", version=PROJECT_VERSION, lifespan=lifespan,
                  description=f"Live LINBORG feed in; decoded p10/p50/p90 forecasts, risk scores and alerts out. "
                              f"See {API_REFERENCE_DOC}.",
                  docs_url=None, redoc_url=None, openapi_url=None)  # served below, behind a read key
    app.state.daemon = daemon
    app.middleware("http")(request_concerns)
    app.add_middleware(RequestGuard)  # added last: outermost, before any body is read
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        """The spec, with the feed body's models registered (the route reads its body itself)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body = FeedRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["FeedRequest"] = body
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=READ)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=READ)
    async def swagger_ui() -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API")

    return app


# ============================================================================ CLI
@dataclass
class InferMode:
    """``main.py infer``: serve (``--daemon``, :class:`daemon_state.DaemonSettings`) or forecast a file once."""

    daemon: bool = option(False, "run the HTTP daemon")
    data: Path | None = option(None, "offline: forecast this Parquet file once", parse=Path)
    out: Path = option(OFFLINE_PREDICTIONS_FILE, "offline: where to write", parse=Path)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the daemon / offline forecaster (shared with ``main.py infer``)."""
    parser = parser or argparse.ArgumentParser(description="Serve fleet forecasts (daemon) or forecast a file once.")
    add_options(parser, InferMode)
    return add_options(parser, DaemonSettings)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the daemon or the offline forecast; 0 when done; raises otherwise (``errors.run_cli``: exit 2 for a
    flag, model or data that cannot be used, 3 for a store that cannot be)."""
    quiet_library_noise()
    if not args.daemon:
        if args.data is None:
            raise UsageError("Give --daemon to serve, or --data FILE [--out predictions.json] to forecast once.")
        document = forecast_file(args.model_dir, args.data)
        atomic_write_json(args.out, document)
        print(f"Forecast {len(document['servers'])} servers from {document['prediction_time']} -> {args.out}")
        return 0
    if args.retention_days < RETENTION_MIN_DAYS:
        raise UsageError(f"--retention-days {args.retention_days} is below the minimum of {RETENTION_MIN_DAYS}",
                         f"the feed takes records up to {RETENTION_MIN_DAYS} days late, and a shorter retention would "
                         f"delete them on the next trim", f"use --retention-days {RETENTION_MIN_DAYS} or more",
                         f"{API_REFERENCE_DOC} (Storage and retention)")
    alertmanager_urls = [validate_url(url) for url in args.alertmanager_urls + alertmanager_url_file(
        args.alertmanager_url_file)]
    for url in args.alertmanager_urls:
        if urlsplit(url).password:
            raise UsageError(f"--alertmanager-url {redact_url(url)!r} carries a password",
                             "a command line shows in every user's process list",
                             "put the URL in a file only the daemon's user can read (chmod 600) and pass "
                             "--alertmanager-url-file", ALERTMANAGER_DOC)
    dashboard_url = validate_url(args.dashboard_url, "--dashboard-url")
    key_file = args.api_key_file or (Path(os.environ[API_KEY_FILE_ENV]) if os.environ.get(API_KEY_FILE_ENV) else None)
    api_key = None if key_file is not None else os.environ.get(API_KEY_ENV) or None
    if key_file is None and api_key is None:
        api_key = secrets.token_urlsafe(24)
        generated = Path(f"{args.store_path}{DAEMON.generated_key_suffix}")
        write_private(generated, api_key + "\n")
        logger.warning("No API key configured (--api-key-file, $%s or $%s): generated one with every scope for this "
                       "run and wrote it to %s (mode 0600); the key itself is never logged", API_KEY_FILE_ENV,
                       API_KEY_ENV, generated)
    settings = settings_from(DaemonSettings, args, api_key=api_key, api_key_file=key_file,
                             alertmanager_urls=alertmanager_urls, dashboard_url=dashboard_url)
    try:
        app = create_app(settings)
    except (ToolkitError, OSError, ValueError) as exc:  # the model, the store, the key file: said, with the fix
        raise ToolkitError(f"Refusing to start: {exc}", exit_code=exit_code_of(exc)) from exc
    import uvicorn

    if settings.access_log is not None:
        route_access_log(settings.access_log)
    logger.info("serving on http://%s:%d (docs at /docs)", settings.host, settings.port)
    # Proxy headers only from configured proxies: otherwise a client could pick its own address for the
    # per-address limits by sending X-Forwarded-For (uvicorn trusts 127.0.0.1 by default).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=",".join(settings.trusted_proxies) or None)
    return 0


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600 from the start, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def alertmanager_url_file(path: Path | None) -> list[str]:
    """The URLs of ``--alertmanager-url-file`` (one per line, # comments); a UsageError (a ValueError) when it is
    unreadable or readable by others than its owner (it holds passwords)."""
    if path is None:
        return []
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--alertmanager-url-file {path}: {exc}", None, None, ALERTMANAGER_DOC) from None
    if mode & 0o077:
        raise UsageError(f"--alertmanager-url-file {path} is readable by others (mode {mode & 0o777:o})",
                         "it holds Alertmanager passwords", f"chmod 600 {path}", ALERTMANAGER_DOC)
    urls = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not urls:
        raise UsageError(f"--alertmanager-url-file {path} holds no URL", None, None, ALERTMANAGER_DOC)
    return urls


def route_access_log(path: Path) -> None:
    """Send the access log (``tft_inference.access``) to ``path`` only, so the daemon's own log stays readable,
    with a line for every prediction request (without it only errors and slow requests are logged)."""
    global _access_log_every
    _access_log_every = True
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    access_log.addHandler(handler)
    access_log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    return run_cli(run_from_args, build_arg_parser().parse_args(argv), "infer failed")


if __name__ == "__main__":
    sys.exit(main())
