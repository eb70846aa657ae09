"""Pull node_exporter series from Prometheus into LINBORG: training Parquet or a live feed.

    # history -> contract Parquet for training (query_range)
    python main.py prometheus --url http://127.0.0.1:9090 --hours 720 --out training/server_metrics.parquet
    # back-fill the daemon's window, then keep it fed (query every --poll seconds)
    python main.py prometheus --url http://127.0.0.1:9090 --daemon-url http://127.0.0.1:8000

A mapping (JSON; default ``mappings/prometheus_node_exporter.json``, Docs/COLLECTING.md) gives
one PromQL expression per LINBORG metric, each returning one series per instance. ``null``
means the exporter does not measure the metric: it is filled by the contract's rule and listed
as unmeasured in ``metrics_metadata.json`` (never trained on or scored). Server names come from
``node_uname_info``'s ``nodename`` (or the mapping's ``names``), profiles from ``--profile``,
the mapping's ``profiles``, or a convention name's prefix, else ``generic`` with a warning.

Values are put into 5-minute buckets as the daemon does: a value evaluated at time *t*
belongs to the bucket holding *t*; gauges are averaged, counts and uptime take the latest.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from common_utils import (
    host_name_to_server_name,
    isoformat_utc,
    isoformat_utc_ms,
    profile_for_host,
    setup_logging,
)
from config import (
    CPU_COMPONENTS,
    FEED_FLUSH_ON_EXIT_SECONDS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METRIC_RANGES,
    PROMETHEUS,
    SCALING_DOC,
    SHARD_HASH,
    UNMEASURED_FILL,
    VALID_PROFILES,
)
from contract import bucket_of_times, bucket_start
from errors import EXIT_RUNTIME, EXIT_USAGE, ToolkitError, UsageError, run_cli
from feed_client import DaemonFeed, ShardedFeed, open_feed
from sharding import HASHES
from state_rules import StreamStateLabeler
from trace_importer import write_contract_data

logger = logging.getLogger(__name__)
COLLECTING_DOC = "Docs/COLLECTING.md"
_LAST_VALUE_METRICS = set(INTEGER_METRICS)  # counts and uptime: the bucket's latest value


class PrometheusError(ToolkitError, RuntimeError):
    """A mapping, a query or a range Prometheus cannot serve (exit 2), or Prometheus could not answer (exit 3,
    ``exit_code=``); the message says what, why and how to fix it."""


@dataclass
class PromMapping:
    """How node_exporter (or any exporter's) series become LINBORG metrics."""

    queries: dict[str, str | None]
    instance_label: str = "instance"
    name_query: str | None = "node_uname_info"
    name_label: str = "nodename"
    names: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def measured(self) -> list[str]:
        """Metrics the mapping has a query for."""
        return [m for m in LINBORG_METRICS if self.queries.get(m)]

    def promql(self, metric: str, window: str) -> str:
        """The metric's PromQL with ``{window}`` and the mapping's variables filled in."""
        values = {**self.variables, "window": window}
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), self.queries[metric] or "")


