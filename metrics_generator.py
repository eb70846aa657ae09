"""Realistic LINBORG fleet simulator: writes training data or continues a fleet live.

    python metrics_generator.py --hours 720 --seed 42 --out_dir training/
    python main.py generate --servers 30 --hours 48

What it models (numbers in config.py, prose in Docs/SERVER_PROFILES.md):

* per-profile baselines and a daily/weekly rhythm (business hours, a weekday morning spike,
  quiet weekends, ETL ingest bursts, evening risk batches, nightly database backups);
* a semi-Markov workload regime per server (quiet / normal / busy, dwell times of hours);
* incidents that build up for tens of minutes to hours before they cross a critical
  threshold: memory leak -> swap, disk filling, I/O saturation, CLOSE_WAIT pile-up;
* maintenance windows with reboots (uptime resets), crashes and offline periods;
* the ``state`` label derived from observables by state_rules.py, exactly as a real feed
  would derive it. No simulator-internal variable is written to the data.

Design: a per-step loop, vectorised over servers, advances the discrete dynamics (regimes,
incidents, outages); everything continuous is computed with array operations. Random
numbers are drawn time-major, one block per step, so generating 30 days at once, a day at
a time, or one bucket at a time (the live stream) gives identical values.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.signal import lfilter

from common_utils import (
    atomic_write_json,
    atomic_write_text,
    isoformat_utc,
    make_server_name,
    parse_utc,
    quiet_library_noise,
    resolve_api_key,
    setup_logging,
)
from config import (
    CONTRACT_VERSION,
    DAEMON_PORT,
    DATA_CONTRACT_DOC,
    DEFAULT_FLEET,
    DEFAULT_HOST,
    DEMO_SCENARIOS,
    DEMO_SERVERS,
    ENCODER_LENGTH,
    FLOAT_METRICS,
    GENERATOR,
    INCIDENTS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METADATA_FILE,
    METRIC_RANGES,
    NOISE,
    PARQUET_COMPRESSION,
    PARQUET_ROW_GROUP_ROWS,
    PROFILE_BEHAVIOUR,
    PROJECT_VERSION,
    SAMPLING_INTERVAL_MINUTES,
    SERVER_PROFILES_DOC,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TRAINING_DATA_FILE,
    TRAINING_DIR,
    VALID_PROFILES,
    VALID_STATES,
)
from contract import bucket_iso, bucket_of_ns, bucket_start, cpu_used, fill_offline
from daemon_client import NO_RETRY, DaemonClient, DaemonError, RetryPolicy
from errors import UsageError, run_cli
from server_encoder import ServerEncoder
from state_rules import StateTracker, morning_spike_window

logger = logging.getLogger(__name__)

# Uniform-draw channels of the discrete dynamics, one (K, N) block per step.
_U_REGIME_LEAVE, _U_REGIME_DEST, _U_INC_START, _U_INC_TYPE, _U_INC_RAMP, _U_INC_CRIT, _U_INC_REBOOT, \
    _U_CRASH, _U_CRASH_LEN = range(9)
_N_UNIFORM = 9
# Gaussian noise channels (slow, fast) per noise family, plus one for java share.
_NOISE_FAMILIES = ["activity", "cpu", "iowait", "mem", "net_in", "net_out", "back_cw", "front_cw", "load", "swap"]
_NOISE_SPEC_OF = {"net_in": "net", "net_out": "net", "back_cw": "connections", "front_cw": "connections"}
_N_NOISE = 2 * len(_NOISE_FAMILIES) + 1
_INC_NONE = -1
_INC_CODE = {name: i for i, name in enumerate(GENERATOR.incident_types)}
_PHASE_NONE, _PHASE_RAMP, _PHASE_CRITICAL = 0, 1, 2


def _hours_to_steps(hours: float | np.ndarray) -> np.ndarray:
    return np.maximum(1, np.round(np.asarray(hours) * STEPS_PER_HOUR)).astype(np.int64)


def fleet_from_total(total: int) -> dict[str, int]:
    """Split ``total`` servers over the profiles in the default fleet's proportions.

    Largest-remainder rounding; every profile gets at least one server when total >= 7.
    """
    if total < 1:
        raise UsageError(f"--servers must be at least 1 (got {total}).")
    weights = np.array([DEFAULT_FLEET[p] for p in DEFAULT_FLEET], dtype=float)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    if total >= len(weights):
        counts = np.maximum(counts, 1)
    while counts.sum() > total:  # the floor of 1 can overshoot for tiny fleets
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return {p: int(c) for p, c in zip(DEFAULT_FLEET, counts, strict=True) if c > 0}


def parse_fleet(spec: str) -> dict[str, int]:
    """Parse ``"web_api=3,database=2"`` into a fleet composition."""
    fleet: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("=")
        if name not in VALID_PROFILES or not count.isdigit():
            raise UsageError(
                f"Bad fleet entry '{part}'. Expected profile=count with a profile from {VALID_PROFILES}. "
                f"See {SERVER_PROFILES_DOC}."
            )
        fleet[name] = int(count)
    if not fleet or sum(fleet.values()) == 0:
        raise UsageError("The fleet is empty: give at least one profile=count with count > 0.")
    return fleet


def _periodic_points(anchors: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(hours, values) of daily (hour, value) anchor points repeated a day before and after.

    ``np.interp(hours_of_day, *points)`` is then a periodic (24 h) linear interpolation.
    """
    xs = np.array([a[0] for a in anchors], dtype=float)
    ys = np.array([a[1] for a in anchors], dtype=float)
    return np.concatenate([xs - 24.0, xs, xs + 24.0]), np.concatenate([ys, ys, ys])


@dataclass
class FleetChunk:
    """``n`` consecutive buckets for every server: arrays are shaped (n, N)."""

    timestamps: pd.DatetimeIndex
    metrics: dict[str, np.ndarray]
    has_sample: np.ndarray
    state_codes: np.ndarray


@dataclass
class _Clock:
    """Where a chunk sits in time; every array is (T,) for its T buckets."""

    steps: np.ndarray  # global bucket index since the simulator's start
    timestamps: pd.DatetimeIndex  # bucket starts, UTC
    hours: np.ndarray  # hour of day with fraction, UTC
    minutes: np.ndarray  # minute of the hour
    weekend: np.ndarray  # Saturday or Sunday


