"""How long the daemon's start-up integrity check takes on a fleet-sized store.

    python -m bench.bench_store_check --servers 1000 --days 35

Builds a store of ``servers`` x ``days`` of 5-minute buckets with the daemon's own schema (rows
written straight into SQLite, the shape ``MetricsStore.add_records`` leaves), then times opening it
with ``STORE.integrity_check`` off, "quick" and "full" in the same run, and prints the check's cost
against the plain open.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common_utils import quiet_library_noise
from config import STEPS_PER_DAY
from contract import NS_PER_BUCKET
from metrics_store import _UPSERT_BUCKET, _UPSERT_SERVER, COUNTS, GAUGES, MetricsStore


def build(path: Path, servers: int, days: int, seed: int = 0) -> int:
    """Write ``servers`` x ``days`` buckets; returns the row count."""
    rng = np.random.default_rng(seed)
    store = MetricsStore(path, synchronous="OFF", integrity_check="off")
    conn = store._writer
    buckets = days * STEPS_PER_DAY
    first = 20_000_000 - buckets
    rows = 0
    conn.execute("BEGIN")
    for s in range(servers):
        name = f"ppgen{s:05d}"
        sums = rng.uniform(0, 100, size=(buckets, len(GAUGES)))
        counts = rng.integers(0, 50, size=(buckets, len(COUNTS)))
        conn.executemany(_UPSERT_BUCKET, ((name, first + b, 1, *sums[b], (first + b) * NS_PER_BUCKET,
                                           *counts[b].tolist(), 1) for b in range(buckets)))
        conn.execute(_UPSERT_SERVER, (name, "generic", first, first + buckets - 1))
        rows += buckets
        if s % 100 == 99:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            print(f"  built {s + 1}/{servers} servers ({rows:,} bucket rows)", flush=True)
    conn.execute("COMMIT")
    store.close()
    return rows


def time_open(path: Path, mode: str) -> float:
    """Seconds to open the store with the given integrity check."""
    began = time.perf_counter()
    MetricsStore(path, integrity_check=mode).close()
    return time.perf_counter() - began


def main() -> None:
    """Build, then time the three kinds of open."""
    quiet_library_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store.sqlite3"
        began = time.perf_counter()
        rows = build(path, args.servers, args.days)
        print(f"store: {args.servers} servers x {args.days} days = {rows:,} bucket rows, "
              f"{path.stat().st_size / 2**30:.2f} GiB, built in {time.perf_counter() - began:.0f} s")
        plain = time_open(path, "off")
        quick = time_open(path, "quick")
        full = time_open(path, "full")
        print(f"{'open':<22}{'seconds':>10}{'vs plain open':>16}")
        for name, seconds in (("no check", plain), ("quick_check (default)", quick), ("integrity_check", full)):
            print(f"{name:<22}{seconds:>10.2f}{seconds / max(plain, 1e-9):>15.0f}x")


if __name__ == "__main__":
    main()