def load_prom_mapping(path: str | Path = PROMETHEUS.mapping_file) -> PromMapping:
    """Read and check a Prometheus mapping file."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PrometheusError(f"cannot read the mapping {path}: {exc}; see {COLLECTING_DOC}") from exc
    queries = raw.get("queries") or {}
    unknown = sorted(set(queries) - set(LINBORG_METRICS))
    if unknown:
        raise PrometheusError(f"mapping {path} names unknown metrics {unknown}; the LINBORG metrics are "
                              f"{LINBORG_METRICS} ({COLLECTING_DOC})")
    missing_cpu = [m for m in CPU_COMPONENTS if not queries.get(m)]
    if missing_cpu:
        raise PrometheusError(f"mapping {path} has no query for {missing_cpu}: all four CPU parts are needed "
                              f"(they must add to 100) ({COLLECTING_DOC})")
    bad_profiles = {n: p for n, p in (raw.get("profiles") or {}).items() if p not in VALID_PROFILES}
    if bad_profiles:
        raise PrometheusError(f"mapping {path}: unknown profiles {bad_profiles}; use one of {VALID_PROFILES}")
    return PromMapping(queries={m: queries.get(m) for m in LINBORG_METRICS},
                       instance_label=raw.get("instance_label", "instance"),
                       name_query=raw.get("name_query", "node_uname_info"),
                       name_label=raw.get("name_label", "nodename"),
                       names=dict(raw.get("names") or {}), profiles=dict(raw.get("profiles") or {}),
                       variables={k: str(v) for k, v in (raw.get("variables") or {}).items()}, path=str(path))


class PrometheusClient:
    """The two calls of Prometheus's HTTP API the adapter needs (``/api/v1/query``, ``query_range``)."""

    def __init__(self, url: str, timeout: float = PROMETHEUS.timeout_seconds) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout)

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            response = self._client.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                                  f"check --url and that Prometheus runs ({COLLECTING_DOC})",
                                  exit_code=EXIT_RUNTIME) from exc
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"{self.url}{path} answered HTTP {response.status_code} without JSON; is --url "
                                  f"the Prometheus server (port 9090), not an exporter?") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused the query {params.get('query')!r}: "
                                  f"{body.get('errorType')}: {body.get('error')}; fix the mapping's PromQL "
                                  f"({COLLECTING_DOC})")
        return body["data"]["result"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector: ``[{"metric": labels, "value": [t, "v"]}, ...]``."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        return self._get("/api/v1/query", params)

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range matrix, fetched in chunks below Prometheus's per-query point limit."""
        series: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        chunk = step * (PROMETHEUS.max_points_per_query - 1)
        lo = start
        while lo <= end:
            hi = min(end, lo + chunk)
            for item in self._get("/api/v1/query_range", {"query": promql, "start": lo, "end": hi, "step": step}):
                series.setdefault(tuple(sorted(item["metric"].items())), []).extend(item["values"])
            lo = hi + step
        return [{"metric": dict(k), "values": v} for k, v in series.items()]

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


class Identities:
    """Instance label -> (server name, profile), resolved once per instance and remembered."""

    def __init__(self, client: PrometheusClient | None, mapping: PromMapping, profile: str | None) -> None:
        """``client`` None: nothing is queried; host names come from :meth:`note_nodename` (remote-write
        receives node_uname_info's series itself)."""
        self.client, self.mapping, self.profile = client, mapping, profile
        self.known: dict[str, tuple[str, str]] = {}
        self._nodenames: dict[str, str] | None = None if client is not None else {}

    def note_nodename(self, instance: str, nodename: str) -> None:
        """Remember the host name ``instance`` reports (used until the instance is first resolved)."""
        if self._nodenames is None:
            self._nodenames = {}
        self._nodenames[instance] = nodename

    def _nodename(self, instance: str) -> str | None:
        """The host name the exporter reports (node_uname_info's nodename), short form."""
        if self.client is not None and self.mapping.name_query and (
                self._nodenames is None or instance not in self._nodenames):
            self._nodenames = {}
            for item in self.client.query(self.mapping.name_query):
                labels = item["metric"]
                if self.mapping.instance_label in labels and labels.get(self.mapping.name_label):
                    self._nodenames[labels[self.mapping.instance_label]] = labels[self.mapping.name_label]
        nodename = (self._nodenames or {}).get(instance)
        return nodename.split(".")[0] if nodename else None

    def __call__(self, instance: str) -> tuple[str, str]:
        if instance not in self.known:
            raw = self.mapping.names.get(instance) or self._nodename(instance) or re.sub(r":\d+$", "", instance)
            name = host_name_to_server_name(raw)
            try:
                profile = profile_for_host(name, self.mapping.profiles.get(name), self.profile)
            except ValueError as exc:
                raise PrometheusError(f"instance {instance}: {exc}") from exc
            if profile is None:
                profile = "generic"
                logger.warning("instance %s -> '%s': no profile in the mapping or --profile and not a convention "
                               "name; reporting it as 'generic'", instance, name)
            self.known[instance] = (name, profile)
            logger.info("instance %s -> server '%s' (%s)", instance, name, profile)
        return self.known[instance]


def fetch_samples(client: PrometheusClient, mapping: PromMapping, start: float, end: float, step: float,
                  window: str) -> pd.DataFrame:
    """Every mapped metric over [start, end]: long frame (instance, time, metric, value)."""
    frames = []
    for metric in mapping.measured:
        rows = []
        for item in client.query_range(mapping.promql(metric, window), start, end, step):
            instance = item["metric"].get(mapping.instance_label)
            if instance is None:
                raise PrometheusError(f"the query for {metric} returns series without the '{mapping.instance_label}' "
                                      f"label; aggregate 'by ({mapping.instance_label})' in the mapping")
            rows += [(instance, float(t), float(v)) for t, v in item["values"]]
        frame = pd.DataFrame(rows, columns=["instance", "time", "value"])
        frame["metric"] = metric
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["instance", "time", "value"])
    return data[np.isfinite(data["value"].to_numpy(dtype=float))]


