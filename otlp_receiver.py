"""OpenTelemetry metrics in: OTLP/HTTP ``POST /v1/metrics`` data points become LINBORG records.

An OpenTelemetry collector (``otlphttp`` exporter) or an SDK (the OTLP/HTTP metric exporter) POSTs
``ExportMetricsServiceRequest`` protobufs, decoded here with the official ``opentelemetry-proto``
classes. Each data point is named and labelled as the collector's ``prometheusremotewrite`` exporter
would name it (the OpenTelemetry specification's Prometheus compatibility rules: dots to
underscores, unit suffixes, ``_total`` on monotonic sums, ``_ratio`` on gauges of unit ``1``; the
resource attribute ``host.name`` as the label ``host_name``), so one mapping
(``mappings/otel_hostmetrics.json``) reads both a collector that remote-writes and one that pushes
OTLP. From there the data points take remote-write's own path (:class:`remote_write.RemoteWriteReceiver`):
the mapping's ``remote_write`` section, counter rates, one record per host and collection, the same
memory bounds (``REMOTE_WRITE.max_*``), the same ``daemon.ingest`` with the sender's key. No FastAPI in
here: ``tft_inference`` checks the headers and hands the body over.

* **Trust bounds**: the body is capped by the daemon (``DAEMON.max_body_bytes``) and inflated at most to
  ``OTLP.max_decoded_bytes``; a data point over the label limits (``REMOTE_WRITE_MAX_LABEL*``) is refused,
  the rest taken (OTLP's partial success); hosts and series are capped by remote-write's bounds; the
  key's ``servers=`` binding and ``--max-servers`` are applied by ``daemon.ingest`` to the records.
* **What is not read**: metrics the mapping does not name (counted ``ignored``), histograms and
  summaries, and sums of delta temporality (counted ``unsupported``: a rate needs cumulative values,
  the SDK's default; the collector's prometheusremotewrite exporter drops them too).
* **Answers** (the OTLP specification): 200 with an ``ExportMetricsServiceResponse`` (``partial_success``
  says what was refused and why); 4xx/5xx with a protobuf ``google.rpc.Status`` whose message says what,
  why and how to fix it. 429 and 503 are retried by OTLP clients, other 4xx never.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags

from api_models import FeedResponse
from config import (
    FEED_MAX_FUTURE_SECONDS,
    INSTANCE_MAX_LENGTH,
    INSTANCE_PATTERN,
    LINBORG_METRICS,
    OTLP,
    OTLP_MAPPING_FILE,
    REMOTE_WRITE_MAX_LABEL_NAME_BYTES,
    REMOTE_WRITE_MAX_LABEL_VALUE_BYTES,
    REMOTE_WRITE_MAX_LABELS_PER_SERIES,
)
from errors import ToolkitError
from remote_write import RemoteWriteError, RemoteWriteReceiver, WriteRequest

logger = logging.getLogger(__name__)
COLLECTING_SECTION = "Docs/COLLECTING.md (OpenTelemetry)"
CONTENT_TYPE = "application/x-protobuf"
ENCODINGS = ("identity", "gzip", "deflate")  # Content-Encoding taken ("" = identity)
HOST_ATTRIBUTE = "host.name"  # the semantic convention naming the host; its label is host_name
TARGET_INFO = "target_info"  # the series of a resource's attributes (the mapping's name_query: host.name's short form)
_INSTANCE = re.compile(INSTANCE_PATTERN)
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
# gRPC status codes carried in google.rpc.Status.code (the OTLP specification lets clients ignore them).
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 413: 8, 415: 3, 429: 8, 503: 14}


# ============================================================================ the Prometheus names
# The OpenTelemetry specification's "Prometheus and OpenMetrics compatibility" (as the collector's
# prometheusremotewrite exporter applies it with its default add_metric_suffixes: true): UCUM units to
# Prometheus' base-unit words, "X/Y" to "X_per_Y", annotations in braces dropped.
_UNIT_WORDS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "1": "", "%": "percent",
}
_PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
GAUGE, COUNTER, UPDOWN = "gauge", "monotonic_counter", "non_monotonic_counter"


def _clean_unit(word: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9:]", "_", word)).removeprefix("_")


def _unit_words(unit: str) -> tuple[str, str]:
    """(main, per) suffix words of a UCUM unit: ``By/s`` -> ("bytes", "per_second"), ``{thread}`` -> ("", "")."""
    main_unit, _, per_unit = unit.partition("/")
    main_unit, per_unit = main_unit.strip(), per_unit.strip()
    main = _UNIT_WORDS.get(main_unit, main_unit) if main_unit and not set("{}") & set(main_unit) else ""
    per = _PER_UNIT_WORDS.get(per_unit, per_unit) if per_unit and not set("{}") & set(per_unit) else ""
    return main, f"per_{per}" if per else ""


def metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus name of an OTLP metric, as prometheusremotewrite writes it.

    ``kind`` is GAUGE, COUNTER (a monotonic sum) or UPDOWN (a non-monotonic sum):
    ``system.cpu.time`` (s, COUNTER) -> ``system_cpu_time_seconds_total``; ``system.cpu.utilization``
    (1, GAUGE) -> ``system_cpu_utilization_ratio``; ``system.cpu.load_average.1m`` ({thread}) ->
    ``system_cpu_load_average_1m``.
    """
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", name) if t]
    main, per = (_clean_unit(word) for word in _unit_words(unit))
    if main in tokens:
        main = ""
    per = "" if per == "per_" else per.removesuffix("_")
    if per in tokens:
        per = ""
    if per:
        main = main.removesuffix("_")
    tokens += [word for word in (main, per) if word]
    if kind == COUNTER:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == GAUGE:
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    joined = "_".join(tokens)
    return f"_{joined}" if joined[:1].isdigit() else joined


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name: ``host.name`` -> ``host_name``, ``2xx`` -> ``key_2xx``."""
    if key.startswith("__") and key.endswith("__"):
        return key
    name = re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_]", "_", key))
    return f"key_{name}" if name[:1].isdigit() else name


def attribute_value(value: AnyValue) -> str:
    """An attribute's value as a label value (the collector's AsString: numbers plainly, lists and maps as JSON)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return np.format_float_positional(value.double_value, trim="-")
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return json.dumps(_plain(value), separators=(",", ":"))
    return ""


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return attribute_value(value) if kind else None


