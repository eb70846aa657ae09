"""State labelling rules: each rule on a hand-made series, and stream == batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common_utils import check_version_compatibility
from config import CRITICAL_ENTER_BUCKETS, RECOVERY_BUCKETS, SOFT_STATE_MIN_BUCKETS
from state_rules import StateTracker, StreamStateLabeler, derive_states


def _series(n: int, **overrides: np.ndarray) -> pd.DataFrame:
    """One database server, n buckets starting Saturday 00:00 (no morning spike)."""
    base = {
        "timestamp": pd.date_range("2026-01-03", periods=n, freq="5min", tz="UTC"),
        "server_name": "ppdb001", "profile": "database",
        "cpu_user_pct": 20.0, "cpu_sys_pct": 5.0, "cpu_iowait_pct": 3.0, "cpu_idle_pct": 72.0,
        "java_cpu_pct": 1.0, "mem_used_pct": 60.0, "swap_used_pct": 1.0, "disk_usage_pct": 50.0,
        "net_in_mb_s": 10.0, "net_out_mb_s": 10.0, "back_close_wait": 5, "front_close_wait": 3,
        "load_average": 4.0, "uptime_days": 3,
    }
    df = pd.DataFrame({k: v for k, v in base.items()}, index=range(n))
    for key, values in overrides.items():
        df[key] = values
    return df


def test_critical_needs_consecutive_buckets_then_recovery():
    iowait = np.full(30, 3.0)
    iowait[5] = 35.0  # a single noisy bucket: not critical
    iowait[10:16] = 35.0  # a real episode
    states = derive_states(_series(30, cpu_iowait_pct=iowait)).tolist()
    assert states[5] == "healthy"
    assert states[10] == "healthy" and states[10 + CRITICAL_ENTER_BUCKETS - 1] == "critical_issue"
    # Holds through the first clear bucket; the second clear bucket ends it.
    assert states[11:17] == ["critical_issue"] * 6
    assert states[17:17 + RECOVERY_BUCKETS] == ["recovery"] * RECOVERY_BUCKETS
    assert states[17 + RECOVERY_BUCKETS] == "healthy"


def test_offline_maintenance_and_recovery_after_an_outage():
    n = 30
    has_sample = np.ones(n, dtype=bool)
    has_sample[4:7] = False  # unplanned outage
    has_sample[20:22] = False  # reboot inside maintenance
    maintenance = np.zeros(n, dtype=bool)
    maintenance[18:25] = True
    df = _series(n).assign(has_sample=has_sample)
    states = derive_states(df, maintenance=maintenance).tolist()
    assert states[4:7] == ["offline"] * 3
    assert states[7:7 + RECOVERY_BUCKETS] == ["recovery"] * RECOVERY_BUCKETS
    assert states[18:25] == ["maintenance"] * 7
    assert states[25] == "healthy"  # planned work is not followed by recovery


def test_soft_states_use_hysteresis_and_minimum_dwell():
    idle = np.full(40, 72.0)
    idle[5:25] = 15.0  # CPU used 85 %: heavy
    idle[12] = 30.0  # 70 % used: still heavy (exit threshold is 65)
    idle[30:31] = 15.0  # one hot bucket: no flicker
    states = derive_states(_series(40, cpu_idle_pct=idle, cpu_user_pct=100 - idle - 8, cpu_sys_pct=5.0)).tolist()
    assert states[5 + SOFT_STATE_MIN_BUCKETS - 1] == "heavy_load"
    assert all(s == "heavy_load" for s in states[7:25])
    assert states[30] == states[31] == "healthy"


def test_idle_and_morning_spike():
    n = 12 * 24
    ts = pd.date_range("2026-01-05", periods=n, freq="5min", tz="UTC")  # a Monday
    hours = ts.hour + ts.minute / 60
    idle = np.where(hours < 6, 97.0, np.where((hours >= 7.5) & (hours < 10), 40.0, 72.0))
    df = _series(n, cpu_idle_pct=idle, cpu_user_pct=100 - idle - 8, cpu_sys_pct=5.0).assign(timestamp=ts)
    states = pd.Series(derive_states(df).to_numpy(), index=hours)
    assert (states[(states.index > 1) & (states.index < 6)] == "idle").all()
    assert (states[(states.index >= 8) & (states.index < 10)] == "morning_spike").all()
    assert (states[states.index >= 11] == "healthy").all()


def test_a_soft_state_ends_even_when_its_successors_alternate():
    """After the morning window a box hovering between heavy_load and healthy leaves morning_spike."""
    n = 12 * 14
    ts = pd.date_range("2026-01-05", periods=n, freq="5min", tz="UTC")  # a Monday from 00:00
    hours = np.asarray(ts.hour + ts.minute / 60)
    used = np.where((hours >= 7.5) & (hours < 10), 50.0, 40.0)
    after = np.flatnonzero(hours >= 10)
    used[after] = np.where(np.arange(len(after)) % 2 == 0, 85.0, 55.0)  # heavy, healthy, heavy, ...
    idle = 100.0 - used
    df = _series(n, cpu_idle_pct=idle, cpu_user_pct=used - 5.0, cpu_sys_pct=5.0).assign(timestamp=ts)
    states = pd.Series(derive_states(df).to_numpy(), index=hours)
    assert (states[(hours >= 8) & (hours < 10)] == "morning_spike").all()
    # Gone once it has not applied for SOFT_STATE_MIN_BUCKETS buckets, and not back.
    first_after = 10 + SOFT_STATE_MIN_BUCKETS * 5 / 60
    assert (states[hours >= first_after] != "morning_spike").all()
    # ... and the alternation itself does not make the label flicker.
    later = states[hours >= first_after].to_numpy()
    assert (later[1:] != later[:-1]).sum() == 0, later


def test_stream_labelling_equals_batch():
    rng = np.random.default_rng(0)
    n, servers = 200, 4
    cpu = rng.uniform(0, 100, (n, servers))
    args = dict(iowait=rng.uniform(0, 40, (n, servers)), mem=rng.uniform(40, 99, (n, servers)),
                swap=np.zeros((n, servers)), disk=np.full((n, servers), 50.0),
                back_close_wait=np.zeros((n, servers)), front_close_wait=np.zeros((n, servers)),
                has_sample=rng.random((n, servers)) > 0.05, in_maintenance=np.zeros((n, servers), dtype=bool))
    spike = np.zeros(n, dtype=bool)
    batch = StateTracker.for_profiles(["database"] * servers).label(cpu_used=cpu, spike_window=spike, **args)
    stream = StateTracker.for_profiles(["database"] * servers)
    parts = [stream.label(cpu_used=cpu[i:i + 1], spike_window=spike[i:i + 1],
                          **{k: v[i:i + 1] for k, v in args.items()}) for i in range(n)]
    np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_version_compatibility_needs_same_major():
    check_version_compatibility("1.4.0", current_version="1.0.2")
    with pytest.raises(ValueError, match=r"version mismatch.*Fix:.*CHANGELOG"):
        check_version_compatibility("2.0.0", current_version="1.9.9")
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        check_version_compatibility("2.0", current_version="1.0.0")


def test_stream_labeler_matches_batch_rules_sample_by_sample():
    """Collectors label live samples (several per bucket, with outages) exactly as the batch rules do."""
    n = 120
    rng = np.random.default_rng(3)
    iowait = np.clip(rng.normal(4, 2, n), 0, 50)
    iowait[30:45] = 38.0  # a critical episode, then recovery
    idle = np.clip(72.0 - iowait + 3.0, 0, 100)
    idle[60:80] = 10.0  # heavy load
    has_sample = np.ones(n, dtype=bool)
    has_sample[90:94] = False  # an outage: no samples at all
    df = _series(n, cpu_iowait_pct=iowait, cpu_idle_pct=idle,
                 cpu_user_pct=100.0 - idle - iowait - 5.0).assign(has_sample=has_sample)
    batch = derive_states(df).tolist()

    labeler = StreamStateLabeler("database")
    streamed = []
    for i, row in df.iterrows():
        if not has_sample[i]:
            streamed.append("offline")
            continue
        labels = []
        for offset in (0, 100, 200):  # three samples in the bucket, all with the bucket's values
            labels.append(labeler.label(row["timestamp"] + pd.Timedelta(seconds=offset), row.to_dict()))
        assert len(set(labels)) == 1
        streamed.append(labels[-1])
    assert streamed == batch
    assert {"critical_issue", "recovery", "heavy_load", "offline"} <= set(batch)
