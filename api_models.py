"""The daemon's HTTP contract: every request and response body as a pydantic model.

These models are the API reference's source (FastAPI turns them into the OpenAPI spec at
``/openapi.json``) and the only description of each document: the forecast engine builds
its results from them, the daemon serialises them once per cycle, and the risk scorer's
alerts are :class:`Alert` instances. Nothing here imports FastAPI, so the engine, the
notebook and the benchmarks can use the models without the web stack.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    create_model,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

from common_utils import name_matches_profile, profile_from_name
from config import (
    API,
    CPU_COMPONENTS,
    CPU_SUM_TOLERANCE,
    DATA_CONTRACT_DOC,
    DEMO_SCENARIOS,
    FEED_PLAUSIBLE_MAX,
    INSTANCE_MAX_LENGTH,
    INSTANCE_PATTERN,
    INTEGER_METRICS,
    LINBORG_METRICS,
    MAINTENANCE_MAX_HOURS,
    MAX_RECORDS_PER_REQUEST,
    METRIC_RANGES,
    RISK_HORIZONS,
    SERVER_NAME_MAX_LENGTH,
    SERVER_NAME_PATTERN,
    VALID_PROFILES,
    VALID_STATES,
)

RiskHorizon = Literal[tuple(RISK_HORIZONS)]  # type: ignore[valid-type]  # "now" and the forecast horizons
AlertLevel = Literal["warning", "critical"]
ServerStatus = Literal["ok", "warming_up", "offline", "not_ready"]
RiskLevel = Literal["green", "yellow", "red"]


# ============================================================================ feed (in)
def _integral(value: Any) -> Any:
    """A count sent as an integral float (``2.0``: what a Python collector or a Prometheus sample carries) is
    that integer; a fractional one, a string or a boolean is left for the strict check to refuse."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= API.integer_metric_max:
        return int(value)
    return value


def _metric_field(name: str) -> tuple[Any, Any]:
    """A metric as the contract types it: strict (no strings, no booleans), finite, in range.

    Float metrics take any JSON number up to the contract's bound or, where the contract sets none, the
    feed's plausible maximum (``FEED_PLAUSIBLE_MAX``). Integer metrics take JSON integers and integral
    floats that fit 32 bits.
    """
    low, high = METRIC_RANGES[name]
    high = high if high is not None else FEED_PLAUSIBLE_MAX.get(name)
    if name in INTEGER_METRICS:
        return (Annotated[int, BeforeValidator(_integral)],
                Field(strict=True, ge=low, le=min(high, API.integer_metric_max) if high is not None
                      else API.integer_metric_max))
    return float, Field(strict=True, allow_inf_nan=False, ge=low, **({"le": high} if high is not None else {}))


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
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        first, last = API.feed_timestamp_years
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


InstanceLabel = Annotated[str, StringConstraints(min_length=1, max_length=INSTANCE_MAX_LENGTH,
                                                 pattern=INSTANCE_PATTERN)]


class FeedRequest(BaseModel):
    """A batch of records (up to MAX_RECORDS_PER_REQUEST)."""

    records: list[LinborgRecord]
    instances: dict[str, InstanceLabel] | None = Field(
        default=None, max_length=MAX_RECORDS_PER_REQUEST,
        description="optional: server_name -> the Prometheus 'instance' (host:port) its records came from; kept for "
                    "servers of this batch and put on their /metrics series and Alertmanager alerts")


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


# ============================================================================ forecasts (out)
class QuantileBand(TypedDict):
    """One forecast value as a band (a typed dict: the engine builds thousands per cycle)."""

    p10: float
    p50: float
    p90: float


class Alert(BaseModel):
    """An alert: a metric on one server at warning level or worse, now or within a horizon (``kind`` "risk"),
    or the model's own forecasts of a metric at a horizon no longer holding (``kind`` "model_degraded",
    server_name "fleet")."""

    kind: Literal["risk", "model_degraded"] = "risk"
    server_name: str
    profile: str
    level: AlertLevel
    metric: str
    horizon: RiskHorizon
    predicted_value: float
    threshold: float
    p50: float | None
    minutes_to_breach: int | None
    reason: str
    probability: float | None = Field(default=None, description="the chance (0..1) of reaching the threshold "
                                                               "within 8 h, from the calibrated band; 1 for a "
                                                               "breach in progress (alert_policy.py)")
    id: str | None = Field(default=None, description='identity "kind:server:metric" (lifecycle; /alerts/*)')
    starts_at: str | None = Field(default=None, description="forecast origin (data time) of the cycle that "
                                                           "raised it")
    ends_at: str | None = Field(default=None, description="resolved: the first cycle without it (after the "
                                                         "hold-down); open: null")
    suppressed_reason: str | None = Field(default=None,
                                          description="why it is held back (a server in maintenance)")


