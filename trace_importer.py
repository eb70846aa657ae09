"""Import recorded metric traces (CSV/Parquet exports) into contract Parquet for training.

    python main.py import --mapping mappings/bitbrains_rnd.json --out training/server_metrics.parquet SRC...
    python trace_importer.py --mapping mapping.json --out training/server_metrics.parquet SRC...

A *mapping* (JSON, ``Docs/IMPORTING.md``) says how to read the source files, where the
timestamp and the server are, and how each LINBORG metric is computed from the source's
columns (column, optional ratio to another column, scale, complement to 100). The importer:

1. reads every source (CSV with the mapping's separator, or Parquet), one file per server or
   a server column;
2. computes the mapped metrics, clipped to the contract's ranges (clipped values are counted);
3. resamples each server to the 5-minute grid (mean of the samples in a bucket); gaps of up to
   ``IMPORT_MAX_INTERPOLATE_BUCKETS`` buckets are interpolated, longer gaps become ``offline``
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

from common_utils import atomic_write_json, atomic_write_parquet, make_server_name, read_json, setup_logging
from config import (
    CONTRACT_VERSION,
    DATA_CONTRACT_DOC,
    IMPORT_MAX_INTERPOLATE_BUCKETS,
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
)
from contract import fill_offline
from server_encoder import ServerEncoder
from state_rules import derive_states

logger = logging.getLogger(__name__)

TIME_UNITS = ("s", "ms", "us", "ns", "iso")


class TraceImportError(ValueError):
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
    return TraceImportError(f"{what}. Why it matters: {why}. Fix: {fix}. See {IMPORTING_DOC}.")


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


def _read_source(path: Path, mapping: Mapping) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, sep=mapping.csv_sep, skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    needed = {mapping.timestamp_column, *(r.column for r in mapping.metrics.values()),
              *(r.divide_by for r in mapping.metrics.values() if r.divide_by)}
    if mapping.server_column:
        needed.add(mapping.server_column)
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise _fail(f"{path.name} lacks column(s) {missing} (it has {list(frame.columns)[:12]})",
                    "the mapping computes metrics from them", "fix the column names in the mapping")
    return frame


def _timestamps(values: pd.Series, unit: str) -> pd.DatetimeIndex:
    if unit == "iso":
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    return pd.DatetimeIndex(pd.to_datetime(values.astype("int64"), unit=unit, utc=True))


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
    # Only gaps of at most IMPORT_MAX_INTERPOLATE_BUCKETS are bridged; longer ones stay empty (offline).
    run_id = np.cumsum(has_sample)
    run_length = pd.Series(~has_sample).groupby(run_id).transform("sum").to_numpy()
    short_gap = ~has_sample & (run_length <= IMPORT_MAX_INTERPOLATE_BUCKETS)
    filled = buckets.interpolate(limit_area="inside")
    filled[~(has_sample | short_gap)] = np.nan
    has_sample = has_sample | (short_gap & filled.notna().all(axis=1).to_numpy())
    return {name: filled[name].to_numpy() for name in buckets}, has_sample


def import_traces(sources: list[str | Path], mapping_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Import ``sources`` with the mapping into contract Parquet at ``out``; returns the metadata."""

    began = time.perf_counter()
    mapping = load_mapping(mapping_path)
    paths = sorted(Path(s) for s in sources)
    if not paths:
        raise _fail("no source files given", "there is nothing to import", "pass one or more CSV/Parquet files")
    stems = [p.stem for p in paths]
    if not mapping.server_column and len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise _fail(f"source ids {twice} appear in more than one file", "one file is one server, named by its stem",
                    "rename the files, or add a server column to the mapping")
    parts: dict[str, list[tuple[pd.DataFrame, pd.DatetimeIndex]]] = {}
    for path in paths:
        frame = _read_source(path, mapping)
        stamps = _timestamps(frame[mapping.timestamp_column], mapping.timestamp_unit)
        if mapping.server_column:  # a server may appear in several files (e.g. monthly exports)
            for source_id, part in frame.groupby(frame[mapping.server_column].astype(str), sort=True):
                parts.setdefault(str(source_id), []).append((part, stamps[frame.index.get_indexer(part.index)]))
        else:
            parts[path.stem] = [(frame, stamps)]
    names = _names_for(sorted(parts), mapping.profile)
    per_server: dict[str, tuple[pd.DataFrame, pd.DatetimeIndex]] = {}
    for source_id, pieces in parts.items():
        frame = pd.concat([f for f, _ in pieces], ignore_index=True)
        stamps = pieces[0][1].append([s for _, s in pieces[1:]]) if len(pieces) > 1 else pieces[0][1]
        per_server[names[source_id]] = (frame, stamps)
    start = min(s.min() for _, s in per_server.values()).floor(f"{SAMPLING_INTERVAL_SECONDS}s")
    end = max(s.max() for _, s in per_server.values()).floor(f"{SAMPLING_INTERVAL_SECONDS}s")
    grid = pd.date_range(start, end, freq=f"{SAMPLING_INTERVAL_SECONDS}s", tz="UTC")

    clipped: dict[str, int] = {}
    blocks = []
    for name in sorted(per_server):
        frame, stamps = per_server[name]
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
                len(per_server), f"{metadata['rows']:,}", grid[0], grid[-1], len(paths),
                time.perf_counter() - began, ", ".join(metadata["measured_metrics"]), clipped or "none")
    return metadata


def write_contract_data(blocks: list[pd.DataFrame], out: str | Path, measured: list[str],
                        extra: dict[str, Any]) -> dict[str, Any]:
    """Finish per-server blocks into contract Parquet at ``out`` (+ metadata and server mapping).

    Each block is one server on the same 5-minute grid with ``timestamp``, ``server_name``,
    ``profile``, ``has_sample`` and the LINBORG metrics it measured (NaN where unknown; any it
    lacks are filled by ``UNMEASURED_FILL``). Buckets without samples get the contract's offline
    vector (``contract.fill_offline``), states are derived by ``state_rules``, the result is
    validated strictly (an invalid result is not left behind) and ``metrics_metadata.json``
    records what was measured.
    Shared by the trace importer and the Prometheus adapter.
    """
    from data_validator import DataValidator, load_frame

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
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the importer from parsed arguments; 0 on success, 1 with the reason otherwise."""
    try:
        meta = import_traces(args.sources, args.mapping, args.out)
    except (TraceImportError, OSError, ValueError, KeyError) as exc:
        logger.error("import failed: %s", exc)
        return 1
    print(f"Imported {len(meta['servers'])} servers, {meta['rows']:,} rows -> {args.out}\n"
          f"measured: {', '.join(meta['measured_metrics'])}\n"
          f"unmeasured (filled, not trained on or scored): {', '.join(meta['unmeasured_metrics'])}\n"
          f"See {DATA_CONTRACT_DOC} (Measured and unmeasured metrics).")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_from_args(build_arg_parser().parse_args()))
