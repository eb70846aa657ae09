"""Export the daemon's stored 5-minute buckets as contract Parquet, to train on the live fleet's history.

    python main.py export --store data/metrics_store.sqlite3 --out training/live/server_metrics.parquet
    python main.py export --store S --out P.parquet --since 2026-01-05T00:00:00Z --until 2026-02-01 --servers a,b

The store (``metrics_store.py``) keeps one aggregate per server and 5-minute bucket for
``--retention-days`` (35 by default). The export writes what the daemon's own windows hold:

* one row per server and bucket, from the server's first to its last bucket with samples inside
  ``--since .. --until`` (each bound is the bucket holding that time, inclusive; naive = UTC);
* a bucket's values by the bucketing rule (gauges: the mean of the samples; counts and uptime: the
  latest sample; state: the most severe one a sample reported), rows ordered by server and time;
* a bucket without samples as an ``offline`` row with the contract's offline vector (dense mode,
  ``contract.fill_offline``), the way the daemon fills it when it forecasts;
* the contract's columns and types (timestamps ns UTC, names / profiles / states dictionary-encoded,
  counts int32, the rest float32), checked strictly by the validator chunk by chunk before the file
  is moved into place, so ``main.py validate`` accepts it and nothing invalid is left behind;
* ``metrics_metadata.json`` and ``server_mapping.json`` beside the file, as the importer writes them;
* with ``--min-history-days D`` only servers with at least D days of stored buckets in the range (the
  established ones; ``main.py retrain`` passes ``RETRAIN.min_history_days``); the others are named in
  the log and in the metadata (``servers_short_history``).

Measured or not: the store keeps values, not which metrics a feeder really measured. Feeders fill a
metric they cannot measure with ``UNMEASURED_FILL`` (node_exporter via ``main.py prometheus`` has no
Java CPU or CLOSE_WAIT sockets), and a filled value looks like a reading. The export therefore
*infers* it: a metric is measured when some sampled bucket of some exported server differs from its
fill value, and listed as unmeasured otherwise; the metadata says so (``measured_metrics_inferred``)
and lists, per server, the metrics that never left the fill (``servers_constant_at_fill``).

Memory is bounded: whole servers, about ``EXPORT.chunk_rows`` rows at a time, are read, filled, checked and
written.

Several stores (``--store`` repeated: the shards of one fleet, Docs/RETRAINING.md "Several shards") export as
one (:class:`StoreUnion`): the union of their servers, a server held by several merged bucket by bucket by
the store's own rule, so the result is the export of one store fed every sample. :func:`union_parquet`
joins already exported slices (``main.py retrain --data A --data B``) by whole servers.

    python main.py export --store shard0.sqlite3 --store shard1.sqlite3 --out training/live/server_metrics.parquet
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common_utils import atomic_write_json, parse_utc, read_json, setup_logging
from config import (
    CONTRACT_VERSION,
    DATA_CONTRACT_DOC,
    EXPORT,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METADATA_FILE,
    PARQUET_COMPRESSION,
    PARQUET_ROW_GROUP_ROWS,
    PROJECT_VERSION,
    STEPS_PER_DAY,
    STORE_DOC,
    STORE_PATH,
    UNMEASURED_FILL,
    VALID_PROFILES,
    VALID_STATES,
)
from contract import NS_PER_BUCKET, bucket_iso, bucket_of_ns, fill_offline
from data_validator import DataValidator
from errors import EXIT_RUNTIME, ToolkitError, run_cli
from metrics_store import StoreReader, aggregates_frame, merge_aggregates
from server_encoder import ServerEncoder
from state_rules import STATE_PRECEDENCE

logger = logging.getLogger(__name__)

_STATE_CODE = np.array([VALID_STATES.index(state) for state in STATE_PRECEDENCE], dtype=np.int32)  # rank -> code
_OFFLINE_CODE = VALID_STATES.index("offline")
_MEASURED_RULE = (
    "inferred: the store keeps bucket values, not which metrics a feeder measured, and feeders fill a metric "
    "they cannot measure with the contract's unmeasured value (UNMEASURED_FILL). A metric is listed as measured "
    "when a sampled bucket of an exported server differs from that value; one that never does is listed as "
    "unmeasured (not trained on, not scored), which also happens to a measured metric that never moved from "
    "it (swap never used). A metric measured on some servers and filled on others counts as measured for "
    "all of them: servers_constant_at_fill names those servers; export them apart with --servers if it matters.")


class StoreExportError(ToolkitError, ValueError):
    """An export that cannot be done as asked; the message says what, why, and how to fix it."""


def _fail(what: str, why: str, fix: str) -> StoreExportError:
    return StoreExportError(what, why, fix, STORE_DOC)


@dataclass
class ExportStats:
    """What the export wrote, accumulated chunk by chunk."""

    rows: int = 0
    sampled_rows: int = 0
    samples: int = 0
    state_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(VALID_STATES), dtype=np.int64))
    first_bucket: int | None = None
    last_bucket: int | None = None
    constant_at_fill: dict[str, list[str]] = field(default_factory=dict)  # server -> metrics never off the fill
    warnings: list[str] = field(default_factory=list)


def fill_value(metric: str) -> float:
    """The value a feeder writes for a metric it does not measure (``UNMEASURED_FILL``, 0 when not listed)."""
    return float(UNMEASURED_FILL.get(metric, 0.0))


def parse_bound(value: str | None, flag: str) -> int | None:
    """``--since`` / ``--until`` (ISO 8601, naive = UTC) -> the bucket that holds it; None when not given."""
    if value is None:
        return None
    try:
        stamp = parse_utc(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(f"{flag} '{value}' is not a time ({exc})", "the export selects buckets by time",
                    f"write an ISO 8601 time such as {flag} 2026-01-05T09:35:00Z (naive times are UTC)") from None
    return int(bucket_of_ns(int(stamp.value)))


def parse_servers(value: str | None) -> list[str] | None:
    """``--servers a,b`` -> the names in order, without blanks or repeats; None when not given."""
    if value is None:
        return None
    names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise _fail(f"--servers '{value}' names no server", "an empty selection exports nothing",
                    "list server names separated by commas, or leave --servers out to export every server")
    return names


class StoreUnion:
    """Several stores read as one (``--store`` repeated: the shards of one fleet, Docs/RETRAINING.md, "Several
    shards"); the reads :func:`export_store` makes of a :class:`metrics_store.StoreReader`.

    Each store is opened read-only (a running daemon may keep writing) and read in a snapshot of its own. The
    servers are the union of the stores'. A server found in several stores (a record misrouted to the wrong
    shard, or a reshard that moved it) is not taken from one of them: its buckets are merged by the store's
    own rule (:func:`metrics_store.merge_aggregates`: samples and sums add, the latest count, the most severe
    state), exactly what one store fed all its samples would hold, so a resharded server keeps its whole
    history; its profile is the one of the store holding its newest bucket. Those servers are logged and
    listed in the export's metadata (``servers_in_several_stores``).
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        resolved = [Path(path).resolve() for path in paths]
        repeated = sorted({str(path) for path in resolved if resolved.count(path) > 1})
        if repeated:
            raise _fail(f"--store {repeated[0]} is given more than once", "each store is read once into the union; "
                        "read twice, every sample of it would count twice", "name each shard's store once")
        self.readers: list[StoreReader] = []
        try:
            for path in paths:
                self.readers.append(StoreReader(path))
        except BaseException:
            self.close()
            raise
        self.path = " + ".join(str(reader.path) for reader in self.readers)
        self._holders: dict[str, list[int]] = {}  # server -> the readers holding it (profiles() fills it)

    def close(self) -> None:
        """Close every store."""
        for reader in self.readers:
            reader.close()

    @contextmanager
    def snapshot(self) -> Iterator[StoreUnion]:
        """A read transaction on each store (each consistent in itself)."""
        with ExitStack() as stack:
            for reader in self.readers:
                stack.enter_context(reader.snapshot())
            yield self

    def profiles(self) -> dict[str, str]:
        """Every server of every store and its profile (a server in several: the profile where its newest bucket
        is)."""
        each = [reader.profiles() for reader in self.readers]
        self._holders = {}
        for i, profiles in enumerate(each):
            for name in profiles:
                self._holders.setdefault(name, []).append(i)
        merged: dict[str, str] = {}
        for name in sorted(self._holders):
            holders = self._holders[name]
            if len(holders) > 1:
                spans = [(self.readers[i].span(name) or (0, -1, 0))[1] for i in holders]
                merged[name] = each[holders[int(np.argmax(spans))]][name]
            else:
                merged[name] = each[holders[0]][name]
        return merged

    def shared(self) -> dict[str, list[str]]:
        """Server -> the stores holding it, for the servers in more than one (after :meth:`profiles`)."""
        return {name: [str(self.readers[i].path) for i in holders]
                for name, holders in self._holders.items() if len(holders) > 1}

    def _holding(self, server: str) -> list[StoreReader]:
        if not self._holders:
            self.profiles()
        return [self.readers[i] for i in self._holders.get(server, [])]

    def span(self) -> tuple[int, int, int] | None:
        """(first bucket, last bucket, buckets held) over every store; None when all are empty."""
        spans = [span for reader in self.readers if (span := reader.span()) is not None]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans), sum(s[2] for s in spans)

    def span_between(self, server: str, first_bucket: int, last_bucket: int) -> tuple[int, int, int] | None:
        """(first, last, distinct buckets) of one server inside the range, over the stores holding it."""
        holding = self._holding(server)
        if len(holding) == 1:
            return holding[0].span_between(server, first_bucket, last_bucket)
        buckets = np.unique(np.concatenate([np.zeros(0, dtype=np.int64),
                                            *(r.bucket_numbers(server, first_bucket, last_bucket) for r in holding)]))
        return None if not len(buckets) else (int(buckets[0]), int(buckets[-1]), len(buckets))

    def bucket_values(self, servers: list[str], first_bucket: int, last_bucket: int) -> pd.DataFrame:
        """As :meth:`metrics_store.StoreReader.bucket_values`, a server in several stores merged bucket by bucket."""
        return aggregates_frame({server: merge_aggregates([reader.bucket_aggregates(server, first_bucket, last_bucket)
                                                          for reader in self._holding(server)])
                                 for server in servers})


