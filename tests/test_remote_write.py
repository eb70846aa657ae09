"""Prometheus remote-write in (POST /api/v1/write): decoding, the mapping, records, HTTP, and the real programs.

Unit tests build ``prometheus.WriteRequest`` messages with the module's protobuf classes (the
bytes come from the protobuf library, never by hand) from a scripted node whose counters are
known, and check the records against the rates computed from those counters. The integration
tests use the real programs: Debian's ``prometheus-node-exporter`` scraped directly (its text
parsed by prometheus_client and written as Prometheus would), and Debian's ``prometheus``
remote-writing to a real daemon process.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api_models import FeedResponse, LinborgRecord
from common_utils import make_server_name
from config import FEATURES, LINBORG_METRICS, PROJECT_ROOT, SAMPLING_INTERVAL_SECONDS, UNMEASURED_FILL
from daemon_state import Daemon, DaemonSettings
from prometheus_adapter import PrometheusClient, PrometheusError, contract_record, fetch_samples, load_prom_mapping
from remote_write import RemoteWriteReceiver as Receiver
from remote_write import (
    WriteRequest,
    decode,
    encode,
    load_remote_write_mapping,
    samples_of,
    series_regex,
    write_request,
)
from state_rules import StreamStateLabeler
from tests.helpers import API_KEY, DaemonProcess, free_port, wait_for
from tests.test_collectors import HOST

MAPPING = PROJECT_ROOT / "mappings" / "prometheus_node_exporter.json"
INSTANCE = "10.0.0.5:9100"
HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "Authorization": f"Bearer {API_KEY}"}
MODES = ("user", "nice", "system", "irq", "softirq", "steal", "iowait", "idle")
BUCKET_MS = SAMPLING_INTERVAL_SECONDS * 1000
METRIC_INDEX = {m: i for i, m in enumerate(LINBORG_METRICS)}
# Series of a Node scrape no metric reads: go_goroutines, /boot's three filesystem series, and lo's and
# veth12ab's network counters ({nic_exclude}).
IGNORED_PER_SCRAPE = 8


class Node:
    """A scripted node_exporter target: counters advance at the rates a test sets, so every rate is known."""

    def __init__(self, instance: str = INSTANCE, nodename: str = "ppdb042.corp.example", cores: int = 2) -> None:
        self.instance, self.nodename, self.cores = instance, nodename, cores
        self.cpu = {(str(c), m): 1000.0 for c in range(cores) for m in MODES}
        self.net = {(d, k): 5e9 for d in ("eth0", "lo", "veth12ab") for k in ("receive", "transmit")}
        self.boot_s = time.time() - 3.5 * 86400

    def advance(self, seconds: float, shares: dict[str, float], rx: float = 0.0, tx: float = 0.0) -> None:
        """Let ``seconds`` pass: each core spends ``shares`` of them per mode; eth0 moves rx/tx bytes/s."""
        for (cpu, mode) in self.cpu:
            self.cpu[cpu, mode] += seconds * shares.get(mode, 0.0)
        self.net["eth0", "receive"] += seconds * rx
        self.net["eth0", "transmit"] += seconds * tx
        for device in ("lo", "veth12ab"):  # excluded by {nic_exclude}: must never count
            self.net[device, "receive"] += seconds * 9e6
            self.net[device, "transmit"] += seconds * 9e6

    def samples(self, t_ms: int, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """One scrape as Prometheus writes it (instance and job labels added)."""
        def sample(name: str, value: float, **labels: str) -> dict[str, Any]:
            return {"labels": {"__name__": name, "instance": self.instance, "job": "node", **labels},
                    "value": value, "timestamp": t_ms}

        out = [sample("node_cpu_seconds_total", v, cpu=c, mode=m) for (c, m), v in self.cpu.items()]
        out += [sample(f"node_network_{k}_bytes_total", v, device=d) for (d, k), v in self.net.items()]
        out += [sample("node_memory_MemTotal_bytes", 16e9), sample("node_memory_MemAvailable_bytes", 12e9),
                sample("node_memory_SwapTotal_bytes", 0.0), sample("node_memory_SwapFree_bytes", 0.0),
                sample("node_load1", 1.5), sample("node_boot_time_seconds", self.boot_s),
                sample("node_uname_info", 1.0, nodename=self.nodename, release="6.1.0"),
                sample("node_filesystem_size_bytes", 100e9, mountpoint="/", fstype="ext4", device="/dev/sda1"),
                sample("node_filesystem_free_bytes", 30e9, mountpoint="/", fstype="ext4", device="/dev/sda1"),
                sample("node_filesystem_avail_bytes", 25e9, mountpoint="/", fstype="ext4", device="/dev/sda1"),
                sample("node_filesystem_size_bytes", 1e9, mountpoint="/boot", fstype="ext4", device="/dev/sda2"),
                sample("node_filesystem_free_bytes", 1e8, mountpoint="/boot", fstype="ext4", device="/dev/sda2"),
                sample("node_filesystem_avail_bytes", 1e8, mountpoint="/boot", fstype="ext4", device="/dev/sda2"),
                sample("go_goroutines", 7.0)]
        return [s for s in out if s["labels"]["__name__"] not in skip]

    def user_seconds(self) -> float:
        return sum(v for (_, m), v in self.cpu.items() if m in ("user", "nice"))

    def all_seconds(self) -> float:
        return sum(self.cpu.values())


class Capture:
    """Stands in for ``daemon.ingest``: keeps what it is given, checks it against the contract, stores all."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.instances: dict[str, str] = {}

    def __call__(self, records: list[dict[str, Any]], instances: dict[str, str] | None) -> FeedResponse:
        for record in records:
            LinborgRecord.model_validate(record)
        self.records += records
        self.instances.update(instances or {})
        return FeedResponse(received=len(records), stored=list(range(len(records))), duplicates=[], rejected=[],
                            new_servers=[])


