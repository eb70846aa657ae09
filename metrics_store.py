"""Durable store of live metrics, aggregated into 5-minute buckets (SQLite, WAL).

Records arrive at any cadence: a 5-second agent or a 5-minute poll. Each record belongs to
the bucket that contains its timestamp, and a bucket's value is (Docs/API_REFERENCE.md,
"Bucketing rule"):

* gauges (percentages, MB/s, load average): the mean of the bucket's samples;
* counts (``back_close_wait``, ``front_close_wait``) and ``uptime_days``: the latest sample;
* ``state``: the most severe state any sample reported (state_rules.STATE_PRECEDENCE);
* a bucket without samples: the contract's offline vector, filled in when read.

The same aggregates are kept in SQLite and in memory (:class:`FleetWindows`), merged by the
same rule, so a restarted daemon rebuilds exactly the windows it had. A batch is committed
(``synchronous=FULL``) before the request is answered. Exact duplicate samples (same
server, same timestamp) within ``STORE.dedupe_hours`` are ignored, so a client may retry a batch.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common_utils import atomic_write_json, isoformat_utc
from config import FLOAT_METRICS, INTEGER_METRICS, LINBORG_METRICS, STEPS_PER_HOUR, STORE, STORE_DOC
from contract import NS_PER_BUCKET, bucket_of_ns, fill_offline
from errors import EXIT_RUNTIME, EXIT_USAGE, ToolkitError
from state_rules import STATE_PRECEDENCE

logger = logging.getLogger(__name__)

GAUGES = list(FLOAT_METRICS)  # averaged over the bucket
COUNTS = list(INTEGER_METRICS)  # latest sample wins
_RANK = {state: rank for rank, state in enumerate(STATE_PRECEDENCE)}  # 0 = most severe
_METRIC_POS = {name: i for i, name in enumerate(LINBORG_METRICS)}
_GAUGE_POS = [_METRIC_POS[m] for m in GAUGES]
_COUNT_POS = [_METRIC_POS[m] for m in COUNTS]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS buckets (
    server TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
    {", ".join(f"sum_{m} REAL NOT NULL" for m in GAUGES)},
    last_ts INTEGER NOT NULL,
    {", ".join(f"last_{m} INTEGER NOT NULL" for m in COUNTS)},
    state_rank INTEGER NOT NULL,
    PRIMARY KEY (server, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS servers (
    server TEXT PRIMARY KEY, profile TEXT NOT NULL, first_bucket INTEGER NOT NULL,
    last_bucket INTEGER NOT NULL, first_seen TEXT NOT NULL DEFAULT (datetime('now'))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample_keys (
    server TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (server, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forecasts (
    server TEXT NOT NULL, origin INTEGER NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (server, origin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantined_buckets AS SELECT * FROM buckets WHERE 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daemon_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forecast_scales (origin INTEGER PRIMARY KEY, payload BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accuracy_bins (
    hour INTEGER NOT NULL, grp TEXT NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (hour, grp)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_by_time ON buckets(bucket);
CREATE INDEX IF NOT EXISTS forecasts_by_time ON forecasts(origin);
CREATE INDEX IF NOT EXISTS keys_by_time ON sample_keys(ts);
"""

_UPSERT_BUCKET = f"""
INSERT INTO buckets (server, bucket, n, {", ".join(f"sum_{m}" for m in GAUGES)}, last_ts,
                     {", ".join(f"last_{m}" for m in COUNTS)}, state_rank)
VALUES (?, ?, ?, {", ".join("?" for _ in GAUGES)}, ?, {", ".join("?" for _ in COUNTS)}, ?)
ON CONFLICT (server, bucket) DO UPDATE SET
    n = n + excluded.n,
    {", ".join(f"sum_{m} = sum_{m} + excluded.sum_{m}" for m in GAUGES)},
    {", ".join(f"last_{m} = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_{m} ELSE last_{m} END"
               for m in COUNTS)},
    last_ts = MAX(last_ts, excluded.last_ts),
    state_rank = MIN(state_rank, excluded.state_rank)
"""

_KEYS_PER_STATEMENT = 16_000  # (server, ts) pairs per INSERT ... RETURNING: 32,000 of SQLite's 32,766 variables

_UPSERT_SERVER = """
INSERT INTO servers (server, profile, first_bucket, last_bucket) VALUES (?, ?, ?, ?)
ON CONFLICT (server) DO UPDATE SET
    first_bucket = MIN(first_bucket, excluded.first_bucket),
    last_bucket = MAX(last_bucket, excluded.last_bucket)
"""