def open_stores(paths: str | Path | Sequence[str | Path]) -> StoreReader | StoreUnion:
    """One store: its :class:`metrics_store.StoreReader` (as ever); several: their :class:`StoreUnion`."""
    if isinstance(paths, str | Path):
        return StoreReader(paths)
    if not paths:
        raise _fail("no --store given", "the export reads the buckets of at least one store",
                    "pass --store with the file the daemon runs with (repeat it for each shard's store)")
    return StoreReader(paths[0]) if len(paths) == 1 else StoreUnion(paths)


def _select_servers(reader: StoreReader | StoreUnion, requested: list[str] | None) -> dict[str, str]:
    """Server -> profile for the servers to export (all, or the requested ones, which must be stored)."""
    profiles = reader.profiles()
    if requested is None:
        return profiles
    unknown = [name for name in requested if name not in profiles]
    if unknown:
        known = ", ".join(sorted(profiles)[:5]) or "none"
        raise _fail(f"{len(unknown)} of the --servers are not in the store {reader.path}: {', '.join(unknown[:5])}",
                    "only servers the daemon was fed (and retention kept) have buckets",
                    f"use names the store holds ({len(profiles)} servers, e.g. {known})")
    return {name: profiles[name] for name in requested}


def _chunks(names: list[str], spans: dict[str, tuple[int, int]], chunk_rows: int) -> list[list[str]]:
    """Consecutive groups of whole servers of about ``chunk_rows`` rows each (at least one server each)."""
    chunks: list[list[str]] = [[]]
    rows = 0
    for name in names:
        if chunks[-1] and rows + spans[name][1] - spans[name][0] + 1 > chunk_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(name)
        rows += spans[name][1] - spans[name][0] + 1
    return chunks


