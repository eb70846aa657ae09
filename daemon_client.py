"""One client for the inference daemon's HTTP API (Docs/API_REFERENCE.md).

Everything that talks to a running daemon goes through :class:`DaemonClient`: the buffered feed
of the host collector and the Prometheus adapter (feed_client.py), the live demo stream, the
dashboard and ``main.py demo``. So the base URL, the ``X-API-Key`` header, the timeout and the
retry policy live in one place::

    client = DaemonClient("http://127.0.0.1:8000", api_key)
    client.feed(records)               # FeedResult: stored / duplicates / rejected, per record index
    client.predictions_current()       # every tracked server, most at risk first
    client.server_fan("ppdb007")       # one server's 96-step p10/p50/p90 fan
    client.accuracy(window="24h")      # how past forecasts fared: coverage, skill, worst servers
    client.anomalies(min_score=1.0)    # what lies outside the band forecast for now 30 min / 1 h ago

A request that fails for a passing reason (the daemon is restarting, the network dropped, it is
rate limited or failed unexpectedly) is retried with a doubling back-off (:class:`RetryPolicy`,
numbers in config.py); anything else raises :class:`DaemonError` at once, whose message says what
went wrong, why it matters, how to fix it and which doc to read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import httpx

from config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_REFERENCE_DOC,
    CLIENT,
    DAEMON_WAIT_POLL_SECONDS,
    DEFAULT_DAEMON_URL,
)
from errors import EXIT_RUNTIME, ToolkitError

__all__ = ["API_KEY_HEADER", "NO_RETRY", "DaemonClient", "DaemonError", "FeedResult", "RetryPolicy"]

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
_START_DAEMON = "start it (python main.py infer --daemon) or fix the daemon URL"


# ============================================================================ policy and errors
@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long, a request that failed for a passing reason is tried again.

    ``attempts`` counts every try, the first included; ``None`` tries until it succeeds (a stream
    that must outlive a daemon restart). The wait after the k-th failure in a row is
    ``base_seconds * 2**(k-1)``, at most ``max_seconds``.
    """

    attempts: int | None = CLIENT.retry_attempts
    base_seconds: float = CLIENT.retry_base_seconds
    max_seconds: float = CLIENT.retry_max_seconds

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) failures in a row."""
        return min(self.max_seconds, self.base_seconds * 2 ** (failures - 1))

    def gives_up_after(self, failures: int) -> bool:
        """True when ``failures`` failed tries use up the policy."""
        return self.attempts is not None and failures >= self.attempts


NO_RETRY = RetryPolicy(attempts=1)


class DaemonError(ToolkitError, RuntimeError):
    """The daemon did not answer as asked.

    ``summary`` is the one-line what (``"daemon unreachable at ..."``, ``"401: <daemon's detail>"``);
    ``str()`` adds why it matters, how to fix it and which doc. ``status`` is the HTTP status (None
    when no answer came), ``error`` the daemon's error code (``"unauthorized"``, ``"model_not_loaded"``,
    ...), ``detail`` the daemon's own explanation.
    """

    exit_code = EXIT_RUNTIME  # the daemon unreachable or refusing: the environment, not the command line

    def __init__(self, summary: str, *, why: str, fix: str, doc: str = API_REFERENCE_DOC, status: int | None = None,
                 error: str | None = None, detail: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(summary, why, fix, doc)
        self.summary = summary
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed: no answer at all, or a status in CLIENT.retry_statuses."""
        return self.status is None or self.status in CLIENT.retry_statuses


@dataclass
class FeedResult:
    """The daemon's answer to ``POST /feed``: record indexes of the batch, sorted by outcome."""

    received: int
    stored: list[int]
    duplicates: list[int]
    rejected: list[dict[str, Any]]  # {"index", "field", "reason"}: can never succeed as sent
    new_servers: list[str] = field(default_factory=list)


