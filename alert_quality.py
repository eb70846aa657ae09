"""Alert quality: what a breach, a warning and a false alarm are, and the rules an SRE already runs.

One set of definitions (``config.ALERT_QUALITY``), used by the early-warning benchmark
(``bench/bench_early_warning.py``), the trainer's alert-threshold fitting (``alert_fitting.py``)
and the daemon's scoring of its own alerts (``live_alerts.py``):

* a **breach** starts at bucket *t* when a metric is at or above its warning tier at *t* and for
  ``breach_hold_buckets`` buckets in all (the contract's enter time, 10 min), after at least
  ``quiet_buckets`` (an hour) below its elevated tier, so a VM pinned at 100 % is one breach, not one
  per bucket;
* an alert **episode** is a run of buckets with the alert open (hold-down included); it is **true**
  when a breach starts while it is open or at the bucket after it closes, or is confirmed while it is
  open (an alert raised for a breach in progress is right, though it warned nobody), **false** otherwise;
* a breach is **warned** when an episode was open at its start; the **lead** is the breach start minus
  that episode's start; **timely** = a lead of 30 min to 8 h (an alert open for a day is no warning).

Series are (servers, buckets) arrays of one metric in display units (CPU as used %); NaN = no sample
(never part of a breach, never below a tier). Thresholds are per server (profiles have their own tiers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from config import ALERT_HOLD_DOWN_BUCKETS, ALERT_QUALITY, SAMPLING_INTERVAL_MINUTES, STEPS_PER_DAY

Q = ALERT_QUALITY


def _run_all(mask: np.ndarray, length: int) -> np.ndarray:
    """(S, T) -> (S, T): True at t when ``mask`` holds at every one of t-length+1 .. t (False before that)."""
    out = np.zeros_like(mask, dtype=bool)
    if length <= 0:
        return np.ones_like(mask, dtype=bool)
    if mask.shape[1] < length:
        return out
    out[:, length - 1:] = sliding_window_view(mask, length, axis=1).all(axis=2)
    return out


def _run_any(mask: np.ndarray, length: int) -> np.ndarray:
    """(S, T) -> (S, T): True at t when ``mask`` holds at any of t-length+1 .. t."""
    if length <= 1:
        return mask.astype(bool).copy()
    padded = np.concatenate([np.zeros((mask.shape[0], length - 1), dtype=bool), mask.astype(bool)], axis=1)
    return sliding_window_view(padded, length, axis=1).any(axis=2)


def breach_onsets(values: np.ndarray, warning: np.ndarray, elevated: np.ndarray,
                  hold: int = Q.breach_hold_buckets, quiet: int = Q.quiet_buckets) -> np.ndarray:
    """(S, T) bool: True at each breach's first bucket.

    ``warning`` / ``elevated``: (S,) tiers per server (inf: the metric has no such tier for that
    server, so it never breaches). A breach needs its whole hold and whole quiet hour inside the series:
    nothing starts in the first ``quiet`` buckets, and a start in the last ``hold - 1`` buckets is not
    known yet (the daemon confirms it ``hold - 1`` buckets later, :func:`confirmed_onsets`).
    """
    values = np.asarray(values, dtype=float)
    at_tier = values >= np.asarray(warning, dtype=float)[:, None]  # NaN compares False
    below = values < np.asarray(elevated, dtype=float)[:, None]
    held = np.zeros_like(at_tier)
    if values.shape[1] >= hold:
        held[:, : values.shape[1] - hold + 1] = sliding_window_view(at_tier, hold, axis=1).all(axis=2)
    quiet_before = np.zeros_like(below)
    quiet_before[:, quiet:] = _run_all(below, quiet)[:, quiet - 1:-1] if quiet else True
    return held & quiet_before


def confirmed_onsets(values: np.ndarray, warning: np.ndarray, elevated: np.ndarray,
                     hold: int = Q.breach_hold_buckets, quiet: int = Q.quiet_buckets) -> np.ndarray:
    """(S,) bool: a breach whose hold completes at the series' last bucket (started ``hold - 1`` before it).

    ``values`` (S, quiet + hold) are each server's latest buckets: the daemon calls this every cycle.
    """
    onsets = breach_onsets(values, warning, elevated, hold, quiet)
    return onsets[:, values.shape[1] - hold] if values.shape[1] >= hold + quiet else np.zeros(len(values), bool)


def breach_in_progress(values: np.ndarray, tier: np.ndarray, elevated: np.ndarray, hold: int = Q.breach_hold_buckets,
                       quiet: int = Q.quiet_buckets) -> np.ndarray:
    """(S, T) bool: a breach of ``tier`` is in progress, the state the alert policy's "now" alert follows.

    It enters when the tier has been held ``hold`` buckets (as a breach is confirmed) and lasts until the
    metric has been below its elevated tier ``quiet`` buckets in a row: exactly the span before a new
    breach could start, so a value hovering at the tier after a breach is one alert, not one per crossing,
    and a VM pinned at the tier stays one alert. A series shorter than ``hold`` enters on its last value.
    """
    values = np.asarray(values, dtype=float)
    tier = np.asarray(tier, dtype=float)[:, None]
    hold = min(hold, values.shape[1])
    held = _run_all(values >= tier, hold)
    below = values < np.asarray(elevated, dtype=float)[:, None]
    state = np.zeros(values.shape, dtype=bool)
    run = np.zeros(values.shape[0], dtype=np.int64)
    on = np.zeros(values.shape[0], dtype=bool)
    for t in range(values.shape[1]):
        run = np.where(below[:, t], run + 1, 0)
        on = held[:, t] | (on & (run < quiet))
        state[:, t] = on
    return state


def hold_open(raised: np.ndarray, hold_down: int = ALERT_HOLD_DOWN_BUCKETS) -> np.ndarray:
    """(S, T) when an alert raised at ``raised`` buckets is open, as ``alert_lifecycle.AlertTracker`` keeps it:
    it ends only after ``hold_down`` buckets in a row without being raised."""
    return _run_any(raised, hold_down)


def episodes(open_row: np.ndarray) -> list[tuple[int, int]]:
    """One series' alert episodes as [start, end) bucket ranges (end = the first bucket it is closed)."""
    row = np.concatenate([[False], np.asarray(open_row, dtype=bool), [False]])
    edges = np.flatnonzero(row[1:] != row[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass
class RuleScore:
    """One rule's warnings against the breaches, summed over servers (GUIDE section 9's measures)."""

    breaches: int = 0
    warned: int = 0
    timely: int = 0
    leads_minutes: list[float] = field(default_factory=list)  # of the warned breaches
    episodes: int = 0
    false_episodes: int = 0
    server_days: float = 0.0
    alert_buckets: int = 0
    buckets: int = 0

    def add(self, other: RuleScore) -> None:
        """Sum another score into this one."""
        for name in ("breaches", "warned", "timely", "episodes", "false_episodes", "alert_buckets", "buckets"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.server_days += other.server_days
        self.leads_minutes += other.leads_minutes

    def summary(self) -> dict[str, Any]:
        """The measures as a JSON-ready dict (None where undefined: no breach, no episode)."""
        return {
            "breaches": self.breaches,
            "warned": _share(self.warned, self.breaches),
            "timely": _share(self.timely, self.breaches),
            "median_lead_minutes": float(np.median(self.leads_minutes)) if self.leads_minutes else None,
            "episodes": self.episodes,
            "false_episodes": self.false_episodes,
            "false_per_server_day": round(self.false_episodes / self.server_days, 4) if self.server_days else None,
            "precision": _share(self.episodes - self.false_episodes, self.episodes),
            "time_in_alert": _share(self.alert_buckets, self.buckets),
            "server_days": round(self.server_days, 2),
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def score_rule(open_mask: np.ndarray, onsets: np.ndarray, first: int = 0, last: int | None = None,
               timely_minutes: tuple[int, int] = Q.timely_lead_minutes) -> RuleScore:
    """Score alert-open masks (S, T) against breach onsets (S, T) over buckets [first, last).

    Breaches starting in the range count; episodes count when they start in it (an episode open at
    ``first`` counts from there). A bucket whose onset lies past ``last`` cannot make an episode true.
    """
    open_mask = np.asarray(open_mask, dtype=bool)
    last = open_mask.shape[1] if last is None else last
    lo, hi = (m / SAMPLING_INTERVAL_MINUTES for m in timely_minutes)
    confirm = Q.breach_hold_buckets - 1
    score = RuleScore(server_days=open_mask.shape[0] * (last - first) / STEPS_PER_DAY,
                      buckets=open_mask.shape[0] * (last - first),
                      alert_buckets=int(open_mask[:, first:last].sum()))
    for s in range(open_mask.shape[0]):
        runs = [(a, b) for a, b in episodes(open_mask[s]) if b > first and a < last]
        starts = np.flatnonzero(onsets[s, first:last]) + first
        score.breaches += len(starts)
        for a, b in runs:
            score.episodes += 1
            # a breach started while it was open, at the bucket after it closed, or just before it opened
            # (confirmed while it was open: an alert for a breach in progress is a true one, but no warning)
            score.false_episodes += int(not onsets[s, max(a - confirm, 0):min(b + 1, last)].any())
        for t in starts:
            run = next((a for a, b in runs if a <= t < b), None)  # the episode open at the breach's start
            if run is None:
                continue
            lead = int(t - run)
            score.warned += 1
            score.leads_minutes.append(float(lead * SAMPLING_INTERVAL_MINUTES))
            score.timely += int(lo <= lead <= hi)
    return score


# ============================================================================ the rules an SRE already runs
def static_rule(values: np.ndarray, threshold: np.ndarray | float, hold: int = Q.rule_for_buckets) -> np.ndarray:
    """``value >= threshold`` for ``hold`` buckets (Prometheus ``for: 10m``): (S, T) raised."""
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), (values.shape[0],))
    return _run_all(np.asarray(values, dtype=float) >= thr[:, None], hold)


def predict_linear(values: np.ndarray, range_buckets: int, ahead_buckets: int) -> np.ndarray:
    """Prometheus ``predict_linear(x[range], ahead)`` at every bucket: the least-squares line through the
    last ``range_buckets`` samples, evaluated ``ahead_buckets`` after the newest. (S, T); NaN until a full
    range exists or where a sample in it is missing."""
    values = np.asarray(values, dtype=float)
    n = range_buckets
    out = np.full(values.shape, np.nan)
    if values.shape[1] < n:
        return out
    windows = sliding_window_view(values, n, axis=1)  # (S, T-n+1, n)
    x = np.arange(n, dtype=float) - (n - 1)  # the newest sample at x = 0
    xm = x.mean()
    ym = windows.mean(axis=2)
    slope = ((x - xm) * (windows - ym[..., None])).sum(axis=2) / ((x - xm) ** 2).sum()
    out[:, n - 1:] = ym + slope * (ahead_buckets - xm)
    return out


def predict_linear_rule(values: np.ndarray, threshold: np.ndarray, range_buckets: int, ahead_buckets: int,
                        hold: int = Q.rule_for_buckets) -> np.ndarray:
    """``predict_linear(x[range], ahead) >= threshold for: 10m`` (the node-exporter mixin's shape)."""
    projected = predict_linear(values, range_buckets, ahead_buckets)
    return _run_all(projected >= np.asarray(threshold, dtype=float)[:, None], hold)


def seasonal_rule(values: np.ndarray, threshold: np.ndarray, window: int = Q.seasonal_window_buckets,
                  hold: int = Q.rule_for_buckets, lag: int = STEPS_PER_DAY) -> np.ndarray:
    """"It reached the tier (for 10 min) in the same 8 h yesterday": ``max_over_time(x[8h] offset 16h)``
    over the held tier, raised at t when yesterday's t .. t+8h held the tier."""
    held = static_rule(values, threshold, hold).astype(float)
    ahead_yesterday = np.zeros_like(held, dtype=bool)
    reached = _run_any(held.astype(bool), window)  # at b: held somewhere in b-window+1 .. b
    # at t, yesterday's [t - lag, t - lag + window - 1] -> ``reached`` at t - lag + window - 1
    src = np.arange(held.shape[1]) - lag + window - 1
    ok = (src >= 0) & (src < held.shape[1]) & (src < np.arange(held.shape[1]))
    ahead_yesterday[:, ok] = reached[:, src[ok]]
    return ahead_yesterday