def _chunk_table(values: pd.DataFrame, spans: dict[str, tuple[int, int]], names: list[str],
                 profiles: dict[str, str], stats: ExportStats) -> pa.Table:
    """One chunk of servers: stored buckets -> dense contract rows (offline rows for buckets without samples)."""
    name_index = {name: i for i, name in enumerate(names)}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("timestamp", "server", "profile", "state", *LINBORG_METRICS)}
    for server, group in values.groupby("server", sort=True):
        first, last = spans[server]
        grid = np.arange(first, last + 1, dtype=np.int64)
        present = np.zeros(len(grid), dtype=bool)
        slots = group["bucket"].to_numpy() - first
        present[slots] = True
        metrics: dict[str, np.ndarray] = {}
        constant = []
        for metric in LINBORG_METRICS:
            column = np.zeros(len(grid))
            stored = group[metric].to_numpy(dtype=np.float64)
            column[slots] = stored
            metrics[metric] = column
            if np.all(stored == fill_value(metric)):
                constant.append(metric)
        if constant:
            stats.constant_at_fill[str(server)] = constant
        filled = fill_offline(metrics, present)
        states = np.full(len(grid), _OFFLINE_CODE, dtype=np.int32)
        states[slots] = _STATE_CODE[group["state_rank"].to_numpy()]
        parts["timestamp"].append(grid * NS_PER_BUCKET)
        parts["server"].append(np.full(len(grid), name_index[server], dtype=np.int32))
        parts["profile"].append(np.full(len(grid), VALID_PROFILES.index(profiles[server]), dtype=np.int32))
        parts["state"].append(states)
        for metric in LINBORG_METRICS:
            parts[metric].append(filled[metric])
        stats.rows += len(grid)
        stats.sampled_rows += len(slots)
        stats.samples += int(group["n"].sum())
        stats.state_counts += np.bincount(states, minlength=len(VALID_STATES))
        stats.first_bucket = first if stats.first_bucket is None else min(stats.first_bucket, first)
        stats.last_bucket = last if stats.last_bucket is None else max(stats.last_bucket, last)
    joined = {key: np.concatenate(arrays) for key, arrays in parts.items()}
    columns: dict[str, pa.Array] = {
        "timestamp": pa.array(joined["timestamp"], type=pa.timestamp("ns", tz="UTC")),
        "server_name": pa.DictionaryArray.from_arrays(joined["server"], pa.array(names)),
        "profile": pa.DictionaryArray.from_arrays(joined["profile"], pa.array(VALID_PROFILES)),
        "state": pa.DictionaryArray.from_arrays(joined["state"], pa.array(VALID_STATES)),
    }
    for metric in LINBORG_METRICS:
        values_ = joined[metric]
        columns[metric] = pa.array(np.rint(values_).astype(np.int32) if metric in INTEGER_METRICS
                                   else values_.astype(np.float32))
    return pa.table(columns)