# ============================================================================ the client
class DaemonClient:
    """Typed access to one inference daemon: base URL, API key, timeout and retries in one place.

    ``http`` lets a caller supply its own ``httpx.Client`` (a test transport, a proxy set-up);
    requests always use absolute URLs, so it needs no base URL of its own. Safe to share between
    threads (the dashboard shares one per URL and key).
    """

    def __init__(self, base_url: str = DEFAULT_DAEMON_URL, api_key: str | None = None, *,
                 timeout: float = CLIENT.timeout_seconds, retry: RetryPolicy | None = None,
                 http: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._sleep = sleep

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key."""
        return bool(self._headers)

    def __repr__(self) -> str:
        return f"DaemonClient({self.base_url!r}, api key {'set' if self.has_api_key else 'not set'})"

    def close(self) -> None:
        """Close the connection pool (not one the caller supplied)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one request, with retries
    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                expect: tuple[int, ...] = (200,), retry: RetryPolicy | None = None) -> httpx.Response:
        """Send one request; the response when its status is in ``expect``, else :class:`DaemonError`.

        Transient failures (no answer, CLIENT.retry_statuses) are retried by ``retry`` (default:
        the client's policy), each with a WARNING; a 429's ``Retry-After`` is waited out.
        """
        policy = retry or self.retry
        failures = 0
        while True:
            try:
                response = self._http.request(method, self.base_url + path, json=json, params=params,
                                              headers=self._headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                error = self._no_answer(exc)
                error.__cause__ = exc
            else:
                if response.status_code in expect:
                    return response
                error = self._refused(response, path)
            failures += 1
            if not error.transient or policy.gives_up_after(failures):
                raise error
            delay = policy.delay(failures)
            if error.retry_after is not None:
                delay = min(policy.max_seconds, max(delay, error.retry_after))
            logger.warning("%s; try %d in %.1f s", error.summary, failures + 1, delay)
            self._sleep(delay)

    def get_json(self, path: str, params: dict[str, Any] | None = None, *,
                 retry: RetryPolicy | None = None) -> dict[str, Any]:
        """GET a JSON document."""
        return self._json(self.request("GET", path, params=params, retry=retry), path)

    def post_json(self, path: str, payload: Any, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """POST a JSON body; the JSON answer."""
        return self._json(self.request("POST", path, json=payload, retry=retry), path)

    # ------------------------------------------------------------------ the API, typed
    def health(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /health`` (always open): ``{"status": "ok", "model_loaded": bool}``."""
        return self.get_json("/health", retry=retry)

    def status(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /status``: model, fleet and daemon counters."""
        return self.get_json("/status", retry=retry)

    def feed(self, records: list[dict[str, Any]], *, retry: RetryPolicy | None = None,
             instances: dict[str, str] | None = None) -> FeedResult:
        """``POST /feed``: store LINBORG records. A partial rejection (HTTP 422) is an answer, not an error.

        ``instances`` (server -> Prometheus instance, e.g. "db1:9100") labels their series on /metrics and
        their alerts; only the servers of this batch are sent.
        """
        body: dict[str, Any] = {"records": records}
        if instances:
            names = {r.get("server_name") for r in records}
            body["instances"] = {s: i for s, i in instances.items() if s in names}
        response = self.request("POST", "/feed", json=body, expect=(200, 422), retry=retry)
        body = self._json(response, "/feed")
        try:
            return FeedResult(received=int(body.get("received", len(records))), stored=list(body["stored"]),
                              duplicates=list(body["duplicates"]), rejected=list(body["rejected"]),
                              new_servers=list(body.get("new_servers") or []))
        except (KeyError, TypeError, ValueError) as exc:
            error, detail = _error_fields(body)
            raise DaemonError(
                f"HTTP {response.status_code} without a feed answer: {_clip(detail or response.text)}",
                why="the batch as a whole was refused, so none of its records is stored",
                fix='send {"records": [...]} of contract records, each within the limits of POST /feed',
                doc=f"{API_REFERENCE_DOC} (Feeding metrics)", status=response.status_code, error=error,
                detail=detail) from exc

    def predictions_current(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /predictions/current``: the latest cycle, every tracked server, most at risk first."""
        return self.get_json("/predictions/current", retry=retry)

    def server_fan(self, server_name: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /predictions/{server}``: one server with its full p10/p50/p90 fan (``server``, ``steps``, ``fan``)."""
        return self.get_json(f"/predictions/{quote(server_name, safe='')}", retry=retry)

    def history(self, server_name: str, hours: float, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /history/{server}?hours=``: recent actuals and the forecasts that were made for them."""
        return self.get_json(f"/history/{quote(server_name, safe='')}", {"hours": hours}, retry=retry)

    def alerts(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /alerts/active``: warning and critical alerts, critical and soonest first."""
        return self.get_json("/alerts/active", retry=retry)

    def accuracy(self, window: str | None = None, metric: str | None = None, horizon: str | None = None,
                 profile: str | None = None, server: str | None = None, *,
                 retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /accuracy``: how the served forecasts fared once their target time arrived.

        Rows of q-risk, MAE, p10-p90 coverage (served and the model's own band) and skill against
        persistence per metric x horizon, fleet-wide and per profile over the rolling windows
        (``window``: "24h", "7d"), or one ``server`` (24 h); the live band multipliers, the worst
        servers and any ``model_degraded`` warnings. Each argument left ``None`` does not filter.
        """
        params = {"window": window, "metric": metric, "horizon": horizon, "profile": profile, "server": server}
        return self.get_json("/accuracy", {k: v for k, v in params.items() if v is not None} or None, retry=retry)

    def anomalies(self, min_score: float | None = None, server: str | None = None, metric: str | None = None,
                  horizon: str | None = None, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /anomalies``: how far each server's metrics lie now outside the bands forecast 30 min / 1 h ago.

        Rows of ``score`` = |actual - p50| / half-width (1 = on the band's edge), highest first, with the
        actual and the band; ``min_score`` (e.g. 1.0: on the edge or outside), ``server``, ``metric`` and
        ``horizon`` ("30min", "1hr") filter, each left ``None`` does not.
        """
        params = {"min_score": min_score, "server": server, "metric": metric, "horizon": horizon}
        return self.get_json("/anomalies", {k: v for k, v in params.items() if v is not None} or None, retry=retry)

    def demo_scenario(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /demo-scenario``: what the live demo stream should play."""
        return self.get_json("/demo-scenario", retry=retry)

    def set_demo_scenario(self, scenario: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``POST /admin/demo-scenario``: switch the live demo stream (needs the API key)."""
        return self.post_json("/admin/demo-scenario", {"scenario": scenario}, retry=retry)

    def wait_until_healthy(self, timeout: float, *, still_starting: Callable[[], bool] | None = None,
                           poll_seconds: float = DAEMON_WAIT_POLL_SECONDS) -> dict[str, Any]:
        """Ask ``/health`` until the daemon answers (at most ``timeout`` seconds); its answer.

        ``still_starting`` is asked between tries: when it says False (the daemon's process exited)
        waiting stops at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health(retry=NO_RETRY)
            except DaemonError as exc:
                if not exc.transient:
                    raise
                if still_starting is not None and not still_starting():
                    raise DaemonError(f"the daemon at {self.base_url} stopped while starting",
                                      why="nothing can be fed or read without it",
                                      fix="read the daemon's log above: it says why it exited") from exc
                if time.monotonic() + poll_seconds > deadline:
                    raise DaemonError(f"daemon at {self.base_url} did not answer within {timeout:.0f} s "
                                      f"({exc.summary})", why="nothing can be fed or read without it",
                                      fix=_START_DAEMON) from exc
            self._sleep(poll_seconds)

    # ------------------------------------------------------------------ answers into errors
    def _no_answer(self, exc: httpx.HTTPError) -> DaemonError:
        if isinstance(exc, httpx.TimeoutException):
            return DaemonError(f"daemon at {self.base_url} did not answer within {self.timeout:.0f} s "
                               f"({type(exc).__name__})", why="the request may or may not have been carried out",
                               fix="check that the daemon is not overloaded (GET /status), or raise the timeout")
        return DaemonError(f"daemon unreachable at {self.base_url} ({type(exc).__name__}: {exc})",
                           why="nothing can be fed or read until it answers", fix=_START_DAEMON)

    def _refused(self, response: httpx.Response, path: str) -> DaemonError:
        status = response.status_code
        try:
            error, detail = _error_fields(response.json())
        except ValueError:
            error, detail = None, _clip(response.text)
        summary = f"{status}: {detail}"
        if status in (401, 403):
            return DaemonError(summary, why="the daemon serves and accepts data only with its API key",
                               fix=f"give the daemon's key (--api-key, ${API_KEY_FILE_ENV} or ${API_KEY_ENV})",
                               doc=f"{API_REFERENCE_DOC} (Security)", status=status, error=error, detail=detail)
        if status == 429:
            raw = response.headers.get("Retry-After", "")
            return DaemonError(summary, why="the daemon limits requests per client",
                               fix="send fewer, larger requests, or start the daemon with a higher --rate-per-minute",
                               doc=f"{API_REFERENCE_DOC} (Security)", status=status, error=error, detail=detail,
                               retry_after=float(raw) if raw.replace(".", "", 1).isdigit() else None)
        if error == "model_not_loaded":
            return DaemonError(summary, why="forecasts come from the model only; there is no guess without it",
                               fix="the daemon's detail above says how", status=status, error=error, detail=detail)
        if status == 404:
            return DaemonError(summary, why=f"{path} names something the daemon does not know",
                               fix="check the server name (GET /predictions/current lists every tracked server)",
                               status=status, error=error, detail=detail)
        return DaemonError(summary, why=f"the daemon refused {path}",
                           fix="the daemon's detail above says why; its log has more",
                           status=status, error=error, detail=detail)

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            return response.json()
        except ValueError:
            raise DaemonError(f"{self.base_url}{path} answered HTTP {response.status_code} without JSON: "
                              f"{_clip(response.text)}", why="this is not the inference daemon's answer",
                              fix=f"point the client at the daemon (default {DEFAULT_DAEMON_URL}), not the "
                                  f"dashboard or a proxy's error page", status=response.status_code) from None


def _error_fields(body: Any) -> tuple[str | None, str | None]:
    """(error code, detail) of a daemon error body ``{"error": ..., "detail": ...}``."""
    if not isinstance(body, dict):
        return None, _clip(str(body))
    detail = body.get("detail")
    return body.get("error"), None if detail is None else _clip(str(detail))


def _clip(text: str) -> str:
    return text[:CLIENT.error_detail_chars]