class FleetSimulator:
    """A fleet of servers that can be advanced bucket by bucket or many buckets at once."""

    def __init__(self, fleet: dict[str, int] | None = None, seed: int = GENERATOR.default_seed,
                 start: str | pd.Timestamp = GENERATOR.default_start) -> None:
        fleet = dict(DEFAULT_FLEET if fleet is None else fleet)
        unknown = set(fleet) - set(VALID_PROFILES)
        if unknown:
            raise UsageError(f"Unknown profiles {sorted(unknown)}; valid: {VALID_PROFILES}. See {SERVER_PROFILES_DOC}.")
        start_ts = parse_utc(start)
        start_bucket = int(bucket_of_ns(start_ts.value))
        if bucket_start(start_bucket) != start_ts:
            raise UsageError(
                f"--start {start} is not on a {SAMPLING_INTERVAL_MINUTES}-minute boundary",
                "every row sits on the 5-minute grid", f"use e.g. {bucket_iso(start_bucket)}",
                f"{DATA_CONTRACT_DOC} (Time grid)")
        self.seed = seed
        self.start = start_ts
        self.start_bucket = start_bucket
        self.fleet = {p: int(fleet[p]) for p in VALID_PROFILES if fleet.get(p, 0) > 0}
        pairs = sorted((make_server_name(p, i + 1), p) for p, c in self.fleet.items() for i in range(c))
        self.server_names = [n for n, _ in pairs]
        self.profiles = np.array([p for _, p in pairs], dtype=object)
        self.n_servers = len(pairs)
        self.step = 0  # global index of the next bucket to generate
        self.incident_rate_scale = 1.0  # demo scenarios turn incidents up or off

        static_rng, event_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
        self._event_rng = np.random.default_rng(event_seq)
        self._noise_rng = np.random.default_rng(noise_seq)
        self._init_static(np.random.default_rng(static_rng))
        self._init_constants()

    # ------------------------------------------------------------------ set-up
    def _init_static(self, rng: np.random.Generator) -> None:
        n = self.n_servers
        behaviours = [PROFILE_BEHAVIOUR[p] for p in self.profiles]
        self._behaviours = behaviours

        def per_server(attr: str) -> np.ndarray:
            return np.array([getattr(b, attr) for b in behaviours], dtype=float)

        for attr in ("cpu_base", "cpu_amplitude", "sys_share", "java_share", "iowait_base", "iowait_amplitude",
                     "mem_base", "mem_amplitude", "net_in_base", "net_in_amplitude", "net_out_base",
                     "net_out_amplitude", "back_close_wait_base", "back_close_wait_amplitude",
                     "front_close_wait_base", "front_close_wait_amplitude", "crash_rate_per_day"):
            setattr(self, f"_{attr}", per_server(attr))
        self._cores = np.array([rng.choice(b.cores) for b in behaviours], dtype=float)
        self._init_heterogeneity(rng)
        self._disk_base = np.array([rng.uniform(*b.disk_base) for b in behaviours])
        self._disk_growth = np.array([rng.uniform(*b.disk_growth_pct_per_day) for b in behaviours])
        self._disk_rotation_phase = rng.integers(0, GENERATOR.disk_rotation_days * STEPS_PER_DAY, n)
        self._swap_base = rng.uniform(*GENERATOR.swap_base_pct, n)
        self._regime_activity = np.array([[b.regime_activity[r] for r in GENERATOR.regimes] for b in behaviours])
        self._burst = np.array([b.hourly_burst for b in behaviours], dtype=float)
        self._backup = np.array([b.backup_window for b in behaviours], dtype=float)
        rates = np.array([[b.incident_rate_per_day[t] for t in GENERATOR.incident_types] for b in behaviours])
        self._incident_hazard = rates.sum(axis=1) / STEPS_PER_DAY
        self._incident_type_cdf = np.cumsum(rates / np.maximum(rates.sum(axis=1, keepdims=True), 1e-12), axis=1)
        # Diurnal curves are per profile; servers index into them.
        self._profile_index = np.array([VALID_PROFILES.index(p) for p in self.profiles])

        # Maintenance: one window every GENERATOR.patch_cycle_days at a server-specific slot.
        cycle = GENERATOR.patch_cycle_days * STEPS_PER_DAY
        day = rng.integers(0, GENERATOR.patch_cycle_days, n)
        hour = rng.uniform(*GENERATOR.maintenance_hours_utc, n)
        start_of_day = self.start_bucket % STEPS_PER_DAY  # buckets since midnight UTC
        self._maint_first = day * STEPS_PER_DAY + np.round(hour * STEPS_PER_HOUR).astype(int) - start_of_day
        self._maint_len = _hours_to_steps(rng.uniform(*GENERATOR.maintenance_window_hours, n))
        self._maint_cycle = cycle
        self._reboot_offset = int(_hours_to_steps(GENERATOR.maintenance_reboot_offset_hours))

        # Dynamic state.
        self._regime = rng.choice(len(GENERATOR.regimes), n,
                                  p=[GENERATOR.regime_initial_shares[r] for r in GENERATOR.regimes]).astype(np.int8)
        self._inc_type = np.full(n, _INC_NONE, dtype=np.int8)
        self._inc_phase = np.zeros(n, dtype=np.int8)
        self._inc_elapsed = np.zeros(n, dtype=np.int64)
        self._inc_ramp = np.ones(n, dtype=np.int64)
        self._inc_crit = np.ones(n, dtype=np.int64)
        self._offline_left = np.zeros(n, dtype=np.int64)
        self._swap_residual = np.zeros(n)
        self._io_residual = np.zeros(n)
        # The last boot was the previous maintenance reboot, so uptime starts below the cycle.
        self._boot_step = self._maint_first - cycle + self._reboot_offset + GENERATOR.maintenance_reboot_steps
        self._noise_state = {f: rng.standard_normal((2, n)) for f in _NOISE_FAMILIES}
        self._mem_smooth = np.zeros(n)  # memory follows activity with a lag
        self._last_disk = self._disk_base.copy()
        self._last_uptime = np.zeros(n)
        self._tracker = StateTracker.for_profiles(self.profiles)

    def _init_heterogeneity(self, rng: np.random.Generator) -> None:
        """Per-server scale factors: servers of one role differ in load, memory and software stack."""
        n = self.n_servers
        scale = {k: np.exp(rng.normal(0.0, s, n)) for k, s in GENERATOR.server_scale_sigma.items()}
        cpu_cap = GENERATOR.server_cpu_peak_max_pct / (self._cpu_base + self._cpu_amplitude)
        self._cpu_scale = np.minimum(scale["cpu"], cpu_cap)
        self._io_scale = scale["iowait"]
        self._net_in_scale, self._net_out_scale = scale["net_in"], scale["net_out"]
        self._back_cw_scale, self._front_cw_scale = scale["back_close_wait"], scale["front_close_wait"]
        mem_peak = self._mem_base + self._mem_amplitude * GENERATOR.mem_activity_max
        self._mem_offset = np.clip(rng.normal(0.0, GENERATOR.server_mem_offset_sd, n),
                                   GENERATOR.server_mem_floor_pct - self._mem_base,
                                   GENERATOR.server_mem_peak_max_pct - mem_peak)
        for attr in ("_sys_share", "_java_share"):
            factor = np.exp(rng.normal(0.0, GENERATOR.server_share_sigma, n))
            setattr(self, attr, np.minimum(getattr(self, attr) * factor, GENERATOR.server_share_max))

    def _init_constants(self) -> None:
        """Arrays that never change after set-up, built once instead of on every ``advance``."""
        # Regime chain: per-step probability of leaving each regime, and the CDF of where it goes.
        self._leave_p = np.array([1.0 / (GENERATOR.regime_mean_dwell_hours[r] * STEPS_PER_HOUR)
                                  for r in GENERATOR.regimes])
        self._dest_cdf = np.array([[sum(GENERATOR.regime_transitions[r].get(d, 0.0) for d in GENERATOR.regimes[: j + 1])
                                    for j in range(len(GENERATOR.regimes))] for r in GENERATOR.regimes])
        self._crash_hazard = self._crash_rate_per_day / STEPS_PER_DAY  # (N,) per step
        self._crash_lo, self._crash_hi = (_hours_to_steps(hours) for hours in GENERATOR.crash_duration_hours)
        # Per incident code: ramp and plateau ranges (hours) and the odds of a reboot after the fix.
        self._ramp_lo = np.array([INCIDENTS[t].ramp_hours[0] for t in GENERATOR.incident_types])
        self._ramp_hi = np.array([INCIDENTS[t].ramp_hours[1] for t in GENERATOR.incident_types])
        self._crit_lo = np.array([INCIDENTS[t].critical_hours[0] for t in GENERATOR.incident_types])
        self._crit_hi = np.array([INCIDENTS[t].critical_hours[1] for t in GENERATOR.incident_types])
        self._reboot_p = np.array([INCIDENTS[t].reboot_probability for t in GENERATOR.incident_types])
        # Per-step decay of the after-effects: I/O wait after saturation, swap after a leak.
        self._io_decay = np.exp(-1.0 / (GENERATOR.io_recovery_hours * STEPS_PER_HOUR))
        self._swap_decay = np.exp(-1.0 / (GENERATOR.swap_drain_hours * STEPS_PER_HOUR))
        # Daily activity curve points per profile (in VALID_PROFILES order): (weekday, weekend).
        self._daily_curves = [(_periodic_points(PROFILE_BEHAVIOUR[p].weekday_curve),
                               _periodic_points(PROFILE_BEHAVIOUR[p].weekend_curve)) for p in VALID_PROFILES]
        self._server_index = np.arange(self.n_servers)
        self._disk_rotation_steps = GENERATOR.disk_rotation_days * STEPS_PER_DAY

    # ------------------------------------------------------------------ demo hooks
    def inject_incident(self, server_name: str, incident_type: str, ramp_hours: float | None = None) -> None:
        """Start an incident on one server now (used by the live demo scenarios)."""
        idx = self.server_names.index(server_name)
        spec = INCIDENTS[incident_type]
        ramp = ramp_hours if ramp_hours is not None else float(np.mean(spec.ramp_hours))
        self._inc_type[idx] = _INC_CODE[incident_type]
        self._inc_phase[idx] = _PHASE_RAMP
        self._inc_elapsed[idx] = 0
        self._inc_ramp[idx] = _hours_to_steps(ramp)
        self._inc_crit[idx] = _hours_to_steps(np.mean(spec.critical_hours))

    def clear_incidents(self) -> None:
        """End every running incident at once (the demo's 'healthy' button)."""
        self._inc_type[:] = _INC_NONE
        self._inc_phase[:] = _PHASE_NONE

    def servers_in_trouble(self) -> list[str]:
        """Servers with an incident building or at its peak."""
        return [self.server_names[i] for i in np.flatnonzero(self._inc_phase != _PHASE_NONE)]

    # ------------------------------------------------------------------ dynamics
    # advance() runs these stages in order; arrays are (T, N): T buckets of this chunk, N servers.
    def advance(self, n_steps: int) -> FleetChunk:
        """Generate the next ``n_steps`` buckets for every server."""
        clock = self._clock(n_steps)
        in_maint, rebooting, booted = self._maintenance_masks(clock.steps)
        # Who is in which regime, incident or outage: a per-step state machine (draws from _event_rng).
        events = self._advance_discrete(n_steps, in_maint, booted)
        noise, java_jitter = self._draw_noise(n_steps)
        # How busy each server is; every continuous metric follows from it ...
        activity = self._activity(clock, events["regime"], noise, in_maint)
        series = self._normal_behaviour(clock, activity, noise)
        # ... then incidents bend the metrics they are about, and CPU is composed to add up to 100.
        self._apply_incidents(series, events)
        metrics = self._contract_metrics(series, noise, java_jitter, clock.steps, events["boot_step"])
        no_sample = events["no_sample"] | rebooting
        metrics = self._apply_offline_vector(metrics, no_sample)
        codes = self._tracker.label(
            cpu_used=cpu_used(metrics["cpu_idle_pct"]), iowait=metrics["cpu_iowait_pct"], mem=metrics["mem_used_pct"],
            swap=metrics["swap_used_pct"], disk=metrics["disk_usage_pct"],
            back_close_wait=metrics["back_close_wait"], front_close_wait=metrics["front_close_wait"],
            has_sample=~no_sample, in_maintenance=in_maint, spike_window=morning_spike_window(clock.timestamps),
        )
        self.step += n_steps
        return FleetChunk(timestamps=clock.timestamps, metrics=metrics, has_sample=~no_sample, state_codes=codes)

    def _clock(self, n_steps: int) -> _Clock:
        """Bucket times of the next ``n_steps`` buckets and the calendar features the rhythm reads."""
        steps = self.step + np.arange(n_steps)  # (T,) global bucket index since self.start
        timestamps = pd.DatetimeIndex(bucket_start(self.start_bucket + steps))
        hours = np.asarray(timestamps.hour + timestamps.minute / 60.0, dtype=float)
        return _Clock(steps=steps, timestamps=timestamps, hours=hours,
                      minutes=np.asarray(timestamps.minute, dtype=float), weekend=np.asarray(timestamps.dayofweek >= 5))

    def _maintenance_masks(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in window, rebooting without samples, reboot finished) masks shaped (T, N)."""
        phase = (steps[:, None] - self._maint_first[None, :]) % self._maint_cycle
        in_window = phase < self._maint_len[None, :]
        rebooting = (phase >= self._reboot_offset) & (phase < self._reboot_offset + GENERATOR.maintenance_reboot_steps)
        booted = phase == self._reboot_offset + GENERATOR.maintenance_reboot_steps
        return in_window, rebooting, booted

    def _advance_discrete(self, n_steps: int, in_maint: np.ndarray, maint_booted: np.ndarray) -> dict[str, np.ndarray]:
        """Run the per-step state machine; returns per-step records shaped (T, N).

        A loop over steps because each step depends on the last (dwell times, incident phases);
        each step is vectorised over servers. All uniforms are drawn up front, one (K, N) block
        per step, so chunking does not change the draws.
        """
        n = self.n_servers
        uniforms = self._event_rng.random((n_steps, _N_UNIFORM, n))  # (T, K, N)
        rec = {
            "regime": np.empty((n_steps, n), dtype=np.int8),
            "inc_type": np.empty((n_steps, n), dtype=np.int8),
            "inc_level": np.zeros((n_steps, n)),  # 0 -> 1 over the ramp, 1 on the plateau
            "swap_level": np.zeros((n_steps, n)),
            "io_level": np.zeros((n_steps, n)),
            "no_sample": np.zeros((n_steps, n), dtype=bool),
            "boot_step": np.empty((n_steps, n), dtype=np.int64),
        }
        for k in range(n_steps):
            u = uniforms[k]
            t = self.step + k
            # Workload regime: leave with a per-step probability, pick the destination by CDF.
            leave = u[_U_REGIME_LEAVE] < self._leave_p[self._regime]
            dest = (u[_U_REGIME_DEST][:, None] > self._dest_cdf[self._regime]).sum(axis=1)
            self._regime = np.where(leave, dest, self._regime).astype(np.int8)

            # Maintenance reboot clears whatever was going on.
            self._boot_step = np.where(maint_booted[k], t, self._boot_step)
            maint = in_maint[k]
            active = self._inc_phase != _PHASE_NONE
            if maint.any():
                self._inc_phase[maint] = _PHASE_NONE
                self._inc_type[maint] = _INC_NONE
                self._offline_left[maint] = 0

            # Unplanned outages.
            online = self._offline_left == 0
            crash = online & ~maint & (u[_U_CRASH] < self._crash_hazard)
            crash_steps = self._crash_lo + (u[_U_CRASH_LEN] * (self._crash_hi - self._crash_lo + 1)).astype(np.int64)
            self._offline_left = np.where(crash, crash_steps, self._offline_left)
            self._inc_phase[crash] = _PHASE_NONE

            # Incidents start on healthy, online servers outside maintenance.
            start = (~active & online & ~maint & ~crash
                     & (u[_U_INC_START] < self._incident_hazard * self.incident_rate_scale))
            if start.any():
                kind = (u[_U_INC_TYPE][:, None]
                        > self._incident_type_cdf).sum(axis=1).clip(0, len(GENERATOR.incident_types) - 1)
                ramp_hours = self._ramp_lo[kind] + u[_U_INC_RAMP] * (self._ramp_hi[kind] - self._ramp_lo[kind])
                crit_hours = self._crit_lo[kind] + u[_U_INC_CRIT] * (self._crit_hi[kind] - self._crit_lo[kind])
                self._inc_type = np.where(start, kind, self._inc_type).astype(np.int8)
                self._inc_phase[start] = _PHASE_RAMP
                self._inc_elapsed[start] = 0
                self._inc_ramp = np.where(start, _hours_to_steps(ramp_hours), self._inc_ramp)
                self._inc_crit = np.where(start, _hours_to_steps(crit_hours), self._inc_crit)

            # Progress running incidents.
            running = self._inc_phase != _PHASE_NONE
            self._inc_elapsed = np.where(running, self._inc_elapsed + 1, self._inc_elapsed)
            ramp_done = (self._inc_phase == _PHASE_RAMP) & (self._inc_elapsed >= self._inc_ramp)
            self._inc_phase[ramp_done] = _PHASE_CRITICAL
            fixed = (self._inc_phase == _PHASE_CRITICAL) & (self._inc_elapsed >= self._inc_ramp + self._inc_crit)
            level = np.where(running, np.minimum(self._inc_elapsed / self._inc_ramp, 1.0), 0.0)
            inc_type = np.where(running, self._inc_type, _INC_NONE)
            if fixed.any():
                typ = np.clip(self._inc_type, 0, None)
                reboot = fixed & (u[_U_INC_REBOOT] < self._reboot_p[typ])
                self._offline_left = np.where(reboot, GENERATOR.maintenance_reboot_steps, self._offline_left)
                self._inc_phase[fixed] = _PHASE_NONE
                self._inc_type[fixed] = _INC_NONE

            # After-effects: I/O wait decays, swap drains slowly after a memory fix.
            io_now = np.where(inc_type == _INC_CODE["io_saturation"], level, 0.0)
            self._io_residual = np.maximum(io_now, self._io_residual * self._io_decay)
            swap_onset = np.clip((level - GENERATOR.swap_onset_leak_level) / (1.0 - GENERATOR.swap_onset_leak_level),
                                 0.0, 1.0)
            swap_target = np.where(inc_type == _INC_CODE["memory_leak"], swap_onset ** GENERATOR.swap_curve_exponent,
                                   0.0)
            self._swap_residual = np.maximum(swap_target, self._swap_residual * self._swap_decay)

            offline = self._offline_left > 0
            self._offline_left = np.where(offline, self._offline_left - 1, 0)
            came_back = offline & (self._offline_left == 0)
            # Back from an outage = freshly booted.
            self._boot_step = np.where(came_back, t + 1, self._boot_step)
            if came_back.any():
                self._io_residual[came_back] = 0.0
                self._swap_residual[came_back] = 0.0

            rec["regime"][k] = self._regime
            rec["inc_type"][k] = np.where(offline, _INC_NONE, inc_type)
            rec["inc_level"][k] = np.where(offline, 0.0, level)
            rec["swap_level"][k] = self._swap_residual
            rec["io_level"][k] = self._io_residual
            rec["no_sample"][k] = offline
            rec["boot_step"][k] = self._boot_step
        return rec

    def _draw_noise(self, n_steps: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """(slow, fast) AR(1) noise per family, each (T, N), and the java-share jitter (T, N).

        One (T, C, N) block of standard normals per call, time-major like the uniforms.
        """
        eps = self._noise_rng.standard_normal((n_steps, _N_NOISE, self.n_servers))
        noise = {f: self._ar_noise(eps[:, 2 * i: 2 * i + 2, :], f) for i, f in enumerate(_NOISE_FAMILIES)}
        return noise, eps[:, -1, :]

    def _ar_noise(self, eps: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray]:
        """Slow and fast AR(1) noise for one family from (T, 2, N) standard normals."""
        spec = NOISE[_NOISE_SPEC_OF.get(family, family)]
        out = []
        for j, (phi, sigma) in enumerate(((spec.slow_phi, spec.slow_sigma), (spec.fast_phi, spec.fast_sigma))):
            prev = self._noise_state[family][j] * sigma  # stationary state in metric units
            y, zf = lfilter([np.sqrt(1.0 - phi ** 2) * sigma], [1.0, -phi], eps[:, j, :], axis=0,
                            zi=(phi * prev)[None, :])
            self._noise_state[family][j] = zf[0] / phi / sigma if phi else y[-1] / sigma
            out.append(y)
        return out[0], out[1]

    def _activity(self, clock: _Clock, regime: np.ndarray, noise: dict[str, tuple[np.ndarray, np.ndarray]],
                  in_maint: np.ndarray) -> np.ndarray:
        """How busy each server is, (T, N) in [0, GENERATOR.activity_max]: profile rhythm x regime + noise."""
        curves = np.empty((len(clock.steps), len(VALID_PROFILES)))  # (T, P): one daily curve per profile
        for j, (weekday, weekend) in enumerate(self._daily_curves):
            curves[:, j] = np.where(clock.weekend, np.interp(clock.hours, *weekend), np.interp(clock.hours, *weekday))
        activity = curves[:, self._profile_index]
        activity = activity + np.where(clock.minutes[:, None] < self._burst[None, :, 1], self._burst[None, :, 0], 0.0)
        regime_mult = self._regime_activity[self._server_index[None, :], regime]
        activity = np.clip(activity * regime_mult + noise["activity"][0] + noise["activity"][1], 0.0,
                           GENERATOR.activity_max)
        return activity * (1.0 - GENERATOR.maintenance_activity_drain * in_maint)  # drained for maintenance

    def _normal_behaviour(self, clock: _Clock, activity: np.ndarray,
                          noise: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Every continuous series of a healthy server, (T, N) each, before rounding and clipping."""
        cpu_busy = (self._cpu_base + self._cpu_amplitude * activity) * self._cpu_scale
        cpu_busy = cpu_busy * (1.0 + noise["cpu"][0] + noise["cpu"][1])
        iowait = (self._iowait_base + self._iowait_amplitude * activity) * self._io_scale
        hours = clock.hours[:, None]
        backup_on = (hours >= self._backup[None, :, 0]) & (hours < self._backup[None, :, 1])
        iowait = iowait + np.where(backup_on, self._backup[None, :, 2], 0.0)
        iowait = iowait * (1.0 + noise["iowait"][0] + noise["iowait"][1])

        # Memory follows activity with a lag (caches fill and drain slowly), carried across chunks.
        mem_target = (self._mem_base + self._mem_amplitude * np.clip(activity, 0.0, GENERATOR.mem_activity_max)
                      + self._mem_offset)
        mem_lag, self._mem_smooth = self._lag(mem_target, GENERATOR.memory_lag_phi, self._mem_smooth)
        mem = mem_lag + noise["mem"][0] + noise["mem"][1]

        since_rotation = (clock.steps[:, None] + self._disk_rotation_phase[None, :]) % self._disk_rotation_steps
        disk = self._disk_base + self._disk_growth * since_rotation / STEPS_PER_DAY

        net_in = (self._net_in_base + self._net_in_amplitude * activity) * self._net_in_scale
        net_in = net_in * np.exp(noise["net_in"][0] + noise["net_in"][1])
        net_out = (self._net_out_base + self._net_out_amplitude * activity) * self._net_out_scale
        net_out = net_out * np.exp(noise["net_out"][0] + noise["net_out"][1])
        back_cw = (self._back_close_wait_base + self._back_close_wait_amplitude * activity) * self._back_cw_scale
        back_cw = back_cw * np.exp(noise["back_cw"][0] + noise["back_cw"][1])
        front_cw = (self._front_close_wait_base + self._front_close_wait_amplitude * activity) * self._front_cw_scale
        front_cw = front_cw * np.exp(noise["front_cw"][0] + noise["front_cw"][1])
        swap = self._swap_base + np.abs(noise["swap"][0] + noise["swap"][1])
        return {"cpu_busy": cpu_busy, "sys_extra": np.zeros_like(cpu_busy), "iowait": iowait, "mem": mem,
                "swap": swap, "disk": disk, "net_in": net_in, "net_out": net_out, "back_cw": back_cw,
                "front_cw": front_cw}

    @staticmethod
    def _apply_incidents(series: dict[str, np.ndarray], events: dict[str, np.ndarray]) -> None:
        """Bend the series of servers in an incident towards its peak, in place.

        ``level`` (T, N) runs 0 -> 1 over the ramp; each incident's curve exponent makes most of
        the change come late, as real leaks and fills do.
        """
        level, kind = events["inc_level"], events["inc_type"]
        shape = {t: level ** GENERATOR.incident_curve_exponent[t]
                 for t in ("memory_leak", "disk_fill", "connection_pileup")}
        mem, swap, disk = series["mem"], series["swap"], series["disk"]
        leak = kind == _INC_CODE["memory_leak"]
        mem = np.where(leak, mem + (INCIDENTS["memory_leak"].peak - mem) * shape["memory_leak"], mem)
        # Swap fills only once memory is nearly full, and drains slowly after the fix (swap_level).
        series["swap"] = (swap + (GENERATOR.swap_peak_pct - swap) * events["swap_level"]
                          * (mem >= GENERATOR.swap_onset_mem_pct))
        series["mem"] = mem
        fill = kind == _INC_CODE["disk_fill"]
        series["disk"] = np.where(fill, disk + (INCIDENTS["disk_fill"].peak - disk) * shape["disk_fill"], disk)
        # I/O saturation decays after the fix (io_level), and blocked threads do less work.
        io_level = events["io_level"] ** GENERATOR.incident_curve_exponent["io_saturation"]
        series["iowait"] = series["iowait"] + (INCIDENTS["io_saturation"].peak - series["iowait"]) * io_level
        series["cpu_busy"] = series["cpu_busy"] * (1.0 - GENERATOR.io_saturation_cpu_drop * io_level)
        pile = kind == _INC_CODE["connection_pileup"]
        pile_peak, pile_shape = INCIDENTS["connection_pileup"].peak, shape["connection_pileup"]
        back_cw, front_cw = series["back_cw"], series["front_cw"]
        series["back_cw"] = np.where(pile, back_cw + (pile_peak - back_cw) * pile_shape, back_cw)
        series["front_cw"] = np.where(pile,
                                      front_cw + (GENERATOR.pileup_front_share * pile_peak - front_cw) * pile_shape,
                                      front_cw)
        series["sys_extra"] = np.where(pile, GENERATOR.pileup_sys_cpu_pct * level, series["sys_extra"])

    def _contract_metrics(self, series: dict[str, np.ndarray], noise: dict[str, tuple[np.ndarray, np.ndarray]],
                          java_jitter: np.ndarray, steps: np.ndarray, boot_step: np.ndarray) -> dict[str, np.ndarray]:
        """The 14 LINBORG metrics, (T, N) each: CPU parts composed to add to 100, rounded, in range."""
        # CPU composition: user + sys + iowait + idle = 100. I/O wait takes its share first;
        # user and sys are squeezed into what is left, idle is the remainder.
        iowait = np.clip(series["iowait"], 0.0, GENERATOR.iowait_max_pct)
        cpu_busy = np.clip(series["cpu_busy"], GENERATOR.cpu_busy_min_pct, 100.0)
        cpu_sys = cpu_busy * self._sys_share + series["sys_extra"]
        cpu_user = cpu_busy - cpu_busy * self._sys_share
        room = np.maximum(100.0 - iowait, 0.0)
        squeeze = np.minimum(1.0, room / np.maximum(cpu_user + cpu_sys, 1e-9))
        cpu_user, cpu_sys = cpu_user * squeeze, cpu_sys * squeeze
        java = (cpu_user + cpu_sys) * np.clip(self._java_share * (1.0 + GENERATOR.java_share_jitter * java_jitter), 0.0,
                                              1.0)
        load = self._cores * ((cpu_user + cpu_sys) / 100.0 + GENERATOR.load_iowait_weight * iowait / 100.0)
        load = load * np.exp(noise["load"][0] + noise["load"][1])
        uptime = np.floor((steps[:, None] - boot_step) / STEPS_PER_DAY)

        r = GENERATOR.float_decimals
        metrics = {
            "cpu_user_pct": np.round(cpu_user, r),
            "cpu_sys_pct": np.round(cpu_sys, r),
            "cpu_iowait_pct": np.round(iowait, r),
            "java_cpu_pct": np.round(java, r),
            "mem_used_pct": np.round(series["mem"], r),
            "swap_used_pct": np.round(series["swap"], r),
            "disk_usage_pct": np.round(series["disk"], r),
            "net_in_mb_s": np.round(series["net_in"], r),
            "net_out_mb_s": np.round(series["net_out"], r),
            "back_close_wait": np.round(series["back_cw"]),
            "front_close_wait": np.round(series["front_cw"]),
            "load_average": np.round(load, r),
            "uptime_days": uptime,
        }
        for name, values in metrics.items():
            low, high = METRIC_RANGES[name]
            metrics[name] = np.clip(values, low, high)
        # Idle is what the rounded parts leave (physics, not "CPU used"), so the four add to 100.
        metrics["cpu_idle_pct"] = np.clip(np.round(
            100.0 - metrics["cpu_user_pct"] - metrics["cpu_sys_pct"] - metrics["cpu_iowait_pct"], r), 0.0, 100.0)
        return {m: metrics[m] for m in LINBORG_METRICS}

    @staticmethod
    def _lag(target: np.ndarray, phi: float, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First-order lag y_t = phi*y_{t-1} + (1-phi)*x_t, continued from ``prev``."""
        prev = np.where(prev == 0.0, target[0], prev)
        y, _ = lfilter([1.0 - phi], [1.0, -phi], target, axis=0, zi=(phi * prev)[None, :])
        return y, y[-1]

    def _apply_offline_vector(self, metrics: dict[str, np.ndarray], no_sample: np.ndarray) -> dict[str, np.ndarray]:
        """The contract's offline vector where no sample arrived (contract.fill_offline).

        Disk and uptime carry the last sampled value; a gap that began in an earlier chunk carries
        that chunk's last values (``carry_in``), so chunking does not change the output.
        """
        carry_in = {"disk_usage_pct": self._last_disk, "uptime_days": self._last_uptime}
        metrics = fill_offline(metrics, ~no_sample, carry_in)
        self._last_disk = metrics["disk_usage_pct"][-1].copy()
        self._last_uptime = metrics["uptime_days"][-1].copy()
        return metrics

    # ------------------------------------------------------------------ output
    def chunk_to_table(self, chunk: FleetChunk, offline_mode: str = GENERATOR.default_offline_mode) -> pa.Table:
        """Arrow table for a chunk, rows ordered by (server_name, timestamp)."""
        n_steps = len(chunk.timestamps)
        n = self.n_servers
        keep = chunk.has_sample.T.reshape(-1) if offline_mode == "sparse" else None

        def col(values: np.ndarray) -> np.ndarray:
            flat = values.T.reshape(-1)
            return flat if keep is None else flat[keep]

        ts = np.tile(chunk.timestamps.as_unit("ns").asi8, n)
        server_idx = np.repeat(np.arange(n, dtype=np.int32), n_steps)
        profile_idx = np.repeat(self._profile_index.astype(np.int32), n_steps)
        if keep is not None:
            ts, server_idx, profile_idx = ts[keep], server_idx[keep], profile_idx[keep]
        columns = {
            "timestamp": pa.array(ts, type=pa.timestamp("ns", tz="UTC")),
            "server_name": pa.DictionaryArray.from_arrays(server_idx, pa.array(self.server_names)),
            "profile": pa.DictionaryArray.from_arrays(profile_idx, pa.array(VALID_PROFILES)),
            "state": pa.DictionaryArray.from_arrays(col(chunk.state_codes).astype(np.int32), pa.array(VALID_STATES)),
        }
        for name in LINBORG_METRICS:
            if name in INTEGER_METRICS:
                columns[name] = pa.array(col(chunk.metrics[name]).astype(np.int32))
            else:
                columns[name] = pa.array(col(chunk.metrics[name]).astype(np.float32))
        return pa.table(columns)

    def records(self, chunk: FleetChunk) -> list[dict[str, object]]:
        """Chunk as a list of JSON-ready LINBORG records (for the live stream)."""
        table = self.chunk_to_table(chunk, offline_mode="sparse")
        frame = table.to_pandas()
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        for column in ("server_name", "profile", "state"):
            frame[column] = frame[column].astype(str)
        for name in FLOAT_METRICS:
            frame[name] = frame[name].astype(float).round(GENERATOR.float_decimals)
        return frame.to_dict(orient="records")


# ---------------------------------------------------------------------- live stream
# The stream must outlive a daemon restart: a failed POST /feed is retried until it is delivered.
STREAM_RETRY = RetryPolicy(attempts=None, base_seconds=GENERATOR.stream_retry_seconds,
                           max_seconds=GENERATOR.stream_retry_seconds)


class DemoStream:
    """Continues a simulated fleet into a running daemon, tick by tick, with scenarios.

    The scenario can be switched at run time through the daemon (the dashboard's demo
    buttons call ``POST /admin/demo-scenario``; the stream reads ``GET /demo-scenario``).
    ``client`` talks to the daemon; its retry policy decides how long a feed is retried
    (``STREAM_RETRY``: until delivered).
    """

    def __init__(self, client: DaemonClient, fleet: dict[str, int], seed: int, scenario: str = "healthy",
                 speed: float = GENERATOR.demo_buckets_per_second, prefill_buckets: int = 0) -> None:
        if scenario not in DEMO_SCENARIOS:
            raise UsageError(f"--scenario must be one of {DEMO_SCENARIOS} (got '{scenario}').")
        # Simulated time starts far enough back that the pre-fill ends at the current bucket.
        now_bucket = int(bucket_of_ns(pd.Timestamp.now(tz="UTC").value))
        self.prefill_buckets = prefill_buckets
        self.sim = FleetSimulator(fleet=fleet, seed=seed, start=bucket_start(now_bucket - prefill_buckets))
        self.client = client
        self.speed = speed
        self.scenario = "healthy"
        self.rng = np.random.default_rng(seed)
        self.apply_scenario(scenario)
        # The daemon holds the scenario (the dashboard switches it there): start it at ours.
        try:
            self.client.set_demo_scenario(scenario, retry=NO_RETRY)
        except DaemonError as exc:
            logger.warning("could not tell the daemon the demo scenario (%s)", exc.summary)

    def apply_scenario(self, scenario: str) -> None:
        """Switch behaviour: healthy fixes everything; the others keep a share of servers in trouble."""
        if scenario == self.scenario and scenario != "healthy":
            return
        if scenario != self.scenario:
            logger.info("demo scenario: %s", scenario)
        self.scenario = scenario
        self.sim.incident_rate_scale = 0.0  # the scenario, not chance, decides who is in trouble
        if scenario == "healthy":
            self.sim.clear_incidents()

    def _keep_trouble(self) -> None:
        wanted = round(GENERATOR.demo_troubled_share[self.scenario] * self.sim.n_servers)
        if wanted and self.scenario != "healthy":
            wanted = max(wanted, 2)
        troubled = set(self.sim.servers_in_trouble())
        candidates = [n for n in self.sim.server_names if n not in troubled]
        for name in self.rng.permutation(candidates)[: max(0, wanted - len(troubled))]:
            profile = self.sim.profiles[self.sim.server_names.index(name)]
            rates = PROFILE_BEHAVIOUR[profile].incident_rate_per_day
            kinds = [k for k in GENERATOR.incident_types if rates[k] > 0]
            kind = str(self.rng.choice(kinds))
            self.sim.inject_incident(str(name), kind, GENERATOR.demo_ramp_hours[self.scenario][kind])

    def _post(self, records: list[dict[str, object]]) -> None:
        """Deliver one batch; transient failures are retried by the client's policy, others raise DaemonError."""
        result = self.client.feed(records)
        if result.rejected:
            logger.warning("the daemon rejected %d of %d streamed records, e.g. %s", len(result.rejected),
                           len(records), result.rejected[0])

    def _poll_scenario(self) -> None:
        """Follow the scenario the daemon holds; a missed poll is skipped (the next tick asks again)."""
        try:
            self.apply_scenario(self.client.demo_scenario(retry=NO_RETRY)["scenario"])
        except (DaemonError, KeyError, TypeError):
            pass

    def prefill(self) -> None:
        """Send enough history at once that forecasts start immediately."""
        buckets, done = self.prefill_buckets, 0
        while done < buckets:
            step = min(GENERATOR.demo_prefill_chunk_buckets, buckets - done)
            self._post(self.sim.records(self.sim.advance(step)))
            done += step
        logger.info("pre-filled %d buckets for %d servers", buckets, self.sim.n_servers)

    def run(self, max_buckets: int | None = None) -> int:
        """Send one bucket every 1/speed seconds until stopped (or ``max_buckets``)."""
        sent = 0
        interval = 1.0 / self.speed
        next_tick = time.monotonic()
        while max_buckets is None or sent < max_buckets:
            self._poll_scenario()
            self._keep_trouble()
            chunk = self.sim.advance(1)
            self._post(self.sim.records(chunk))
            sent += 1
            if sent % STEPS_PER_HOUR == 0:  # once per simulated hour
                logger.info("streamed %d buckets (simulated time %s), scenario %s, in trouble: %s", sent,
                            isoformat_utc(chunk.timestamps[-1]), self.scenario,
                            ", ".join(self.sim.servers_in_trouble()) or "none")
            next_tick += interval
            time.sleep(max(0.0, next_tick - time.monotonic()))
        return sent


def stream_from_args(args: argparse.Namespace) -> int:
    """Run the live demo stream."""
    api_key = resolve_api_key(args.api_key)  # the stream feeds records and polls the demo scenario: ingest, read
    client = DaemonClient(args.daemon_url, api_key, retry=STREAM_RETRY)
    fleet = fleet_from_total(args.servers) if args.servers else parse_fleet(args.fleet) if args.fleet \
        else fleet_from_total(DEMO_SERVERS)
    prefill = args.prefill
    if prefill is None:
        try:  # enough history for the served model to forecast at once
            encoder = int(client.status(retry=NO_RETRY).get("model_encoder_length") or ENCODER_LENGTH)
        except (DaemonError, ValueError, TypeError):
            encoder = ENCODER_LENGTH
        prefill = encoder + GENERATOR.demo_prefill_margin_buckets
    stream = DemoStream(client, fleet, args.seed, args.scenario, args.speed, prefill)
    stream.prefill()
    try:
        stream.run(args.max_buckets)
    except KeyboardInterrupt:
        logger.info("stream stopped")
    return 0


# ---------------------------------------------------------------------- batch generation
def generate_dataset(out_dir: str | Path = TRAINING_DIR, hours: int = GENERATOR.recommended_generate_hours,
                     fleet: dict[str, int] | None = None, seed: int = GENERATOR.default_seed,
                     start: str = GENERATOR.default_start,
                     offline_mode: str = GENERATOR.default_offline_mode, file_format: str = "parquet",
                     chunk_days: int = GENERATOR.chunk_days, progress: bool = True) -> dict[str, object]:
    """Generate a fleet history and write data, metadata and server mapping to ``out_dir``.

    Returns the metadata dictionary (also written as ``metrics_metadata.json``).
    """
    if hours < GENERATOR.min_generate_hours:
        raise UsageError(
            f"--hours {hours} is below the minimum of {GENERATOR.min_generate_hours}",
            "with less than a day of history no daily rhythm can be learned and the 8-hour horizon has nothing to "
            "stand on", f"use --hours {GENERATOR.min_generate_hours} or more ({GENERATOR.recommended_generate_hours} = "
            f"{GENERATOR.recommended_generate_hours // 24} days is recommended)", f"{DATA_CONTRACT_DOC} (Time grid)")
    if offline_mode not in GENERATOR.offline_modes:
        raise UsageError(f"--offline_mode must be one of {GENERATOR.offline_modes} (got '{offline_mode}'). "
                         f"See {DATA_CONTRACT_DOC}.")
    if file_format not in ("parquet", "csv"):
        raise UsageError(f"--format must be parquet or csv (got '{file_format}').")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    sim = FleetSimulator(fleet=fleet, seed=seed, start=start)
    total_steps = int(hours * STEPS_PER_HOUR)
    expected_rows = total_steps * sim.n_servers
    if file_format == "csv" and expected_rows > GENERATOR.csv_max_rows:
        raise UsageError(
            f"CSV is only for small exports (<= {GENERATOR.csv_max_rows:,} rows); this run makes {expected_rows:,}",
            "Parquet is 10-100x faster and keeps types", "drop --format csv", f"{DATA_CONTRACT_DOC} (Files)")
    chunk_steps = max(1, chunk_days * STEPS_PER_DAY)
    state_counts = np.zeros(len(VALID_STATES), dtype=np.int64)
    tables: list[pa.Table] = []
    file_name = TRAINING_DATA_FILE if file_format == "parquet" else TRAINING_DATA_FILE.replace(".parquet", ".csv")
    path = out_dir / file_name
    tmp_path = path.with_name(f".{path.name}.tmp")
    writer = None
    bar = _progress_bar(total_steps, progress, sim.n_servers)
    rows_written = 0
    try:
        done = 0
        while done < total_steps:
            n_steps = min(chunk_steps, total_steps - done)
            chunk = sim.advance(n_steps)
            table = sim.chunk_to_table(chunk, offline_mode)
            kept = chunk.state_codes if offline_mode == "dense" else chunk.state_codes[chunk.has_sample]
            state_counts += np.bincount(kept.reshape(-1), minlength=len(VALID_STATES))
            rows_written += table.num_rows
            if file_format == "parquet":
                if writer is None:
                    writer = pq.ParquetWriter(tmp_path, table.schema, compression=PARQUET_COMPRESSION)
                writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
            else:
                tables.append(table)
            done += n_steps
            bar.update(n_steps)
        if writer is not None:
            writer.close()
            writer = None
            tmp_path.replace(path)
        else:
            frame = pa.concat_tables(tables).to_pandas()
            atomic_write_text(path, frame.to_csv(index=False))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        tmp_path.unlink(missing_ok=True)

    encoder = ServerEncoder()
    encoder.encode_many(sim.server_names)
    encoder.save(out_dir)
    end = bucket_start(sim.start_bucket + total_steps - 1)
    elapsed = time.perf_counter() - began
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "generator_version": PROJECT_VERSION,
        "seed": seed,
        "offline_mode": offline_mode,
        "format": file_format,
        "file": path.name,
        "fleet": sim.fleet,
        "n_servers": sim.n_servers,
        "hours": hours,
        "interval_minutes": SAMPLING_INTERVAL_MINUTES,
        "start": isoformat_utc(sim.start),
        "end": isoformat_utc(end),
        "rows": rows_written,
        "rows_per_profile": ({p: int(c * total_steps) for p, c in sim.fleet.items()}
                             if offline_mode == "dense" else None),
        "state_counts": {s: int(c) for s, c in zip(VALID_STATES, state_counts, strict=True)},
        "state_shares": {s: round(float(c) / max(1, state_counts.sum()), 5)
                         for s, c in zip(VALID_STATES, state_counts, strict=True)},
        "generation_seconds": round(elapsed, 3),
    }
    atomic_write_json(out_dir / METADATA_FILE, metadata)
    logger.info("wrote %s rows for %d servers to %s in %.2fs (%.0f rows/s)", f"{rows_written:,}", sim.n_servers,
                path, elapsed, rows_written / max(elapsed, 1e-9))
    return metadata