class ServerPrediction(BaseModel):
    """A server's forecast summary (codex format), or why it has none."""

    server_name: str
    profile: str
    status: ServerStatus
    known_to_model: bool
    prediction_time: str | None = Field(description="start of the last complete bucket (data time, UTC)")
    buckets_needed: int = Field(default=0, description="warming up: buckets still needed before a first forecast")
    history_buckets: int | None = Field(default=None, description="history the forecast read (fewer than the "
                                                                   "model's encoder length = a new server, or the "
                                                                   "buckets since a level shift)")
    last_sample_time: str | None = None
    reason: str | None = Field(default=None, description="not_ready: why this server has no forecast this cycle")
    current: dict[str, float] = {}
    predictions: dict[str, dict[str, QuantileBand]] = {}
    risk_score: float | None = None
    risk_level: RiskLevel | None = None
    alerts: list[Alert] = []
    last_value_served: dict[str, list[str]] = Field(
        default={}, description="live selection: metric -> the horizons where this server is served the last value "
                                "(the model's band moved to it) because the model's matured forecasts on this server "
                                "lose to it significantly, or the model never saw the server and has not yet shown "
                                "it does better; empty: the model everywhere")


class ForecastSource(TypedDict):
    """Where a metric's forecast at one horizon comes from (the model's persistence blend, fitted on validation)."""

    source: Literal["model", "model+last_value", "last_value"]
    model_share: float  # p50 = last value + model_share x (model's p50 - last value), in the modelled units


SOURCES_DESCRIPTION = ("per metric and horizon: 'model', 'model+last_value' (the model's forecast change "
                       "shrunk toward the last value, model_share of it kept) or 'last_value' (p50 is the last "
                       "value, the band the model's) -- fitted on the model's validation windows where the last "
                       "value was better there")


class FleetPredictions(BaseModel):
    """Every tracked server in one cycle."""

    prediction_time: str | None
    model_version: str
    horizons: dict[str, int]
    sources: dict[str, dict[str, ForecastSource]] = Field(default={}, description=SOURCES_DESCRIPTION)
    summary: dict[str, int]
    servers: list[ServerPrediction]


class AnomalyRow(BaseModel):
    """How far one server's metric lies outside the band forecast for now, made ``horizon`` earlier."""

    server_name: str
    profile: str
    metric: str
    horizon: str = Field(description='"30min" or "1hr": the forecast was made this long before `at`')
    score: float = Field(description="|actual - p50| / half-width of the served band on the actual's side (p90 - "
                                     "p50 at or above p50, p50 - p10 below; at least min_half_width): 1 = on the "
                                     "band's edge, above 1 outside it")
    side: Literal["above", "below"] = Field(description="where the actual lies against p50")
    actual: float = Field(description="the metric in the bucket `at` (display units; CPU as used)")
    p10: float
    p50: float
    p90: float
    forecast_made_at: str = Field(description="origin (data time) of the forecast the band comes from")


class AnomaliesResponse(BaseModel):
    """GET /anomalies: the present against the calibrated bands the model drew for it 30 min and 1 h ago."""

    model_version: str | None
    at: str | None = Field(description="the bucket scored: the last forecast cycle's origin (data time); null before "
                                       "the model's first cycle")
    horizons: list[str] = Field(description="the horizons scored")
    min_half_width: dict[str, float] = Field(description="per metric, the narrowest half-width a score divides by "
                                                         "(display units): a needle-thin band is read as this wide")
    servers_scored: int = Field(description="servers with a score at `at` (live accuracy's: established, with a "
                                            "sample now and at the forecast's origin)")
    matching: int = Field(description="scores matching the filters; at most ANOMALY.max_rows are listed")
    anomalies: list[AnomalyRow] = Field(description="highest score first")


class ServerFan(BaseModel):
    """Full 96-step forecast fan of one server."""

    server: ServerPrediction
    steps: list[str]
    sources: dict[str, dict[str, ForecastSource]] = Field(default={}, description=SOURCES_DESCRIPTION)
    fan: dict[str, dict[str, list[float]]]
    anomalies: list[AnomalyRow] = Field(default=[], description="this server's anomaly scores now, highest first "
                                                                "(as GET /anomalies?server=...&min_score=0)")


