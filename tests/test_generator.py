"""Fleet simulator: determinism, contract compliance and realism a toy would fail."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common_utils import read_json
from config import (
    CRITICAL_CLOSE_WAIT,
    CRITICAL_DISK_PCT,
    CRITICAL_IOWAIT_PCT,
    CRITICAL_MEM_PCT,
    CRITICAL_SWAP_PCT,
    DEFAULT_FLEET,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METADATA_FILE,
    REQUIRED_COLUMNS,
    SERVER_MAPPING_FILE,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TRAINING_DATA_FILE,
    VALID_STATES,
)
from contract import cpu_used
from data_validator import DataValidator
from metrics_generator import FleetSimulator, fleet_from_total, generate_dataset, parse_fleet
from server_encoder import ServerEncoder


def _episodes(df: pd.DataFrame) -> pd.DataFrame:
    """Runs of one state per server: state, start row, length in buckets."""
    states = df["state"].astype(str).to_numpy()
    servers = df["server_name"].astype(str).to_numpy()
    change = np.r_[True, (states[1:] != states[:-1]) | (servers[1:] != servers[:-1])]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.r_[starts, len(df)])
    return pd.DataFrame({"state": states[starts], "start": starts, "length": lengths, "server": servers[starts]})


# ---------------------------------------------------------------------------- files and contract
def test_writes_all_three_files_and_passes_the_validator(fleet_dir):
    df = pd.read_parquet(fleet_dir / TRAINING_DATA_FILE)
    assert list(df.columns) == REQUIRED_COLUMNS
    assert len(df) == 28 * 14 * STEPS_PER_DAY
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(df)
    assert is_valid, [str(e) for e in errors]
    assert not warnings, [str(w) for w in warnings]
    for column in INTEGER_METRICS:
        assert pd.api.types.is_integer_dtype(df[column].dtype), column

    meta = read_json(fleet_dir / METADATA_FILE)
    assert meta["rows"] == len(df)
    assert meta["seed"] == 7 and meta["n_servers"] == 28
    assert meta["start"] == "2026-01-05T00:00:00Z" and meta["end"] == "2026-01-18T23:55:00Z"
    assert set(meta["state_shares"]) == set(VALID_STATES)
    assert abs(sum(meta["state_shares"].values()) - 1.0) < 1e-3
    counts = df["state"].astype(str).value_counts()
    assert all(meta["state_counts"][s] == counts.get(s, 0) for s in VALID_STATES)

    encoder = ServerEncoder.load(fleet_dir / SERVER_MAPPING_FILE)
    assert sorted(encoder.name_to_id) == sorted(df["server_name"].astype(str).unique())


def test_sparse_mode_omits_buckets_without_samples_and_still_validates(tmp_path):
    dense = generate_dataset(tmp_path / "dense", hours=72, fleet={"web_api": 6, "database": 6}, seed=3, progress=False)
    sparse = generate_dataset(tmp_path / "sparse", hours=72, fleet={"web_api": 6, "database": 6}, seed=3,
                              offline_mode="sparse", progress=False)
    df_dense = pd.read_parquet(tmp_path / "dense" / TRAINING_DATA_FILE)
    df_sparse = pd.read_parquet(tmp_path / "sparse" / TRAINING_DATA_FILE)
    no_sample_rows = (df_dense["cpu_idle_pct"] == 100.0) & (df_dense["mem_used_pct"] == 0.0)
    assert no_sample_rows.sum() > 0, "expected at least one outage or reboot in 72 h x 12 servers"
    assert len(df_sparse) == len(df_dense) - int(no_sample_rows.sum())
    assert sparse["rows"] == len(df_sparse) and dense["rows"] == len(df_dense)
    assert "offline" not in set(df_sparse["state"].astype(str))
    is_valid, errors, _ = DataValidator().validate_schema(df_sparse)
    assert is_valid, [str(e) for e in errors]


def test_csv_export_is_small_only(tmp_path):
    meta = generate_dataset(tmp_path, hours=24, fleet={"generic": 2}, file_format="csv", progress=False)
    df = pd.read_csv(tmp_path / meta["file"])
    assert len(df) == 2 * STEPS_PER_DAY
    assert DataValidator().validate_schema(df)[0]
    with pytest.raises(ValueError, match="CSV is only for small exports"):
        generate_dataset(tmp_path, hours=720, fleet={"generic": 2}, file_format="csv", progress=False)


def test_rejects_less_than_a_day(tmp_path):
    with pytest.raises(ValueError, match=r"--hours 23 is below the minimum of 24.*Fix:.*DATA_CONTRACT"):
        generate_dataset(tmp_path, hours=23, progress=False)


def test_start_must_sit_on_the_grid():
    with pytest.raises(ValueError, match="5-minute boundary"):
        FleetSimulator(fleet={"generic": 1}, start="2026-01-05T00:03:00Z")


def test_fleet_helpers():
    assert fleet_from_total(90) == DEFAULT_FLEET
    small = fleet_from_total(10)
    assert sum(small.values()) == 10 and len(small) == 7
    assert sum(fleet_from_total(3).values()) == 3
    assert parse_fleet("web_api=3,database=2") == {"web_api": 3, "database": 2}
    with pytest.raises(ValueError, match="Bad fleet entry"):
        parse_fleet("webserver=3")


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    fleet = {"web_api": 2, "ml_compute": 2, "database": 2}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        generate_dataset(tmp_path / name, hours=48, fleet=fleet, seed=seed, progress=False)
    a, b, c = (pd.read_parquet(tmp_path / n / TRAINING_DATA_FILE) for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a[LINBORG_METRICS].equals(c[LINBORG_METRICS])


def test_tick_by_tick_continuation_equals_batch_generation():
    fleet = {"web_api": 3, "database": 2, "ml_compute": 2}
    n_steps = 2 * STEPS_PER_HOUR * 24 // 4  # 12 hours
    batch = FleetSimulator(fleet=fleet, seed=5).advance(n_steps)
    stepper = FleetSimulator(fleet=fleet, seed=5)
    chunks = [stepper.advance(k) for k in (1, 1, 7, 50)]
    chunks += [stepper.advance(1) for _ in range(n_steps - 59)]
    for metric in LINBORG_METRICS:
        streamed = np.concatenate([c.metrics[metric] for c in chunks])
        np.testing.assert_allclose(streamed, batch.metrics[metric], rtol=0, atol=1e-9, err_msg=metric)
    np.testing.assert_array_equal(np.concatenate([c.state_codes for c in chunks]), batch.state_codes)
    assert chunks[-1].timestamps[-1] == batch.timestamps[-1]


def test_an_outage_across_chunks_is_the_contracts_offline_vector():
    """Bucket by bucket (the live stream), a gap carries disk and uptime over from the chunk before it."""
    fleet = {"database": 2, "web_api": 1}
    batch_sim, step_sim = FleetSimulator(fleet=fleet, seed=8), FleetSimulator(fleet=fleet, seed=8)
    for sim in (batch_sim, step_sim):
        before = sim.advance(10)
        sim._offline_left[0] = 6  # the first server goes dark for the next 6 buckets
    batch = batch_sim.advance(12)
    chunks = [step_sim.advance(1) for _ in range(12)]
    for metric in LINBORG_METRICS:
        assert np.array_equal(np.concatenate([c.metrics[metric] for c in chunks]), batch.metrics[metric]), metric
    assert before.has_sample[-1, 0] and (~batch.has_sample[:, 0]).tolist() == [True] * 6 + [False] * 6
    gap = {metric: values[:6, 0] for metric, values in batch.metrics.items()}
    assert (gap["cpu_idle_pct"] == 100.0).all() and (gap["mem_used_pct"] == 0.0).all()
    assert (gap["disk_usage_pct"] == before.metrics["disk_usage_pct"][-1, 0]).all()
    assert (gap["uptime_days"] == before.metrics["uptime_days"][-1, 0]).all()


def test_stream_records_are_contract_records():
    sim = FleetSimulator(fleet={"web_api": 2, "database": 1}, seed=1)
    records = sim.records(sim.advance(2))
    assert len(records) == 6
    frame = pd.DataFrame(records)
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert records[0]["timestamp"].endswith("Z")
    assert DataValidator().validate_schema(frame)[0]


# ---------------------------------------------------------------------------- realism
def test_profiles_look_like_their_roles(fleet_df):
    df = fleet_df[fleet_df["state"].astype(str) != "offline"].copy()
    df["cpu_used"] = cpu_used(df["cpu_idle_pct"])
    # Servers of one role differ (per-server load, memory and stack), so a role is judged by
    # its typical server: the median over its servers of each server's mean.
    per_server = df.groupby([df["profile"].astype(str), df["server_name"].astype(str)]).mean(numeric_only=True)
    means = per_server.groupby(level=0).median()
    # Databases are the I/O-wait-heavy profile, and their nightly backup (01:00-03:00) shows.
    assert means["cpu_iowait_pct"].idxmax() == "database"
    db = df[df["profile"].astype(str) == "database"]
    db_hour = db["timestamp"].dt.hour
    backup_iowait = db.loc[db_hour.between(1, 2), "cpu_iowait_pct"].mean()
    assert backup_iowait > 1.5 * db.loc[db_hour.between(4, 5), "cpu_iowait_pct"].mean()
    # ML compute: most CPU, Java/Spark and load.
    assert means["cpu_used"].idxmax() == "ml_compute"
    assert means["java_cpu_pct"].idxmax() == "ml_compute"
    assert means["load_average"].idxmax() == "ml_compute"
    # Web/API: network egress and connections.
    assert means["net_out_mb_s"].idxmax() == "web_api"
    assert means["back_close_wait"].idxmax() == "web_api"
    assert means["front_close_wait"].idxmax() == "web_api"
    # ETL ingests: the most network ingress.
    assert means["net_in_mb_s"].idxmax() == "data_ingest"
    # Databases keep memory high (buffer cache); conductors are the lightest boxes.
    assert means["mem_used_pct"].idxmax() == "database"
    assert means["cpu_used"].idxmin() == "conductor_mgmt"
    # ETL ingests in bursts at the top of every hour.
    etl = df[df["profile"].astype(str) == "data_ingest"]
    minute = etl["timestamp"].dt.minute
    assert etl.loc[minute < 15, "net_in_mb_s"].mean() > 1.2 * etl.loc[minute >= 30, "net_in_mb_s"].mean()


def test_daily_and_weekly_rhythm(fleet_df):
    web = fleet_df[(fleet_df["profile"].astype(str) == "web_api") & (fleet_df["state"].astype(str) != "offline")]
    ts = web["timestamp"].dt
    web_cpu = cpu_used(web["cpu_idle_pct"])
    weekday = ts.dayofweek < 5
    business = web_cpu[weekday & (ts.hour >= 9) & (ts.hour < 12)].mean()
    night = web_cpu[weekday & (ts.hour >= 2) & (ts.hour < 5)].mean()
    weekend = web_cpu[~weekday & (ts.hour >= 9) & (ts.hour < 12)].mean()
    assert business > 2.0 * night, (business, night)
    assert business > 1.6 * weekend, (business, weekend)
    # The weekday morning spike is labelled as such, and only on weekday mornings.
    spike_times = web[web["state"].astype(str) == "morning_spike"]["timestamp"]
    assert len(spike_times) > 0
    spikes = spike_times.dt
    clock = spikes.hour + spikes.minute / 60
    # The window is 07:30-10:00; the label may trail by the soft-state dwell (15 min).
    assert (spikes.dayofweek < 5).all() and clock.between(7.5, 10.25).all()
    # Risk analytics runs its batch in the evening.
    risk = fleet_df[fleet_df["profile"].astype(str) == "risk_analytics"]
    rts = risk["timestamp"].dt
    risk_cpu = cpu_used(risk["cpu_idle_pct"])
    assert risk_cpu[(rts.dayofweek < 5) & rts.hour.between(19, 21)].mean() > \
        1.5 * risk_cpu[(rts.dayofweek < 5) & rts.hour.between(2, 5)].mean()


def test_states_dwell_for_minutes_to_hours_not_flicker(fleet_df):
    episodes = _episodes(fleet_df)
    minutes = episodes.assign(minutes=episodes["length"] * 5)
    by_state = minutes.groupby("state")["minutes"]
    for state in ("healthy", "heavy_load", "idle", "morning_spike", "critical_issue", "maintenance"):
        assert by_state.median()[state] >= 15, (state, by_state.median()[state])
    assert by_state.median()["healthy"] >= 60
    assert by_state.max()["healthy"] >= 12 * 60  # quiet stretches last many hours
    # Very few one-bucket soft episodes (only where a hard state interrupts them).
    soft = minutes[minutes["state"].isin(["healthy", "heavy_load", "idle", "morning_spike"])]
    assert (soft["length"] == 1).mean() < 0.05
    # Every state shows up in two weeks of a mixed fleet.
    assert set(episodes["state"]) == set(VALID_STATES)


def test_incidents_build_up_before_they_turn_critical(fleet_df):
    thresholds = {"swap_used_pct": CRITICAL_SWAP_PCT, "mem_used_pct": CRITICAL_MEM_PCT,
                  "cpu_iowait_pct": CRITICAL_IOWAIT_PCT, "disk_usage_pct": CRITICAL_DISK_PCT,
                  "back_close_wait": CRITICAL_CLOSE_WAIT, "front_close_wait": CRITICAL_CLOSE_WAIT}
    episodes = _episodes(fleet_df)
    onsets = episodes[(episodes["state"] == "critical_issue")]
    progress = []
    for start in onsets["start"]:
        servers = fleet_df["server_name"]
        if start < 12 * STEPS_PER_HOUR or servers.iloc[start - 144] != servers.iloc[start]:
            continue
        row = fleet_df.iloc[start]
        drivers = [m for m, t in thresholds.items() if row[m] >= t]
        if not drivers:
            continue  # CPU saturation: sudden by nature
        metric = drivers[0]
        baseline = fleet_df[metric].iloc[start - 144: start - 72].median()  # 12 h .. 6 h before
        before = fleet_df[metric].iloc[start - 6]  # 30 minutes before the label flips
        progress.append((before - baseline) / (thresholds[metric] - baseline))
    assert len(progress) >= 20, "expected a few dozen incidents in 14 days x 28 servers"
    progress = np.array(progress)
    # Half an hour ahead, most incidents are already well on their way to the threshold.
    assert (progress > 0.3).mean() > 0.7, np.round(progress, 2)


def test_reboots_reset_uptime_and_maintenance_is_scheduled(fleet_df):
    for _, server in fleet_df.groupby(fleet_df["server_name"].astype(str)):
        uptime = server["uptime_days"].to_numpy()
        assert uptime.max() <= 30
        drops = np.flatnonzero(np.diff(uptime) < 0)
        for i in drops:  # after a reboot the box reports 0 days
            assert uptime[i + 1] == 0
    maint = fleet_df[fleet_df["state"].astype(str) == "maintenance"]
    assert maint["timestamp"].dt.hour.between(1, 7).all()  # windows open 01:00-05:00 UTC, last <= 2 h
    offline_rows = fleet_df[fleet_df["state"].astype(str) == "offline"]
    assert (offline_rows["cpu_idle_pct"] == 100.0).all() and (offline_rows["cpu_user_pct"] == 0.0).all()


def test_cpu_parts_add_up_and_java_fits_inside_busy_cpu(fleet_df):
    total = fleet_df[["cpu_user_pct", "cpu_sys_pct", "cpu_iowait_pct", "cpu_idle_pct"]].sum(axis=1)
    assert np.abs(total - 100.0).max() < 0.05
    busy = fleet_df["cpu_user_pct"] + fleet_df["cpu_sys_pct"]
    assert (fleet_df["java_cpu_pct"] <= busy + 0.02).all()
