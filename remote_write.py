"""Prometheus remote-write in: node_exporter samples pushed to ``POST /api/v1/write`` become LINBORG records.

Prometheus (or any remote-write 1.0 sender: vmagent, Grafana Agent) POSTs snappy block-compressed
``prometheus.WriteRequest`` protobufs. This module decodes them with the protobuf and cramjam
libraries and assembles the samples into contract records; the daemon's HTTP layer
(``tft_inference``) only checks headers and hands the body over. No FastAPI in here.

* **Mapping**: the same mapping file as the Prometheus adapter (``mappings/prometheus_node_exporter.json``):
  its ``remote_write`` section says per LINBORG metric which series, label matchers (with the
  same ``{mountpoint}`` / ``{nic_exclude}`` variables), counter rate or gauge, sums, ratio and
  scale, next to the PromQL in ``queries``. ``null`` = not measured in both, and the loader
  refuses a file whose two sections disagree on that. Names and profiles are resolved by the
  adapter's :class:`prometheus_adapter.Identities` (the mapping's ``names``/``profiles``,
  ``node_uname_info``'s ``nodename`` when that series is written, else the instance without its
  port; convention names imply their profile).
* **Records**: one per instance and scrape (the samples of one scrape share its timestamp), made
  with the adapter's own helpers (contract ranges, CPU parts to 100, unmeasured fill, state), and
  fed through ``daemon.ingest`` like ``POST /feed``; the daemon averages them into its 5-minute
  buckets as it does a collector's samples. Counters become per-second rates between a series'
  consecutive samples (a drop is a reset, as in ``rate()``), so the bucket's mean is the rate
  over the bucket. A scrape is complete once the instance sent samples stamped more than
  ``REMOTE_WRITE_COMPLETE_GRACE_SECONDS`` later (Prometheus's shards deliver one scrape in
  parallel); samples at or before the instance's last completed scrape are dropped and counted.
* **Memory**: per instance the last sample of each mapped series and the scrapes not yet
  complete; instances and series are capped (``REMOTE_WRITE.max_*``); nothing is kept on disk,
  so a restart loses the scrapes not yet complete and each counter's previous sample (the first
  scrape after a restart makes no record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cramjam
import pandas as pd
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from pydantic import ValidationError

from api_models import INSTANCES_ADAPTER, FeedResponse
from config import (
    CPU_COMPONENTS,
    FEED_MAX_FUTURE_SECONDS,
    INSTANCE_MAX_LENGTH,
    INSTANCE_PATTERN,
    LINBORG_METRICS,
    REMOTE_WRITE,
    REMOTE_WRITE_COMPLETE_GRACE_SECONDS,
    REMOTE_WRITE_MAPPING_FILE,
    REMOTE_WRITE_MAX_DECODED_BYTES,
    REMOTE_WRITE_MAX_LABEL_NAME_BYTES,
    REMOTE_WRITE_MAX_LABEL_VALUE_BYTES,
    REMOTE_WRITE_MAX_LABELS_PER_SERIES,
    SCALING_DOC,
)
from errors import ToolkitError
from prometheus_adapter import (
    Identities,
    PrometheusError,
    PromMapping,
    _contract_values,
    contract_record,
    load_prom_mapping,
)
from sharding import Shard
from state_rules import StreamStateLabeler

logger = logging.getLogger(__name__)
COLLECTING_SECTION = "Docs/COLLECTING.md (Prometheus remote-write)"
CONTENT_TYPE = "application/x-protobuf"
CONTENT_ENCODING = "snappy"
PROTO_MESSAGE = "prometheus.WriteRequest"
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_KINDS = ("value", "rate", "age")
_OPS = ("=", "!=", "=~", "!~")


# ============================================================================ protobuf messages
def _write_request_class() -> type[Message]:
    """``prometheus.WriteRequest`` as Prometheus's prompb defines it (remote.proto, types.proto).

    Only the fields remote-write 1.0 carries samples in, with Prometheus's field numbers:
    WriteRequest.timeseries = 1 (2 is reserved, metadata = 3 is not read), TimeSeries.labels = 1,
    samples = 2 (exemplars = 3 and native histograms = 4 are skipped as unknown fields),
    Label.name = 1, value = 2, Sample.value = 1 (double), timestamp = 2 (int64 milliseconds).
    Built here with the protobuf library's descriptors, so the library does all the decoding.
    """
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tft_remote_write/prometheus_remote.proto",
                                               package="prometheus", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name

    message("Label", ("name", 1, f.TYPE_STRING, f.LABEL_OPTIONAL, None),
            ("value", 2, f.TYPE_STRING, f.LABEL_OPTIONAL, None))
    message("Sample", ("value", 1, f.TYPE_DOUBLE, f.LABEL_OPTIONAL, None),
            ("timestamp", 2, f.TYPE_INT64, f.LABEL_OPTIONAL, None))
    message("TimeSeries", ("labels", 1, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.Label"),
            ("samples", 2, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.Sample"))
    message("WriteRequest", ("timeseries", 1, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.TimeSeries"))
    proto.message_type[-1].reserved_range.add(start=2, end=3)
    pool = descriptor_pool.DescriptorPool()  # a private pool: no clash with any other prometheus.* protos
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(PROTO_MESSAGE))


WriteRequest = _write_request_class()


# ============================================================================ errors and decoding
_INSTANCE = re.compile(INSTANCE_PATTERN)


def check_label_limits(request: Message) -> None:
    """RemoteWriteError 400 naming the first series over the label limits (count, name bytes, value bytes)."""
    for series in request.timeseries:
        labels = series.labels
        too_long = next((lb for lb in labels if len(lb.name) > REMOTE_WRITE_MAX_LABEL_NAME_BYTES
                         or len(lb.value) > REMOTE_WRITE_MAX_LABEL_VALUE_BYTES), None)
        if len(labels) > REMOTE_WRITE_MAX_LABELS_PER_SERIES or too_long is not None:
            name = next((lb.value for lb in labels if lb.name == "__name__"), "?")[:80]
            raise RemoteWriteError(400, "label_limit", f"A series ({name}) carries {len(labels)} labels"
                                   + (f", one of them '{too_long.name[:40]}' with a name or value over the limit"
                                      if too_long is not None else "")
                                   + f"; the limits are {REMOTE_WRITE_MAX_LABELS_PER_SERIES} labels, names of "
                                     f"{REMOTE_WRITE_MAX_LABEL_NAME_BYTES} and values of "
                                     f"{REMOTE_WRITE_MAX_LABEL_VALUE_BYTES} characters. Drop extra labels with "
                                     f"write_relabel_configs ({COLLECTING_SECTION}).")


class RemoteWriteError(ToolkitError, ValueError):
    """A write refused as a whole: HTTP status, error code, one short sentence (Prometheus logs it).

    4xx: the batch can never be taken (Prometheus drops it, no retry); 5xx: retrying can help.
    """

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def check_headers(content_type: str | None, content_encoding: str | None, version: str | None) -> None:
    """Refuse (415) what is not remote-write 1.0: snappy-compressed ``prometheus.WriteRequest`` protobuf.

    415, not 400: the body is not wrong, it is in a format this endpoint does not read; a
    remote-write 2.0 sender takes 415 as the cue to fall back to 1.0.
    """
    media, _, params = (content_type or "").partition(";")
    proto = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p).get("proto", PROTO_MESSAGE)
    if media.strip().lower() != CONTENT_TYPE or proto.strip('"') != PROTO_MESSAGE:
        raise RemoteWriteError(415, "unsupported_media_type",
                               f"Send remote-write 1.0: Content-Type {CONTENT_TYPE} ({PROTO_MESSAGE}); got "
                               f"'{content_type or 'none'}'. See {COLLECTING_SECTION}.")
    if (content_encoding or "").strip().lower() != CONTENT_ENCODING:
        raise RemoteWriteError(415, "unsupported_encoding",
                               f"Send the body snappy-compressed (Content-Encoding: {CONTENT_ENCODING}); got "
                               f"'{content_encoding or 'none'}'.")
    if version and not version.strip().startswith(REMOTE_WRITE.version.rsplit(".", 1)[0] + "."):
        raise RemoteWriteError(415, "unsupported_version",
                               f"Remote-write {version} is not read here; send {REMOTE_WRITE.version} (1.0).")


def decode(body: bytes, max_decoded_bytes: int = REMOTE_WRITE_MAX_DECODED_BYTES) -> Message:
    """Snappy block format -> ``WriteRequest``; RemoteWriteError(400/413) when it is neither."""
    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as exc:
        raise RemoteWriteError(400, "invalid_snappy", f"The body is not snappy block-compressed: {exc}.") from None
    if size > max_decoded_bytes:
        raise RemoteWriteError(413, "payload_too_large", f"The body expands to {size} bytes; at most "
                               f"{max_decoded_bytes} are read. Lower queue_config.max_samples_per_send.")
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise RemoteWriteError(400, "invalid_snappy", f"The body is not snappy block-compressed: {exc}.") from None
    request = WriteRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise RemoteWriteError(400, "invalid_protobuf", f"The body is not a {PROTO_MESSAGE}: {exc}.") from None
    return request


def encode(request: Message) -> bytes:
    """A ``WriteRequest`` as Prometheus sends it (serialised, snappy block format); for tests and tools."""
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


# ============================================================================ the mapping
@dataclass(frozen=True)
class Term:
    """Every series of one instance named ``series`` whose labels pass ``match``, times ``sign``."""

    series: str
    kind: str = "value"  # value (gauge) | rate (counter, per second) | age (sample time - value, seconds)
    sign: float = 1.0
    match: tuple[tuple[str, str, str], ...] = ()
    _patterns: tuple[re.Pattern[str] | None, ...] = field(default=(), compare=False, repr=False)

    def matches(self, labels: dict[str, str]) -> bool:
        """PromQL matcher semantics: a missing label is the empty string, regexes are fully anchored."""
        for (label, op, value), pattern in zip(self.match, self._patterns, strict=True):
            have = labels.get(label, "")
            if op == "=":
                ok = have == value
            elif op == "!=":
                ok = have != value
            else:
                ok = bool(pattern.fullmatch(have)) == (op == "=~")  # type: ignore[union-attr]
            if not ok:
                return False
        return True


@dataclass(frozen=True)
class MetricSpec:
    """``multiply * sum(numerator) / max(sum(denominator), denominator_min) / divide``, floored if asked."""

    metric: str
    numerator: tuple[Term, ...]
    denominator: tuple[Term, ...] = ()
    multiply: float = 1.0
    divide: float = 1.0
    denominator_min: float | None = None
    floor: bool = False


@dataclass
class RemoteWriteMapping:
    """The adapter's mapping (names, profiles, variables) plus its ``remote_write`` section."""

    base: PromMapping
    metrics: dict[str, MetricSpec]
    name_series: str | None  # node_uname_info: its ``name_label`` names the host
    scrape_window_ms: int = 0  # samples this close in time form one scrape (0: one timestamp, as Prometheus)

    @property
    def measured(self) -> list[str]:
        """Metrics the section maps, in contract order."""
        return [m for m in LINBORG_METRICS if m in self.metrics]

    @property
    def series_names(self) -> list[str]:
        """Every series the mapping reads (what ``write_relabel_configs`` must keep)."""
        names = {t.series for spec in self.metrics.values() for t in (*spec.numerator, *spec.denominator)}
        return sorted(names | ({self.name_series} if self.name_series else set()))


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)