@dataclass
class Aggregate:
    """One (server, bucket)'s aggregate from a batch, in the store's merge form."""

    server: str
    bucket: int
    n: int
    sums: np.ndarray  # (len(GAUGES),)
    last_ts: int
    last_counts: np.ndarray  # (len(COUNTS),)
    state_rank: int

    def row(self) -> tuple[Any, ...]:
        """Parameters for the upsert statement."""
        return (self.server, self.bucket, self.n, *map(float, self.sums), self.last_ts,
                *map(int, self.last_counts), self.state_rank)


def aggregate(records: list[dict[str, Any]]) -> list[Aggregate]:
    """Fold validated records (with ``ts_ns``) into per-(server, bucket) aggregates."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["server_name"], bucket_of_ns(record["ts_ns"]))].append(record)
    out = []
    for (server, bucket), items in groups.items():
        sums = np.array([sum(r[m] for r in items) for m in GAUGES], dtype=np.float64)
        latest = max(items, key=lambda r: r["ts_ns"])
        out.append(Aggregate(server=server, bucket=bucket, n=len(items), sums=sums, last_ts=latest["ts_ns"],
                             last_counts=np.array([latest[m] for m in COUNTS], dtype=np.int64),
                             state_rank=min(_RANK[r["state"]] for r in items)))
    return out


class ServerWindow:
    """A ring of the most recent buckets of one server, holding the same aggregates as SQLite.

    The ring starts small (``STORE.warmup_ring_buckets``) and doubles whenever a bucket would overwrite one
    still within reach, up to ``capacity`` (``STORE.memory_buckets``): a server that has sent one sample costs
    a few KiB, not a full ring, so a flood of new names cannot buy memory by the name.
    """

    def __init__(self, profile: str, capacity: int = STORE.memory_buckets,
                 initial: int = STORE.warmup_ring_buckets) -> None:
        self.profile = profile
        self.max_capacity = capacity
        self.first_bucket: int | None = None
        self.last_bucket: int | None = None
        self._allocate(min(capacity, max(1, initial)))

    def _allocate(self, size: int) -> None:
        self.capacity = size
        # The narrowest dtypes that hold every value exactly (117 bytes a bucket, was 144): bucket numbers
        # (~5.9 million in 2026) and sample counts in int32, counts in int32 (the feed caps them at
        # FEED_PLAUSIBLE_MAX, 10 million), state ranks in int8; sums stay float64 (SQLite's REAL) and
        # timestamps int64 nanoseconds, so the windows are the same numbers as before.
        self.slot_bucket = np.full(size, -1, dtype=np.int32)
        self.n = np.zeros(size, dtype=np.int32)
        self.sums = np.zeros((size, len(GAUGES)))
        self.last_ts = np.zeros(size, dtype=np.int64)
        self.last_counts = np.zeros((size, len(COUNTS)), dtype=np.int32)
        self.state_rank = np.zeros(size, dtype=np.int8)

    def _grow(self) -> None:
        """Double the ring (up to the cap), each held bucket moved to its slot in the larger one."""
        held = np.flatnonzero(self.slot_bucket >= 0)
        old = (self.slot_bucket[held], self.n[held], self.sums[held], self.last_ts[held], self.last_counts[held],
               self.state_rank[held])
        self._allocate(min(self.max_capacity, self.capacity * 2))
        slots = old[0] % self.capacity
        (self.slot_bucket[slots], self.n[slots], self.sums[slots], self.last_ts[slots], self.last_counts[slots],
         self.state_rank[slots]) = old

    def merge(self, agg: Aggregate) -> None:
        """Merge an aggregate exactly as the SQL upsert does."""
        slot = agg.bucket % self.capacity
        while (self.capacity < self.max_capacity and self.slot_bucket[slot] >= 0
               and self.slot_bucket[slot] != agg.bucket
               and abs(int(self.slot_bucket[slot]) - agg.bucket) < self.max_capacity):
            self._grow()  # the slot holds another bucket the full ring would still keep
            slot = agg.bucket % self.capacity
        if self.slot_bucket[slot] != agg.bucket:
            if self.slot_bucket[slot] > agg.bucket:
                return  # older than the ring holds (still stored in SQLite)
            self.slot_bucket[slot] = agg.bucket
            self.n[slot], self.sums[slot], self.last_ts[slot] = 0, 0.0, -1
            self.state_rank[slot] = len(STATE_PRECEDENCE)
        self.n[slot] += agg.n
        self.sums[slot] += agg.sums
        if agg.last_ts >= self.last_ts[slot]:
            self.last_counts[slot] = agg.last_counts
        self.last_ts[slot] = max(self.last_ts[slot], agg.last_ts)
        self.state_rank[slot] = min(self.state_rank[slot], agg.state_rank)
        self.first_bucket = agg.bucket if self.first_bucket is None else min(self.first_bucket, agg.bucket)
        self.last_bucket = agg.bucket if self.last_bucket is None else max(self.last_bucket, agg.bucket)

    def window(self, end_bucket: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Buckets ``end-length+1 .. end``: (metrics (length, 14), state ranks (length,), has_sample (length,)).

        States come as ranks in ``STATE_PRECEDENCE`` (0 = most severe).

        Buckets without samples get the contract's offline vector (disk and uptime carried
        forward, or back from the first sample when the window starts with a gap).
        """
        buckets = np.arange(end_bucket - length + 1, end_bucket + 1)
        slots = buckets % self.capacity
        present = self.slot_bucket[slots] == buckets
        values = np.zeros((length, len(LINBORG_METRICS)))
        counts = np.maximum(self.n[slots], 1)[:, None]
        values[:, _GAUGE_POS] = self.sums[slots] / counts
        values[:, _COUNT_POS] = self.last_counts[slots]
        states = np.clip(self.state_rank[slots], 0, len(STATE_PRECEDENCE) - 1)
        if not present.all():
            filled = fill_offline({name: values[:, i] for i, name in enumerate(LINBORG_METRICS)}, present)
            values = np.stack([filled[name] for name in LINBORG_METRICS], axis=1)
            states[~present] = _RANK["offline"]
        return values, states, present

    def current(self, bucket: int) -> np.ndarray | None:
        """The 14 values of one bucket, or None when it has no samples."""
        slot = bucket % self.capacity
        if self.slot_bucket[slot] != bucket:
            return None
        values = np.zeros(len(LINBORG_METRICS))
        values[_GAUGE_POS] = self.sums[slot] / max(self.n[slot], 1)
        values[_COUNT_POS] = self.last_counts[slot]
        return values

    def last_sample_bucket(self) -> int | None:
        """Newest bucket that received a sample."""
        return self.last_bucket