# ============================================================================ requests and answers
class OtlpError(ToolkitError):
    """A request refused as a whole: HTTP status, error code, one short sentence (the client logs it), and the
    ``tft_refused_total`` reason when the refusal is a trust bound."""

    def __init__(self, status: int, error: str, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.reason = status, error, detail, reason


def check_headers(content_type: str | None, content_encoding: str | None) -> str:
    """The body's encoding (``identity``, ``gzip``, ``deflate``); OtlpError 415 for what is not OTLP/HTTP protobuf."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != CONTENT_TYPE:
        hint = (" OTLP/HTTP JSON is not read here: set the exporter's protocol to http/protobuf "
                "(OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf; the collector's otlphttp exporter: encoding: proto)."
                if media == "application/json" else "")
        raise OtlpError(415, "unsupported_media_type", f"Send OTLP/HTTP protobuf: Content-Type {CONTENT_TYPE}; got "
                                                       f"'{content_type or 'none'}'.{hint} See {COLLECTING_SECTION}.")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise OtlpError(415, "unsupported_encoding", f"Content-Encoding '{content_encoding}' is not read here; send "
                                                     f"gzip (the collector's default), deflate or none (compression: "
                                                     f"gzip or none). See {COLLECTING_SECTION}.")
    return encoding


def inflate(body: bytes, encoding: str, max_bytes: int = OTLP.max_decoded_bytes) -> bytes:
    """The body uncompressed, never past ``max_bytes`` (OtlpError 413), or OtlpError 400 when it is not ``encoding``."""
    if encoding == "identity":
        return body
    parts, size, rest = [], 0, body
    while rest:  # a gzip body may be several members one after the other
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, max_bytes + 1 - size)
        except zlib.error as exc:
            raise OtlpError(400, f"invalid_{encoding}", f"The body is not {encoding}-compressed: {exc}.") from None
        size += len(part)
        if size > max_bytes:
            raise OtlpError(413, "payload_too_large", f"The body inflates past {max_bytes} bytes "
                                                      f"(OTLP.max_decoded_bytes); send smaller batches (the "
                                                      f"collector's sending_queue batch size, the SDK's "
                                                      f"max_export_batch_size).", reason="otlp_decoded_bytes")
        if not inflater.eof:
            raise OtlpError(400, f"invalid_{encoding}", f"The {encoding} body is truncated.")
        parts.append(part)
        rest = inflater.unused_data if encoding == "gzip" else b""
    return b"".join(parts)


def decode(raw: bytes) -> ExportMetricsServiceRequest:
    """An ``ExportMetricsServiceRequest``, or OtlpError 400 when the bytes are not one."""
    request = ExportMetricsServiceRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise OtlpError(400, "invalid_protobuf", f"The body is not an OTLP ExportMetricsServiceRequest: {exc}. "
                                                 f"POST /v1/metrics takes metrics only.") from None
    return request


def _status_class() -> type[Message]:
    """``google.rpc.Status`` (code = 1, message = 2; details = 3 is not sent), built with the protobuf library's
    descriptors in a private pool, so the daemon needs no googleapis package."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tft_otlp/google_rpc_status.proto", package="google.rpc",
                                               syntax="proto3")
    message = proto.message_type.add(name="Status")
    message.field.add(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    message.field.add(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


Status = _status_class()


def status_body(status: int, detail: str) -> bytes:
    """The body of an OTLP failure answer: a serialised ``google.rpc.Status``."""
    return Status(code=_GRPC_CODES.get(status, 2), message=detail[:OTLP.error_message_chars]).SerializeToString()


def response_body(rejected: int, message: str) -> bytes:
    """The body of an OTLP success answer; ``partial_success`` only when something was refused or needs saying."""
    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message[:OTLP.error_message_chars]
    return response.SerializeToString()


# ============================================================================ the receiver
@dataclass
class OtlpResult:
    """What one export did: data points by result, records fed, and what the client is told."""

    data_points: Tally[str] = field(default_factory=Tally)
    records: int = 0
    feed: FeedResponse | None = None
    rejected: int = 0  # data points refused or invalid, plus one per record the contract check rejected
    message: str = ""


class OtlpReceiver(RemoteWriteReceiver):
    """Decode OTLP metrics exports, name their data points as prometheusremotewrite does, and assemble them
    with remote-write's receiver (its mapping, rates, bounds and records) into ``ingest`` (``daemon.ingest``).

    ``on_refused``: counts a refusal at a trust bound (``PrometheusMetrics.refuse``). Its /metrics counters are
    ``tft_otlp_*``. Thread-safe.
    """

    ROUTE = "OpenTelemetry (POST /v1/metrics)"

    def __init__(self, ingest: Callable[..., FeedResponse], registry: Any = None,
                 mapping_path: str | Path = OTLP_MAPPING_FILE, clock: Callable[[], float] = time.time,
                 grace_seconds: float = OTLP.complete_grace_seconds,
                 max_future_seconds: float = FEED_MAX_FUTURE_SECONDS,
                 max_decoded_bytes: int = OTLP.max_decoded_bytes,
                 on_refused: Callable[[str], None] | None = None, **limits: Any) -> None:
        super().__init__(ingest, registry, mapping_path, clock=clock, grace_seconds=grace_seconds,
                         max_future_seconds=max_future_seconds, **limits)
        self.max_decoded_bytes = max_decoded_bytes
        self.on_refused = on_refused or (lambda reason: None)

    @staticmethod
    def _register(registry: Any) -> dict[str, Any]:
        from prometheus_client import Counter, Gauge

        return {
            "samples": Counter("tft_otlp_data_points_total", "OTLP data points by result: accepted, ignored (not in "
                               "the mapping, histograms), stale (no recorded value), late, refused (limits), invalid "
                               "(no host.name, bad time or value), unsupported (delta temporality)", ["result"],
                               registry=registry),
            "records": Counter("tft_otlp_records_total", "OTLP records by result: stored, duplicate, rejected "
                               "(contract), incomplete (a collection without all CPU parts), refused (host identity), "
                               "dropped (unsent, over the limit)", ["result"], registry=registry),
            "instances": Gauge("tft_otlp_hosts", "Hosts (host.name) the OTLP receiver tracks", registry=registry),
            "series": Gauge("tft_otlp_series", "Mapped series the OTLP receiver tracks", registry=registry),
        }

    # ------------------------------------------------------------------ entry point
    def export(self, body: bytes, encoding: str = "identity", grant: Any = None) -> OtlpResult:
        """One ``POST /v1/metrics`` body (runs off the event loop); OtlpError when it is refused as a whole.

        Errors of the store (disk full) propagate after the records made were kept for the next export.
        """
        if self.mapping is None:
            raise OtlpError(503, "otlp_unavailable", f"The daemon's OTLP mapping is broken: {self.error}. Fix the "
                                                     f"file given to --otlp-mapping and restart.")
        request = decode(inflate(body, encoding, self.max_decoded_bytes))
        write, local, problems = self.translate(request)
        if local["refused"]:
            self.on_refused("otlp_label_limit")
        with self._lock:
            self.samples.update(local)
        try:
            written = self.accept(write, grant)
        except RemoteWriteError as exc:  # not expected: translate() keeps to the limits accept() checks
            raise OtlpError(exc.status, exc.error, exc.detail) from None
        result = OtlpResult(data_points=local + written.samples, records=written.records, feed=written.feed)
        result.rejected = sum(result.data_points[k] for k in ("refused", "invalid", "unsupported", "late"))
        if written.samples["late"]:
            problems.append(f"{written.samples['late']} data points were stamped at or before a collection already "
                            f"recorded (a resent export)")
        if written.samples["refused"]:
            problems.append(f"{written.samples['refused']} data points exceed the hosts or series the daemon "
                            f"tracks (REMOTE_WRITE.max_instances / REMOTE_WRITE.max_series / "
                            f"REMOTE_WRITE.max_series_per_instance)")
        if written.feed is not None and written.feed.rejected:
            result.rejected += len(written.feed.rejected)
            first = written.feed.rejected[0]
            problems.append(f"{len(written.feed.rejected)} records rejected, e.g. {first.server_name}: "
                            f"{first.field}: {first.reason}")
        result.message = "; ".join(problems) + (f". See {COLLECTING_SECTION}." if problems else "")
        return result

    # ------------------------------------------------------------------ OTLP -> named samples
    def translate(self, request: ExportMetricsServiceRequest) -> tuple[Message, Tally[str], list[str]]:
        """The mapped data points of ``request`` as a remote-write ``WriteRequest`` (one series per data point),
        what was left out by result, and what the client should be told about it."""
        assert self.mapping is not None
        mapped = set(self.by_series)
        write, tally, problems = WriteRequest(), Tally(), []
        for resource_metrics in request.resource_metrics:
            attributes = {kv.key: kv.value for kv in resource_metrics.resource.attributes}
            host = attribute_value(attributes[HOST_ATTRIBUTE]) if HOST_ATTRIBUTE in attributes else ""
            identity = {"host_name": host, **self._service_labels(attributes)}
            first = len(write.timeseries)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points, kind = self._points(metric, tally, problems)
                    if not points:
                        continue
                    name = metric_name(metric.name, metric.unit, kind)
                    if name not in mapped:
                        tally["ignored"] += len(points)
                        continue
                    if not host or len(host) > INSTANCE_MAX_LENGTH or not _INSTANCE.fullmatch(host):
                        tally["invalid"] += len(points)
                        self._no_host(host, name, problems)
                        continue
                    for point in points:
                        self._add(write, name, identity, point, tally, problems)
            if len(write.timeseries) > first:  # the resource's own series, as prometheusremotewrite writes it
                info = write.timeseries.add()
                for label, text in sorted({**identity, "__name__": TARGET_INFO}.items()):
                    if text:
                        info.labels.add(name=label, value=text)
                info.samples.add(value=1.0, timestamp=max(write.timeseries[i].samples[0].timestamp
                                                          for i in range(first, len(write.timeseries) - 1)))
        return write, tally, problems

    @staticmethod
    def _service_labels(attributes: dict[str, AnyValue]) -> dict[str, str]:
        """``job`` and ``instance`` as the specification derives them from service.namespace/name/instance.id."""
        labels = {}
        service = attribute_value(attributes["service.name"]) if "service.name" in attributes else ""
        namespace = attribute_value(attributes["service.namespace"]) if "service.namespace" in attributes else ""
        if service:
            labels["job"] = f"{namespace}/{service}" if namespace else service
        if "service.instance.id" in attributes:
            labels["instance"] = attribute_value(attributes["service.instance.id"])
        return labels

    def _points(self, metric: Any, tally: Tally[str], problems: list[str]) -> tuple[Iterable[Any], str]:
        """A metric's number data points and their Prometheus kind; histograms and summaries are not read."""
        data = metric.WhichOneof("data")
        if data == "gauge":
            return metric.gauge.data_points, GAUGE
        if data == "sum":
            points = metric.sum.data_points
            if metric.sum.aggregation_temporality != _CUMULATIVE:
                tally["unsupported"] += len(points)
                if len(points):
                    problems.append(f"{metric.name} is a sum of delta temporality: send cumulative sums (the SDK's "
                                    f"default; no cumulativetodelta processor in the collector)")
                    self._warn("delta", "OTLP metric %s arrives with delta temporality and is dropped; a rate needs "
                               "cumulative sums (%s)", metric.name, COLLECTING_SECTION)
                return (), GAUGE
            return points, COUNTER if metric.sum.is_monotonic else UPDOWN
        if data in ("histogram", "exponential_histogram", "summary"):
            tally["ignored"] += len(getattr(metric, data).data_points)
        return (), GAUGE

    def _add(self, write: Message, name: str, identity: dict[str, str], point: Any, tally: Tally[str],
             problems: list[str]) -> None:
        """One data point as a one-sample series of ``write`` (refused past the label limits)."""
        labels: dict[str, str] = {}
        for key, value in sorted((kv.key, attribute_value(kv.value)) for kv in point.attributes):
            label = label_name(key)
            labels[label] = f"{labels[label]};{value}" if label in labels else value  # keys that meet, joined
        labels.update({k: v for k, v in identity.items() if v})
        labels["__name__"] = name
        too_long = next((k for k, v in labels.items() if len(k) > REMOTE_WRITE_MAX_LABEL_NAME_BYTES
                         or len(v) > REMOTE_WRITE_MAX_LABEL_VALUE_BYTES), None)
        if len(labels) > REMOTE_WRITE_MAX_LABELS_PER_SERIES or too_long is not None:
            tally["refused"] += 1
            if tally["refused"] == 1:
                problems.append(f"data points of {name} carry {len(labels)} labels"
                                + (f", '{too_long[:40]}' over the name or value length" if too_long else "")
                                + f"; the limits are {REMOTE_WRITE_MAX_LABELS_PER_SERIES} labels, names of "
                                  f"{REMOTE_WRITE_MAX_LABEL_NAME_BYTES} and values of "
                                  f"{REMOTE_WRITE_MAX_LABEL_VALUE_BYTES} characters: drop attributes (the "
                                  f"collector's attributes or transform processor)")
            return
        stamp_ms = point.time_unix_nano // 1_000_000
        if point.flags & _NO_RECORDED_VALUE:
            value = math.nan  # the series has no value now: a staleness marker, as prometheusremotewrite writes
        else:
            value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
        if stamp_ms <= 0:
            tally["invalid"] += 1
            return
        series = write.timeseries.add()
        for label, text in labels.items():
            series.labels.add(name=label, value=text)
        series.samples.add(value=value, timestamp=stamp_ms)

    def _no_host(self, host: str, name: str, problems: list[str]) -> None:
        reason = (f"the resource has no {HOST_ATTRIBUTE}" if not host else
                  f"{HOST_ATTRIBUTE} {host[:80]!r} is not a printable name without spaces or quotes of at most "
                  f"{INSTANCE_MAX_LENGTH} characters")
        if not any(p.startswith(reason) for p in problems):
            problems.append(f"{reason}: its data points (e.g. {name}) name no host. Set it: the collector's "
                            f"resourcedetection processor (detectors: [system]), or OTEL_RESOURCE_ATTRIBUTES="
                            f"host.name=... for an SDK")
        self._warn(f"no_host:{host[:80]}", "OTLP data points dropped: %s (%s)", reason, COLLECTING_SECTION)

    # ------------------------------------------------------------------ logs in OpenTelemetry's terms
    def _report_unmeasured(self, instance: str, state: Any, values: dict[str, Any]) -> None:
        """Once per host: its server name, what the mapping does not measure, and mapped metrics it did not send."""
        state.reported = True
        assert self.mapping is not None and state.server is not None
        server, profile = state.server
        missing = [m for m in self.mapping.measured if values.get(m) is None or math.isnan(values[m])]
        unmapped = [m for m in LINBORG_METRICS if m not in self.mapping.metrics]
        logger.info("OTLP: host %s is server '%s' (%s); not measured by the mapping, sent as the contract's "
                    "unmeasured fill: %s", instance, server, profile, ", ".join(unmapped) or "none")
        if missing:
            logger.warning("OTLP: host %s (%s) sent no data points for %s: filled as unmeasured. Are the scrapers and "
                           "optional metrics the mapping reads enabled (memory: system.memory.limit and "
                           "system.linux.memory.available)? A host without swap sends no paging data points (its "
                           "0 %% swap is the fill). See %s", instance, server, ", ".join(missing), COLLECTING_SECTION)