def _contract_values(wide: pd.DataFrame) -> pd.DataFrame:
    """Clip to the contract's ranges and make the CPU parts add to exactly 100."""
    for metric in wide.columns:
        if metric in METRIC_RANGES:
            low, high = METRIC_RANGES[metric]
            wide[metric] = wide[metric].clip(low, high)
    cpu = wide[CPU_COMPONENTS]
    total = cpu.sum(axis=1).replace(0.0, np.nan)
    wide[CPU_COMPONENTS] = cpu.div(total, axis=0) * 100.0
    return wide


def to_buckets(samples: pd.DataFrame, mapping: PromMapping) -> pd.DataFrame:
    """Samples -> one row per (instance, 5-minute bucket): gauges averaged, counts the latest."""
    wide = samples.pivot_table(index=["instance", "time"], columns="metric", values="value", aggfunc="last")
    wide = wide.dropna(subset=[m for m in CPU_COMPONENTS if m in wide.columns]).reset_index()
    wide["bucket"] = bucket_start(bucket_of_times(pd.to_datetime(wide["time"], unit="s", utc=True)))
    metrics = [m for m in mapping.measured if m in wide.columns]
    agg = {m: ("last" if m in _LAST_VALUE_METRICS else "mean") for m in metrics}
    buckets = wide.sort_values("time").groupby(["instance", "bucket"]).agg(agg).reset_index()
    return _contract_values(buckets)


def export_parquet(client: PrometheusClient, mapping: PromMapping, out: str | Path, hours: float,
                   end: float | None = None, step: float = PROMETHEUS.step_seconds,
                   window: str = PROMETHEUS.rate_window, profile: str | None = None) -> dict[str, Any]:
    """Write ``hours`` of history up to ``end`` (default now) as contract Parquet for training."""
    end = time.time() if end is None else end
    start = end - hours * 3600
    samples = fetch_samples(client, mapping, start, end, step, window)
    if samples.empty:
        raise PrometheusError(f"no node_exporter data between {isoformat_utc(pd.Timestamp(start, unit='s'))} and "
                              f"{isoformat_utc(pd.Timestamp(end, unit='s'))}; check that Prometheus scrapes "
                              f"node_exporter and the time span ({COLLECTING_DOC})")
    buckets = to_buckets(samples, mapping)
    identities = Identities(client, mapping, profile)
    spanned = bucket_of_times(buckets["bucket"])
    grid = bucket_start(np.arange(spanned.min(), spanned.max() + 1))  # every bucket of the span, UTC
    blocks, instances = [], {}
    measured_any = set()
    for instance, part in buckets.groupby("instance", sort=True):
        name, server_profile = identities(str(instance))
        instances[name] = str(instance)
        part = part.set_index("bucket").reindex(grid)
        block = pd.DataFrame({"timestamp": grid, "server_name": name, "profile": server_profile})
        for metric in mapping.measured:
            if metric in part and part[metric].notna().any():
                block[metric] = part[metric].to_numpy()
                measured_any.add(metric)
        block["has_sample"] = part[CPU_COMPONENTS[0]].notna().to_numpy()
        blocks.append(block)
    if len(set(instances)) < len(instances):
        raise PrometheusError("two instances map to the same server name; name them in the mapping's 'names'")
    measured = [m for m in mapping.measured if m in measured_any]
    metadata = write_contract_data(blocks, out, measured, {
        "source": f"prometheus {client.url}",
        "mapping": Path(mapping.path).name if mapping.path else "(in memory)",
        "instances": instances,
        "query": {"step_seconds": step, "window": window},
    })
    logger.info("wrote %d servers, %s rows (%s .. %s) to %s; measured: %s", len(blocks), f"{metadata['rows']:,}",
                grid[0], grid[-1], out, ", ".join(metadata["measured_metrics"]))
    return metadata


