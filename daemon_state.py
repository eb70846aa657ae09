"""The daemon's state: what the HTTP layer reads and writes, without any HTTP in it.

``Daemon`` is the composition root; each concern is a small object of its own:

* ``FeedIngest``: validate a batch against the contract, store it durably, merge it into the
  in-memory windows, and say what happened to every record;
* ``Daemon.run_cycle`` / ``forecast_loop``: forecast each newly completed bucket once, off the
  event loop; ``Daemon.housekeeping`` trims old history on its own clock, model or not;
* ``PublishedCycle``: the latest cycle and its /predictions/current document, serialised once
  per cycle (every GET and WebSocket push reuses the same bytes);
* ``Subscribers``: the WebSocket fan-out (the cycle hands documents over; it never awaits a socket);
* ``ServerOwners``, ``MaintenanceCalendar``: which key fed a server, and the operator's maintenance;
* ``Counters``, ``RateLimiter``, ``PrometheusMetrics``: what /status and /metrics report and
  how clients are throttled; ``status_document`` and ``history_document`` build those replies.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import shlex
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from alert_lifecycle import AlertTracker
from alertmanager_push import AlertmanagerNotifier
from api_keys import OPEN_GRANT, KeyGrant, KeyStore
from api_models import (
    BATCH_ADAPTER,
    FEED_ADAPTER,
    INSTANCES_ADAPTER,
    RECORD_ADAPTER,
    AccuracyResponse,
    Alert,
    AlertQualityRow,
    DemoScenario,
    FeedResponse,
    HistoryResponse,
    LastValueRow,
    LastValueServer,
    LinborgRecord,
    LiveSelectionSummary,
    MaintenanceWindow,
    RejectedRecord,
    StatusResponse,
)
from cli_options import option
from common_utils import isoformat_utc
from config import (
    ACCURACY_SERVER_WINDOW,
    ACCURACY_WINDOWS_HOURS,
    ALERTMANAGER_DOC,
    ALERTMANAGER_RESEND_SECONDS,
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_REFERENCE_DOC,
    CONTRACT_VERSION,
    DAEMON_PORT,
    DAEMON_STATE,
    DASHBOARD_URL,
    DATA_CONTRACT_DOC,
    DEFAULT_HOST,
    FEED_MAX_FUTURE_SECONDS,
    FORECAST_RETENTION_HOURS,
    HORIZONS,
    INSTANCE_MAX_LENGTH,
    LATEST_MODEL_DIR,
    LATEST_MODEL_LINK,
    LINBORG_METRICS,
    LIVE_SELECTION,
    MAINTENANCE_MAX_HOURS,
    MAX_RECORDS_PER_REQUEST,
    OTLP_MAPPING_FILE,
    PROJECT_VERSION,
    PROM_FORECAST_SERIES,
    QUANTILE_LABELS,
    QUANTILE_LEVELS,
    REMOTE_WRITE_MAPPING_FILE,
    RETENTION_MIN_DAYS,
    RETRAIN_DOC,
    RISK_METRICS,
    SAMPLING_INTERVAL_SECONDS,
    SCALING_DOC,
    SHARD_HASH,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    STORE_PATH,
)
from contract import DISPLAY_CPU, bucket_iso, bucket_of_ns, cpu_used
from errors import ToolkitError
from forecast_engine import CycleResult, ForecastEngine, fleet_document
from live_accuracy import HORIZON_LABELS, LiveAccuracy, bands_of, scales_blob
from live_alerts import AlertOutcomes
from live_anomaly import AnomalyBoard
from metrics_store import COUNTS, GAUGES, FleetWindows, MetricsStore, StoreError
from observed_series import ObservedSeries
from otlp_receiver import OtlpReceiver
from remote_write import RemoteWriteReceiver
from retrain_scheduler import RetrainScheduler, parse_interval
from sharding import HASHES, Shard, parse_shard, shard_key
from state_rules import STATE_PRECEDENCE
from tft_model import ModelLoadError, load_model

logger = logging.getLogger(__name__)


# ============================================================================ settings and counters
def _interval(text: str) -> float:
    """``--retrain-every``: an interval such as ``24h`` (retrain_scheduler.parse_interval), in seconds."""
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass
class DaemonSettings:
    """How the daemon runs: each flagged field is also its ``main.py infer`` flag (cli_options.py)."""

    model_dir: Path | None = option(LATEST_MODEL_DIR, "model directory (<models>/latest follows promotions)",
                                    parse=Path)
    host: str = option(DEFAULT_HOST, "bind address (loopback unless told otherwise)")
    port: int = option(DAEMON_PORT, "TCP port", parse=int)
    store_path: Path = option(STORE_PATH, "SQLite file for the live metrics", flag="--store", parse=Path)
    api_key: str | None = None  # one key with every scope ($TFT_API_KEY or generated)
    # scoped keys, re-read when the file changes (wins over api_key)
    api_key_file: Path | None = option(
        None, f"key file: one key per line, 'ingest=KEY', 'read=KEY', 'admin=KEY' (or 'read,admin=KEY'; a bare KEY "
              f"holds every scope); re-read when it changes, so keys rotate without a restart (else "
              f"${API_KEY_FILE_ENV}, or one key in ${API_KEY_ENV}). See {API_REFERENCE_DOC} (Security)", parse=Path)
    open_reads: bool = option(False, "GET endpoints without an API key")
    allow_no_model: bool = option(False, "start even if the model cannot be loaded (forecast endpoints answer 503)")
    rate_per_minute: float = option(DAEMON_STATE.rate_limit_requests_per_minute, "requests per minute per client",
                                    parse=float)
    rate_burst: int = option(DAEMON_STATE.rate_limit_burst, "burst size of the rate limit", parse=int)
    max_future_seconds: float = option(FEED_MAX_FUTURE_SECONDS, "how far ahead of this daemon's clock a record may "
                                       "be stamped (raise it only to replay a time-scaled feed)", parse=float)
    band_adaptation: bool = DAEMON_STATE.band_adapt_enabled  # live calibration of p10/p90 from matured forecasts
    live_selection: bool = option(LIVE_SELECTION.enabled, "always serve the model's forecast, even where its matured "
                                  "forecasts on a server keep losing to the last value (Docs/API_REFERENCE.md, Live "
                                  "selection)")
    retrain_every_seconds: float | None = option(
        None, f"retrain from the store this often (e.g. 24h) in a separate low-priority process, and serve a "
              f"challenger only when it backtests better; needs --model-dir <models>/latest. See {RETRAIN_DOC}",
        flag="--retrain-every", parse=_interval, metavar="INTERVAL")
    retrain_args: list[str] = option(help="extra flags for each scheduled 'main.py retrain' (e.g. '--epochs 4')",
                                     factory=list, parse=shlex.split, metavar="'FLAGS'")
    alertmanager_urls: list[str] = option(
        help=f"push firing alerts to this Prometheus Alertmanager (API v2, e.g. http://127.0.0.1:9093; "
             f"user:password@ in the URL is sent as basic auth); repeat for several (each gets every alert, on its "
             f"own thread). Firing alerts are re-sent every {ALERTMANAGER_RESEND_SECONDS:g} s, resolved ones sent "
             f"resolved; labels alertname (FleetForecastRisk / FleetModelDegraded), severity, server, instance, "
             f"profile, metric, horizon. See {ALERTMANAGER_DOC}", factory=list, flag="--alertmanager-url",
        repeat=True, metavar="URL")
    alertmanager_url_file: Path | None = option(
        None, "Alertmanager URLs, one per line, for URLs that carry credentials (user:password@): a file readable by "
              "the daemon's user only (mode 0600), so the password never shows in the process list; a password in "
              "--alertmanager-url itself is refused", parse=Path, metavar="FILE")
    dashboard_url: str = option(DASHBOARD_URL, "the dashboard's address, linked from every alert pushed to "
                                "Alertmanager (annotation 'dashboard' and generatorURL)", metavar="URL")
    alertmanager_resend_seconds: float = ALERTMANAGER_RESEND_SECONDS  # firing alerts are re-sent this often
    remote_write_mapping: Path | None = option(
        REMOTE_WRITE_MAPPING_FILE, "mapping of POST /api/v1/write (Prometheus remote-write): its 'remote_write' "
        "section, names and profiles (Docs/COLLECTING.md)", parse=Path, metavar="JSON")
    otlp_mapping: Path | None = option(
        OTLP_MAPPING_FILE, "mapping of POST /v1/metrics (OpenTelemetry OTLP/HTTP): its 'remote_write' section in the "
        "names the collector's prometheusremotewrite exporter writes, names and profiles (Docs/COLLECTING.md, "
        "OpenTelemetry)", parse=Path, metavar="JSON")
    max_servers: int = option(DAEMON_STATE.max_tracked_servers,
                              "servers tracked at most; a record for one more is rejected "
                              "naming the cap (Docs/API_REFERENCE.md, Limits)", parse=int)
    health_stall_seconds: float = option(DAEMON_STATE.health_stall_seconds,
                                         "/health says degraded when records arrive but no "
                                         "forecast cycle completed for this long", parse=float)
    housekeeping_seconds: float = option(DAEMON_STATE.housekeeping_seconds,
                                         "retention, duplicate-check keys and idle servers run "
                                         "this often, with or without a model", parse=float)
    established_hours: float = option(DAEMON_STATE.established_history_hours,
                                      "history a server needs before its forecasts are "
                                      "scored live and calibrate the shared bands", parse=float)
    retention_days: int = option(DAEMON_STATE.retention_days,
                                 f"days of 5-minute buckets the store keeps, >= {RETENTION_MIN_DAYS} "
                                 f"(forecasts are kept {FORECAST_RETENTION_HOURS // 24} days); 'main.py export' "
                                 f"writes the buckets as training data", parse=int)
    access_log: Path | None = option(None, "write the access log (one JSON line per prediction request) to this "
                                     "file instead of the daemon's log", parse=Path)
    trusted_proxies: list[str] = option(
        help="believe X-Forwarded-For / X-Forwarded-Proto only from this peer address (repeat for several); by "
             "default no proxy is trusted and clients are told apart by their own address",
        factory=lambda: list(DAEMON_STATE.trusted_proxies), flag="--trusted-proxy", repeat=True, metavar="ADDRESS")
    shard: Shard | None = option(
        None, f"own only slice K of N of the fleet (0 <= K < N): servers whose instance label (else name) Prometheus' "
              f"hashmod over N puts in slice K; a record for another slice is refused naming its shard, and every "
              f"series on /metrics carries shard=\"K\". See {SCALING_DOC}", parse=parse_shard, metavar="K/N")
    shard_hash: str = option(SHARD_HASH, "whose hashmod routes the shards: prometheus (Prometheus' md5) or vmagent "
                             "(VictoriaMetrics' xxHash64); every shard and direct feeder of a fleet the same",
                             choices=tuple(HASHES))

    @property
    def partition(self) -> Shard | None:
        """The slice this daemon owns (``--shard`` with ``--shard-hash``); None: the whole fleet."""
        return dataclasses.replace(self.shard, hash_name=self.shard_hash) if self.shard else None

    @property
    def models_dir(self) -> Path | None:
        """The models directory when the daemon follows its ``latest`` link (promotions and retraining)."""
        if self.model_dir is not None and self.model_dir.name == LATEST_MODEL_LINK:
            return self.model_dir.parent
        return None


@dataclass
class Counters:
    """What /status and /metrics report."""

    started: float = field(default_factory=time.time)
    cycles: int = 0
    cycle_seconds_total: float = 0.0
    forecasts_total: int = 0
    last_cycle_ms: float | None = None
    last_cycle_total_ms: float | None = None
    last_cycle_at: str | None = None
    cycle_errors: int = 0
    incremental_passes: int = 0  # passes over servers that became ready after their bucket's cycle
    incremental_forecasts: int = 0  # servers those passes forecast
    incremental_errors: int = 0
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    requests: int = 0
    request_errors: int = 0
    last_stored_at: float = float("-inf")  # monotonic time of the last stored record
    refused: dict[str, int] = field(default_factory=dict)  # trust-boundary refusals by reason


class RateLimiter:
    """Token bucket per client: ``per_minute`` on average, bursts up to ``burst``; memory bounded.

    A client whose bucket has refilled is indistinguishable from a new one, so once more than
    ``prune_above`` clients are tracked those are forgotten; past ``max_clients`` the least
    recently seen go first. A flood of new client names therefore costs a bounded dict, not
    memory that grows without end.
    """

    def __init__(self, per_minute: float = DAEMON_STATE.rate_limit_requests_per_minute,
                 burst: int = DAEMON_STATE.rate_limit_burst,
                 prune_above: int = DAEMON_STATE.rate_limit_prune_above,
                 max_clients: int = DAEMON_STATE.rate_limit_max_clients) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.prune_above = prune_above
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # least recently seen first
        self._pruned_at = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str) -> tuple[bool, float]:
        """(allowed, seconds until a token is available)."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if (len(self._buckets) > self.prune_above
                and now - self._pruned_at >= DAEMON_STATE.rate_limit_prune_every_seconds):
                self._prune(now)
            while len(self._buckets) > self.max_clients:  # the hard cap: least recently seen out, O(1) each
                self._buckets.popitem(last=False)
            return allowed, 0.0 if allowed else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket is full again (a scan, so at most once per prune interval)."""
        self._pruned_at = now
        full_after = self.burst / self.rate  # seconds for an empty bucket to refill
        for client in [c for c, (_, stamp) in self._buckets.items() if now - stamp >= full_after]:
            del self._buckets[client]


SERVER_LABELS = ["server", "profile", "instance"]  # instance: the Prometheus instance, "" (absent) when unknown
ALERT_LABELS = ["kind", "severity", "server", "profile", "instance", "metric", "horizon_seconds", "state"]
HORIZON_SECONDS = {"now": 0, **{label: steps * SAMPLING_INTERVAL_SECONDS for label, steps in HORIZONS.items()}}
QUANTILE_NUMBERS = {label: f"{level:g}" for label, level in QUANTILE_LEVELS.items()}  # "p90" -> "0.9"


class PrometheusMetrics:
    """Prometheus exposition: the daemon's own counters and latencies, one forecast series per metric in base
    units (labels server, profile, instance, horizon_seconds, quantile), risk, one series per open alert, and the
    live accuracy. Names and labels: Docs/API_REFERENCE.md (Prometheus)."""

    def __init__(self, shard: Shard | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.shard = shard
        if shard is not None:  # every series then carries shard="K"; this one says N, so a mixed-up N shows
            Gauge("tft_shards", "N of --shard K/N: the slices the fleet is split into", registry=self.registry).set(
                shard.count)
        self.records = Counter("tft_feed_records_total", "Feed records by result", ["result"], registry=self.registry)
        self.requests = Counter("tft_http_requests_total", "HTTP requests", ["path", "status"], registry=self.registry)
        self.cycle_seconds = Histogram("tft_forecast_cycle_seconds", "Forecast cycle duration",
                                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry)
        self.servers = Gauge("tft_servers", "Tracked servers by status", ["status"], registry=self.registry)
        self.model_loaded = Gauge("tft_model_loaded", "1 when a model is loaded", registry=self.registry)
        self._gauge = functools.partial(Gauge, registry=self.registry)
        self.forecast: dict[str, Any] = {}  # series name -> Gauge (PROM_FORECAST_SERIES; created when first seen)
        self.risk = Gauge("tft_risk_score", "Risk score 0..1 of the last cycle", SERVER_LABELS, registry=self.registry)
        self.alerts = Gauge("tft_active_alerts", "Open alerts (firing, not suppressed) by level", ["level"],
                            registry=self.registry)
        self.alert = Gauge("tft_alert", "1 per open alert (its identity in the labels); gone once it resolves",
                           ALERT_LABELS, registry=self.registry)
        self.alert_breach = Gauge("tft_alert_time_to_breach_seconds", "Seconds until an open alert's threshold may "
                                  "be crossed (0: crossed now)", ALERT_LABELS, registry=self.registry)
        labels = ["metric", "horizon_seconds", "window"]
        self.coverage = Gauge("tft_forecast_coverage_ratio", "Share of matured forecasts inside p10-p90",
                              labels, registry=self.registry)
        self.skill = Gauge("tft_forecast_skill_ratio", "1 - qrisk(model) / qrisk(persistence), matured forecasts",
                           labels, registry=self.registry)
        self.qrisk = Gauge("tft_forecast_qrisk_ratio", "q-risk of matured forecasts", [*labels, "quantile"],
                           registry=self.registry)
        self.band_scale = Gauge("tft_forecast_band_scale_ratio", "Live calibration multiplier of a band half-width",
                                ["metric", "horizon_seconds", "side"], registry=self.registry)
        self.degraded = Gauge("tft_model_degraded", "1 while a model_degraded warning is active",
                              ["metric", "horizon_seconds"], registry=self.registry)
        self.last_value_served = Gauge("tft_forecast_last_value_servers", "Servers forecast this cycle that are "
                                       "served the last value instead of the model (live selection)",
                                       ["metric", "horizon_seconds"], registry=self.registry)
        self.anomaly = Gauge("tft_anomaly_score", "|actual - p50| / half-width of the band forecast horizon_seconds "
                             "before the last complete bucket (1 = on the band's edge); live_anomaly.py",
                             [*SERVER_LABELS, "metric", "horizon_seconds"], registry=self.registry)
        self.scored = Counter("tft_forecasts_scored_total", "Matured forecasts scored against actuals",
                              registry=self.registry)
        self.incremental = Counter("tft_incremental_forecasts_total", "Servers forecast by incremental passes: "
                                   "ready for the last cycle's bucket only after it ran (late data, a backfill)",
                                   registry=self.registry)
        self.refused = Counter("tft_refused_total", "Requests, records and subscriptions refused at a trust "
                               "boundary (caps, rates, key bindings), by reason", ["reason"], registry=self.registry)
        self._refused: dict[str, int] = {}
        self.window_bytes = Gauge("tft_server_windows_bytes", "Bytes held by the tracked servers' in-memory rings",
                                  registry=self.registry)
        # The daemon's own alerts, judged (live_alerts.py): rolling 7 days per metric, and counters since start
        self.alert_precision = Gauge("tft_alert_precision_ratio", "Share of judged risk-alert episodes a breach "
                                     "followed (rolling window)", ["metric", "window"], registry=self.registry)
        self.alert_recall = Gauge("tft_alert_recall_ratio", "Share of breaches a risk alert warned of (rolling "
                                  "window)", ["metric", "window"], registry=self.registry)
        self.alert_lead = Gauge("tft_alert_lead_seconds", "Median lead of the warned breaches (rolling window)",
                                ["metric", "window"], registry=self.registry)
        self.breaches = Counter("tft_breaches_total", "Breaches confirmed (warning tier held), by whether an alert "
                                "warned of them", ["metric", "warned"], registry=self.registry)
        self.judged = Counter("tft_alert_episodes_judged_total", "Closed risk-alert episodes judged, by outcome",
                              ["metric", "outcome"], registry=self.registry)
        for metric in RISK_METRICS:  # at 0 from the start, so increase() sees a metric's first breach too
            for flag in ("true", "false"):
                self.breaches.labels(metric, flag)
                self.judged.labels(metric, flag)

    def refuse(self, reason: str, count: int = 1) -> None:
        """Count refusals at a trust boundary."""
        self.refused.labels(reason).inc(count)
        self._refused[reason] = self._refused.get(reason, 0) + count

    def refused_counts(self) -> dict[str, int]:
        """Refusals by reason since start (for /status)."""
        return dict(self._refused)

    def feed(self, stored: int, rejected: int, duplicates: int) -> None:
        """Count feed results."""
        self.records.labels("stored").inc(stored)
        self.records.labels("rejected").inc(rejected)
        self.records.labels("duplicate").inc(duplicates)

    def forecast_gauge(self, metric: str) -> tuple[Any, float]:
        """The gauge of one forecast metric and the factor from the API's unit to its base unit."""
        name, factor = PROM_FORECAST_SERIES.get(metric, (f"tft_forecast_{metric}", 1.0))
        if name not in self.forecast:
            self.forecast[name] = self._gauge(name, f"Forecast of {metric} (base unit), per horizon and quantile",
                                              [*SERVER_LABELS, "horizon_seconds", "quantile"])
        return self.forecast[name], factor

    def cycle(self, result: CycleResult, model_loaded: bool, instances: ServerInstances | None = None,
              names: Collection[str] | None = None) -> None:
        """Refresh gauges after a forecast cycle (``instances`` adds the source instance label where known).

        ``names``: an incremental pass merged these servers' forecasts into ``result``: only their series are
        set (nothing cleared, no cycle duration observed); the counts are recomputed from ``result``.
        """
        if names is None:
            self.cycle_seconds.observe(result.seconds)
            for gauge in self.forecast.values():
                gauge.clear()
            self.risk.clear()
        counts = {"ok": 0, "warming_up": 0, "offline": 0, "not_ready": 0}
        last_value: dict[tuple[str, str], int] = {}
        for name, r in result.servers.items():
            p = r.prediction
            counts[p.status] += 1
            if p.status != "ok":
                continue
            server = (name, p.profile, (instances.get(name) if instances else None) or "")
            changed = names is None or name in names
            if changed:
                self.risk.labels(*server).set(p.risk_score or 0.0)
            for label, metrics in p.predictions.items():
                horizon = str(HORIZON_SECONDS[label])
                for metric, band in metrics.items():
                    if changed:
                        gauge, factor = self.forecast_gauge(metric)
                        for q in QUANTILE_LABELS:
                            gauge.labels(*server, horizon, QUANTILE_NUMBERS[q]).set(band[q] * factor)
                    key = (metric, horizon)
                    last_value[key] = last_value.get(key, 0) + (label in p.last_value_served.get(metric, ()))
        for status, n in counts.items():
            self.servers.labels(status).set(n)
        self.last_value_served.clear()
        for (metric, horizon), n in last_value.items():
            self.last_value_served.labels(metric, horizon).set(n)
        self.model_loaded.set(1 if model_loaded else 0)

    def open_alerts(self, firing: list[Alert], suppressed: list[Alert], instances: ServerInstances) -> None:
        """One ``tft_alert`` series per open alert (state firing or suppressed), and counts by level."""
        self.alert.clear()
        self.alert_breach.clear()
        levels = {"warning": 0, "critical": 0}
        for state, alerts in (("firing", firing), ("suppressed", suppressed)):
            for a in alerts:
                labels = (a.kind, a.level, a.server_name, a.profile, instances.get(a.server_name) or "", a.metric,
                          str(HORIZON_SECONDS[a.horizon]), state)
                self.alert.labels(*labels).set(1)
                if a.minutes_to_breach is not None:
                    self.alert_breach.labels(*labels).set(a.minutes_to_breach * 60)
                if state == "firing":
                    levels[a.level] += 1
        for level, n in levels.items():
            self.alerts.labels(level).set(n)

    def accuracy(self, live: LiveAccuracy, scored: int) -> None:
        """Refresh the live-accuracy gauges (fleet-wide rows of every window)."""
        self.scored.inc(scored)
        for gauge in (self.coverage, self.skill, self.qrisk, self.band_scale, self.degraded):
            gauge.clear()
        for window in ACCURACY_WINDOWS_HOURS:
            for row in live.rows(window):
                labels = (row["metric"], str(HORIZON_SECONDS[row["horizon"]]), window)
                if row["coverage_p10_p90"] is not None:
                    self.coverage.labels(*labels).set(row["coverage_p10_p90"])
                if row["skill_vs_persistence"] is not None:
                    self.skill.labels(*labels).set(row["skill_vs_persistence"])
                for q, key in (("0.5", "qrisk_50"), ("0.9", "qrisk_90")):
                    if row[key] is not None:
                        self.qrisk.labels(*labels, q).set(row[key])
        degraded = {f"{a.metric}|{a.horizon}" for a in live.active_degraded()}
        for metric, horizons in live.band_summary().items():
            for label in HORIZON_LABELS:
                low, high = horizons[label]
                seconds = str(HORIZON_SECONDS[label])
                self.band_scale.labels(metric, seconds, "low").set(low)
                self.band_scale.labels(metric, seconds, "high").set(high)
                self.degraded.labels(metric, seconds).set(1 if f"{metric}|{label}" in degraded else 0)

    def anomalies(self, board: AnomalyBoard | None, instances: ServerInstances) -> None:
        """One ``tft_anomaly_score`` series per scored server x metric x horizon; a server without one loses it."""
        self.anomaly.clear()
        for server, profile, metric, horizon, score in board.samples() if board is not None else ():
            self.anomaly.labels(server, profile, instances.get(server) or "", metric,
                                str(HORIZON_SECONDS[horizon])).set(score)

    def alert_quality(self, rows: list[dict[str, Any]], new_breaches: dict[tuple[str, bool], int],
                      new_judged: dict[tuple[str, bool], int]) -> None:
        """Refresh the alert-quality gauges (``live_alerts.AlertOutcomes.summary`` rows) and counters."""
        for gauge in (self.alert_precision, self.alert_recall, self.alert_lead):
            gauge.clear()
        for row in rows:
            labels = (row["metric"], row["window"])
            if row["precision"] is not None:
                self.alert_precision.labels(*labels).set(row["precision"])
            if row["recall"] is not None:
                self.alert_recall.labels(*labels).set(row["recall"])
            if row["median_lead_minutes"] is not None:
                self.alert_lead.labels(*labels).set(row["median_lead_minutes"] * 60.0)
        for (metric, warned), n in new_breaches.items():
            self.breaches.labels(metric, "true" if warned else "false").inc(n)
        for (metric, true_alarm), n in new_judged.items():
            self.judged.labels(metric, "true" if true_alarm else "false").inc(n)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        from prometheus_client import generate_latest

        if self.shard is None:
            return generate_latest(self.registry)
        return generate_latest(ShardLabelled(self.registry, str(self.shard.index)))


