"""How a feed derives the contract's ``state`` column from what it can observe.

``state`` is part of the data contract, so anything that writes LINBORG data must be
able to produce it: the simulator, and a real collector fed by node agents. This module
is the one definition both use (Docs/DATA_CONTRACT.md, "Deriving state"). It reads only
observable signals: the metrics of the bucket, whether any sample arrived, whether the
server is inside its scheduled maintenance window, and the clock.

Precedence, highest first::

    maintenance    the bucket lies inside the server's scheduled maintenance window
    offline        no sample arrived for the bucket (outside maintenance)
    critical_issue a critical threshold has been crossed for CRITICAL_ENTER_BUCKETS
                   consecutive buckets; it ends after the condition has been clear for
                   CRITICAL_CLEAR_BUCKETS buckets
    recovery       the RECOVERY_BUCKETS buckets after a critical_issue or an unplanned outage
    heavy_load     CPU used or memory above the heavy thresholds (with hysteresis)
    morning_spike  weekday, inside MORNING_SPIKE_HOURS_UTC, CPU used above a floor
    idle           CPU used below the idle threshold (with hysteresis)
    healthy        everything else

The four soft states (heavy_load, morning_spike, idle, healthy) change only after the current
one has stopped applying for SOFT_STATE_MIN_BUCKETS buckets in a row (the label then becomes
the latest candidate), so a noisy metric sitting on a threshold does not make the label flicker.

The tracker carries its memory between calls, so labelling a stream bucket by bucket
gives exactly the same labels as labelling the whole history at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from config import (
    CRITICAL_CLEAR_BUCKETS,
    CRITICAL_CLOSE_WAIT,
    CRITICAL_CPU_USED_PCT,
    CRITICAL_DISK_PCT,
    CRITICAL_ENTER_BUCKETS,
    CRITICAL_IOWAIT_PCT,
    CRITICAL_MEM_PCT,
    CRITICAL_SWAP_PCT,
    HEAVY_CPU_USED_PCT,
    HEAVY_MEM_PCT,
    IDLE_CPU_USED_PCT,
    MORNING_SPIKE_HOURS_UTC,
    MORNING_SPIKE_MIN_CPU_USED_PCT,
    RECOVERY_BUCKETS,
    SOFT_STATE_MIN_BUCKETS,
    STATE_RULES,
    VALID_STATES,
)
from contract import bucket_of_ns, bucket_start, cpu_used

STATE_CODE = {name: code for code, name in enumerate(VALID_STATES)}
# Most severe first: the order in which the rules above take precedence. A bucket fed by
# several samples takes the most severe state among them (metrics_store.py).
STATE_PRECEDENCE = ["maintenance", "offline", "critical_issue", "recovery", "heavy_load", "morning_spike", "idle",
                    "healthy"]
assert sorted(STATE_PRECEDENCE) == sorted(VALID_STATES)
_CRIT = STATE_CODE["critical_issue"]
_HEALTHY = STATE_CODE["healthy"]
_HEAVY = STATE_CODE["heavy_load"]
_IDLE = STATE_CODE["idle"]
_MAINT = STATE_CODE["maintenance"]
_SPIKE = STATE_CODE["morning_spike"]
_OFFLINE = STATE_CODE["offline"]
_RECOVERY = STATE_CODE["recovery"]


def critical_cpu_threshold(profiles: np.ndarray | list[str]) -> np.ndarray:
    """Per-server CPU-used threshold for critical_issue (ML boxes are allowed to run hotter)."""
    default = CRITICAL_CPU_USED_PCT["default"]
    thresholds = [CRITICAL_CPU_USED_PCT.get(p, default) for p in profiles]
    return np.array([np.inf if t is None else t for t in thresholds], dtype=np.float64)


def critical_condition(cpu_used: np.ndarray, iowait: np.ndarray, mem: np.ndarray, swap: np.ndarray,
                       disk: np.ndarray, back_close_wait: np.ndarray, front_close_wait: np.ndarray,
                       cpu_threshold: np.ndarray) -> np.ndarray:
    """Boolean mask of buckets where any critical threshold is crossed."""
    return ((cpu_used >= cpu_threshold) | (iowait >= CRITICAL_IOWAIT_PCT) | (mem >= CRITICAL_MEM_PCT)
            | (swap >= CRITICAL_SWAP_PCT) | (disk >= CRITICAL_DISK_PCT)
            | (back_close_wait >= CRITICAL_CLOSE_WAIT) | (front_close_wait >= CRITICAL_CLOSE_WAIT))


def morning_spike_window(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """True for weekday buckets inside the morning-spike window (UTC)."""
    hours = timestamps.hour + timestamps.minute / 60.0
    start, end = MORNING_SPIKE_HOURS_UTC
    return np.asarray((timestamps.dayofweek < 5) & (hours >= start) & (hours < end))


@dataclass
class StateTracker:
    """Per-server memory of the labelling rules (hysteresis, timers), for N servers."""

    cpu_threshold: np.ndarray  # (N,) critical CPU-used threshold per server

    def __post_init__(self) -> None:
        n = len(self.cpu_threshold)
        self.soft = np.full(n, _HEALTHY, dtype=np.int8)  # current soft state
        self.pending_count = np.zeros(n, dtype=np.int16)  # buckets in a row the soft state no longer applies
        self.heavy = np.zeros(n, dtype=bool)
        self.idle = np.zeros(n, dtype=bool)
        self.in_critical = np.zeros(n, dtype=bool)
        self.clear_count = np.zeros(n, dtype=np.int16)
        self.crit_run = np.zeros(n, dtype=np.int16)  # consecutive buckets with the condition
        self.recovery_left = np.zeros(n, dtype=np.int16)
        self.was_offline = np.zeros(n, dtype=bool)
        self.fresh = np.ones(n, dtype=bool)  # no observed bucket yet

    @classmethod
    def for_profiles(cls, profiles: np.ndarray | list[str]) -> StateTracker:
        """Tracker for servers with the given profiles."""
        return cls(cpu_threshold=critical_cpu_threshold(profiles))

    def label(self, cpu_used: np.ndarray, iowait: np.ndarray, mem: np.ndarray, swap: np.ndarray,
              disk: np.ndarray, back_close_wait: np.ndarray, front_close_wait: np.ndarray,
              has_sample: np.ndarray, in_maintenance: np.ndarray, spike_window: np.ndarray) -> np.ndarray:
        """Label ``n`` consecutive buckets for all servers.

        Metric and mask arrays are shaped (n, N); ``spike_window`` is (n,) or (n, N).
        Returns int8 codes into ``VALID_STATES``, shaped (n, N).
        """
        n_steps = cpu_used.shape[0]
        crit = critical_condition(cpu_used, iowait, mem, swap, disk, back_close_wait, front_close_wait,
                                  self.cpu_threshold[None, :])
        heavy_enter = (cpu_used >= HEAVY_CPU_USED_PCT[0]) | (mem >= HEAVY_MEM_PCT[0])
        heavy_stay = (cpu_used >= HEAVY_CPU_USED_PCT[1]) | (mem >= HEAVY_MEM_PCT[1])
        idle_enter = cpu_used < IDLE_CPU_USED_PCT[0]
        idle_stay = cpu_used <= IDLE_CPU_USED_PCT[1]
        spike = np.broadcast_to(np.asarray(spike_window).reshape(n_steps, -1), cpu_used.shape) \
            & (cpu_used >= MORNING_SPIKE_MIN_CPU_USED_PCT)
        observed = has_sample & ~in_maintenance
        offline = ~has_sample & ~in_maintenance

        out = np.empty(cpu_used.shape, dtype=np.int8)
        for t in range(n_steps):
            obs = observed[t]
            # Hysteresis flags only move on observed buckets.
            self.heavy = np.where(obs, np.where(self.heavy, heavy_stay[t], heavy_enter[t]), self.heavy)
            self.idle = np.where(obs, np.where(self.idle, idle_stay[t], idle_enter[t]), self.idle)
            candidate = np.where(self.heavy, _HEAVY, np.where(spike[t], _SPIKE, np.where(self.idle, _IDLE, _HEALTHY)))
            candidate = candidate.astype(np.int8)
            # Count the buckets in a row in which the current soft state no longer applies; after
            # SOFT_STATE_MIN_BUCKETS of them, take the latest candidate. Counting "away from the
            # current state" rather than "the same new candidate" also ends a state whose
            # successors alternate (after the morning window, a box hovering between heavy_load
            # and healthy would otherwise keep morning_spike all day).
            away = candidate != self.soft
            self.pending_count = np.where(obs, np.where(away, self.pending_count + 1, 0), self.pending_count)
            switch = obs & ((away & (self.pending_count >= SOFT_STATE_MIN_BUCKETS)) | self.fresh)
            self.soft = np.where(switch, candidate, self.soft)
            self.pending_count = np.where(switch, 0, self.pending_count)
            self.fresh &= ~obs

            # Critical: enters after CRITICAL_ENTER_BUCKETS buckets in a row, leaves after
            # CRITICAL_CLEAR_BUCKETS clear buckets.
            cond = obs & crit[t]
            self.crit_run = np.where(cond, self.crit_run + 1, np.where(obs, 0, self.crit_run))
            crit_now = cond & (self.in_critical | (self.crit_run >= CRITICAL_ENTER_BUCKETS))
            self.clear_count = np.where(cond, 0, np.where(obs & self.in_critical, self.clear_count + 1,
                                                            self.clear_count))
            ended = obs & self.in_critical & ~cond & (self.clear_count >= CRITICAL_CLEAR_BUCKETS)
            self.in_critical = (self.in_critical | crit_now) & ~ended
            # Back from an unplanned outage, or out of a critical issue -> recovery.
            back_online = obs & self.was_offline
            self.recovery_left = np.where(ended | back_online, RECOVERY_BUCKETS, self.recovery_left)
            self.recovery_left = np.where(crit_now, 0, self.recovery_left)
            self.was_offline = np.where(offline[t], True, np.where(obs, False, self.was_offline))
            # An outage interrupts a critical issue; maintenance cancels pending recovery.
            self.in_critical &= ~offline[t]
            self.recovery_left = np.where(in_maintenance[t], 0, self.recovery_left)

            label = np.where(self.in_critical, _CRIT, np.where(self.recovery_left > 0, _RECOVERY, self.soft))
            label = np.where(offline[t], _OFFLINE, label)
            label = np.where(in_maintenance[t], _MAINT, label)
            out[t] = label
            self.recovery_left = np.where(obs & (label == _RECOVERY), self.recovery_left - 1, self.recovery_left)
        return out


def derive_states(df: pd.DataFrame, maintenance: pd.Series | np.ndarray | None = None) -> pd.Series:
    """Derive ``state`` for a long-format LINBORG frame on the 5-minute grid.

    ``df`` needs ``timestamp``, ``server_name``, ``profile`` and the LINBORG metrics; rows
    must be one per (server, bucket) with no missing buckets (dense mode: buckets without
    samples carry the offline vector and ``has_sample=False`` may be given as a column).
    ``maintenance`` optionally marks rows inside a scheduled window. Returns the state per
    row, aligned to ``df.index``.
    """
    frame = df.assign(_row=np.arange(len(df)))
    frame = frame.sort_values(["server_name", "timestamp"], kind="stable")
    servers = frame["server_name"].drop_duplicates().tolist()
    n_servers = len(servers)
    if len(frame) % n_servers:
        raise ValueError("derive_states needs the same buckets for every server (dense grid).")
    n_steps = len(frame) // n_servers

    def grid(column: str | np.ndarray) -> np.ndarray:
        values = frame[column].to_numpy() if isinstance(column, str) else np.asarray(column)[frame["_row"].to_numpy()]
        return values.reshape(n_servers, n_steps).T

    has_sample = grid("has_sample") if "has_sample" in frame else np.ones((n_steps, n_servers), dtype=bool)
    maint = grid(np.asarray(maintenance, dtype=bool)) if maintenance is not None \
        else np.zeros((n_steps, n_servers), dtype=bool)
    timestamps = pd.DatetimeIndex(frame["timestamp"].to_numpy()[:n_steps])
    profiles = frame.groupby("server_name", sort=False)["profile"].first().reindex(servers).to_numpy()
    tracker = StateTracker.for_profiles(profiles)
    codes = tracker.label(
        cpu_used=cpu_used(grid("cpu_idle_pct")), iowait=grid("cpu_iowait_pct"), mem=grid("mem_used_pct"),
        swap=grid("swap_used_pct"), disk=grid("disk_usage_pct"), back_close_wait=grid("back_close_wait"),
        front_close_wait=grid("front_close_wait"), has_sample=has_sample, in_maintenance=maint,
        spike_window=morning_spike_window(timestamps),
    )
    labels = np.asarray(VALID_STATES, dtype=object)[codes.T.reshape(-1)]
    result = np.empty(len(frame), dtype=object)
    result[frame["_row"].to_numpy()] = labels
    return pd.Series(result, index=df.index, name="state")


class StreamStateLabeler:
    """Derive ``state`` for one server's raw samples as they arrive (collectors, adapters).

    Samples are grouped into 5-minute buckets. The rule memory (hysteresis, critical and
    recovery timers) advances once per completed bucket, with the bucket's value made as the
    daemon makes it (gauges averaged, counts the latest sample), and buckets without any
    sample count as offline, so a stream labelled here gets the labels ``derive_states``
    would give the bucketed history. A sample is labelled with the rules applied to its
    bucket so far. A gap longer than ``STATE_RULES.max_gap_buckets`` restarts the rules.
    """

    _GAUGES = ("cpu_idle_pct", "cpu_iowait_pct", "mem_used_pct", "swap_used_pct", "disk_usage_pct")
    _COUNTS = ("back_close_wait", "front_close_wait")

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.tracker = StateTracker.for_profiles([profile])
        self.bucket: int | None = None  # current bucket number (5-minute units since the epoch)
        self._sums = dict.fromkeys(self._GAUGES, 0.0)
        self._last = dict.fromkeys(self._COUNTS, 0.0)
        self._n = 0

    def _bucket_inputs(self) -> dict[str, np.ndarray]:
        mean = {k: v / max(self._n, 1) for k, v in self._sums.items()}

        def one(value: float) -> np.ndarray:
            return np.array([[value]], dtype=float)

        return {"cpu_used": one(cpu_used(mean["cpu_idle_pct"])), "iowait": one(mean["cpu_iowait_pct"]),
                "mem": one(mean["mem_used_pct"]), "swap": one(mean["swap_used_pct"]),
                "disk": one(mean["disk_usage_pct"]), "back_close_wait": one(self._last["back_close_wait"]),
                "front_close_wait": one(self._last["front_close_wait"])}

    def _apply(self, tracker: StateTracker, bucket: int, inputs: dict[str, np.ndarray], has_sample: bool,
               in_maintenance: bool) -> int:
        stamp = pd.DatetimeIndex([bucket_start(bucket)])
        codes = tracker.label(**inputs, has_sample=np.array([[has_sample]]),
                              in_maintenance=np.array([[in_maintenance]]), spike_window=morning_spike_window(stamp))
        return int(codes[0, 0])

    def label(self, timestamp: pd.Timestamp, metrics: dict[str, float], in_maintenance: bool = False) -> str:
        """The state of a sample taken at ``timestamp`` (UTC) with the given LINBORG metrics."""
        bucket = int(bucket_of_ns(pd.Timestamp(timestamp).value))
        if self.bucket is not None and bucket > self.bucket:
            self._apply(self.tracker, self.bucket, self._bucket_inputs(), True, in_maintenance)
            silent = bucket - self.bucket - 1
            if silent > STATE_RULES.max_gap_buckets:
                self.tracker = StateTracker.for_profiles([self.profile])
            else:
                offline = {k: np.zeros((1, 1)) for k in self._bucket_inputs()}
                for gap_bucket in range(self.bucket + 1, bucket):
                    self._apply(self.tracker, gap_bucket, offline, False, False)
            self._sums = dict.fromkeys(self._GAUGES, 0.0)
            self._n = 0
        if self.bucket is None or bucket >= self.bucket:
            self.bucket = bucket
            for key in self._GAUGES:
                self._sums[key] += float(metrics[key])
            for key in self._COUNTS:
                self._last[key] = float(metrics[key])
            self._n += 1
        # A late sample (older bucket) is labelled against the current rule memory.
        preview = copy.deepcopy(self.tracker)
        return VALID_STATES[self._apply(preview, self.bucket, self._bucket_inputs(), True, in_maintenance)]