def _term(raw: Any, where: str, variables: dict[str, str]) -> Term:
    if not isinstance(raw, dict) or not isinstance(raw.get("series"), str) or not _METRIC_NAME.match(raw["series"]):
        raise PrometheusError(f"{where}: a term is {{\"series\": <metric name>, ...}}, got {raw!r}")
    kind = raw.get("kind", "value")
    if kind not in _KINDS:
        raise PrometheusError(f"{where}: kind {kind!r} is not one of {_KINDS}")
    sign = raw.get("sign", 1)
    if sign not in (1, -1):
        raise PrometheusError(f"{where}: sign must be 1 or -1, got {sign!r}")
    matchers, patterns = [], []
    for item in raw.get("match") or []:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
                and item[1] in _OPS):
            raise PrometheusError(f"{where}: a matcher is [label, op, value] with op one of {_OPS}, got {item!r}")
        label, op, value = item[0], item[1], _substitute(item[2], variables)
        try:
            patterns.append(re.compile(value) if op in ("=~", "!~") else None)
        except re.error as exc:
            raise PrometheusError(f"{where}: the regex {value!r} does not compile: {exc}") from None
        matchers.append((label, op, value))
    return Term(series=raw["series"], kind=kind, sign=float(sign), match=tuple(matchers), _patterns=tuple(patterns))


