"""Import recorded metric traces (CSV/Parquet exports) into contract Parquet for training.

    python main.py import --mapping mappings/bitbrains_rnd.json --out training/server_metrics.parquet SRC...
    python trace_importer.py --mapping mapping.json --out training/server_metrics.parquet SRC...

A *mapping* (JSON, ``Docs/IMPORTING.md``) says how to read the source files, where the
timestamp and the server are, and how each LINBORG metric is computed from the source's
columns (column, optional ratio to another column, scale, complement to 100). The importer:

1. reads every source (CSV with the mapping's separator, or Parquet), one file per server or
   a server column, within ``IMPORTER.max_rows`` / ``IMPORTER.max_bytes`` (a Parquet source over them is
   refused from its footer, before it is decoded; a CSV stops at them), and refuses timestamps outside
   ``IMPORTER.earliest_year`` .. the host's clock;
2. computes the mapped metrics, clipped to the contract's ranges (clipped values are counted);
3. resamples each server to its own 5-minute grid, first to last sample (at most
   ``IMPORTER.max_span_days`` long, all grids together at most ``IMPORTER.max_rows`` rows, checked before
   any grid is allocated; mean of the samples in a bucket); gaps of up to
   ``IMPORTER.max_interpolate_buckets`` buckets are interpolated, longer gaps become ``offline``
   buckets (dense grid, as the contract's dense mode);
4. fills the metrics the source does not have by the contract's rule (``UNMEASURED_FILL``) and
   records measured and unmeasured metrics in ``metrics_metadata.json``: the trainer does not
   train on, and the backtest does not score, unmeasured targets;
5. derives ``state`` from the values with the same rules a live feed uses (``state_rules.py``);
6. writes Parquet, ``metrics_metadata.json`` and ``server_mapping.json`` and validates the result.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common_utils import atomic_write_json, atomic_write_parquet, make_server_name, read_json, setup_logging
from config import (
    CONTRACT_VERSION,
    DATA_CONTRACT_DOC,
    IMPORTER,
    IMPORTING_DOC,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METADATA_FILE,
    METRIC_RANGES,
    PROJECT_VERSION,
    SAMPLING_INTERVAL_SECONDS,
    UNMEASURED_FILL,
    UPTIME_MAX_DAYS,
    VALID_PROFILES,
    VALID_STATES,
    VALIDATOR_MAX_EXAMPLES,
)
from contract import fill_offline
from data_validator import DataValidator, ReadLimits, load_frame, parquet_footer, read_csv_bounded, read_parquet_bounded
from errors import ToolkitError, run_cli
from server_encoder import ServerEncoder
from state_rules import derive_states

logger = logging.getLogger(__name__)

TIME_UNITS = ("s", "ms", "us", "ns", "iso")


class TraceImportError(ToolkitError, ValueError):
    """A mapping or a source that cannot be imported; the message says what, why, how to fix, which doc."""


@dataclass(frozen=True)
class MetricRule:
    """How one LINBORG metric is computed from a source row."""

    column: str
    divide_by: str | None = None
    scale: float = 1.0
    complement: bool = False  # value = 100 - value (e.g. idle from a "CPU used %")

    def apply(self, frame: pd.DataFrame) -> np.ndarray:
        """The metric for every row of ``frame`` (before clipping)."""
        values = frame[self.column].to_numpy(dtype=np.float64)
        if self.divide_by:
            denominator = frame[self.divide_by].to_numpy(dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(denominator > 0, values / denominator, np.nan)
        values = values * self.scale
        return 100.0 - values if self.complement else values


@dataclass(frozen=True)
class Mapping:
    """A parsed, checked mapping file."""

    source: str
    csv_sep: str
    timestamp_column: str
    timestamp_unit: str
    server_column: str | None
    profile: str
    metrics: dict[str, MetricRule]

    @property
    def measured(self) -> list[str]:
        """LINBORG metrics the source really has, in contract order."""
        return [m for m in LINBORG_METRICS if m in self.metrics]


def _fail(what: str, why: str, fix: str) -> TraceImportError:
    return TraceImportError(what, why, fix, IMPORTING_DOC)


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise _fail(f"{path} is not a JSON object", "the mapping describes the source as named fields",
                    "start from mappings/bitbrains_rnd.json")
    ts = raw.get("timestamp") or {}
    if "column" not in ts or ts.get("unit", "iso") not in TIME_UNITS:
        raise _fail(f"{path}: 'timestamp' needs a 'column' and a 'unit' in {list(TIME_UNITS)}",
                    "every row must land on the 5-minute grid", 'add e.g. "timestamp": {"column": "time", "unit": "s"}')
    profile = raw.get("profile", "generic")
    if profile not in VALID_PROFILES:
        raise _fail(f"{path}: profile '{profile}' is not a contract profile", "the model is conditioned on it",
                    f"use one of {VALID_PROFILES}")
    metrics: dict[str, MetricRule] = {}
    for name, spec in (raw.get("metrics") or {}).items():
        if name not in LINBORG_METRICS:
            raise _fail(f"{path}: '{name}' is not a LINBORG metric", "only contract columns can be written",
                        f"map to one of {LINBORG_METRICS}")
        if not isinstance(spec, dict) or "column" not in spec:
            raise _fail(f"{path}: metric '{name}' needs a 'column'", "the value must come from the source",
                        'write e.g. {"column": "CPU usage [%]"}')
        metrics[name] = MetricRule(column=str(spec["column"]), divide_by=spec.get("divide_by"),
                                   scale=float(spec.get("scale", 1.0)), complement=bool(spec.get("complement", False)))
    if not metrics:
        raise _fail(f"{path}: no metrics mapped", "nothing would be measured", "map at least one LINBORG metric")
    server = raw.get("server") or {}
    return Mapping(source=str(raw.get("source", Path(path).stem)), csv_sep=str(raw.get("csv_sep", ",")),
                   timestamp_column=str(ts["column"]), timestamp_unit=str(ts.get("unit", "iso")),
                   server_column=server.get("column"), profile=profile, metrics=metrics)


def _needed_columns(mapping: Mapping) -> set[str]:
    """The source columns the mapping reads (names as stripped of surrounding spaces)."""
    needed = {mapping.timestamp_column, *(r.column for r in mapping.metrics.values()),
              *(r.divide_by for r in mapping.metrics.values() if r.divide_by)}
    if mapping.server_column:
        needed.add(mapping.server_column)
    return needed


def _check_columns(path: Path, names: list[str], mapping: Mapping) -> None:
    missing = sorted(_needed_columns(mapping) - set(names))
    if missing:
        raise _fail(f"{path.name} lacks column(s) {missing} (it has {names[:12]})",
                    "the mapping computes metrics from them", "fix the column names in the mapping")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _parquet_columns(path: Path, mapping: Mapping) -> list[str]:
    """The file's own names of the columns the mapping reads (checked against its schema, nothing decoded)."""
    names = pq.read_schema(path).names
    _check_columns(path, [str(n).strip() for n in names], mapping)
    needed = _needed_columns(mapping)
    return [n for n in names if str(n).strip() in needed]


