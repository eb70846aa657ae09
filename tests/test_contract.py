"""The contract's primitives (contract.py): buckets, the offline vector, CPU used."""

from __future__ import annotations

import numpy as np
import pandas as pd

from config import CARRIED_METRICS, LINBORG_METRICS, OFFLINE_ZERO_METRICS, SAMPLING_INTERVAL_SECONDS
from contract import NS_PER_BUCKET, bucket_iso, bucket_of_ns, bucket_of_times, bucket_start, cpu_used, fill_offline


def test_bucket_round_trip_and_floor() -> None:
    stamp = pd.Timestamp("2026-03-01T10:07:59Z")
    bucket = int(bucket_of_times(pd.DatetimeIndex([stamp]))[0])
    assert bucket_start(bucket) == pd.Timestamp("2026-03-01T10:05:00Z")  # floors into its 5-minute slot
    assert bucket_iso(bucket) == "2026-03-01T10:05:00Z"
    assert bucket_of_ns(stamp.value) == bucket
    assert NS_PER_BUCKET == SAMPLING_INTERVAL_SECONDS * 10**9
    naive = pd.Series(pd.to_datetime(["2026-03-01 10:07:59"]))  # naive = UTC
    assert int(bucket_of_times(naive)[0]) == bucket
    many = bucket_start(np.array([bucket, bucket + 1]))
    assert (many[1] - many[0]).total_seconds() == SAMPLING_INTERVAL_SECONDS


def test_cpu_used_is_the_complement_of_idle() -> None:
    assert cpu_used(87.5) == 12.5
    np.testing.assert_allclose(cpu_used(np.array([100.0, 0.0])), [0.0, 100.0])


def _series(values: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=float) for k, v in values.items()}


def test_offline_vector_zeroes_activity_idles_cpu_and_carries_disk_forward() -> None:
    present = np.array([True, False, False, True, False])
    metrics = {name: np.arange(1.0, 6.0) * 10 for name in LINBORG_METRICS}
    out = fill_offline(metrics, present)
    for name in OFFLINE_ZERO_METRICS:
        np.testing.assert_array_equal(out[name], [10, 0, 0, 40, 0])
    np.testing.assert_array_equal(out["cpu_idle_pct"], [10, 100, 100, 40, 100])
    for name in CARRIED_METRICS:
        np.testing.assert_array_equal(out[name], [10, 10, 10, 40, 40])  # carried forward, never interpolated
    np.testing.assert_array_equal(metrics["mem_used_pct"], [10, 20, 30, 40, 50])  # inputs untouched


def test_leading_gap_takes_carry_in_or_else_the_first_sample() -> None:
    present = np.array([False, False, True, False])
    disk = _series({"disk_usage_pct": [0, 0, 55, 0]})
    np.testing.assert_array_equal(fill_offline(disk, present)["disk_usage_pct"], [55, 55, 55, 55])
    carried = fill_offline(disk, present, carry_in={"disk_usage_pct": 50.0})["disk_usage_pct"]
    np.testing.assert_array_equal(carried, [50, 50, 55, 55])
    empty = fill_offline(disk, np.zeros(4, dtype=bool))["disk_usage_pct"]
    np.testing.assert_array_equal(empty, [0, 0, 0, 0])


def test_two_dimensional_time_by_server() -> None:
    present = np.array([[True, False], [False, False], [True, True]])
    out = fill_offline({"uptime_days": np.array([[3.0, 9.0], [0.0, 0.0], [4.0, 7.0]])}, present,
                       carry_in={"uptime_days": np.array([2.0, 6.0])})
    np.testing.assert_array_equal(out["uptime_days"], [[3, 6], [3, 6], [4, 7]])