def load_remote_write_mapping(path: str | Path = REMOTE_WRITE_MAPPING_FILE) -> RemoteWriteMapping:
    """Read the mapping and its ``remote_write`` section; PrometheusError says what is wrong and where."""
    base = load_prom_mapping(path)  # the same file, names, profiles and variables as the adapter
    raw = json.loads(Path(path).read_text()).get("remote_write")
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict):
        raise PrometheusError(f"mapping {path} has no \"remote_write\": {{\"metrics\": ...}} section, so remote-write "
                              f"cannot map samples; see {COLLECTING_SECTION}")
    unknown = sorted(set(raw["metrics"]) - set(LINBORG_METRICS))
    if unknown:
        raise PrometheusError(f"mapping {path}: remote_write names unknown metrics {unknown}")
    metrics: dict[str, MetricSpec] = {}
    for metric in LINBORG_METRICS:
        spec = raw["metrics"].get(metric)
        if spec is None:
            continue
        where = f"mapping {path}, remote_write.metrics.{metric}"
        if not isinstance(spec, dict) or not spec.get("numerator"):
            raise PrometheusError(f"{where}: needs a non-empty \"numerator\" list of terms (or null: not measured)")
        numbers = {k: spec.get(k, d) for k, d in (("multiply", 1.0), ("divide", 1.0))}
        if not all(isinstance(v, int | float) and v != 0 for v in numbers.values()):
            raise PrometheusError(f"{where}: multiply and divide must be non-zero numbers")
        metrics[metric] = MetricSpec(
            metric=metric, numerator=tuple(_term(t, where, base.variables) for t in spec["numerator"]),
            denominator=tuple(_term(t, where, base.variables) for t in spec.get("denominator") or []),
            multiply=float(numbers["multiply"]), divide=float(numbers["divide"]),
            denominator_min=None if spec.get("denominator_min") is None else float(spec["denominator_min"]),
            floor=bool(spec.get("floor", False)))
    missing_cpu = [m for m in CPU_COMPONENTS if m not in metrics]
    if missing_cpu:
        raise PrometheusError(f"mapping {path}: remote_write has no spec for {missing_cpu}: all four CPU parts are "
                              f"needed (they must add to 100)")
    if set(metrics) != set(base.measured):
        raise PrometheusError(f"mapping {path}: 'queries' and 'remote_write' disagree on what is measured "
                              f"(only in queries: {sorted(set(base.measured) - set(metrics))}, only in remote_write: "
                              f"{sorted(set(metrics) - set(base.measured))}); null means unmeasured in both")
    name_series = base.name_query if base.name_query and _METRIC_NAME.match(base.name_query) else None
    if base.name_query and name_series is None:
        logger.warning("mapping %s: name_query %r is PromQL, not a series name; remote-write names instances by "
                       "the mapping's names, else the instance label without its port", path, base.name_query)
    window = raw.get("scrape_window_seconds", REMOTE_WRITE.scrape_window_seconds)
    if not isinstance(window, int | float) or not 0 <= window < 5:
        raise PrometheusError(f"mapping {path}: remote_write.scrape_window_seconds must be a number of seconds in "
                              f"[0, 5) (samples of one instance this close in time form one scrape), got {window!r}")
    return RemoteWriteMapping(base=base, metrics=metrics, name_series=name_series,
                              scrape_window_ms=int(round(window * 1000)))