class ShardLabelled:
    """A registry seen with ``shard="K"`` added to every sample (``--shard K/N``), so the series of several
    shards never collide in Prometheus whatever the scrape config (Docs/SCALING.md)."""

    def __init__(self, registry: Any, shard: str) -> None:
        self.registry, self.shard = registry, shard

    def collect(self) -> Iterator[Any]:
        """The registry's metric families, each sample with the shard label."""
        from prometheus_client.metrics_core import Metric

        for family in self.registry.collect():
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = [sample._replace(labels={**sample.labels, "shard": self.shard})
                            for sample in family.samples]
            yield copy


# ============================================================================ ingest
class FeedRequestError(ToolkitError, ValueError):
    """A feed body that is refused as a whole: an HTTP status, an error code and a sentence."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class ServerInstances:
    """Which Prometheus ``instance`` (host:port) each server's records came from, when a feeder said so.

    Set by remote-write and by feeders that know it (the Prometheus adapter, the collector); kept in
    the store (table ``server_instances``) so a restart keeps the labels on /metrics and alerts.
    """

    _SCHEMA = ("CREATE TABLE IF NOT EXISTS server_instances (server TEXT PRIMARY KEY, instance TEXT NOT NULL) "
               "WITHOUT ROWID;")

    def __init__(self, store: MetricsStore) -> None:
        self.store = store
        store.execute_script(self._SCHEMA)
        self._known: dict[str, str] = dict(store.query("SELECT server, instance FROM server_instances"))

    def get(self, server: str) -> str | None:
        """The instance of ``server``, or None when no feeder named one."""
        return self._known.get(server)

    def note(self, pairs: dict[str, str]) -> None:
        """Remember new or changed pairs (only servers whose records were just stored should be passed)."""
        changed = [(server, instance) for server, instance in pairs.items() if self._known.get(server) != instance]
        if changed:
            self.store.execute_many("INSERT OR REPLACE INTO server_instances (server, instance) VALUES (?, ?)",
                                    changed)
            self._known.update(changed)


class ServerOwners:
    """Which key first fed each server (its id, never the key) and whether that key is bound to servers.

    Kept in the store (table ``server_keys``). A server first fed by a bound key (``servers=`` on its
    key-file line) is from then on refused to unbound keys: a shared collector key cannot squat it.
    """

    _SCHEMA = ("CREATE TABLE IF NOT EXISTS server_keys (server TEXT PRIMARY KEY, key_id TEXT NOT NULL, "
               "bound INTEGER NOT NULL, first_seen TEXT NOT NULL DEFAULT (datetime('now'))) WITHOUT ROWID;")

    def __init__(self, store: MetricsStore) -> None:
        self.store = store
        store.execute_script(self._SCHEMA)
        self._owners: dict[str, tuple[str, bool]] = {
            server: (key_id, bool(bound)) for server, key_id, bound in store.query(
                "SELECT server, key_id, bound FROM server_keys")}

    def refusal(self, server: str, grant: KeyGrant) -> str | None:
        """Why ``grant`` may not feed ``server`` (None: it may)."""
        if not grant.may_feed(server):
            return (f"this key may feed only servers matching {', '.join(grant.servers or ())} (its 'servers=' in "
                    f"the key file); '{server}' does not match. Use that host's own key ({API_REFERENCE_DOC}, "
                    f"Security)")
        owner = self._owners.get(server)
        if owner is not None and owner[1] and grant.servers is None:
            return (f"'{server}' is fed by a key bound to it (key {owner[0]}); keys without 'servers=' may not "
                    f"feed it ({API_REFERENCE_DOC}, Security)")
        return None

    def note(self, servers: set[str], grant: KeyGrant) -> None:
        """Record the first key of servers just fed."""
        new = [(s, grant.key_id, int(grant.servers is not None)) for s in servers if s not in self._owners]
        if new:
            self.store.execute_many("INSERT OR IGNORE INTO server_keys (server, key_id, bound) VALUES (?, ?, ?)", new)
            self._owners.update({s: (k, bool(b)) for s, k, b in new})

    def forget(self, servers: list[str]) -> None:
        """Drop the servers the store no longer holds (retention)."""
        for server in servers:
            self._owners.pop(server, None)
        if servers:
            self.store.execute_many("DELETE FROM server_keys WHERE server = ?", [(s,) for s in servers])


class MaintenanceCalendar:
    """Maintenance windows set by an operator (``PUT /admin/maintenance/{server}``), kept in the store.

    Alerts about a server in an open window are suppressed. A record's ``state: maintenance`` is data (the
    model reads it) but never suppresses alerts: an ingest key, held by many collectors, does not decide
    operator matters.
    """

    _SCHEMA = ("CREATE TABLE IF NOT EXISTS maintenance_windows (server TEXT PRIMARY KEY, starts REAL NOT NULL, "
               "ends REAL NOT NULL, reason TEXT NOT NULL, set_by TEXT NOT NULL) WITHOUT ROWID;")

    def __init__(self, store: MetricsStore, clock: Callable[[], float]) -> None:
        self.store, self.clock = store, clock
        store.execute_script(self._SCHEMA)
        self._windows: dict[str, tuple[float, float, str, str]] = {
            server: (starts, ends, reason, set_by) for server, starts, ends, reason, set_by in store.query(
                "SELECT server, starts, ends, reason, set_by FROM maintenance_windows")}

    def set(self, server: str, hours: float, reason: str, set_by: str) -> MaintenanceWindow:
        """Open (or replace) ``server``'s window from now for ``hours``; ValueError past the caps."""
        if not 0 < hours <= MAINTENANCE_MAX_HOURS:
            raise ValueError(f"hours must be in (0, {MAINTENANCE_MAX_HOURS}]")
        self.expire()
        if server not in self._windows and len(self._windows) >= DAEMON_STATE.maintenance_max_windows:
            raise ValueError(f"{DAEMON_STATE.maintenance_max_windows} maintenance windows are open "
                             f"(DAEMON_STATE.maintenance_max_windows); "
                             f"end one first")
        now = self.clock()
        row = (now, now + hours * 3600.0, reason, set_by)
        self.store.execute_many("INSERT OR REPLACE INTO maintenance_windows (server, starts, ends, reason, set_by) "
                                "VALUES (?, ?, ?, ?, ?)", [(server, *row)])
        self._windows[server] = row
        logger.info("maintenance: %s until %s (%s), set by key %s", server, _iso(row[1]), reason or "no reason",
                    set_by or "-")
        return self._document(server, row)

    def end(self, server: str) -> bool:
        """Close ``server``'s window now; False when it had none."""
        if self._windows.pop(server, None) is None:
            return False
        self.store.execute_many("DELETE FROM maintenance_windows WHERE server = ?", [(server,)])
        logger.info("maintenance: %s ended by an operator", server)
        return True

    def active(self) -> set[str]:
        """Servers in maintenance now."""
        now = self.clock()
        return {server for server, (starts, ends, _, _) in self._windows.items() if starts <= now < ends}

    def windows(self) -> list[MaintenanceWindow]:
        """Open windows, soonest ending first."""
        self.expire()
        return [self._document(s, row) for s, row in sorted(self._windows.items(), key=lambda kv: kv[1][1])]

    def expire(self) -> None:
        """Forget windows that have ended."""
        now = self.clock()
        gone = [s for s, (_, ends, _, _) in self._windows.items() if ends <= now]
        for server in gone:
            del self._windows[server]
        if gone:
            self.store.execute_many("DELETE FROM maintenance_windows WHERE server = ?", [(s,) for s in gone])

    @staticmethod
    def _document(server: str, row: tuple[float, float, str, str]) -> MaintenanceWindow:
        return MaintenanceWindow(server_name=server, starts_at=_iso(row[0]), ends_at=_iso(row[1]), reason=row[2],
                                 set_by=row[3])


