"""Alerts with a life: an identity, a start, an end, a hold-down against flapping, maintenance.

Each cycle produces the alerts that hold *now* (risk alerts per server and metric, and the
model's own ``model_degraded`` warnings). :class:`AlertTracker` turns that stream into alerts an
on-call engineer can follow:

* identity: ``kind:server:metric`` (a level or horizon change is the same alert, updated);
* ``starts_at``: the forecast origin (data time) of the first cycle that raised it;
* ``ends_at``: the origin of the first cycle without it, set once it has stayed away for
  ``ALERT_HOLD_DOWN_BUCKETS`` buckets in a row; if it comes back before that, it never ended
  (a value hovering around a threshold does not re-open it every cycle);
* an alert about a server whose current bucket is in ``maintenance`` is *suppressed*: kept and
  listed as such (with the reason), but not among the firing ones.

Alerts are kept in the store (table ``alerts``): a restart finds its open alerts again instead of
re-opening them, and ``GET /alerts/history`` reads the resolved ones (``ALERT_HISTORY_DAYS``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from api_models import Alert
from config import ALERT_HISTORY_DAYS, ALERT_HOLD_DOWN_BUCKETS, ALERT_LIFECYCLE, STEPS_PER_DAY
from contract import bucket_iso
from metrics_store import MetricsStore

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT NOT NULL, starts_at INTEGER NOT NULL, ends_at INTEGER, kind TEXT NOT NULL, server TEXT NOT NULL,
    metric TEXT NOT NULL, level TEXT NOT NULL, suppressed INTEGER NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (id, starts_at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_by_end ON alerts(ends_at);
"""


def alert_id(alert: Alert) -> str:
    """The alert's identity: kind, server and metric."""
    return f"{alert.kind}:{alert.server_name}:{alert.metric}"


@dataclass
class Tracked:
    """One open alert."""

    alert: Alert  # the latest values, with id / starts_at / suppression filled in
    starts_at: int  # bucket
    absent_since: int | None = None  # first bucket without it (hold-down running), else None


class AlertTracker:
    """Open, update, hold down, resolve and remember alerts; thread-safe for readers."""

    def __init__(self, store: MetricsStore, hold_down: int = ALERT_HOLD_DOWN_BUCKETS) -> None:
        self.store = store
        self.hold_down = hold_down
        self.lock = threading.RLock()
        self.open: dict[str, Tracked] = {}
        self.opened_total = 0
        self.resolved_total = 0
        store.execute_script(_SCHEMA)
        for starts_at, payload in store.query("SELECT starts_at, payload FROM alerts WHERE ends_at IS NULL"):
            alert = Alert.model_validate_json(payload)
            self.open[alert_id(alert)] = Tracked(alert=alert, starts_at=int(starts_at))
        if self.open:
            logger.info("%d open alerts restored from the store (not re-opened)", len(self.open))

    # ------------------------------------------------------------------ the cycle
    def update(self, origin: int, alerts: list[Alert], maintenance: set[str], servers: set[str] | None = None,
               held: Collection[str] = ()) -> None:
        """One cycle: the alerts that hold at ``origin`` and the servers in maintenance now.

        ``servers``: the servers this update judges (an incremental pass over servers forecast late for
        ``origin``); their open alerts not raised again count as absent, the others are left as they are.
        None: every server. ``held``: servers not forecast yet for ``origin`` (their data are late); their
        open alerts are left as they are until their forecast comes.
        """
        rows: list[tuple[Any, ...]] = []
        with self.lock:
            seen = set()
            for raw in alerts:
                key = alert_id(raw)
                seen.add(key)
                tracked = self.open.get(key)
                reason = (f"{raw.server_name} is in maintenance: suppressed while it lasts"
                          if raw.server_name in maintenance else None)
                if tracked is None:
                    tracked = Tracked(alert=raw, starts_at=origin)
                    self.open[key] = tracked
                    self.opened_total += 1
                    changed = True
                    logger.debug("alert opened: %s %s (%s)%s", key, raw.level, raw.horizon,
                                 " [suppressed: maintenance]" if reason else "")
                else:
                    old = tracked.alert
                    changed = (old.level, old.horizon, old.suppressed_reason) != (raw.level, raw.horizon, reason)
                    tracked.absent_since = None
                tracked.alert = raw.model_copy(update={"id": key, "starts_at": bucket_iso(tracked.starts_at),
                                                       "ends_at": None, "suppressed_reason": reason})
                if changed:
                    rows.append(self._row(key, tracked, None))
            for key, tracked in list(self.open.items()):
                name = tracked.alert.server_name
                if key in seen or name in held or (servers is not None and name not in servers):
                    continue
                if tracked.absent_since is None:
                    tracked.absent_since = origin
                if origin - tracked.absent_since + 1 >= self.hold_down:
                    del self.open[key]
                    self.resolved_total += 1
                    tracked.alert = tracked.alert.model_copy(update={"ends_at": bucket_iso(tracked.absent_since)})
                    rows.append(self._row(key, tracked, tracked.absent_since))
                    logger.debug("alert resolved: %s (from %s to %s)", key, tracked.alert.starts_at,
                                 tracked.alert.ends_at)
        if rows:
            self.store.execute_many("INSERT OR REPLACE INTO alerts (id, starts_at, ends_at, kind, server, metric, "
                                    "level, suppressed, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    @staticmethod
    def _row(key: str, tracked: Tracked, ends_at: int | None) -> tuple[Any, ...]:
        a = tracked.alert
        return (key, tracked.starts_at, ends_at, a.kind, a.server_name, a.metric, a.level,
                int(a.suppressed_reason is not None), a.model_dump_json())

    def trim(self, newest_bucket: int) -> int:
        """Forget resolved alerts that ended more than ``ALERT_HISTORY_DAYS`` ago; how many."""
        return self.store.execute_many("DELETE FROM alerts WHERE ends_at IS NOT NULL AND ends_at < ?",
                                       [(newest_bucket - ALERT_HISTORY_DAYS * STEPS_PER_DAY,)])

    # ------------------------------------------------------------------ reads
    def counts(self) -> tuple[int, int, int]:
        """(open now, opened since start, resolved since start): the daemon's periodic summary reports them;
        each opening and resolution is a DEBUG line."""
        with self.lock:
            return len(self.open), self.opened_total, self.resolved_total

    def active(self) -> tuple[list[Alert], list[Alert]]:
        """(firing, suppressed) open alerts, including those inside their hold-down."""
        with self.lock:
            alerts = [t.alert for t in self.open.values()]
        return ([a for a in alerts if a.suppressed_reason is None],
                [a for a in alerts if a.suppressed_reason is not None])

    def history(self, first_bucket: int, server: str | None = None, kind: str | None = None,
                limit: int = ALERT_LIFECYCLE.history_max_rows) -> list[Alert]:
        """Alerts open at any time since ``first_bucket`` (resolved and still open), newest start first."""
        where, params = ["(ends_at IS NULL OR ends_at >= ?)"], [first_bucket]
        if server is not None:
            where.append("server = ?")
            params.append(server)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        try:
            rows = self.store.query(f"SELECT payload FROM alerts WHERE {' AND '.join(where)} "
                                    f"ORDER BY starts_at DESC, id LIMIT ?", (*params, limit))
        except sqlite3.DatabaseError as exc:
            logger.error("alert history could not be read: %s", exc)
            return []
        return [Alert.model_validate(json.loads(payload)) for (payload,) in rows]