def series_regex(mapping: RemoteWriteMapping) -> str:
    """The ``write_relabel_configs`` regex keeping exactly the series the mapping reads."""
    return "|".join(mapping.series_names)


# ============================================================================ assembling
class _Series:
    """One mapped series of one instance: which term slots it feeds and its last sample."""

    __slots__ = ("slots", "last_t", "last_v")

    def __init__(self, slots: tuple[tuple[int, float, str], ...]) -> None:
        self.slots = slots  # (slot, sign, kind)
        self.last_t = -1  # ms
        self.last_v = 0.0


class _Scrape:
    """Per term slot: the sum of its series' contributions at one timestamp, and whether any came."""

    __slots__ = ("sums", "seen")

    def __init__(self, slots: int) -> None:
        self.sums = [0.0] * slots
        self.seen = bytearray(slots)


class _Instance:
    """What is kept per instance: mapped series, scrapes not yet complete, identity."""

    __slots__ = ("series", "pending", "completed_ms", "newest_ms", "server", "refused", "reported")

    def __init__(self) -> None:
        self.series: dict[bytes, _Series] = {}  # a 16-byte digest of the series' labels -> its state
        self.pending: dict[int, _Scrape] = {}
        self.completed_ms = -1  # samples at or before this are late
        self.newest_ms = -1
        self.server: tuple[str, str] | None = None  # (server name, profile) once resolved
        self.refused: str | None = None  # why this instance's samples are dropped
        self.reported = False  # the unmeasured-metrics line was logged


_Row = tuple[str, "_Instance", int, dict[str, float | None]]  # instance, its state, scrape time (ms), metric values


@dataclass
class WriteResult:
    """What one write did: samples by result, records made and what the daemon said about them."""

    samples: Tally[str] = field(default_factory=Tally)
    records: int = 0
    feed: FeedResponse | None = None