def _iso(epoch_seconds: float) -> str:
    return isoformat_utc(datetime.fromtimestamp(epoch_seconds, UTC))


class FeedIngest:
    """Validate a batch, store the valid records durably, merge them into the windows.

    ``clock`` is the daemon's own time (epoch seconds): no record may be stamped more than
    ``max_future_seconds`` after it, nor older than the store keeps, so no client can move the fleet's
    clock. What a key may introduce is bounded: servers it is bound to, ``max_servers`` in all, and
    new names at ``DAEMON_STATE.new_servers_per_minute`` per key.
    """

    def __init__(self, store: MetricsStore, fleet: FleetWindows, lock: threading.Lock, counters: Counters,
                 metrics: PrometheusMetrics, clock: Callable[[], float] = time.time,
                 max_future_seconds: float = FEED_MAX_FUTURE_SECONDS,
                 max_servers: int = DAEMON_STATE.max_tracked_servers,
                 retention_days: int = DAEMON_STATE.retention_days, shard: Shard | None = None) -> None:
        self.store, self.fleet, self.lock, self.counters, self.metrics = store, fleet, lock, counters, metrics
        self.shard = shard
        self.clock = clock
        self.max_future_seconds = max_future_seconds
        self.max_servers = max_servers
        self.retention_days = retention_days
        self.instances = ServerInstances(store)
        self.owners = ServerOwners(store)
        # per key id
        self.new_servers = RateLimiter(DAEMON_STATE.new_servers_per_minute, DAEMON_STATE.new_servers_burst)
        # servers with records merged since the last look (under ``lock``): the forecast loop checks only
        # these for "ready for the last cycle's bucket only now" (Daemon.run_incremental)
        self.touched: set[str] = set()

    def body(self, body: bytes, grant: KeyGrant = OPEN_GRANT) -> FeedResponse:
        """A raw ``POST /feed`` body -> what happened to each record (runs off the event loop).

        Raises FeedRequestError when the body as a whole is not a batch.
        """
        instances: dict[str, str] | None = None
        try:  # fast path: parse and validate the whole body in pydantic's Rust core
            request = FEED_ADAPTER.validate_json(body)
            records: list[Any] = request.records
            instances = request.instances
        except ValidationError:
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise FeedRequestError(400, "invalid_json", f"The body is not JSON: {exc}.") from None
            except RecursionError:
                raise FeedRequestError(400, "invalid_json", "The body is nested too deeply to be a feed "
                                                            "batch.") from None
            records = payload.get("records") if isinstance(payload, dict) else None
            if not isinstance(records, list):
                raise FeedRequestError(422, "invalid_request", 'Expected {"records": [ ... ]}. See '
                                       + API_REFERENCE_DOC) from None
            try:  # the batch's own shape is fine; only its records are judged one by one below
                instances = INSTANCES_ADAPTER.validate_python(payload.get("instances"))
            except ValidationError as exc:
                raise FeedRequestError(422, "invalid_request", f"'instances' must map server names to Prometheus "
                                       f"instance labels (printable, no spaces or quotes, at most "
                                       f"{INSTANCE_MAX_LENGTH} characters): {exc.errors()[0]['msg']}. See "
                                       f"{API_REFERENCE_DOC}.") from None
        if len(records) > MAX_RECORDS_PER_REQUEST:
            raise FeedRequestError(413, "too_many_records", f"At most {MAX_RECORDS_PER_REQUEST} records per "
                                                            f"request; split the batch.")
        return self(records, instances, grant)

    def __call__(self, raw_records: list[Any], instances: dict[str, str] | None = None,
                 grant: KeyGrant = OPEN_GRANT) -> FeedResponse:
        """Exactly what happened to each record: stored, duplicate, or rejected and why.

        ``instances`` (server -> Prometheus instance) is remembered for servers with a record stored here.
        """
        parsed, rejected = self._parse(raw_records)
        valid, valid_index = self._admit(parsed, rejected, grant, instances)
        rejected.sort(key=lambda r: r.index)
        known_before = set(self.fleet.servers)
        stored_local, duplicate_local, aggregates = self.store.add_records(valid) if valid else ([], [], [])
        with self.lock:
            self.fleet.merge(aggregates, {r["server_name"]: r["profile"] for r in valid})
            self.touched.update(a.server for a in aggregates)
        stored = [valid_index[i] for i in stored_local]
        duplicates = [valid_index[i] for i in duplicate_local]
        accepted = {valid[i]["server_name"] for i in (*stored_local, *duplicate_local)}
        self.owners.note(accepted, grant)
        if instances:
            self.instances.note({s: i for s, i in instances.items() if s in accepted})
        new_servers = sorted({valid[i]["server_name"] for i in stored_local} - known_before)
        self.counters.stored += len(stored)
        self.counters.rejected += len(rejected)
        self.counters.duplicates += len(duplicates)
        if stored:
            self.counters.last_stored_at = time.monotonic()
        self.metrics.feed(len(stored), len(rejected), len(duplicates))
        return FeedResponse(received=len(raw_records), stored=stored, duplicates=duplicates, rejected=rejected,
                            new_servers=new_servers)

    @staticmethod
    def _parse(raw_records: list[Any]) -> tuple[list[tuple[int, LinborgRecord]], list[RejectedRecord]]:
        """Contract-validate: the whole batch in one call, or record by record to name each rejection."""
        if all(isinstance(r, LinborgRecord) for r in raw_records):
            return list(enumerate(raw_records)), []
        try:
            return list(enumerate(BATCH_ADAPTER.validate_python(raw_records))), []
        except ValidationError:
            pass
        parsed, rejected = [], []
        for i, raw in enumerate(raw_records):
            try:
                parsed.append((i, RECORD_ADAPTER.validate_python(raw)))
            except ValidationError as exc:
                first = exc.errors()[0]
                name = raw.get("server_name") if isinstance(raw, dict) else None
                rejected.append(RejectedRecord(index=i, server_name=name if isinstance(name, str) else None,
                                               field=".".join(str(p) for p in first["loc"]) or "record",
                                               reason=first["msg"]))
        return parsed, rejected

    def _admit(self, parsed: list[tuple[int, LinborgRecord]], rejected: list[RejectedRecord],
               grant: KeyGrant = OPEN_GRANT,
               instances: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[int]]:
        """Records the daemon can take, as the store's dicts (with ``ts_ns``); the rest rejected with why.

        A record is refused when it is stamped too far ahead of the daemon's clock, older than the
        late-record window (``DAEMON_STATE.max_record_age_hours``) or than the store keeps, names a different profile
        than its server already has, names a server its key may not feed, or would add a server past
        the cap or faster than the key's new-server rate, or (``--shard``) belongs to another shard.
        """
        now = self.clock()
        latest_ns = int((now + self.max_future_seconds) * 1e9)
        stamps = [int(r.timestamp.timestamp()) * 1_000_000_000 + r.timestamp.microsecond * 1000 for _, r in parsed]
        # Late records are taken up to DAEMON_STATE.max_record_age_hours behind the newest bucket, the newest
        # of this very
        # batch included (an empty store no longer takes a batch spanning 1970 to today), and nothing older
        # than DAEMON_STATE.feed_max_age_days (or the retention, when longer) before the daemon's own clock.
        newest = max([self.fleet.newest_bucket or -1, *(int(bucket_of_ns(t)) for t in stamps if t <= latest_ns)])
        floor_days = max(DAEMON_STATE.feed_max_age_days, self.retention_days)
        oldest_ok = max(int(bucket_of_ns(int(now * 1e9))) - floor_days * STEPS_PER_DAY,
                        newest - DAEMON_STATE.max_record_age_hours * STEPS_PER_HOUR)
        profiles = {name: window.profile for name, window in self.fleet.servers.items()}
        tracked = len(profiles)
        verdicts: dict[str, str | None] = {}  # per server of this batch: why it is refused (None: taken)
        valid, valid_index = [], []
        for (i, record), ts_ns in zip(parsed, stamps, strict=True):
            name = record.server_name
            reason, field_name = None, "timestamp"
            if ts_ns > latest_ns:
                reason = (f"{isoformat_utc(record.timestamp)} is {(ts_ns / 1e9 - now):.0f} s ahead of the daemon's "
                          f"clock ({isoformat_utc(datetime.fromtimestamp(now, UTC))}); records may be at "
                          f"most {self.max_future_seconds:g} s ahead. Fix the sender's clock (NTP)")
            elif bucket_of_ns(ts_ns) < oldest_ok:
                reason = (f"older than the feed accepts: late records up to {DAEMON_STATE.max_record_age_hours} h "
                          f"behind the "
                          f"newest bucket ({bucket_iso(newest)}, this batch included), and nothing more than "
                          f"{floor_days} days before the daemon's clock")
            else:
                if name not in verdicts:
                    verdicts[name] = (self._shard_verdict(name, instances)
                                      or self._server_verdict(name, name in profiles, tracked, grant))
                    if verdicts[name] is None and name not in profiles:
                        tracked += 1
                if verdicts[name] is not None:
                    field_name, reason = "server_name", verdicts[name]
                elif profiles.setdefault(name, record.profile) != record.profile:
                    field_name = "profile"
                    reason = (f"'{name}' is tracked as '{profiles[name]}'; a server's "
                              f"profile does not change. Send '{profiles[name]}', or give a "
                              f"re-purposed host a new name ({DATA_CONTRACT_DOC}, Server names)")
            if reason is not None:
                rejected.append(RejectedRecord(index=i, server_name=name, field=field_name, reason=reason))
                continue
            data = dict(record.__dict__)  # the validated fields, without model_dump's copying machinery
            data["ts_ns"] = ts_ns
            valid.append(data)
            valid_index.append(i)
        return valid, valid_index

    def _shard_verdict(self, name: str, instances: dict[str, str] | None) -> str | None:
        """Why server ``name`` is not this shard's (None: it is, or the daemon is not sharded); counted."""
        if self.shard is None:
            return None
        instance = (instances or {}).get(name) or self.instances.get(name)
        key = shard_key(name, instance)
        if self.shard.owns(key):
            return None
        self.metrics.refuse("other_shard")
        what = f"instance label '{key}'" if instance else "server name"
        return (f"'{name}' belongs to shard {self.shard.owner(key)}/{self.shard.count} (Prometheus hashmod of its "
                f"{what} over {self.shard.count}); this daemon is shard {self.shard}. Send it to that shard's daemon, "
                f"or route with the shipped hashmod config ({SCALING_DOC})")

    def _server_verdict(self, name: str, known: bool, tracked: int, grant: KeyGrant) -> str | None:
        """Why records of server ``name`` are refused from this key (None: taken); counted once per batch."""
        refusal = self.owners.refusal(name, grant)
        if refusal is not None:
            self.metrics.refuse("key_not_bound_to_server")
            return refusal
        if known:
            return None
        if tracked >= self.max_servers:
            self.metrics.refuse("max_servers")
            return (f"the daemon tracks {tracked} servers, its cap (--max-servers, DAEMON_STATE.max_tracked_servers = "
                    f"{self.max_servers}); a new server is taken once one is released (idle past retention), or "
                    f"run another daemon for part of the fleet ({API_REFERENCE_DOC}, Limits)")
        allowed, wait = self.new_servers.allow(grant.key_id)
        if not allowed:
            self.metrics.refuse("new_server_rate")
            return (f"this key introduced new servers faster than {DAEMON_STATE.new_servers_per_minute} a minute "
                    f"(burst "
                    f"{DAEMON_STATE.new_servers_burst}); retry this server's records in {wait:.0f} s "
                    f"({API_REFERENCE_DOC}, "
                    f"Limits)")
        return None


