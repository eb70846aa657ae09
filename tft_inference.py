"""Inference daemon: fed live LINBORG metrics, serves quantile forecasts, risk and alerts.

    python tft_inference.py --daemon --port 8000 --model-dir ./models/latest/
    python main.py infer --daemon --model-dir models/latest
    python main.py infer --data training/server_metrics.parquet --out predictions.json   # once, offline

How it works (Docs/API_REFERENCE.md has every endpoint):

* ``POST /feed`` validates each record against the contract, stores the valid ones durably
  (SQLite WAL, committed before the answer) in 5-minute buckets, and says exactly which
  records were stored, ignored as duplicates, or rejected and why.
* A bucket is complete when data for a later bucket arrives (or the wall clock is well past
  it). Then one batched forward pass forecasts every server with enough history, off the
  event loop; results are cached, so every GET is served from memory.
* Servers without enough history report ``warming_up`` and how many buckets they still
  need. Without a loaded model the forecast endpoints answer 503 and say why: nothing
  here ever invents a forecast.
* Security: an API key (header ``X-API-Key`` or ``Authorization: Bearer``) guards writes,
  admin and, unless ``--open-reads``, reads; keys compare in constant time; requests are
  rate-limited per client and size-limited; errors never carry tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import json
import logging
import secrets
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from common_utils import (
    isoformat_utc,
    name_matches_profile,
    profile_from_name,
    quiet_library_noise,
    resolve_api_key,
    setup_logging,
)
from config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_REFERENCE_DOC,
    BUCKET_GRACE_SECONDS,
    CONTRACT_VERSION,
    CPU_COMPONENTS,
    CPU_SUM_TOLERANCE,
    DAEMON_PORT,
    DATA_CONTRACT_DOC,
    DEFAULT_HOST,
    DEMO_SCENARIOS,
    FEED_TIMESTAMP_YEARS,
    FORECAST_POLL_SECONDS,
    FORECAST_RETENTION_HOURS,
    GROUP_ID,
    HORIZONS,
    INFERENCE_CHUNK_SERVERS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    MAX_BODY_BYTES,
    MAX_RECORD_AGE_HOURS,
    MAX_RECORDS_PER_REQUEST,
    METRIC_RANGES,
    OFFLINE_AFTER_BUCKETS,
    PROJECT_VERSION,
    QUANTILE_LABELS,
    RATE_LIMIT_BURST,
    RATE_LIMIT_REQUESTS_PER_MINUTE,
    RETENTION_HOURS,
    SAMPLING_INTERVAL_SECONDS,
    SERVER_NAME_MAX_LENGTH,
    SERVER_NAME_PATTERN,
    STEPS_PER_HOUR,
    STORE_PATH,
    TRIM_EVERY_CYCLES,
    VALID_PROFILES,
    VALID_STATES,
)
from metrics_store import FleetWindows, MetricsStore
from risk_scoring import score_fleet
from tft_features import NAN_CODE, BatchAssembler, decode_quantiles, encode_rows
from tft_model import LoadedModel, ModelLoadError, load_model

logger = logging.getLogger("tft_inference")
access_log = logging.getLogger("tft_inference.access")
_NS_PER_BUCKET = SAMPLING_INTERVAL_SECONDS * 1_000_000_000
HORIZON_LABELS = list(HORIZONS)
# Metrics as shown to users: CPU as "used" (100 - idle), never raw idle.
DISPLAY_CPU = "cpu_used_pct"


# ============================================================================ API models
def _metric_field(name: str) -> tuple[type, Any]:
    low, high = METRIC_RANGES[name]
    kind = int if name in INTEGER_METRICS else float
    return kind, Field(ge=low, le=high) if high is not None else Field(ge=low)


_RecordBase = create_model(  # the 14 LINBORG metrics with their contract ranges
    "_RecordBase", __config__=ConfigDict(extra="forbid"),
    **{name: _metric_field(name) for name in LINBORG_METRICS},
)


class LinborgRecord(_RecordBase):  # type: ignore[misc, valid-type]
    """One sample of one server, as the data contract defines it."""

    timestamp: datetime = Field(description="ISO 8601; naive means UTC")
    server_name: str = Field(min_length=1, max_length=SERVER_NAME_MAX_LENGTH, pattern=SERVER_NAME_PATTERN,
                             description="a host name; convention names (ppdb007) imply their profile")
    profile: Literal[tuple(VALID_PROFILES)] | None = Field(  # type: ignore[valid-type]
        default=None, description="optional: inferred from the name prefix when absent")
    state: Literal[tuple(VALID_STATES)]  # type: ignore[valid-type]

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        first, last = FEED_TIMESTAMP_YEARS
        if not first <= value.year <= last:
            raise ValueError(f"timestamp must lie between {first} and {last} (UTC); the store keeps int64 "
                             f"nanoseconds, which end in 2262")
        return value

    @model_validator(mode="after")
    def _contract(self) -> LinborgRecord:
        total = sum(getattr(self, c) for c in CPU_COMPONENTS)
        if abs(total - 100.0) > CPU_SUM_TOLERANCE:
            raise ValueError(f"cpu_user_pct + cpu_sys_pct + cpu_iowait_pct + cpu_idle_pct = {total:.2f}, must be "
                             f"100 +/- {CPU_SUM_TOLERANCE} ({DATA_CONTRACT_DOC}, Invariants)")
        inferred = profile_from_name(self.server_name)
        if self.profile is None:
            if inferred is None:
                raise ValueError(f"no profile given and '{self.server_name}' is not a convention name (e.g. ppdb007); "
                                 f"send 'profile' ({DATA_CONTRACT_DOC}, Server names)")
            self.profile = inferred
        if not name_matches_profile(self.server_name, self.profile):
            raise ValueError(f"'{self.server_name}' follows the name pattern of profile '{inferred}', not "
                             f"'{self.profile}' ({DATA_CONTRACT_DOC}, Server names)")
        return self


class FeedRequest(BaseModel):
    """A batch of records (up to MAX_RECORDS_PER_REQUEST)."""

    records: list[LinborgRecord]


class RejectedRecord(BaseModel):
    """Why one record of a batch was not stored."""

    index: int
    server_name: str | None = None
    field: str
    reason: str


class FeedResponse(BaseModel):
    """Exactly what happened to each record of a batch."""

    received: int
    stored: list[int] = Field(description="indices of records stored durably")
    duplicates: list[int] = Field(description="indices ignored: same server and timestamp already stored")
    rejected: list[RejectedRecord]
    new_servers: list[str]


class HealthResponse(BaseModel):
    """Liveness and whether a model is loaded."""

    status: Literal["ok"]
    model_loaded: bool


class QuantileBand(BaseModel):
    """One forecast value as a band."""

    p10: float
    p50: float
    p90: float


class AlertModel(BaseModel):
    """A metric at warning level or worse, now or within a horizon."""

    server_name: str
    profile: str
    level: Literal["warning", "critical"]
    metric: str
    horizon: Literal["now", "30min", "1hr", "8hr"]
    predicted_value: float
    threshold: float
    p50: float | None
    minutes_to_breach: int | None
    reason: str


class ServerPrediction(BaseModel):
    """A server's forecast summary (codex format), or why it has none."""

    server_name: str
    profile: str
    status: Literal["ok", "warming_up", "offline"]
    known_to_model: bool
    prediction_time: str | None = Field(description="start of the last complete bucket (data time, UTC)")
    buckets_needed: int = Field(default=0, description="warming up: buckets still needed before a first forecast")
    history_buckets: int | None = Field(default=None, description="history the forecast read (fewer than the "
                                                                   "model's encoder length = a new server)")
    last_sample_time: str | None = None
    current: dict[str, float] = {}
    predictions: dict[str, dict[str, QuantileBand]] = {}
    risk_score: float | None = None
    risk_level: Literal["green", "yellow", "red"] | None = None
    alerts: list[AlertModel] = []


