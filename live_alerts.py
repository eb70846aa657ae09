"""The daemon scores its own alerts: did a breach follow, how early was the warning, which breaches came unwarned.

Definitions are ``alert_quality.py``'s (Docs/RISK_SCORING.md, "Measuring alerts"), the same the early-warning
benchmark scores with:

* every cycle, a **breach** is confirmed for a server and metric when its warning tier has held
  ``breach_hold_buckets`` up to the cycle's bucket after an hour below the elevated tier; it is recorded
  (table ``alert_breaches``) with the lead of the risk alert that was open at its first bucket (none: an
  unwarned breach, which counts against recall);
* a risk alert's **episode** runs from its ``starts_at`` through its hold-down (the tracker's ``ends_at`` is the
  first cycle without it; it stays listed open ``ALERT_HOLD_DOWN_BUCKETS - 1`` cycles more, as
  ``alert_quality.hold_open`` counts it); it is judged once it has closed and the bucket after it could still
  have started a breach (``hold`` buckets later): true when a breach of that server and metric started
  while it was open, at the bucket after, or was confirmed while it was open (table ``alert_outcomes``). An
  alert still open is not judged yet.

Figures are over the last ``live_window_days`` (7) of data time, per metric: precision (true / judged
episodes), recall (warned / breaches), timely share (lead 30 min - 8 h), median lead. Suppressed alerts
(maintenance) warn nobody: they do not count as warnings.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from alert_quality import confirmed_onsets
from config import (
    ALERT_HOLD_DOWN_BUCKETS,
    ALERT_QUALITY,
    LINBORG_METRICS,
    RISK_METRICS,
    SAMPLING_INTERVAL_MINUTES,
    STEPS_PER_DAY,
)
from contract import DISPLAY_CPU, cpu_used
from metrics_store import FleetWindows, MetricsStore
from risk_scoring import breach_tiers, tier_threshold

logger = logging.getLogger(__name__)
Q = ALERT_QUALITY

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_breaches (
    server TEXT NOT NULL, metric TEXT NOT NULL, at INTEGER NOT NULL, lead INTEGER,
    PRIMARY KEY (server, metric, at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alert_breaches_by_at ON alert_breaches(at);
CREATE TABLE IF NOT EXISTS alert_outcomes (
    id TEXT NOT NULL, starts_at INTEGER NOT NULL, ends_at INTEGER NOT NULL, metric TEXT NOT NULL,
    true_alarm INTEGER NOT NULL, PRIMARY KEY (id, starts_at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alert_outcomes_by_end ON alert_outcomes(ends_at);
"""


def _display(values: np.ndarray, metric: str) -> np.ndarray:
    """(K, 14) bucket values -> (K,) of one display metric."""
    if metric == DISPLAY_CPU:
        return cpu_used(values[:, LINBORG_METRICS.index("cpu_idle_pct")])
    return values[:, LINBORG_METRICS.index(metric)]