def recent_bucket(back: int = 6) -> int:
    """A bucket ``back`` buckets before the current one (records must not be ahead of the daemon's clock)."""
    return int(time.time() // SAMPLING_INTERVAL_SECONDS) - back


def daemon_in(tmp_path: Path) -> Daemon:
    """A real daemon state (store, windows, ingest) without a model or HTTP."""
    return Daemon(DaemonSettings(model_dir=None, store_path=tmp_path / "store.sqlite3", allow_no_model=True))


# ---------------------------------------------------------------------------- protobuf and the mapping
def test_messages_carry_prometheus_field_numbers_and_round_trip():
    """prompb: WriteRequest.timeseries=1, TimeSeries.labels=1/samples=2, Label 1/2, Sample value=1 timestamp=2."""
    numbers = {(d.name, f.name): f.number for d in (WriteRequest.DESCRIPTOR, *WriteRequest.DESCRIPTOR.file
                                                   .message_types_by_name.values()) for f in d.fields}
    assert numbers == {("WriteRequest", "timeseries"): 1, ("TimeSeries", "labels"): 1, ("TimeSeries", "samples"): 2,
                       ("Label", "name"): 1, ("Label", "value"): 2, ("Sample", "value"): 1,
                       ("Sample", "timestamp"): 2}
    request = write_request(Node().samples(1_700_000_000_000))
    assert decode(encode(request)) == request
    assert list(request.timeseries[0].labels)[0].name == "__name__"  # sorted by name, as Prometheus sends them


def test_remote_write_section_states_the_adapters_metrics():
    """The same measured set, variables and series as the PromQL; disagreement is refused at load."""
    mapping = load_remote_write_mapping(MAPPING)
    base = load_prom_mapping(MAPPING)
    assert mapping.measured == base.measured
    for spec in mapping.metrics.values():  # every series a PromQL query names, and only those
        for term in (*spec.numerator, *spec.denominator):
            assert term.series in base.queries[spec.metric]
            for label, op, value in term.match:  # the same matcher, variables filled in, as in the PromQL
                assert f'{label}{op}"{value}"' in base.promql(spec.metric, "2m")
    assert series_regex(mapping).split("|") == sorted({*re.findall(r"node_\w+", " ".join(
        q for q in base.queries.values() if q)), "node_uname_info"})
    raw = json.loads(MAPPING.read_text())
    raw["remote_write"]["metrics"]["load_average"] = None  # unmeasured here, measured in queries
    broken = MAPPING.parent / "_broken_test_mapping.json"
    try:
        broken.write_text(json.dumps(raw))
        with pytest.raises(PrometheusError, match="disagree on what is measured"):
            load_remote_write_mapping(broken)
    finally:
        broken.unlink()


# ---------------------------------------------------------------------------- samples -> records
def test_counter_rates_over_buckets_are_what_the_daemon_stores(tmp_path):
    """Two buckets at 15 s scrapes; the stored bucket means equal the counters' rate across the buckets."""
    daemon = daemon_in(tmp_path)
    receiver = Receiver(daemon.ingest, mapping_path=MAPPING, clock=daemon.clock)
    node, first = Node(), recent_bucket()
    start_ms = first * BUCKET_MS
    scrapes = []  # (time, user+nice seconds, all CPU seconds, eth0 bytes received) of every scrape
    for k in range(41):  # 0 .. 600 s: buckets first and first+1, and the first scrape of the next
        t_ms = start_ms + k * 15_000
        if k:
            later = t_ms > start_ms + BUCKET_MS  # the second bucket is busier
            node.advance(15, {"user": 0.6 if later else 0.3, "nice": 0.05, "system": 0.1, "iowait": 0.05,
                              "idle": 0.2 if later else 0.5}, rx=3e6 if later else 1e6, tx=2e5)
        scrapes.append((t_ms, node.user_seconds(), node.all_seconds(), node.net["eth0", "receive"]))
        receiver.accept(write_request(node.samples(t_ms)))
    receiver.accept(write_request(node.samples(start_ms + 620_000)))  # completes the scrape at 600 s (10 s grace)
    window = daemon.fleet.servers["ppdb042"]
    assert window.profile == "database"  # nodename's short form, a convention name

    def last_of(bucket: int) -> tuple[int, float, float, float]:
        return [s for s in scrapes if s[0] // BUCKET_MS == bucket][-1]

    # the rate over a bucket: from the last sample before it (the first sample, for the first) to its last
    for bucket, before in ((first, scrapes[0]), (first + 1, last_of(first))):
        after = last_of(bucket)
        user = 100 * (after[1] - before[1]) / (after[2] - before[2])
        net_in = (after[3] - before[3]) / 1e6 / ((after[0] - before[0]) / 1000)
        values = window.current(bucket)
        assert values is not None
        assert values[METRIC_INDEX["cpu_user_pct"]] == pytest.approx(user, abs=1e-3)
        assert values[METRIC_INDEX["net_in_mb_s"]] == pytest.approx(net_in, abs=1e-3)
        assert values[METRIC_INDEX["cpu_idle_pct"]] + values[METRIC_INDEX["cpu_user_pct"]] + \
            values[METRIC_INDEX["cpu_sys_pct"]] + values[METRIC_INDEX["cpu_iowait_pct"]] == pytest.approx(100, abs=1e-3)
        assert values[METRIC_INDEX["mem_used_pct"]] == pytest.approx(25.0)  # 100 * (1 - 12/16)
        assert values[METRIC_INDEX["disk_usage_pct"]] == pytest.approx(100 * 70 / 95)  # df's Use%, mountpoint "/"
        assert values[METRIC_INDEX["swap_used_pct"]] == 0.0 and values[METRIC_INDEX["load_average"]] == 1.5
        assert values[METRIC_INDEX["uptime_days"]] == 3
    assert daemon.store.bucket_history("ppdb042", first)[0][1] == 19  # scrapes 15 .. 285 s (the first has no rate)
    assert daemon.instances.get("ppdb042") == INSTANCE  # the instance label is remembered, as /feed's "instances"
    stats = receiver.stats()
    assert stats["records"]["stored"] == 40 and stats["records"]["incomplete"] == 1
    assert stats["samples"]["ignored"] == IGNORED_PER_SCRAPE * 42
    daemon.close()


def test_a_counter_reset_is_a_reset_not_a_negative_rate():
    """A reboot zeroes the counters: the scrape after it takes its value since zero, as rate() does."""
    capture = Capture()
    receiver = Receiver(capture, mapping_path=MAPPING, grace_seconds=0)
    node, t0 = Node(), recent_bucket() * BUCKET_MS
    busy = {"user": 0.4, "system": 0.1, "idle": 0.5}
    for k in range(3):
        node.advance(10, busy, rx=2e6)
        receiver.accept(write_request(node.samples(t0 + k * 10_000)))
    node.cpu = dict.fromkeys(node.cpu, 0.0)  # the reboot
    node.net = dict.fromkeys(node.net, 0.0)
    node.boot_s = (t0 + 25_000) / 1000
    node.advance(5, {"user": 0.8, "idle": 0.2}, rx=4e6)  # 5 s of the new boot before the next scrape
    receiver.accept(write_request(node.samples(t0 + 30_000)))
    node.advance(10, busy, rx=2e6)
    receiver.accept(write_request(node.samples(t0 + 40_000)))
    receiver.accept(write_request(node.samples(t0 + 50_000)))
    assert len(capture.records) == 4  # scrapes at 10, 20, 30 (after the reset), 40 s
    after_reset = capture.records[2]
    assert after_reset["net_in_mb_s"] == pytest.approx(4e6 * 5 / 10 / 1e6)  # 20 MB since zero over the 10 s
    assert after_reset["cpu_user_pct"] == pytest.approx(80.0)  # the new boot's seconds alone, never negative
    assert after_reset["uptime_days"] == 0
    assert capture.records[1]["uptime_days"] == 3
    assert capture.records[3]["cpu_user_pct"] == pytest.approx(40.0) and capture.records[3]["net_in_mb_s"] == 2.0


def test_a_saturated_host_never_gets_a_negative_idle():
    """Idle 0 and three busy parts whose rounded values add to 100.0001: still a valid record (idle 0)."""
    capture = Capture()  # validates every record against the contract
    receiver = Receiver(capture, mapping_path=MAPPING, grace_seconds=0)
    node, t0 = Node(), recent_bucket() * BUCKET_MS
    for k in range(3):
        node.advance(10, {"user": 0.3333336, "system": 0.3333336, "iowait": 0.3333328})
        receiver.accept(write_request(node.samples(t0 + k * 10_000)))
    assert [r["cpu_idle_pct"] for r in capture.records] == [0.0]


def test_unmeasured_metrics_are_the_contracts_fill_and_missing_series_are_said(caplog):
    """null in the mapping, or a mapped series never written: the contract's unmeasured fill, with a log line."""
    capture = Capture()
    receiver = Receiver(capture, mapping_path=MAPPING, grace_seconds=0)
    node, t0 = Node(nodename="build-box"), recent_bucket() * BUCKET_MS
    with caplog.at_level(logging.INFO, logger="remote_write"):
        for k in range(3):
            node.advance(15, {"user": 0.2, "idle": 0.8})
            receiver.accept(write_request(node.samples(t0 + k * 15_000, skip=("node_load1",))))
    record = capture.records[0]
    for metric in ("java_cpu_pct", "back_close_wait", "front_close_wait", "load_average"):
        assert record[metric] == UNMEASURED_FILL[metric]
    assert record["server_name"] == "build-box" and record["profile"] == "generic"  # not a convention name
    assert "unmeasured fill: java_cpu_pct, back_close_wait, front_close_wait" in caplog.text
    assert "sent no series for load_average: filled as unmeasured" in caplog.text


def test_late_stale_foreign_and_over_limit_samples_are_dropped_and_counted(caplog):
    capture = Capture()
    receiver = Receiver(capture, mapping_path=MAPPING, grace_seconds=0, max_instances=1)
    node, t0 = Node(), recent_bucket() * BUCKET_MS
    for k in range(3):
        node.advance(15, {"user": 0.2, "idle": 0.8})
        receiver.accept(write_request(node.samples(t0 + k * 15_000)))
    late = receiver.accept(write_request(node.samples(t0 + 5_000)))  # before the last completed scrape
    assert late.samples["late"] > 0 and late.records == 0
    stale = node.samples(t0 + 60_000)
    for s in stale:
        s["value"] = float("nan")  # Prometheus's staleness markers when a target goes away
    assert receiver.accept(write_request(stale)).samples["stale"] == len(stale) - IGNORED_PER_SCRAPE
    with caplog.at_level(logging.WARNING, logger="remote_write"):
        other = receiver.accept(write_request(Node(instance="10.0.0.6:9100", nodename="ppdb043").samples(t0)))
    assert other.samples["refused"] > 0 and "REMOTE_WRITE.max_instances" in caplog.text
    assert receiver.stats()["instances"] == 1


def test_identity_names_profiles_and_clashes(tmp_path, caplog):
    """The mapping's names win over nodename; two instances with one name: the second is refused, said once."""
    raw = json.loads(MAPPING.read_text())
    raw["names"] = {"10.0.0.9:9100": "db-eu-3"}
    raw["profiles"] = {"db-eu-3": "database"}
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(raw))
    capture = Capture()
    receiver = Receiver(capture, mapping_path=path, grace_seconds=0)
    t0 = recent_bucket() * BUCKET_MS
    nodes = [Node(instance="10.0.0.9:9100", nodename="whatever"), Node(instance="10.0.0.7:9100", nodename="ppdb042"),
             Node(instance="10.0.0.8:9100", nodename="ppdb042")]
    with caplog.at_level(logging.ERROR, logger="remote_write"):
        for k in range(3):
            samples = []
            for node in nodes:
                node.advance(15, {"user": 0.2, "idle": 0.8})
                samples += node.samples(t0 + k * 15_000)
            receiver.accept(write_request(samples))
    assert {(r["server_name"], r["profile"]) for r in capture.records} == {("db-eu-3", "database"),
                                                                          ("ppdb042", "database")}
    assert capture.instances == {"db-eu-3": "10.0.0.9:9100", "ppdb042": "10.0.0.7:9100"}
    assert caplog.text.count("as 10.0.0.7:9100 does") == 1


# ---------------------------------------------------------------------------- HTTP
@pytest.fixture()
def app_client(tmp_path):
    from fastapi.testclient import TestClient

    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=None, store_path=tmp_path / "s.sqlite3", api_key=API_KEY,
                                    allow_no_model=True))
    with TestClient(app) as client:
        yield app, client