class FleetPredictions(BaseModel):
    """Every tracked server in one cycle."""

    prediction_time: str | None
    model_version: str
    horizons: dict[str, int]
    summary: dict[str, int]
    servers: list[ServerPrediction]


class ServerFan(BaseModel):
    """Full 96-step forecast fan of one server."""

    server: ServerPrediction
    steps: list[str]
    fan: dict[str, dict[str, list[float]]]


class HistoryResponse(BaseModel):
    """Recent actuals and what was forecast for them."""

    server_name: str
    profile: str
    timestamps: list[str]
    actuals: dict[str, list[float | None]]
    states: list[str | None]
    forecasts: dict[str, dict[str, Any]]


class StatusResponse(BaseModel):
    """Operational status of the daemon."""

    status: str
    version: str
    model_loaded: bool
    model_encoder_length: int | None = Field(description="history buckets the model reads at full length")
    model_dir: str | None
    model_version: str | None
    model_error: str | None
    contract_version: str
    model_contract_version: str | None
    trained_at: str | None
    backtest_summary: dict[str, Any] | None
    uptime_seconds: float
    servers_tracked: int
    servers_ready: int
    servers_warming_up: int
    servers_offline: int
    unknown_servers: int
    last_forecast_time: str | None
    last_cycle_at: str | None
    cycles: int
    forecasts_per_second: float
    average_cycle_ms: float = Field(description="forecasting part of a cycle: windows, model, decode, risk")
    last_cycle_ms: float | None
    last_cycle_total_ms: float | None = Field(description="the whole last cycle incl. history write and gauges")
    feed_records_stored: int
    feed_records_rejected: int
    feed_records_duplicate: int
    requests_total: int
    request_errors_total: int
    error_rate: float


class DemoScenarioRequest(BaseModel):
    """Which scenario the demo stream should play."""

    scenario: Literal[tuple(DEMO_SCENARIOS)]  # type: ignore[valid-type]


class DemoScenario(DemoScenarioRequest):
    """The demo scenario and when it was last changed."""

    changed_at: str | None = None


class AlertsResponse(BaseModel):
    """Active alerts across the fleet, most urgent first."""

    prediction_time: str | None
    alerts: list[AlertModel]


