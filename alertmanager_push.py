"""Push the daemon's alerts to Prometheus Alertmanager (API v2), following Prometheus' own conventions.

The daemon hands :class:`AlertmanagerNotifier` its firing alerts after every forecast cycle
(:meth:`AlertmanagerNotifier.notify`: stores a reference and wakes the senders, never blocks, never
raises). One background thread per Alertmanager URL then does what Prometheus' notifier does:

* ``POST {url}/api/v2/alerts`` with a JSON list of ``{labels, annotations, startsAt, endsAt,
  generatorURL}``, at once when the set of firing alerts changed, else every resend interval
  (``ALERTMANAGER_RESEND_SECONDS``, Prometheus' ``--rules.alert.resend-delay``);
* a firing alert's ``endsAt`` is now + ``ALERTMANAGER.ends_at_resends`` x the resend interval, so
  Alertmanager resolves it by itself if the daemon dies;
* an alert that was pushed and no longer fires (resolved, or its server went into maintenance) is sent
  with ``endsAt`` = when that was seen, with the next ``ALERTMANAGER.resolved_sends`` successful sends;
* ``startsAt`` is the alert's ``starts_at`` (data time) but never after now: a time-scaled demo's data
  time runs ahead of the wall clock, and Alertmanager refuses an alert that ends before it starts.

Alertmanager identifies an alert by its labels. ``severity`` and ``horizon`` are labels, so when a
tracked alert changes level or horizon the old label set is sent resolved and the new one fires (a
route grouping by ``alertname, server, metric`` keeps both in one notification).

A failed POST (unreachable, timeout, any non-2xx answer) is retried after an exponential back-off
(``ALERTMANAGER.retry_*``), always with the alerts as they are then. Each URL has its own thread and
state, so an Alertmanager that is down never delays another. A change of state (failing, recovered) is
one log line, not one per retry; every POST is counted (``tft_alertmanager_notifications_total``) and
each URL's state is reported in ``/status`` (``alertmanager``). Credentials in a URL
(``https://user:pass@host``) are used for basic auth and never shown. Labels, annotations and an
example route: Docs/RISK_SCORING.md (Alertmanager).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from api_models import Alert
from config import (
    ALERTMANAGER,
    ALERTMANAGER_DOC,
    ALERTMANAGER_RESEND_SECONDS,
    DASHBOARD_URL,
    HORIZON_TEXT,
    METRIC_LABELS,
    PROJECT_VERSION,
)
from errors import UsageError

logger = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, str], ...]  # an alert's label set, sorted: Alertmanager's identity of it


# ============================================================================ URLs
def validate_url(url: str, flag: str = "--alertmanager-url") -> str:
    """``url`` without a trailing slash, or ValueError saying what is wrong, why it matters and how to fix it."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        _ = parts.port  # ValueError: a port that is not a number, or out of range
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
    except ValueError:
        valid = False
    if not valid:
        alertmanager = flag == "--alertmanager-url"
        use = (f"the daemon POSTs its alerts to <URL>{ALERTMANAGER.api_path}" if alertmanager
               else "every alert sent to Alertmanager links to it")
        example = "http://alertmanager.example:9093" if alertmanager else DASHBOARD_URL
        raise UsageError(f"{flag} {redact_url(text)!r} is not a valid http(s) URL with a host", use,
                         f"give e.g. {example} (no query or fragment)", ALERTMANAGER_DOC)
    return text.rstrip("/")