def contract_record(name: str, profile: str, stamp: float, values: dict[str, Any],
                    labeler: StreamStateLabeler) -> dict[str, Any]:
    """One contract record of mapped values at ``stamp`` (epoch seconds), state labelled by ``labeler``.

    A metric without a value (None or NaN: unmeasured by the mapping, or no data) gets the
    contract's unmeasured fill (``UNMEASURED_FILL``); counts are whole; CPU idle is what makes
    the four CPU parts add to 100 after rounding. Shared by the live feeder and remote-write.
    """
    metrics: dict[str, Any] = {}
    for metric in LINBORG_METRICS:
        value = values.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = UNMEASURED_FILL.get(metric, 0.0)
        metrics[metric] = int(np.rint(value)) if metric in INTEGER_METRICS else round(float(value), 4)
    # idle is what rounding left; never below 0 (a saturated host's rounded parts can add to 100.0001)
    metrics["cpu_idle_pct"] = max(0.0, round(100.0 - sum(metrics[m] for m in CPU_COMPONENTS[:3]), 4))
    ts = pd.Timestamp(stamp, unit="s", tz="UTC")
    return {"timestamp": isoformat_utc_ms(ts), "server_name": name, "profile": profile,
            "state": labeler.label(ts, metrics), **metrics}


class LiveFeeder:
    """Back-fills the daemon from ``query_range`` and then feeds it from instant queries."""

    def __init__(self, client: PrometheusClient, mapping: PromMapping, feed: DaemonFeed | ShardedFeed,
                 profile: str | None, window: str = PROMETHEUS.rate_window) -> None:
        self.client, self.mapping, self.feed, self.window = client, mapping, feed, window
        self.identities = Identities(client, mapping, profile)
        self.labelers: dict[str, StreamStateLabeler] = {}
        self.last_time: dict[str, float] = {}
        self.polls = 0

    def _records(self, wide: pd.DataFrame) -> list[dict[str, Any]]:
        """Rows of (instance, time, metrics...) -> contract records, in time order, with states."""
        records = []
        for row in wide.sort_values("time").itertuples(index=False):
            values = row._asdict()
            instance, stamp = str(values["instance"]), float(values["time"])
            if any(values.get(m) is None or (isinstance(values.get(m), float) and math.isnan(values[m]))
                   for m in CPU_COMPONENTS):
                continue
            name, profile = self.identities(instance)
            if stamp <= self.last_time.get(name, -math.inf):
                continue
            self.last_time[name] = stamp
            self.feed.instances[name] = instance  # its label on the daemon's /metrics and alerts
            labeler = self.labelers.setdefault(name, StreamStateLabeler(profile))
            records.append(contract_record(name, profile, stamp, values, labeler))
        return records

    def backfill(self, hours: float, step: float) -> int:
        """Send the last ``hours`` at ``step`` resolution; returns the records queued."""
        end = time.time()
        samples = fetch_samples(self.client, self.mapping, end - hours * 3600, end, step, self.window)
        if samples.empty:
            logger.warning("no node_exporter data in the last %.2f h to back-fill", hours)
            return 0
        wide = samples.pivot_table(index=["instance", "time"], columns="metric", values="value",
                                   aggfunc="last").reset_index()
        records = self._records(_contract_values(wide))
        self.feed.put(records)
        self.feed.flush()
        logger.info("back-filled %d records of %d servers (%.2f h at %g s)", len(records),
                    len({r['server_name'] for r in records}), hours, step)
        return len(records)

    def poll(self) -> int:
        """One instant query per mapped metric, now; returns the records queued."""
        at = time.time()
        rows: dict[str, dict[str, Any]] = {}
        for metric in self.mapping.measured:
            for item in self.client.query(self.mapping.promql(metric, self.window), at):
                instance = item["metric"].get(self.mapping.instance_label)
                if instance is not None:
                    rows.setdefault(instance, {"instance": instance, "time": at})[metric] = float(item["value"][1])
        self.polls += 1
        if not rows:
            return 0
        records = self._records(_contract_values(pd.DataFrame(list(rows.values()))))
        self.feed.put(records)
        self.feed.flush()
        return len(records)

    def run(self, stop: threading.Event, poll_seconds: float, duration: float | None = None) -> None:
        """Poll until ``stop`` is set (or ``duration`` seconds passed); Prometheus outages are retried."""
        started = time.monotonic()
        while not stop.is_set():
            try:
                sent = self.poll()
                if self.polls == 1 or self.polls % 20 == 0:
                    s = self.feed.stats
                    logger.info("poll %d: %d records; daemon stored %d, %d waiting, %d rejected", self.polls, sent,
                                s.stored, self.feed.pending, s.rejected)
            except PrometheusError as exc:
                logger.warning("%s; retrying in %.0f s", exc, poll_seconds)
            if duration is not None and time.monotonic() - started >= duration:
                break
            stop.wait(poll_seconds)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the adapter (``main.py prometheus``)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Prometheus server, e.g. http://127.0.0.1:9090")
    parser.add_argument("--mapping", type=Path, default=PROMETHEUS.mapping_file,
                        help="PromQL per LINBORG metric (default %(default)s)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write contract Parquet (for training) and exit")
    target.add_argument("--daemon-url", action="append", metavar="URL",
                        help=f"feed this inference daemon: back-fill, then poll; repeat for the shards of a sharded "
                             f"fleet, in shard order (each instance goes to the shard that owns it, {SCALING_DOC})")
    parser.add_argument("--shard-hash", choices=tuple(HASHES), default=SHARD_HASH,
                        help="with several --daemon-url: the daemons' --shard-hash (default %(default)s)")
    parser.add_argument("--hours", type=float, help=f"history to export (--out) or back-fill (--daemon-url; "
                                                    f"default {PROMETHEUS.backfill_hours})")
    parser.add_argument("--end", help="end of the exported span, ISO 8601 (default: now)")
    parser.add_argument("--step", type=float, default=PROMETHEUS.step_seconds,
                        help="seconds between query_range points (default %(default)s)")
    parser.add_argument("--window", default=PROMETHEUS.rate_window,
                        help="rate() look-back filled into {window} (default %(default)s; >= 2 scrape intervals)")
    parser.add_argument("--poll", type=float, default=PROMETHEUS.poll_seconds,
                        help="seconds between live polls (default %(default)s)")
    parser.add_argument("--profile", choices=VALID_PROFILES,
                        help="profile of instances the mapping does not name (default: name prefix, else generic)")
    parser.add_argument("--api-key", help="daemon API key (default: the file in $TFT_API_KEY_FILE, else $TFT_API_KEY)")
    parser.add_argument("--duration", type=float, help="live mode: stop after this many seconds")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the adapter; 0 on success, 3 when records stayed undelivered; raises with the reason otherwise
    (``errors.run_cli``: exit 2 for a mapping, query or flag, 3 for Prometheus unreachable)."""
    mapping = load_prom_mapping(args.mapping)
    client = PrometheusClient(args.url)
    try:
        if args.out:
            if not args.hours:
                raise UsageError("--out needs --hours: how much history to export")
            end = pd.Timestamp(args.end).timestamp() if args.end else None
            meta = export_parquet(client, mapping, args.out, args.hours, end, args.step, args.window, args.profile)
            print(f"Exported {len(meta['servers'])} servers, {meta['rows']:,} rows -> {args.out}\n"
                  f"measured: {', '.join(meta['measured_metrics'])}\n"
                  f"unmeasured (filled, not trained on or scored): {', '.join(meta['unmeasured_metrics'])}")
            return 0
        feed = open_feed(args.daemon_url, args.api_key, args.shard_hash)
        if feed is None:
            return EXIT_USAGE  # open_feed logged why the key file cannot be used
        feeder = LiveFeeder(client, mapping, feed, args.profile, args.window)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        feeder.backfill(args.hours if args.hours is not None else PROMETHEUS.backfill_hours, args.step)
        logger.info("feeding %s from %s every %.0f s", ", ".join(args.daemon_url), args.url, args.poll)
        feeder.run(stop, args.poll, args.duration)
        left = feed.close(FEED_FLUSH_ON_EXIT_SECONDS)
        s = feed.stats
        logger.info("stopped: %d stored, %d duplicates, %d rejected, %d dropped, %d undelivered", s.stored,
                    s.duplicates, s.rejected, s.dropped_buffer_full, left)
        return EXIT_RUNTIME if left else 0
    finally:
        client.close()


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), "prometheus failed"))