def test_http_answers_what_prometheus_expects(app_client):
    """204 taken; 400 for bodies never decodable and 415 for another format (Prometheus drops 4xx, no retry);
    401 without the key."""
    app, client = app_client
    node, t0 = Node(), recent_bucket() * BUCKET_MS
    request = write_request(node.samples(t0))
    body = encode(request)
    ok = client.post("/api/v1/write", content=body, headers=HEADERS)
    assert ok.status_code == 204 and ok.content == b""
    metadata_only = WriteRequest()  # Prometheus sends metric metadata in requests of its own (field 3)
    assert client.post("/api/v1/write", content=encode(metadata_only), headers=HEADERS).status_code == 204
    cases = {
        "bad snappy": (request.SerializeToString(), HEADERS, 400, "invalid_snappy"),
        "bad protobuf": (encode_raw(request.SerializeToString()[:-3]), HEADERS, 400, "invalid_protobuf"),
        "json": (body, {**HEADERS, "Content-Type": "application/json"}, 415, "unsupported_media_type"),
        "remote-write 2.0": (body, {**HEADERS, "X-Prometheus-Remote-Write-Version": "2.0.0",
                                    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"},
                             415, "unsupported_media_type"),
        "gzip": (body, {**HEADERS, "Content-Encoding": "gzip"}, 415, "unsupported_encoding"),
        "no key": (body, {k: v for k, v in HEADERS.items() if k != "Authorization"}, 401, "unauthorized"),
        "wrong key": (body, {**HEADERS, "Authorization": "Bearer not-the-key"}, 401, "unauthorized"),
    }
    for name, (content, headers, status, error) in cases.items():
        answer = client.post("/api/v1/write", content=content, headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (status, error), name
        assert len(answer.json()["detail"]) < 300, name  # Prometheus logs the body: short and saying why
    metrics = client.get("/metrics", headers={"X-API-Key": API_KEY}).text
    assert 'tft_remote_write_samples_total{result="accepted"}' in metrics
    assert 'tft_http_requests_total{path="/api/v1/write",status="204"} 2.0' in metrics


def encode_raw(raw: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(raw))


def test_a_full_store_is_507_and_the_records_wait_for_the_retry(app_client, monkeypatch):
    """Prometheus retries 5xx: the records made from the refused writes are stored by the next one taken."""
    from metrics_store import StoreFullError

    app, client = app_client
    daemon = app.state.daemon
    node, t0 = Node(), recent_bucket() * BUCKET_MS
    posts = []
    for k in range(14):
        node.advance(15, {"user": 0.2, "idle": 0.8})
        posts.append(encode(write_request(node.samples(t0 + k * 15_000))))
    for body in posts[:3]:
        assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    stored = daemon.store.count_samples()
    assert stored == 1  # the scrape at 15 s (10 s grace: the one at 30 s waits)
    add_records = daemon.store.add_records

    def disk_full(records: list) -> None:
        raise StoreFullError("the disk holding the store is full")

    monkeypatch.setattr(daemon.store, "add_records", disk_full)  # test_hostile fills a real disk cap
    answers = [client.post("/api/v1/write", content=body, headers=HEADERS) for body in posts[3:12]]
    assert {a.status_code for a in answers} == {507} and answers[0].headers["Retry-After"]
    assert daemon.store.count_samples() == stored
    monkeypatch.setattr(daemon.store, "add_records", add_records)  # space freed
    assert client.post("/api/v1/write", content=posts[12], headers=HEADERS).status_code == 204
    assert daemon.store.count_samples() == 11  # 15 .. 165 s: nothing made while the disk was full was lost
    assert app.state.daemon.remote_write.stats()["unsent"] == 0


def test_a_broken_mapping_is_503_with_the_reason(tmp_path):
    from fastapi.testclient import TestClient

    from tft_inference import create_app

    raw = json.loads(MAPPING.read_text())
    del raw["remote_write"]
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(raw))
    app = create_app(DaemonSettings(model_dir=None, store_path=tmp_path / "s.sqlite3", api_key=API_KEY,
                                    allow_no_model=True, remote_write_mapping=path))
    with TestClient(app) as client:
        answer = client.post("/api/v1/write", content=encode(WriteRequest()), headers=HEADERS)
    assert answer.status_code == 503 and "no \"remote_write\"" in answer.json()["detail"]


def test_collecting_doc_keeps_exactly_the_mapped_series():
    """The write_relabel_configs regex pasted from Docs/COLLECTING.md is the one the mapping needs."""
    text = (PROJECT_ROOT / "Docs" / "COLLECTING.md").read_text()
    assert f"regex: '{series_regex(load_remote_write_mapping(MAPPING))}'" in text


# ---------------------------------------------------------------------------- the real programs
@pytest.fixture(scope="module")
def node_exporter():
    """Debian's prometheus-node-exporter on a free loopback port."""
    assert shutil.which("prometheus-node-exporter"), "Debian package prometheus-node-exporter is needed"
    port = free_port()
    proc = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
                             "--no-collector.systemd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: _reachable(url), timeout=30)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_real_node_exporter_scrapes_agree_with_the_host_collector(node_exporter):
    """Real node_exporter text, parsed and written as Prometheus would, against psutil over the same 2 s."""
    from prometheus_client.parser import text_string_to_metric_families

    from host_collector import HostSampler

    capture = Capture()
    receiver = Receiver(capture, mapping_path=MAPPING, grace_seconds=0)
    instance = f"127.0.0.1:{node_exporter}"

    def scrape() -> None:
        t_ms = int(time.time() * 1000)
        text = httpx.get(f"http://{instance}/metrics", timeout=5).text
        receiver.accept(write_request(samples_of(text_string_to_metric_families(text), instance, "node", t_ms)))

    scrape()
    sampler = HostSampler("/")
    time.sleep(2)  # wall-clock: both sides measure CPU over the same 2 s
    scrape()
    collected = sampler.sample()
    time.sleep(0.1)  # wall-clock: the third scrape's timestamp must differ
    scrape()  # completes the second scrape
    assert len(capture.records) == 1, receiver.stats()
    record = capture.records[0]
    assert record["server_name"] == HOST and capture.instances == {HOST: instance}
    assert sum(record[m] for m in ("cpu_user_pct", "cpu_sys_pct", "cpu_iowait_pct", "cpu_idle_pct")) == \
        pytest.approx(100, abs=0.01)
    assert record["cpu_idle_pct"] == pytest.approx(collected["cpu_idle_pct"], abs=12)  # the same /proc/stat, 2 s
    assert record["mem_used_pct"] == pytest.approx(collected["mem_used_pct"], abs=2)
    assert record["disk_usage_pct"] == pytest.approx(collected["disk_usage_pct"], abs=0.5)
    assert record["uptime_days"] == collected["uptime_days"]
    assert record["load_average"] == pytest.approx(collected["load_average"], abs=0.5)
    assert record["net_in_mb_s"] >= 0 and record["java_cpu_pct"] == UNMEASURED_FILL["java_cpu_pct"]


def _prometheus_yaml(exporter_port: int, daemon_port: int, key_file: Path) -> str:
    regex = series_regex(load_remote_write_mapping(MAPPING))
    return (
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
        "remote_write:\n"
        f"  - url: http://127.0.0.1:{daemon_port}/api/v1/write\n"
        f"    authorization: {{credentials_file: {key_file}}}\n"
        "    write_relabel_configs:\n"
        f"      - {{source_labels: [__name__], regex: '{regex}', action: keep}}\n"
        "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s, retry_on_http_429: true}\n")


@pytest.mark.slow
def test_prometheus_remote_writes_to_the_daemon(node_exporter, tiny_training, tmp_path):
    """Real Prometheus 2.42 -> real daemon: its payloads are taken (204), stored, and match the adapter's PromQL.

    The host shows in /predictions/current as warming_up from its first bucket on. The daemon forecasts a
    bucket when a later bucket's data arrives; rather than wait up to five minutes of wall clock, a second feeder
    (POST /feed, another server) sends a record of the next bucket, as any mixed fleet does. Given the hour of
    history a new host needs (fed as another feeder could have, with the values remote-write stored), the bucket
    Prometheus wrote is then forecast ("ok"), its series labelled with the instance Prometheus scraped.
    """
    assert shutil.which("prometheus"), "Debian package prometheus is needed"
    store = tmp_path / "store.sqlite3"
    daemon = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000")
    key_file = tmp_path / "ingest.key"
    key_file.write_text(API_KEY + "\n")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(_prometheus_yaml(node_exporter, daemon.port, key_file))
    prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    try:
        daemon.wait_ready()
        with daemon.client() as client:
            # records start once a scrape is complete (10 s grace); a few seconds of them fill a bucket mean
            wait_for(lambda: any(b["n"] >= 6 for b in _stored_buckets(store, HOST).values()), timeout=40, interval=0.5)
            actuals = client.get(f"/history/{HOST}", params={"hours": 1}).json()["actuals"]
            metrics = client.get("/metrics").text
            status = dict(re.findall(r'tft_remote_write_samples_total\{result="(\w+)"\} ([\d.e+]+)', metrics))
            assert float(status["accepted"]) > 0
            assert re.search(r'tft_http_requests_total\{path="/api/v1/write",status="204"\} [1-9]', metrics)
            assert "tft_remote_write_instances 1.0" in metrics
            # The same bucket through the adapter on the same Prometheus: its PromQL, fetched by its query_range
            # at the scrapes' resolution (one evaluation 0.5 s after each scrape the bucket's records came from,
            # rates over a window holding that scrape and the one before), averaged as its to_buckets does.
            bucket, ours = max(_stored_buckets(store, HOST).items(), key=lambda item: item[1]["n"])
            end, span = ours["last_ts"], ours["n"]
            mapping = load_prom_mapping(MAPPING)
            prom = PrometheusClient(f"http://127.0.0.1:{prom_port}")
            try:
                evaluated = fetch_samples(prom, mapping, end - span + 1.5, end + 0.5, 1, "1800ms")
            finally:
                prom.close()
            theirs = evaluated.groupby("metric")["value"].mean()
            # Measured: equal to the records' rounding (4 decimals). The slack covers a scrape Prometheus skipped
            # on a starved machine (one interval the adapter's evaluations then miss).
            for metric, tolerance in (("mem_used_pct", 0.05), ("disk_usage_pct", 0.01), ("swap_used_pct", 0.05),
                                      ("load_average", 0.05), ("cpu_user_pct", 0.5), ("cpu_sys_pct", 0.5),
                                      ("cpu_iowait_pct", 0.5), ("cpu_idle_pct", 0.5), ("net_in_mb_s", 0.01),
                                      ("net_out_mb_s", 0.01)):
                assert ours[metric] == pytest.approx(theirs[metric], abs=tolerance), (metric, ours, theirs)
            assert ours["uptime_days"] == min(30, evaluated[evaluated["metric"] == "uptime_days"]["value"].iloc[-1])
            # Its first bucket made the daemon forecast the bucket before it: the host is listed, warming up.
            entry = wait_for(lambda: next((s for s in client.get("/predictions/current").json()["servers"]
                                           if s["server_name"] == HOST), None), timeout=20)
            assert entry["status"] == "warming_up" and entry["buckets_needed"] > 0 and not entry["known_to_model"]
            # Then forecast: give it the hour of history a new host needs (as another feeder could have sent it
            # earlier; the values remote-write stored), and let a second feeder's record in the next bucket
            # complete the current one, as any mixed fleet does (rather than wait for the 5-minute boundary).
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                [(profile,)] = db.execute("SELECT profile FROM servers WHERE server = ?", (HOST,)).fetchall()
            labeler = StreamStateLabeler(profile)
            history = [contract_record(HOST, profile, (bucket - k) * SAMPLING_INTERVAL_SECONDS, ours, labeler)
                       for k in range(FEATURES.min_encoder_length + 1, 0, -1)]
            assert client.post("/feed", json={"records": history}).status_code == 200
            newest = int(time.time() // SAMPLING_INTERVAL_SECONDS) + 1
            other = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest * SAMPLING_INTERVAL_SECONDS)),
                     "server_name": make_server_name("web_api", 1), "profile": "web_api", "state": "healthy",
                     **{m: 0.0 for m in LINBORG_METRICS}, "cpu_idle_pct": 100.0, "back_close_wait": 0,
                     "front_close_wait": 0, "uptime_days": 1}
            assert client.post("/feed", json={"records": [other]}).status_code == 200
            forecast = wait_for(lambda: next((s for s in client.get("/predictions/current").json()["servers"]
                                              if s["server_name"] == HOST and s["status"] == "ok"), None), timeout=30)
            assert (forecast["history_buckets"] >= FEATURES.min_encoder_length
                    and forecast["predictions"]["1hr"]["mem_used_pct"])
            metrics = client.get("/metrics").text  # its series carry the instance Prometheus scraped
            assert re.search(rf'tft_forecast_memory_used_ratio{{[^}}]*instance="127\.0\.0\.1:{node_exporter}"'
                             rf'[^}}]*server="{re.escape(HOST)}"', metrics), metrics[-3000:]
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        daemon.stop()
    log = (tmp_path / "prometheus.log").read_text()
    assert "non-recoverable error" not in log, log[-2000:]  # what Prometheus logs when it drops a batch (4xx)
    assert "sent no series" not in daemon.log.read_text()  # write_relabel_configs kept every mapped series
    assert all(np.isfinite(v) for v in actuals["mem_used_pct"] if v is not None)


def _stored_buckets(store: Path, server: str) -> dict[int, dict[str, float]]:
    """The store's buckets of one server, read as the daemon reads them: gauge means, counts the latest."""
    from metrics_store import COUNTS, GAUGES

    columns = ["bucket", "n", "last_ts", *[f"sum_{m}" for m in GAUGES], *[f"last_{m}" for m in COUNTS]]
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute(f"SELECT {', '.join(columns)} FROM buckets WHERE server = ?", (server,)).fetchall()
    out = {}
    for bucket, n, last_ts, *values in rows:
        means = {m: v / n for m, v in zip(GAUGES, values, strict=False)}
        means.update(zip(COUNTS, values[len(GAUGES):], strict=True))
        out[bucket] = {"n": n, "last_ts": last_ts / 1e9, **means}
    return out
