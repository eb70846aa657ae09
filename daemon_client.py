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

Several daemons that are shards of one fleet (``--shard K/N`` each) are read as one by
:class:`FleetClient`: each read goes to every shard at once and the answers are merged into the
document one daemon would send, plus a ``shards`` list saying how each shard answered::

    fleet = FleetClient(["http://10.0.0.1:8000", "http://10.0.0.2:8000"], api_key)
    fleet.predictions_current()        # every shard's servers; "duplicates": a server on two shards
    fleet.alerts()                     # every shard's alerts, in the daemon's order
    fleet.accuracy()                   # per shard: {"shards": [{..., "accuracy": <its document>}]}

A request that fails for a passing reason (the daemon is restarting, the network dropped, it is
rate limited or failed unexpectedly) is retried with a doubling back-off (:class:`RetryPolicy`,
numbers in config.py); anything else raises :class:`DaemonError` at once, whose message says what
went wrong, why it matters, how to fix it and which doc to read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
from sharding import open_alert_order

__all__ = ["API_KEY_HEADER", "NO_RETRY", "DaemonClient", "DaemonError", "FeedResult", "FleetClient", "FleetError",
           "RetryPolicy", "alert_order"]


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


# ============================================================================ many shards, one fleet
def alert_order(alert: dict[str, Any]) -> tuple[Any, ...]:
    """The order one daemon lists ``/alerts/active`` in (tft_inference.alerts_active): critical first, then
    by horizon, the soonest breach, server and metric. The fleet view sorts every shard's alerts by it."""
    return open_alert_order(alert.get("level"), alert.get("horizon"), alert.get("minutes_to_breach"),
                            alert.get("server_name"), alert.get("metric"))


def _risk_order(server: dict[str, Any]) -> tuple[float, str]:
    """The order of /predictions/current (forecast_engine.fleet_document): most at risk first, then by name."""
    risk = server.get("risk_score")
    return -(risk if risk is not None else -1.0), server["server_name"]


@dataclass
class _ShardAnswer:
    """One shard's answer to one read: its document, or the error it gave instead."""

    client: DaemonClient
    label: str | None  # "K/N" as the daemon last reported it in /status; None: not sharded, or not known yet
    data: Any = None
    error: DaemonError | None = None

    def row(self) -> dict[str, Any]:
        """How this shard answered, as plain values (the dashboard's cache stores them serialised)."""
        return {"url": self.client.base_url, "shard": self.label, "ok": self.error is None,
                "error": self.error.summary if self.error else None,
                "http_status": self.error.status if self.error else None, "line": self.line()}

    def where(self) -> str:
        """'shard 1/3 at http://...' (the label '?' until the daemon has said which slice it is)."""
        return f"shard {self.label or '?'} at {self.client.base_url}"

    def line(self) -> str:
        """'shard 1/3 at http://... unreachable: <why>' / '... refused: 401: ...' / '... answered'."""
        if self.error is None:
            return f"{self.where()} answered"
        if self.error.status is not None:
            return f"{self.where()} refused: {self.error.summary}"
        url, why = self.client.base_url, self.error.summary  # the client's words name the URL: said once here
        why = why.replace(f"daemon unreachable at {url} ", "").replace(f"daemon at {url} ", "")
        return f"{self.where()} unreachable: {why.removeprefix('(').removesuffix(')')}"


class FleetError(DaemonError):
    """No shard of the fleet answered a read; ``shards`` holds each shard's row (url, shard, error, line)."""

    def __init__(self, answers: list[_ShardAnswer], what: str) -> None:
        lines = [a.line() for a in answers]
        transient = all(a.error is not None and a.error.transient for a in answers)
        first = answers[0].error
        super().__init__(f"no shard of the fleet answered {what}: " + "; ".join(lines),
                         why="nothing of the fleet can be shown without at least one shard",
                         fix="start the shards' daemons (python main.py infer --daemon --shard K/N) or fix their URLs",
                         status=None if transient or first is None else first.status,
                         error=None if first is None else first.error)
        self.shards = [a.row() for a in answers]


