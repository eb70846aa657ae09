"""Alert lifecycle: identity, start and end, hold-down against flapping, maintenance, history, restart.

Costs (2 cores): the tracker tests < 1 s; the daemon test ~5 s (one cycle of the tiny model).
"""

from __future__ import annotations

from api_models import Alert
from config import ALERT_HOLD_DOWN_BUCKETS
from contract import bucket_iso
from metrics_generator import FleetSimulator
from metrics_store import MetricsStore
from tests.helpers import TINY_FLEET


def _alert(server: str = "ppdb001", metric: str = "cpu_iowait_pct", level: str = "warning") -> Alert:
    return Alert(server_name=server, profile="database", level=level, metric=metric, horizon="30min",
                 predicted_value=31.0, threshold=30.0, p50=22.0, minutes_to_breach=25, reason="I/O wait may reach 31%")


def test_an_alert_opens_once_rides_out_a_flap_and_ends_after_the_hold_down(tmp_path):
    from alert_lifecycle import AlertTracker

    store = MetricsStore(tmp_path / "s.sqlite3")
    tracker = AlertTracker(store)
    tracker.update(100, [_alert()], set())
    [open_] = tracker.active()[0]
    assert open_.id == "risk:ppdb001:cpu_iowait_pct" and open_.starts_at == bucket_iso(100) and open_.ends_at is None
    tracker.update(101, [], set())  # gone for one cycle (a flap) ...
    tracker.update(102, [_alert(level="critical")], set())  # ... and back, escalated: the same alert
    [same] = tracker.active()[0]
    assert same.starts_at == bucket_iso(100) and same.level == "critical" and tracker.opened_total == 1
    for origin in range(103, 103 + ALERT_HOLD_DOWN_BUCKETS - 1):
        tracker.update(origin, [], set())
        assert tracker.active()[0], origin  # still inside its hold-down
    tracker.update(103 + ALERT_HOLD_DOWN_BUCKETS - 1, [], set())
    assert tracker.active() == ([], []) and tracker.resolved_total == 1
    [ended] = tracker.history(0)
    assert (ended.starts_at, ended.ends_at) == (bucket_iso(100), bucket_iso(103))  # ended when it went away
    tracker.update(200, [_alert()], set())  # later the same condition: a new alert, a new start
    assert tracker.opened_total == 2
    assert [a.starts_at for a in tracker.history(0)] == [bucket_iso(200), bucket_iso(100)]
    assert tracker.history(150) == [tracker.active()[0][0]]  # only what was open since bucket 150
    assert tracker.history(0, server="ppweb001") == [] and tracker.history(0, kind="model_degraded") == []


def test_maintenance_suppresses_and_says_so_and_a_restart_does_not_reopen(tmp_path):
    from alert_lifecycle import AlertTracker

    store = MetricsStore(tmp_path / "s.sqlite3")
    tracker = AlertTracker(store)
    tracker.update(10, [_alert(), _alert(server="ppweb001")], {"ppdb001"})
    firing, suppressed = tracker.active()
    assert [a.server_name for a in firing] == ["ppweb001"]
    assert [a.server_name for a in suppressed] == ["ppdb001"] and "maintenance" in suppressed[0].suppressed_reason
    tracker.update(11, [_alert(), _alert(server="ppweb001")], set())  # maintenance over: it fires, same start
    assert {a.server_name for a in tracker.active()[0]} == {"ppdb001", "ppweb001"}
    assert all(a.starts_at == bucket_iso(10) for a in tracker.active()[0])
    store.close()
    again = AlertTracker(MetricsStore(tmp_path / "s.sqlite3"))  # a restart finds them open
    assert {a.id for a in again.active()[0]} == {a.id for a in tracker.active()[0]}
    again.update(12, [_alert(), _alert(server="ppweb001")], set())
    assert again.opened_total == 0 and all(a.starts_at == bucket_iso(10) for a in again.active()[0])


def test_the_daemon_suppresses_alerts_of_a_server_in_maintenance(tiny_training, tmp_path):
    """A database at 45 % I/O wait now raises a critical alert; in an operator's maintenance window it is listed
    as suppressed. A record that merely claims ``state: maintenance`` (any ingest key could) suppresses nothing."""
    from daemon_state import Daemon, DaemonSettings

    daemon = Daemon(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3"))
    sim = FleetSimulator(fleet=TINY_FLEET, seed=8, start="2026-03-02T00:00:00Z")
    records = sim.records(sim.advance(40))
    newest = max(r["timestamp"] for r in records)
    hot = {"cpu_user_pct": 10.0, "cpu_sys_pct": 5.0, "cpu_iowait_pct": 45.0, "cpu_idle_pct": 40.0}
    for r in records:
        if r["timestamp"] == newest and r["server_name"] in ("ppdb001", "ppdb002"):
            r.update(hot)
            if r["server_name"] == "ppdb002":
                r["state"] = "maintenance"  # a sample's claim: data for the model, not an operator's decision
    daemon.maintenance.set("ppdb001", 2.0, "disk swap", "operator")
    daemon.ingest(records)
    assert daemon.run_cycle(daemon.fleet.newest_bucket) is not None
    firing, suppressed = daemon.alerts.active()
    hot_firing = {a.server_name for a in firing if a.metric == "cpu_iowait_pct"}
    hot_suppressed = {a.server_name for a in suppressed if a.metric == "cpu_iowait_pct"}
    assert "ppdb002" in hot_firing and "ppdb001" not in hot_firing
    assert hot_suppressed == {"ppdb001"}
    daemon.close()


def test_an_incremental_update_judges_only_its_servers_and_awaited_servers_keep_their_alerts(tmp_path):
    """A late server's forecast for a bucket arrives after the cycle (daemon_state.Daemon.run_incremental):
    the cycle leaves that server's alerts alone (``held``), the pass judges only its own (``servers``)."""
    from alert_lifecycle import AlertTracker

    tracker = AlertTracker(MetricsStore(tmp_path / "s.sqlite3"), hold_down=1)  # absent once = resolved
    tracker.update(10, [_alert(), _alert(server="ppweb001")], set())
    tracker.update(11, [_alert(server="ppweb001")], set(), held={"ppdb001"})  # ppdb001's data for 11 are late
    assert {a.server_name for a in tracker.active()[0]} == {"ppdb001", "ppweb001"} and tracker.resolved_total == 0
    tracker.update(11, [], set(), servers={"ppdb001"})  # its late forecast: no alert any more; ppweb001 untouched
    assert [a.server_name for a in tracker.active()[0]] == ["ppweb001"] and tracker.resolved_total == 1
    tracker.update(12, [_alert()], set(), servers={"ppdb001"})
    assert {a.server_name for a in tracker.active()[0]} == {"ppdb001", "ppweb001"} and tracker.opened_total == 3
