"""The data contract's primitives, implemented once (Docs/DATA_CONTRACT.md).

Every module that turns samples into buckets, fills a bucket without samples or shows CPU to a
person uses these, so the generator, the feature pipeline, the live store, the importers and the
daemon cannot drift apart:

* **buckets**: a bucket is a 5-minute slot numbered since the Unix epoch (UTC);
  ``bucket_of_ns`` / ``bucket_of_times`` go from time to bucket, ``bucket_start`` /
  ``bucket_iso`` back;
* **the offline vector**: what a bucket without samples holds (``fill_offline``);
* **CPU used**: what people see is ``100 - cpu_idle_pct`` (``cpu_used``), never raw idle.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from config import CARRIED_METRICS, DISPLAY_CPU, OFFLINE_IDLE_PCT, OFFLINE_ZERO_METRICS, SAMPLING_INTERVAL_SECONDS

__all__ = ["NS_PER_BUCKET", "DISPLAY_CPU", "bucket_of_ns", "bucket_of_times", "bucket_start", "bucket_iso",
           "cpu_used", "fill_offline"]

NS_PER_BUCKET = SAMPLING_INTERVAL_SECONDS * 1_000_000_000


# ============================================================================ buckets
def bucket_of_ns(ts_ns: int | np.ndarray) -> int | np.ndarray:
    """Bucket number of epoch nanoseconds (UTC); floors, so a bucket holds [start, start + 5 min)."""
    return ts_ns // NS_PER_BUCKET


def bucket_of_times(timestamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Bucket numbers of timestamps; naive ones are taken as UTC."""
    values = pd.DatetimeIndex(timestamps)
    if values.tz is not None:
        values = values.tz_convert("UTC").tz_localize(None)
    return values.as_unit("ns").asi8 // NS_PER_BUCKET


def bucket_start(bucket: int | np.ndarray) -> pd.Timestamp | pd.DatetimeIndex:
    """UTC start time of a bucket number (or of an array of them)."""
    if np.ndim(bucket):
        return pd.to_datetime(np.asarray(bucket, dtype=np.int64) * NS_PER_BUCKET, utc=True)
    return pd.Timestamp(int(bucket) * NS_PER_BUCKET, unit="ns", tz="UTC")


def bucket_iso(bucket: int) -> str:
    """ISO 8601 start of a bucket, ``Z`` suffix, second precision (how the API shows times)."""
    return bucket_start(bucket).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================ CPU as people see it
def cpu_used(cpu_idle_pct: float | np.ndarray) -> float | np.ndarray:
    """CPU used % = 100 - idle % (the only CPU figure shown to users)."""
    return 100.0 - cpu_idle_pct


# ============================================================================ offline vector
def fill_offline(metrics: Mapping[str, np.ndarray], present: np.ndarray,
                 carry_in: Mapping[str, np.ndarray | float] | None = None) -> dict[str, np.ndarray]:
    """Apply the contract's offline vector to the buckets without samples.

    ``metrics`` maps LINBORG names to arrays with time on axis 0 (``(T,)`` or ``(T, servers)``);
    ``present`` (same shape) is True where the bucket had a sample. Where it is False:

    * activity metrics (``OFFLINE_ZERO_METRICS``) are 0 and ``cpu_idle_pct`` is 100;
    * ``disk_usage_pct`` and ``uptime_days`` (``CARRIED_METRICS``) carry the last sampled value
      forward. A gap at the start takes ``carry_in`` (the value before this stretch of time, as
      a streaming caller knows it) or, without one, the first later sample: the contract rule
      "carried from the last sample" applied to a window that begins inside a gap. A column
      with no sample at all and no ``carry_in`` is 0.

    Returns new arrays (the inputs are not changed); names not given are not added.
    """
    present = np.asarray(present, dtype=bool)
    out = {name: np.array(values, dtype=float, copy=True) for name, values in metrics.items()}
    if present.all():
        return out
    missing = ~present
    for name in OFFLINE_ZERO_METRICS:
        if name in out:
            out[name][missing] = 0.0
    if "cpu_idle_pct" in out:
        out["cpu_idle_pct"][missing] = OFFLINE_IDLE_PCT
    steps = present.shape[0]
    positions = np.arange(steps).reshape((steps,) + (1,) * (present.ndim - 1))
    last_seen = np.maximum.accumulate(np.where(present, positions, -1), axis=0)  # -1: no sample yet
    first_seen = np.where(present.any(axis=0), np.argmax(present, axis=0), -1)
    for name in CARRIED_METRICS:
        if name not in out:
            continue
        values = out[name]
        source = np.where(last_seen >= 0, last_seen, first_seen)
        filled = np.take_along_axis(values, np.maximum(source, 0), axis=0) if values.ndim > 1 \
            else values[np.maximum(source, 0)]
        if carry_in is not None and name in carry_in:
            filled = np.where(last_seen >= 0, filled, np.broadcast_to(carry_in[name], filled.shape))
        else:
            filled = np.where(source >= 0, filled, 0.0)
        out[name] = np.where(missing, filled, values)
    return out
