"""Disk cost of the metrics store per bucket row, extrapolated to 1,000 servers x 35 days of retention.

    python -m bench.bench_store_disk [--servers 200] [--days 2] [--roll-days 2] [--samples-per-bucket 1]

Feeds a simulated fleet (``FleetSimulator``: real value distributions, host names, offline gaps) through
``MetricsStore.add_records`` the way the daemon stores ``POST /feed`` batches: in time order, one batch per
5-minute bucket for the whole fleet, a stored forecast per server and bucket (``save_forecasts``, the
daemon's blob size), and ``trim`` every ``TRIM_EVERY_CYCLES`` buckets. Two phases, measured separately:

1. **fill**: ``--days`` of history, nothing old enough to delete yet (a store younger than its retention);
2. **steady state**: ``--roll-days`` more with a retention of ``--days`` for buckets and forecasts, so the
   oldest rows are deleted while new ones arrive (a store older than its retention, the usual case).

After each phase the write-ahead log is checkpointed (its size before that is reported: the daemon keeps
that file at its high-water mark) and SQLite's ``dbstat`` gives the bytes of every table and index. Bytes
per bucket row = (``buckets`` + its time index) / rows; the same for forecasts and duplicate-check keys.
The extrapolation multiplies those by what ``--target-servers`` x the retentions hold (every server
reporting every bucket: an upper bound, since offline buckets are not stored). SQLite runs with
``synchronous=OFF`` here: the file's layout does not depend on it, only the speed does.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common_utils import quiet_library_noise, setup_logging
from config import (
    DAEMON_STATE,
    FLOAT_METRICS,
    FORECAST_RETENTION_HOURS,
    GENERATOR,
    HORIZONS,
    INTEGER_METRICS,
    QUANTILE_LABELS,
    SAMPLING_INTERVAL_SECONDS,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    STORE,
    TARGET_METRICS,
    TRIM_EVERY_CYCLES,
)
from contract import NS_PER_BUCKET
from live_accuracy import scales_blob
from metrics_generator import FleetSimulator, fleet_from_total
from metrics_store import MetricsStore

logger = logging.getLogger("bench.bench_store_disk")

# What one stored forecast is: (targets, horizons, quantiles) float32 (forecast_engine's horizon_blob);
# once per cycle, the band multipliers (live_accuracy.scales_blob).
FORECAST_BLOB_BYTES = len(TARGET_METRICS) * len(HORIZONS) * len(QUANTILE_LABELS) * 4
SCALES_BLOB = scales_blob(np.ones((len(TARGET_METRICS), len(HORIZONS), 2)))
SIM_CHUNK_BUCKETS = STEPS_PER_DAY  # buckets simulated at a time


@dataclass
class Measure:
    """Bytes and rows of the store after one phase."""

    phase: str
    file_bytes: int
    wal_high_water_bytes: int
    page_size: int
    free_pages: int
    objects: dict[str, int]  # table or index -> bytes of its pages
    rows: dict[str, int]  # table -> rows
    quick_check_seconds: float  # the daemon's start-up check (STORE.integrity_check = "quick") of this file

    def per_row(self, table: str, index: str) -> float:
        """Bytes per row of a table, its index included."""
        return (self.objects.get(table, 0) + self.objects.get(index, 0)) / max(self.rows[table], 1)


def measure(store: MetricsStore, phase: str) -> Measure:
    """Checkpoint the write-ahead log and account for every page of the file."""
    path = store.path
    wal = Path(f"{path}-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    conn = store._writer  # the bench owns the store: no daemon, no other connection
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    objects = {name: int(size) for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
    rows = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("buckets", "forecasts", "sample_keys", "servers")}
    began = time.perf_counter()
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    checked = time.perf_counter() - began
    return Measure(phase, path.stat().st_size, wal_bytes, page_size, free, objects, rows, checked)


def bucket_batches(sim: FleetSimulator, n_buckets: int, samples_per_bucket: int, suffix: str):  # noqa: ANN201
    """Yield (bucket, records) in time order: the fleet's samples of one bucket, as validated feed records."""
    done = 0
    while done < n_buckets:
        steps = min(SIM_CHUNK_BUCKETS, n_buckets - done)
        frame = sim.chunk_to_table(sim.advance(steps), offline_mode="sparse").to_pandas()
        for column in ("server_name", "profile", "state"):
            frame[column] = frame[column].astype(str)
        if suffix:
            frame["server_name"] = frame["server_name"] + suffix
        for name in FLOAT_METRICS:
            frame[name] = frame[name].astype(float).round(GENERATOR.float_decimals)
        for name in INTEGER_METRICS:
            frame[name] = frame[name].astype(int)
        stamp = frame.pop("timestamp").dt.as_unit("ns").astype("int64").to_numpy()
        frame["bucket"] = stamp // NS_PER_BUCKET
        for bucket, group in frame.groupby("bucket", sort=True):
            base = group.drop(columns="bucket").to_dict(orient="records")
            records = []
            for k in range(samples_per_bucket):  # a faster agent: the same values, spread over the bucket
                offset = int(bucket) * NS_PER_BUCKET + k * (SAMPLING_INTERVAL_SECONDS * 10**9 // samples_per_bucket)
                records += [{**r, "ts_ns": offset} for r in base]
            yield int(bucket), records
        done += steps


def feed(store: MetricsStore, batches, retention_buckets: int | None, rng: np.random.Generator,  # noqa: ANN001
         cycle: list[int]) -> tuple[int, int]:
    """Store every batch and a forecast per server, trimming like the daemon; (records, buckets) fed."""
    records = buckets = 0
    for bucket, batch in batches:
        store.add_records(batch)
        names = sorted({r["server_name"] for r in batch})
        blobs = rng.random((len(names), FORECAST_BLOB_BYTES // 4), dtype=np.float32)
        store.save_forecasts(bucket, {name: blobs[i].tobytes() for i, name in enumerate(names)}, SCALES_BLOB)
        cycle[0] += 1
        if cycle[0] % TRIM_EVERY_CYCLES == 0:
            cutoff = bucket - retention_buckets if retention_buckets is not None else 0
            store.trim(cutoff, cutoff, bucket)  # with no retention: only the duplicate-check keys go
        records += len(batch)
        buckets += 1
    return records, buckets


def main() -> None:
    """Build the store in two phases, measure each, print the table and the extrapolation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200, help="simulated fleet size (default %(default)s)")
    parser.add_argument("--days", type=float, default=3.0, help="fill phase; also the retention of the roll phase")
    parser.add_argument("--roll-days", type=float, default=3.0, help="steady-state phase (0 skips it)")
    parser.add_argument("--samples-per-bucket", type=int, default=1,
                        help="samples each server sends per 5-minute bucket (1: a 5-minute poll; 60: a 5 s agent)")
    parser.add_argument("--name-suffix", default="", help="appended to every host name, e.g. .prod.example.com")
    parser.add_argument("--target-servers", type=int, default=1000)
    parser.add_argument("--target-days", type=int, default=DAEMON_STATE.retention_days,
                        help="bucket retention to extrapolate to")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temp dir)")
    args = parser.parse_args()
    setup_logging()
    quiet_library_noise()
    rng = np.random.default_rng(args.seed)
    sim = FleetSimulator(fleet=fleet_from_total(args.servers), seed=args.seed)
    fill_buckets = int(args.days * STEPS_PER_DAY)
    roll_buckets = int(args.roll_days * STEPS_PER_DAY)
    measures: list[Measure] = []
    fed = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = MetricsStore(Path(tmp) / "store.sqlite3", synchronous="OFF", integrity_check="off")
        cycle = [0]
        began = time.perf_counter()
        fed["fill"] = feed(store, bucket_batches(sim, fill_buckets, args.samples_per_bucket, args.name_suffix),
                           None, rng, cycle)
        logger.info("fill phase: %d records, %d buckets in %.1f s", *fed["fill"], time.perf_counter() - began)
        measures.append(measure(store, f"fill ({args.days:g} d)"))
        if roll_buckets:
            began = time.perf_counter()
            fed["roll"] = feed(store, bucket_batches(sim, roll_buckets, args.samples_per_bucket, args.name_suffix),
                               fill_buckets, rng, cycle)
            logger.info("steady-state phase: %d records, %d buckets in %.1f s", *fed["roll"],
                        time.perf_counter() - began)
            measures.append(measure(store, f"steady ({args.roll_days:g} d more, {args.days:g} d kept)"))
        store.close()

    names = sorted({n for n in sim.server_names})
    name_chars = float(np.mean([len(n) + len(args.name_suffix) for n in names]))
    print(f"\nmeasured: {args.servers} simulated servers, names {name_chars:.1f} characters on average, "
          f"{args.samples_per_bucket} sample(s) per server and bucket, one batch per bucket, a forecast per server "
          f"and bucket ({FORECAST_BLOB_BYTES}-byte blob), trim every {TRIM_EVERY_CYCLES} buckets; page size "
          f"{measures[0].page_size} B")
    print(f"{'phase':<30}{'bucket rows':>13}{'B/bucket row':>14}{'forecast rows':>15}{'B/forecast':>12}"
          f"{'dedupe keys':>13}{'B/key':>8}{'file MB':>10}{'WAL peak MB':>13}{'free pages':>12}")
    for m in measures:
        print(f"{m.phase:<30}{m.rows['buckets']:>13,}{m.per_row('buckets', 'buckets_by_time'):>14.1f}"
              f"{m.rows['forecasts']:>15,}{m.per_row('forecasts', 'forecasts_by_time'):>12.1f}"
              f"{m.rows['sample_keys']:>13,}{m.per_row('sample_keys', 'keys_by_time'):>8.1f}"
              f"{m.file_bytes / 1e6:>10.1f}{m.wal_high_water_bytes / 1e6:>13.1f}{m.free_pages:>12,}")
    last = measures[-1]
    print("  (bytes per row include the table's time index; per object in the last phase: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(last.objects.items(), key=lambda kv: -kv[1])[:7])
          + ")")

    servers = args.target_servers
    bucket_rows = servers * args.target_days * STEPS_PER_DAY
    forecast_rows = servers * FORECAST_RETENTION_HOURS * STEPS_PER_HOUR
    # Keys live STORE.dedupe_hours, and a trim runs every TRIM_EVERY_CYCLES buckets: at most that much more.
    key_rows = servers * args.samples_per_bucket * (STORE.dedupe_hours * STEPS_PER_HOUR + TRIM_EVERY_CYCLES)
    parts = [
        (f"buckets, {args.target_days} days", bucket_rows, last.per_row("buckets", "buckets_by_time")),
        (f"forecasts, {FORECAST_RETENTION_HOURS // 24} days", forecast_rows,
         last.per_row("forecasts", "forecasts_by_time")),
        (f"duplicate-check keys, <= {STORE.dedupe_hours} h + {TRIM_EVERY_CYCLES} buckets", key_rows,
         last.per_row("sample_keys", "keys_by_time")),
    ]
    print(f"\nextrapolated to {servers:,} servers (from the '{last.phase}' bytes per row; every server reporting "
          f"every bucket)")
    print(f"{'part':<45}{'rows':>14}{'B/row':>8}{'GB':>9}")
    total = 0.0
    for label, rows, per_row in parts:
        total += rows * per_row
        print(f"{label:<45}{rows:>14,}{per_row:>8.1f}{rows * per_row / 1e9:>9.2f}")
    print(f"{'total (plus the WAL peak measured above)':<45}{'':>14}{'':>8}{total / 1e9:>9.2f}")
    per_day = servers * STEPS_PER_DAY * last.per_row("buckets", "buckets_by_time")
    print(f"each further day of bucket retention: {per_day / 1e6:.0f} MB per {servers:,} servers")
    check_rate = last.file_bytes / max(last.quick_check_seconds, 1e-9)
    print(f"start-up quick_check: {last.quick_check_seconds:.2f} s for this {last.file_bytes / 1e6:.1f} MB file "
          f"(warm page cache), so about {total / check_rate:.0f} s for {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