class AlertsResponse(BaseModel):
    """Active alerts across the fleet, most urgent first."""

    prediction_time: str | None
    alerts: list[Alert]
    suppressed: list[Alert] = Field(default=[], description="open alerts held back (servers in maintenance)")


class AlertHistoryResponse(BaseModel):
    """Alerts open at any time in the window (resolved ones with ends_at), newest start first."""

    since: str | None
    alerts: list[Alert]


class HistoryResponse(BaseModel):
    """Recent actuals and what was forecast for them."""

    server_name: str
    profile: str
    timestamps: list[str]
    actuals: dict[str, list[float | None]]
    states: list[str | None]
    forecasts: dict[str, dict[str, Any]]


# ============================================================================ status and admin
class HealthResponse(BaseModel):
    """Liveness, whether a model is loaded, and whether forecast cycles are failing."""

    status: Literal["ok", "degraded"]
    model_loaded: bool
    reason: str | None = Field(default=None, description="degraded: what is wrong (e.g. cycles failing, and why)")
    shard: str | None = Field(default=None, description="'K/N' with --shard (Docs/SCALING.md); null: the whole fleet")


class AlertmanagerTarget(BaseModel):
    """Delivery of alerts to one Alertmanager (--alertmanager-url); the URL without credentials."""

    url: str
    state: Literal["idle", "ok", "failing"] = Field(description="idle: nothing sent yet; failing: the last POST "
                                                                "failed and is being retried with back-off")
    firing: int = Field(description="alerts firing as of the last successful send")
    resolving: int = Field(description="resolved alerts still re-sent with the next sends")
    notifications_sent: int = Field(description="successful POSTs")
    alerts_sent: int
    failures: int = Field(description="failed POSTs since start")
    consecutive_failures: int
    last_error: str | None
    last_attempt_at: str | None
    last_success_at: str | None


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
    accuracy_summary: dict[str, Any] | None = Field(
        default=None, description="live accuracy of matured forecasts (24 h): per horizon the mean p10-p90 "
                                  "coverage and skill against persistence over the metrics; see /accuracy")
    model_reloads: int = Field(default=0, description="promotions / rollbacks picked up from the models' latest link")
    model_reload_failures: int = 0
    retrain: dict[str, Any] | None = Field(
        default=None, description="scheduled retraining (--retrain-every): runs, failures, the running one, the next")
    alertmanager: list[AlertmanagerTarget] | None = Field(
        default=None, description="alerts pushed to Alertmanager (--alertmanager-url): per URL, delivery state")
    last_cycle_error: str | None = Field(default=None, description="why the last forecast cycle failed, if it did")
    max_servers: int = Field(default=0, description="servers the daemon tracks at most (--max-servers)")
    server_windows_bytes: int = Field(default=0, description="memory held by the tracked servers' rings")
    websocket_subscribers: int = 0
    maintenance_windows: int = Field(default=0, description="open operator maintenance windows (GET /maintenance)")
    refused: dict[str, int] = Field(default_factory=dict, description="trust-boundary refusals by reason since "
                                                                      "start (caps, rates, key bindings)")
    incremental_passes: int = Field(default=0, description="incremental passes: servers that became ready for the "
                                                            "last cycle's bucket after it ran, forecast and merged")
    incremental_forecasts: int = Field(default=0, description="servers those passes forecast (late data, a backfill)")
    shard: str | None = Field(default=None, description="'K/N' with --shard: this daemon owns slice K of N of the "
                                                     "fleet (Docs/SCALING.md); null: the whole fleet")


class AccuracyRow(BaseModel):
    """Live figures of one metric x horizon for a group (the fleet, a profile or a server) over a window."""

    window: str
    group: str = Field(description='"all", a profile, or a server name')
    metric: str
    horizon: str
    n: int = Field(description="matured forecasts scored")
    qrisk_50: float | None
    qrisk_90: float | None
    mae_p50: float | None = Field(description="mean absolute error of p50, in the metric's units")
    coverage_p10_p90: float | None = Field(description="coverage of the bands as served (calibrated)")
    coverage_unadjusted: float | None = Field(description="coverage the model's own bands would have had")
    below_p10_ratio: float | None
    above_p90_ratio: float | None
    skill_vs_persistence: float | None = Field(description="1 - qrisk_50(model) / qrisk_50(last value)")
    band_scale_low: float = Field(description="live calibration multiplier of the p50-p10 half-width")
    band_scale_high: float = Field(description="live calibration multiplier of the p90-p50 half-width")