class RemoteWriteReceiver:
    """Decode remote-write bodies and feed the records they complete to ``ingest`` (``daemon.ingest``).

    Thread-safe (one write assembles at a time). ``registry``: the daemon's prometheus_client
    registry, for the ``tft_remote_write_*`` counters /metrics shows. ``mapping_path`` that
    cannot be loaded leaves the receiver unavailable (every write: 503 with the reason, logged once).
    """

    ROUTE = "remote-write (POST /api/v1/write)"  # what the log calls this input (otlp_receiver: POST /v1/metrics)

    def __init__(self, ingest: Callable[[list[dict[str, Any]], dict[str, str] | None], FeedResponse],
                 registry: Any = None, mapping_path: str | Path = REMOTE_WRITE_MAPPING_FILE,
                 clock: Callable[[], float] = time.time,
                 grace_seconds: float = REMOTE_WRITE_COMPLETE_GRACE_SECONDS,
                 max_instances: int = REMOTE_WRITE.max_instances, max_series: int = REMOTE_WRITE.max_series,
                 max_series_per_instance: int = REMOTE_WRITE.max_series_per_instance,
                 max_future_seconds: float = FEED_MAX_FUTURE_SECONDS, shard: Shard | None = None) -> None:
        self.ingest, self.clock = ingest, clock
        self.shard = shard  # --shard K/N: samples of instances another shard owns are dropped and counted
        self.grace_ms = int(grace_seconds * 1000)
        self.max_instances, self.max_series = max_instances, max_series
        self.max_series_per_instance = max_series_per_instance
        self.max_future_ms = int(max_future_seconds * 1000)
        self.error: str | None = None
        try:
            self.mapping: RemoteWriteMapping | None = load_remote_write_mapping(mapping_path)
        except (PrometheusError, OSError, ValueError) as exc:
            self.mapping, self.error = None, str(exc)
            logger.error("%s is unavailable until the mapping is fixed and the daemon restarted: %s", self.ROUTE, exc)
        self.identities = Identities(None, self.mapping.base if self.mapping else PromMapping(queries={}), None)
        self._plan()
        self.instances: dict[str, _Instance] = {}
        self.series_count = 0
        self.samples: Tally[str] = Tally()
        self.records: Tally[str] = Tally()
        self._servers: dict[str, str] = {}  # server name -> instance
        self._labelers: dict[str, StreamStateLabeler] = {}
        self._unsent: list[dict[str, Any]] = []
        self._newest_ms = -1
        self._swept_ms = -1
        self._lock = threading.Lock()
        self._logged_at = time.monotonic()
        self._logged: Tally[str] = Tally()  # the counts the last summary reported
        self._summarised = False
        self._warned_at: dict[str, float] = {}
        self._rejections: list[str] = []
        self._metrics = self._register(registry) if registry is not None else None
        self._pushed: Tally[tuple[str, str]] = Tally()  # counts already added to the /metrics counters

    # ------------------------------------------------------------------ set-up
    def _plan(self) -> None:
        """Number every term (a slot) and index the terms by series name."""
        self.slot_count = 0
        self.by_series: dict[str, list[tuple[int, Term]]] = {}
        self.plan: list[tuple[MetricSpec, tuple[int, ...], tuple[int, ...]]] = []
        if self.mapping is None:
            return
        for metric in self.mapping.measured:
            spec = self.mapping.metrics[metric]
            parts = []
            for terms in (spec.numerator, spec.denominator):
                slots = []
                for term in terms:
                    self.by_series.setdefault(term.series, []).append((self.slot_count, term))
                    slots.append(self.slot_count)
                    self.slot_count += 1
                parts.append(tuple(slots))
            self.plan.append((spec, parts[0], parts[1]))

    @staticmethod
    def _register(registry: Any) -> dict[str, Any]:
        from prometheus_client import Counter, Gauge

        return {
            "samples": Counter("tft_remote_write_samples_total", "Remote-write samples by result: accepted, ignored "
                               "(not in the mapping), stale (staleness markers), late, refused (limits, identity), "
                               "other_shard (--shard: an instance another shard owns), invalid", ["result"],
                               registry=registry),
            "records": Counter("tft_remote_write_records_total", "Remote-write records by result: stored, duplicate, "
                               "rejected (contract), incomplete (a scrape without all CPU parts), refused (instance "
                               "identity), dropped (unsent, over the limit)", ["result"], registry=registry),
            "instances": Gauge("tft_remote_write_instances", "Instances remote-write tracks", registry=registry),
            "series": Gauge("tft_remote_write_series", "Mapped series remote-write tracks", registry=registry),
        }

    # ------------------------------------------------------------------ entry points
    def write(self, body: bytes, grant: Any = None) -> WriteResult:
        """One ``POST /api/v1/write`` body (runs off the event loop); RemoteWriteError when refused as a whole.

        ``grant``: the sender's key (``api_keys.KeyGrant``), handed to ``ingest`` with the records. Other
        errors of the store (disk full) propagate after the records were kept for the next write.
        """
        if self.mapping is None:
            raise RemoteWriteError(503, "remote_write_unavailable", f"The daemon's remote-write mapping is broken: "
                                                                    f"{self.error}")
        return self.accept(decode(body), grant)

    def accept(self, request: Message, grant: Any = None) -> WriteResult:
        """A decoded ``WriteRequest``: track its samples, feed the records of the scrapes it completed.

        RemoteWriteError 400 (nothing of it is taken) when a series carries more labels, or longer label
        names or values, than the limits (``REMOTE_WRITE_MAX_LABEL*``; Mimir's defaults)."""
        if self.mapping is None:
            raise RemoteWriteError(503, "remote_write_unavailable", f"remote-write is unavailable: {self.error}")
        check_label_limits(request)
        with self._lock:
            result = WriteResult()
            touched: dict[str, _Instance] = {}
            now_ms = int(self.clock() * 1000)
            for series in request.timeseries:
                self._series(series, result.samples, touched, now_ms)
            rows: list[_Row] = []
            for name, state in touched.items():
                rows += self._complete(name, state, state.newest_ms - self.grace_ms)
            rows += self._sweep()
            records, instances = self._records(rows)
            result.records = len(records)
            self.samples.update(result.samples)
            try:
                result.feed = self._deliver(records, instances, grant)
            finally:
                self._account(result)
            return result

    # ------------------------------------------------------------------ samples
    def _series(self, series: Any, tally: Tally[str], touched: dict[str, _Instance], now_ms: int) -> None:
        """Fold one written series into its instance's pending scrapes."""
        samples = series.samples
        if not samples:
            return
        labels = {label.name: label.value for label in series.labels}
        name = labels.get("__name__", "")
        mapping = self.mapping
        assert mapping is not None
        terms = self.by_series.get(name)
        if terms is None and name != mapping.name_series:
            tally["ignored"] += len(samples)
            return
        instance = labels.get(mapping.base.instance_label)
        if not instance:
            tally["invalid"] += len(samples)
            self._warn("no_instance", "remote-write series %s carry no '%s' label and are dropped; Prometheus sets "
                       "it per target (relabelling may have removed it)", name, mapping.base.instance_label)
            return
        if len(instance) > INSTANCE_MAX_LENGTH or not _INSTANCE.fullmatch(instance):
            tally["invalid"] += len(samples)
            self._warn("bad_instance", "remote-write series carry an '%s' label the contract does not take "
                       "(printable, no spaces or quotes, at most %d characters): %r; dropped",
                       mapping.base.instance_label, INSTANCE_MAX_LENGTH, instance[:80])
            return
        state = self.instances.get(instance)
        if state is None and self.shard is not None and not self.shard.owns(instance):
            tally["other_shard"] += len(samples)
            self._warn("other_shard", "remote-write: instance %s belongs to shard %d/%d (Prometheus hashmod of its "
                       "instance label), this daemon is shard %s; its samples are dropped. Route each shard's "
                       "remote_write with hashmod + keep (%s)", instance, self.shard.owner(instance), self.shard.count,
                       self.shard, SCALING_DOC)
            return
        state = state or self._new_instance(instance)
        if state is None or state.refused:
            tally["refused"] += len(samples)
            return
        if terms is None:  # the name series (node_uname_info): only its label matters
            host = labels.get(mapping.base.name_label)
            if host and state.server is None:
                self.identities.note_nodename(instance, host)
            stale = sum(1 for sample in samples if math.isnan(sample.value))
            tally["stale"] += stale
            tally["accepted"] += len(samples) - stale
            return
        # The series is keyed by a digest of its labels: 16 bytes whatever the labels' size (they are read
        # once, here, for the matchers), so a sender cannot pin memory with long label values.
        key = hashlib.blake2b("\xff".join(f"{k}\xfe{v}" for k, v in sorted(labels.items())).encode(),
                              digest_size=16).digest()
        tracked = state.series.get(key)
        if tracked is None:
            slots = tuple((slot, term.sign, term.kind) for slot, term in terms if term.matches(labels))
            if not slots:
                tally["ignored"] += len(samples)
                return
            if self.series_count >= self.max_series or len(state.series) >= self.max_series_per_instance:
                tally["refused"] += len(samples)
                self._warn("max_series", "remote-write tracks %d series (%d of instance %s), the limit "
                           "(REMOTE_WRITE.max_series / REMOTE_WRITE.max_series_per_instance); samples of new series "
                           "are dropped. Keep "
                           "only the mapped series (write_relabel_configs, %s) or raise the limits",
                           self.series_count, len(state.series), instance, COLLECTING_SECTION)
                return
            tracked = state.series[key] = _Series(slots)
            self.series_count += 1
        touched[instance] = state
        for sample in samples:
            t, v = sample.timestamp, sample.value
            if t <= tracked.last_t or t <= state.completed_ms:
                tally["late"] += 1
                continue
            if math.isnan(v):  # a staleness marker: the series ended (its next sample starts a new rate)
                tally["stale"] += 1
                continue
            if not math.isfinite(v) or t > now_ms + self.max_future_ms:
                tally["invalid"] += 1
                continue
            scrape = state.pending.get(t) or self._nearby(state, t)
            if scrape is None:
                scrape = state.pending[t] = _Scrape(self.slot_count)
            for slot, sign, kind in tracked.slots:
                if kind == "rate":
                    if tracked.last_t < 0:
                        continue  # a counter's first sample: no rate yet
                    increase = v - tracked.last_v if v >= tracked.last_v else v  # a drop is a reset to 0
                    x = increase * 1000.0 / (t - tracked.last_t)
                elif kind == "age":
                    x = t / 1000.0 - v
                else:
                    x = v
                scrape.sums[slot] += sign * x
                scrape.seen[slot] = 1
            tracked.last_t, tracked.last_v = t, v
            state.newest_ms = max(state.newest_ms, t)
            self._newest_ms = max(self._newest_ms, t)
            tally["accepted"] += 1

    def _nearby(self, state: _Instance, t: int) -> _Scrape | None:
        """The pending scrape stamped within the mapping's scrape window of ``t`` (a source whose collectors stamp
        their series apart, as the OpenTelemetry collector's hostmetrics scrapers do); None for a window of 0."""
        window = self.mapping.scrape_window_ms if self.mapping else 0
        if window <= 0:
            return None
        near = [k for k in state.pending if abs(k - t) <= window]
        return state.pending[min(near, key=lambda k: abs(k - t))] if near else None

    def _new_instance(self, instance: str) -> _Instance | None:
        if len(self.instances) >= self.max_instances:
            self._warn("max_instances", "remote-write tracks %d instances, the limit (REMOTE_WRITE.max_instances); "
                       "samples of new instances such as %s are dropped", len(self.instances), instance)
            return None
        state = self.instances[instance] = _Instance()
        return state

    # ------------------------------------------------------------------ scrapes -> rows -> records
    def _complete(self, instance: str, state: _Instance, before_ms: int) -> list[_Row]:
        """The instance's scrapes stamped before ``before_ms`` (and the oldest beyond the pending cap) as rows."""
        ready = sorted(t for t in state.pending if t < before_ms)
        waiting = sorted(t for t in state.pending if t >= before_ms)
        ready += waiting[:max(0, len(waiting) - REMOTE_WRITE.max_pending_scrapes)]
        rows = []
        for t in ready:
            scrape = state.pending.pop(t)
            state.completed_ms = max(state.completed_ms, t)
            values = {spec.metric: self._evaluate(spec, num, den, scrape) for spec, num, den in self.plan}
            if any(values[m] is None for m in CPU_COMPONENTS):
                self.records["incomplete"] += 1
                continue
            rows.append((instance, state, t, values))
        return rows

    @staticmethod
    def _evaluate(spec: MetricSpec, numerator: tuple[int, ...], denominator: tuple[int, ...],
                  scrape: _Scrape) -> float | None:
        """One metric of one scrape, or None when a term had no series (PromQL: an empty result)."""
        if not all(scrape.seen[s] for s in numerator) or not all(scrape.seen[s] for s in denominator):
            return None
        value = sum(scrape.sums[s] for s in numerator) * spec.multiply
        if denominator:
            below = sum(scrape.sums[s] for s in denominator)
            below = max(below, spec.denominator_min) if spec.denominator_min is not None else below
            if below == 0:
                return None
            value /= below
        value /= spec.divide
        if spec.floor and math.isfinite(value):
            value = float(math.floor(value))
        return value if math.isfinite(value) else None

    def _sweep(self) -> list[_Row]:
        """Complete and forget instances silent for REMOTE_WRITE.idle_seconds (checked once a minute of data)."""
        if self._newest_ms - self._swept_ms < 60_000:
            return []
        self._swept_ms = self._newest_ms
        cutoff = self._newest_ms - REMOTE_WRITE.idle_seconds * 1000
        rows: list[_Row] = []
        for state in self.instances.values():  # series an instance no longer sends (a NIC or disk gone)
            stale = [key for key, series in state.series.items() if series.last_t < cutoff]
            for key in stale:
                del state.series[key]
            self.series_count -= len(stale)
        for instance in [i for i, s in self.instances.items() if s.newest_ms < cutoff]:
            state = self.instances.pop(instance)
            rows += self._complete(instance, state, sys.maxsize)
            self.series_count -= len(state.series)
            if state.server and self._servers.get(state.server[0]) == instance:
                del self._servers[state.server[0]]
            self.identities.known.pop(instance, None)
            logger.info("remote-write: instance %s sent nothing for %d s; forgot it", instance,
                        REMOTE_WRITE.idle_seconds)
        return rows

    def _identity(self, instance: str, state: _Instance) -> tuple[str, str] | None:
        """(server, profile) of an instance, resolved at its first record; None when it is refused."""
        if state.server is None and not state.refused:
            try:
                name, profile = self.identities(instance)
            except (PrometheusError, ValueError) as exc:
                state.refused = str(exc)
            else:
                holder = self._servers.setdefault(name, instance)
                if holder != instance:
                    state.refused = (f"instance {instance} maps to server '{name}' as {holder} does; name them "
                                     f"apart in the mapping's 'names'")
                else:
                    state.server = (name, profile)
            if state.refused:
                logger.error("remote-write: samples of instance %s are dropped: %s (%s)", instance, state.refused,
                             COLLECTING_SECTION)
        return state.server

    def _records(self, rows: list[_Row]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Rows -> contract records (the adapter's clipping, CPU to 100, unmeasured fill, states), in time order."""
        assert self.mapping is not None
        named = []
        for instance, state, t, values in sorted(rows, key=lambda r: r[2]):
            identity = self._identity(instance, state)
            if identity is None:
                self.records["refused"] += 1
            else:
                named.append((instance, state, identity, t, values))
        if not named:
            return [], {}
        frame = _contract_values(pd.DataFrame([row[-1] for row in named], columns=self.mapping.measured,
                                              dtype=float))
        records, instances = [], {}
        for (instance, state, (name, profile), t, _), values in zip(named, frame.to_dict("records"), strict=True):
            labeler = self._labelers.setdefault(name, StreamStateLabeler(profile))
            records.append(contract_record(name, profile, t / 1000.0, values, labeler))
            instances[name] = instance
            if not state.reported:
                self._report_unmeasured(instance, state, values)
        return records, instances

    def _report_unmeasured(self, instance: str, state: _Instance, values: dict[str, Any]) -> None:
        """Once per instance: its server name, and which metrics it sends as the contract's unmeasured fill."""
        state.reported = True
        assert self.mapping is not None and state.server is not None
        server, profile = state.server
        missing = [m for m in self.mapping.measured if values.get(m) is None or math.isnan(values[m])]
        unmapped = [m for m in LINBORG_METRICS if m not in self.mapping.metrics]
        logger.info("remote-write: instance %s is server '%s' (%s); not measured by the mapping, sent as the "
                    "contract's unmeasured fill: %s", instance, server, profile, ", ".join(unmapped) or "none")
        if missing:
            logger.warning("remote-write: instance %s (%s) sent no series for %s: filled as unmeasured. Is "
                           "write_relabel_configs dropping them? (%s)", instance, server, ", ".join(missing),
                           COLLECTING_SECTION)

    def _deliver(self, records: list[dict[str, Any]], instances: dict[str, str],
                 grant: Any = None) -> FeedResponse | None:
        """Records (after any a failed write left) -> ``ingest``; on an error they wait for the next write."""
        batch = self._unsent + records
        if not batch:
            return None
        known = {r["server_name"]: self._servers[r["server_name"]] for r in self._unsent
                 if r["server_name"] in self._servers}
        labels = {**known, **instances}
        try:
            labels = INSTANCES_ADAPTER.validate_python(labels) or {}
        except ValidationError:
            labels = {s: i for s, i in labels.items() if self._valid_instance(s, i)}
        try:
            response = self.ingest(batch, labels or None, **({"grant": grant} if grant is not None else {}))
        except Exception:
            overflow = max(0, len(batch) - REMOTE_WRITE.max_unsent_records)
            if overflow:
                self.records["dropped"] += overflow
                logger.error("remote-write: %d records could not be stored and %d more wait than "
                             "REMOTE_WRITE.max_unsent_records allows; dropped the %d oldest", len(batch),
                             REMOTE_WRITE.max_unsent_records, overflow)
            self._unsent = batch[overflow:]
            raise
        self._unsent = []
        for rejected in response.rejected:
            record = batch[rejected.index]
            self._rejections.append(f"{record['server_name']} at {record['timestamp']}: {rejected.field}: "
                                    f"{rejected.reason}")
        return response

    def _valid_instance(self, server: str, instance: str) -> bool:
        try:
            INSTANCES_ADAPTER.validate_python({server: instance})
            return True
        except ValidationError:
            self._warn(f"instance_label:{instance}", "remote-write: the instance label %r is not kept for server "
                       "'%s' (the contract allows printable labels without spaces or quotes)", instance, server)
            return False

    # ------------------------------------------------------------------ accounting and logs
    def _account(self, result: WriteResult) -> None:
        """Count what the daemon did with the records; bring /metrics up to the counts; log a summary."""
        feed = result.feed
        if feed is not None:
            self.records.update({"stored": len(feed.stored), "duplicate": len(feed.duplicates),
                                 "rejected": len(feed.rejected)})
        if self._metrics:
            for kind, tally in (("samples", self.samples), ("records", self.records)):
                for key, n in tally.items():
                    if n > self._pushed[kind, key]:
                        self._metrics[kind].labels(key).inc(n - self._pushed[kind, key])
                        self._pushed[kind, key] = n
            self._metrics["instances"].set(len(self.instances))
            self._metrics["series"].set(self.series_count)
        self._summarise()

    def _summarise(self) -> None:
        """A WARNING about dropped samples and rejected records: the first at once, then one per
        REMOTE_WRITE.log_every_seconds at most."""
        now = time.monotonic()
        dropped = {k: self.samples[k] - self._logged[k] for k in ("late", "refused", "invalid")
                   if self.samples[k] > self._logged[k]}
        rejected = self.records["rejected"] - self._logged["rejected"]
        if not (dropped or rejected) or (self._summarised and now - self._logged_at < REMOTE_WRITE.log_every_seconds):
            return
        logger.warning("remote-write: dropped samples %s, %d records rejected by the contract check%s (since the "
                       "last such line; counted in /metrics tft_remote_write_*)", dropped or "none", rejected,
                       f", e.g. {self._rejections[0]}" if self._rejections else "")
        self._logged = Tally({**{k: self.samples[k] for k in ("late", "refused", "invalid")},
                              "rejected": self.records["rejected"]})
        self._logged_at, self._rejections, self._summarised = now, [], True

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log a limit or configuration warning once per REMOTE_WRITE.log_every_seconds per kind."""
        now = time.monotonic()
        last = self._warned_at.get(key)
        if last is not None and now - last < REMOTE_WRITE.log_every_seconds:
            return
        self._warned_at[key] = now
        logger.warning(message, *args)

    def stats(self) -> dict[str, Any]:
        """Counters for tests and tools: samples and records by result, instances and series tracked."""
        return {"samples": dict(self.samples), "records": dict(self.records), "instances": len(self.instances),
                "series": self.series_count, "unsent": len(self._unsent)}


def samples_of(families: Iterable[Any], instance: str, job: str, timestamp_ms: int) -> list[dict[str, Any]]:
    """prometheus_client text-parser families -> ``[{"labels": {...}, "value": v, "timestamp": ms}]`` as a
    scrape of ``instance`` would be written (Prometheus adds ``instance`` and ``job``); for tests and tools."""
    out = []
    for family in families:
        for sample in family.samples:
            labels = {"__name__": sample.name, **sample.labels, "instance": instance, "job": job}
            out.append({"labels": labels, "value": float(sample.value), "timestamp": timestamp_ms})
    return out


def write_request(samples: Iterable[dict[str, Any]]) -> Message:
    """A ``WriteRequest`` of ``[{"labels": {...}, "value": v, "timestamp": ms}]``, one series per label set
    (labels sorted by name, as Prometheus sends them); for tests and tools."""
    grouped: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for sample in samples:
        grouped.setdefault(tuple(sorted(sample["labels"].items())), []).append((sample["timestamp"], sample["value"]))
    request = WriteRequest()
    for labels, points in grouped.items():
        series = request.timeseries.add()
        for name, value in labels:
            series.labels.add(name=name, value=value)
        for t, v in sorted(points):
            series.samples.add(value=v, timestamp=t)
    return request
