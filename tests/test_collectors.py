"""Real metrics in: the host collector on this machine, and Prometheus + node_exporter on loopback.

Nothing here is simulated: the collector samples this host, the adapter talks to Debian's
``prometheus`` scraping Debian's ``prometheus-node-exporter`` (installed by
``bootstrap.sh --dev``), and both feed a real daemon process over HTTP.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from api_models import LinborgRecord
from common_utils import host_name_to_server_name
from config import CPU_COMPONENTS, LINBORG_METRICS, METADATA_FILE
from host_collector import HostCollector, HostSampler, _cpu_parts, resolve_identity
from tests.helpers import API_KEY, ROOT, DaemonProcess, free_port, run_cli, wait_for, wait_until

QUERY_RANGE_POINTS = 3  # points of rate() at a 2 s step before the fixture hands Prometheus over
HOST = host_name_to_server_name(socket.gethostname().split(".")[0])


def _stored_samples(store: Path, server: str) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COALESCE(SUM(n), 0) FROM buckets WHERE server = ?", (server,)).fetchone()[0])


def _collector(daemon_url: str, log: Path, *extra: str) -> subprocess.Popen:
    env = {"TFT_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "main.py", "collect", "--daemon-url", daemon_url, *extra], cwd=ROOT,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------------- host collector
def test_cpu_parts_always_add_to_100():
    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = T(100, 5, 40, 900, 10, 1, 2, 3, 0, 0)
    after = T(160, 5, 60, 1000, 30, 1, 4, 3, 7, 0)
    parts = _cpu_parts(before, after)
    assert sum(parts.values()) == pytest.approx(100.0)
    # user + nice = 60 of 202 ticks; system + irq + softirq + steal = 22; iowait 20; idle 100; guest is in user
    assert parts["cpu_user_pct"] == pytest.approx(100 * 60 / 202)
    assert parts["cpu_sys_pct"] == pytest.approx(100 * 22 / 202)
    assert _cpu_parts(after, after)["cpu_idle_pct"] == 100.0


def test_a_sample_of_this_host_is_a_valid_record_with_real_values():
    sampler = HostSampler("/")
    time.sleep(0.5)  # wall-clock: CPU shares are tick differences over an interval
    collector = HostCollector(feed=None, server_name=HOST, profile="generic", sampler=sampler)
    record = collector.record()
    LinborgRecord.model_validate(record)  # the daemon's own contract check
    assert set(LINBORG_METRICS) <= set(record)
    assert sum(record[m] for m in CPU_COMPONENTS) == pytest.approx(100.0, abs=0.01)
    assert record["disk_usage_pct"] == pytest.approx(psutil.disk_usage("/").percent, abs=0.5)
    assert record["uptime_days"] == min(30, int((time.time() - psutil.boot_time()) // 86400))
    memory = psutil.virtual_memory()
    assert record["mem_used_pct"] == pytest.approx(100 * (1 - memory.available / memory.total), abs=3)
    assert record["load_average"] >= 0 and record["net_in_mb_s"] >= 0


def test_collect_print_shows_one_record_and_bad_flags_fail_clearly():
    shown = run_cli("main.py", "collect", "--print", "--interval", "0.5", "--profile", "database")
    assert shown.returncode == 0, shown.stderr
    record = LinborgRecord.model_validate(json.loads(shown.stdout))
    assert record.server_name == HOST and record.profile == "database"
    missing = run_cli("main.py", "collect", "--data-path", "/no/such/volume", "--samples", "1")
    assert missing.returncode == 2 and "/no/such/volume does not exist" in missing.stderr


def test_identity_from_flags_prefix_or_generic(caplog):
    assert resolve_identity("ppdb042", None) == ("ppdb042", "database")
    assert resolve_identity("DB-EU-3", "database") == ("db-eu-3", "database")
    with caplog.at_level("WARNING"):
        assert resolve_identity("build-box", None) == ("build-box", "generic")
    assert "--profile" in caplog.text
    with pytest.raises(Exception, match="convention name"):
        resolve_identity("ppdb042", "web_api")


def test_collect_survives_a_daemon_restart_and_loses_nothing(tmp_path):
    """Daemon down mid-run: samples wait in the buffer, are delivered after the restart, none lost."""
    store = tmp_path / "store.sqlite3"
    daemon = DaemonProcess(None, store, "--allow-no-model")
    daemon.wait_ready()
    log = tmp_path / "collector.log"
    name = "restart-probe"
    collector = _collector(daemon.url, log, "--interval", "0.25", "--name", name, "--profile", "web_api",
                           "--instance", "probe.example:9100")
    restarted = None
    try:
        wait_for(lambda: _stored_samples(store, name) >= 4, timeout=30)
        daemon.stop()  # the daemon goes away; the collector keeps sampling
        wait_until(lambda: "could not deliver" in log.read_text(), what="the collector to miss the daemon")
        assert "could not deliver" in log.read_text()
        restarted = DaemonProcess(None, store, "--allow-no-model", port=daemon.port)  # same port and store
        restarted.wait_ready()
        wait_for(lambda: "reachable again" in log.read_text(), timeout=60)
        delivered = _stored_samples(store, name)
        wait_until(lambda: _stored_samples(store, name) > delivered, what="live samples stored after the backlog")
    finally:
        collector.send_signal(signal.SIGTERM)
        code = collector.wait(30)
        if restarted:
            restarted.stop()
    text = log.read_text()
    assert code == 0, text[-2000:]
    summary = [line for line in text.splitlines() if "stopped after" in line][-1]
    samples = int(summary.split("stopped after ")[1].split(" samples")[0])
    stored, duplicates = (int(part.split()[0]) for part in summary.split(": ")[-1].split(", ")[:2])
    assert "0 rejected, 0 dropped (buffer full), 0 undelivered" in summary
    assert samples >= 12 and stored + duplicates == samples  # every sample acknowledged by the daemon
    assert _stored_samples(store, name) == samples
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:  # its instance label, for /metrics and alerts
        assert db.execute("SELECT instance FROM server_instances WHERE server = ?", (name,)).fetchall() == \
            [("probe.example:9100",)]


@pytest.mark.slow
def test_this_host_appears_warming_up_then_forecast(tiny_training, tmp_path):
    """Issue 6, items 5 and 6: a host the model never saw is forecast from its profile."""
    # The collector's clock runs 240x faster than the daemon's: allow its records a day ahead.
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--rate-per-minute", "100000",
                           "--max-future-seconds", "86400")
    daemon.wait_ready()
    log = tmp_path / "collector.log"
    # 0.25 s between samples on a clock 240x faster: one 5-minute bucket every 1.25 s of real time.
    collector = _collector(daemon.url, log, "--interval", "0.25", "--time-scale", "240", "--profile", "web_api")
    seen: dict[str, dict] = {}
    try:
        with daemon.client() as client:
            def status() -> dict | None:
                entry = next((s for s in client.get("/predictions/current").json()["servers"]
                              if s["server_name"] == HOST), None)
                if entry:
                    seen.setdefault(entry["status"], entry)
                return entry if entry and entry["status"] == "ok" else None

            forecast = wait_for(status, timeout=120, interval=0.3)
            fan = client.get(f"/predictions/{HOST}").json()
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(30)
        daemon.stop()
    assert "warming_up" in seen and seen["warming_up"]["buckets_needed"] > 0
    assert forecast["profile"] == "web_api" and forecast["known_to_model"] is False
    p10, p50, p90 = (forecast["predictions"]["8hr"]["cpu_used_pct"][q] for q in ("p10", "p50", "p90"))
    assert 0 <= p10 <= p50 <= p90 <= 100
    assert forecast["current"]["disk_usage_pct"] == pytest.approx(psutil.disk_usage("/").percent, abs=1)
    assert fan["server"]["server_name"] == HOST and len(fan["fan"]["mem_used_pct"]["p50"]) == 96


# ---------------------------------------------------------------------------- Prometheus
@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """node_exporter and Prometheus (1 s scrapes) on free loopback ports, with a few seconds of data."""
    for binary in ("prometheus", "prometheus-node-exporter"):
        assert shutil.which(binary), f"Debian package {binary} is needed (bootstrap.sh --dev installs it)"
    work = tmp_path_factory.mktemp("prometheus")
    exporter_port, prom_port = free_port(), free_port()
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n")
    exporter = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{exporter_port}",
                                 "--no-collector.systemd"], stdout=open(work / "exporter.log", "w"),
                                stderr=subprocess.STDOUT)
    server = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                               f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                              stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{prom_port}"

    def has_rates() -> bool:
        try:
            result = httpx.get(f"{url}/api/v1/query", params={"query": "rate(node_cpu_seconds_total[6s])"},
                               timeout=2).json()
            return bool(result["data"]["result"])
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    def points_of_rates() -> bool:
        end = time.time()
        try:
            result = httpx.get(f"{url}/api/v1/query_range", params={
                "query": "rate(node_cpu_seconds_total[6s])", "start": end - 60, "end": end, "step": 2},
                timeout=2).json()
            return min(len(series["values"]) for series in result["data"]["result"]) >= QUERY_RANGE_POINTS
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    try:
        wait_for(has_rates, timeout=60, interval=0.5)
        wait_until(points_of_rates, interval=0.5, what="a few points of rate() for query_range")
        yield url
    finally:
        for proc in (server, exporter):
            proc.terminate()
            proc.wait(10)


def test_prometheus_history_becomes_valid_contract_parquet(prometheus, tmp_path):
    out = tmp_path / "prom" / "server_metrics.parquet"
    result = run_cli("main.py", "prometheus", "--url", prometheus, "--out", str(out), "--hours", "0.1",
                     "--step", "2", "--window", "6s", "--profile", "web_api")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "measured: cpu_user_pct" in result.stdout
    assert run_cli("main.py", "validate", str(out)).returncode == 0
    df = pd.read_parquet(out)
    assert set(df["server_name"].astype(str)) == {HOST} and set(df["profile"].astype(str)) == {"web_api"}
    last = df.iloc[-1]
    assert sum(float(last[m]) for m in CPU_COMPONENTS) == pytest.approx(100, abs=0.01)
    # Prometheus and psutil read the same kernel counters of this host.
    assert float(last["disk_usage_pct"]) == pytest.approx(psutil.disk_usage("/").percent, abs=0.5)
    memory = psutil.virtual_memory()
    assert float(last["mem_used_pct"]) == pytest.approx(100 * (1 - memory.available / memory.total), abs=5)
    assert int(last["uptime_days"]) == min(30, int((time.time() - psutil.boot_time()) // 86400))
    meta = json.loads((out.parent / METADATA_FILE).read_text())
    assert set(meta["unmeasured_metrics"]) == {"java_cpu_pct", "back_close_wait", "front_close_wait"}
    assert "mem_used_pct" in meta["measured_metrics"] and meta["instances"] == {HOST: meta["instances"][HOST]}


def test_prometheus_live_feed_reaches_the_daemon(prometheus, tiny_training, tmp_path):
    store = tmp_path / "store.sqlite3"
    daemon = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000")
    daemon.wait_ready()
    try:
        result = subprocess.run(
            [sys.executable, "main.py", "prometheus", "--url", prometheus, "--daemon-url", daemon.url,
             "--hours", "0.05", "--step", "2", "--window", "6s", "--poll", "1", "--duration", "4",
             "--profile", "database"], cwd=ROOT, env={"TFT_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "back-filled" in result.stderr and "0 rejected, 0 dropped, 0 undelivered" in result.stderr
        with daemon.client() as client:
            entry = wait_for(lambda: next((s for s in client.get("/predictions/current").json()["servers"]
                                           if s["server_name"] == HOST), None), timeout=60)
            assert entry["profile"] == "database" and entry["status"] == "warming_up"
            assert client.get("/status").json()["unknown_servers"] >= 1
    finally:
        daemon.stop()
    assert _stored_samples(store, HOST) >= 5
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:  # the series' instance label came along
        [(instance,)] = db.execute("SELECT instance FROM server_instances WHERE server = ?", (HOST,)).fetchall()
    assert instance.startswith("127.0.0.1:")  # node_exporter's address as Prometheus labels it


def test_prometheus_errors_say_what_and_how_to_fix(prometheus, tmp_path):
    down = run_cli("main.py", "prometheus", "--url", f"http://127.0.0.1:{free_port()}", "--out",
                   str(tmp_path / "x.parquet"), "--hours", "1")
    assert down.returncode == 3 and "unreachable" in down.stderr and "--url" in down.stderr
    mapping = json.loads((ROOT / "mappings" / "prometheus_node_exporter.json").read_text())
    mapping["queries"]["load_average"] = "node_load1{"  # broken PromQL
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(mapping))
    refused = run_cli("main.py", "prometheus", "--url", prometheus, "--mapping", str(bad), "--out",
                      str(tmp_path / "x.parquet"), "--hours", "0.05", "--step", "2", "--window", "6s")
    assert refused.returncode == 2 and "refused the query" in refused.stderr and "node_load1{" in refused.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_feed_buffer_overflow_and_rejections_are_counted_and_logged(caplog):
    """Nothing leaves the buffer silently: overflow drops the oldest with a warning, rejections are logged."""
    from feed_client import DaemonFeed

    state = {"up": False}

    def daemon(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("connection refused", request=request)
        records = json.loads(request.content)["records"]
        return httpx.Response(422, json={"received": len(records), "stored": list(range(1, len(records))),
                                         "duplicates": [], "new_servers": [],
                                         "rejected": [{"index": 0, "field": "mem_used_pct", "reason": "too big"}]})

    feed = DaemonFeed("http://daemon.invalid", max_buffer=6, client=httpx.Client(transport=httpx.MockTransport(daemon)))
    records = [{"server_name": "db-eu-3", "timestamp": f"2026-03-02T00:00:{i:02d}Z"} for i in range(10)]
    with caplog.at_level("WARNING"):
        feed.put(records)
        assert not feed.flush()
    assert feed.pending == 6 and feed.stats.dropped_buffer_full == 4
    assert [r["timestamp"][-3:-1] for r in feed.buffer] == ["04", "05", "06", "07", "08", "09"]  # oldest dropped
    assert "dropped the 4 oldest" in caplog.text and "could not deliver 6 records" in caplog.text
    state["up"] = True
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert feed.close(deadline_seconds=5) == 0
    assert feed.stats.stored == 5 and feed.stats.rejected == 1
    assert "db-eu-3 at 2026-03-02T00:00:04Z: mem_used_pct: too big" in caplog.text


def test_feed_drops_what_can_never_succeed_and_splits_what_is_too_big(caplog):
    """A final 4xx drops its batch (counted, logged), a 413 halves the batch, a NaN is never sent or raised."""
    from feed_client import DaemonFeed

    seen: list[int] = []

    def daemon(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        seen.append(len(records))
        if len(records) > 2:
            return httpx.Response(413, json={"error": "too_many_records", "detail": "At most 2 records."})
        if any(r["server_name"] == "poison" for r in records):
            return httpx.Response(400, json={"error": "invalid_json", "detail": "The body is not JSON."})
        return httpx.Response(200, json={"received": len(records), "stored": list(range(len(records))),
                                         "duplicates": [], "rejected": [], "new_servers": []})

    feed = DaemonFeed("http://daemon.invalid", batch_records=8,
                      client=httpx.Client(transport=httpx.MockTransport(daemon)))
    good = [{"server_name": "db-eu-3", "timestamp": f"2026-03-02T00:00:{i:02d}Z", "load_average": 1.0}
            for i in range(5)]
    with caplog.at_level("WARNING"):
        feed.put([*good[:2], {"server_name": "poison", "timestamp": "x", "load_average": 1.0}, *good[2:]])
        feed.put([{"server_name": "db-eu-3", "timestamp": "2026-03-02T00:01:00Z", "load_average": float("nan")}])
        assert feed.flush()  # no exception, nothing left behind, no endless retry
    assert seen == [6, 3, 1, 1, 1, 1, 1, 1]  # 413: halve (6 -> 3 -> 1); then one by one, the poison dropped
    assert feed.pending == 0 and feed.stats.stored == 5 and feed.stats.not_finite == 1
    assert feed.stats.refused == 1 and feed.stats.rejected_reasons == {"HTTP 400 invalid_json": 1}
    assert "not a finite number" in caplog.text and "refused a batch of 1 records for good" in caplog.text
    assert "sending batches of" in caplog.text