class FleetWindows:
    """In-memory windows for every server, fed by the same aggregates as the store."""

    def __init__(self, capacity: int = STORE.memory_buckets) -> None:
        self.capacity = capacity
        self.servers: dict[str, ServerWindow] = {}
        self._newest: int | None = None

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], capacity: int = STORE.memory_buckets) -> FleetWindows:
        """Windows holding contract records (``timestamp`` as ISO text or a timestamp), as a fed daemon would."""
        fleet = cls(capacity)
        stamped = [{**r, "ts_ns": int(pd.Timestamp(r["timestamp"]).value)} for r in records]
        fleet.merge(aggregate(stamped), {r["server_name"]: r["profile"] for r in stamped})
        return fleet

    def merge(self, aggregates: list[Aggregate], profiles: dict[str, str]) -> None:
        """Merge aggregates (``profiles``: server -> profile for servers not seen yet)."""
        for agg in aggregates:
            window = self.servers.get(agg.server)
            if window is None:
                window = self.servers[agg.server] = ServerWindow(profiles[agg.server], self.capacity)
            window.merge(agg)
            if self._newest is None or agg.bucket > self._newest:
                self._newest = agg.bucket

    def release(self, before_bucket: int) -> list[str]:
        """Forget the servers whose newest sample is older than ``before_bucket``; their names."""
        gone = [name for name, w in self.servers.items() if w.last_bucket is None or w.last_bucket < before_bucket]
        for name in gone:
            del self.servers[name]
        if gone:
            buckets = [w.last_bucket for w in self.servers.values() if w.last_bucket is not None]
            self._newest = max(buckets) if buckets else None
        return gone

    def memory_bytes(self) -> int:
        """Bytes held by the rings' arrays (for /status and the memory tests)."""
        return sum(w.slot_bucket.nbytes + w.n.nbytes + w.sums.nbytes + w.last_ts.nbytes + w.last_counts.nbytes
                   + w.state_rank.nbytes for w in self.servers.values())

    @property
    def newest_bucket(self) -> int | None:
        """Newest bucket any server has reported."""
        return self._newest


class StoreError(ToolkitError, RuntimeError):
    """The store cannot be used as it is; the message says what, why, how to fix it, and where to read.

    Exit 3 (damaged, disk full: the environment); a store path that is wrong exits 2 (``exit_code=``)."""

    exit_code = EXIT_RUNTIME


class StoreFullError(StoreError):
    """The disk holding the store is full: nothing of the batch was stored."""