class AlertOutcomes:
    """Breaches confirmed and alert episodes judged, in the store; rolling figures per metric."""

    def __init__(self, store: MetricsStore) -> None:
        self.store = store
        store.execute_script(_SCHEMA)
        self.hold, self.quiet = Q.breach_hold_buckets, Q.quiet_buckets
        self.tail = ALERT_HOLD_DOWN_BUCKETS - 1  # cycles an alert stays open after its ends_at (the hold-down)
        self.window_buckets = Q.live_window_days * STEPS_PER_DAY
        self.breaches_total: dict[tuple[str, bool], int] = {}  # (metric, warned) -> since start
        self.judged_total: dict[tuple[str, bool], int] = {}  # (metric, true alarm) -> since start

    def observe(self, fleet: FleetWindows, origin: int, current: dict[str, dict[str, float]]) -> int:
        """:meth:`confirm` then :meth:`record` (tests and tools; the daemon holds its windows' lock for the first)."""
        return self.record(self.confirm(fleet, origin, current), origin)

    def confirm(self, fleet: FleetWindows, origin: int,
                current: dict[str, dict[str, float]]) -> list[tuple[str, str, int]]:
        """The breaches whose hold completes at ``origin``: (server, metric, first bucket).

        ``current``: server -> display metric -> its value at ``origin`` (the cycle's current values): a
        breach needs the tier held up to now, so only servers at a warning tier are read further (call
        under the windows' lock; no store access).
        """
        rows = []
        need = self.quiet + self.hold
        for server, values in current.items():
            window = fleet.servers.get(server)
            if window is None:
                continue
            hot = [m for m in RISK_METRICS if m in values and values[m] >= tier_threshold(m, window.profile, "warning")]
            if not hot:
                continue
            raw, _, present = window.window(origin, need)
            for metric in hot:
                series = np.where(present, _display(raw, metric), np.nan)[None, :]
                warning, elevated = breach_tiers(metric, [window.profile])
                if confirmed_onsets(series, warning, elevated, self.hold, self.quiet)[0]:
                    rows.append((server, metric, origin - self.hold + 1))
        return rows

    def record(self, rows: list[tuple[str, str, int]], origin: int) -> int:
        """Store confirmed breaches with their leads (one transaction), judge closed episodes; the breaches."""
        leads = [self._lead(server, metric, at) for server, metric, at in rows]
        if rows:
            self.store.execute_many("INSERT OR IGNORE INTO alert_breaches (server, metric, at, lead) VALUES "
                                    "(?, ?, ?, ?)", [(*row, lead) for row, lead in zip(rows, leads, strict=True)])
        for (server, metric, at), lead in zip(rows, leads, strict=True):
            key = (metric, lead is not None)
            self.breaches_total[key] = self.breaches_total.get(key, 0) + 1
            logger.info("breach: %s %s from %s, %s", server, metric, at,
                        f"warned {lead * SAMPLING_INTERVAL_MINUTES} min ahead" if lead is not None else "unwarned")
        self._judge(origin)
        return len(rows)

    def _lead(self, server: str, metric: str, at: int) -> int | None:
        """Buckets between the start of the unsuppressed risk alert open at ``at`` and ``at`` (None: none open)."""
        row = self.store.query("SELECT starts_at FROM alerts WHERE id = ? AND starts_at <= ? AND suppressed = 0 "
                               "AND (ends_at IS NULL OR ends_at + ? > ?) ORDER BY starts_at DESC LIMIT 1",
                               (f"risk:{server}:{metric}", at, self.tail, at))
        return int(at - row[0][0]) if row else None

    def _judge(self, origin: int) -> None:
        """Judge risk episodes whose hold-down ended long enough ago that a breach at the bucket after is known."""
        ripe = origin - self.hold + 1 - self.tail  # ends_at + tail = the first bucket closed
        pending = self.store.query(
            "SELECT a.id, a.starts_at, a.ends_at, a.metric, EXISTS (SELECT 1 FROM alert_breaches b WHERE "
            "b.server = a.server AND b.metric = a.metric AND b.at BETWEEN a.starts_at - ? AND a.ends_at + ?) "
            "FROM alerts a "
            "WHERE a.kind = 'risk' AND a.suppressed = 0 AND a.ends_at IS NOT NULL AND a.ends_at <= ? "
            "AND a.ends_at >= ? AND NOT EXISTS (SELECT 1 FROM alert_outcomes o WHERE o.id = a.id "
            "AND o.starts_at = a.starts_at)", (self.hold - 1, self.tail, ripe, origin - self.window_buckets))
        if not pending:
            return
        self.store.execute_many("INSERT OR IGNORE INTO alert_outcomes (id, starts_at, ends_at, metric, true_alarm) "
                                "VALUES (?, ?, ?, ?, ?)", [tuple(r) for r in pending])
        for *_, metric, true_alarm in pending:
            key = (metric, bool(true_alarm))
            self.judged_total[key] = self.judged_total.get(key, 0) + 1

    def trim(self, newest: int) -> int:
        """Forget breaches and judged episodes older than the window; how many rows."""
        cut = newest - self.window_buckets
        return (self.store.execute_many("DELETE FROM alert_breaches WHERE at < ?", [(cut,)])
                + self.store.execute_many("DELETE FROM alert_outcomes WHERE ends_at < ?", [(cut,)]))

    def summary(self, newest: int | None) -> list[dict[str, Any]]:
        """Per metric, the rolling figures over the window ending at ``newest`` (rows of ``AlertQualityRow``)."""
        if newest is None:
            return []
        since = newest - self.window_buckets
        lo, hi = (m // SAMPLING_INTERVAL_MINUTES for m in Q.timely_lead_minutes)
        breaches: dict[str, list[int | None]] = {}
        for metric, lead in self.store.query("SELECT metric, lead FROM alert_breaches WHERE at >= ?", (since,)):
            breaches.setdefault(metric, []).append(lead)
        judged: dict[str, list[int]] = {}
        for metric, true_alarm in self.store.query("SELECT metric, true_alarm FROM alert_outcomes WHERE ends_at >= ?",
                                                   (since,)):
            judged.setdefault(metric, []).append(int(true_alarm))
        out = []
        for metric in sorted(set(breaches) | set(judged)):
            leads = [lead for lead in breaches.get(metric, []) if lead is not None]
            outcomes = judged.get(metric, [])
            n_breach = len(breaches.get(metric, []))
            out.append({
                "metric": metric, "window": f"{Q.live_window_days}d", "breaches": n_breach, "warned": len(leads),
                "timely": sum(lo <= lead <= hi for lead in leads),
                "median_lead_minutes": float(np.median(leads)) * SAMPLING_INTERVAL_MINUTES if leads else None,
                "episodes": len(outcomes), "false_episodes": len(outcomes) - sum(outcomes),
                "precision": round(sum(outcomes) / len(outcomes), 4) if outcomes else None,
                "recall": round(len(leads) / n_breach, 4) if n_breach else None,
            })
        return out
