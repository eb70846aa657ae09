"""Live accuracy: the daemon finds out whether its forecasts came true, and acts on it.

Each cycle, before forecasting, :meth:`LiveAccuracy.score` takes the forecasts whose target
bucket has just completed (made 30 min, 1 h and 8 h earlier, as stored and served), scores them
against the actuals in the fleet windows with the backtest's code (``scoring.py``) and adds the
terms to hourly bins, fleet-wide and per profile (kept in the store) and per server (in memory,
24 h). Rolling windows (24 h, 7 d) are sums of bins. From the same matured forecasts:

* :class:`BandAdjuster` calibrates the served p10/p90 online, per metric x horizon: adaptive
  conformal inference (Gibbs & Candes, "Adaptive Conformal Inference Under Distribution Shift",
  NeurIPS 2021; the same update as the quantile tracker of Angelopoulos, Candes & Tibshirani,
  "Conformal PID Control for Time Series Prediction", 2023) on the log of a multiplier of each
  half-width: ``log m += gain * (miss share of that side - 0.10)``, bounded, persisted, reset
  for a new model;
* :meth:`LiveAccuracy.drift` raises a ``model_degraded`` warning per metric x horizon when the
  rolling coverage leaves ``DRIFT_COVERAGE_BAND`` or the skill against persistence stays below
  ``DRIFT_SKILL_FLOOR`` for ``DRIFT_SKILL_HOURS``; it clears when the figures recover;
* :class:`live_selection.LiveSelection` flips a server x metric x horizon to serving the last value
  while the model's matured forecasts there lose to it significantly, and back when they win;
* :class:`live_anomaly.AnomalyBoard` ("anomalous now") keeps, from the forecasts that came due at
  the cycle's own origin (30 min and 1 h), how far each actual lies outside its served band.

Only forecasts made by the current model count (the first origin it forecast is remembered),
so a new model starts with fresh figures and an unadjusted band.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from api_models import Alert
from config import (
    ACCURACY,
    ACCURACY_SERVER_WINDOW,
    ACCURACY_WINDOWS_HOURS,
    BAND_ADAPT_MAX_SCALE,
    BAND_ADAPT_MIN_SCALE,
    BAND_ADAPT_TARGET_MISS,
    DRIFT_COVERAGE_BAND,
    DRIFT_MIN_MATURED,
    DRIFT_SKILL_FLOOR,
    DRIFT_SKILL_HOURS,
    DRIFT_WINDOW,
    HORIZONS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    LIVE_SELECTION,
    METRIC_RANGES,
    QRISK_DENOMINATOR_FLOOR,
    RETRAIN_DOC,
    STEPS_PER_HOUR,
)
from contract import DISPLAY_CPU, bucket_iso, cpu_used
from live_anomaly import AnomalyBoard
from live_selection import LiveSelection
from metrics_store import FleetWindows, MetricsStore
from scoring import TERM, TERMS, Matured, score_from_sums, score_terms

logger = logging.getLogger(__name__)

HORIZON_LABELS = list(HORIZONS)
HORIZON_STEP_COUNTS = np.array(list(HORIZONS.values()), dtype=np.float64)
ALL = "all"  # the fleet-wide group
STATE_KEY = "live_accuracy"
# Live bins hold the scoring terms plus: coverage of the model's own (unadjusted) band, and each
# side's misses as the band calibration judges them (live_terms; the update).
LIVE_TERMS = (*TERMS, "covered_unadjusted", "below_judged", "above_judged")
LIVE = {name: i for i, name in enumerate(LIVE_TERMS)}


def bands_of(blobs: list[bytes], n_metrics: int) -> np.ndarray:
    """Stored forecast blobs -> bands (N, metrics, horizons, 3) as served."""
    size = n_metrics * len(HORIZONS) * 3
    flat = np.frombuffer(b"".join(blobs), dtype=np.float32)
    if flat.size != size * len(blobs):
        raise ValueError(f"stored forecasts do not fit {n_metrics} metrics x {len(HORIZONS)} horizons x 3 quantiles")
    return flat.reshape(len(blobs), n_metrics, len(HORIZONS), 3)


def scales_blob(scales: np.ndarray) -> bytes:
    """The band multipliers (metrics, horizons, 2) of one cycle as the store keeps them (float32)."""
    return scales.astype(np.float32).tobytes()


def display_range(metric: str) -> tuple[float, float]:
    """The contract's range of a display metric (CPU used shares CPU idle's 0-100)."""
    low, high = METRIC_RANGES["cpu_idle_pct" if metric == DISPLAY_CPU else metric]
    return float(low), float(high) if high is not None else float("inf")


def display_values(values: np.ndarray, metrics: list[str]) -> np.ndarray:
    """(N, 14) LINBORG bucket values -> (N, metrics) in display units (CPU as used)."""
    columns = [cpu_used(values[:, LINBORG_METRICS.index("cpu_idle_pct")]) if m == DISPLAY_CPU
               else values[:, LINBORG_METRICS.index(m)] for m in metrics]
    return np.stack(columns, axis=1).astype(np.float64)


def live_terms(actual: np.ndarray, persistence: np.ndarray, bands: np.ndarray, issued: np.ndarray,
               now: np.ndarray, metrics: list[str]) -> np.ndarray:
    """Matured forecasts of one horizon -> live terms (N, metrics, LIVE_TERMS).

    ``actual``/``persistence`` (N, metrics); ``bands`` (N, metrics, 3) as served; ``issued``
    (N, metrics, 2) the multipliers they were served with; ``now`` (metrics, 2) today's.
    The update's misses are judged against the band as served, unless today's multiplier has
    moved more than ``ACCURACY.band_adapt_served_tolerance`` (log units) from the issued one: then against
    the model's band widened by today's (so feedback arriving 8 h late does not push the band
    past where it already went). Judged against today's band alone, the served band's misses
    drift from the target: an actual sitting exactly at the bottom of its range (an idle VM's
    0 MB/s) under a p10 a hair above it counts as covered whenever today's multiplier is a
    fraction higher than the issued one, and as missed when served.
    ``metrics`` (display names) give each metric's range: a served p10 (p90) at the bottom (top)
    of its range was clipped there, so the model's width on that side cannot be read back from
    it; such a side is counted as not missed (nothing lies beyond the range).
    """
    q = bands.astype(np.float64)
    base = score_terms(actual, q[..., 0], q[..., 1], q[..., 2], persistence)
    # The model's own half-widths (the served ones divided by the multiplier they were made with) ...
    low_width = (q[..., 1] - q[..., 0]) / np.maximum(issued[..., 0], 1e-9)
    high_width = (q[..., 2] - q[..., 1]) / np.maximum(issued[..., 1], 1e-9)
    kept = base[..., TERM["n"]] > 0
    y = np.where(kept, actual, 0.0)
    moved = (np.abs(np.log(np.maximum(now, 1e-9)) - np.log(np.maximum(issued, 1e-9)))
             > ACCURACY.band_adapt_served_tolerance)
    judged = np.where(moved, now, issued)  # (N, metrics, 2)
    edges = np.array([display_range(m) for m in metrics])  # (metrics, 2)
    # A side clipped at its range's edge was not missed; an actual at the edge itself (0 MB/s) under a
    # p10 a hair above it gets the served verdict.
    below = (y < q[..., 1] - judged[..., 0] * low_width) & (q[..., 0] > edges[:, 0])
    above = (y > q[..., 1] + judged[..., 1] * high_width) & (q[..., 2] < edges[:, 1])
    below = np.where(y <= edges[:, 0], y < q[..., 0], below)
    above = np.where(y >= edges[:, 1], y > q[..., 2], above)
    extra = np.stack([  # ... as the model made them, and as judged for the update
        (y >= q[..., 1] - low_width) & (y <= q[..., 1] + high_width), below, above,
    ], axis=-1) & kept[..., None]
    return np.concatenate([base, extra.astype(np.float64)], axis=-1)


# ============================================================================ band calibration
class BandAdjuster:
    """Online band calibration: one bounded multiplier per metric x horizon x side (low, high)."""

    def __init__(self, metrics: list[str], gain: float = ACCURACY.band_adapt_gain, enabled: bool = True) -> None:
        self.metrics = list(metrics)
        self.gain = gain
        self.enabled = enabled
        self.log_scale = np.zeros((len(metrics), len(HORIZONS), 2))
        self.updates = 0
        self._bounds = (np.log(BAND_ADAPT_MIN_SCALE), np.log(BAND_ADAPT_MAX_SCALE))

    @property
    def scales(self) -> np.ndarray:
        """(metrics, horizons, 2) multipliers of the low and high half-widths."""
        return np.exp(self.log_scale)

    def update(self, sums: np.ndarray) -> None:
        """One step from a cycle's matured forecasts: summed live terms (metrics, horizons, LIVE_TERMS).

        Per side: ``log m += gain * n * (miss share - target)``, i.e. one ACI step per matured
        forecast, the cycle's total capped at ``ACCURACY.band_adapt_max_step``.
        """
        if not self.enabled:
            return
        n = sums[..., LIVE["n"]]
        if not (n > 0).any():
            return
        misses = np.stack([sums[..., LIVE["below_judged"]], sums[..., LIVE["above_judged"]]], axis=-1)
        step = self.gain * (misses - BAND_ADAPT_TARGET_MISS * n[..., None])
        step = np.clip(step, -ACCURACY.band_adapt_max_step, ACCURACY.band_adapt_max_step)
        self.log_scale = np.clip(self.log_scale + step, *self._bounds)
        self.updates += 1

    def step_scales(self, steps: int) -> np.ndarray:
        """(metrics, steps, 2) multipliers for decoder steps 1..steps, interpolated between horizons."""
        at = np.arange(1, steps + 1, dtype=np.float64)
        out = np.empty((len(self.metrics), steps, 2))
        for i in range(len(self.metrics)):
            for side in range(2):
                out[i, :, side] = np.exp(np.interp(at, HORIZON_STEP_COUNTS, self.log_scale[i, :, side]))
        return out

    def apply(self, fan: dict[str, dict[str, np.ndarray]]) -> None:
        """Widen or narrow each (S, D) band around its p50, in place, within the metric's range."""
        if not self.enabled or not np.any(self.log_scale):
            return
        first = next(iter(fan.values()))["p50"]
        scales = self.step_scales(first.shape[1])
        for i, metric in enumerate(self.metrics):
            band = fan.get(metric)
            if band is None:
                continue
            low, high = display_range(metric)
            p50 = band["p50"]
            p10 = np.clip(p50 - scales[i, :, 0] * (p50 - band["p10"]), low, high)
            p90 = np.clip(p50 + scales[i, :, 1] * (band["p90"] - p50), low, high)
            if metric in INTEGER_METRICS:
                p10, p90 = np.floor(p10), np.ceil(p90)
            band["p10"], band["p90"] = p10, p90

    def state(self) -> dict[str, Any]:
        """What the store keeps."""
        return {"log_scale": np.round(self.log_scale, 6).tolist(), "updates": self.updates}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a stored state (shape-checked; a mismatch leaves the band unadjusted)."""
        array = np.asarray(state.get("log_scale", []), dtype=np.float64)
        if array.shape == self.log_scale.shape:
            self.log_scale = np.clip(array, *self._bounds)
            self.updates = int(state.get("updates", 0))


# ============================================================================ live accuracy
class LiveAccuracy:
    """Scores matured forecasts, keeps rolling figures, calibrates bands and watches for drift."""

    def __init__(self, store: MetricsStore, metrics: list[str], model_version: str,
                 band_adaptation: bool = True, known: Iterable[str] = (),
                 live_selection: bool = LIVE_SELECTION.enabled) -> None:
        self.store = store
        self.metrics = list(metrics)
        self.model_version = model_version
        self.adjuster = BandAdjuster(self.metrics, enabled=band_adaptation)
        # per server x metric x horizon: the model or the last value (live_selection.py); ``known``: the
        # servers the model was trained on (they start on the model, any other on the last value)
        self.selection = LiveSelection(self.metrics, known, enabled=live_selection)
        self.since_origin: int | None = None  # first origin the current model forecast
        self.last_target: int | None = None  # newest target bucket scored
        self.bins: dict[tuple[int, str], np.ndarray] = {}  # (hour, group) -> (metrics, horizons, TERMS)
        self.server_bins: dict[int, dict[str, np.ndarray]] = defaultdict(dict)  # hour -> server -> sums
        self.server_profiles: dict[str, str] = {}
        self.skill_below_since: dict[str, int] = {}  # "metric|horizon" -> first target bucket below the floor
        self.degraded: dict[str, Alert] = {}
        self.scored_total = 0
        self.skipped_total = 0  # matured targets not scored (a gap longer than the catch-up)
        # Only servers whose history the daemon has held this long are scored and calibrate the shared bands
        # (the daemon sets it from --established-hours): freshly invented names cannot steer the bands.
        self.established_buckets = 0
        self.unestablished_total = 0  # matured forecasts left out for that reason
        self._fresh = True  # a new model: the stored bins are someone else's
        self.anomalies = AnomalyBoard(self.metrics)  # "anomalous now": the latest origin's scores (live_anomaly.py)
        # The cycle thread writes the bins while request threads read them (/accuracy, /status, /alerts).
        self.lock = threading.RLock()
        self._restore()

    # ------------------------------------------------------------------ persistence
    def _restore(self) -> None:
        raw = self.store.read_state(STATE_KEY)
        state = json.loads(raw) if raw else {}
        if state.get("model_version") != self.model_version or state.get("metrics") != self.metrics:
            if state:
                logger.info("live accuracy starts afresh for model %s (the store's figures were for %s)",
                            self.model_version, state.get("model_version"))
            return
        self._fresh = False
        self.since_origin = state.get("since_origin")
        self.last_target = state.get("last_target")
        self.skill_below_since = {k: int(v) for k, v in state.get("skill_below_since", {}).items()}
        self.scored_total = int(state.get("scored_total", 0))
        self.adjuster.restore(state.get("band", {}))
        shape = (len(self.metrics), len(HORIZONS), len(LIVE_TERMS))
        for hour, group, payload in self.store.load_accuracy_bins():
            array = np.asarray(json.loads(payload), dtype=np.float64)
            if array.shape == shape:
                self.bins[(int(hour), group)] = array
        scales = self.adjuster.scales
        logger.info("live accuracy restored for model %s: %d hourly bins, band multipliers %.2f-%.2f",
                    self.model_version, len(self.bins), float(scales.min()), float(scales.max()))

    def _save(self, touched: Iterable[tuple[int, str]], newest_hour: int) -> None:
        state = {"model_version": self.model_version, "metrics": self.metrics, "since_origin": self.since_origin,
                 "last_target": self.last_target, "skill_below_since": self.skill_below_since,
                 "scored_total": self.scored_total, "band": self.adjuster.state()}
        oldest = newest_hour - max(ACCURACY_WINDOWS_HOURS.values()) + 1
        bins = {key: json.dumps(np.round(self.bins[key], 6).tolist()) for key in touched if key in self.bins}
        self.store.save_accuracy({STATE_KEY: json.dumps(state)}, bins, drop_before_hour=oldest, clear=self._fresh)
        self._fresh = False

    # ------------------------------------------------------------------ scoring
    def collect(self, fleet: FleetWindows, origin: int) -> list[Matured]:
        """The forecasts whose target bucket is complete at ``origin`` and not yet scored (call under the lock)."""
        if self.since_origin is None:
            self.since_origin = origin  # this model's first forecast is made now
        first = origin if self.last_target is None else self.last_target + 1
        if origin - first >= ACCURACY.catch_up_buckets:
            self.skipped_total += origin - ACCURACY.catch_up_buckets + 1 - first
            first = origin - ACCURACY.catch_up_buckets + 1
        out = []
        for target in range(first, origin + 1):
            for k, steps in enumerate(HORIZONS.values()):
                made = target - steps
                if made < self.since_origin:
                    continue
                matured = self._matured(fleet, target, made, k)
                if matured is not None:
                    out.append(matured)
        if first <= origin:  # this origin's forecasts came due now (not on an earlier try of this cycle)
            self.anomalies.publish(origin, out)
        self.last_target = max(origin, self.last_target or origin)
        return out

    def _matured(self, fleet: FleetWindows, target: int, made: int, k: int) -> Matured | None:
        names, profiles, actual, persistence, blobs = [], [], [], [], []
        for server, blob in self.store.forecasts_at(made):
            window = fleet.servers.get(server)
            if window is None:
                continue
            now, then = window.current(target), window.current(made)
            if now is None or then is None:  # no sample in the target bucket (offline) or at the origin
                continue
            if made - (window.first_bucket if window.first_bucket is not None else made) < self.established_buckets:
                self.unestablished_total += 1
                continue
            names.append(server)
            profiles.append(window.profile)
            actual.append(now)
            persistence.append(then)
            blobs.append(blob)
        if not names:
            return None
        try:
            bands = bands_of(blobs, len(self.metrics))
        except ValueError:
            return None  # made by a model with other targets (cannot happen after since_origin; defensive)
        stored = self.store.scales_at(made)  # None: made before 0.10.0 or without calibration (multiplier 1)
        issued = np.ones((len(self.metrics), 2)) if stored is None else \
            np.frombuffer(stored, dtype=np.float32).reshape(len(self.metrics), len(HORIZONS), 2)[:, k, :]
        actual_now = display_values(np.stack(actual), self.metrics)
        terms = live_terms(actual_now, display_values(np.stack(persistence), self.metrics), bands[:, :, k, :],
                           np.broadcast_to(issued, (len(names), len(self.metrics), 2)), self.adjuster.scales[:, k, :],
                           self.metrics)
        return Matured(target=target, horizon=k, servers=names, profiles=profiles, terms=terms, actual=actual_now,
                       bands=bands[:, :, k, :])

    def record(self, matured: list[Matured]) -> int:
        """Add a cycle's matured forecasts to the bins, step the band calibration, persist; the count."""
        if not matured:
            return 0
        with self.lock:
            return self._record(matured)

    def _record(self, matured: list[Matured]) -> int:
        cycle = np.zeros((len(self.metrics), len(HORIZONS), len(LIVE_TERMS)))
        touched: set[tuple[int, str]] = set()
        for m in matured:
            hour = m.target // STEPS_PER_HOUR
            total = m.terms.sum(axis=0)
            cycle[:, m.horizon] += total
            groups = {ALL: total}
            profiles = np.array(m.profiles)
            for profile in np.unique(profiles):
                groups[str(profile)] = m.terms[profiles == profile].sum(axis=0)
            for group, sums in groups.items():
                key = (hour, group)
                if key not in self.bins:
                    self.bins[key] = np.zeros_like(cycle)
                self.bins[key][:, m.horizon] += sums
                touched.add(key)
            per_server = self.server_bins[hour]
            for i, server in enumerate(m.servers):
                if server not in per_server:
                    per_server[server] = np.zeros_like(cycle)
                per_server[server][:, m.horizon] += m.terms[i]
                self.server_profiles[server] = m.profiles[i]
        self.adjuster.update(cycle)
        count = int(cycle[:, :, LIVE["n"]].sum() / max(1, len(self.metrics)))
        self.scored_total += count
        newest = max(m.target for m in matured)
        self.last_target = newest if self.last_target is None else max(self.last_target, newest)
        newest_hour = newest // STEPS_PER_HOUR
        self._prune(newest_hour)
        self._save(touched, newest_hour)
        fleet = {hour: sums for (hour, group), sums in self.bins.items() if group == ALL}
        try:  # advisory: a failure here must not lose the cycle's scores or the drift check
            self.selection.update(self.server_bins, newest_hour, {s for m in matured for s in m.servers}, fleet)
        except Exception:  # noqa: BLE001 - logged with its traceback; the series keep their last choice
            logger.exception("live selection could not judge the servers at %s", bucket_iso(newest))
        return count

    def score(self, fleet: FleetWindows, origin: int) -> int:
        """``collect`` + ``record`` in one call (tests and tools; the daemon splits them around its lock)."""
        return self.record(self.collect(fleet, origin))

    def _prune(self, newest_hour: int) -> None:
        oldest = newest_hour - max(ACCURACY_WINDOWS_HOURS.values()) + 1
        for key in [key for key in self.bins if key[0] < oldest]:
            del self.bins[key]
        oldest_server = newest_hour - ACCURACY_WINDOWS_HOURS[ACCURACY_SERVER_WINDOW] + 1
        for hour in [hour for hour in self.server_bins if hour < oldest_server]:
            del self.server_bins[hour]

    # ------------------------------------------------------------------ reports
    @property
    def newest_hour(self) -> int | None:
        """The hour of the newest scored target bucket."""
        return None if self.last_target is None else self.last_target // STEPS_PER_HOUR

    def window_sums(self, window: str, group: str = ALL) -> np.ndarray:
        """Summed live terms (metrics, horizons, LIVE_TERMS) of one group over a rolling window."""
        with self.lock:
            return self._window_sums(window, group)

    def _window_sums(self, window: str, group: str) -> np.ndarray:
        total = np.zeros((len(self.metrics), len(HORIZONS), len(LIVE_TERMS)))
        newest = self.newest_hour
        if newest is None:
            return total
        first = newest - ACCURACY_WINDOWS_HOURS[window] + 1
        if group in self.server_profiles:  # a server: the in-memory bins
            for hour, servers in self.server_bins.items():
                if hour >= first and group in servers:
                    total += servers[group]
            return total
        for (hour, g), sums in self.bins.items():
            if g == group and hour >= first:
                total += sums
        return total

    def groups(self) -> list[str]:
        """"all" and every profile seen in the bins."""
        with self.lock:
            return [ALL, *sorted({g for _, g in self.bins} - {ALL})]

    def active_degraded(self) -> list[Alert]:
        """The ``model_degraded`` warnings active now."""
        with self.lock:
            return list(self.degraded.values())

    def rows(self, window: str, group: str = ALL) -> list[dict[str, Any]]:
        """Figures per metric x horizon for one group and window (NaN as None)."""
        sums = self.window_sums(window, group)
        scales = self.adjuster.scales
        out = []
        for i, metric in enumerate(self.metrics):
            for k, label in enumerate(HORIZON_LABELS):
                figures = score_from_sums(sums[i, k, :len(TERMS)], QRISK_DENOMINATOR_FLOOR.get(metric, 0.0))
                n = sums[i, k, LIVE["n"]]
                row = {"window": window, "group": group, "metric": metric, "horizon": label,
                       **{key: _finite(value) for key, value in figures.items() if key != "denominator_floored"},
                       "coverage_unadjusted": _finite(float(sums[i, k, LIVE["covered_unadjusted"]] / n)) if n else None,
                       "band_scale_low": round(float(scales[i, k, 0]), 4),
                       "band_scale_high": round(float(scales[i, k, 1]), 4)}
                out.append(row)
        return out

    def worst_servers(self, count: int = ACCURACY.worst_servers) -> list[dict[str, Any]]:
        """Per metric x horizon, the servers with the lowest skill against persistence over 24 h."""
        out = []
        candidates = []
        with self.lock:
            servers = list(self.server_profiles)
        for server in servers:
            sums = self.window_sums(ACCURACY_SERVER_WINDOW, server)
            for i, metric in enumerate(self.metrics):
                for k, label in enumerate(HORIZON_LABELS):
                    if sums[i, k, LIVE["n"]] < 1:
                        continue
                    figures = score_from_sums(sums[i, k, :len(TERMS)], QRISK_DENOMINATOR_FLOOR.get(metric, 0.0))
                    candidates.append((metric, label, server, figures))
        by_pair: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for metric, label, server, figures in candidates:
            by_pair[(metric, label)].append((server, figures))
        for (metric, label), entries in by_pair.items():
            entries.sort(key=lambda e: (np.nan_to_num(e[1]["skill_vs_persistence"], nan=np.inf), e[0]))
            for server, figures in entries[:count]:
                out.append({"server_name": server, "profile": self.server_profiles[server], "metric": metric,
                            "horizon": label, "n": figures["n"], "qrisk_50": _finite(figures["qrisk_50"]),
                            "coverage_p10_p90": _finite(figures["coverage_p10_p90"]),
                            "skill_vs_persistence": _finite(figures["skill_vs_persistence"])})
        return out

    def band_summary(self) -> dict[str, dict[str, list[float]]]:
        """metric -> horizon -> [low, high] band multipliers."""
        scales = self.adjuster.scales
        return {m: {label: [round(float(scales[i, k, 0]), 3), round(float(scales[i, k, 1]), 3)]
                    for k, label in enumerate(HORIZON_LABELS)} for i, m in enumerate(self.metrics)}

    def summary(self) -> dict[str, Any]:
        """/status: per horizon, the mean coverage and skill over the metrics (24 h), plus counts."""
        per_horizon: dict[str, dict[str, Any]] = {}
        rows = self.rows(DRIFT_WINDOW)
        for label in HORIZON_LABELS:
            picked = [r for r in rows if r["horizon"] == label and r["n"]]
            coverage = [r["coverage_p10_p90"] for r in picked if r["coverage_p10_p90"] is not None]
            skill = [r["skill_vs_persistence"] for r in picked if r["skill_vs_persistence"] is not None]
            per_horizon[label] = {"matured": max((r["n"] for r in picked), default=0),
                                  "mean_coverage_p10_p90": round(float(np.mean(coverage)), 4) if coverage else None,
                                  "mean_skill_vs_persistence": round(float(np.mean(skill)), 4) if skill else None}
        return {"window": DRIFT_WINDOW, "per_horizon": per_horizon, "scored_total": self.scored_total,
                "model_degraded": len(self.degraded),
                "scored_since": bucket_iso(self.since_origin) if self.since_origin is not None else None}

    # ------------------------------------------------------------------ drift
    def drift(self) -> list[Alert]:
        """Re-evaluate the ``model_degraded`` warnings (after ``record``); the active ones."""
        with self.lock:
            return self._drift()

    def _drift(self) -> list[Alert]:
        if self.last_target is None:
            return []
        low, high = DRIFT_COVERAGE_BAND
        for row in self.rows(DRIFT_WINDOW):
            key = f"{row['metric']}|{row['horizon']}"
            coverage, skill, n = row["coverage_p10_p90"], row["skill_vs_persistence"], row["n"]
            reason = None
            if skill is not None and skill < DRIFT_SKILL_FLOOR:
                self.skill_below_since.setdefault(key, self.last_target)
            else:
                self.skill_below_since.pop(key, None)
            below_for = (self.last_target - self.skill_below_since[key]) / STEPS_PER_HOUR \
                if key in self.skill_below_since else 0.0
            if n < DRIFT_MIN_MATURED:
                pass
            elif coverage is not None and not low <= coverage <= high:
                side = "too narrow: actuals fall outside p10-p90 too often" if coverage < low else \
                    "too wide: the band says less than it could"
                reason = (f"p10-p90 coverage of {row['metric']} at {row['horizon']} is {coverage:.2f} over the last "
                          f"{DRIFT_WINDOW} ({n} matured forecasts), outside {low:.2f}-{high:.2f} ({side}), with the "
                          f"band already scaled x{row['band_scale_low']:.2f} / x{row['band_scale_high']:.2f}")
                value, threshold = coverage, low if coverage < low else high
            elif below_for >= DRIFT_SKILL_HOURS and (row["qrisk_50"] or 0.0) >= ACCURACY.drift_skill_min_qrisk:
                reason = (f"{row['metric']} at {row['horizon']} has been worse than 'the last value' (skill "
                          f"{skill:+.2f} against persistence over the last {DRIFT_WINDOW}) for {below_for:.1f} h")
                value, threshold = skill, DRIFT_SKILL_FLOOR
            if reason is None:
                if self.degraded.pop(key, None) is not None:
                    logger.info("model_degraded cleared: %s at %s recovered", row["metric"], row["horizon"])
                continue
            if key not in self.degraded:
                logger.warning("model_degraded: %s", reason)
            self.degraded[key] = Alert(
                server_name="fleet", profile=ALL, level="warning", metric=row["metric"], horizon=row["horizon"],
                predicted_value=round(float(value), 4), threshold=float(threshold), p50=None,
                minutes_to_breach=None, kind="model_degraded",
                reason=f"{reason}. Suggested: check the fleet for a change (new workload, new hosts), then retrain "
                       f"on recent data (python main.py retrain) and read its promotion report; see {RETRAIN_DOC} "
                       f"(The model_degraded warning).")
        return list(self.degraded.values())


def _finite(value: Any) -> Any:
    """NaN/inf -> None; floats rounded to 4 decimals for the API."""
    if isinstance(value, float):
        return round(value, 4) if np.isfinite(value) else None
    return value