def inspect_wal(path: Path) -> str | None:
    """What an unclean shutdown left in the write-ahead log, when part of it cannot be recovered.

    SQLite replays only complete, committed frames of ``<store>-wal`` and drops the rest without a
    word. This reads the WAL's layout (a 32-byte header, then frames of a 24-byte header and a page)
    before SQLite does, and describes a log that is cut short or ends inside a transaction; None
    when there is no log or every frame is complete and committed.
    """
    wal = Path(f"{path}-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return None
    data = wal.read_bytes()
    if len(data) < STORE.wal_header_bytes or int.from_bytes(data[:4], "big") not in STORE.wal_magic:
        return (f"the write-ahead log {wal} ({len(data)} bytes) has no valid header: every transaction "
                f"it held since the last checkpoint is lost")
    page_size = int.from_bytes(data[8:12], "big")
    frame_bytes = STORE.wal_frame_header_bytes + page_size
    frames, partial = divmod(len(data) - STORE.wal_header_bytes, frame_bytes)
    last_commit = max((k for k in range(frames)
                       if int.from_bytes(data[STORE.wal_header_bytes + k * frame_bytes + 4:
                                              STORE.wal_header_bytes + k * frame_bytes + 8], "big")), default=-1)
    if partial or last_commit < frames - 1:
        return (f"the write-ahead log {wal} ends {'inside a frame' if partial else 'inside a transaction'} "
                f"({frames} complete frames, {frames - 1 - last_commit} after the last commit, {partial} bytes "
                f"of a cut frame): the transactions after frame {last_commit + 1} are lost")
    return None


def _unusable(path: Path, problem: str) -> StoreError:
    return StoreError(
        f"the metrics store {path} {problem}",
        "the daemon keeps every acknowledged record there and rebuilds its windows from it; serving from a "
        "damaged store would lose or invent history",
        "move the file (and its -wal/-shm files) aside and start again with an empty store, or restore it from "
        "a backup; --store PATH chooses another file", STORE_DOC)


class MetricsStore:
    """SQLite persistence (WAL). One writer at a time; reads use their own connections.

    Opening checks the file (``STORE.integrity_check``) and raises :class:`StoreError` with
    what/why/fix when it is not a usable store, instead of serving from a damaged one.
    """

    def __init__(self, path: str | Path, synchronous: str = STORE.sqlite_synchronous,
                 integrity_check: str = STORE.integrity_check) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise _unusable(self.path, "is a directory, not a file")
        self.ledger_path = Path(f"{self.path}{STORE.ledger_suffix}")
        wal_damage = inspect_wal(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._synchronous = synchronous
        self._readers: list[sqlite3.Connection] = []  # one per reading thread, all closed by close()
        try:
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA)
            if integrity_check != "off":
                began = time.perf_counter()
                pragma = "quick_check" if integrity_check == "quick" else "integrity_check"
                problems = [row[0] for row in self._writer.execute(f"PRAGMA {pragma}")]
                if problems != ["ok"]:
                    raise _unusable(self.path, f"failed SQLite's {pragma}: {'; '.join(problems[:3])}")
                logger.info("store %s passed SQLite's %s in %.2f s", self.path, pragma, time.perf_counter() - began)
            self.samples = self._stored_sample_count()
        except sqlite3.DatabaseError as exc:
            raise _unusable(self.path, f"is not a readable SQLite database ({exc})") from None
        self._check_ledger(wal_damage)

    def _stored_sample_count(self) -> int:
        """Samples in the store: a counter kept in the same transactions as the buckets (O(1) to read)."""
        row = self._writer.execute("SELECT value FROM meta WHERE key = 'samples'").fetchone()
        if row is not None:
            return int(row[0])
        count = self.count_samples()  # a store from before the counter: count once
        self._writer.execute("INSERT INTO meta (key, value) VALUES ('samples', ?)", (count,))
        return count

    def _add_samples(self, conn: sqlite3.Connection, delta: int) -> None:
        """Move the sample counter by ``delta`` inside the caller's transaction."""
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'samples'", (delta,))

    def _check_ledger(self, wal_damage: str | None) -> None:
        """Say what an unclean shutdown lost: the last run's ledger against what the store holds now."""
        try:
            ledger = json.loads(self.ledger_path.read_text(encoding="utf-8")) if self.ledger_path.exists() else {}
        except (OSError, ValueError):
            ledger = {}
        acknowledged = ledger.get("samples") if isinstance(ledger.get("samples"), int) else None
        if acknowledged is not None and acknowledged > self.samples:
            logger.error("the store %s holds %d samples, but the last run had %d acknowledged and kept by %s: "
                         "%d samples were lost%s. Restore %s from a backup if they matter (%s)", self.path,
                         self.samples, acknowledged, ledger.get("written_at", "?"), acknowledged - self.samples,
                         f" ({wal_damage})" if wal_damage else "", self.path, STORE_DOC)
        elif wal_damage:
            logger.error("%s; the store holds %d samples (%s)", wal_damage, self.samples, STORE_DOC)

    def write_ledger(self) -> None:
        """Record how many samples the store holds now (the daemon does this every cycle)."""
        atomic_write_json(self.ledger_path, {"samples": self.samples, "written_at": isoformat_utc(pd.Timestamp.now(
            tz="UTC"))})

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA journal_size_limit={STORE.sqlite_journal_size_limit_bytes}")  # the WAL shrinks back
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection; the last one to close checkpoints the write-ahead log into the file."""
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()

    # ------------------------------------------------------------------ writes
    def add_records(self, records: list[dict[str, Any]]) -> tuple[list[int], list[int], list[Aggregate]]:
        """Durably add validated records (each with ``ts_ns``, ``server_name``, ``profile``).

        Returns (indices stored, indices ignored as exact duplicates, the aggregates written).
        The transaction is committed before this returns.
        """
        with self._lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Duplicate detection in SQLite (not in memory): a key is fresh when this insert made it.
                    keys = [(r["server_name"], r["ts_ns"]) for r in records]
                    fresh_keys: set[tuple[str, int]] = set()
                    for a in range(0, len(keys), _KEYS_PER_STATEMENT):
                        chunk = keys[a:a + _KEYS_PER_STATEMENT]
                        sql = ("INSERT INTO sample_keys (server, ts) VALUES " + ",".join(["(?, ?)"] * len(chunk))
                               + " ON CONFLICT DO NOTHING RETURNING server, ts")
                        fresh_keys.update(conn.execute(sql, [v for key in chunk for v in key]).fetchall())
                    stored, duplicates, fresh = [], [], []
                    for i, (record, key) in enumerate(zip(records, keys, strict=True)):
                        if key in fresh_keys:
                            fresh_keys.discard(key)  # a second copy within the batch is a duplicate
                            stored.append(i)
                            fresh.append(record)
                        else:
                            duplicates.append(i)
                    aggregates = aggregate(fresh)
                    if fresh:
                        first_bucket: dict[str, int] = {}
                        last_bucket: dict[str, int] = {}
                        profiles: dict[str, str] = {}
                        for agg in aggregates:
                            first_bucket[agg.server] = min(first_bucket.get(agg.server, agg.bucket), agg.bucket)
                            last_bucket[agg.server] = max(last_bucket.get(agg.server, agg.bucket), agg.bucket)
                        for record in fresh:
                            profiles.setdefault(record["server_name"], record["profile"])
                        conn.executemany(_UPSERT_BUCKET, [agg.row() for agg in aggregates])
                        conn.executemany(_UPSERT_SERVER, [(s, profiles[s], first_bucket[s], last_bucket[s])
                                                          for s in first_bucket])
                        self._add_samples(conn, len(fresh))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                    raise StoreFullError(
                        f"the disk holding {self.path} is full ({exc}); nothing of this batch was stored. "
                        f"Fix: free space on that disk (the feed resumes by itself) or move the store. "
                        f"See {STORE_DOC}.") from None
                raise
            self.samples += len(fresh)
            return stored, duplicates, aggregates

    def save_forecasts(self, origin: int, payloads: dict[str, bytes], scales: bytes | None = None) -> None:
        """Store one cycle's horizon forecasts (server -> float32 blob) and, once for the whole cycle,
        the band multipliers they were served with (``live_accuracy``)."""
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO forecasts (server, origin, payload) VALUES (?, ?, ?)",
                             [(server, origin, blob) for server, blob in payloads.items()])
            if scales is not None:
                conn.execute("INSERT OR REPLACE INTO forecast_scales (origin, payload) VALUES (?, ?)", (origin, scales))
            conn.execute("COMMIT")

    def trim(self, bucket_cutoff: int, forecast_cutoff: int, newest_bucket: int) -> dict[str, int]:
        """Delete buckets, forecasts and duplicate-check keys older than the cutoffs."""
        key_cutoff_ns = (newest_bucket - STORE.dedupe_hours * STEPS_PER_HOUR) * NS_PER_BUCKET
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            trimmed = conn.execute("SELECT COALESCE(SUM(n), 0) FROM buckets WHERE bucket < ?",
                                   (bucket_cutoff,)).fetchone()[0]
            removed = {
                "buckets": conn.execute("DELETE FROM buckets WHERE bucket < ?", (bucket_cutoff,)).rowcount,
                "forecasts": conn.execute("DELETE FROM forecasts WHERE origin < ?", (forecast_cutoff,)).rowcount,
                "forecast_scales": conn.execute("DELETE FROM forecast_scales WHERE origin < ?",
                                                (forecast_cutoff,)).rowcount,
                "sample_keys": conn.execute("DELETE FROM sample_keys WHERE ts < ?", (key_cutoff_ns,)).rowcount,
            }
            conn.execute("DELETE FROM servers WHERE last_bucket < ?", (bucket_cutoff,))
            self._add_samples(conn, -int(trimmed))
            conn.execute("COMMIT")
            self.samples -= int(trimmed)
        return removed

    def quarantine_after(self, last_bucket: int) -> int:
        """Move buckets stamped after ``last_bucket`` aside (table ``quarantined_buckets``); their count.

        A store written by an older version may hold records from the future (a client's
        clock far ahead). They must not set the fleet's clock, and deleting good history to
        make room for them is worse: so they leave the live tables, kept for inspection.
        """
        last_key_ns = (last_bucket + 1) * NS_PER_BUCKET
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                moved = conn.execute("INSERT INTO quarantined_buckets SELECT * FROM buckets WHERE bucket > ?",
                                     (last_bucket,)).rowcount
                if moved:
                    future = int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM buckets WHERE bucket > ?",
                                              (last_bucket,)).fetchone()[0])
                    self._add_samples(conn, -future)
                    self.samples -= future
                    conn.execute("DELETE FROM buckets WHERE bucket > ?", (last_bucket,))
                    conn.execute("DELETE FROM forecasts WHERE origin > ?", (last_bucket,))
                    conn.execute("DELETE FROM sample_keys WHERE ts >= ?", (last_key_ns,))
                    conn.execute("DELETE FROM servers WHERE server NOT IN (SELECT DISTINCT server FROM buckets)")
                    conn.execute("UPDATE servers SET last_bucket = (SELECT MAX(bucket) FROM buckets b "
                                 "WHERE b.server = servers.server)")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return moved

    # ------------------------------------------------------------------ reads
    def load_windows(self, capacity: int = STORE.memory_buckets) -> FleetWindows:
        """Rebuild the in-memory windows from disk (duplicate-check keys stay in SQLite)."""
        fleet = FleetWindows(capacity)
        conn = self._reader()
        profiles = dict(conn.execute("SELECT server, profile FROM servers"))
        newest = conn.execute("SELECT MAX(bucket) FROM buckets").fetchone()[0]
        if newest is None:
            return fleet
        columns = ["server", "bucket", "n", *[f"sum_{m}" for m in GAUGES], "last_ts",
                   *[f"last_{m}" for m in COUNTS], "state_rank"]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM buckets WHERE bucket > ? ORDER BY bucket",
                            (newest - capacity,))
        n_g, n_c = len(GAUGES), len(COUNTS)
        for row in rows:
            agg = Aggregate(server=row[0], bucket=row[1], n=row[2], sums=np.array(row[3:3 + n_g], dtype=float),
                            last_ts=row[3 + n_g], last_counts=np.array(row[4 + n_g:4 + n_g + n_c], dtype=np.int64),
                            state_rank=row[4 + n_g + n_c])
            fleet.merge([agg], profiles)
        for server, first in conn.execute("SELECT server, first_bucket FROM servers"):
            if server in fleet.servers:
                fleet.servers[server].first_bucket = first  # history may be longer than the ring
        return fleet

    def bucket_history(self, server: str, first_bucket: int) -> list[tuple[Any, ...]]:
        """Aggregated buckets of one server from ``first_bucket`` on (for the history endpoint)."""
        columns = ["bucket", "n", *[f"sum_{m}" for m in GAUGES], *[f"last_{m}" for m in COUNTS], "state_rank"]
        return self._reader().execute(
            f"SELECT {', '.join(columns)} FROM buckets WHERE server = ? AND bucket >= ? ORDER BY bucket",
            (server, first_bucket)).fetchall()

    def forecast_history(self, server: str, first_origin: int) -> list[tuple[int, bytes]]:
        """Stored horizon forecasts of one server from ``first_origin`` on."""
        return self._reader().execute(
            "SELECT origin, payload FROM forecasts WHERE server = ? AND origin >= ? ORDER BY origin",
            (server, first_origin)).fetchall()

    def forecasts_at(self, origin: int) -> list[tuple[str, bytes]]:
        """Every server's stored horizon forecast made at ``origin`` (what live accuracy scores)."""
        return self._reader().execute("SELECT server, payload FROM forecasts WHERE origin = ?",
                                      (origin,)).fetchall()

    def execute_script(self, script: str) -> None:
        """Run DDL for a table another module owns (CREATE ... IF NOT EXISTS)."""
        with self._lock:
            self._writer.executescript(script)

    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """One write statement over ``rows`` in one transaction; the rows changed."""
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = conn.executemany(sql, rows).rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return int(changed)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read on this thread's reader connection."""
        return self._reader().execute(sql, params).fetchall()

    def scales_at(self, origin: int) -> bytes | None:
        """The band multipliers the forecasts made at ``origin`` were served with, or None."""
        row = self._reader().execute("SELECT payload FROM forecast_scales WHERE origin = ?", (origin,)).fetchone()
        return row[0] if row else None

    def read_state(self, key: str) -> str | None:
        """A value the daemon keeps across restarts (JSON text), or None."""
        row = self._reader().execute("SELECT value FROM daemon_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def save_accuracy(self, state: dict[str, str], bins: dict[tuple[int, str], str],
                      drop_before_hour: int | None = None, clear: bool = False) -> None:
        """One transaction: daemon state values, accuracy bins (hour, group) -> JSON, old bins dropped.

        ``clear`` first deletes every bin (a new model starts its accuracy afresh).
        """
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            if clear:
                conn.execute("DELETE FROM accuracy_bins")
            conn.executemany("INSERT OR REPLACE INTO daemon_state (key, value) VALUES (?, ?)", list(state.items()))
            conn.executemany("INSERT OR REPLACE INTO accuracy_bins (hour, grp, payload) VALUES (?, ?, ?)",
                             [(hour, grp, payload) for (hour, grp), payload in bins.items()])
            if drop_before_hour is not None:
                conn.execute("DELETE FROM accuracy_bins WHERE hour < ?", (drop_before_hour,))
            conn.execute("COMMIT")

    def load_accuracy_bins(self) -> list[tuple[int, str, str]]:
        """Every stored accuracy bin: (hour, group, JSON payload)."""
        return self._reader().execute("SELECT hour, grp, payload FROM accuracy_bins ORDER BY hour").fetchall()

    def count_samples(self) -> int:
        """Total samples aggregated into stored buckets."""
        return int(self._reader().execute("SELECT COALESCE(SUM(n), 0) FROM buckets").fetchone()[0])


class StoreReader:
    """Read-only access to a store's buckets, for ``main.py export`` (store_export.py).

    Opens the file in SQLite's read-only mode, so it may run beside a daemon that is writing: nothing is
    written, and none of :class:`MetricsStore`'s start-up work runs (schema, integrity check, the ledger
    and write-ahead-log loss checks, which are the daemon's to report). Reads inside :meth:`snapshot`
    see one consistent state of the store. Raises :class:`StoreError` (what, why, fix) when the path
    is missing, a directory, not SQLite, or a SQLite file without the store's tables.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(
                f"the metrics store {self.path} does not exist", "the export reads the buckets a daemon stored there",
                "pass --store with the file the daemon runs with (its --store; default data/metrics_store.sqlite3)",
                STORE_DOC, exit_code=EXIT_USAGE)
        if self.path.is_dir():
            raise self._not_a_store("is a directory, not a file")
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                         isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA busy_timeout=30000")
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise self._not_a_store(f"is not a readable SQLite database ({exc})") from None
        if not {"buckets", "servers"} <= tables:
            self._conn.close()
            raise self._not_a_store(f"is a SQLite database without the store's tables (it has {sorted(tables)[:8]})")

    def _not_a_store(self, problem: str) -> StoreError:
        return StoreError(
            f"{self.path} {problem}", "only a daemon's metrics store holds the 5-minute buckets to read",
            "pass --store with the file the daemon runs with (its --store; default data/metrics_store.sqlite3)",
            STORE_DOC, exit_code=EXIT_USAGE)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[StoreReader]:
        """One read transaction: every read inside sees the same store, whatever a daemon writes meanwhile."""
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._conn.execute("COMMIT")

    def profiles(self) -> dict[str, str]:
        """Every stored server and its profile."""
        return dict(self._conn.execute("SELECT server, profile FROM servers ORDER BY server"))

    def span(self, server: str | None = None) -> tuple[int, int, int] | None:
        """(first bucket, last bucket, buckets held) of one server, or of the whole store; None when empty."""
        where, params = ("WHERE server = ?", (server,)) if server is not None else ("", ())
        first, last, count = self._conn.execute(
            f"SELECT MIN(bucket), MAX(bucket), COUNT(*) FROM buckets {where}", params).fetchone()
        return None if first is None else (int(first), int(last), int(count))

    def span_between(self, server: str, first_bucket: int, last_bucket: int) -> tuple[int, int, int] | None:
        """(first, last, count) of one server's buckets inside ``first_bucket .. last_bucket``; None if none."""
        first, last, count = self._conn.execute(
            "SELECT MIN(bucket), MAX(bucket), COUNT(*) FROM buckets WHERE server = ? AND bucket BETWEEN ? AND ?",
            (server, first_bucket, last_bucket)).fetchone()
        return None if first is None else (int(first), int(last), int(count))

    def bucket_numbers(self, server: str, first_bucket: int, last_bucket: int) -> np.ndarray:
        """The buckets one server holds inside ``first_bucket .. last_bucket`` (int64, ascending)."""
        rows = self._conn.execute("SELECT bucket FROM buckets WHERE server = ? AND bucket BETWEEN ? AND ? ORDER BY "
                                  "bucket", (server, first_bucket, last_bucket)).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def bucket_aggregates(self, server: str, first_bucket: int, last_bucket: int) -> np.ndarray:
        """One server's stored aggregates in ``first_bucket .. last_bucket``, ascending by bucket: a float64 array
        with the columns :data:`AGGREGATE_COLUMNS` (exact: every integer there is below 2**53; ``last_offset`` is
        the latest sample's nanoseconds into its bucket). :func:`merge_aggregates` joins those of several stores
        by the bucketing rule; :func:`aggregates_frame` turns them into bucket values."""
        rows = self._conn.execute(_AGGREGATES_QUERY, (server, first_bucket, last_bucket)).fetchall()
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(AGGREGATE_COLUMNS))

    def bucket_values(self, servers: list[str], first_bucket: int, last_bucket: int) -> pd.DataFrame:
        """The stored buckets of ``servers`` in ``first_bucket .. last_bucket``, as the daemon's windows see them.

        Columns: ``server``, ``bucket``, ``n`` (samples), ``state_rank`` (0 = most severe, in
        ``STATE_PRECEDENCE``) and the 14 LINBORG metrics as bucket values (gauges: the mean of the
        samples; counts and uptime: the latest sample). Rows in the order of ``servers``, then by bucket.
        """
        # one server at a time, straight into numbers (a row of Python objects is ~600 B)
        return aggregates_frame({server: self.bucket_aggregates(server, first_bucket, last_bucket)
                                 for server in servers})