def _check(table: pa.Table, stats: ExportStats) -> None:
    """Strict contract check of one chunk (its servers are complete in it); raises on any error."""
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(table.to_pandas())
    if not is_valid:
        raise _fail("the exported rows do not pass the data contract: " + "; ".join(str(e) for e in errors[:3]),
                    "training refuses invalid data, so no file was written",
                    f"report it with the store file: fed records are checked against {DATA_CONTRACT_DOC}, so "
                    f"stored buckets should always pass")
    for warning in warnings:
        text = f"{warning.column}: {warning.what}"
        if text not in stats.warnings:
            stats.warnings.append(text)


def export_store(store: str | Path | Sequence[str | Path], out: str | Path, since: str | None = None,
                 until: str | None = None,
                 servers: list[str] | None = None, chunk_rows: int = EXPORT.chunk_rows,
                 progress_fraction: float = EXPORT.progress_fraction,
                 min_history_days: float | None = None) -> dict[str, Any]:
    """Write the store's buckets as contract Parquet at ``out`` (+ metadata and server mapping); the metadata.

    ``store``: one store, or several read as one (:class:`StoreUnion`: the union of their servers, a server
    held by several merged bucket by bucket);
    ``since`` / ``until``: ISO 8601 bounds (the buckets holding them, inclusive; None = open);
    ``servers``: names to export (None = every stored server); ``min_history_days``: only servers
    holding at least this many days of buckets (``STEPS_PER_DAY`` each) inside the range, the
    others left out and listed in ``servers_short_history`` (None or 0: no such filter). Raises
    :class:`StoreExportError` or :class:`metrics_store.StoreError` with what, why and how to fix it; an
    unfinished file is removed.
    """
    began = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise _fail(f"--out {out} does not end in .parquet", "the export writes Parquet, and the validator and "
                    "trainer read a file by its suffix", f"name the file like {out.with_suffix('.parquet')}")
    first_bucket, last_bucket = parse_bound(since, "--since"), parse_bound(until, "--until")
    if min_history_days is not None and not min_history_days >= 0:
        raise _fail(f"--min-history-days {min_history_days} is negative", "it is the days of stored buckets a "
                    "server needs to be exported", "pass 0 or more (0: every server)")
    need = int(round((min_history_days or 0.0) * STEPS_PER_DAY))  # stored buckets a server needs
    if first_bucket is not None and last_bucket is not None and first_bucket > last_bucket:
        raise _fail(f"--since {since} is after --until {until}", "the range holds no bucket",
                    "swap the two times")
    reader = open_stores(store)
    tmp = out.with_name(f".{out.name}.export.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        with reader.snapshot():
            profiles = _select_servers(reader, servers)
            whole = reader.span()
            if whole is None:
                raise _fail(f"the store {reader.path} holds no buckets", "there is nothing to export",
                            "feed the daemon first (main.py collect / prometheus / generate --stream), or pass the "
                            "store of a daemon that has run")
            low = whole[0] if first_bucket is None else first_bucket
            high = whole[1] if last_bucket is None else last_bucket
            spans: dict[str, tuple[int, int]] = {}
            short: dict[str, float] = {}  # server -> days of stored buckets, below min_history_days
            for name in sorted(profiles):
                span = reader.span_between(name, low, high)
                if span is not None and span[2] < need:
                    short[name] = round(span[2] / STEPS_PER_DAY, 2)
                elif span is not None:
                    spans[name] = (span[0], span[1])
            if short:
                logger.info("%d of the servers with buckets in the range hold less than %g days of them and are "
                            "left out (established history only): %s%s", len(short), min_history_days,
                            ", ".join(f"{name} ({days:g} d)" for name, days in list(short.items())[:10]),
                            " ..." if len(short) > 10 else "")
            if not spans and short:
                longest = max(short.values())
                raise _fail(f"none of the {len(short)} servers with buckets in the range holds {min_history_days:g} "
                            f"days of them (the longest: {longest:g} d) in {reader.path}",
                            "only servers with established history are exported, so nothing is left",
                            "let the store fill for longer, or pass a smaller --min-history-days (0: every server)")
            if not spans:
                asked = (f"between {bucket_iso(low)} and {bucket_iso(high)}" if since and until else
                         f"from {bucket_iso(low)} on" if since else f"up to {bucket_iso(high)}" if until else "")
                raise _fail(f"no buckets {asked}{' for the servers asked for' if servers else ''} in {reader.path}",
                            "there is nothing to export",
                            f"choose --since/--until inside what the store holds: {len(reader.profiles())} servers "
                            f"from {bucket_iso(whole[0])} to {bucket_iso(whole[1])} (retention deletes older buckets)")
            names = sorted(spans)
            idle = sorted(set(profiles) - set(spans))
            shared = {name: holders for name, holders in reader.shared().items() if name in spans} \
                if isinstance(reader, StoreUnion) else {}
            if shared:
                logger.warning("%d of the servers are in more than one of the %d stores (a record sent to the wrong "
                               "shard, or a reshard that moved them): their buckets are merged by the bucketing rule, "
                               "as one store fed every sample would hold them: %s%s", len(shared),
                               len(reader.readers), ", ".join(list(shared)[:10]), " ..." if len(shared) > 10 else "")
            if idle:
                (logger.warning if servers else logger.info)(
                    "%d of the %s servers have no buckets in the range and are left out: %s%s", len(idle),
                    "requested" if servers else "stored", ", ".join(idle[:10]), " ..." if len(idle) > 10 else "")
            total_rows = sum(last - first + 1 for first, last in spans.values())
            logger.info("exporting %d servers, %s rows (%s .. %s) from %s to %s", len(names), f"{total_rows:,}",
                        bucket_iso(min(s[0] for s in spans.values())), bucket_iso(max(s[1] for s in spans.values())),
                        reader.path, out)
            out.parent.mkdir(parents=True, exist_ok=True)
            stats = ExportStats()
            next_report = progress_fraction
            for chunk in _chunks(names, spans, chunk_rows):
                values = reader.bucket_values(chunk, low, high)
                table = _chunk_table(values, spans, names, profiles, stats)
                _check(table, stats)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression=PARQUET_COMPRESSION)
                writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
                done = stats.rows / total_rows
                if done >= next_report and done < 1.0:
                    logger.info("export: %d of %d servers, %s of %s rows (%.0f %%), %.1f s",
                                names.index(chunk[-1]) + 1, len(names), f"{stats.rows:,}", f"{total_rows:,}",
                                100.0 * done, time.perf_counter() - began)
                    while next_report <= done:
                        next_report += progress_fraction
        assert writer is not None  # spans is not empty, so one chunk was written
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        reader.close()

    encoder = ServerEncoder()
    encoder.encode_many(names)
    encoder.save(out.parent)
    stores = [str(Path(path).resolve()) for path in ([store] if isinstance(store, str | Path) else store)]
    measured = [m for m in LINBORG_METRICS if any(m not in stats.constant_at_fill.get(s, ()) for s in names)]
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "exporter_version": PROJECT_VERSION,
        "source": "metrics store",
        "store": " + ".join(stores),
        "stores": stores,
        "servers_in_several_stores": shared,
        "file": out.name,
        "requested": {"since": since, "until": until, "servers": servers},
        "servers": {name: profiles[name] for name in names},
        "servers_without_buckets_in_range": idle,
        "min_history_days": min_history_days,
        "servers_short_history": short,
        "rows": stats.rows,
        "sampled_rows": stats.sampled_rows,
        "samples": stats.samples,
        "time_span": {"start": bucket_iso(stats.first_bucket or 0), "end": bucket_iso(stats.last_bucket or 0)},
        "bucketing": "gauges: mean of the bucket's samples; counts and uptime_days: latest sample; state: most "
                     "severe sample; a bucket without samples: offline row with the contract's offline vector",
        "measured_metrics": measured,
        "unmeasured_metrics": {m: f"constant at {fill_value(m):g} (the unmeasured fill) in every sampled bucket"
                               for m in LINBORG_METRICS if m not in measured},
        "measured_metrics_inferred": True,
        "measured_metrics_rule": _MEASURED_RULE,
        "servers_constant_at_fill": stats.constant_at_fill,
        "offline_share": float(stats.state_counts[_OFFLINE_CODE] / max(stats.rows, 1)),
        "state_shares": {s: float(c / max(stats.rows, 1)) for s, c in zip(VALID_STATES, stats.state_counts,
                                                                          strict=True)},
        "warnings": stats.warnings[:10],
        "export_seconds": round(time.perf_counter() - began, 3),
    }
    atomic_write_json(out.parent / METADATA_FILE, metadata)
    logger.info("exported %d servers, %s rows (%s sampled, %s offline) %s .. %s to %s in %.1f s; measured "
                "(inferred): %s; unmeasured: %s", len(names), f"{stats.rows:,}", f"{stats.sampled_rows:,}",
                f"{stats.rows - stats.sampled_rows:,}", metadata["time_span"]["start"], metadata["time_span"]["end"],
                out, metadata["export_seconds"], ", ".join(measured) or "none",
                ", ".join(metadata["unmeasured_metrics"]) or "none")
    return metadata


