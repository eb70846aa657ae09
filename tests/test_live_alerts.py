"""The daemon judges its own alerts (live_alerts.py) exactly as the early-warning benchmark scores them offline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alert_quality import breach_onsets, score_rule
from config import ALERT_HOLD_DOWN_BUCKETS, LINBORG_METRICS
from metrics_generator import FleetSimulator
from risk_scoring import breach_tiers
from tests.helpers import TINY_FLEET


def test_a_fed_daemon_confirms_breaches_and_judges_its_alerts_like_the_offline_scorer(tiny_training, tmp_path):
    """feed -> forecast -> alert -> breach -> judged; /accuracy, /metrics and the offline definitions agree."""
    from daemon_state import Daemon, DaemonSettings, accuracy_document

    settings = DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                              established_hours=0.0)
    daemon = Daemon(settings)
    sim = FleetSimulator(fleet=TINY_FLEET, seed=41, start="2026-03-02T00:00:00Z")
    records = sim.records(sim.advance(96))
    frame = pd.DataFrame(records)
    victim = sorted(frame["server_name"].unique())[0]
    buckets = sorted(frame["timestamp"].unique())
    # the victim's memory: calm, then 4 buckets at 95 % (a breach: the tier held 10 min after a quiet hour),
    # calm again, then a single 5-minute spike (no breach)
    for r in records:
        if r["server_name"] == victim:
            k = buckets.index(r["timestamp"])
            r["mem_used_pct"] = 95.0 if 60 <= k < 64 or k == 80 else 50.0
    history = [r for r in records if buckets.index(r["timestamp"]) < 30]
    daemon.ingest(history)
    first_cycle = daemon.fleet.newest_bucket
    for k in range(30, len(buckets)):
        daemon.ingest([r for r in records if r["timestamp"] == buckets[k]])
        assert daemon.run_cycle(daemon.fleet.newest_bucket) is not None
    last = daemon.fleet.newest_bucket
    metric = "mem_used_pct"
    rows = {r["metric"]: r for r in daemon.outcomes.summary(last)}
    assert rows[metric]["breaches"] >= 1  # the victim's (other servers may breach too)
    victim_breaches = daemon.store.query("SELECT at FROM alert_breaches WHERE server = ? AND metric = ?",
                                         (victim, metric))
    assert [b for (b,) in victim_breaches] == [first_cycle - 29 + 60]  # the first bucket at 95 %, once

    # Offline: the same series and the alert episodes the daemon stored, scored by alert_quality.
    servers = sorted(daemon.fleet.servers)
    lo = first_cycle - 29
    values = np.full((len(servers), last - lo + 1), np.nan)
    opened = np.zeros_like(values, dtype=bool)
    for i, name in enumerate(servers):
        window = daemon.fleet.servers[name]
        raw, _, present = window.window(last, last - lo + 1)
        values[i] = np.where(present, raw[:, LINBORG_METRICS.index(metric)], np.nan)
        for starts_at, ends_at in daemon.store.query(
                "SELECT starts_at, ends_at FROM alerts WHERE id = ? AND suppressed = 0", (f"risk:{name}:{metric}",)):
            # the episode as listed open: through the hold-down (ends_at is the first cycle without it)
            end = ends_at + ALERT_HOLD_DOWN_BUCKETS - 1 if ends_at is not None else last + 1
            opened[i, starts_at - lo:end - lo] = True
    profiles = [daemon.fleet.servers[n].profile for n in servers]
    warning, elevated = breach_tiers(metric, profiles)
    onsets = breach_onsets(values, warning, elevated)
    offline = score_rule(opened, onsets, first=first_cycle - lo + 1)
    assert offline.breaches == rows[metric]["breaches"]
    assert offline.warned == rows[metric]["warned"]
    [(closed,)] = daemon.store.query("SELECT COUNT(*) FROM alert_outcomes WHERE metric = ?", (metric,))
    assert rows[metric]["episodes"] == closed > 0
    # each of the victim's judged episodes is true exactly when the breach started in it, the bucket after it,
    # or the bucket before it (an alert raised for the breach in progress); one of them is
    onset = first_cycle - 29 + 60
    judged = daemon.store.query("SELECT starts_at, ends_at, true_alarm FROM alert_outcomes WHERE id = ?",
                                (f"risk:{victim}:{metric}",))
    assert judged and any(t for _, _, t in judged)
    for starts_at, ends_at, true_alarm in judged:
        assert true_alarm == int(starts_at - 1 <= onset <= ends_at + ALERT_HOLD_DOWN_BUCKETS - 1)

    document = accuracy_document(daemon, None, metric, None, None, None)
    [quality] = document.alert_quality
    assert quality.breaches == rows[metric]["breaches"] and quality.window == "7d"
    assert quality.recall == (round(quality.warned / quality.breaches, 4) if quality.breaches else None)
    text = daemon.metrics.render().decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(f'tft_breaches_total{{metric="{metric}"'))
    assert counted == quality.breaches
    assert f'tft_alert_recall_ratio{{metric="{metric}",window="7d"}}' in text
    daemon.close()