class WorstServer(BaseModel):
    """A server whose forecasts of a metric at a horizon did worst against persistence (24 h)."""

    server_name: str
    profile: str
    metric: str
    horizon: str
    n: int
    qrisk_50: float | None
    coverage_p10_p90: float | None
    skill_vs_persistence: float | None


class AlertQualityRow(BaseModel):
    """The daemon's own risk alerts of one metric, judged against the breaches that followed (live_alerts.py)."""

    metric: str
    window: str = Field(description='rolling window of data time, e.g. "7d"')
    breaches: int = Field(description="breaches confirmed: the warning tier held 10 min after an hour below elevated")
    warned: int = Field(description="breaches an unsuppressed risk alert was open for at their start")
    timely: int = Field(description="warned breaches with a lead of 30 min to 8 h")
    median_lead_minutes: float | None = Field(description="median lead of the warned breaches")
    episodes: int = Field(description="closed alert episodes judged")
    false_episodes: int = Field(description="judged episodes no breach started in (nor the bucket after)")
    precision: float | None = Field(description="(episodes - false_episodes) / episodes")
    recall: float | None = Field(description="warned / breaches (a breach nobody warned of counts too)")


class LastValueRow(BaseModel):
    """Live selection at one metric x horizon: how many forecast servers are served the last value."""

    metric: str
    horizon: str
    servers: int = Field(description="servers served the last value in the last cycle")
    of: int = Field(description="servers forecast in the last cycle")


class LastValueServer(BaseModel):
    """One server served the last value somewhere (live selection)."""

    server_name: str
    profile: str
    known_to_model: bool
    last_value_served: dict[str, list[str]]


class LiveSelectionSummary(BaseModel):
    """Live selection: where the last value is served instead of the model (Docs/API_REFERENCE.md, Live selection)."""

    enabled: bool
    rows: list[LastValueRow]
    servers: list[LastValueServer] = Field(description="servers served the last value anywhere, the most such "
                                                       "metric x horizons first (at most 50)")
    switches: dict[str, int] = Field(description="flips since the model was loaded, by what is served after them "
                                                 "('last_value', 'model')")


class AccuracyResponse(BaseModel):
    """How the served forecasts fared once their target time arrived."""

    model_version: str | None
    scored_since: str | None = Field(description="the first forecast origin of the current model")
    last_scored_target: str | None
    windows: dict[str, int] = Field(description="window -> hours")
    band_adaptation: bool
    rows: list[AccuracyRow]
    worst_servers: list[WorstServer]
    model_degraded: list[Alert]
    alert_quality: list[AlertQualityRow] = Field(default_factory=list, description="the daemon's risk alerts "
                                                 "judged per metric (precision, recall, lead; rolling 7 days)")
    live_selection: LiveSelectionSummary | None = Field(default=None, description="where the last value is served "
                                                        "instead of the model (None: no model loaded)")


class MaintenanceRequest(BaseModel):
    """An operator's maintenance window for one server: alerts about it are suppressed while it lasts."""

    model_config = ConfigDict(extra="forbid")
    hours: float = Field(gt=0, le=MAINTENANCE_MAX_HOURS, description="how long from now")
    reason: str = Field(default="", max_length=API.maintenance_reason_max_length, pattern=r"^[^\x00-\x1f\x7f]*$",
                        description="shown beside suppressed alerts and in the log (no control characters)")


class MaintenanceWindow(BaseModel):
    """An open maintenance window."""

    server_name: str
    starts_at: str
    ends_at: str
    reason: str
    set_by: str = Field(description="the id (a hash) of the admin key that set it")


class MaintenanceResponse(BaseModel):
    """GET /maintenance: the open windows."""

    windows: list[MaintenanceWindow]


class DemoScenarioRequest(BaseModel):
    """Which scenario the demo stream should play."""

    scenario: Literal[tuple(DEMO_SCENARIOS)]  # type: ignore[valid-type]


class DemoScenario(DemoScenarioRequest):
    """The demo scenario and when it was last changed."""

    changed_at: str | None = None


class ErrorResponse(BaseModel):
    """Every error the daemon answers: a machine-readable code and a sentence for a person."""

    error: str = Field(description="e.g. unauthorized, rate_limited, payload_too_large, model_not_loaded")
    detail: str | list[dict[str, str]] = Field(description="what went wrong and how to fix it")


# Validators reused on every request (building one is the expensive part).
RECORD_ADAPTER = TypeAdapter(LinborgRecord)
BATCH_ADAPTER = TypeAdapter(list[LinborgRecord])
FEED_ADAPTER = TypeAdapter(FeedRequest)
INSTANCES_ADAPTER = TypeAdapter(dict[str, InstanceLabel] | None)