def _read_source(path: Path, mapping: Mapping, limits: ReadLimits, rows_before: int,
                 bytes_before: int) -> tuple[pd.DataFrame, int]:
    """One source's needed columns within what ``limits`` leaves after earlier files; (frame, bytes read)."""
    if _is_parquet(path):
        frame, nbytes = read_parquet_bounded(path, limits, _parquet_columns(path, mapping), rows_before,
                                             bytes_before)
    else:
        header, _ = read_csv_bounded(path, limits, rows_before, bytes_before, nrows=0, sep=mapping.csv_sep,
                                        skipinitialspace=True)
        _check_columns(path, [str(c).strip() for c in header.columns], mapping)
        needed = _needed_columns(mapping)
        frame, nbytes = read_csv_bounded(path, limits, rows_before, bytes_before, sep=mapping.csv_sep,
                                         skipinitialspace=True, usecols=lambda c: str(c).strip() in needed)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True), nbytes  # a source's own index (pandas metadata) means nothing here


def _earliest() -> pd.Timestamp:
    return pd.Timestamp(year=IMPORTER.earliest_year, month=1, day=1, tz="UTC")


def _latest() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=IMPORTER.max_future_seconds)


def _timestamps(values: pd.Series, unit: str, path: Path) -> pd.DatetimeIndex:
    """Parse a source's timestamps; a file with any row unparsable or outside the plausible range
    (``IMPORTER.earliest_year`` .. the host's clock + ``IMPORTER.max_future_seconds``) is refused, naming
    how many rows and a few of them, before any grid is built."""
    earliest, latest = _earliest(), _latest()
    if unit == "iso":
        stamps = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        other = (stamps.isna() & values.notna()).to_numpy()
        if other.any():  # text in another layout (e.g. "08/01/2013 12:00"): parsed one by one
            stamps[other] = pd.to_datetime(values[other].astype(str), utc=True, errors="coerce", format="mixed")
        bad = (stamps.isna() | (stamps < earliest) | (stamps > latest)).to_numpy()
    else:
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        low, high = earliest.value // 10**9 * per_second, latest.value // 10**9 * per_second
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(numbers) | (numbers < low) | (numbers > high)
        whole = values.to_numpy() if pd.api.types.is_integer_dtype(values.dtype) else np.rint(numbers)
        stamps = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        if (~bad).any():
            stamps[~bad] = pd.to_datetime(np.asarray(whole)[~bad].astype(np.int64), unit=unit, utc=True)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = {int(i): values.iloc[i] for i in rows[:VALIDATOR_MAX_EXAMPLES]}
        examples = ", ".join(f"row {i}: {v!r}" if isinstance(v, str) else f"row {i}: {v}" for i, v in shown.items())
        raise _fail(f"{path.name}: {len(rows):,} of {len(values):,} rows have a timestamp that is missing or "
                    f"outside {earliest:%Y-%m-%d} .. {latest:%Y-%m-%d %H:%M} UTC ({examples}), read with unit "
                    f"'{unit}'", "each server is put on a 5-minute grid from its first to its last sample, so "
                    "one row decades away from the rest would stretch that grid over decades (a 1970 row "
                    "among 2026 rows: 56 years, 5.9 M buckets); an epoch-0 or empty time, or a wrong unit, is "
                    "the usual cause", "drop or correct those rows in the source, or fix the mapping's "
                    "timestamp unit (seconds read as milliseconds land in 1970); the range is "
                    "IMPORTER.earliest_year and IMPORTER.max_future_seconds in config.py")
    return pd.DatetimeIndex(stamps)