# ============================================================================ publishing and fan-out
class PublishedCycle:
    """The latest cycle and its /predictions/current document, serialised once."""

    def __init__(self) -> None:
        self.result: CycleResult | None = None  # None until the first cycle
        self.json = b""  # the result's /predictions/current document
        self.model_version: str | None = None  # the model that made ``result``

    def publish(self, result: CycleResult, engine: ForecastEngine) -> None:
        """Make ``result`` the one every reader sees (its document serialised here, once)."""
        encoded = fleet_document(result, engine.model_version, engine.sources).model_dump_json().encode()
        self.json = encoded  # bytes first: a reader that sees the new result also sees its document
        self.result = result
        self.model_version = engine.model_version


class _Socket(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class SubscriberLimit(Exception):
    """A WebSocket subscription refused because a cap is reached (the reason is the message).

    Plain, not a ToolkitError: control flow inside the WebSocket handler, which closes the socket with the
    reason; it never reaches a command line or an exit code."""


class Subscriber:
    """One WebSocket: a single slot holding the newest document not yet sent (an older one is dropped)."""

    def __init__(self, socket: _Socket, owner: str) -> None:
        self.socket, self.owner = socket, owner
        self.pending: str | None = None
        self.ready = asyncio.Event()

    def offer(self, message: str) -> None:
        """Hand the newest document over; never waits (called from the forecast loop)."""
        self.pending = message  # a previous one not taken yet is dropped: only the newest matters
        self.ready.set()


class Subscribers:
    """WebSocket fan-out that never lets a reader stall the daemon.

    The forecast loop only *offers* each new document (:meth:`publish`, no await); each socket's own task
    (:meth:`pump`) sends it, with a timeout: a socket that does not drain within ``send_timeout`` seconds
    is closed and dropped. Subscriptions are capped in all and per key (``owner``).
    """

    def __init__(self, max_total: int = DAEMON_STATE.ws_max_subscribers,
                 max_per_owner: int = DAEMON_STATE.ws_max_subscribers_per_key,
                 send_timeout: float = DAEMON_STATE.ws_send_timeout_seconds,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.max_total, self.max_per_owner, self.send_timeout = max_total, max_per_owner, send_timeout
        self.on_refused = on_refused or (lambda reason: None)
        self.members: dict[_Socket, Subscriber] = {}

    def add(self, socket: _Socket, owner: str = "") -> Subscriber:
        """Subscribe a connected socket; SubscriberLimit (with the reason) past a cap."""
        if len(self.members) >= self.max_total:
            self.on_refused("ws_subscribers_total")
            raise SubscriberLimit(f"the daemon serves at most {self.max_total} WebSocket subscribers "
                                  f"(DAEMON_STATE.ws_max_subscribers); retry later or poll GET /predictions/current")
        if sum(1 for m in self.members.values() if m.owner == owner) >= self.max_per_owner:
            self.on_refused("ws_subscribers_per_key")
            raise SubscriberLimit(f"this key already holds {self.max_per_owner} WebSocket subscriptions "
                                  f"(DAEMON_STATE.ws_max_subscribers_per_key); close one first")
        member = self.members[socket] = Subscriber(socket, owner)
        return member

    def discard(self, socket: _Socket) -> None:
        """Unsubscribe (idempotent)."""
        member = self.members.pop(socket, None)
        if member is not None:
            member.ready.set()  # its pump ends

    def publish(self, message: str) -> None:
        """Offer ``message`` to every subscriber: no network I/O, returns at once."""
        for member in list(self.members.values()):
            member.offer(message)

    async def pump(self, member: Subscriber) -> None:
        """Send ``member`` each newest document until it is unsubscribed or a send times out or fails."""
        while member.socket in self.members:
            await member.ready.wait()
            member.ready.clear()
            message, member.pending = member.pending, None
            if message is None or member.socket not in self.members:
                continue
            try:
                await asyncio.wait_for(member.socket.send_text(message), self.send_timeout)
            except TimeoutError:
                self.on_refused("ws_send_timeout")
                logger.warning("a WebSocket subscriber (%s) did not take a document within %.0f s; closed it",
                               member.owner or "anonymous", self.send_timeout)
                self.discard(member.socket)
                return
            except Exception:  # noqa: BLE001 - a dead socket of any kind is dropped, the rest still get theirs
                self.discard(member.socket)
                return


# ============================================================================ the daemon
class CycleLog:
    """One INFO line per ``DAEMON_STATE.log_summary_seconds`` about the cycles since the last one (each cycle is DEBUG).

    A demo completes a bucket every second; a line per cycle would bury every warning.
    """

    def __init__(self, every_seconds: float = DAEMON_STATE.log_summary_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_seconds, self.clock = every_seconds, clock
        self._since = clock()
        self._ms: list[float] = []
        self._forecast = self._tracked = 0
        self._last_time = ""
        self.alerts: tuple[int, int, int] | None = None  # (open, opened total, resolved total) after the cycle
        self._alerts_at_flush: tuple[int, int, int] | None = None

    def add(self, result: CycleResult, alerts: tuple[int, int, int] | None = None) -> None:
        """Count one cycle (``alerts``: the lifecycle's open / opened / resolved counts after it); log the
        summary when the interval is over."""
        self.alerts = alerts if alerts is not None else self.alerts
        self._ms.append(result.seconds * 1000.0)
        self._forecast, self._tracked = result.forecast_count, len(result.servers)
        self._last_time = result.prediction_time
        if self.clock() - self._since >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        """Log the summary now (nothing when no cycle ran)."""
        if self._ms:
            alerts = ""
            if self.alerts is not None:
                before = self._alerts_at_flush or (0, 0, 0)
                alerts = (f"; alerts: {self.alerts[0]} open, {self.alerts[1] - before[1]} opened, "
                          f"{self.alerts[2] - before[2]} resolved")
                self._alerts_at_flush = self.alerts
            logger.info("%d forecast cycles in the last %.0f s, up to %s: %d of %d servers forecast; cycle median "
                        "%.1f ms, max %.1f ms%s", len(self._ms), self.clock() - self._since, self._last_time,
                        self._forecast, self._tracked, float(np.median(self._ms)), max(self._ms), alerts)
        self._since, self._ms = self.clock(), []


class HousekeepingLog:
    """One INFO line per ``DAEMON_STATE.housekeeping_summary_seconds`` with what housekeeping removed since the last
    one.

    Each run is a DEBUG line; a run that releases a server or removes ``DAEMON_STATE.housekeeping_loud_rows`` rows of
    one
    kind is logged at INFO when it happens (a failing one is logged by the forecast loop).
    """

    def __init__(self, every_seconds: float = DAEMON_STATE.housekeeping_summary_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_seconds, self.clock = every_seconds, clock
        self._since = clock()
        self._runs = 0
        self._totals: dict[str, int] = {}

    def add(self, removed: dict[str, int]) -> None:
        """Count one run's removals; log it at once if it matters, the summary when the interval is over."""
        self._runs += 1
        for kind, count in removed.items():
            self._totals[kind] = self._totals.get(kind, 0) + count
        loud = (removed.get("servers_released", 0)
                or max(removed.values(), default=0) >= DAEMON_STATE.housekeeping_loud_rows)
        (logger.info if loud else logger.debug)("housekeeping: removed %s", removed)
        if self.clock() - self._since >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        """Log the summary now (nothing when no run removed anything)."""
        removed = {kind: count for kind, count in self._totals.items() if count}
        if removed:
            logger.info("housekeeping: %d runs in the last %.0f s removed %s", self._runs, self.clock() - self._since,
                        ", ".join(f"{count} {kind}" for kind, count in removed.items()))
        self._since, self._runs, self._totals = self.clock(), 0, {}


class Daemon:
    """Everything the endpoints share: store, windows, model, the published cycle, counters."""

    def __init__(self, settings: DaemonSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.keys = KeyStore(settings.api_key, settings.api_key_file)  # KeyFileError: refuse to start
        self.store = MetricsStore(settings.store_path)  # StoreError: refuse to start, with the reason
        self.fleet = self._open_windows()
        self.engine: ForecastEngine | None = None
        self.accuracy: LiveAccuracy | None = None  # the loaded model's live accuracy and band calibration
        self.accuracy_errors = 0
        self.alerts = AlertTracker(self.store)  # identity, start, end, hold-down, maintenance, history
        self.outcomes = AlertOutcomes(self.store)  # breaches confirmed and alert episodes judged (live_alerts.py)
        self.alert_errors = 0
        self.model_error: str | None = None
        self.counters = Counters()
        self.published = PublishedCycle()
        self.last_origin: int | None = None
        self._forecast_for_origin: set[str] = set()  # servers forecast for last_origin (by its cycle or a pass)
        self.failed_cycles = 0  # in a row; /health is degraded from DAEMON_STATE.health_degraded_after_failed_cycles on
        self.last_cycle_error: str | None = None
        self._retry_at = 0.0  # a failed cycle is retried from this monotonic time on
        self.lock = threading.Lock()  # guards fleet windows between feed and forecast threads
        self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)  # per valid key
        # per address
        self.anonymous_limiter = RateLimiter(DAEMON_STATE.anonymous_rate_per_minute, DAEMON_STATE.anonymous_rate_burst)
        self.metrics = PrometheusMetrics(settings.partition)
        self.subscribers = Subscribers(on_refused=self.metrics.refuse)
        self.cycle_log = CycleLog()
        self.housekeeping_log = HousekeepingLog()
        self.ingest = FeedIngest(self.store, self.fleet, self.lock, self.counters, self.metrics, clock,
                                 settings.max_future_seconds, settings.max_servers, settings.retention_days,
                                 settings.partition)
        self.maintenance = MaintenanceCalendar(self.store, clock)  # operator-set windows that suppress alerts
        self._progress_at = time.monotonic()  # the last completed cycle (or start, or a model load)
        self._housekept_at = float("-inf")
        self.instances = self.ingest.instances  # server -> Prometheus instance, where a feeder said
        self.remote_write = RemoteWriteReceiver(self.ingest, self.metrics.registry,  # POST /api/v1/write
                                                settings.remote_write_mapping or REMOTE_WRITE_MAPPING_FILE,
                                                clock=clock, max_future_seconds=settings.max_future_seconds,
                                                shard=settings.partition)
        self.otlp = OtlpReceiver(self.ingest, self.metrics.registry,  # POST /v1/metrics (OpenTelemetry)
                                 settings.otlp_mapping or OTLP_MAPPING_FILE, clock=clock,
                                 max_future_seconds=settings.max_future_seconds, on_refused=self.metrics.refuse,
                                 shard=settings.partition)
        self.metrics.registry.register(ObservedSeries(self))  # actuals, tiers and ages beside the forecasts
        self.demo = DemoScenario(scenario="healthy")
        self.model_reloads = 0  # promotions / rollbacks picked up from the latest link
        self.model_reload_failures = 0
        self._failed_model: Path | None = None  # a damaged new target is not retried until the link moves again
        self._watched_at = time.monotonic()
        self.retrainer: RetrainScheduler | None = None
        models_dir = settings.models_dir
        if settings.retrain_every_seconds and models_dir is None:
            self.store.close()
            raise ValueError(f"--retrain-every needs --model-dir <models-dir>/{LATEST_MODEL_LINK} (the daemon follows "
                             f"that link to pick up promoted models); got {settings.model_dir}. See {RETRAIN_DOC}.")
        if models_dir is not None:
            try:  # a sharded daemon's retrain must read every shard's store (retrain_scheduler)
                self.retrainer = RetrainScheduler(store=settings.store_path, models_dir=models_dir,
                                                  every_seconds=settings.retrain_every_seconds,
                                                  extra_args=list(settings.retrain_args), shard=settings.shard)
            except ValueError:
                self.store.close()
                raise
        self.load_model()
        self.notifier: AlertmanagerNotifier | None = None  # pushes firing alerts to Alertmanager (own threads)
        if settings.alertmanager_urls:
            try:
                self.notifier = AlertmanagerNotifier(settings.alertmanager_urls, settings.dashboard_url,
                                                     instance_of=self.instances.get, registry=self.metrics.registry,
                                                     resend_seconds=settings.alertmanager_resend_seconds)
            except ValueError:  # a URL that is not one (the CLI checks first; this is for in-process use)
                self.store.close()
                raise
        if self.fleet.servers:
            logger.info("rebuilt windows of %d servers from %s (newest bucket %s)", len(self.fleet.servers),
                        settings.store_path, bucket_iso(self.fleet.newest_bucket or 0))

    def _open_windows(self) -> FleetWindows:
        """Quarantine records from the future (an older daemon accepted them), then rebuild the windows."""
        latest = int(bucket_of_ns(int((self.clock() + self.settings.max_future_seconds) * 1e9)))
        try:
            moved = self.store.quarantine_after(latest)
            if moved:
                logger.warning("store %s held %d buckets stamped after the daemon's clock (%s); moved them to "
                               "table quarantined_buckets, keeping all earlier history", self.settings.store_path,
                               moved, bucket_iso(latest))
            return self.store.load_windows()
        except sqlite3.DatabaseError as exc:
            self.store.close()
            raise StoreError(f"the metrics store {self.settings.store_path} cannot be read ({exc}). Fix: move it "
                             f"aside and start with an empty store, or restore a backup. See "
                             f"{API_REFERENCE_DOC} (Storage and retention).") from None

    @property
    def model_version(self) -> str:
        """The loaded model's folder name, or "none"."""
        return self.engine.model_version if self.engine else "none"

    def load_model(self) -> None:
        """(Re)load the model from the configured directory.

        At start a failure raises (or, with ``allow_no_model``, leaves no model and remembers
        why). On a reload a failure raises ModelLoadError and the model already loaded keeps
        serving: a damaged new model never takes forecasts away.
        """
        if self.settings.model_dir is None:
            self.model_error = "no model directory configured (--model-dir)"
            return
        try:
            # Load the folder a link points at now, so a later promotion is seen as a change.
            loaded = load_model(self.settings.model_dir.resolve())
        except (ModelLoadError, FileNotFoundError) as exc:
            if self.engine is not None:
                logger.error("model reload failed, the loaded model %s keeps serving: %s",
                             self.engine.model_version, exc)
                raise ModelLoadError(str(exc)) from None
            self.model_error = str(exc)
            if not self.settings.allow_no_model:
                raise
            logger.error("model not loaded: %s", exc)
            return
        engine = ForecastEngine(loaded)
        if loaded.spec.history_buckets > self.fleet.capacity:
            logger.warning("model %s reads %d buckets of history (encoder and yesterday's inputs) but the daemon keeps "
                           "%d per server in memory (STORE.memory_buckets): its forecasts get the older part of that "
                           "history missing. Raise STORE.memory_buckets in config.py to at least %d and restart "
                           "(Docs/API_REFERENCE.md, Limits)", loaded.model_dir.name, loaded.spec.history_buckets,
                           self.fleet.capacity, loaded.spec.history_buckets)
        if self.accuracy is None or self.accuracy.model_version != engine.model_version:
            self.accuracy = LiveAccuracy(self.store, engine.metrics, engine.model_version,
                                         band_adaptation=self.settings.band_adaptation, known=engine.known,
                                         live_selection=self.settings.live_selection)
        engine.band_adjuster = self.accuracy.adjuster
        engine.selection = self.accuracy.selection
        self.accuracy.established_buckets = int(self.settings.established_hours * STEPS_PER_HOUR)
        self.engine = engine
        self._progress_at = time.monotonic()
        self.model_error = None
        self.last_origin = None  # forecast again with the new model
        logger.info("model loaded: %s (%d servers in its mapping)", loaded.model_dir, len(loaded.encoder))

    # ------------------------------------------------------------------ forecast loop
    def complete_through(self) -> int | None:
        """Last complete bucket: data for a later bucket arrived, or the clock passed it."""
        newest = self.fleet.newest_bucket
        if newest is None:
            return None
        clock = int((self.clock() - DAEMON_STATE.bucket_grace_seconds) // SAMPLING_INTERVAL_SECONDS) - 1
        return min(newest, max(newest - 1, clock))

    @property
    def health_problem(self) -> str | None:
        """Why /health says "degraded", or None: forecast cycles failing in a row, or records arriving while
        no cycle completed for ``health_stall_seconds`` although a complete bucket waits (a stalled loop).

        The sentence is for an unauthenticated probe: it names the condition, never an exception's text
        (that is in /status and the log)."""
        if self.failed_cycles >= DAEMON_STATE.health_degraded_after_failed_cycles:
            return (f"the last {self.failed_cycles} forecast cycles failed; the reason is in /status "
                    f"(last_cycle_error) and the daemon's log")
        if self.engine is not None:
            quiet = time.monotonic() - self._progress_at
            pending = self.complete_through()
            if (quiet > self.settings.health_stall_seconds and pending is not None and pending != self.last_origin
                    and self.counters.last_stored_at > self._progress_at):
                return (f"records keep arriving but no forecast cycle completed for {quiet:.0f} s (more than "
                        f"{self.settings.health_stall_seconds:g} s) although bucket {bucket_iso(pending)} is "
                        f"complete: the forecast loop is stalled")
        return None

    def run_cycle(self, origin: int) -> CycleResult | None:
        """One forecast cycle (runs in a worker thread); a failure is counted, logged and retried later."""
        engine = self.engine
        if engine is None:
            return None
        try:
            result = self._cycle(engine, origin)
        except Exception as exc:  # noqa: BLE001 - a failed cycle is counted and reported, never fatal
            self.counters.cycle_errors += 1
            self.failed_cycles += 1
            self.last_cycle_error = f"{type(exc).__name__}: {exc}"
            backoff = min(DAEMON_STATE.forecast_retry_max_seconds,
                          DAEMON_STATE.forecast_poll_seconds * 2 ** self.failed_cycles)
            self._retry_at = time.monotonic() + backoff
            if self.failed_cycles == 1:  # the traceback once; then one line per retry, backing off
                logger.exception("forecast cycle for %s failed", bucket_iso(origin))
            else:
                logger.error("forecast cycle for %s failed again (%d in a row, next try in %.0f s): %s",
                             bucket_iso(origin), self.failed_cycles, backoff, self.last_cycle_error)
            return None
        if self.failed_cycles:
            logger.info("forecast cycles recovered after %d failures", self.failed_cycles)
        self.failed_cycles, self.last_cycle_error = 0, None
        return result

    def _cycle(self, engine: ForecastEngine, origin: int) -> CycleResult:
        """Forecast, store the horizon summary, publish, trim."""
        began = time.perf_counter()
        self._score_matured(origin)
        with self.lock:
            self.ingest.touched.clear()  # this cycle reads every server's windows as they are now
            result = engine.forecast(self.fleet, origin, await_late=DAEMON_STATE.await_late_buckets)
        uncarried = self._carry_over(result, engine)
        if uncarried:  # late, but no forecast of theirs to keep (a restart, a new model): forecast them as before
            with self.lock:
                rest = engine.forecast(self.fleet, origin, names=uncarried)
            result.servers.update(rest.servers)
            result.forecast_count += rest.forecast_count
            result.seconds += rest.seconds
            result.awaiting = [name for name in result.awaiting if name not in rest.servers]
        blobs = {name: r.horizon_blob for name, r in result.servers.items() if r.horizon_blob is not None}
        self._save_forecasts(engine, origin, blobs)
        self.published.publish(result, engine)
        self._track_alerts(result, origin)
        self.last_origin = origin
        self._forecast_for_origin = set(blobs)
        self._count_cycle(result)
        self.metrics.cycle(result, model_loaded=True, instances=self.instances)
        self.store.write_ledger()  # what a restart must find again (a shorter store is reported as a loss)
        self.counters.last_cycle_total_ms = round((time.perf_counter() - began) * 1000.0, 2)
        logger.debug("forecast cycle %s: %d servers forecast, %d tracked, %.1f ms", result.prediction_time,
                     result.forecast_count, len(result.servers), result.seconds * 1000.0)
        self.cycle_log.add(result, self.alerts.counts())
        self._progress_at = time.monotonic()
        return result

    def _save_forecasts(self, engine: ForecastEngine, origin: int, blobs: dict[str, bytes]) -> None:
        """Store forecasts made for ``origin`` with the band multipliers they were served with."""
        if blobs:
            scales = engine.band_adjuster.scales if engine.band_adjuster is not None else None
            self.store.save_forecasts(origin, blobs, scales_blob(scales) if scales is not None else None)

    def _carry_over(self, result: CycleResult, engine: ForecastEngine) -> list[str]:
        """Servers whose data for the cycle's bucket are late keep the forecast the last cycle published for
        them (not stored again, not fed to the alert lifecycle) until an incremental pass forecasts them.

        Returns the late servers with no such forecast (after a restart or a model change): the cycle
        forecasts those over the gap, as it did before late data were awaited, rather than show them not ready.
        """
        previous = self.published.result
        same_model = previous is not None and self.published.model_version == engine.model_version
        uncarried = []
        for name in result.awaiting:
            old = previous.servers.get(name) if same_model else None
            if old is not None and old.prediction.status == "ok":
                result.servers[name] = replace(old, horizon_blob=None)
            else:
                uncarried.append(name)
        return uncarried

    def run_incremental(self) -> CycleResult | None:
        """Forecast the servers that became ready for the last cycle's bucket after it ran, and merge them
        into the published cycle (runs in a worker thread; None: nothing to do, or it failed).

        Ready: fed since the last look (``FeedIngest.touched``), data through that bucket, history enough for
        the model, and not forecast for it yet (a backfill that reached the present, a late collector, a
        shard that took over a slice). At most ``DAEMON_STATE.incremental_max_servers`` per pass; the rest
        wait for the next poll. A failure is logged and counted; those servers wait for the next cycle.
        """
        engine, origin, published = self.engine, self.last_origin, self.published.result
        if engine is None or origin is None or published is None or published.origin != origin:
            return None
        try:
            return self._incremental(engine, origin, published)
        except Exception:  # noqa: BLE001 - the published cycle stands; the next cycle forecasts them
            self.counters.incremental_errors += 1
            (logger.exception if self.counters.incremental_errors == 1 else logger.error)(
                "incremental forecast pass at %s failed (%d so far)", bucket_iso(origin),
                self.counters.incremental_errors)
            return None

    def _incremental(self, engine: ForecastEngine, origin: int, published: CycleResult) -> CycleResult | None:
        needed = engine.spec.min_encoder_length
        with self.lock:
            touched, self.ingest.touched = self.ingest.touched, set()
            windows = self.fleet.servers
            ready = sorted(name for name in touched if name not in self._forecast_for_origin and name in windows
                           and (windows[name].last_sample_bucket() or origin - 1) >= origin
                           and origin - (windows[name].first_bucket or origin) + 1 >= needed)
            if not ready:
                return None
            batch = ready[:DAEMON_STATE.incremental_max_servers]
            self.ingest.touched.update(ready[len(batch):])  # the next poll takes them
            part = engine.forecast(self.fleet, origin, names=batch)
        fresh = {name: r for name, r in part.servers.items() if r.horizon_blob is not None}
        if not fresh:  # e.g. non-finite values in the window: the cycle's entry stands
            return None
        self._save_forecasts(engine, origin, {name: r.horizon_blob for name, r in fresh.items()})
        merged = CycleResult(origin=origin, prediction_time=published.prediction_time,
                             servers={**published.servers, **fresh}, seconds=published.seconds,
                             forecast_count=published.forecast_count + len(fresh),
                             awaiting=[name for name in published.awaiting if name not in fresh])
        self.published.publish(merged, engine)
        self._forecast_for_origin.update(fresh)
        self._track_alerts(replace(part, servers=fresh, awaiting=[]), origin, servers=set(fresh))
        self.metrics.cycle(merged, model_loaded=True, instances=self.instances, names=fresh)
        self.metrics.incremental.inc(len(fresh))
        self.counters.incremental_passes += 1
        self.counters.incremental_forecasts += len(fresh)
        logger.debug("incremental pass %s: %d servers forecast late, %.1f ms", published.prediction_time,
                     len(fresh), part.seconds * 1000.0)
        return merged

    def housekeeping(self) -> dict[str, int] | None:
        """Retention, duplicate-check keys, expired maintenance and idle servers released from memory.

        Runs on a clock (``housekeeping_seconds``), with or without a model, so a daemon that only fills
        its store (the bootstrap before the first training) keeps bounded memory and disk.
        """
        newest = self.fleet.newest_bucket
        if newest is None:
            return None
        cutoff = newest - self.settings.retention_days * STEPS_PER_DAY
        removed = self.store.trim(cutoff, newest - FORECAST_RETENTION_HOURS * STEPS_PER_HOUR, newest)
        removed["alerts"] = self.alerts.trim(self.last_origin if self.last_origin is not None else newest)
        removed["alert_outcomes"] = self.outcomes.trim(self.last_origin if self.last_origin is not None else newest)
        with self.lock:
            released = self.fleet.release(cutoff)
        removed["servers_released"] = len(released)
        self.ingest.owners.forget(released)
        if released and self.accuracy is not None:  # their anomaly scores (and series) go with them
            self.accuracy.anomalies.forget(released)
            self.accuracy.selection.forget(released)
            self.metrics.anomalies(self.accuracy.anomalies, self.instances)
        self.maintenance.expire()
        self.store.write_ledger()
        self.metrics.window_bytes.set(self.fleet.memory_bytes())
        self.housekeeping_log.add(removed)
        return removed

    def _track_alerts(self, result: CycleResult, origin: int, servers: set[str] | None = None) -> None:
        """Feed this cycle's alerts (risk and model_degraded) to the lifecycle; never stops the cycle.

        Servers awaited (``result.awaiting``, their data late) are left out until their forecast comes;
        ``servers``: an incremental pass, whose forecasts are the only ones judged (no model_degraded).
        """
        try:
            held = set(result.awaiting)
            raised = [a for name, r in result.servers.items() if name not in held for a in r.prediction.alerts]
            if self.accuracy is not None and servers is None:
                raised += self.accuracy.active_degraded()
            self.alerts.update(origin, raised, self.maintenance.active(), servers=servers, held=held)
            if self.notifier is not None:  # a hand-over only (never blocks, never raises); sent by its threads
                self.notifier.notify(self.alerts.active()[0])
            self.metrics.open_alerts(*self.alerts.active(), self.instances)
            self._judge_alerts(result, origin)
        except Exception:  # noqa: BLE001 - the forecast stands; the lifecycle catches up next cycle
            self.alert_errors += 1
            (logger.exception if self.alert_errors == 1 else logger.error)(
                "alert lifecycle update at %s failed (%d so far)", bucket_iso(origin), self.alert_errors)

    def _judge_alerts(self, result: CycleResult, origin: int) -> None:
        """Confirm breaches and judge closed alert episodes (live_alerts.py), refresh their figures."""
        held = set(result.awaiting)  # a carried-over forecast's current values are a bucket older
        current = {name: r.prediction.current for name, r in result.servers.items()
                   if r.prediction.current and name not in held}
        before = (dict(self.outcomes.breaches_total), dict(self.outcomes.judged_total))
        with self.lock:  # the windows only; the store is written after
            confirmed = self.outcomes.confirm(self.fleet, origin, current)
        self.outcomes.record(confirmed, origin)
        new = [{k: v - old.get(k, 0) for k, v in now.items() if v != old.get(k, 0)}
               for old, now in zip(before, (self.outcomes.breaches_total, self.outcomes.judged_total), strict=True)]
        self.metrics.alert_quality(self.outcomes.summary(origin), *new)

    def _score_matured(self, origin: int) -> None:
        """Score the forecasts whose target is ``origin``, step the band calibration, re-check drift.

        A failure here is logged and counted but never stops the forecast itself.
        """
        live = self.accuracy
        if live is None:
            return
        try:
            with self.lock:
                matured = live.collect(self.fleet, origin)
            self.metrics.anomalies(live.anomalies, self.instances)  # collect published this origin's scores
            scored = live.record(matured)
            live.drift()
            self.metrics.accuracy(live, scored)
        except Exception:  # noqa: BLE001 - accuracy is advisory; forecasts go on
            self.accuracy_errors += 1
            (logger.exception if self.accuracy_errors == 1 else logger.error)(
                "scoring matured forecasts at %s failed (%d so far)", bucket_iso(origin), self.accuracy_errors)

    def _count_cycle(self, result: CycleResult) -> None:
        c = self.counters
        c.cycles += 1
        c.cycle_seconds_total += result.seconds
        c.forecasts_total += result.forecast_count
        c.last_cycle_ms = round(result.seconds * 1000.0, 2)
        c.last_cycle_at = datetime.now(UTC).isoformat(timespec="seconds")

    def watch_model(self) -> bool:
        """Load the model the ``latest`` link points at now, if it moved (a promotion or a rollback).

        Called between cycles, so no cycle is skipped: the next one runs with the new model. A
        damaged new model is logged and counted; the loaded one keeps serving. A daemon started
        without a model (``--allow-no-model``) loads the first one that appears there.
        """
        directory = self.settings.model_dir
        engine = self.engine
        if directory is None or not directory.exists():
            return False
        target = directory.resolve()
        if target == self._failed_model or (engine is not None and target == engine.loaded.model_dir.resolve()):
            return False
        logger.info("%s now points at %s (was %s): loading it", directory, target.name, self.model_version)
        try:
            self.load_model()
        except (ModelLoadError, FileNotFoundError):
            self.model_reload_failures += 1
            self._failed_model = target
            return False
        if self.engine is None:  # no model yet, and this one did not load either (logged by load_model)
            self._failed_model = target
            return False
        self._failed_model = None
        self.model_reloads += 1
        return True

    async def forecast_loop(self) -> None:
        """Wait for completed buckets; forecast each once, off the event loop; push it to subscribers.

        Between cycles, servers that became ready for the last cycle's bucket since it ran are forecast by an
        incremental pass (``run_incremental``) and merged into the published cycle, pushed the same way.

        Between cycles: follow the model link (``DAEMON_STATE.model_watch_seconds``) and tend a scheduled retrain.
        """
        while True:
            try:
                if time.monotonic() - self._watched_at >= DAEMON_STATE.model_watch_seconds:
                    self._watched_at = time.monotonic()
                    await asyncio.to_thread(self.watch_model)
                if self.retrainer is not None:
                    self.retrainer.poll()
                if time.monotonic() - self._housekept_at >= self.settings.housekeeping_seconds:
                    self._housekept_at = time.monotonic()
                    await asyncio.to_thread(self.housekeeping)
                origin = self.complete_through()
                result = None
                if (self.engine is not None and origin is not None and origin != self.last_origin
                        and time.monotonic() >= self._retry_at):
                    result = await asyncio.to_thread(self.run_cycle, origin)
                elif self.engine is not None and self.last_origin is not None and self.ingest.touched:
                    result = await asyncio.to_thread(self.run_incremental)  # late arrivals, a backfill
                if result is not None and self.subscribers.members:
                    self.subscribers.publish(self.published.json.decode())  # a hand-over, never awaited
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.exception("forecast loop error")
            await asyncio.sleep(DAEMON_STATE.forecast_poll_seconds)

    def close(self) -> None:
        """Log the last cycle and housekeeping summaries, stop a running retrain and the Alertmanager push,
        release the store."""
        self.cycle_log.flush()
        self.housekeeping_log.flush()
        if self.retrainer is not None:
            self.retrainer.stop()
        if self.notifier is not None:
            self.notifier.close()  # sends nothing more; firing alerts time out in Alertmanager by their endsAt
        self.store.close()


# ============================================================================ documents
def status_document(daemon: Daemon) -> StatusResponse:
    """/status: model, fleet and daemon counters."""
    c = daemon.counters
    cache = daemon.published.result
    engine = daemon.engine
    statuses = [r.prediction.status for r in cache.servers.values()] if cache else []
    loaded = engine.loaded if engine else None
    unknown = sum(1 for name in daemon.fleet.servers if not engine or name not in engine.known)
    backtest = (loaded.training_info.get("backtest") or {}).get("per_horizon") if loaded else None
    return StatusResponse(
        status="ok" if engine else "degraded", version=PROJECT_VERSION, model_loaded=loaded is not None,
        model_encoder_length=loaded.spec.encoder_length if loaded else None,
        model_dir=str(daemon.settings.model_dir) if daemon.settings.model_dir else None,
        model_version=engine.model_version if engine else None, model_error=daemon.model_error,
        contract_version=CONTRACT_VERSION,
        model_contract_version=loaded.config.get("contract_version") if loaded else None,
        trained_at=loaded.training_info.get("trained_at") if loaded else None, backtest_summary=backtest,
        uptime_seconds=round(time.time() - c.started, 1), servers_tracked=len(daemon.fleet.servers),
        servers_ready=statuses.count("ok"), servers_warming_up=statuses.count("warming_up"),
        servers_offline=statuses.count("offline"), unknown_servers=unknown,
        last_forecast_time=cache.prediction_time if cache else None, last_cycle_at=c.last_cycle_at,
        cycles=c.cycles,
        forecasts_per_second=round(c.forecasts_total / c.cycle_seconds_total, 1) if c.cycle_seconds_total else 0.0,
        average_cycle_ms=round(1000.0 * c.cycle_seconds_total / c.cycles, 2) if c.cycles else 0.0,
        last_cycle_ms=c.last_cycle_ms, last_cycle_total_ms=c.last_cycle_total_ms, feed_records_stored=c.stored,
        feed_records_rejected=c.rejected, feed_records_duplicate=c.duplicates, requests_total=c.requests,
        request_errors_total=c.request_errors,
        error_rate=round(c.request_errors / c.requests, 4) if c.requests else 0.0,
        accuracy_summary=daemon.accuracy.summary() if daemon.accuracy and engine else None,
        model_reloads=daemon.model_reloads, model_reload_failures=daemon.model_reload_failures,
        retrain=daemon.retrainer.status() if daemon.retrainer else None,
        alertmanager=daemon.notifier.status() if daemon.notifier else None,
        last_cycle_error=daemon.last_cycle_error, max_servers=daemon.settings.max_servers,
        server_windows_bytes=daemon.fleet.memory_bytes(), websocket_subscribers=len(daemon.subscribers.members),
        maintenance_windows=len(daemon.maintenance.windows()), refused=daemon.metrics.refused_counts(),
        incremental_passes=c.incremental_passes, incremental_forecasts=c.incremental_forecasts,
        shard=str(daemon.settings.shard) if daemon.settings.shard else None)


def accuracy_document(daemon: Daemon, window: str | None, metric: str | None, horizon: str | None,
                      profile: str | None, server: str | None) -> AccuracyResponse:
    """/accuracy: live figures filtered by window, metric, horizon and group (profile or server)."""
    live = daemon.accuracy
    quality = [AlertQualityRow(**row) for row in daemon.outcomes.summary(daemon.last_origin)
               if metric is None or row["metric"] == metric]
    if live is None:
        return AccuracyResponse(model_version=None, scored_since=None, last_scored_target=None,
                                windows=dict(ACCURACY_WINDOWS_HOURS), band_adaptation=daemon.settings.band_adaptation,
                                rows=[], worst_servers=[], model_degraded=[], alert_quality=quality)
    if server is not None:
        windows, groups = [ACCURACY_SERVER_WINDOW], [server]
    else:
        windows = [window] if window else list(ACCURACY_WINDOWS_HOURS)
        groups = [profile] if profile else live.groups()
    rows = [row for w in windows for g in groups for row in live.rows(w, g)
            if (metric is None or row["metric"] == metric) and (horizon is None or row["horizon"] == horizon)]
    worst = [w for w in live.worst_servers()
             if (metric is None or w["metric"] == metric) and (horizon is None or w["horizon"] == horizon)
             and (profile is None or w["profile"] == profile)] if server is None else []
    degraded = [a for a in live.active_degraded()
                if (metric is None or a.metric == metric) and (horizon is None or a.horizon == horizon)]
    return AccuracyResponse(
        live_selection=selection_summary(daemon, live, metric, horizon, profile, server),
        model_version=live.model_version,
        scored_since=bucket_iso(live.since_origin) if live.since_origin is not None else None,
        last_scored_target=bucket_iso(live.last_target) if live.last_target is not None else None,
        windows=dict(ACCURACY_WINDOWS_HOURS), band_adaptation=live.adjuster.enabled,
        rows=rows, worst_servers=worst, model_degraded=degraded, alert_quality=quality)


def selection_summary(daemon: Daemon, live: LiveAccuracy, metric: str | None, horizon: str | None,
                      profile: str | None, server: str | None) -> LiveSelectionSummary:
    """/accuracy ``live_selection``: from the last published cycle, what each forecast server was served."""
    result = daemon.published.result
    predictions = [r.prediction for r in result.servers.values() if r.prediction.status == "ok"] if result else []
    predictions = [p for p in predictions if (profile is None or p.profile == profile)
                   and (server is None or p.server_name == server)]
    rows = []
    for name in live.metrics:
        for label in HORIZONS:
            if (metric is None or name == metric) and (horizon is None or label == horizon):
                count = sum(label in p.last_value_served.get(name, ()) for p in predictions)
                rows.append(LastValueRow(metric=name, horizon=label, servers=count, of=len(predictions)))
    listed = sorted((p for p in predictions if p.last_value_served),
                    key=lambda p: (-sum(map(len, p.last_value_served.values())), p.server_name))
    servers = [LastValueServer(server_name=p.server_name, profile=p.profile, known_to_model=p.known_to_model,
                               last_value_served=p.last_value_served)
                               for p in listed[:DAEMON_STATE.live_selection_listed]]
    return LiveSelectionSummary(enabled=live.selection.enabled, rows=rows, servers=servers,
                                switches=dict(live.selection.switches))


def history_document(daemon: Daemon, server_name: str, profile: str, hours: float) -> HistoryResponse:
    """Actuals from the store and the stored horizon forecasts that targeted them."""
    newest = daemon.fleet.servers[server_name].last_sample_bucket() or 0
    first = newest - int(hours * STEPS_PER_HOUR) + 1
    by_bucket = {row[0]: row for row in daemon.store.bucket_history(server_name, first)}
    timestamps, states = [], []
    actuals: dict[str, list[float | None]] = {m: [] for m in [*LINBORG_METRICS, DISPLAY_CPU]}
    for bucket in range(first, newest + 1):
        timestamps.append(bucket_iso(bucket))
        row = by_bucket.get(bucket)
        if row is None:
            for m in actuals:
                actuals[m].append(None)
            states.append(None)
            continue
        n = max(row[1], 1)
        values = {m: row[2 + i] / n for i, m in enumerate(GAUGES)}
        values.update({m: row[2 + len(GAUGES) + i] for i, m in enumerate(COUNTS)})
        for m in LINBORG_METRICS:
            actuals[m].append(round(float(values[m]), 3))
        actuals[DISPLAY_CPU].append(round(float(cpu_used(values["cpu_idle_pct"])), 3))
        states.append(STATE_PRECEDENCE[row[-1]])
    forecasts: dict[str, dict[str, Any]] = {}
    engine = daemon.engine
    if engine is not None:
        metrics = engine.metrics
        stored = daemon.store.forecast_history(server_name, first - max(HORIZONS.values()))
        for k, (label, steps) in enumerate(HORIZONS.items()):
            target_times, bands = [], {m: {q: [] for q in QUANTILE_LABELS} for m in metrics}
            for origin, blob in stored:
                target = origin + steps
                if target < first or target > newest:
                    continue
                try:
                    array = bands_of([blob], len(metrics))[0]
                except ValueError:  # made by a model with other targets
                    continue
                target_times.append(bucket_iso(target))
                for i, m in enumerate(metrics):
                    for j, q in enumerate(QUANTILE_LABELS):
                        bands[m][q].append(round(float(array[i, k, j]), 3))
            forecasts[label] = {"target_times": target_times, "bands": bands}
    return HistoryResponse(server_name=server_name, profile=profile, timestamps=timestamps, actuals=actuals,
                           states=states, forecasts=forecasts)
