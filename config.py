"""Single source of every number and name the toolkit uses.

Every module imports its constants from here; nothing else in the code base repeats
a column name list, a threshold, a horizon or a path. If you need a new number, add
it here with a comment that says what it means and why it has that value.

Sections, top to bottom:
  1. project paths and versions, docs that errors cite, network defaults, logging
  2. the data contract (columns, states, profiles, naming, ranges)
  3. time grid and forecast horizons
  4. the fleet simulator's behaviour per profile
  5. state labelling (how a feed derives ``state``), the offline vector, trace import
  6. validator limits
  7. model and training (features, architecture, optimiser, backtest, saved layout)
  8. risk scoring and alerts
  9. the inference daemon (API limits, store, retention, cycle), its clients, metric names for people
 10. the live demo
 11. real metrics in: host collector and Prometheus adapter
 12. settings owned by one module each: one frozen dataclass and one instance per module

Measured figures (speeds, budgets met) live in the Docs, not here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

# ---------------------------------------------------------------------------
# 1. Project paths and versions
# ---------------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parent
VERSION_FILE = PROJECT_ROOT / "VERSION"
PROJECT_VERSION = VERSION_FILE.read_text(encoding="utf-8").strip()

# Defaults for generated artefacts (both folders are git-ignored).
TRAINING_DIR = PROJECT_ROOT / "training"
MODELS_DIR = PROJECT_ROOT / "models"
TRAINING_DATA_FILE = "server_metrics.parquet"
METADATA_FILE = "metrics_metadata.json"
SERVER_MAPPING_FILE = "server_mapping.json"

# Docs referenced by error messages (codex rule: every error names its doc).
DATA_CONTRACT_DOC = "Docs/DATA_CONTRACT.md"
SERVER_PROFILES_DOC = "Docs/SERVER_PROFILES.md"
IMPORTING_DOC = "Docs/IMPORTING.md"

# Network defaults. Services bind to loopback unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
OFFLINE_PREDICTIONS_FILE = Path("predictions.json")  # `main.py infer --data FILE` writes here (--out)
DAEMON_PORT = 8000
DEFAULT_DAEMON_URL = f"http://{DEFAULT_HOST}:{DAEMON_PORT}"
DASHBOARD_PORT = 8501

# Logging.
LOG_LEVEL = os.environ.get("TFT_LOG_LEVEL", "INFO")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# ---------------------------------------------------------------------------
# 2. The data contract (Docs/DATA_CONTRACT.md is the prose version of this)
# ---------------------------------------------------------------------------
# MAJOR changes when a schema change breaks existing data or models.
CONTRACT_VERSION = "1.2.2"  # 1.1: measured/unmeasured metrics; 1.2: real host names; 1.2.1: soft-state
# ending; 1.2.2: finite numbers, 32-bit counts, no guessed types (Docs/DATA_CONTRACT.md, Invariants)

ID_COLUMNS = ["timestamp", "server_name", "profile", "state"]

CPU_METRICS = ["cpu_user_pct", "cpu_sys_pct", "cpu_iowait_pct", "cpu_idle_pct", "java_cpu_pct"]
MEMORY_METRICS = ["mem_used_pct", "swap_used_pct"]
DISK_METRICS = ["disk_usage_pct"]
NETWORK_METRICS = ["net_in_mb_s", "net_out_mb_s"]
CONNECTION_METRICS = ["back_close_wait", "front_close_wait"]
SYSTEM_METRICS = ["load_average", "uptime_days"]

# The 14 LINBORG metrics, in contract order.
LINBORG_METRICS = (
    CPU_METRICS + MEMORY_METRICS + DISK_METRICS + NETWORK_METRICS + CONNECTION_METRICS + SYSTEM_METRICS
)
REQUIRED_COLUMNS = ID_COLUMNS + LINBORG_METRICS  # 18 columns

# Counts are whole numbers; everything else in LINBORG_METRICS is a float.
INTEGER_METRICS = ["back_close_wait", "front_close_wait", "uptime_days"]
FLOAT_METRICS = [m for m in LINBORG_METRICS if m not in INTEGER_METRICS]
PERCENT_METRICS = [m for m in LINBORG_METRICS if m.endswith("_pct")]

# The four CPU components of one row add up to 100 (within rounding).
CPU_COMPONENTS = ["cpu_user_pct", "cpu_sys_pct", "cpu_iowait_pct", "cpu_idle_pct"]
CPU_SUM_TOLERANCE = 0.5  # percentage points; rounding to 2 decimals needs far less

# Inclusive contract ranges (None = unbounded above).
UPTIME_MAX_DAYS = 30  # every server is patched and rebooted at least every 30 days
METRIC_RANGES: dict[str, tuple[float, float | None]] = {
    **{m: (0.0, 100.0) for m in PERCENT_METRICS},
    "net_in_mb_s": (0.0, None),
    "net_out_mb_s": (0.0, None),
    "back_close_wait": (0, None),
    "front_close_wait": (0, None),
    "load_average": (0.0, None),
    "uptime_days": (0, UPTIME_MAX_DAYS),
}
# What a live feed may claim where the contract sets no upper bound: far above any real host (a 400 Gbit/s
# link moves 50,000 MB/s; a 1,024-core host at 100x overload has a load of ~100,000), far below float32's
# limit (the model runs in float32). Beyond it a record is rejected (422), never stored.
FEED_PLAUSIBLE_MAX: dict[str, float] = {
    "net_in_mb_s": 100_000.0,
    "net_out_mb_s": 100_000.0,
    "load_average": 100_000.0,
    "back_close_wait": 10_000_000,
    "front_close_wait": 10_000_000,
}

# Columns from the pre-LINBORG system. Data carrying them was produced by the old
# pipeline and must be regenerated.
DEPRECATED_COLUMNS = ["cpu_pct", "mem_pct", "disk_io_mb_s", "latency_ms"]

VALID_STATES = [
    "critical_issue",
    "healthy",
    "heavy_load",
    "idle",
    "maintenance",
    "morning_spike",
    "offline",
    "recovery",
]

VALID_PROFILES = [
    "ml_compute",
    "database",
    "web_api",
    "conductor_mgmt",
    "data_ingest",
    "risk_analytics",
    "generic",
]

# Any server name (contract 1.2): 1-64 characters, lower-case letters, digits, ".", "_", "-".
SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SERVER_NAME_MAX_LENGTH = 64
# The Prometheus 'instance' (host:port) a server's records came from, when a feeder knows it: printable
# ASCII without spaces or quotes, so it can be a label value and an Alertmanager label as given.
INSTANCE_MAX_LENGTH = 256
INSTANCE_PATTERN = r"^[!#-&(-~]+$"
# Host-name prefix and minimum digit count per profile (ppml0001, ppdb001, ppcon01...).
# A name that is a prefix followed only by digits is a "convention name": its prefix is its profile.
PROFILE_PREFIXES = {
    "ml_compute": "ppml",
    "database": "ppdb",
    "web_api": "ppweb",
    "conductor_mgmt": "ppcon",
    "data_ingest": "ppetl",
    "risk_analytics": "pprisk",
    "generic": "ppgen",
}
PROFILE_NAME_DIGITS = {
    "ml_compute": 4,
    "database": 3,
    "web_api": 3,
    "conductor_mgmt": 2,
    "data_ingest": 3,
    "risk_analytics": 3,
    "generic": 3,
}

# Default fleet: 90 servers in realistic proportions.
DEFAULT_FLEET = {
    "web_api": 25,
    "ml_compute": 20,
    "database": 15,
    "data_ingest": 10,
    "risk_analytics": 8,
    "generic": 7,
    "conductor_mgmt": 5,
}

# Server ids: the first SERVER_ID_HEX_CHARS hex digits of SHA256(name[#salt]).
# 12 hex digits = 48 bits: a collision among 10,000 servers has odds of about 2e-7,
# and when one happens it is resolved deterministically (see server_encoder.py).
SERVER_ID_HASH = "sha256"
SERVER_ID_HEX_CHARS = 12
SERVER_ID_MAX_SALT = 1000

# ---------------------------------------------------------------------------
# 3. Time grid and forecast horizons
# ---------------------------------------------------------------------------
SAMPLING_INTERVAL_MINUTES = 5
SAMPLING_INTERVAL_SECONDS = SAMPLING_INTERVAL_MINUTES * 60
STEPS_PER_HOUR = 60 // SAMPLING_INTERVAL_MINUTES  # 12
STEPS_PER_DAY = 24 * STEPS_PER_HOUR  # 288

# Label -> number of 5-minute steps ahead. Every label shown to a user is true.
HORIZONS = {"30min": 6, "1hr": 12, "8hr": 96}
# How a horizon is written for people (alert reasons, the dashboard).
HORIZON_TEXT = {"30min": "30 min", "1hr": "1 h", "8hr": "8 h"}
MAX_PREDICTION_LENGTH = max(HORIZONS.values())  # 96 steps = 8 hours

# ---------------------------------------------------------------------------
# 4. Fleet simulator
# ---------------------------------------------------------------------------
# CSV is only offered for small exports (codex: Parquet-first).
PARQUET_COMPRESSION = "zstd"
PARQUET_ROW_GROUP_ROWS = 131_072


# Incidents: slow build-up (the ramp), a critical plateau, then a fix.


@dataclass(frozen=True)
class IncidentSpec:
    """How one incident type unfolds. Durations are in hours."""

    ramp_hours: tuple[float, float]  # build-up duration range (precursors are visible here)
    critical_hours: tuple[float, float]  # time spent past the critical threshold before the fix
    peak: float  # value the driving metric reaches at the end of the ramp
    reboot_probability: float  # chance the fix is a reboot (brief offline, uptime reset)


INCIDENTS = {
    # Heap or cache grows until the box swaps; fixed by a restart.
    "memory_leak": IncidentSpec(ramp_hours=(3.0, 10.0), critical_hours=(0.25, 1.0), peak=98.5,
                                reboot_probability=0.3),
    # A runaway log or a stuck export fills the data volume; fixed by a clean-up.
    "disk_fill": IncidentSpec(ramp_hours=(4.0, 14.0), critical_hours=(0.25, 1.5), peak=97.5,
                              reboot_probability=0.0),
    # Storage latency climbs (a degraded array, a noisy neighbour); clears on its own.
    "io_saturation": IncidentSpec(ramp_hours=(0.75, 3.0), critical_hours=(0.25, 1.0), peak=45.0,
                                  reboot_probability=0.0),
    # Back-end stops closing sockets; CLOSE_WAIT piles up until the service is restarted.
    "connection_pileup": IncidentSpec(ramp_hours=(1.0, 4.0), critical_hours=(0.25, 0.75), peak=1400.0,
                                      reboot_probability=0.1),
}


@dataclass(frozen=True)
class ProfileBehaviour:
    """What a server of one profile looks like. Activity is a 0..1 workload level.

    ``weekday_curve`` / ``weekend_curve`` are (hour, activity) anchor points, linearly
    interpolated around the clock (UTC). Metric levels are ``base + amplitude * activity``.
    """

    weekday_curve: tuple[tuple[float, float], ...]
    weekend_curve: tuple[tuple[float, float], ...]
    regime_activity: dict[str, float]  # multiplier on activity per workload regime
    cpu_base: float  # % busy (user + sys) at zero activity
    cpu_amplitude: float  # extra % busy at activity 1
    sys_share: float  # share of busy CPU spent in the kernel
    java_share: float  # share of busy CPU used by Java/Spark processes
    iowait_base: float
    iowait_amplitude: float
    mem_base: float
    mem_amplitude: float
    disk_base: tuple[float, float]  # range of the per-server starting disk usage
    disk_growth_pct_per_day: tuple[float, float]  # log and data growth between rotations
    net_in_base: float  # MB/s
    net_in_amplitude: float
    net_out_base: float
    net_out_amplitude: float
    back_close_wait_base: float  # mean CLOSE_WAIT sockets towards back-ends
    back_close_wait_amplitude: float
    front_close_wait_base: float
    front_close_wait_amplitude: float
    cores: tuple[int, ...]  # core counts a server of this profile may have (drives load_average)
    incident_rate_per_day: dict[str, float]  # expected incidents of each type per server-day
    crash_rate_per_day: float
    # Extra activity in the first minutes of every hour (ETL ingest bursts, cron jobs).
    hourly_burst: tuple[float, float] = (0.0, 0.0)  # (activity added, minutes it lasts)
    # Nightly backup window that adds I/O wait (databases): (start hour, end hour, iowait added).
    backup_window: tuple[float, float, float] = (0.0, 0.0, 0.0)


PROFILE_BEHAVIOUR: dict[str, ProfileBehaviour] = {
    "web_api": ProfileBehaviour(
        weekday_curve=((0, 0.18), (5, 0.12), (7, 0.35), (8, 0.7), (9, 0.95), (10, 0.8), (12, 0.75),
                       (14, 0.78), (17, 0.65), (20, 0.4), (23, 0.22)),
        weekend_curve=((0, 0.15), (6, 0.1), (10, 0.3), (14, 0.35), (19, 0.3), (23, 0.18)),
        regime_activity={"quiet": 0.75, "normal": 1.0, "busy": 1.25},
        cpu_base=6.0, cpu_amplitude=55.0, sys_share=0.22, java_share=0.55,
        iowait_base=0.8, iowait_amplitude=2.5,
        mem_base=42.0, mem_amplitude=22.0,
        disk_base=(25.0, 45.0), disk_growth_pct_per_day=(0.2, 0.6),
        net_in_base=2.0, net_in_amplitude=45.0, net_out_base=5.0, net_out_amplitude=140.0,
        back_close_wait_base=6.0, back_close_wait_amplitude=40.0,
        front_close_wait_base=4.0, front_close_wait_amplitude=30.0,
        cores=(8, 16),
        incident_rate_per_day={"memory_leak": 0.09, "disk_fill": 0.02, "io_saturation": 0.02,
                               "connection_pileup": 0.09},
        crash_rate_per_day=0.01,
    ),
    "ml_compute": ProfileBehaviour(
        weekday_curve=((0, 0.85), (8, 0.88), (12, 0.95), (18, 0.95), (23, 0.88)),
        weekend_curve=((0, 0.82), (12, 0.85), (23, 0.82)),
        regime_activity={"quiet": 0.12, "normal": 1.0, "busy": 1.12},  # quiet = between training jobs
        cpu_base=3.0, cpu_amplitude=76.0, sys_share=0.07, java_share=0.6,
        iowait_base=0.3, iowait_amplitude=1.5,
        mem_base=30.0, mem_amplitude=45.0,
        disk_base=(35.0, 60.0), disk_growth_pct_per_day=(0.3, 0.9),
        net_in_base=1.0, net_in_amplitude=80.0, net_out_base=0.5, net_out_amplitude=8.0,
        back_close_wait_base=1.0, back_close_wait_amplitude=3.0,
        front_close_wait_base=0.5, front_close_wait_amplitude=1.0,
        cores=(32, 48, 64),
        incident_rate_per_day={"memory_leak": 0.12, "disk_fill": 0.04, "io_saturation": 0.01,
                               "connection_pileup": 0.0},
        crash_rate_per_day=0.015,
    ),
    "database": ProfileBehaviour(
        weekday_curve=((0, 0.25), (5, 0.2), (7, 0.4), (8, 0.7), (9, 0.9), (10, 0.8), (12, 0.72),
                       (17, 0.6), (20, 0.38), (23, 0.28)),
        weekend_curve=((0, 0.22), (8, 0.2), (13, 0.3), (20, 0.28), (23, 0.22)),
        regime_activity={"quiet": 0.8, "normal": 1.0, "busy": 1.2},
        cpu_base=8.0, cpu_amplitude=45.0, sys_share=0.28, java_share=0.05,
        iowait_base=3.0, iowait_amplitude=9.0,
        mem_base=64.0, mem_amplitude=16.0,  # buffer cache keeps databases memory-heavy
        disk_base=(45.0, 65.0), disk_growth_pct_per_day=(0.4, 1.0),
        net_in_base=4.0, net_in_amplitude=35.0, net_out_base=6.0, net_out_amplitude=55.0,
        back_close_wait_base=3.0, back_close_wait_amplitude=18.0,
        front_close_wait_base=2.0, front_close_wait_amplitude=10.0,
        cores=(16, 32),
        incident_rate_per_day={"memory_leak": 0.02, "disk_fill": 0.08, "io_saturation": 0.1,
                               "connection_pileup": 0.04},
        crash_rate_per_day=0.005,
        backup_window=(1.0, 3.0, 9.0),
    ),
    "data_ingest": ProfileBehaviour(
        weekday_curve=((0, 0.7), (4, 0.75), (5, 0.35), (9, 0.45), (13, 0.45), (18, 0.5), (22, 0.6)),
        weekend_curve=((0, 0.55), (4, 0.6), (5, 0.3), (18, 0.35), (23, 0.5)),
        regime_activity={"quiet": 0.7, "normal": 1.0, "busy": 1.3},
        cpu_base=5.0, cpu_amplitude=45.0, sys_share=0.15, java_share=0.7,
        iowait_base=1.5, iowait_amplitude=7.0,
        mem_base=40.0, mem_amplitude=30.0,
        disk_base=(40.0, 60.0), disk_growth_pct_per_day=(0.5, 1.2),
        net_in_base=5.0, net_in_amplitude=260.0, net_out_base=2.0, net_out_amplitude=25.0,
        back_close_wait_base=2.0, back_close_wait_amplitude=8.0,
        front_close_wait_base=1.0, front_close_wait_amplitude=3.0,
        cores=(16, 32),
        incident_rate_per_day={"memory_leak": 0.05, "disk_fill": 0.1, "io_saturation": 0.06,
                               "connection_pileup": 0.02},
        crash_rate_per_day=0.01,
        hourly_burst=(0.25, 15.0),
    ),
    "risk_analytics": ProfileBehaviour(
        weekday_curve=((0, 0.2), (6, 0.15), (9, 0.45), (16, 0.5), (18, 0.85), (21, 0.95), (23, 0.45)),
        weekend_curve=((0, 0.15), (12, 0.18), (23, 0.15)),
        regime_activity={"quiet": 0.7, "normal": 1.0, "busy": 1.2},
        cpu_base=4.0, cpu_amplitude=62.0, sys_share=0.06, java_share=0.8,
        iowait_base=0.6, iowait_amplitude=2.5,
        mem_base=38.0, mem_amplitude=42.0,
        disk_base=(30.0, 50.0), disk_growth_pct_per_day=(0.2, 0.6),
        net_in_base=1.0, net_in_amplitude=25.0, net_out_base=0.5, net_out_amplitude=8.0,
        back_close_wait_base=1.0, back_close_wait_amplitude=4.0,
        front_close_wait_base=0.5, front_close_wait_amplitude=2.0,
        cores=(16, 32, 48),
        incident_rate_per_day={"memory_leak": 0.1, "disk_fill": 0.02, "io_saturation": 0.02,
                               "connection_pileup": 0.01},
        crash_rate_per_day=0.01,
    ),
    "conductor_mgmt": ProfileBehaviour(
        weekday_curve=((0, 0.15), (6, 0.3), (7, 0.2), (9, 0.3), (17, 0.25), (23, 0.15)),
        weekend_curve=((0, 0.12), (6, 0.2), (7, 0.12), (23, 0.12)),
        regime_activity={"quiet": 0.8, "normal": 1.0, "busy": 1.2},
        cpu_base=3.0, cpu_amplitude=30.0, sys_share=0.2, java_share=0.5,
        iowait_base=0.4, iowait_amplitude=1.2,
        mem_base=30.0, mem_amplitude=12.0,
        disk_base=(20.0, 35.0), disk_growth_pct_per_day=(0.1, 0.3),
        net_in_base=0.3, net_in_amplitude=3.0, net_out_base=0.3, net_out_amplitude=3.0,
        back_close_wait_base=1.0, back_close_wait_amplitude=6.0,
        front_close_wait_base=0.5, front_close_wait_amplitude=2.0,
        cores=(4, 8),
        incident_rate_per_day={"memory_leak": 0.04, "disk_fill": 0.03, "io_saturation": 0.01,
                               "connection_pileup": 0.03},
        crash_rate_per_day=0.005,
        hourly_burst=(0.3, 5.0),
    ),
    "generic": ProfileBehaviour(
        weekday_curve=((0, 0.15), (7, 0.2), (9, 0.5), (12, 0.45), (17, 0.4), (20, 0.2), (23, 0.15)),
        weekend_curve=((0, 0.12), (12, 0.2), (23, 0.12)),
        regime_activity={"quiet": 0.7, "normal": 1.0, "busy": 1.3},
        cpu_base=4.0, cpu_amplitude=40.0, sys_share=0.18, java_share=0.25,
        iowait_base=0.8, iowait_amplitude=3.0,
        mem_base=35.0, mem_amplitude=25.0,
        disk_base=(25.0, 55.0), disk_growth_pct_per_day=(0.2, 0.5),
        net_in_base=0.5, net_in_amplitude=12.0, net_out_base=0.5, net_out_amplitude=10.0,
        back_close_wait_base=1.0, back_close_wait_amplitude=6.0,
        front_close_wait_base=1.0, front_close_wait_amplitude=4.0,
        cores=(4, 8, 16),
        incident_rate_per_day={"memory_leak": 0.05, "disk_fill": 0.04, "io_saturation": 0.03,
                               "connection_pileup": 0.03},
        crash_rate_per_day=0.01,
    ),
}


@dataclass(frozen=True)
class NoiseSpec:
    """Noise of one metric: a slow AR(1) wander plus a fast AR(1) jitter.

    ``phi`` is the per-step autocorrelation; ``sigma`` the stationary standard deviation,
    relative to the metric's own level for relative noise or absolute otherwise.
    """

    slow_phi: float
    slow_sigma: float
    fast_phi: float
    fast_sigma: float
    relative: bool


NOISE: dict[str, NoiseSpec] = {
    "activity": NoiseSpec(slow_phi=0.985, slow_sigma=0.06, fast_phi=0.5, fast_sigma=0.05, relative=False),
    "cpu": NoiseSpec(slow_phi=0.95, slow_sigma=0.06, fast_phi=0.3, fast_sigma=0.08, relative=True),
    "iowait": NoiseSpec(slow_phi=0.9, slow_sigma=0.15, fast_phi=0.3, fast_sigma=0.25, relative=True),
    "mem": NoiseSpec(slow_phi=0.995, slow_sigma=1.5, fast_phi=0.5, fast_sigma=0.4, relative=False),
    "net": NoiseSpec(slow_phi=0.95, slow_sigma=0.12, fast_phi=0.3, fast_sigma=0.18, relative=True),
    "connections": NoiseSpec(slow_phi=0.9, slow_sigma=0.2, fast_phi=0.2, fast_sigma=0.15, relative=True),
    "load": NoiseSpec(slow_phi=0.8, slow_sigma=0.05, fast_phi=0.3, fast_sigma=0.06, relative=True),
    "swap": NoiseSpec(slow_phi=0.99, slow_sigma=0.4, fast_phi=0.3, fast_sigma=0.1, relative=False),
}

# ---------------------------------------------------------------------------
# 5. State labelling: how ``state`` is derived from observable signals
#    (Docs/DATA_CONTRACT.md, "Deriving state"). Shared by the simulator and by any
#    real feed that calls state_rules.derive_states().
# ---------------------------------------------------------------------------
# Critical thresholds: the same numbers drive the state label and the risk score.
# ML compute nodes run at 100 % CPU by design: for them CPU alone never means critical (None).
CRITICAL_CPU_USED_PCT: dict[str, float | None] = {"ml_compute": None, "default": 97.0}
CRITICAL_IOWAIT_PCT = 30.0
CRITICAL_MEM_PCT = 95.0
CRITICAL_SWAP_PCT = 40.0
CRITICAL_DISK_PCT = 95.0
CRITICAL_CLOSE_WAIT = 500


class Hysteresis(NamedTuple):
    """A state entered at one value and left at another, so a value hovering near one line does not flicker."""

    enter: float
    leave: float


class HourWindow(NamedTuple):
    """A window of the UTC day, in hours (7.5 = 07:30)."""

    start: float
    end: float


# heavy_load: entered at or above ``enter``, left below ``leave``.
HEAVY_CPU_USED_PCT = Hysteresis(enter=80.0, leave=65.0)
HEAVY_MEM_PCT = Hysteresis(enter=90.0, leave=86.0)
# idle: entered below ``enter``, left above ``leave``.
IDLE_CPU_USED_PCT = Hysteresis(enter=7.0, leave=12.0)
# morning_spike: weekday, inside this UTC window, CPU used at least this high.
MORNING_SPIKE_HOURS_UTC = HourWindow(start=7.5, end=10.0)
MORNING_SPIKE_MIN_CPU_USED_PCT = 35.0
# recovery: this many buckets after a critical_issue or an unplanned outage ends.
RECOVERY_BUCKETS = 6
# A critical_issue starts once the condition has held this many consecutive buckets (like
# an alert rule's "for: 10m"), so one noisy sample does not raise it.
CRITICAL_ENTER_BUCKETS = 2
# A critical_issue ends only after the condition has been clear this many buckets.
CRITICAL_CLEAR_BUCKETS = 2
# Soft states (healthy / heavy_load / idle / morning_spike) change only after the current
# one has stopped applying for this many consecutive buckets: no flicker on a noisy threshold.
SOFT_STATE_MIN_BUCKETS = 3
# Values a collector writes for a bucket with no samples (dense offline mode):
# activity metrics are zero, CPU is all idle, disk and uptime carry forward.
# contract.fill_offline is the one implementation.
CARRIED_METRICS = ("disk_usage_pct", "uptime_days")
OFFLINE_IDLE_PCT = 100.0
OFFLINE_ZERO_METRICS = [m for m in LINBORG_METRICS if m != "cpu_idle_pct" and m not in CARRIED_METRICS]

# Importing recorded traces (trace_importer.py; Docs/IMPORTING.md). A metric the source does
# not have is filled with this constant (a quiet, healthy value far from every threshold) and
# listed as unmeasured in metrics_metadata.json: never trained on, never scored.
UNMEASURED_FILL = {
    "cpu_user_pct": 0.0, "cpu_sys_pct": 0.0, "cpu_iowait_pct": 0.0, "cpu_idle_pct": 100.0, "java_cpu_pct": 0.0,
    "mem_used_pct": 0.0, "swap_used_pct": 0.0, "disk_usage_pct": 0.0, "net_in_mb_s": 0.0, "net_out_mb_s": 0.0,
    "back_close_wait": 0, "front_close_wait": 0, "load_average": 0.0,
}

# ---------------------------------------------------------------------------
# 6. Validator
# ---------------------------------------------------------------------------
VALIDATOR_MAX_EXAMPLES = 5  # offending values / rows quoted per error

# ---------------------------------------------------------------------------
# 7. Model and training (Docs/TRAINING_GUIDE.md explains each choice)
# ---------------------------------------------------------------------------
# What the model forecasts: every metric the risk score and the dashboard use. CPU is
# forecast as cpu_idle_pct and shown as "CPU used" = 100 - idle (quantiles flip).
TARGET_METRICS = [
    "cpu_idle_pct", "cpu_iowait_pct", "mem_used_pct", "swap_used_pct", "disk_usage_pct",
    "load_average", "net_in_mb_s", "net_out_mb_s", "back_close_wait", "front_close_wait",
]
# Bands calibrated after training (split conformal quantile regression, Romano et al. 2019, each
# side on its own): on the validation windows, per target and decoder step, how far outside the
# p10 (below) and the p90 (above) the actuals fall, in the window's normalised units; p10 and p90
# are moved by the finite-sample 90 % quantile of those distances, so each side misses ~10 % on
# data like the validation days. Stored in the model's config.json (FeatureSpec.band_offsets) and
# applied by the model itself, so the backtest, the offline forecast and the daemon agree.
BAND_CALIBRATION = True
# A guard on the heavy-tailed (log-modelled) targets: no quantile is served above
# MODEL.level_ceiling_factor x the larger of the highest value the training fleet showed and the window's
# last value. A log target is decoded with exp, so a forecast a few window spreads too high is a
# factor of hundreds in the metric's units: a simulated conductor whose CLOSE_WAIT had ramped to
# 1,324 sockets got an 8 h p50 of 180,000 (the fleet never exceeded 1,400). The training maxima
# are stored per target in the model (FeatureSpec.level_ceilings) and applied by the model itself.
QUANTILES = [0.1, 0.5, 0.9]
QUANTILE_LABELS = ["p10", "p50", "p90"]
QUANTILE_LEVELS = {"p10": 0.1, "p50": 0.5, "p90": 0.9}  # the numeric quantile of each label (Prometheus' label)
# Yesterday as a known input: for every target, its value FEATURES.seasonal_input_lag buckets (24 h) before
# each encoder and decoder step. Every horizon up to 8 h lies less than a day ahead, so the value is
# already measured at forecast time; the 4-hour encoder cannot see a daily cycle otherwise. It is
# normalised like the target (the window's anchor and spread, clipped at FEATURES.seasonal_input_clip
# spreads) and comes with a flag that is 0 where the server has no history that far back (its first
# day): the value is then 0, i.e. "no information". The value is yesterday's mean over the
# FEATURES.seasonal_input_half_window buckets either side (an hour centred on the same time yesterday): a
# daily cycle is smooth, a single 5-minute bucket of yesterday's network is mostly noise. A forecast
# therefore reads encoder length + lag + half window buckets (~28 h). Models saved before 0.14.0 have
# no such input (FeatureSpec.seasonal_lag None). Docs/TRAINING_GUIDE.md ("Yesterday as an input").
GROUP_ID = "server_id"
TIME_IDX = "time_idx"

# Encoder length (history the model reads: 48 buckets = 4 hours) and model size, chosen by a
# backtest sweep under the daemon's latency budget: see TRAINING_GUIDE.md ("Choosing").
ENCODER_LENGTH = 48
# A level shift in the history (memory 98 % -> 28 % when a leaking process restarts, a disk cleaned
# up): the model reads only the buckets after it (at least FEATURES.min_encoder_length), in the daemon, the
# offline forecast and the backtest alike. Otherwise the window's spread, which normalises the
# forecast, is the size of the jump and the band covers the whole range for the 4 hours the jump
# stays in the window. A shift: a change of at least FEATURES.level_shift_min_points between consecutive
# observed buckets (offline filler skipped, so a reboot's gap counts) in one of these bounded metrics,
# after which the level stays at least FEATURES.level_shift_persist_points away from the FEATURES.level_shift_context
# buckets before it (a one-bucket spike is not a shift). Docs/TRAINING_GUIDE.md (Level shifts).
WIDE_BAND_POINTS = 50.0  # bench_level_shift: a p10-p90 band wider than half a percentage's range says nothing


LEARNING_RATE = 3e-3
# CPU training can run the variable-selection GRNs through torch.compile (their elementwise work
# fused, forward and backward; the one-off compile and the per-step gain are measured in
# Docs/TRAINING_GUIDE.md, "Speed"). "auto" compiles CPU runs of at least this many optimiser
# steps (the default 20 x 128 = 2,560), where it pays for itself; short runs (the demo, tests)
# stay eager.
HOLDOUT_HOURS = 24  # kept out of training and validation entirely; the backtest's range
# The training file `main.py train` reads when --data is not given.
TRAINING_DATA_PATH = TRAINING_DIR / TRAINING_DATA_FILE
# Memory: the training data is held as compact arrays (about this many bytes per row, frame
# and model inputs together, measured on the 90-server fleet). If a file would need more than
# the budget, training uses a deterministic subset of servers that fits (logged), so a 10 GB+
# dataset is never loaded whole. Override with --max-memory-gb. (0.14.0: +40 for each row's
# yesterday, FEATURES.seasonal_input, kept as float32 per target.)
TRAINING_MEMORY_BUDGET_GB = 8.0

# q-risk divides by the sum of |actual|; for a near-silent series (a VM moving bytes per second)
# that sum vanishes and q-risk explodes (billions) on errors nobody would notice. The denominator
# is therefore at least n x this floor, in the metric's own units (one percent point, 10 KB/s,
# a load of 0.1, one socket): a series whose mean sits below its floor is judged in absolute error.
QRISK_DENOMINATOR_FLOOR = {
    "cpu_used_pct": 1.0, "cpu_idle_pct": 1.0, "cpu_iowait_pct": 1.0, "mem_used_pct": 1.0, "swap_used_pct": 1.0,
    "disk_usage_pct": 1.0, "load_average": 0.1, "net_in_mb_s": 0.01, "net_out_mb_s": 0.01,
    "back_close_wait": 1.0, "front_close_wait": 1.0,
}

# Saved model layout.
MODEL_DIR_PREFIX = "tft_model_"
LATEST_MODEL_LINK = "latest"
LATEST_MODEL_DIR = MODELS_DIR / LATEST_MODEL_LINK  # the model `infer` and `evaluate` read by default
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
TRAINING_INFO_FILE = "training_info.json"
MODEL_REQUIRED_FILES = [MODEL_WEIGHTS_FILE, MODEL_CONFIG_FILE, TRAINING_INFO_FILE, SERVER_MAPPING_FILE]
TRAINING_GUIDE_DOC = "Docs/TRAINING_GUIDE.md"

# ---------------------------------------------------------------------------
# 8. Risk scoring and alerts (risk_scoring.py; Docs/RISK_SCORING.md has worked examples)
# ---------------------------------------------------------------------------
# CPU as shown to users: "used" = 100 - idle (contract.cpu_used), never raw idle.
DISPLAY_CPU = "cpu_used_pct"
# Metrics the risk score reads, as shown to users.
RISK_METRICS = ["cpu_used_pct", "cpu_iowait_pct", "mem_used_pct", "swap_used_pct", "disk_usage_pct",
                "load_average", "back_close_wait", "front_close_wait"]
# Severity tiers per metric: (threshold, level) from worst to mildest; a value at or above
# the threshold has that level. Critical thresholds are the state rules' numbers (section 5).
RISK_TIERS: dict[str, list[tuple[float, str]]] = {
    "cpu_used_pct": [(CRITICAL_CPU_USED_PCT["default"], "critical"), (90.0, "warning"), (85.0, "elevated")],
    # I/O wait is the critical metric (codex): >= 30 critical, >= 20 high, >= 10 elevated.
    "cpu_iowait_pct": [(CRITICAL_IOWAIT_PCT, "critical"), (20.0, "warning"), (10.0, "elevated")],
    "mem_used_pct": [(CRITICAL_MEM_PCT, "critical"), (90.0, "warning"), (85.0, "elevated")],
    "swap_used_pct": [(CRITICAL_SWAP_PCT, "critical"), (20.0, "warning"), (10.0, "elevated")],
    "disk_usage_pct": [(CRITICAL_DISK_PCT, "critical"), (90.0, "warning"), (85.0, "elevated")],
    "back_close_wait": [(CRITICAL_CLOSE_WAIT, "critical"), (250, "warning"), (150, "elevated")],
    "front_close_wait": [(CRITICAL_CLOSE_WAIT, "critical"), (250, "warning"), (150, "elevated")],
}
# Profile-specific tiers that replace the defaults above. Databases are I/O-heavy by nature
# (I/O wait below 20 % is normal for them); ML compute should be compute-bound (I/O wait
# above 5 % is already abnormal) and runs its CPUs flat out by design (no CPU tiers).
PROFILE_RISK_TIERS: dict[str, dict[str, list[tuple[float, str]]]] = {
    "database": {"cpu_iowait_pct": [(CRITICAL_IOWAIT_PCT, "critical"), (20.0, "warning")]},
    "ml_compute": {"cpu_iowait_pct": [(CRITICAL_IOWAIT_PCT, "critical"), (20.0, "warning"), (5.0, "elevated")],
                   "cpu_used_pct": []},
}
# load_average has no fleet-wide scale (it counts runnable tasks per core count): tiers per
# profile, sized to the profile's typical core count (SERVER_PROFILES.md).
LOAD_TIERS_BY_PROFILE = {
    "web_api": [(24.0, "critical"), (16.0, "warning"), (12.0, "elevated")],
    "ml_compute": [(96.0, "critical"), (72.0, "warning"), (64.0, "elevated")],
    "database": [(48.0, "critical"), (36.0, "warning"), (28.0, "elevated")],
    "data_ingest": [(48.0, "critical"), (36.0, "warning"), (28.0, "elevated")],
    "risk_analytics": [(64.0, "critical"), (48.0, "warning"), (40.0, "elevated")],
    "conductor_mgmt": [(12.0, "critical"), (8.0, "warning"), (6.0, "elevated")],
    "generic": [(24.0, "critical"), (16.0, "warning"), (12.0, "elevated")],
}
# Contribution of one metric at each level to the server's risk (0..1). Several metrics
# combine like independent chances: risk = 1 - prod(1 - contribution).
LEVEL_WEIGHT = {"critical": 0.8, "warning": 0.45, "elevated": 0.2}
# I/O wait weighs more than any other metric (codex: "I/O wait must have high weight").
METRIC_WEIGHT_MULTIPLIER = {"cpu_iowait_pct": 1.15}
# How far a risk seen ahead counts: the sooner, the surer. "now" uses current values; the
# forecast horizons use the worst p90 (p10 for CPU idle) up to that horizon.
HORIZON_WEIGHT = {"now": 1.0, "30min": 0.95, "1hr": 0.9, "8hr": 0.75}
RISK_HORIZONS = ["now", "30min", "1hr", "8hr"]
# Colour bands (codex): green < 0.3 <= yellow <= 0.7 < red.
RISK_YELLOW_AT = 0.3
RISK_RED_ABOVE = 0.7
# Alerts are raised from this level up.
ALERT_MIN_LEVEL = "warning"
# Alert lifecycle (alert_lifecycle.py): an alert ends only after it has been absent this many buckets
# in a row (a value hovering at a threshold does not re-open it every cycle); resolved alerts are
# kept this long for GET /alerts/history, which answers at most this many.
ALERT_HOLD_DOWN_BUCKETS = 3
ALERT_HISTORY_DAYS = 7


@dataclass(frozen=True)
class AlertPolicy:
    """When a forecast becomes an alert (alert_policy.py; Docs/RISK_SCORING.md, "Alerts: the policy").

    A metric alerts when the chance of reaching its tier within 8 h (estimated from the calibrated
    p10/p50/p90) is at least the metric's probability threshold, chosen by the trainer on its
    validation days as the lowest of ``grid`` that keeps false alert episodes within
    ``false_episodes_per_server_week``; or when a breach is in progress (``alert_quality.breach_in_progress``:
    from the tier held 10 min until an hour below the elevated tier, ``AlertQuality``'s breach definition).
    """

    false_episodes_per_server_week: float = 1.0  # the false-alarm budget the thresholds are fitted to
    grid: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    default_threshold: float = 0.5  # a metric the validation days could not fit (or a model before 0.16)
    fit_on_validation: bool = True  # the trainer fits the thresholds (train --no-alert-fit: the default for all)
    fit_max_servers: int = 300  # servers whose validation days are replayed to fit the thresholds
    # p90's distance from p50 in standard deviations of a normal (the band's upper half sets the tail)
    z90: float = 1.2815515655446004


ALERT_POLICY = AlertPolicy()


@dataclass(frozen=True)
class AlertQuality:
    """What a breach, a warning and a false alarm are (alert_quality.py; GUIDE section 9, RISK_SCORING.md).

    A breach starts when a metric reaches its warning tier and holds it ``breach_hold_buckets``, after at
    least ``quiet_buckets`` below its elevated tier. An alert episode is true when a breach starts while it
    is open (or the bucket after it closes, or is confirmed while it is open). A warning is timely when it came
    ``timely_lead_minutes`` ahead.
    """

    breach_hold_buckets: int = CRITICAL_ENTER_BUCKETS  # the contract's enter time (10 min)
    quiet_buckets: int = 12  # an hour below the elevated tier before a new breach can start
    timely_lead_minutes: tuple[int, int] = (30, 480)
    live_window_days: int = 7  # the daemon's own alert scoring (GET /accuracy) looks back this far
    # The rules an SRE already runs, scored the same way (bench/bench_early_warning.py)
    rule_for_buckets: int = 2  # every rule's `for: 10m`
    static_pct: float = 80.0  # "CPU / memory >= 80 % for 10 min" next to the elevated tier
    predict_linear: tuple[tuple[int, int], ...] = ((12, 12), (72, 96))  # (range, ahead) buckets: 1h->1h, 6h->8h
    seasonal_window_buckets: int = 96  # "it reached the tier in the same 8 h yesterday"


ALERT_QUALITY = AlertQuality()

# ---------------------------------------------------------------------------
# 9. Inference daemon and its clients (tft_inference.py, daemon_client.py; Docs/API_REFERENCE.md)
# ---------------------------------------------------------------------------
STORE_PATH = PROJECT_ROOT / "data" / "metrics_store.sqlite3"
# /metrics: each forecast metric is its own series name in base units, as node_exporter names its own
# (ratios 0-1, bytes per second); labels server, profile, instance, horizon_seconds, quantile ("0.1", "0.5",
# "0.9"). Metric -> (series name, factor from the API's unit). Docs/API_REFERENCE.md (Prometheus).
PROM_FORECAST_SERIES = {
    "cpu_used_pct": ("tft_forecast_cpu_used_ratio", 0.01),
    "cpu_iowait_pct": ("tft_forecast_cpu_iowait_ratio", 0.01),
    "mem_used_pct": ("tft_forecast_memory_used_ratio", 0.01),
    "swap_used_pct": ("tft_forecast_swap_used_ratio", 0.01),
    "disk_usage_pct": ("tft_forecast_disk_used_ratio", 0.01),
    "load_average": ("tft_forecast_load_average", 1.0),
    "net_in_mb_s": ("tft_forecast_network_receive_bytes_per_second", 1e6),
    "net_out_mb_s": ("tft_forecast_network_transmit_bytes_per_second", 1e6),
    "back_close_wait": ("tft_forecast_backend_close_wait_connections", 1.0),
    "front_close_wait": ("tft_forecast_frontend_close_wait_connections", 1.0),
}
API_KEY_ENV = "TFT_API_KEY"
API_KEY_FILE_ENV = "TFT_API_KEY_FILE"
MAX_RECORDS_PER_REQUEST = 50_000
# A record may be stamped at most this far ahead of the daemon's own clock (collector clocks
# drift; NTP keeps them within seconds). Further ahead is rejected: a client must never move
# the fleet's clock, which decides "offline", bucket completion and the retention cut.
FEED_MAX_FUTURE_SECONDS = 300

# Maintenance is an operator's act (PUT /admin/maintenance/{server}), never a sample's claim: a window lasts
# at most this long, and at most this many are open at once.
MAINTENANCE_MAX_HOURS = 7 * 24
# History kept in the store. Buckets: five weeks by default (--retention-days), enough to export a
# month of training data from the store (main.py export) plus a week of margin; the disk cost per
# 1,000 servers is measured in Docs/API_REFERENCE.md (Storage and retention). At least a week, so a
# record the feed still accepts (DAEMON_STATE.max_record_age_hours) is never older than what the store keeps.
# Forecasts (the history panel's bands) stay a week, all GET /history shows. Older rows are deleted.
RETENTION_MIN_DAYS = 7
FORECAST_RETENTION_HOURS = 7 * 24
# On start the store is checked with SQLite's integrity check: "quick" (O(N), skips index/table
# cross-checks; the figures at fleet scale are in Docs/RAG/CURRENT_STATE.md), "full", or "off".
STORE_DOC = "Docs/API_REFERENCE.md (Storage and retention)"
# A forecast cycle runs the model over at most this many servers at a time, so the working set
# of one slice stays in the CPU caches (the slice sizes measured are in Docs/RAG/CURRENT_STATE.md).
API_REFERENCE_DOC = "Docs/API_REFERENCE.md"
# Scale-out: one daemon per slice of the fleet (--shard K/N, sharding.py), routed by Prometheus' hashmod.
SCALING_DOC = "Docs/SCALING.md"
SHARD_HASH = "prometheus"  # whose hashmod routes the shards (--shard-hash): prometheus (md5) or vmagent (xxHash64)
# Prometheus remote-write in (POST /api/v1/write; remote_write.py; Docs/COLLECTING.md, Prometheus remote-write).
# Samples become one LINBORG record per instance and scrape, mapped by the mapping's "remote_write" section.
REMOTE_WRITE_MAPPING_FILE = PROJECT_ROOT / "mappings" / "prometheus_node_exporter.json"  # --remote-write-mapping
# A snappy body states its decoded size up front; more than this is refused before decoding (a small
# body must not expand into gigabytes). Prometheus sends ~2,000 samples (~100 KB decoded) per request.
REMOTE_WRITE_MAX_DECODED_BYTES = 64 * 1024 * 1024
# A scrape of an instance is complete (its record is made) once the instance sent samples stamped more
# than this much later. Prometheus's shards deliver one scrape's series in parallel batches, each within
# its queue_config.batch_send_deadline (5 s by default), so a scrape's last series arrive up to that late.
REMOTE_WRITE_COMPLETE_GRACE_SECONDS = 10.0
# Label limits per written series (Grafana Mimir's defaults); a request over them is refused whole (400).
REMOTE_WRITE_MAX_LABELS_PER_SERIES = 30
REMOTE_WRITE_MAX_LABEL_NAME_BYTES = 1024
REMOTE_WRITE_MAX_LABEL_VALUE_BYTES = 2048

# OpenTelemetry metrics in (POST /v1/metrics, OTLP/HTTP protobuf; otlp_receiver.py; Docs/COLLECTING.md,
# OpenTelemetry). Data points are named as the collector's prometheusremotewrite exporter names them and go
# through remote-write's assembly and bounds (REMOTE_WRITE.max_*) with this mapping (--otlp-mapping).
OTLP_MAPPING_FILE = PROJECT_ROOT / "mappings" / "otel_hostmetrics.json"

# Grafana dashboards (tools/build_grafana.py writes deploy/grafana/dashboards/; Docs/DEPLOYMENT.md, Grafana).
GRAFANA_DASHBOARD_DIR = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"
GRAFANA_REFRESH = "1m"  # dashboards refresh this often (the daemon publishes a cycle every 5 minutes)
GRAFANA_TIME_FROM = "now-12h"  # default time range: long enough for the 8 h forecasts made for it
GRAFANA_GRID_COLUMNS = 24  # Grafana's grid width
GRAFANA_PANEL_HEIGHT = 8  # grid rows of a time-series panel
GRAFANA_STAT_HEIGHT = 4  # grid rows of a stat panel
GRAFANA_TABLE_HEIGHT = 10  # grid rows of a table panel

# Answers worth another try: rate limited, or the daemon failed unexpectedly. Not 503: the daemon
# answers it for "no model loaded", which waiting does not fix.
DAEMON_WAIT_POLL_SECONDS = 0.5  # waiting for a daemon to come up: ask /health this often

# Alertmanager push (alertmanager_push.py, --alertmanager-url; Docs/RISK_SCORING.md, Alertmanager). The
# daemon is an Alertmanager client the way Prometheus is: every firing alert is re-sent each resend
# interval (Prometheus' --rules.alert.resend-delay, 1 min) with endsAt = now + ENDS_AT_RESENDS x that
# interval (Prometheus' ValidUntil), so Alertmanager resolves them by itself if the daemon dies; a
# resolved alert is sent with endsAt = when it resolved, and re-sent with the next few sends in case one
# was lost (Prometheus re-sends resolved alerts for 15 min).
ALERTMANAGER_DOC = "Docs/RISK_SCORING.md (Alertmanager)"
ALERTMANAGER_RESEND_SECONDS = 60.0
# Where the alerts' "dashboard" annotation and generatorURL point (--dashboard-url); the dashboard
# takes no per-server query parameter, so the link is its root.
DASHBOARD_URL = f"http://{DEFAULT_HOST}:{DASHBOARD_PORT}"

# How metrics are named and shown to people (API, alerts, dashboard).
METRIC_LABELS = {
    "cpu_used_pct": ("CPU used", "%"), "cpu_iowait_pct": ("I/O wait", "%"), "mem_used_pct": ("Memory", "%"),
    "swap_used_pct": ("Swap", "%"), "disk_usage_pct": ("Disk", "%"), "load_average": ("Load average", ""),
    "net_in_mb_s": ("Network in", "MB/s"), "net_out_mb_s": ("Network out", "MB/s"),
    "back_close_wait": ("Back-end CLOSE_WAIT", "sockets"), "front_close_wait": ("Front-end CLOSE_WAIT", "sockets"),
    "cpu_user_pct": ("CPU user", "%"), "cpu_sys_pct": ("CPU system", "%"), "java_cpu_pct": ("Java CPU", "%"),
    "uptime_days": ("Uptime", "days"),
}

# ---------------------------------------------------------------------------
# 10. Live demo (metrics_generator.py --stream, main.py demo)
# ---------------------------------------------------------------------------
DEMO_SCENARIOS = ["healthy", "degrading", "critical"]
# The demo's simulated clock runs 300x ahead of the wall clock, so its daemon accepts records up to
# a year ahead of its own clock (--max-future-seconds); a production daemon keeps FEED_MAX_FUTURE_SECONDS.
DEMO_SERVERS = 30
# main.py demo without a model: generating its fleet and training its model, then starting everything;
# measured 3 min 0 s from the command to the dashboard URL on the idle 2-core machine (2026-12-02,
# README "Run it"). Re-measure with a fresh --models-dir and --work-dir when demo.DEMO_TRAIN_ARGS change.
DASHBOARD_TIMEOUT_SECONDS = 10.0
# The dashboard's settings come from its process's environment, never from a visitor, and its keys stay
# server-side (Docs/DASHBOARD.md, "Keys, daemons and exposure"). Its read key: API_KEY_ENV / API_KEY_FILE_ENV.
DASHBOARD_DAEMON_URL_ENV = "TFT_DAEMON_URL"  # the daemon it reads (default DEFAULT_DAEMON_URL)
DASHBOARD_DEMO_ENV = "TFT_DASHBOARD_DEMO"  # "1": demo mode, its buttons (main.py demo sets it)
# Demo mode's admin key (POST /admin/demo-scenario): this variable, else $TFT_API_KEY; nowhere else is one used.
DASHBOARD_DEMO_ADMIN_KEY_ENV = "TFT_DEMO_ADMIN_KEY"

# ---------------------------------------------------------------------------
# 11. Real metrics in: host collector and Prometheus adapter (Docs/COLLECTING.md)
# ---------------------------------------------------------------------------
# Records waiting for the daemon (it restarts, the network drops). When full, the oldest are
# dropped and counted, with a warning (about 2.9 days of one host sampled every 5 s): a loss
# is always logged, never silent.
FEED_FLUSH_ON_EXIT_SECONDS = 10.0  # on stop, keep trying to deliver the buffer this long

# Live accuracy (live_accuracy.py): the daemon scores each forecast when its target bucket
# arrives, with the backtest's scoring code, in hourly bins summed into rolling windows.
ACCURACY_WINDOWS_HOURS = {"24h": 24, "7d": 7 * 24}  # rolling windows /accuracy reports
ACCURACY_SERVER_WINDOW = "24h"  # per-server figures (worst servers) are kept for this window, in memory
# "Anomalous now" (live_anomaly.py; GET /anomalies, tft_anomaly_score; Docs/API_REFERENCE.md): per server and
# metric, |actual - p50| / half-width of the served band of the forecast made this long before the bucket that
# just completed (half-width p90 - p50 at or above p50, p50 - p10 below); 1 = on the band's edge.
ANOMALY_HORIZONS = ("30min", "1hr")
# Live band calibration: adaptive conformal inference (Gibbs & Candes 2021) on the log of a
# multiplier m of each band half-width (p50-p10 below, p90-p50 above), per metric x horizon.
# Each matured forecast is judged by the band it was served with (ACI's own rule, whose long-run
# miss rate is the target), or, once today's m has moved more than ACCURACY.band_adapt_served_tolerance from
# the one it was served with, by its model band widened by *today's* m (the quantile tracker of
# Angelopoulos et al. 2023, so feedback that arrives 8 h late does not overshoot); per cycle,
# log m += gain x n x (share outside that side - target), the step capped.
# The multiplier stays within the bounds; it is kept in the store and reset for a new model.
BAND_ADAPT_TARGET_MISS = 0.10  # per side: p10 and p90 are 10 % tails
# A matured forecast is judged by the band it was served with while today's multiplier is within this
# (log units, ~10 %) of the one it was served with; beyond, by the model's band widened by today's.
BAND_ADAPT_MIN_SCALE = 0.25  # the band is never narrowed below a quarter ...
BAND_ADAPT_MAX_SCALE = 4.0  # ... nor widened beyond four times the model's
# Drift: a "model_degraded" warning when the rolling coverage of a metric x horizon leaves the
# band, or its skill against persistence stays below the floor this long (daemon bucket time).
DRIFT_WINDOW = "24h"
DRIFT_COVERAGE_BAND = (0.65, 0.92)
DRIFT_SKILL_FLOOR = 0.0
DRIFT_SKILL_HOURS = 6.0
# ... unless the model's q-risk there is below this: a forecast within ~2 % of the level is not
# "degraded" because the last value of a near-constant metric (disk usage) is closer still.
DRIFT_MIN_MATURED = 100  # no verdict on fewer matured forecasts in the window


@dataclass(frozen=True)
class LiveSelectionSettings:
    """Live selection (live_selection.py): per server x metric x horizon, the model or the last value.

    A server the model was trained on is served the last value while the model's matured forecasts
    on it lose to persistence significantly and materially (Diebold-Mariano over hourly blocks,
    small-sample corrected, one-sided); a server it never saw is served the last value until the
    model wins there the same way. Docs/API_REFERENCE.md ("Live selection").
    """

    enabled: bool = True  # --no-live-selection: always the model
    level: float = 0.01  # one-sided significance level (strict: the test is repeated every cycle)
    fleet_release_level: float = 0.10  # fleet-wide, the last value is left once the loss is not significant at this
    min_hours: int = 6  # hours with matured forecasts before a verdict
    # ... and the mean absolute error per forecast must differ by this share of QRISK_DENOMINATOR_FLOOR
    material_share: float = 0.5
    window_hours: int = ACCURACY_WINDOWS_HOURS[ACCURACY_SERVER_WINDOW]  # judged over the per-server bins' span


LIVE_SELECTION = LiveSelectionSettings()
# Retraining and the models registry (model_retrain.py, model_registry.py).
MODELS_KEEP = 5  # model folders kept in the models directory (the serving one and its predecessor always)
RETRAIN_REPORTS_SUBDIR = "reports"  # promotion reports (JSON + table) under the models directory
RETRAIN_WORK_SUBDIR = ".retrain"  # the store's export for one retrain (removed afterwards)
# Bounds of one retrain (Docs/RETRAINING.md, "Bounds"). A daemon-started retrain runs in its own process
# group: past the timeout the whole group gets SIGTERM, then SIGKILL after the grace (also on shutdown).
RETRAIN_KILL_GRACE_SECONDS = 10.0
# Address space (RLIMIT_AS, not resident memory) a CPU retrain may map: 4x the training data budget, room
# for torch, its thread arenas and the backtests; --memory-limit-mb (0: none). Not applied when it trains
# on a GPU: CUDA reserves host address space far beyond what it uses (cgroup MemoryMax= bounds it there).
RETRAIN_MEMORY_LIMIT_MB = int(4 * TRAINING_MEMORY_BUDGET_GB * 1024)
RETRAIN_LOCK_FILE = ".retrain.lock"  # in the models directory: one retrain at a time (daemon and timer)
RETRAIN_EXIT_LOCKED = 75  # sysexits EX_TEMPFAIL: another retrain holds the lock, this one skipped
RETRAIN_KEEP_REPORTS = 30  # retrain reports (JSON + table) and retrain logs kept in reports/, each
RETRAIN_DOC = "Docs/RETRAINING.md"

# ---------------------------------------------------------------------------
# 12. Settings owned by one module each: a use site names its owner (GENERATOR.default_seed, DASHBOARD.top_servers).
#     Each class holds the knobs only its module reads; the shared vocabulary above stays plain.
#     A test changes one with dataclasses.replace on the module's instance (monkeypatch.setattr).
# ---------------------------------------------------------------------------


def _read_only(mapping):
    """A settings field whose default is a mapping: a read-only view of it (MappingProxyType)."""
    return field(default_factory=lambda: MappingProxyType(mapping))


def _fresh(value):
    """A settings field whose users need a real list / dict / set (pandas column lists): a copy per instance."""
    return field(default_factory=lambda: type(value)(value))


@dataclass(frozen=True)
class GeneratorSettings:
    """What only metrics_generator.py reads (``GENERATOR.<field>``)."""
    min_generate_hours: int = 24
    recommended_generate_hours: int = 720  # 30 days
    chunk_days: int = 7  # generate_dataset simulates and writes this much at a time (bounds memory)
    default_seed: int = 42
    # A fixed Monday, so the same seed gives the same file on any day.
    default_start: str = "2026-01-05T00:00:00Z"
    offline_modes: list[str] = _fresh(["dense", "sparse"])
    default_offline_mode: str = "dense"
    # CSV is only offered for small exports (codex: Parquet-first).
    csv_max_rows: int = 10_000
    # Workload regimes: a per-server semi-Markov chain of "quiet", "normal", "busy".
    # Mean dwell times (hours) and where the chain goes when it leaves a regime.
    regimes: list[str] = _fresh(["quiet", "normal", "busy"])
    regime_mean_dwell_hours: Mapping[str, float] = _read_only({"quiet": 3.0, "normal": 6.0, "busy": 2.0})
    # row: from-regime, values: probability of each to-regime
    regime_transitions: Mapping[str, dict[str, float]] = _read_only({
        "quiet": {"normal": 0.85, "busy": 0.15},
        "normal": {"quiet": 0.45, "busy": 0.55},
        "busy": {"quiet": 0.2, "normal": 0.8},
    })
    # Incidents: slow build-up (the ramp), a critical plateau, then a fix.
    incident_types: tuple[str, ...] = ("memory_leak", "disk_fill", "io_saturation", "connection_pileup")
    # After the fix, io_saturation decays with this time constant (hours); swap drains slowly.
    io_recovery_hours: float = 0.5
    swap_drain_hours: float = 2.0
    # Memory pressure spills into swap once used memory passes this level and the leak is
    # past this fraction of its ramp; swap then climbs towards GENERATOR.swap_peak_pct.
    swap_onset_mem_pct: float = 78.0
    swap_onset_leak_level: float = 0.55
    swap_peak_pct: float = 65.0
    swap_curve_exponent: float = 1.2
    # Shape of each incident's build-up: metric = normal + (peak - normal) * level**exponent,
    # level running 0 -> 1 over the ramp. Above 1 the curve accelerates late (a pile-up).
    incident_curve_exponent: Mapping[str, float] = _read_only({"memory_leak": 1.5, "disk_fill": 1.0,
                                                               "io_saturation": 1.2, "connection_pileup": 2.0})
    io_saturation_cpu_drop: float = 0.3  # share of useful CPU lost while threads wait on I/O
    pileup_sys_cpu_pct: float = 8.0  # extra kernel CPU at the peak of a CLOSE_WAIT pile-up
    pileup_front_share: float = 0.5  # front-end CLOSE_WAIT peak relative to the back-end peak
    # Unplanned outages (crash, network partition): duration range in hours; a reboot follows.
    crash_duration_hours: tuple[float, ...] = (0.08, 1.0)
    # Patch cycle: every server reboots in its maintenance window at least this often.
    patch_cycle_days: int = 28
    maintenance_window_hours: tuple[float, ...] = (1.0, 2.0)  # length of one window
    maintenance_hours_utc: tuple[int, ...] = (1, 5)  # windows start between 01:00 and 05:00
    maintenance_reboot_offset_hours: float = 0.5  # reboot happens this long into the window
    maintenance_reboot_steps: int = 2  # buckets without samples while the box boots
    # Activity bounds, how much a maintenance window drains it, and memory's lag behind it.
    activity_max: float = 1.4
    mem_activity_max: float = 1.2
    maintenance_activity_drain: float = 0.7
    memory_lag_phi: float = 0.9  # per-step weight of the previous memory level
    regime_initial_shares: Mapping[str, float] = _read_only({"quiet": 0.25, "normal": 0.55, "busy": 0.2})
    cpu_busy_min_pct: float = 0.3  # a running kernel is never fully idle
    iowait_max_pct: float = 95.0
    java_share_jitter: float = 0.05  # relative bucket-to-bucket wobble of the Java share
    # Per-server heterogeneity. Two servers of one role differ as much as real ones do: a
    # lightly and a heavily loaded database, a gateway and a batch API, 64 GB and 512 GB boxes.
    # Without it a single 5-minute sample would name a server's role (an earlier generator
    # let a classifier tell 5 of 7 profiles apart from one sample with 99 % accuracy), and the
    # profile would carry no information a server's own metrics do not (TRAINING_GUIDE.md).
    # Log-normal sigma of the per-server scale factors:
    server_scale_sigma: Mapping[str, float] = _read_only({"cpu": 0.3, "net_in": 0.8, "net_out": 0.8,
                                                          "back_close_wait": 0.5, "front_close_wait": 0.5,
                                                          "iowait": 0.4})
    # ... capped so a healthy server at activity 1 stays below this CPU busy share (fleets are
    # sized with headroom; busy regimes may still pass it, into heavy_load).
    server_cpu_peak_max_pct: float = 85.0
    # Memory: a per-server offset in percent points (normal sigma), kept so a healthy server's
    # peak stays below heavy_load's memory level and its floor above this minimum.
    server_mem_offset_sd: float = 8.0
    server_mem_peak_max_pct: float = 86.0
    server_mem_floor_pct: float = 12.0
    # Kernel and Java shares of busy CPU: log-normal sigma of a per-server factor (different
    # stacks and versions within one role), capped at GENERATOR.server_share_max.
    server_share_sigma: float = 0.35
    server_share_max: float = 0.95
    # Disk: log rotation trims usage back to the server's base once a week.
    disk_rotation_days: int = 7
    # Baseline swap use of a healthy server (% of swap), before memory pressure.
    swap_base_pct: tuple[float, ...] = (0.0, 3.0)
    # Linux counts tasks in uninterruptible I/O sleep in the load average.
    load_iowait_weight: float = 0.6
    # Decimal places written for float metrics.
    float_decimals: int = 2
    demo_buckets_per_second: float = 1.0  # time acceleration: one 5-minute bucket per second
    demo_prefill_margin_buckets: int = 6  # history sent at start beyond the model's encoder length
    # Share of the fleet kept in trouble per scenario, and how fast their trouble builds (hours).
    demo_troubled_share: Mapping[str, float] = _read_only({"healthy": 0.0, "degrading": 0.12, "critical": 0.25})
    demo_ramp_hours: Mapping[str, dict[str, float]] = _read_only({
        "degrading": {"memory_leak": 4.0, "disk_fill": 5.0, "io_saturation": 2.5, "connection_pileup": 3.0},
        "critical": {"memory_leak": 1.5, "disk_fill": 2.0, "io_saturation": 1.0, "connection_pileup": 1.0},
    })
    stream_retry_seconds: float = 2.0  # the stream retries a failed POST /feed this often, until it is delivered
    demo_prefill_chunk_buckets: int = 24  # buckets per POST /feed while the stream pre-fills history


GENERATOR = GeneratorSettings()


@dataclass(frozen=True)
class ImportSettings:
    """What only trace_importer.py reads (``IMPORTER.<field>``)."""
    # Gaps in a source up to this many 5-minute buckets are interpolated (clock drift, a missed
    # poll); longer gaps become offline buckets.
    max_interpolate_buckets: int = 3
    # Bounds on one import (Docs/IMPORTING.md, Limits), each checked before the memory it guards is taken.
    # Rows read from all sources together, and rows written (every server's 5-minute grid, first to last
    # sample): a Parquet source's row count comes from its footer, before anything is decoded; a CSV stops at
    # the limit. An import peaks at ~1.1 KB a row (measured: 1 M rows 1.2 GB, 2 M rows 2.3 GB), so 10 M rows
    # is ~11 GB: a 1,000-server 31-day month at 5-minute samples (8.9 M) fits; --max-rows.
    max_rows: int = 10_000_000
    # Bytes decoded from all sources together: the uncompressed size of the Parquet columns the mapping reads
    # (footer; ~30 B a row for five mapped metrics, 240 B at 30 columns), the text of CSV sources after
    # decompression (Bitbrains: 123 B a row); 10 M rows of either fit; --max-bytes.
    max_bytes: int = 4 * 1024**3
    # Timestamps a recorded trace may carry: none before this year (public traces start in 2011; epoch 0 is a
    # missing time, seconds read as milliseconds land in 1970), none later than the importing host's clock plus
    # a day (a source written in local time east of UTC).
    earliest_year: int = 2000
    max_future_seconds: int = 86_400
    # One server's grid spans at most this long, first to last sample (the history a live feed may replay,
    # DAEMON_STATE.feed_max_age_days); --max-span-days.
    max_span_days: int = 3 * 366


IMPORTER = ImportSettings()


@dataclass(frozen=True)
class ValidatorSettings:
    """What only data_validator.py reads (``VALIDATOR.<field>``)."""
    # What `main.py validate` decodes at most (Docs/DATA_CONTRACT.md, Validating): a Parquet file over it is
    # refused from its footer before anything is decoded, a CSV stops at it; --max-rows / --max-bytes raise it.
    # 20 M rows is a 1,000-server month (8.6 M) twice over, or 1,000 servers' 35-day store export (10.1 M);
    # the checks peak at ~0.25 KB a row (measured: 2 M rows, 0.63 GB), so ~5 GB. Bytes: contract Parquet is
    # ~20 B a row uncompressed (0.4 GB for 20 M rows), contract CSV ~200 B a row.
    max_rows: int = 20_000_000
    max_bytes: int = 4 * 1024**3


VALIDATOR = ValidatorSettings()


@dataclass(frozen=True)
class FeatureSettings:
    """What only tft_features.py reads (``FEATURES.<field>``)."""
    # Heavy-tailed targets are modelled on a log scale (log1p), the rest as they are.
    target_transforms: Mapping[str, str] = _read_only({
        "load_average": "log1p", "net_in_mb_s": "log1p", "net_out_mb_s": "log1p",
        "back_close_wait": "log1p", "front_close_wait": "log1p",
    })
    # Each window's targets are normalised by their own encoder mean and standard deviation
    # (pytorch-forecasting's EncoderNormalizer), so the model forecasts relative to the recent
    # level; the window's level and spread are also fed to the model as static inputs. The
    # spread is floored at this share of the target's fleet-wide spread so a flat history (swap
    # at exactly 0) can still forecast a change.
    target_scale_floor_fraction: float = 0.02
    # ... and never below these absolute values (in the target's modelled units: percent points,
    # or log1p of MB/s, sockets, load). On a fleet whose network mostly idles at a few KB/s the
    # relative floor alone is ~0.004: a 0.5 MB/s burst after a silent window becomes a normalised
    # target of ~100 and the model learns nothing sane for those series (Docs/IMPORTING.md). The
    # minima sit below the floors the simulated fleet gets, so they change nothing there.
    target_scale_floor_min: Mapping[str, float] = _read_only({
        "cpu_idle_pct": 0.25, "cpu_iowait_pct": 0.05, "mem_used_pct": 0.2, "swap_used_pct": 0.05,
        "disk_usage_pct": 0.1, "load_average": 0.01, "net_in_mb_s": 0.02, "net_out_mb_s": 0.02,
        "back_close_wait": 0.01, "front_close_wait": 0.01,
    })
    # ... and a log-modelled target's spread is capped at this quantile of the training windows'
    # spreads. A window that holds a burst (CLOSE_WAIT ramping from 5 to 1,300 sockets, network from
    # idle to a backup) has a log spread of ~2: an error of one spread there is a factor of 7 in the
    # metric's units, yet the normalised loss charges it like one spread of a quiet window, and the
    # decode multiplies any forecast noise by exp(2 z). Capped, such windows are learned in units of an
    # ordinary window's spread. Linear targets (percentages) are left uncapped.
    target_scale_ceiling_quantile: float = 0.99
    # Windows sampled to fit the scalers of those level/spread inputs.
    target_scale_fit_windows: int = 20_000
    # Where each window is anchored: "last" = its last observed value (the model forecasts the change
    # from now, so at short horizons it starts from persistence, the strongest baseline on real
    # servers), "mean" = the window's mean (models saved before 0.9.0 read "mean" from their spec).
    target_center: str = "last"
    # Where the quantile loss is computed: "normalised" = on each window's normalised values (the
    # transformed target minus the anchor, divided by the window's spread), so every window and every
    # metric counts alike and a silent VM's network is learned as well as a busy one's; "metric" = in
    # metric units weighted by 1/each target's spread (models before 0.9.0), where a handful of bursty
    # servers decide the quantiles of all. The quantile of a monotone transform is the transform of the
    # quantile, so the optimum per window is the same; only the weighting differs.
    train_loss_space: str = "normalised"
    # log1p-modelled targets are decoded with expm1. pytorch-forecasting's "log1p" transformation
    # decodes with exp, i.e. +1 in the target's units (1 MB/s of network, a load of 1): models saved
    # before 0.9.0 learned to compensate for it and keep "exp" in their spec.
    log1p_inverse: str = "expm1"
    # A guard on the heavy-tailed (log-modelled) targets: no quantile is served above
    # MODEL.level_ceiling_factor x the larger of the highest value the training fleet showed and the window's
    # last value. A log target is decoded with exp, so a forecast a few window spreads too high is a
    # factor of hundreds in the metric's units: a simulated conductor whose CLOSE_WAIT had ramped to
    # 1,324 sockets got an 8 h p50 of 180,000 (the fleet never exceeded 1,400). The training maxima
    # are stored per target in the model (FeatureSpec.level_ceilings) and applied by the model itself.
    level_ceiling: bool = True
    # Calendar inputs known for the future: time of day, day of week, minute of the hour
    # (hourly ETL bursts and cron spikes), each as a sine/cosine pair.
    known_reals: tuple[str, ...] = ("tod_sin", "tod_cos", "dow_sin", "dow_cos", "moh_sin", "moh_cos")
    # Yesterday as a known input: for every target, its value FEATURES.seasonal_input_lag buckets (24 h) before
    # each encoder and decoder step. Every horizon up to 8 h lies less than a day ahead, so the value is
    # already measured at forecast time; the 4-hour encoder cannot see a daily cycle otherwise. It is
    # normalised like the target (the window's anchor and spread, clipped at FEATURES.seasonal_input_clip
    # spreads) and comes with a flag that is 0 where the server has no history that far back (its first
    # day): the value is then 0, i.e. "no information". The value is yesterday's mean over the
    # FEATURES.seasonal_input_half_window buckets either side (an hour centred on the same time yesterday): a
    # daily cycle is smooth, a single 5-minute bucket of yesterday's network is mostly noise. A forecast
    # therefore reads encoder length + lag + half window buckets (~28 h). Models saved before 0.14.0 have
    # no such input (FeatureSpec.seasonal_lag None). Docs/TRAINING_GUIDE.md ("Yesterday as an input").
    seasonal_input: bool = True
    seasonal_input_lag: int = STEPS_PER_DAY
    seasonal_input_half_window: int = 6
    seasonal_input_clip: float = 20.0
    seasonal_input_suffix: str = "_yesterday"
    seasonal_input_flag: str = "yesterday_known"
    static_categoricals: tuple[str, ...] = ("profile",)
    unknown_categoricals: tuple[str, ...] = ("state",)
    # A server with less history is still forecast once it has this many buckets (1 hour): the
    # model reads what there is, and its profile fills in the rest (cold start). Below it the
    # server is "warming up". Training shows the model this many short-history batches.
    min_encoder_length: int = 12
    # A level shift in the history (memory 98 % -> 28 % when a leaking process restarts, a disk cleaned
    # up): the model reads only the buckets after it (at least FEATURES.min_encoder_length), in the daemon, the
    # offline forecast and the backtest alike. Otherwise the window's spread, which normalises the
    # forecast, is the size of the jump and the band covers the whole range for the 4 hours the jump
    # stays in the window. A shift: a change of at least FEATURES.level_shift_min_points between consecutive
    # observed buckets (offline filler skipped, so a reboot's gap counts) in one of these bounded metrics,
    # after which the level stays at least FEATURES.level_shift_persist_points away from the
    # FEATURES.level_shift_context
    # buckets before it (a one-bucket spike is not a shift). Docs/TRAINING_GUIDE.md (Level shifts).
    level_shift_metrics: tuple[str, ...] = ("mem_used_pct", "swap_used_pct", "disk_usage_pct")
    level_shift_min_points: float = 20.0
    level_shift_persist_points: float = 10.0
    level_shift_context: int = 6


FEATURES = FeatureSettings()


@dataclass(frozen=True)
class ModelSettings:
    """What only tft_model.py reads (``MODEL.<field>``)."""
    # In normalised space a jump after a flat window (memory reset from 98 % after hours at 98 %) is
    # hundreds of spreads; targets are clipped at this many spreads in the loss so one such window
    # cannot dominate a batch.
    loss_normalised_clip: float = 20.0
    level_ceiling_factor: float = 2.0
    weight_decay: float = 1e-4
    lr_warmup_fraction: float = 0.05  # one-cycle schedule: warm up, then cosine decay
    format_version: int = 1


MODEL = ModelSettings()


@dataclass(frozen=True)
class CalibrationSettings:
    """What only calibration_fit.py reads (``CALIBRATION.<field>``)."""
    # Before the bands: a persistence blend, per target and decoder step, fitted on the same validation
    # windows. p50 = last value + w x (model p50 - last value) in the modelled units, the band moved
    # with it; w from this grid, the one with the smallest absolute p50 error there in each window's
    # normalised units (every window counts alike, as in the loss), kept below 1 only where it lowers that
    # error by at least CALIBRATION.persistence_blend_min_gain. On real servers the last value
    # is the strongest short-horizon forecast (an idle VM stays idle, a pinned one pinned); the blend
    # lets a model fall back on it where it has not learned to beat it, and the API names the source
    # ("model", "model+last_value", "last_value") per metric and horizon. Docs/TRAINING_GUIDE.md
    # ("A persistence blend").
    persistence_blend: bool = True
    persistence_blend_grid: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
    persistence_blend_min_gain: float = 0.005
    # ... and the model's forecast is served at a step only where its gain over the last value there is
    # significant (Diebold-Mariano over hourly blocks of the validation windows, small-sample corrected,
    # scoring.diebold_mariano; one-sided, this level): elsewhere w = 0, the last value (its band the model's).
    # A gain the validation days cannot tell from noise is what a later training run or the next week loses.
    persistence_blend_significance: float = 0.05
    band_max_windows: int = 20_000  # validation windows used (a deterministic sample beyond)
    band_max_shift: float = 5.0  # window spreads: a p10/p90 never moves further than this


CALIBRATION = CalibrationSettings()


@dataclass(frozen=True)
class TrainerSettings:
    """What only tft_trainer.py reads (``TRAINER.<field>``)."""
    # Share of training windows cut to a short history (FEATURES.min_encoder_length buckets), so the model
    # learns to forecast a server it has just met (cold start).
    short_history_fraction: float = 0.2
    model_hidden_size: int = 32
    model_attention_heads: int = 2
    model_hidden_continuous_size: int = 16
    model_dropout: float = 0.1
    model_lstm_layers: int = 1
    # The model is created from a tiny TimeSeriesDataSet of this many servers' training rows
    # (tft_features.build_features): it only defines the inputs, not the weights.
    model_dataset_servers: int = 2
    batch_size: int = 128
    gradient_clip_val: float = 1.0
    max_epochs: int = 20
    windows_per_epoch: int = 16_384  # sampled training windows per epoch: epochs stay minutes on any fleet
    # CPU training can run the variable-selection GRNs through torch.compile (their elementwise work
    # fused, forward and backward; the one-off compile and the per-step gain are measured in
    # Docs/TRAINING_GUIDE.md, "Speed"). "auto" compiles CPU runs of at least this many optimiser
    # steps (the default 20 x 128 = 2,560), where it pays for itself; short runs (the demo, tests)
    # stay eager.
    torch_compile: str = "auto"  # auto | on | off (--compile)
    torch_compile_min_steps: int = 1000
    val_windows: int = 4_096  # fixed validation windows
    early_stopping_patience: int = 3
    checkpoint_every_n_epochs: int = 5
    validation_hours: int = 48  # the last part of every server's training history
    # Share of training windows whose profile is hidden (set to "unknown"): the model learns a
    # fleet-wide fallback for servers whose role it cannot tell.
    profile_dropout: float = 0.1
    seed: int = 1234
    # Whole servers per profile kept out of training, to measure forecasts on never-seen servers.
    unseen_per_profile: int = 1
    # Where Lightning trains (--accelerator / --devices / --num-nodes / --strategy): "auto" picks a
    # GPU when present, all its devices, one node, and Lightning's own strategy choice.
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: str = "auto"  # devices per node, or auto
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    # Memory: the training data is held as compact arrays (about this many bytes per row, frame
    # and model inputs together, measured on the 90-server fleet). If a file would need more than
    # the budget, training uses a deterministic subset of servers that fits (logged), so a 10 GB+
    # dataset is never loaded whole. Override with --max-memory-gb. (0.14.0: +40 for each row's
    # yesterday, FEATURES.seasonal_input, kept as float32 per target.)
    training_bytes_per_row: int = 440
    model_dir_time_format: str = "%Y%m%d_%H%M%S"
    checkpoints_subdir: str = "checkpoints"


TRAINER = TrainerSettings()


@dataclass(frozen=True)
class EvaluationSettings:
    """What only tft_evaluate.py reads (``EVALUATION.<field>``)."""
    # Backtest: forecast origins every this many buckets inside the held-out range.
    backtest_origin_stride: int = 6
    # Baselines measured in the same run: last value, and same time yesterday.
    seasonal_lag_steps: int = STEPS_PER_DAY


EVALUATION = EvaluationSettings()


@dataclass(frozen=True)
class ProfileStudySettings:
    """What only profile_study.py reads (``PROFILE_STUDY.<field>``)."""
    # What a profile is worth on never-seen servers (profile_study.measure_profile_value): forecast
    # origins every this many buckets, and bootstrap resamples (whole servers) of the gain's interval.
    origin_stride: int = 6
    bootstrap_resamples: int = 1000


PROFILE_STUDY = ProfileStudySettings()


@dataclass(frozen=True)
class BaselineSettings:
    """What only baselines.py reads (``BASELINES.<field>``)."""
    # The statistical models a practitioner tries first (Nixtla statsforecast, baselines.py):
    # AutoETS (no season: ETS cannot hold a 288-step one), MSTL with a daily season (trend by AutoETS)
    # and, on request, AutoTheta with a daily season. Each is fitted once per server and metric on
    # the last BASELINES.fit_buckets before the first forecast origin, then run forward over the last
    # BASELINES.forward_buckets before each origin (the fitted parameters, fresh data). Their 80 %
    # interval is the p10-p90 band. `main.py evaluate --no-statistical` skips them.
    statistical_methods: tuple[str, ...] = ("autoets", "mstl")
    statistical_methods_all: tuple[str, ...] = ("autoets", "mstl", "autotheta")
    season_length: int = STEPS_PER_DAY
    fit_buckets: int = 7 * STEPS_PER_DAY
    forward_buckets: int = 7 * STEPS_PER_DAY
    interval_level: int = 80  # percent: lo-80 / hi-80 = p10 / p90
    progress_fraction: float = 0.1  # a progress line at every 10 % of the work ...
    progress_seconds: float = 15.0  # ... at most one per 15 s (shorter runs log only their summary)


BASELINES = BaselineSettings()


@dataclass(frozen=True)
class AlertLifecycleSettings:
    """What only alert_lifecycle.py reads (``ALERT_LIFECYCLE.<field>``)."""
    history_max_rows: int = 1000


ALERT_LIFECYCLE = AlertLifecycleSettings()


@dataclass(frozen=True)
class ApiKeySettings:
    """What only api_keys.py reads (``API_KEYS.<field>``)."""
    min_length: int = 16  # characters of a key in a key file (a generated key has 32)
    # how often the daemon looks whether its key file changed (rotation without restart)
    key_file_check_seconds: float = 2.0


API_KEYS = ApiKeySettings()


@dataclass(frozen=True)
class DaemonSettings:
    """What only tft_inference.py reads (``DAEMON.<field>``)."""
    # a WebSocket without a key header must send {"api_key": ...} first, within this
    ws_auth_timeout_seconds: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024  # one POST body; ~40k records
    # WebSocket close codes: a refused key (4000-4999 are the application's; 4401 mirrors HTTP 401),
    # too many handshakes (4429 mirrors 429), and a binary frame (1003, "unsupported data", RFC 6455).
    ws_unauthorized_code: int = 4401
    ws_rate_limited_code: int = 4429
    ws_unsupported_data_code: int = 1003
    # Close codes of a refused subscriber (the caps and the send timeout: DAEMON_STATE.ws_*).
    ws_try_again_code: int = 1013  # RFC 6455 "try again later": the subscriber caps are reached
    ws_policy_code: int = 1008  # RFC 6455 "policy violation": a subscriber that does not take its documents
    ws_close_timeout_seconds: float = 1.0  # closing such a socket waits no longer for it
    # HTTP: requests handled at once (past it: 503 with Retry-After at once, nothing read), and how long a
    # client may take to send its body (a slow sender holds a slot: 408 past this).
    max_concurrent_requests: int = 64
    request_body_timeout_seconds: float = 30.0
    overload_retry_after_seconds: int = 1
    # A generated key (no key configured) is written to this file beside the store, mode 0600, not to the log.
    generated_key_suffix: str = ".generated-key"
    # Disk full: the client is asked to retry after this long (the feed resumes once space frees).
    disk_full_retry_after_seconds: int = 30
    # GET /history serves at most this much: actuals beside the forecasts made for them (kept a week).
    history_max_hours: int = FORECAST_RETENTION_HOURS
    # The access log (tft_inference.access): without --access-log FILE only prediction requests
    # answered with an error (this status or above) or slower than this are logged, so a dashboard polling
    # every few seconds does not fill the daemon's own log; with it, every prediction request goes to FILE.
    access_log_min_status: int = 400
    access_log_slow_seconds: float = 1.0


DAEMON = DaemonSettings()


@dataclass(frozen=True)
class ApiSettings:
    """What only api_models.py reads (``API.<field>``)."""
    # Years a fed timestamp may carry: the store keeps int64 nanoseconds, which end in 2262.
    feed_timestamp_years: tuple[int, ...] = (1970, 2200)
    # Integer metrics (socket counts, uptime) must fit a signed 32-bit integer; floats must be finite.
    integer_metric_max: int = 2**31 - 1
    maintenance_reason_max_length: int = 200


API = ApiSettings()


@dataclass(frozen=True)
class DaemonStateSettings:
    """What only daemon_state.py reads (``DAEMON_STATE.<field>``)."""
    # A fed record may be at most FEED_MAX_FUTURE_SECONDS ahead of the fleet's clock and at most this far
    # behind it (or the retention, when longer): a replay of recorded history is taken, a record stamped 1970 is not.
    feed_max_age_days: int = 3 * 366
    # Rate limits, token buckets. A valid API key gets its own bucket, sized so one key shared by
    # 1,000 collectors posting every 5 s (200 requests/s) stays under it with room for the dashboard
    # and adapters. Requests without a valid key (wrong key, none, open reads) are limited per client
    # address, far lower: a guessing client is slowed, and a new wrong key never buys a new bucket.
    rate_limit_requests_per_minute: int = 15_000
    rate_limit_burst: int = 2_000
    anonymous_rate_per_minute: int = 600
    anonymous_rate_burst: int = 100
    # The limiter forgets idle clients (a full bucket is the same as no bucket) once it tracks more
    # than this many, and never holds more than the hard cap (oldest first out).
    rate_limit_prune_above: int = 10_000
    rate_limit_max_clients: int = 50_000
    rate_limit_prune_every_seconds: float = 1.0  # the forgetting scan runs at most this often
    # /health says "degraded" after this many forecast cycles in a row failed.
    health_degraded_after_failed_cycles: int = 3
    # ... and when records keep arriving but no forecast cycle completed for this long while a complete bucket
    # waits (a cycle runs once per 5-minute bucket, so three buckets without one is a stall, not a slow cycle).
    health_stall_seconds: float = 3 * 300.0  # --health-stall-seconds
    # Trust boundaries (Docs/DEPLOYMENT.md, Threat model). Every quantity a client controls is bounded here;
    # each refusal is counted (tft_refused_total{reason}) and said in one line.
    # WebSocket subscribers: the cycle never awaits a socket. Each subscriber holds only the newest document
    # (an older one not yet sent is dropped); a send that does not finish within the timeout closes the socket.
    ws_send_timeout_seconds: float = 10.0
    ws_max_subscribers: int = 200  # in all
    ws_max_subscribers_per_key: int = 20  # per API key (per address without keys)
    # Servers: the daemon tracks at most this many (a record for one more is rejected naming the cap). Each costs
    # a few KiB while it warms up (a small ring that grows) and ~40 KiB at full history (STORE.memory_buckets), so
    # 10,000 servers fit in ~0.4 GiB of windows; --max-servers.
    max_tracked_servers: int = 10_000
    # New server names a key may introduce: a token bucket per key (a fleet's first backfill fits the burst).
    new_servers_per_minute: int = 100
    new_servers_burst: int = 2_000
    # Housekeeping (retention, duplicate-check keys, idle servers released from memory) runs on this clock,
    # whether or not a model is loaded; --housekeeping-seconds.
    housekeeping_seconds: float = 60.0
    # A server counts as established (its matured forecasts calibrate the shared bands) once the daemon has
    # held its history this long: a burst of freshly invented names cannot steer the fleet's bands.
    established_history_hours: float = 24.0  # --established-hours
    maintenance_max_windows: int = 10_000
    # Proxy headers (X-Forwarded-For) are believed only from these peers (--trusted-proxy); none by default.
    trusted_proxies: tuple[str, ...] = ()
    # History kept in the store. Buckets: five weeks by default (--retention-days), enough to export a
    # month of training data from the store (main.py export) plus a week of margin; the disk cost per
    # 1,000 servers is measured in Docs/API_REFERENCE.md (Storage and retention). At least a week, so a
    # record the feed still accepts (DAEMON_STATE.max_record_age_hours) is never older than what the store keeps.
    # Forecasts (the history panel's bands) stay a week, all GET /history shows. Older rows are deleted.
    retention_days: int = 35
    # A bucket is complete when data for a later bucket arrives, or when the wall clock is this
    # far past its end (a feed that stalled).
    bucket_grace_seconds: int = 30
    # The forecast loop looks this often for a completed bucket to forecast.
    forecast_poll_seconds: float = 0.5
    # Late arrivals: a server whose newest bucket is at most this many buckets before the one a cycle forecasts
    # (a late collector, a backfill in progress) is not forecast over an offline-filled gap; the cycle keeps its
    # previous forecast and an incremental pass forecasts it for that bucket as soon as its data arrive.
    await_late_buckets: int = 1
    # An incremental pass (servers that became ready for the last cycle's bucket since it ran, checked every
    # poll) forecasts at most this many servers; the rest wait for the next poll, so a pass stays short.
    incremental_max_servers: int = 250
    # The daemon logs one INFO summary of its forecast cycles this often (each cycle is a DEBUG line).
    log_summary_seconds: float = 60.0
    # A failed cycle is retried after a back-off that doubles from DAEMON_STATE.forecast_poll_seconds up to this.
    forecast_retry_max_seconds: float = 60.0
    # Records older than this (relative to the newest bucket the daemon has seen) are rejected: late
    # deliveries (a collector's buffer holds ~3 days) are taken, a replay of old history is not. A week
    # (as before retention became 35 days): the shortest retention allowed, so no taken record is trimmed.
    max_record_age_hours: int = RETENTION_MIN_DAYS * 24
    # Live band calibration: adaptive conformal inference (Gibbs & Candes 2021) on the log of a
    # multiplier m of each band half-width (p50-p10 below, p90-p50 above), per metric x horizon.
    # Each matured forecast is judged by the band it was served with (ACI's own rule, whose long-run
    # miss rate is the target), or, once today's m has moved more than ACCURACY.band_adapt_served_tolerance from
    # the one it was served with, by its model band widened by *today's* m (the quantile tracker of
    # Angelopoulos et al. 2023, so feedback that arrives 8 h late does not overshoot); per cycle,
    # log m += gain x n x (share outside that side - target), the step capped.
    # The multiplier stays within the bounds; it is kept in the store and reset for a new model.
    band_adapt_enabled: bool = True
    live_selection_listed: int = 50  # /accuracy lists at most this many servers served the last value
    model_watch_seconds: float = 5.0  # the daemon checks this often whether models/latest points elsewhere
    # Housekeeping (retention, duplicate-check keys, idle servers) logs one INFO summary of what it removed
    # this often; a run removing at least DAEMON_STATE.housekeeping_loud_rows rows of one kind, or failing, logs
    # at once.
    housekeeping_summary_seconds: float = 15 * 60.0
    housekeeping_loud_rows: int = 100_000


DAEMON_STATE = DaemonStateSettings()


@dataclass(frozen=True)
class StoreSettings:
    """What only metrics_store.py reads (``STORE.<field>``)."""
    # A new server's window (DAEMON_STATE.max_tracked_servers bounds how many) starts small and grows.
    warmup_ring_buckets: int = 16  # a new server's first ring; doubled as its history grows, up to STORE.memory_buckets
    # SQLite's write-ahead log is truncated back to this size after each checkpoint.
    sqlite_journal_size_limit_bytes: int = 64 * 1024 * 1024
    dedupe_hours: int = 2  # exact duplicate samples (same server and timestamp) are ignored this long
    # On start the store is checked with SQLite's integrity check: "quick" (O(N), skips index/table
    # cross-checks; the figures at fleet scale are in Docs/RAG/CURRENT_STATE.md), "full", or "off".
    integrity_check: str = "quick"
    # Beside the store, the daemon writes each cycle how many samples it holds; on start a store
    # holding fewer (a truncated write-ahead log, a lost disk cache) is reported with the count lost.
    ledger_suffix: str = ".ledger.json"
    # SQLite's write-ahead log layout (sqlite.org/fileformat.html, "WAL file format").
    wal_header_bytes: int = 32
    wal_frame_header_bytes: int = 24
    wal_magic: tuple[int, ...] = (0x377F0682, 0x377F0683)
    # per-server ring of recent buckets kept in memory: at least what one forecast reads (FeatureSpec.history_buckets:
    # encoder length + FEATURES.seasonal_input_lag + FEATURES.seasonal_input_half_window = 48 + 288 + 6 = 342 for the
    # default model) plus a margin; the cycle reads no further back (bench/bench_scale.py: forecasts identical to a
    # 512-bucket ring). A model with a longer encoder needs a larger ring (--encoder-length 96: 390 buckets).
    memory_buckets: int = 352
    sqlite_synchronous: str = "FULL"  # every acknowledged batch survives a crash or power loss


STORE = StoreSettings()


@dataclass(frozen=True)
class ExportSettings:
    """What only store_export.py reads (``EXPORT.<field>``)."""
    # main.py export (store_export.py): whole servers are read, checked and written in chunks of about this
    # many rows (20 servers x 35 days), which bounds its memory (0.36 GB peak measured, 0.16 GB of it imports);
    # a progress line every this share of the rows.
    chunk_rows: int = 200_000
    progress_fraction: float = 0.1


EXPORT = ExportSettings()


@dataclass(frozen=True)
class EngineSettings:
    """What only forecast_engine.py reads (``ENGINE.<field>``)."""
    # A server with no samples for this many buckets is reported offline, not forecast.
    offline_after_buckets: int = 12
    # A forecast cycle runs the model over at most this many servers at a time, so the working set
    # of one slice stays in the CPU caches (the slice sizes measured are in Docs/RAG/CURRENT_STATE.md).
    inference_chunk_servers: int = 125


ENGINE = EngineSettings()


@dataclass(frozen=True)
class RemoteWriteSettings:
    """What only remote_write.py reads (``REMOTE_WRITE.<field>``)."""
    version: str = "0.1.0"  # X-Prometheus-Remote-Write-Version of remote-write 1.0 (prometheus.WriteRequest)
    # Memory bounds: instances and mapped series tracked (a series costs ~0.6 KB, measured: a digest of its labels,
    # its slots and last sample; node_cpu_seconds_total has 8 series per core, a host ~40 mapped series in all),
    # scrapes of one instance waiting for completion. Past a bound, new instances / series are refused (their samples
    # dropped and counted, a warning logged) and the oldest waiting scrape is completed early.
    max_instances: int = 10_000
    max_series: int = 500_000  # ~600 B each, measured with 1.5 KB label values (digested): ~0.3 GB at most
    max_series_per_instance: int = 5_000  # a 256-core host sends 2,048 node_cpu series
    max_pending_scrapes: int = 64
    idle_seconds: int = 3600  # an instance without samples this long (data time) is forgotten
    # Records made but not stored (the store's disk is full: 507, Prometheus retries) are sent first on the
    # next write; beyond this many the oldest are dropped (counted, logged).
    max_unsent_records: int = 50_000
    log_every_seconds: float = 60.0  # dropped samples and refused records are summarised this often
    # Samples of one instance stamped within a mapping's "scrape_window_seconds" of each other form one scrape
    # (one record). Prometheus stamps a scrape's samples alike (0: exact); the OpenTelemetry collector's hostmetrics
    # scrapers stamp each their own (milliseconds apart), so mappings/otel_hostmetrics.json sets a window.
    scrape_window_seconds: float = 0.0


REMOTE_WRITE = RemoteWriteSettings()


@dataclass(frozen=True)
class OtlpSettings:
    """What only otlp_receiver.py reads (``OTLP.<field>``)."""
    max_decoded_bytes: int = REMOTE_WRITE_MAX_DECODED_BYTES  # a gzip body is inflated at most this far (413 past it)
    complete_grace_seconds: float = REMOTE_WRITE_COMPLETE_GRACE_SECONDS  # a collection's record is made this much later
    error_message_chars: int = 500  # partial_success.error_message and Status.message are cut to this


OTLP = OtlpSettings()


@dataclass(frozen=True)
class ClientSettings:
    """What only daemon_client.py reads (``CLIENT.<field>``)."""
    # Clients of the daemon (daemon_client.py: the feed, the demo stream, the dashboard, main.py demo).
    timeout_seconds: float = 30.0  # one request; a pre-fill batch on a busy 2-core daemon stays well inside
    retry_attempts: int = 3  # tries in all for a request that failed for a passing reason ...
    retry_base_seconds: float = 0.5  # ... with a back-off that doubles from here ...
    retry_max_seconds: float = 30.0  # ... up to this (a 429's Retry-After is honoured up to this too)
    # Answers worth another try: rate limited, or the daemon failed unexpectedly. Not 503: the daemon
    # answers it for "no model loaded", which waiting does not fix.
    retry_statuses: tuple[int, ...] = (429, 500, 502, 504)
    error_detail_chars: int = 300  # how much of an unexpected answer an error message quotes


CLIENT = ClientSettings()


@dataclass(frozen=True)
class FleetStatusSettings:
    """What only fleet_status.py reads (``FLEET_STATUS.<field>``): ``main.py status``."""
    alerts_shown: int = 10  # active alerts listed under the fleet's summary line, most urgent first


FLEET_STATUS = FleetStatusSettings()


@dataclass(frozen=True)
class AlertmanagerSettings:
    """What only alertmanager_push.py reads (``ALERTMANAGER.<field>``)."""
    api_path: str = "/api/v2/alerts"
    ends_at_resends: int = 4
    resolved_sends: int = 3  # successful sends that carry a resolved alert
    timeout_seconds: float = 10.0  # one POST (Prometheus' default Alertmanager timeout)
    max_batch: int = 256  # alerts per POST (Prometheus' batch size); a larger set goes in several
    # A failed POST (unreachable, timeout, 5xx, 429) is retried after a back-off that doubles from the base
    # up to the max; each retry sends the alerts as they are then, never a stale batch.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    error_chars: int = 300  # how much of a refusal's body /status and the log quote
    close_seconds: float = 2.0  # on shutdown, wait this long for a POST in flight
    # The alertname label of each alert kind (documented in Docs/RISK_SCORING.md; routes match on them).
    alertnames: Mapping[str, str] = _read_only({"risk": "FleetForecastRisk", "model_degraded": "FleetModelDegraded"})


ALERTMANAGER = AlertmanagerSettings()


@dataclass(frozen=True)
class DemoSettings:
    """What only demo.py reads (``DEMO.<field>``)."""
    # The demo's simulated clock runs 300x ahead of the wall clock, so its daemon accepts records up to
    # a year ahead of its own clock (--max-future-seconds); a production daemon keeps FEED_MAX_FUTURE_SECONDS.
    max_future_seconds: int = 366 * 24 * 3600
    train_hours: int = 14 * 24
    work_dir: Path = PROJECT_ROOT / "demo_data"
    start_timeout_seconds: float = 120.0  # main.py demo: how long the daemon and the dashboard may take to answer
    # main.py demo without a model: generating its fleet and training its model, then starting everything;
    # measured 3 min 0 s from the command to the dashboard URL on the idle 2-core machine (2026-12-02,
    # README "Run it"). Re-measure with a fresh --models-dir and --work-dir when demo.DEMO_TRAIN_ARGS change.
    first_model_minutes: int = 3
    log_tail_lines: int = 20  # main.py demo: lines of a child's log shown when it fails


DEMO = DemoSettings()


@dataclass(frozen=True)
class DashboardSettings:
    """What only tft_dashboard_web.py reads (``DASHBOARD.<field>``)."""
    request_attempts: int = 1  # a failed read is not retried: the next refresh is the retry
    cache_seconds: int = 2  # the panels of one refresh share one round of requests
    default_refresh_seconds: int = 5
    top_servers: int = 5
    history_hours: int = 12
    fan_history_hours: int = 6  # actuals drawn before the forecast on the Top Servers fans
    # Model health panel (live accuracy from GET /accuracy). p10-p90 is an 80 % band: coverage in the
    # target band is shown green; outside DRIFT_COVERAGE_BAND red (where model_degraded warnings start).
    coverage_target: tuple[float, ...] = (0.75, 0.85)
    skill_color_limit: float = 1.0  # skill vs persistence is coloured from -this (red) to +this (green)
    worst_servers: int = 10  # rows of the worst-servers table (lowest skill first)
    anomaly_rows: int = 20  # rows of the Overview's "Anomalous now" table (highest score first)
    model_age_days_after_hours: int = 48  # a model's age is said in hours up to this, in days beyond
    max_refresh_seconds: int = 60  # the refresh slider's top (0 = off)
    daemon_urls_env: str = "TFT_DAEMON_URLS"  # optional comma-separated allowlist: a sidebar selectbox
    # optional comma-separated: daemons that are shards of one fleet (--shard K/N each), shown as one fleet
    shard_urls_env: str = "TFT_DAEMON_SHARDS"
    refresh_env: str = "TFT_DASHBOARD_REFRESH"  # the refresh slider's start value (s)
    demo_on: tuple[str, ...] = ("1", "true", "yes", "on")  # values of DASHBOARD_DEMO_ENV that turn demo mode on
    anomaly_outside_above: float = 1.0  # a score above this lies outside the band (the dashboard's "Anomalous now")


DASHBOARD = DashboardSettings()


@dataclass(frozen=True)
class CollectorSettings:
    """What only host_collector.py reads (``COLLECTOR.<field>``)."""
    interval_seconds: float = 5.0  # host collector: one sample every 5 s (the daemon buckets them)
    data_path: str = "/"  # filesystem whose fill level is disk_usage_pct
    # Network interfaces that only mirror or bridge traffic another interface already counts.
    nic_exclude_prefixes: tuple[str, ...] = ("lo", "ifb", "veth", "docker", "br-", "virbr", "cni", "flannel", "cali",
                                             "vxlan", "tunl")
    java_process_names: tuple[str, ...] = ("java",)  # processes whose CPU is java_cpu_pct (Spark, Kafka, JVM services)
    bytes_per_mb: int = 1_000_000  # MB/s in the contract are decimal megabytes


COLLECTOR = CollectorSettings()


@dataclass(frozen=True)
class FeedSettings:
    """What only feed_client.py reads (``FEED.<field>``)."""
    # Records waiting for the daemon (it restarts, the network drops). When full, the oldest are
    # dropped and counted, with a warning (about 2.9 days of one host sampled every 5 s): a loss
    # is always logged, never silent.
    buffer_max_records: int = 50_000
    batch_records: int = 5_000  # records per POST /feed
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 1.0  # back-off after a failed POST doubles from here ...
    retry_max_seconds: float = 60.0  # ... up to this
    # 4xx answers to a feed batch that are worth retrying (a key being rotated, a timeout, rate limited);
    # any other 4xx refuses the batch for good and its records are dropped (counted, logged).
    retry_client_statuses: tuple[int, ...] = (401, 403, 408, 429)


FEED = FeedSettings()


@dataclass(frozen=True)
class StateRulesSettings:
    """What only state_rules.py reads (``STATE_RULES.<field>``)."""
    # A silent stretch longer than this between two samples is not replayed bucket by bucket into
    # the state rules (a laptop that slept for a week); the rules restart from the next sample.
    max_gap_buckets: int = 288


STATE_RULES = StateRulesSettings()


@dataclass(frozen=True)
class PrometheusSettings:
    """What only prometheus_adapter.py reads (``PROMETHEUS.<field>``)."""
    mapping_file: Path = PROJECT_ROOT / "mappings" / "prometheus_node_exporter.json"
    step_seconds: int = 60  # query_range resolution; values are averaged into 5-minute buckets
    rate_window: str = "2m"  # {window} in the mapping's PromQL: the rate() look-back
    poll_seconds: float = 30.0  # live mode: one instant query per metric this often
    timeout_seconds: float = 30.0
    max_points_per_query: int = 10_000  # Prometheus refuses > 11,000 points per series; longer spans are chunked
    backfill_hours: float = 2.0  # live mode: history sent before the first live poll (the encoder's window)


PROMETHEUS = PrometheusSettings()


@dataclass(frozen=True)
class AccuracySettings:
    """What only live_accuracy.py reads (``ACCURACY.<field>``)."""
    catch_up_buckets: int = 12  # after a gap, matured targets older than this are not scored (counted)
    worst_servers: int = 5  # /accuracy lists this many worst servers per metric and horizon
    band_adapt_gain: float = 0.005  # per matured forecast (ACI's usual gamma), so a cycle moves by gain x n x error ...
    band_adapt_max_step: float = 0.1  # ... at most this much in log units (about 10 %) per cycle
    # A matured forecast is judged by the band it was served with while today's multiplier is within this
    # (log units, ~10 %) of the one it was served with; beyond, by the model's band widened by today's.
    band_adapt_served_tolerance: float = 0.1
    # A metric x horizon whose model q-risk is below this is never called degraded: a forecast within ~2 % of
    # the level is not "degraded" because the last value of a near-constant metric (disk usage) is closer still.
    drift_skill_min_qrisk: float = 0.02


ACCURACY = AccuracySettings()


@dataclass(frozen=True)
class AnomalySettings:
    """What only live_anomaly.py reads (``ANOMALY.<field>``)."""
    # A half-width narrower than this (display units) is read as this wide, so a needle-thin band (an idle VM's
    # 0 MB/s, swap at exactly 0) gives a finite score: a move of one floor from p50 scores 1.
    min_half_width: Mapping[str, float] = _read_only({
        "cpu_used_pct": 1.0, "cpu_iowait_pct": 1.0, "mem_used_pct": 1.0, "swap_used_pct": 1.0, "disk_usage_pct": 1.0,
        "load_average": 0.1, "net_in_mb_s": 0.01, "net_out_mb_s": 0.01, "back_close_wait": 1.0, "front_close_wait": 1.0,
    })
    min_half_width_default: float = 1.0  # a metric missing above
    max_rows: int = 1000  # GET /anomalies answers at most this many rows, highest score first ("matching": all)


ANOMALY = AnomalySettings()


@dataclass(frozen=True)
class RegistrySettings:
    """What only model_registry.py reads (``REGISTRY.<field>``)."""
    promotions_file: str = "promotions.json"  # every promotion, rejection and rollback, in the models directory
    promotions_lock_file: str = ".promotions.lock"  # beside promotions.json: one writer at a time


REGISTRY = RegistrySettings()


@dataclass(frozen=True)
class RetrainSettings:
    """What only model_retrain.py reads (``RETRAIN.<field>``)."""
    epochs: int = 8  # a warm-started challenger needs fewer epochs than a model from scratch
    # The gate: a challenger replaces the champion only if its mean q-risk at 0.5 over the metrics is
    # no worse at every horizon on the same held-out window, and its mean p10-p90 coverage at every
    # horizon lies inside this band.
    promotion_coverage_band: tuple[float, ...] = DRIFT_COVERAGE_BAND
    promotion_qrisk_tolerance: float = 0.0  # relative slack on "no worse" (0: strictly no worse)
    parent_check_seconds: float = 2.0  # a daemon-started retrain checks this often that the daemon lives
    # Established history: a retrain trains and is judged only on servers the store holds at least this
    # many days of buckets for (the 24 h hold-out, 12 h validation, a day of "yesterday" and training windows of
    # their own); --min-history-days.
    min_history_days: float = 3.0
    # The gate refuses when more than this share of the servers in the champion's or the challenger's
    # population is in only one of them (new or gone); --max-population-change (1: never refuse).
    max_population_change: float = 0.5


RETRAIN = RetrainSettings()


@dataclass(frozen=True)
class SchedulerSettings:
    """What only retrain_scheduler.py reads (``SCHEDULER.<field>``)."""
    retrain_nice: int = 19  # scheduled retrains run at the lowest CPU priority
    retrain_min_interval_seconds: int = 3600  # --retrain-every below this is refused
    # Bounds of one retrain (Docs/RETRAINING.md, "Bounds"). A daemon-started retrain runs in its own process
    # group: past the timeout the whole group gets SIGTERM, then SIGKILL after the grace (also on shutdown).
    retrain_timeout_seconds: int = 6 * 3600  # as tft-retrain.service's TimeoutStartSec=6h


SCHEDULER = SchedulerSettings()