class _NullBar:
    def update(self, n: int) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def _progress_bar(total_steps: int, enabled: bool, n_servers: int):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total_steps, unit="bucket", desc=f"generating {n_servers} servers",
                file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------- CLI
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the generator (shared with ``main.py generate``)."""
    parser = parser or argparse.ArgumentParser(
        description="Generate a realistic LINBORG fleet history (Parquet) for training and demos.")
    parser.add_argument("--hours", type=int, default=GENERATOR.recommended_generate_hours,
                        help=f"hours of history (>= {GENERATOR.min_generate_hours}; "
                             f"{GENERATOR.recommended_generate_hours} = "
                             f"{GENERATOR.recommended_generate_hours // 24} days)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--servers", type=int, help="total servers, split over profiles in the default proportions")
    group.add_argument("--fleet", type=str, help="per-profile counts, e.g. web_api=5,database=3,ml_compute=2")
    parser.add_argument("--seed", type=int, default=GENERATOR.default_seed,
                        help="random seed (same seed = identical output)")
    parser.add_argument("--offline_mode", "--offline-mode", choices=GENERATOR.offline_modes,
                        default=GENERATOR.default_offline_mode,
                        help="dense: a row per bucket, offline buckets marked; sparse: buckets without samples omitted")
    parser.add_argument("--out_dir", "--out-dir", type=Path, default=TRAINING_DIR, help="output directory")
    parser.add_argument("--start", default=GENERATOR.default_start,
                        help="first bucket, ISO 8601 UTC on a 5-minute boundary")
    parser.add_argument("--format", dest="file_format", choices=["parquet", "csv"], default="parquet",
                        help=f"parquet (default) or csv (only up to {GENERATOR.csv_max_rows:,} rows)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    live = parser.add_argument_group("live demo stream (--stream)")
    live.add_argument("--stream", action="store_true", help="continue a fleet tick by tick into a running daemon")
    live.add_argument("--daemon-url", default=f"http://{DEFAULT_HOST}:{DAEMON_PORT}")
    live.add_argument("--api-key", default=None, help="default: $TFT_API_KEY / $TFT_API_KEY_FILE")
    live.add_argument("--scenario", choices=DEMO_SCENARIOS, default="healthy")
    live.add_argument("--speed", type=float, default=GENERATOR.demo_buckets_per_second,
                      help="5-minute buckets per second")
    live.add_argument("--prefill", type=int, default=None, help="history buckets sent at start (default: enough "
                                                                  "for the model to forecast at once)")
    live.add_argument("--max-buckets", type=int, default=None, help="stop after this many buckets")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run generation (or the live stream) for parsed arguments; 0 when done; raises otherwise (exit 2 for a bad
    value, 3 for a daemon the stream cannot reach, ``errors.run_cli``)."""
    if args.stream:
        return stream_from_args(args)
    fleet = fleet_from_total(args.servers) if args.servers else parse_fleet(args.fleet) if args.fleet else None
    metadata = generate_dataset(out_dir=args.out_dir, hours=args.hours, fleet=fleet, seed=args.seed,
                                start=args.start, offline_mode=args.offline_mode, file_format=args.file_format,
                                progress=not args.no_progress)
    print(f"Generated {metadata['rows']:,} rows for {metadata['n_servers']} servers "
          f"({metadata['start']} .. {metadata['end']}) in {metadata['generation_seconds']}s -> "
          f"{Path(args.out_dir) / str(metadata['file'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    quiet_library_noise()
    return run_cli(run_from_args, build_arg_parser().parse_args(argv), "generate failed")


if __name__ == "__main__":
    sys.exit(main())