def _names_for(ids: list[str], profile: str) -> dict[str, str]:
    numeric = all(re.fullmatch(r"\d+", i) for i in ids)
    ordered = sorted(ids, key=lambda i: int(i)) if numeric else sorted(ids)
    return {source_id: make_server_name(profile, int(source_id) if numeric else k + 1)
            for k, source_id in enumerate(ordered)}


def _to_grid(frame: pd.DataFrame, stamps: pd.DatetimeIndex, grid: pd.DatetimeIndex,
             mapping: Mapping, clipped: dict[str, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One server: measured metrics on ``grid`` (5-minute means, short gaps interpolated) and has_sample."""
    values = pd.DataFrame({name: rule.apply(frame) for name, rule in mapping.metrics.items()}, index=stamps)
    for name in values:
        low, high = METRIC_RANGES[name]
        column = values[name]
        outside = int(((column < low) | (column > high)).sum())
        if outside:
            clipped[name] = clipped.get(name, 0) + outside
        values[name] = column.clip(low, high)
    buckets = values.groupby(values.index.floor(f"{SAMPLING_INTERVAL_SECONDS}s")).mean().reindex(grid)
    has_sample = buckets.notna().all(axis=1).to_numpy()
    # Only gaps of at most IMPORTER.max_interpolate_buckets are bridged; longer ones stay empty (offline).
    run_id = np.cumsum(has_sample)
    run_length = pd.Series(~has_sample).groupby(run_id).transform("sum").to_numpy()
    short_gap = ~has_sample & (run_length <= IMPORTER.max_interpolate_buckets)
    filled = buckets.interpolate(limit_area="inside")
    filled[~(has_sample | short_gap)] = np.nan
    has_sample = has_sample | (short_gap & filled.notna().all(axis=1).to_numpy())
    return {name: filled[name].to_numpy() for name in buckets}, has_sample


def _server_grids(per_server: dict[str, tuple[pd.DataFrame, pd.DatetimeIndex]], files: dict[str, list[str]],
                  max_rows: int, max_span_days: float) -> dict[str, pd.DatetimeIndex]:
    """Each server's 5-minute grid, first to last sample, after checking the sizes before allocating any:
    no span over ``max_span_days``, no more than ``max_rows`` buckets over all servers."""
    step = pd.Timedelta(seconds=SAMPLING_INTERVAL_SECONDS)
    bounds = {name: (stamps.min().floor(step), stamps.max().floor(step)) for name, (_, stamps) in per_server.items()}
    too_long = {name: (first, last) for name, (first, last) in bounds.items()
                if last - first > pd.Timedelta(days=max_span_days)}
    if too_long:
        name, (first, last) = max(too_long.items(), key=lambda item: item[1][1] - item[1][0])
        raise _fail(f"{len(too_long)} server(s) span more than {max_span_days:g} days from first to last sample, "
                    f"e.g. {name} (from {', '.join(files[name][:3])}): {first:%Y-%m-%d %H:%M} .. "
                    f"{last:%Y-%m-%d %H:%M} UTC, {(last - first).days:,} days",
                    "each server gets a row in every 5-minute bucket of its span, so a span of years is "
                    "hundreds of thousands of rows per server, and a stray timestamp is the usual cause",
                    "drop the stray rows, split the import by time, or raise the limit with --max-span-days "
                    "(IMPORTER.max_span_days in config.py)")
    total = sum(int((last - first) // step) + 1 for first, last in bounds.values())
    if total > max_rows:
        raise _fail(f"the {len(bounds):,} servers' 5-minute grids would hold {total:,} rows, more than the "
                    f"{max_rows:,} main.py import writes", "every row is held in memory until the file is "
                    "written (sparse samples, e.g. hourly, become 12 rows an hour)",
                    "import fewer servers or a shorter time range at a time, or raise the limit with "
                    "--max-rows (IMPORTER.max_rows in config.py) on a machine with the memory")
    return {name: pd.date_range(first, last, freq=step, tz="UTC") for name, (first, last) in bounds.items()}


def import_traces(sources: list[str | Path], mapping_path: str | Path, out: str | Path, *,
                  max_rows: int = IMPORTER.max_rows, max_bytes: int = IMPORTER.max_bytes,
                  max_span_days: float = IMPORTER.max_span_days) -> dict[str, Any]:
    """Import ``sources`` with the mapping into contract Parquet at ``out``; returns the metadata.

    Bounded before the memory is taken: at most ``max_rows`` rows and ``max_bytes`` bytes read from all
    sources together (a Parquet source is refused from its footer, before it is decoded), timestamps in
    the plausible range, each server's grid at most ``max_span_days`` long and all grids together at most
    ``max_rows`` rows. Any overrun raises :class:`TraceImportError` (or ``InputLimitError``) naming the
    file or server and the flag that raises the limit.
    """

    began = time.perf_counter()
    mapping = load_mapping(mapping_path)
    limits = ReadLimits(max_rows=max_rows, max_bytes=max_bytes, command="main.py import",
                        rows_setting="--max-rows (IMPORTER.max_rows in config.py)",
                        bytes_setting="--max-bytes (IMPORTER.max_bytes in config.py)",
                        doc=f"{IMPORTING_DOC} (Limits)")
    paths = sorted(Path(s) for s in sources)
    if not paths:
        raise _fail("no source files given", "there is nothing to import", "pass one or more CSV/Parquet files")
    stems = [p.stem for p in paths]
    if not mapping.server_column and len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise _fail(f"source ids {twice} appear in more than one file", "one file is one server, named by its stem",
                    "rename the files, or add a server column to the mapping")
    # Every Parquet footer first: a file over the limits is refused before any source is decoded.
    footer_rows = footer_bytes = 0
    for path in paths:
        if _is_parquet(path):
            rows, sizes = parquet_footer(path)
            nbytes = sum(sizes.get(c, 0) for c in _parquet_columns(path, mapping))
            if footer_rows + rows > max_rows:
                earlier = f" (after {footer_rows:,} rows of other Parquet sources)" if footer_rows else ""
                raise limits.too_many_rows(f"{path.name} holds {rows:,} rows{earlier}")
            if footer_bytes + nbytes > max_bytes:
                earlier = f" (after {footer_bytes:,} bytes of other Parquet sources)" if footer_bytes else ""
                raise limits.too_many_bytes(f"{path.name}'s mapped columns hold {nbytes:,} bytes uncompressed{earlier}")
            footer_rows += rows
            footer_bytes += nbytes
    parts: dict[str, list[tuple[pd.DataFrame, pd.DatetimeIndex]]] = {}
    files_of: dict[str, list[str]] = {}
    rows_read = bytes_read = 0
    for path in paths:
        frame, nbytes = _read_source(path, mapping, limits, rows_read, bytes_read)
        rows_read += len(frame)
        bytes_read += nbytes
        stamps = _timestamps(frame[mapping.timestamp_column], mapping.timestamp_unit, path)
        if mapping.server_column:  # a server may appear in several files (e.g. monthly exports)
            for source_id, part in frame.groupby(frame[mapping.server_column].astype(str), sort=True):
                parts.setdefault(str(source_id), []).append((part, stamps[frame.index.get_indexer(part.index)]))
                files_of.setdefault(str(source_id), []).append(path.name)
        else:
            parts[path.stem] = [(frame, stamps)]
            files_of[path.stem] = [path.name]
    names = _names_for(sorted(parts), mapping.profile)
    per_server: dict[str, tuple[pd.DataFrame, pd.DatetimeIndex]] = {}
    for source_id, pieces in parts.items():
        if not any(len(f) for f, _ in pieces):
            logger.warning("%s: no rows (a header only); no server written for it", ", ".join(files_of[source_id]))
            continue
        frame = pd.concat([f for f, _ in pieces], ignore_index=True)
        stamps = pieces[0][1].append([s for _, s in pieces[1:]]) if len(pieces) > 1 else pieces[0][1]
        per_server[names[source_id]] = (frame, stamps)
    if not per_server:
        raise _fail("the sources hold no rows", "there is nothing to import", "pass files that hold samples")
    grids = _server_grids(per_server, {names[i]: files_of[i] for i in parts}, max_rows, max_span_days)

    clipped: dict[str, int] = {}
    blocks = []
    for name in sorted(per_server):
        frame, stamps = per_server[name]
        grid = grids[name]
        measured, has_sample = _to_grid(frame, stamps, grid, mapping, clipped)
        block = pd.DataFrame({"timestamp": grid, "server_name": name, "profile": mapping.profile})
        for metric in LINBORG_METRICS:
            block[metric] = measured[metric] if metric in measured else float(UNMEASURED_FILL.get(metric, 0.0))
        # Uptime: days since the server's first sample (the source does not know reboots).
        first = stamps.min()
        block["uptime_days"] = np.minimum(UPTIME_MAX_DAYS,
                                          np.floor(np.maximum(0.0, (grid - first).total_seconds() / 86400.0)))
        block["has_sample"] = has_sample
        blocks.append(block)
    metadata = write_contract_data(blocks, out, mapping.measured, {
        "source": mapping.source,
        "source_files": [p.name for p in paths],
        "mapping": Path(mapping_path).name,
        "unmeasured_rule_uptime": "days since the server's first sample",
        "clipped_values": clipped,
    })
    logger.info("imported %d servers, %s rows (%s .. %s) from %d file(s) in %.1fs; measured: %s; clipped: %s",
                len(per_server), f"{metadata['rows']:,}", metadata["time_span"]["start"],
                metadata["time_span"]["end"], len(paths),
                time.perf_counter() - began, ", ".join(metadata["measured_metrics"]), clipped or "none")
    return metadata


def write_contract_data(blocks: list[pd.DataFrame], out: str | Path, measured: list[str],
                        extra: dict[str, Any]) -> dict[str, Any]:
    """Finish per-server blocks into contract Parquet at ``out`` (+ metadata and server mapping).

    Each block is one server on its 5-minute grid (the importer's: first to last sample) with
    ``timestamp``, ``server_name``, ``profile``, ``has_sample`` and the LINBORG metrics it measured (NaN
    where unknown; any it
    lacks are filled by ``UNMEASURED_FILL``). Buckets without samples get the contract's offline
    vector (``contract.fill_offline``), states are derived by ``state_rules``, the result is
    validated strictly (an invalid result is not left behind) and ``metrics_metadata.json``
    records what was measured.
    Shared by the trace importer and the Prometheus adapter.
    """
    filled_blocks = []
    for block in blocks:
        block = block.copy()
        has_sample = block["has_sample"].to_numpy(dtype=bool)
        for metric in LINBORG_METRICS:
            if metric not in block:
                block[metric] = float(UNMEASURED_FILL.get(metric, 0.0))
        # Buckets without samples get the contract's offline vector (activity 0, CPU idle 100, disk
        # and uptime carried from the last sample).
        offline = fill_offline({metric: block[metric].to_numpy(dtype=float) for metric in LINBORG_METRICS},
                               has_sample)
        for metric in LINBORG_METRICS:
            # A value still unknown (a metric a sampled bucket lacked, or carried from such a bucket)
            # takes the last known one, else the next, else the unmeasured fill.
            values = pd.Series(offline[metric], index=block.index)
            block[metric] = values.ffill().bfill().fillna(float(UNMEASURED_FILL.get(metric, 0.0)))
        filled_blocks.append(block)
    data = pd.concat(filled_blocks, ignore_index=True)
    data["state"] = derive_states(data).to_numpy()
    data = data.drop(columns="has_sample")
    servers = data.groupby("server_name", sort=True)["profile"].first().astype(str).to_dict()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, pa.Array] = {
        "timestamp": pa.array(data["timestamp"].to_numpy(), type=pa.timestamp("ns", tz="UTC")),
        "server_name": pa.array(data["server_name"].astype(str)).dictionary_encode(),
        "profile": pa.array(data["profile"].astype(str)).dictionary_encode(),
        "state": pa.array(data["state"].astype(str)).dictionary_encode(),
    }
    for metric in LINBORG_METRICS:
        values = data[metric].to_numpy()
        columns[metric] = pa.array(np.rint(values).astype(np.int32) if metric in INTEGER_METRICS
                                   else values.astype(np.float32))
    atomic_write_parquet(out, pa.table(columns))
    encoder = ServerEncoder()
    encoder.encode_many(sorted(servers))
    encoder.save(out.parent)

    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(load_frame(out))
    if not is_valid:
        out.unlink(missing_ok=True)
        raise _fail("the converted data does not pass the contract: "
                    + "; ".join(f"{e.column}: {e.what}" for e in errors[:3]), "training refuses invalid data",
                    "check the mapping's units and scales")
    uptime_rule = extra.pop("unmeasured_rule_uptime", f"filled with {UNMEASURED_FILL.get('uptime_days', 0)}")
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "importer_version": PROJECT_VERSION,
        **extra,
        "servers": servers,
        "rows": len(data),
        "time_span": {"start": data["timestamp"].min().isoformat(), "end": data["timestamp"].max().isoformat()},
        "measured_metrics": [m for m in LINBORG_METRICS if m in measured],
        "unmeasured_metrics": {m: f"filled with {UNMEASURED_FILL.get(m, 0.0)}" if m != "uptime_days"
                               else uptime_rule for m in LINBORG_METRICS if m not in measured},
        "offline_share": float((data["state"] == "offline").mean()),
        "state_shares": {s: float((data["state"] == s).mean()) for s in VALID_STATES},
        "warnings": [f"{w.column}: {w.what}" for w in warnings[:10]],
    }
    atomic_write_json(out.parent / METADATA_FILE, metadata)
    return metadata


def measured_metrics_for(data_path: str | Path) -> list[str] | None:
    """The measured metrics recorded beside ``data_path`` (None: all measured, e.g. simulator output)."""
    meta = Path(data_path).parent / METADATA_FILE
    if not meta.exists():
        return None
    measured = read_json(meta).get("measured_metrics")
    return list(measured) if measured is not None else None


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the importer (``main.py import``)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapping", type=Path, required=True, help="mapping JSON (see Docs/IMPORTING.md)")
    parser.add_argument("--out", type=Path, required=True, help="contract Parquet to write")
    parser.add_argument("sources", nargs="+", type=Path, help="CSV or Parquet files")
    parser.add_argument("--max-rows", type=int, default=IMPORTER.max_rows, metavar="N",
                        help=f"rows read from all sources together, and rows written (default {IMPORTER.max_rows:,}); "
                             "a Parquet source over it is refused before it is decoded")
    parser.add_argument("--max-bytes", type=int, default=IMPORTER.max_bytes, metavar="N",
                        help="bytes decoded from all sources together: Parquet columns read, uncompressed; CSV text "
                             f"(default {IMPORTER.max_bytes:,})")
    parser.add_argument("--max-span-days", type=float, default=IMPORTER.max_span_days, metavar="DAYS",
                        help=f"one server's first to last sample at most (default {IMPORTER.max_span_days})")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the importer from parsed arguments; 0 on success; raises with the reason otherwise (exit 2: a mapping
    or source that cannot be imported, ``errors.run_cli``)."""
    meta = import_traces(args.sources, args.mapping, args.out, max_rows=args.max_rows,
                         max_bytes=args.max_bytes, max_span_days=args.max_span_days)
    print(f"Imported {len(meta['servers'])} servers, {meta['rows']:,} rows -> {args.out}\n"
          f"measured: {', '.join(meta['measured_metrics'])}\n"
          f"unmeasured (filled, not trained on or scored): {', '.join(meta['unmeasured_metrics'])}\n"
          f"See {DATA_CONTRACT_DOC} (Measured and unmeasured metrics).")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), "import failed"))