def redact_url(url: str) -> str:
    """``url`` with any user name and password removed (for logs, labels and /status)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<invalid URL>"


# ============================================================================ alerts -> Alertmanager
def alert_labels(alert: Alert, instance: str | None = None) -> dict[str, str]:
    """Alertmanager labels of an alert: alertname, severity, server, instance (when known), profile,
    metric, horizon."""
    labels = {"alertname": ALERTMANAGER.alertnames[alert.kind], "severity": alert.level,
              "server": alert.server_name, "profile": alert.profile, "metric": alert.metric,
              "horizon": alert.horizon}
    if instance:
        labels["instance"] = instance
    return labels


def _number(value: float | int) -> str:
    return str(round(value, 4)) if isinstance(value, float) else str(value)


def alert_annotations(alert: Alert, dashboard_url: str = DASHBOARD_URL) -> dict[str, str]:
    """Alertmanager annotations of an alert (strings; absent values are left out).

    ``predicted_value`` is named for what it is: ``p90`` (the worst p90 within the horizon; for CPU the
    p90 of CPU used) for a forecast horizon, ``current_value`` for "now", ``observed_value`` (a coverage
    or a skill) for a model_degraded warning.
    """
    name = METRIC_LABELS.get(alert.metric, (alert.metric, ""))[0]
    when = HORIZON_TEXT.get(alert.horizon, alert.horizon)
    if alert.kind == "model_degraded":
        summary = f"Forecasts of {name} at {when} no longer hold (model degraded)"
        value_key = "observed_value"
    elif alert.horizon == "now":
        summary = f"{alert.server_name}: {name} breach in progress ({alert.level} level)"
        value_key = "current_value"
    elif alert.probability is not None:  # the chance is of the tier within 8 h (alert_policy.py)
        summary = (f"{alert.server_name}: {name} may reach {alert.level} level: {alert.probability:.0%} chance "
                   f"within 8 h, likely from {when} on")
        value_key = "p90"
    else:
        summary = f"{alert.server_name}: {name} may reach {alert.level} level within {when}"
        value_key = "p90"
    notes = {"summary": summary, "description": alert.reason, value_key: _number(alert.predicted_value),
             "threshold": _number(alert.threshold), "dashboard": dashboard_url}
    if alert.p50 is not None:
        notes["p50"] = _number(alert.p50)
    if alert.minutes_to_breach is not None:
        notes["minutes_to_breach"] = str(alert.minutes_to_breach)
    if alert.probability is not None:
        notes["probability"] = f"{alert.probability:.2f}"
    if alert.id:
        notes["alert_id"] = alert.id
    if alert.starts_at:
        notes["data_starts_at"] = alert.starts_at
    return notes


def fingerprint(labels: dict[str, str]) -> Fingerprint:
    """The label set as Alertmanager identifies an alert by it."""
    return tuple(sorted(labels.items()))


def rfc3339(epoch_seconds: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (what Alertmanager's API takes)."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ============================================================================ one Alertmanager
@dataclass
class _Pushed:
    """An alert as last folded in: its labels, latest values and (wall-clock) start."""

    labels: dict[str, str]
    alert: Alert
    starts_at: float


@dataclass
class _Resolving:
    """A pushed alert that no longer fires: sent with ``ends_at`` until ``sends_left`` runs out."""

    pushed: _Pushed
    ends_at: float
    sends_left: int
    sent: int = 0


class _Target:
    """One Alertmanager: its own thread, state, back-off and counters."""

    def __init__(self, notifier: AlertmanagerNotifier, url: str) -> None:
        self.notifier = notifier
        self.name = redact_url(url)
        self.endpoint = url + ALERTMANAGER.api_path
        self._secret = urlsplit(url).password
        self.wake = threading.Event()
        self.client = httpx.Client(timeout=notifier.timeout_seconds,
                                   headers={"User-Agent": f"fleet-forecaster/{PROJECT_VERSION}"})
        self.seen_version = 0
        self.current: dict[Fingerprint, _Pushed] = {}  # firing now (as of the last snapshot folded in)
        self.pushed: dict[Fingerprint, _Pushed] = {}  # sent (or tried) as firing, not yet resolved
        self.resolving: dict[Fingerprint, _Resolving] = {}
        self.sent_keys: frozenset[Fingerprint] | None = None  # firing set at the last successful send
        self.next_resend = float("inf")  # monotonic
        self.retry_at = 0.0  # monotonic; while failing, nothing is sent before it
        self.consecutive_failures = 0
        self.notifications_sent = 0
        self.alerts_sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success_at: str | None = None
        self.last_attempt_at: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"alertmanager {self.name}", daemon=True)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while not self.notifier.closed.is_set():
            self.wake.wait(self._wait_seconds())
            self.wake.clear()
            if self.notifier.closed.is_set():
                break
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the sender must outlive any bug; it tries again later
                if not self.consecutive_failures:  # the traceback once, not once per retry
                    logger.exception("Alertmanager %s: sending failed unexpectedly", self.name)
                self._failed("internal error (logged)", log=False)
        self.client.close()

    def _wait_seconds(self) -> float | None:
        now = time.monotonic()
        until = self.retry_at if self.consecutive_failures else self.next_resend
        return None if until == float("inf") else max(0.0, until - now)

    def step(self) -> None:
        """Fold in the latest firing alerts; send when something changed, a resend or a retry is due."""
        n = self.notifier
        now = time.monotonic()
        version, firing = n.snapshot()
        if version != self.seen_version:
            self.seen_version = version
            self._fold(firing, n.clock())
        if self.consecutive_failures:
            if now < self.retry_at:
                return
        elif (self.sent_keys == frozenset(self.current) and now < self.next_resend
              and all(r.sent for r in self.resolving.values())):
            return
        self._send(now)

    def _fold(self, firing: Sequence[Alert], wall: float) -> None:
        """The new firing set: new alerts get a start; pushed alerts no longer firing start resolving."""
        current: dict[Fingerprint, _Pushed] = {}
        for alert in firing:
            labels = alert_labels(alert, self.notifier.instance_of(alert.server_name))
            key = fingerprint(labels)
            known = self.current.get(key) or self.pushed.get(key)
            if known is not None:
                starts = known.starts_at
            else:  # data time, never after now (a time-scaled demo's data time runs ahead of the clock)
                data_start = _epoch(alert.starts_at)
                starts = wall if data_start is None else min(data_start, wall)
            current[key] = _Pushed(labels=labels, alert=alert, starts_at=starts)
            self.resolving.pop(key, None)  # firing again
        for key in [k for k in self.pushed if k not in current]:
            gone = self.pushed.pop(key)
            self.resolving[key] = _Resolving(pushed=gone, ends_at=max(wall, gone.starts_at),
                                             sends_left=self.notifier.resolved_sends)
        for key in self.pushed.keys() & current.keys():
            self.pushed[key] = current[key]
        self.current = current

    def _payload(self, pushed: _Pushed, ends_at: float) -> dict[str, Any]:
        return {"labels": pushed.labels, "annotations": alert_annotations(pushed.alert, self.notifier.dashboard_url),
                "startsAt": rfc3339(pushed.starts_at), "endsAt": rfc3339(ends_at),
                "generatorURL": self.notifier.dashboard_url}

    def _send(self, now: float) -> None:
        n = self.notifier
        wall = n.clock()
        valid_until = wall + n.ends_at_resends * n.resend_seconds
        batch = [self._payload(p, valid_until) for p in self.current.values()]
        batch += [self._payload(r.pushed, r.ends_at) for r in self.resolving.values()]
        self.pushed.update(self.current)
        if not batch:  # nothing firing, nothing to resolve: nothing to say
            self.sent_keys = frozenset()
            self.next_resend = float("inf")
            return
        self.last_attempt_at = rfc3339(wall)
        for first in range(0, len(batch), n.max_batch):
            if n.closed.is_set():
                return  # shutting down: send nothing more
            error = self._post(batch[first:first + n.max_batch])
            if error is not None:
                self._failed(error)
                return
        self._succeeded(len(batch), now, wall)

    def _post(self, chunk: list[dict[str, Any]]) -> str | None:
        """POST one chunk; None on a 2xx, else why not (never with the URL's credentials)."""
        try:
            response = self.client.post(self.endpoint, json=chunk)
        except httpx.HTTPError as exc:
            return self._clean(f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return None
        body = " ".join(response.text.split())[:ALERTMANAGER.error_chars]
        return self._clean(f"HTTP {response.status_code}: {body}")

    def _clean(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _succeeded(self, count: int, now: float, wall: float) -> None:
        n = self.notifier
        if self.consecutive_failures:
            logger.info("Alertmanager %s: delivering again after %d failed attempts", self.name,
                        self.consecutive_failures)
        self.consecutive_failures = 0
        self.notifications_sent += 1
        self.alerts_sent += count
        self.last_success_at = rfc3339(wall)
        self.sent_keys = frozenset(self.current)
        for key, resolving in list(self.resolving.items()):
            resolving.sent += 1
            resolving.sends_left -= 1
            if resolving.sends_left <= 0:
                del self.resolving[key]
        self.next_resend = now + n.resend_seconds if (self.current or self.resolving) else float("inf")
        n.count(self.name, "success", count)

    def _failed(self, error: str, log: bool = True) -> None:
        n = self.notifier
        self.consecutive_failures += 1
        self.failures += 1
        self.last_error = error
        delay = min(n.retry_max_seconds, n.retry_base_seconds * 2 ** (self.consecutive_failures - 1))
        self.retry_at = time.monotonic() + delay
        if self.consecutive_failures == 1 and log and not n.closed.is_set():
            logger.warning("Alertmanager %s: sending alerts failed (%s); retrying with back-off up to every %g s "
                           "(logged again when it recovers; see /status \"alertmanager\")", self.name, error,
                           n.retry_max_seconds)
        n.count(self.name, "failure", 0)

    def status(self) -> dict[str, Any]:
        """This Alertmanager's delivery state (no credentials)."""
        state = "failing" if self.consecutive_failures else ("ok" if self.last_success_at else "idle")
        return {"url": self.name, "state": state, "firing": len(self.sent_keys or ()),
                "resolving": len(self.resolving), "notifications_sent": self.notifications_sent,
                "alerts_sent": self.alerts_sent, "failures": self.failures,
                "consecutive_failures": self.consecutive_failures, "last_error": self.last_error,
                "last_attempt_at": self.last_attempt_at, "last_success_at": self.last_success_at}


# ============================================================================ the notifier
class AlertmanagerNotifier:
    """Pushes firing alerts to one or more Alertmanagers in background threads (one per URL).

    ``instance_of`` gives a server's Prometheus ``instance`` label (or None); ``registry`` is the
    Prometheus registry its counters go on (the daemon's), or None for none.
    """

    def __init__(self, urls: Sequence[str], dashboard_url: str = DASHBOARD_URL,
                 instance_of: Callable[[str], str | None] | None = None, registry: Any = None,
                 resend_seconds: float = ALERTMANAGER_RESEND_SECONDS,
                 ends_at_resends: int = ALERTMANAGER.ends_at_resends,
                 resolved_sends: int = ALERTMANAGER.resolved_sends,
                 timeout_seconds: float = ALERTMANAGER.timeout_seconds,
                 retry_base_seconds: float = ALERTMANAGER.retry_base_seconds,
                 retry_max_seconds: float = ALERTMANAGER.retry_max_seconds,
                 max_batch: int = ALERTMANAGER.max_batch, clock: Callable[[], float] = time.time) -> None:
        clean = list(dict.fromkeys(validate_url(u) for u in urls))  # ValueError for a bad one; each URL once
        self.dashboard_url = validate_url(dashboard_url, "--dashboard-url")
        self.instance_of = instance_of or (lambda _server: None)
        self.resend_seconds, self.ends_at_resends, self.resolved_sends = resend_seconds, ends_at_resends, resolved_sends
        self.timeout_seconds, self.max_batch, self.clock = timeout_seconds, max_batch, clock
        self.retry_base_seconds, self.retry_max_seconds = retry_base_seconds, retry_max_seconds
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._version = 0
        self._firing: Sequence[Alert] = ()
        self.handoff_errors = 0
        self._counter = self._alerts = None
        if registry is not None:
            from prometheus_client import Counter

            self._counter = Counter("tft_alertmanager_notifications_total",
                                    "POSTs of alerts to Alertmanager by result (success / failure)",
                                    ["alertmanager", "result"], registry=registry)
            self._alerts = Counter("tft_alertmanager_alerts_sent_total", "Alerts delivered to Alertmanager",
                                   ["alertmanager"], registry=registry)
        self.targets = [_Target(self, url) for url in clean]
        for target in self.targets:
            target.thread.start()
        logger.info("pushing alerts to Alertmanager at %s (resend every %g s)",
                    ", ".join(t.name for t in self.targets), resend_seconds)

    def notify(self, firing: Sequence[Alert]) -> None:
        """Hand over the alerts firing now (after a cycle): O(1), never blocks on the network, never raises."""
        try:
            with self._lock:
                self._version += 1
                self._firing = firing
            for target in self.targets:
                target.wake.set()
        except Exception:  # noqa: BLE001 - a forecast cycle must never fail because of the push
            self.handoff_errors += 1
            if self.handoff_errors == 1:
                logger.exception("handing alerts to the Alertmanager push failed")

    def snapshot(self) -> tuple[int, Sequence[Alert]]:
        """(version, firing alerts) of the latest hand-over."""
        with self._lock:
            return self._version, self._firing

    def count(self, name: str, result: str, alerts: int) -> None:
        """Count one POST attempt (and the alerts it delivered)."""
        if self._counter is not None:
            self._counter.labels(name, result).inc()
            if alerts:
                self._alerts.labels(name).inc(alerts)

    def status(self) -> list[dict[str, Any]]:
        """Delivery state per Alertmanager (for /status)."""
        return [target.status() for target in self.targets]

    def close(self, wait_seconds: float = ALERTMANAGER.close_seconds) -> None:
        """Stop the senders: nothing more is sent (alerts still firing time out by their endsAt)."""
        self.closed.set()
        for target in self.targets:
            target.wake.set()
        for target in self.targets:
            target.thread.join(wait_seconds)