def union_parquet(files: Sequence[str | Path], out: str | Path, chunk_rows: int = EXPORT.chunk_rows) -> dict[str, Any]:
    """Several contract Parquet files (the shards' exports, each its slice of the fleet) written as one at ``out``
    (+ metadata and server mapping beside it); the metadata.

    Rows are copied a batch of about ``chunk_rows`` at a time, never all at once. Every server comes whole from
    one file: a server found in several (a misrouted record, a reshard) is taken from the file holding most of
    its sampled (not offline) rows, the first given on a tie, and its rows in the others are dropped (logged,
    and listed in the metadata's ``servers_in_several_files``). Exported rows are bucket values already, so
    unlike stores (:class:`StoreUnion`) they cannot be merged by the bucketing rule; export the stores
    together (``main.py export --store A --store B``) to keep a moved server's whole history. The measured
    metrics are those measured in any file (a file without metadata: all of them).
    """
    began = time.perf_counter()
    files = [Path(f) for f in files]
    out = Path(out)
    repeated = sorted({str(f) for f in files if [g.resolve() for g in files].count(f.resolve()) > 1})
    if repeated:
        raise _fail(f"--data {repeated[0]} is given more than once", "each file is read once into the union",
                    "name each shard's export once")
    sampled: list[dict[str, int]] = []  # per file: server -> sampled rows
    schema: pa.Schema | None = None
    for path in files:
        counts: dict[str, int] = {}
        with pq.ParquetFile(path) as handle:
            schema = schema or handle.schema_arrow
            for batch in handle.iter_batches(batch_size=chunk_rows, columns=["server_name", "state"]):
                frame = batch.to_pandas()
                online = frame["state"].astype(str) != "offline"
                for name, count in frame["server_name"].astype(str)[online].value_counts().items():
                    counts[name] = counts.get(name, 0) + int(count)
                for name in frame["server_name"].astype(str).unique():
                    counts.setdefault(name, 0)
        sampled.append(counts)
    owner: dict[str, int] = {}
    for i, counts in enumerate(sampled):
        for name, count in counts.items():
            if name not in owner or count > sampled[owner[name]][name]:
                owner[name] = i
    shared = {name: [str(files[i]) for i, counts in enumerate(sampled) if name in counts]
              for name in sorted(owner) if sum(name in counts for counts in sampled) > 1}
    if shared:
        logger.warning("%d servers are in more than one of the %d files (a record sent to the wrong shard, or a "
                       "reshard): each is taken whole from the file holding most of its sampled rows, its rows in "
                       "the others dropped: %s%s", len(shared), len(files),
                       ", ".join(f"{name} (from {files[owner[name]]})" for name in list(shared)[:10]),
                       " ..." if len(shared) > 10 else "")
    assert schema is not None
    tmp = out.with_name(f".{out.name}.union.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    profiles: dict[str, str] = {}
    writer = pq.ParquetWriter(tmp, schema, compression=PARQUET_COMPRESSION)
    try:
        for i, path in enumerate(files):
            mine = pa.array(sorted(name for name, j in owner.items() if j == i))
            with pq.ParquetFile(path) as handle:
                for batch in handle.iter_batches(batch_size=chunk_rows, columns=schema.names):
                    table = pa.Table.from_batches([batch])
                    table = table.filter(pc.is_in(table.column("server_name").cast(pa.string()), value_set=mine))
                    if not table.num_rows:
                        continue
                    table = table.cast(schema)
                    writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
                    rows += table.num_rows
                    stamps = table.column("timestamp")
                    low, high = pc.min(stamps).as_py(), pc.max(stamps).as_py()
                    first = low if first is None else min(first, low)
                    last = high if last is None else max(last, high)
                    pairs = table.select(["server_name", "profile"]).to_pandas().astype(str).drop_duplicates()
                    profiles.update(zip(pairs["server_name"], pairs["profile"], strict=True))
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    names = sorted(owner)
    encoder = ServerEncoder()
    encoder.encode_many(names)
    encoder.save(out.parent)
    measured: set[str] | None = set()
    for path in files:
        meta = path.parent / METADATA_FILE
        listed = read_json(meta).get("measured_metrics") if meta.exists() else None
        measured = None if listed is None or measured is None else measured | set(listed)
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "exporter_version": PROJECT_VERSION,
        "source": "union of contract Parquet files",
        "files": [str(f.resolve()) for f in files],
        "file": out.name,
        "servers": {name: profiles[name] for name in names},
        "servers_in_several_files": shared,
        "rows": rows,
        "time_span": {"start": first.isoformat() if first is not None else None,
                      "end": last.isoformat() if last is not None else None},
        "union_seconds": round(time.perf_counter() - began, 3),
    }
    if measured is not None:
        metadata["measured_metrics"] = [m for m in LINBORG_METRICS if m in measured]
    atomic_write_json(out.parent / METADATA_FILE, metadata)
    logger.info("union of %d files: %d servers, %s rows to %s in %.1f s", len(files), len(names), f"{rows:,}", out,
                metadata["union_seconds"])
    return metadata


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the export (``main.py export``)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, action="append", default=None,
                        help=f"the daemon's SQLite store (its --store; default {STORE_PATH}); read only, a running "
                             f"daemon may keep writing. Repeat it for each shard's store: the union of their servers "
                             f"is exported, a server in several stores merged bucket by bucket")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"contract Parquet to write; {METADATA_FILE} and the server mapping go beside it")
    parser.add_argument("--since", help="first bucket: the one holding this ISO 8601 time (naive = UTC; default: "
                                        "the oldest stored)")
    parser.add_argument("--until", help="last bucket: the one holding this time, inclusive (default: the newest)")
    parser.add_argument("--servers", help="comma-separated server names (default: every stored server)")
    parser.add_argument("--min-history-days", type=float, default=None,
                        help="only servers holding at least this many days of buckets in the range (default: all)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the export; 0 on success; raises with what/why/fix otherwise (``errors.run_cli``: exit 2 for a store,
    range or server list that cannot be exported, 3 for a store that cannot be read or a write that fails)."""
    stores = args.store or [STORE_PATH]
    try:
        meta = export_store(stores, args.out, args.since, args.until, parse_servers(args.servers),
                            min_history_days=args.min_history_days)
    except sqlite3.DatabaseError as exc:
        raise StoreExportError(f"the store {' + '.join(map(str, stores))} cannot be read ({exc})", None,
                               "check the file, or export from a backup", STORE_DOC, exit_code=EXIT_RUNTIME) from exc
    except OSError as exc:
        raise StoreExportError(f"cannot write {args.out} ({exc})", None,
                               "check the folder's permissions and free space", exit_code=EXIT_RUNTIME) from exc
    print(f"Exported {len(meta['servers'])} servers, {meta['rows']:,} rows ({meta['time_span']['start']} .. "
          f"{meta['time_span']['end']}) -> {args.out}\n"
          f"measured (inferred from the values): {', '.join(meta['measured_metrics']) or 'none'}\n"
          f"unmeasured (never left the fill value; not trained on or scored): "
          f"{', '.join(meta['unmeasured_metrics']) or 'none'}\n"
          f"Check it with: python main.py validate {args.out}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), "export failed"))