# What StoreReader.bucket_aggregates returns, in this order (last_offset: last_ts minus the bucket's start, exact).
AGGREGATE_COLUMNS = ["bucket", "n", *[f"sum_{m}" for m in GAUGES], "last_offset", *[f"last_{m}" for m in COUNTS],
                     "state_rank"]
_AGG = {name: i for i, name in enumerate(AGGREGATE_COLUMNS)}
_AGGREGATES_QUERY = (f"SELECT bucket, n, {', '.join(f'sum_{m}' for m in GAUGES)}, last_ts - bucket * {NS_PER_BUCKET}, "
                     f"{', '.join(f'last_{m}' for m in COUNTS)}, state_rank FROM buckets "
                     f"WHERE server = ? AND bucket BETWEEN ? AND ? ORDER BY bucket")


def merge_aggregates(parts: list[np.ndarray]) -> np.ndarray:
    """One server's aggregates from several stores joined by the store's own upsert rule (``_UPSERT_BUCKET``): per
    bucket the samples and the gauge sums add up, the counts are the latest sample's (largest ``last_offset``; a
    tie goes to the later part), the state is the most severe. The result is what one store fed every sample
    would hold (a sample stored in two stores counts twice in ``n`` and the sums: its bucket's mean moves toward
    it)."""
    parts = [part for part in parts if len(part)]
    if len(parts) <= 1:
        return parts[0] if parts else np.zeros((0, len(AGGREGATE_COLUMNS)))
    rows = np.concatenate(parts)
    order = np.lexsort((np.arange(len(rows)), rows[:, _AGG["last_offset"]], rows[:, _AGG["bucket"]]))
    rows = rows[order]
    _, starts = np.unique(rows[:, _AGG["bucket"]], return_index=True)
    ends = np.append(starts[1:], len(rows)) - 1  # each bucket's latest sample is its last row
    merged = rows[ends].copy()
    added = [_AGG["n"], *[_AGG[f"sum_{m}"] for m in GAUGES]]
    merged[:, added] = np.add.reduceat(rows[:, added], starts, axis=0)
    merged[:, _AGG["state_rank"]] = np.minimum.reduceat(rows[:, _AGG["state_rank"]], starts)
    return merged


def aggregates_frame(aggregates: dict[str, np.ndarray]) -> pd.DataFrame:
    """Server -> :data:`AGGREGATE_COLUMNS` arrays, as :meth:`StoreReader.bucket_values` returns them: bucket
    values (gauges the mean of the samples, counts and uptime the latest sample), in the order given."""
    parts = []
    for server, raw in aggregates.items():
        n = raw[:, _AGG["n"]].astype(np.int64)
        part = {"server": np.full(len(raw), server, dtype=object), "bucket": raw[:, _AGG["bucket"]].astype(np.int64),
                "n": n, "state_rank": raw[:, _AGG["state_rank"]].astype(np.int64)}
        for metric in LINBORG_METRICS:
            if metric in COUNTS:
                part[metric] = raw[:, _AGG[f"last_{metric}"]].astype(np.int64)
            else:
                part[metric] = raw[:, _AGG[f"sum_{metric}"]] / np.maximum(n, 1)
        parts.append(pd.DataFrame(part))
    if not parts:
        return pd.DataFrame(columns=["server", "bucket", "n", "state_rank", *LINBORG_METRICS])
    return pd.concat(parts, ignore_index=True)