class FleetClient:
    """Several daemons that are shards of one fleet (each ``main.py infer --daemon --shard K/N``), read as one.

    Every read goes to all shards at once (one thread each, so a read takes as long as the slowest shard,
    at most the per-request ``timeout``) and the answers are merged into the document one daemon would
    send, with ``shards``: per shard, its URL, its ``K/N``, whether it answered and the line that says how
    ("shard 1/3 at http://... unreachable: <why>"). A shard that is down leaves its servers out and says
    so there; only when no shard answers does a read raise :class:`FleetError`.

    Merging: servers are the union (a server two shards both report is kept once, from the first URL, and
    listed in ``duplicates``: a misrouted server); alerts and anomalies are concatenated and sorted as one
    daemon sorts them; counts are summed; times are the stalest shard's. Accuracy is **not** merged: the
    shards' q-risks are ratios of sums the documents do not carry (and each shard calibrates its own
    bands), so :meth:`accuracy` returns each shard's document as it is.
    """

    def __init__(self, urls: Iterable[str], api_key: str | None = None, *, timeout: float = CLIENT.timeout_seconds,
                 retry: RetryPolicy | None = None) -> None:
        unique = list(dict.fromkeys(url.strip().rstrip("/") for url in urls if url.strip()))
        if not unique:
            raise ValueError("a fleet needs at least one daemon URL")
        self.clients = [DaemonClient(url, api_key, timeout=timeout, retry=retry) for url in unique]
        self._labels: dict[str, str | None] = {}  # url -> "K/N", learnt from each /status answer
        self._owners: dict[str, DaemonClient] = {}  # server -> the shard that last served it

    @property
    def urls(self) -> list[str]:
        """The shards' URLs, in the order given."""
        return [c.base_url for c in self.clients]

    @property
    def base_url(self) -> str:
        """The shards' URLs as one line (where a page names "the daemon URL")."""
        return ", ".join(self.urls)

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key."""
        return self.clients[0].has_api_key

    def __repr__(self) -> str:
        return f"FleetClient({self.urls!r}, api key {'set' if self.has_api_key else 'not set'})"

    def close(self) -> None:
        """Close every shard's connection pool."""
        for client in self.clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ fan-out
    def _each(self, method: str, *args: Any, clients: list[DaemonClient] | None = None,
              **kwargs: Any) -> list[_ShardAnswer]:
        """``DaemonClient.<method>(*args, **kwargs)`` on every shard at once; the answers in URL order."""
        targets = clients or self.clients
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="fleet-read") as pool:
            futures = [pool.submit(getattr(c, method), *args, **kwargs) for c in targets]
        answers = []
        for client, future in zip(targets, futures, strict=True):
            try:
                data, error = future.result(), None
            except DaemonError as exc:
                data, error = None, exc
            answers.append(_ShardAnswer(client, self._labels.get(client.base_url), data, error))
        return answers

    @staticmethod
    def _answered(answers: list[_ShardAnswer], what: str) -> list[_ShardAnswer]:
        """The shards that answered; FleetError when none did."""
        answered = [a for a in answers if a.error is None]
        if not answered:
            raise FleetError(answers, what)
        return answered

    @staticmethod
    def _model_version(answered: list[_ShardAnswer]) -> str | None:
        """The shards' model version: one, or the different ones joined ('a | b': the shards serve different models)."""
        versions = list(dict.fromkeys(a.data.get("model_version") for a in answered if a.data.get("model_version")))
        return " | ".join(versions) if versions else None

    @staticmethod
    def _stalest(answered: list[_ShardAnswer], key: str) -> str | None:
        """The oldest of the shards' ``key`` times (ISO 8601): the fleet is as fresh as its stalest shard."""
        times = [a.data.get(key) for a in answered if a.data.get(key)]
        return min(times) if times else None

    # ------------------------------------------------------------------ the reads, merged
    def status(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Every shard's ``GET /status``, as one document.

        Counts (servers, cycles, records, requests, forecasts per second) are summed, the error rate
        recomputed, ``last_cycle_ms`` / ``average_cycle_ms`` the slowest shard's, ``last_forecast_time`` and
        ``uptime_seconds`` the stalest / youngest shard's; every other field is the first answering shard's.
        ``shards`` adds per shard its model, servers and last forecast; ``problems`` what makes the URLs not
        one fleet (shards that disagree on N, a slice given twice or not at all, an unsharded daemon).
        """
        answers = self._each("status", retry=retry)
        for answer in answers:
            if answer.error is None:
                answer.label = self._labels[answer.client.base_url] = answer.data.get("shard")
        answered = self._answered(answers, "GET /status")
        merged = dict(answered[0].data)
        for key in ("servers_tracked", "servers_ready", "servers_warming_up", "servers_offline", "unknown_servers",
                    "cycles", "feed_records_stored", "feed_records_rejected", "feed_records_duplicate",
                    "requests_total", "request_errors_total", "maintenance_windows", "websocket_subscribers",
                    "server_windows_bytes", "max_servers"):
            if key in merged:
                merged[key] = sum(a.data.get(key) or 0 for a in answered)
        merged["forecasts_per_second"] = round(sum(a.data.get("forecasts_per_second") or 0.0 for a in answered), 1)
        for key in ("last_cycle_ms", "average_cycle_ms"):
            values = [a.data[key] for a in answered if a.data.get(key) is not None]
            merged[key] = max(values) if values else None
        merged["uptime_seconds"] = min(a.data.get("uptime_seconds") or 0.0 for a in answered)
        merged["last_forecast_time"] = self._stalest(answered, "last_forecast_time")
        merged["model_version"] = self._model_version(answered)
        requests = merged.get("requests_total") or 0
        merged["error_rate"] = round((merged.get("request_errors_total") or 0) / requests, 4) if requests else 0.0
        merged["shard"] = None  # the fleet is no slice; each shard's is in "shards"
        rows = []
        for answer in answers:
            row = answer.row()
            if answer.error is None:
                doc = answer.data
                row.update(model_version=doc.get("model_version"), servers_tracked=doc.get("servers_tracked"),
                           servers_ready=doc.get("servers_ready"), last_forecast_time=doc.get("last_forecast_time"))
                row["line"] = (f"{answer.where()}: {doc.get('servers_tracked')} servers "
                               f"({doc.get('servers_ready')} ready), model {doc.get('model_version') or 'none'}, "
                               f"last forecast {doc.get('last_forecast_time') or '-'}")
            rows.append(row)
        merged["shards"] = rows
        merged["shards_answered"] = len(answered)
        merged["problems"] = self._partition_problems(answers)
        return merged

    def _partition_problems(self, answers: list[_ShardAnswer]) -> list[str]:
        """What makes these URLs not one fleet, by the shards' own ``K/N`` (a down shard's as last reported)."""
        problems = []
        sharded: dict[str, list[str]] = {}
        for answer in answers:
            known = answer.error is None or answer.client.base_url in self._labels
            if not known:
                continue
            if answer.label is None:
                if len(answers) == 1:
                    continue  # one unsharded daemon: the whole fleet
                problems.append(f"the daemon at {answer.client.base_url} is not sharded (no --shard K/N): it serves a "
                                f"whole fleet, not a slice of this one")
            else:
                sharded.setdefault(answer.label, []).append(answer.client.base_url)
        counts = {label.split("/")[1] for label in sharded}
        if len(counts) > 1:
            problems.append("the shards disagree on N: " + ", ".join(
                f"{url} is {label}" for label, urls in sharded.items() for url in urls))
        for label, urls in sharded.items():
            if len(urls) > 1:
                problems.append(f"{' and '.join(urls)} all say they are shard {label}: its servers are counted once")
        every_known = all(a.error is None or a.client.base_url in self._labels for a in answers)
        if len(counts) == 1 and every_known:
            count = int(next(iter(counts)))
            given = {int(label.split("/")[0]) for label in sharded}
            missing = [f"{k}/{count}" for k in range(count) if k not in given]
            if missing:
                problems.append(f"no URL for shard {', '.join(missing)}: the servers of "
                                f"{'that slice' if len(missing) == 1 else 'those slices'} are not shown")
        return problems

    def predictions_current(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Every shard's ``GET /predictions/current`` as one: the union of their servers, most at risk first.

        Each server carries ``shard`` (its shard's ``K/N``, else its URL). A server two shards both report
        is kept once, from the first URL, and ``duplicates`` names it with every shard that reported it
        (a misrouted server: its records reached two daemons). ``summary`` counts the merged servers;
        ``prediction_time`` is the stalest shard's.
        """
        answers = self._each("predictions_current", retry=retry)
        answered = self._answered(answers, "GET /predictions/current")
        servers: dict[str, dict[str, Any]] = {}
        seen_on: dict[str, list[str]] = {}
        for answer in answered:
            for server in answer.data.get("servers", []):
                name = server["server_name"]
                seen_on.setdefault(name, []).append(answer.where())
                if name not in servers:
                    servers[name] = {**server, "shard": answer.label or answer.client.base_url}
                    self._owners[name] = answer.client
        merged_servers = sorted(servers.values(), key=_risk_order)
        summary = dict.fromkeys(answered[0].data.get("summary", {}), 0)
        for server in merged_servers:
            key = server.get("risk_level") if server.get("status") == "ok" else server.get("status")
            summary[key] = summary.get(key, 0) + 1
        first = answered[0].data
        return {"prediction_time": self._stalest(answered, "prediction_time"),
                "model_version": self._model_version(answered), "horizons": first.get("horizons", {}),
                "sources": first.get("sources", {}), "summary": summary, "servers": merged_servers,
                "duplicates": {name: where for name, where in seen_on.items() if len(where) > 1},
                "shards": [a.row() for a in answers]}

    def alerts(self, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Every shard's ``GET /alerts/active`` as one list (and ``suppressed``), sorted as one daemon sorts
        them (:func:`alert_order`); each alert carries ``shard`` (a ``model_degraded`` one is that shard's model's)."""
        answers = self._each("alerts", retry=retry)
        answered = self._answered(answers, "GET /alerts/active")
        lists: dict[str, list[dict[str, Any]]] = {"alerts": [], "suppressed": []}
        for answer in answered:
            for key, merged in lists.items():
                merged.extend({**alert, "shard": answer.label or answer.client.base_url}
                              for alert in answer.data.get(key, []))
        for merged in lists.values():
            merged.sort(key=alert_order)
        return {"prediction_time": self._stalest(answered, "prediction_time"), **lists,
                "shards": [a.row() for a in answers]}

    def anomalies(self, min_score: float | None = None, server: str | None = None, metric: str | None = None,
                  horizon: str | None = None, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Every shard's ``GET /anomalies`` as one: rows highest score first, ``servers_scored`` and ``matching``
        summed, ``at`` the stalest shard's (each shard lists at most its own ANOMALY.max_rows)."""
        answers = self._each("anomalies", min_score, server, metric, horizon, retry=retry)
        answered = self._answered(answers, "GET /anomalies")
        rows = [{**row, "shard": a.label or a.client.base_url} for a in answered for row in a.data.get("anomalies", [])]
        rows.sort(key=lambda r: (-r["score"], r["server_name"], r["metric"]))
        first = answered[0].data
        return {"model_version": self._model_version(answered), "at": self._stalest(answered, "at"),
                "horizons": first.get("horizons", []), "min_half_width": first.get("min_half_width", {}),
                "servers_scored": sum(a.data.get("servers_scored") or 0 for a in answered),
                "matching": sum(a.data.get("matching") or 0 for a in answered), "anomalies": rows,
                "shards": [a.row() for a in answers]}

    def accuracy(self, window: str | None = None, metric: str | None = None, horizon: str | None = None,
                 profile: str | None = None, server: str | None = None, *,
                 retry: RetryPolicy | None = None) -> dict[str, Any]:
        """Every shard's ``GET /accuracy``, side by side: ``{"shards": [{url, shard, ok, error, line, accuracy}]}``.

        Not merged on purpose: q-risk is 2 * sum pinball / sum |actual| over a shard's forecasts, so neither a
        plain nor an n-weighted mean of the shards' q-risks (nor of their skills) is the fleet's; each shard
        also has its own band calibration, live selection and model_degraded warnings. ``server`` is asked of
        its shard only when that is known (:meth:`predictions_current` learnt it).
        """
        targets = [self._owners[server]] if server is not None and server in self._owners else None
        answers = self._each("accuracy", window, metric, horizon, profile, server, retry=retry, clients=targets)
        self._answered(answers, "GET /accuracy")
        return {"shards": [{**a.row(), "accuracy": a.data} for a in answers]}

    def server_fan(self, server_name: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /predictions/{server}`` of the shard that serves it."""
        return self._of_owner(server_name, "server_fan", server_name, retry=retry)

    def history(self, server_name: str, hours: float, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        """``GET /history/{server}?hours=`` of the shard that serves it."""
        return self._of_owner(server_name, "history", server_name, hours, retry=retry)

    def _of_owner(self, server_name: str, method: str, *args: Any, retry: RetryPolicy | None) -> dict[str, Any]:
        """A one-server read from the shard that served the server last; when that is not known (or it no
        longer knows the server), from whichever shard knows it. The first shard's error when none does."""
        owner = self._owners.get(server_name)
        if owner is not None:
            try:
                return getattr(owner, method)(*args, retry=retry)
            except DaemonError as exc:
                if exc.status != 404:
                    raise
        answers = self._each(method, *args, retry=retry)
        for answer in answers:
            if answer.error is None:
                self._owners[server_name] = answer.client
                return answer.data
        errors = [a.error for a in answers if a.error is not None]
        raise next((e for e in errors if e.status != 404), errors[0])


def _error_fields(body: Any) -> tuple[str | None, str | None]:
    """(error code, detail) of a daemon error body ``{"error": ..., "detail": ...}``."""
    if not isinstance(body, dict):
        return None, _clip(str(body))
    detail = body.get("detail")
    return body.get("error"), None if detail is None else _clip(str(detail))


def _clip(text: str) -> str:
    return text[:CLIENT.error_detail_chars]