# ============================================================================ forecasting
def display_forecast(quantiles: np.ndarray, targets: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """(S, targets, D, Q) model quantiles -> display metric -> {p10, p50, p90} arrays (S, D); CPU as used."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for j, name in enumerate(targets):
        if name == "cpu_idle_pct":  # p10 of used = 100 - p90 of idle, and so on
            out[DISPLAY_CPU] = {"p10": 100.0 - quantiles[:, j, :, 2], "p50": 100.0 - quantiles[:, j, :, 1],
                                "p90": 100.0 - quantiles[:, j, :, 0]}
        else:
            out[name] = {label: quantiles[:, j, :, k] for k, label in enumerate(QUANTILE_LABELS)}
    return out


def display_current(values: np.ndarray) -> dict[str, np.ndarray]:
    """(S, 14) bucket values -> display metric -> (S,) values, plus CPU used."""
    current = {name: values[:, i] for i, name in enumerate(LINBORG_METRICS)}
    current[DISPLAY_CPU] = 100.0 - current["cpu_idle_pct"]
    return current


def _server_entry(base: dict[str, Any], status: str, **fields: Any) -> dict[str, Any]:
    """A server's entry in the codex format (the JSON form of :class:`ServerPrediction`)."""
    entry = {**base, "status": status, "buckets_needed": 0, "history_buckets": None, "current": {},
             "predictions": {}, "risk_score": None, "risk_level": None, "alerts": []}
    entry.update(fields)
    return entry


@dataclass
class ServerResult:
    """What one cycle produced for one server (``prediction`` is a ServerPrediction as JSON)."""

    prediction: dict[str, Any]
    fleet_fan: dict[str, dict[str, np.ndarray]] | None = None  # the cycle's (S, D) arrays, shared
    row: int = -1  # this server's row in them
    horizon_blob: bytes | None = None

    @property
    def fan(self) -> dict[str, dict[str, np.ndarray]] | None:
        """This server's full fan: display metric -> {p10, p50, p90} arrays over the 96 steps."""
        if self.fleet_fan is None:
            return None
        return {m: {q: band[q][self.row] for q in QUANTILE_LABELS} for m, band in self.fleet_fan.items()}


@dataclass
class CycleResult:
    """One forecast cycle for the fleet."""

    origin: int
    prediction_time: str
    servers: dict[str, ServerResult]
    seconds: float
    forecast_count: int


def _bucket_time(bucket: int) -> str:
    return isoformat_utc(pd.Timestamp(bucket * SAMPLING_INTERVAL_SECONDS, unit="s", tz="UTC"))


class ForecastEngine:
    """Turns the fleet's windows into one batched forward pass and decoded, scored results."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.assemble = BatchAssembler(loaded.spec)
        self.known = set(loaded.encoder.name_to_id)
        self.model_version = loaded.model_dir.resolve().name
        loaded.model.return_attention = False  # forecasts only: the fused attention path
        from state_rules import STATE_PRECEDENCE

        # Bucket states are kept as precedence ranks; the model wants its own category codes.
        self._state_code_of_rank = self.spec.encode("state", STATE_PRECEDENCE)

    def forecast(self, fleet: FleetWindows, origin: int) -> CycleResult:
        """Forecast every ready server for the buckets after ``origin`` (the last complete one).

        The cyclic garbage collector is paused for the cycle: building the results allocates a
        burst of small objects, and a full collection over the daemon's heap in the middle of
        it cost more than the rest of the bookkeeping. Reference counting still frees
        everything; the collector runs again right after.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._forecast(fleet, origin)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _forecast(self, fleet: FleetWindows, origin: int) -> CycleResult:
        began = time.perf_counter()
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        prediction_time = _bucket_time(origin)
        results: dict[str, ServerResult] = {}
        ready: list[str] = []
        windows, states, profiles, lengths = [], [], [], []
        for name, window in fleet.servers.items():
            last = window.last_sample_bucket()
            base = {"server_name": name, "profile": window.profile, "known_to_model": name in self.known,
                    "prediction_time": prediction_time,
                    "last_sample_time": _bucket_time(last) if last is not None else None}
            history = origin - (window.first_bucket or origin) + 1
            if last is None or last < origin - OFFLINE_AFTER_BUCKETS:
                results[name] = ServerResult(_server_entry(base, status="offline"))
            elif history < self.spec.min_encoder_length:
                results[name] = ServerResult(_server_entry(
                    base, status="warming_up", buckets_needed=self.spec.min_encoder_length - history))
            else:
                values, state, _ = window.window(origin, enc)
                ready.append(name)
                windows.append(values)
                states.append(state)
                profiles.append(window.profile)
                lengths.append(min(history, enc))
        if ready:
            quantiles = np.empty((len(ready), len(self.spec.targets), dec, len(self.spec.quantiles)))
            lengths_arr = np.array(lengths)
            # One forward pass per history length: all long-lived servers share the fast path.
            for length in np.unique(lengths_arr):
                rows = np.flatnonzero(lengths_arr == length)
                quantiles[rows] = self._predict([ready[i] for i in rows], np.stack([windows[i] for i in rows]),
                                                [states[i] for i in rows], [profiles[i] for i in rows], origin,
                                                int(length))
            results.update(self._ready_results(fleet, origin, prediction_time, ready, windows, profiles, lengths,
                                               quantiles))
        return CycleResult(origin=origin, prediction_time=prediction_time, servers=results,
                           seconds=time.perf_counter() - began, forecast_count=len(ready))

    def _ready_results(self, fleet: FleetWindows, origin: int, prediction_time: str, ready: list[str],
                       windows: list[np.ndarray], profiles: list[str], lengths: list[int],
                       quantiles: np.ndarray) -> dict[str, ServerResult]:
        """Decode, score and summarise the forecast servers, fleet-wide arrays first."""
        fan = display_forecast(quantiles, self.spec.targets)
        latest = [fleet.servers[n].current(origin) for n in ready]  # None: no sample in the origin bucket
        values = np.stack([v if v is not None else windows[i][-1] for i, v in enumerate(latest)])
        current = display_current(values)
        risks = score_fleet(ready, profiles, current, fan)
        metrics = list(fan)
        steps = [s - 1 for s in HORIZONS.values()]
        # (S, metrics, horizons, quantiles): the summary every endpoint shows, and the stored history.
        summary = np.stack([np.stack([fan[m][q][:, steps] for q in QUANTILE_LABELS], axis=-1) for m in metrics],
                           axis=1).astype(np.float32)
        rounded = np.round(summary.astype(float), 3).tolist()
        current_rows = {m: np.round(v, 3).tolist() for m, v in current.items()}
        results = {}
        for i, name in enumerate(ready):
            window = fleet.servers[name]
            horizons = {label: {m: dict(zip(QUANTILE_LABELS, rounded[i][k][h])) for k, m in enumerate(metrics)}
                        for h, label in enumerate(HORIZONS)}
            base = {"server_name": name, "profile": window.profile, "known_to_model": name in self.known,
                    "prediction_time": prediction_time,
                    "last_sample_time": _bucket_time(window.last_sample_bucket())}
            prediction = _server_entry(base, status="ok", history_buckets=lengths[i],
                                       current={m: v[i] for m, v in current_rows.items()}, predictions=horizons,
                                       risk_score=risks[i].risk_score, risk_level=risks[i].risk_level,
                                       alerts=[a.to_dict() for a in risks[i].alerts])
            results[name] = ServerResult(prediction, fleet_fan=fan, row=i, horizon_blob=summary[i].tobytes())
        return results

    def _predict(self, names: list[str], values: np.ndarray, states: list[np.ndarray], profiles: list[str],
                 origin: int, history: int) -> np.ndarray:
        """(S, E, 14) raw windows -> (S, targets, D, Q) quantiles, reading the last ``history`` buckets.

        Runs in slices of ``INFERENCE_CHUNK_SERVERS`` so each slice's tensors stay in cache.
        """
        slices = -(-len(names) // max(1, INFERENCE_CHUNK_SERVERS))  # ceil; slices of near-equal size
        if slices <= 1:
            return self._predict_slice(names, values, states, profiles, origin, history)
        bounds = np.linspace(0, len(names), slices + 1).round().astype(int)
        return np.concatenate([
            self._predict_slice(names[a:b], values[a:b], states[a:b], profiles[a:b], origin, history)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def _predict_slice(self, names: list[str], values: np.ndarray, states: list[np.ndarray], profiles: list[str],
                       origin: int, history: int) -> np.ndarray:
        """One slice of ``_predict``."""
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        n_servers, steps = len(names), enc + dec
        full = np.zeros((n_servers, steps, len(LINBORG_METRICS)))
        full[:, :enc] = values  # decoder rows: unknown future, never read by the model
        time_idx = origin - enc + 1 + np.arange(steps)
        state_rows = np.full((n_servers, steps), NAN_CODE, dtype=np.int64)  # future states: unknown
        state_rows[:, :enc] = self._state_code_of_rank[np.stack(states)]
        profile_codes = self.spec.encode("profile", profiles)
        rows = encode_rows(self.spec, {m: full[:, :, i].reshape(-1) for i, m in enumerate(LINBORG_METRICS)},
                           np.tile(time_idx, n_servers), np.repeat(profile_codes, steps), state_rows.reshape(-1))
        shape = (n_servers, steps)
        groups = self.spec.encode(GROUP_ID, [self.loaded.encoder.name_to_id.get(n, "") for n in names])
        lengths = None if history == enc else np.full(n_servers, history)
        x, _ = self.assemble(rows.reals.reshape(*shape, -1), rows.cats.reshape(*shape, -1),
                             rows.targets.reshape(*shape, -1), rows.targets_tf.reshape(*shape, -1), groups,
                             rows.time_idx.reshape(shape), encoder_lengths=lengths)
        with torch.inference_mode():
            output = self.loaded.model(x)
        return decode_quantiles(output["prediction"], self.spec)


# ============================================================================ daemon state
class RateLimiter:
    """Token bucket per client: RATE_LIMIT_REQUESTS_PER_MINUTE, bursts up to RATE_LIMIT_BURST."""

    def __init__(self, per_minute: float = RATE_LIMIT_REQUESTS_PER_MINUTE, burst: int = RATE_LIMIT_BURST) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> tuple[bool, float]:
        """(allowed, seconds until a token is available)."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[client] = (tokens, now)
            return False, (1.0 - tokens) / self.rate


@dataclass
class DaemonSettings:
    """How the daemon runs."""

    model_dir: Path | None
    store_path: Path = STORE_PATH
    api_key: str | None = None
    open_reads: bool = False
    allow_no_model: bool = False
    rate_per_minute: float = RATE_LIMIT_REQUESTS_PER_MINUTE
    rate_burst: int = RATE_LIMIT_BURST


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
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    requests: int = 0
    request_errors: int = 0


class Daemon:
    """Everything the endpoints share: store, windows, model, cache, counters."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.store = MetricsStore(settings.store_path)
        self.fleet = self.store.load_windows()
        self.engine: ForecastEngine | None = None
        self.model_error: str | None = None
        self.counters = Counters()
        self.cache: CycleResult | None = None
        self.last_origin: int | None = None
        self.lock = threading.Lock()  # guards fleet windows between feed and forecast threads
        self.websockets: set[WebSocket] = set()
        self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)
        self.metrics = PrometheusMetrics()
        self.demo = DemoScenario(scenario="healthy")
        self._json_lock = threading.Lock()
        self._json_key: tuple[Any, int] | None = None
        self._json = b""
        self.load_model()
        if self.fleet.servers:
            logger.info("rebuilt windows of %d servers from %s (newest bucket %s)", len(self.fleet.servers),
                        settings.store_path, _bucket_time(self.fleet.newest_bucket or 0))

    def load_model(self) -> None:
        """(Re)load the model from the configured directory; remember why if it fails."""
        if self.settings.model_dir is None:
            self.model_error = "no model directory configured (--model-dir)"
            return
        try:
            loaded = load_model(self.settings.model_dir)
        except (ModelLoadError, FileNotFoundError) as exc:
            self.model_error = str(exc)
            self.engine = None
            if not self.settings.allow_no_model:
                raise
            logger.error("model not loaded: %s", exc)
            return
        self.engine = ForecastEngine(loaded)
        self.model_error = None
        self.last_origin = None  # forecast again with the new model
        logger.info("model loaded: %s (%d servers in its mapping)", loaded.model_dir, len(loaded.encoder))

    # ------------------------------------------------------------------ feed
    def ingest(self, raw_records: list[Any]) -> FeedResponse:
        """Validate, store durably, merge into the windows."""
        valid: list[dict[str, Any]] = []
        valid_index: list[int] = []
        rejected: list[RejectedRecord] = []
        newest = self.fleet.newest_bucket
        oldest_ok = None if newest is None else (newest - MAX_RECORD_AGE_HOURS * STEPS_PER_HOUR)
        try:  # already validated records, or the whole batch in one validation call
            parsed: list[tuple[int, LinborgRecord]] = list(enumerate(
                raw_records if all(isinstance(r, LinborgRecord) for r in raw_records)
                else _BATCH_ADAPTER.validate_python(raw_records)))
        except ValidationError:
            parsed = []
            for i, raw in enumerate(raw_records):
                try:
                    parsed.append((i, _RECORD_ADAPTER.validate_python(raw)))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    name = raw.get("server_name") if isinstance(raw, dict) else None
                    rejected.append(RejectedRecord(index=i, server_name=name if isinstance(name, str) else None,
                                                   field=".".join(str(p) for p in first["loc"]) or "record",
                                                   reason=first["msg"]))
        for i, record in parsed:
            ts_ns = int(record.timestamp.timestamp()) * 1_000_000_000 + record.timestamp.microsecond * 1000
            if oldest_ok is not None and ts_ns // _NS_PER_BUCKET < oldest_ok:
                rejected.append(RejectedRecord(index=i, server_name=record.server_name, field="timestamp",
                                               reason=f"older than the {MAX_RECORD_AGE_HOURS} h retention window"))
                continue
            data = dict(record.__dict__)  # the validated fields, without model_dump's copying machinery
            data["ts_ns"] = ts_ns
            valid.append(data)
            valid_index.append(i)
        rejected.sort(key=lambda r: r.index)
        known_before = set(self.fleet.servers)
        stored_local, duplicate_local, aggregates = self.store.add_records(valid) if valid else ([], [], [])
        profiles = {r["server_name"]: r["profile"] for r in valid}
        with self.lock:
            self.fleet.merge(aggregates, profiles)
        stored = [valid_index[i] for i in stored_local]
        duplicates = [valid_index[i] for i in duplicate_local]
        new_servers = sorted({valid[i]["server_name"] for i in stored_local} - known_before)
        self.counters.stored += len(stored)
        self.counters.rejected += len(rejected)
        self.counters.duplicates += len(duplicates)
        self.metrics.feed(len(stored), len(rejected), len(duplicates))
        return FeedResponse(received=len(raw_records), stored=stored, duplicates=duplicates, rejected=rejected,
                            new_servers=new_servers)

    def current_json(self) -> bytes:
        """/predictions/current serialised once per cycle (every GET and push reuses it)."""
        cache = self.cache
        key = cache.origin if cache is not None else None
        with self._json_lock:
            if self._json_key != (key, id(cache)):
                self._json = json.dumps(fleet_predictions(self, cache)).encode()
                self._json_key = (key, id(cache))
            return self._json

    # ------------------------------------------------------------------ forecast loop
    def complete_through(self) -> int | None:
        """Last complete bucket: data for a later bucket arrived, or the clock passed it."""
        newest = self.fleet.newest_bucket
        if newest is None:
            return None
        clock = int((time.time() - BUCKET_GRACE_SECONDS) // SAMPLING_INTERVAL_SECONDS) - 1
        return min(newest, max(newest - 1, clock))

    def run_cycle(self, origin: int) -> CycleResult | None:
        """One forecast cycle (runs in a worker thread)."""
        began = time.perf_counter()
        engine = self.engine
        if engine is None:
            return None
        with self.lock:
            try:
                result = engine.forecast(self.fleet, origin)
            except Exception as exc:  # noqa: BLE001 - a failed cycle is counted and reported, not fatal
                self.counters.cycle_errors += 1
                logger.exception("forecast cycle for %s failed: %s", _bucket_time(origin), exc)
                return None
        blobs = {name: r.horizon_blob for name, r in result.servers.items() if r.horizon_blob is not None}
        if blobs:
            self.store.save_forecasts(origin, blobs)
        c = self.counters
        c.cycles += 1
        c.cycle_seconds_total += result.seconds
        c.forecasts_total += result.forecast_count
        c.last_cycle_ms = round(result.seconds * 1000.0, 2)
        c.last_cycle_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.cache = result
        self.last_origin = origin
        self.metrics.cycle(result, self)
        if c.cycles % TRIM_EVERY_CYCLES == 0:
            removed = self.store.trim(origin - RETENTION_HOURS * STEPS_PER_HOUR,
                                      origin - FORECAST_RETENTION_HOURS * STEPS_PER_HOUR, origin)
            logger.info("retention: removed %s", removed)
        c.last_cycle_total_ms = round((time.perf_counter() - began) * 1000.0, 2)
        logger.info("forecast cycle %s: %d servers forecast, %d tracked, %.1f ms", result.prediction_time,
                    result.forecast_count, len(result.servers), result.seconds * 1000.0)
        return result

    async def forecast_loop(self) -> None:
        """Wait for completed buckets; forecast each once, off the event loop."""
        while True:
            try:
                origin = self.complete_through()
                if self.engine is not None and origin is not None and origin != self.last_origin:
                    result = await asyncio.to_thread(self.run_cycle, origin)
                    if result is not None:
                        await self.broadcast(result)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.exception("forecast loop error")
            await asyncio.sleep(FORECAST_POLL_SECONDS)

    async def broadcast(self, result: CycleResult) -> None:
        """Push a cycle to every WebSocket subscriber."""
        if not self.websockets:
            return
        message = self.current_json().decode()
        for ws in list(self.websockets):
            try:
                await ws.send_text(message)
            except Exception:  # noqa: BLE001 - a dead socket is dropped
                self.websockets.discard(ws)


_RECORD_ADAPTER = TypeAdapter(LinborgRecord)
_BATCH_ADAPTER = TypeAdapter(list[LinborgRecord])
_FEED_ADAPTER = TypeAdapter(FeedRequest)


def fleet_predictions(daemon: Daemon, result: CycleResult | None) -> dict[str, Any]:
    """The /predictions/current document as JSON-ready data (also pushed on the WebSocket)."""
    servers: list[dict[str, Any]] = []
    if result is not None:
        servers = sorted((r.prediction for r in result.servers.values()),
                         key=lambda p: (-(p["risk_score"] if p["risk_score"] is not None else -1), p["server_name"]))
    summary = {"green": 0, "yellow": 0, "red": 0, "warming_up": 0, "offline": 0}
    for p in servers:
        summary[p["risk_level"] if p["status"] == "ok" else p["status"]] += 1
    return {"prediction_time": result.prediction_time if result else None,
            "model_version": daemon.engine.model_version if daemon.engine else "none",
            "horizons": dict(HORIZONS), "summary": summary, "servers": servers}


# ============================================================================ prometheus
class PrometheusMetrics:
    """The daemon's own counters and latencies, plus forecast gauges per server/metric/horizon/quantile."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.records = Counter("tft_feed_records_total", "Feed records by result", ["result"], registry=self.registry)
        self.requests = Counter("tft_http_requests_total", "HTTP requests", ["path", "status"], registry=self.registry)
        self.cycle_seconds = Histogram("tft_forecast_cycle_seconds", "Forecast cycle duration",
                                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry)
        self.servers = Gauge("tft_servers", "Tracked servers by status", ["status"], registry=self.registry)
        self.model_loaded = Gauge("tft_model_loaded", "1 when a model is loaded", registry=self.registry)
        self.forecast = Gauge("tft_forecast", "Forecast value", ["server", "profile", "metric", "horizon", "quantile"],
                              registry=self.registry)
        self.risk = Gauge("tft_risk_score", "Risk score 0..1", ["server", "profile"], registry=self.registry)
        self.alerts = Gauge("tft_active_alerts", "Active alerts by level", ["level"], registry=self.registry)
        self._labelled: set[tuple[str, ...]] = set()

    def feed(self, stored: int, rejected: int, duplicates: int) -> None:
        """Count feed results."""
        self.records.labels("stored").inc(stored)
        self.records.labels("rejected").inc(rejected)
        self.records.labels("duplicate").inc(duplicates)

    def cycle(self, result: CycleResult, daemon: Daemon) -> None:
        """Refresh gauges after a forecast cycle."""
        self.cycle_seconds.observe(result.seconds)
        counts = {"ok": 0, "warming_up": 0, "offline": 0}
        levels = {"warning": 0, "critical": 0}
        self.forecast.clear()
        self.risk.clear()
        for name, r in result.servers.items():
            p = r.prediction
            counts[p["status"]] += 1
            if p["status"] != "ok":
                continue
            self.risk.labels(name, p["profile"]).set(p["risk_score"] or 0.0)
            for label, metrics in p["predictions"].items():
                for metric, band in metrics.items():
                    for q in QUANTILE_LABELS:
                        self.forecast.labels(name, p["profile"], metric, label, q).set(band[q])
            for alert in p["alerts"]:
                levels[alert["level"]] += 1
        for status, n in counts.items():
            self.servers.labels(status).set(n)
        for level, n in levels.items():
            self.alerts.labels(level).set(n)
        self.model_loaded.set(1 if daemon.engine else 0)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ============================================================================ the app
def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail}, headers=headers)


def create_app(settings: DaemonSettings) -> FastAPI:
    """Build the FastAPI application around a :class:`Daemon`."""
    daemon = Daemon(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI lifespan protocol
        task = asyncio.create_task(daemon.forecast_loop())
        try:
            yield
        finally:
            task.cancel()
            daemon.store.close()

    app = FastAPI(title="Fleet trouble forecaster", version=PROJECT_VERSION, lifespan=lifespan,
                  description=f"Live LINBORG feed in; decoded p10/p50/p90 forecasts, risk scores and alerts out. "
                              f"See {API_REFERENCE_DOC}.")
    app.state.daemon = daemon
    expected_key = settings.api_key

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

    def client_of(request: Request) -> str:
        key = _presented_key(request)
        if key:
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        return "addr:" + (request.client.host if request.client else "unknown")

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202 - middleware protocol
        began = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = _error(413, "payload_too_large", f"Request bodies are limited to {MAX_BODY_BYTES} bytes; "
                                                        f"split the batch. See {API_REFERENCE_DOC}.")
        else:
            allowed, wait = daemon.limiter.allow(client_of(request))
            if not allowed:
                response = _error(429, "rate_limited", f"Too many requests; retry in {wait:.1f}s.",
                                  headers={"Retry-After": str(max(1, int(np.ceil(wait))))})
            else:
                try:
                    response = await call_next(request)
                except Exception:  # noqa: BLE001 - never leak a traceback to a client
                    logger.exception("unhandled error on %s", request.url.path)
                    response = _error(500, "internal_error", "The daemon hit an unexpected error; it was logged.")
        daemon.counters.requests += 1
        if response.status_code >= 500:
            daemon.counters.request_errors += 1
        route = request.scope.get("route")
        daemon.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        if request.url.path.startswith(("/predictions", "/alerts", "/history")):
            access_log.info(json.dumps({"event": "prediction_request", "path": request.url.path,
                                        "client": client_of(request), "status": response.status_code,
                                        "ms": round((time.perf_counter() - began) * 1000, 2)}))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", [])), "reason": e.get("msg", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": "invalid_request", "detail": errors})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"error": "error", "detail": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=detail, headers=getattr(exc, "headers", None))

    def require_key(request: Request) -> None:
        if expected_key is None:
            return
        presented = _presented_key(request)
        if not presented or not hmac.compare_digest(presented.encode(), expected_key.encode()):
            raise HTTPException(401, {"error": "unauthorized",
                                      "detail": f"Send the API key in the X-API-Key header (or Authorization: "
                                                f"Bearer). See {API_REFERENCE_DOC} (Security)."})

    def require_read(request: Request) -> None:
        if not settings.open_reads:
            require_key(request)

    def require_model() -> ForecastEngine:
        if daemon.engine is None:
            raise HTTPException(503, {"error": "model_not_loaded",
                                      "detail": f"No forecasts: the model is not loaded ({daemon.model_error}). "
                                                f"Fix: train one (python main.py train) and restart with "
                                                f"--model-dir, or POST /admin/reload-model."})
        return daemon.engine

    # ------------------------------------------------------------------ endpoints
    @app.get("/health", response_model=HealthResponse, tags=["status"])
    def health() -> HealthResponse:
        """Liveness; always open."""
        return HealthResponse(status="ok", model_loaded=daemon.engine is not None)

    @app.get("/status", response_model=StatusResponse, tags=["status"], dependencies=[Depends(require_read)])
    def status() -> StatusResponse:
        """Model, fleet and daemon counters."""
        c = daemon.counters
        cache = daemon.cache
        statuses = [r.prediction["status"] for r in cache.servers.values()] if cache else []
        loaded = daemon.engine.loaded if daemon.engine else None
        unknown = sum(1 for name in daemon.fleet.servers if not daemon.engine or name not in daemon.engine.known)
        backtest = (loaded.training_info.get("backtest") or {}).get("per_horizon") if loaded else None
        return StatusResponse(
            status="ok" if daemon.engine else "degraded", version=PROJECT_VERSION, model_loaded=loaded is not None,
            model_encoder_length=loaded.spec.encoder_length if loaded else None,
            model_dir=str(settings.model_dir) if settings.model_dir else None,
            model_version=daemon.engine.model_version if daemon.engine else None, model_error=daemon.model_error,
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
            last_cycle_ms=c.last_cycle_ms, last_cycle_total_ms=c.last_cycle_total_ms, feed_records_stored=c.stored, feed_records_rejected=c.rejected,
            feed_records_duplicate=c.duplicates, requests_total=c.requests, request_errors_total=c.request_errors,
            error_rate=round(c.request_errors / c.requests, 4) if c.requests else 0.0)

    @app.post("/feed", response_model=FeedResponse, tags=["feed"], dependencies=[Depends(require_key)],
              responses={422: {"model": FeedResponse, "description": "some records rejected; the rest stored"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/FeedRequest"}}}}})
    async def feed(request: Request) -> JSONResponse:
        """Store a batch of LINBORG records; 200 if all stored, 422 naming each rejected record."""
        body = await _read_body(request)
        try:  # fast path: parse and validate the whole body in pydantic's Rust core
            records: list[Any] = _FEED_ADAPTER.validate_json(body).records
        except ValidationError:
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return _error(400, "invalid_json", f"The body is not JSON: {exc}.")
            records = payload.get("records") if isinstance(payload, dict) else None
            if not isinstance(records, list):
                return _error(422, "invalid_request", 'Expected {"records": [ ... ]}. See ' + API_REFERENCE_DOC)
        if len(records) > MAX_RECORDS_PER_REQUEST:
            return _error(413, "too_many_records", f"At most {MAX_RECORDS_PER_REQUEST} records per request.")
        result = await asyncio.to_thread(daemon.ingest, records)
        return JSONResponse(status_code=422 if result.rejected else 200, content=result.model_dump())

    @app.get("/predictions/current", response_model=FleetPredictions, tags=["forecasts"],
             dependencies=[Depends(require_read)])
    def predictions_current() -> Response:
        """The latest cycle: every tracked server, most at risk first."""
        require_model()
        return Response(daemon.current_json(), media_type="application/json")

    @app.get("/predictions/{server_name}", response_model=ServerFan, tags=["forecasts"],
             dependencies=[Depends(require_read)])
    def predictions_server(server_name: str) -> JSONResponse:
        """One server with its full 96-step p10/p50/p90 fan."""
        require_model()
        result = daemon.cache.servers.get(server_name) if daemon.cache else None
        if result is None:
            raise HTTPException(404, {"error": "unknown_server",
                                      "detail": f"No server '{server_name}' in the latest cycle."})
        steps, fan = [], {}
        if result.fan is not None:
            steps = [_bucket_time(daemon.cache.origin + k) for k in range(1, daemon.engine.spec.prediction_length + 1)]
            fan = {m: {q: [round(float(v), 3) for v in band[q]] for q in QUANTILE_LABELS} for m, band in result.fan.items()}
        return JSONResponse({"server": result.prediction, "steps": steps, "fan": fan})

    @app.get("/alerts/active", response_model=AlertsResponse, tags=["forecasts"], dependencies=[Depends(require_read)])
    def alerts_active() -> JSONResponse:
        """Warning and critical alerts across the fleet, critical and soonest first."""
        require_model()
        cache = daemon.cache
        alerts = [a for r in (cache.servers.values() if cache else []) for a in r.prediction["alerts"]]
        order = {"now": 0, "30min": 1, "1hr": 2, "8hr": 3}
        alerts.sort(key=lambda a: (a["level"] != "critical", order[a["horizon"]], a["minutes_to_breach"] or 0,
                                   a["server_name"]))
        return JSONResponse({"prediction_time": cache.prediction_time if cache else None, "alerts": alerts})

    @app.get("/history/{server_name}", response_model=HistoryResponse, tags=["forecasts"],
             dependencies=[Depends(require_read)])
    def history(server_name: str, hours: float = 24.0) -> HistoryResponse:
        """Recent actuals and the 30 min / 1 h / 8 h forecasts that were made for them."""
        window = daemon.fleet.servers.get(server_name)
        if window is None:
            raise HTTPException(404, {"error": "unknown_server", "detail": f"No server '{server_name}' is tracked."})
        if not 0 < hours <= RETENTION_HOURS:
            raise HTTPException(422, {"error": "invalid_request", "detail": f"hours must be in (0, {RETENTION_HOURS}]."})
        return history_document(daemon, server_name, window.profile, hours)

    @app.get("/metrics", tags=["status"], dependencies=[Depends(require_read)], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus exposition: daemon counters and forecast gauges."""
        return PlainTextResponse(daemon.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload-model", response_model=StatusResponse, tags=["admin"],
              dependencies=[Depends(require_key)])
    async def reload_model() -> StatusResponse:
        """Reload the model from the configured directory (never from a path given by a client)."""
        try:
            await asyncio.to_thread(daemon.load_model)
        except (ModelLoadError, FileNotFoundError) as exc:
            daemon.model_error = str(exc)
            raise HTTPException(503, {"error": "model_not_loaded", "detail": str(exc)}) from None
        return status()

    @app.get("/demo-scenario", response_model=DemoScenario, tags=["demo"], dependencies=[Depends(require_read)])
    def get_demo_scenario() -> DemoScenario:
        """Scenario the live demo stream should play (the stream polls this)."""
        return daemon.demo

    @app.post("/admin/demo-scenario", response_model=DemoScenario, tags=["demo"], dependencies=[Depends(require_key)])
    def set_demo_scenario(request: DemoScenarioRequest) -> DemoScenario:
        """Switch the live demo stream (dashboard buttons Healthy / Degrading / Critical)."""
        daemon.demo = DemoScenario(scenario=request.scenario,
                                   changed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        logger.info("demo scenario set to %s", request.scenario)
        return daemon.demo

    @app.websocket("/ws/predictions")
    async def ws_predictions(websocket: WebSocket) -> None:
        """Pushes every new forecast cycle (the /predictions/current document)."""
        if expected_key is not None and not settings.open_reads:
            presented = websocket.query_params.get("api_key") or websocket.headers.get("x-api-key") or ""
            if not hmac.compare_digest(presented.encode(), expected_key.encode()):
                await websocket.close(code=4401, reason="unauthorized: pass ?api_key=")
                return
        await websocket.accept()
        daemon.websockets.add(websocket)
        try:
            if daemon.cache is not None:
                await websocket.send_text(daemon.current_json().decode())
            while True:
                await websocket.receive_text()  # keep-alive; clients need not send anything
        except WebSocketDisconnect:
            pass
        finally:
            daemon.websockets.discard(websocket)

    return app


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def _read_body(request: Request) -> bytes:
    """Read the body, refusing more than MAX_BODY_BYTES even without a Content-Length."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, {"error": "payload_too_large",
                                      "detail": f"Request bodies are limited to {MAX_BODY_BYTES} bytes."})
        chunks.append(chunk)
    return b"".join(chunks)


def history_document(daemon: Daemon, server_name: str, profile: str, hours: float) -> HistoryResponse:
    """Actuals from the store and the stored horizon forecasts that targeted them."""
    from metrics_store import COUNTS, GAUGES

    newest = daemon.fleet.servers[server_name].last_sample_bucket() or 0
    first = newest - int(hours * STEPS_PER_HOUR) + 1
    rows = daemon.store.bucket_history(server_name, first)
    timestamps, states = [], []
    actuals: dict[str, list[float | None]] = {m: [] for m in [*LINBORG_METRICS, DISPLAY_CPU]}
    by_bucket = {row[0]: row for row in rows}
    from state_rules import STATE_PRECEDENCE

    for bucket in range(first, newest + 1):
        timestamps.append(_bucket_time(bucket))
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
        actuals[DISPLAY_CPU].append(round(100.0 - float(values["cpu_idle_pct"]), 3))
        states.append(STATE_PRECEDENCE[row[-1]])
    forecasts: dict[str, dict[str, Any]] = {}
    engine = daemon.engine
    if engine is not None:
        metrics = [DISPLAY_CPU if t == "cpu_idle_pct" else t for t in engine.spec.targets]
        stored = daemon.store.forecast_history(server_name, first - max(HORIZONS.values()))
        for k, (label, steps) in enumerate(HORIZONS.items()):
            target_times, bands = [], {m: {q: [] for q in QUANTILE_LABELS} for m in metrics}
            for origin, blob in stored:
                target = origin + steps
                if target < first or target > newest:
                    continue
                array = np.frombuffer(blob, dtype=np.float32).reshape(len(metrics), len(HORIZONS), len(QUANTILE_LABELS))
                target_times.append(_bucket_time(target))
                for i, m in enumerate(metrics):
                    for j, q in enumerate(QUANTILE_LABELS):
                        bands[m][q].append(round(float(array[i, k, j]), 3))
            forecasts[label] = {"target_times": target_times, "bands": bands}
    return HistoryResponse(server_name=server_name, profile=profile, timestamps=timestamps, actuals=actuals,
                           states=states, forecasts=forecasts)


# ============================================================================ offline mode
def forecast_file(model_dir: Path, data_path: Path) -> dict[str, Any]:
    """Forecast every server of a data file once, from its last complete bucket, without a server."""
    from data_validator import DataValidator, format_report
    from metrics_store import aggregate
    from tft_features import load_training_frame

    frame = load_training_frame(data_path)
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(frame)
    if not is_valid:
        raise ValueError(format_report(data_path, len(frame), False, errors, warnings, 0.0))
    engine = ForecastEngine(load_model(model_dir))
    # Only the last window of every server matters (plus the hour that decides "offline").
    keep_buckets = engine.spec.encoder_length + OFFLINE_AFTER_BUCKETS + 1
    frame = frame[frame["timestamp"] > frame["timestamp"].max() - pd.Timedelta(seconds=keep_buckets *
                                                                                 SAMPLING_INTERVAL_SECONDS)]
    fleet = FleetWindows()
    records = frame.assign(server_name=frame["server_name"].astype(str), profile=frame["profile"].astype(str),
                           state=frame["state"].astype(str)).to_dict(orient="records")
    for record in records:
        record["ts_ns"] = int(pd.Timestamp(record["timestamp"]).value)
    fleet.merge(aggregate(records), {r["server_name"]: r["profile"] for r in records})
    origin = fleet.newest_bucket
    result = engine.forecast(fleet, origin)
    document = fleet_predictions(_OfflineDaemon(engine), result)
    document["fans"] = {name: {m: {q: [round(float(v), 3) for v in band[q]] for q in QUANTILE_LABELS}
                               for m, band in r.fan.items()}
                        for name, r in result.servers.items() if r.fan is not None}
    document["steps"] = [_bucket_time(origin + k) for k in range(1, engine.spec.prediction_length + 1)]
    return document


@dataclass
class _OfflineDaemon:
    engine: ForecastEngine


# ============================================================================ CLI
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the daemon / offline forecaster (shared with ``main.py infer``)."""
    parser = parser or argparse.ArgumentParser(description="Serve fleet forecasts (daemon) or forecast a file once.")
    parser.add_argument("--daemon", action="store_true", help="run the HTTP daemon")
    parser.add_argument("--model-dir", type=Path, default=Path("models/latest"))
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=DAEMON_PORT)
    parser.add_argument("--store", type=Path, default=STORE_PATH, help="SQLite file for the live metrics")
    parser.add_argument("--api-key-file", type=Path, default=None,
                        help=f"file holding the API key (else ${API_KEY_FILE_ENV} or ${API_KEY_ENV})")
    parser.add_argument("--open-reads", action="store_true", help="GET endpoints without an API key")
    parser.add_argument("--allow-no-model", action="store_true",
                        help="start even if the model cannot be loaded (forecast endpoints answer 503)")
    parser.add_argument("--rate-per-minute", type=float, default=RATE_LIMIT_REQUESTS_PER_MINUTE,
                        help="requests per minute per client")
    parser.add_argument("--rate-burst", type=int, default=RATE_LIMIT_BURST, help="burst size of the rate limit")
    parser.add_argument("--data", type=Path, default=None, help="offline: forecast this Parquet file once")
    parser.add_argument("--out", type=Path, default=Path("predictions.json"), help="offline: where to write")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the daemon or the offline forecast."""
    quiet_library_noise()
    if not args.daemon:
        if args.data is None:
            logger.error("Give --daemon to serve, or --data FILE [--out predictions.json] to forecast once.")
            return 2
        try:
            document = forecast_file(args.model_dir, args.data)
        except (ModelLoadError, FileNotFoundError, ValueError) as exc:
            logger.error("%s", exc)
            return 1
        from common_utils import atomic_write_json

        atomic_write_json(args.out, document)
        print(f"Forecast {len(document['servers'])} servers from {document['prediction_time']} -> {args.out}")
        return 0
    api_key = resolve_api_key(key_file=args.api_key_file)
    if api_key is None:
        api_key = secrets.token_urlsafe(24)
        print(f"No API key configured (${API_KEY_ENV} / ${API_KEY_FILE_ENV} / --api-key-file); generated one for "
              f"this run: {api_key}", file=sys.stderr)
    settings = DaemonSettings(model_dir=args.model_dir, store_path=args.store, api_key=api_key,
                              open_reads=args.open_reads, allow_no_model=args.allow_no_model,
                              rate_per_minute=args.rate_per_minute, rate_burst=args.rate_burst)
    try:
        app = create_app(settings)
    except (ModelLoadError, FileNotFoundError) as exc:
        logger.error("Refusing to start: %s", exc)
        return 1
    import uvicorn

    logger.info("serving on http://%s:%d (docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    return run_from_args(build_arg_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
