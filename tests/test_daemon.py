"""The inference daemon as a real uvicorn process on loopback, driven over HTTP and WebSocket.

Checks of routing and error shapes alone run the same app in process (those that say so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from api_models import AlertHistoryResponse, AlertsResponse, FleetPredictions, ServerFan
from config import CONTRACT_VERSION, DAEMON, LINBORG_METRICS
from forecast_engine import forecast_sources
from metrics_generator import FleetSimulator
from tests.helpers import (
    API_KEY,
    ROOT,
    TINY_FLEET,
    DaemonProcess,
    feed_buckets,
    free_port,
    wait_for,
    wait_until,
)
from tft_model import load_model

HAMMER_BATCHES = 20  # batches acknowledged under load before the SIGKILL


@pytest.fixture(scope="module")
def live(tiny_training, tmp_path_factory):
    """A daemon with the tiny trained model, fed 30 buckets of the same fleet plus a stranger."""
    store = tmp_path_factory.mktemp("daemon") / "store.sqlite3"
    daemon = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000", "--access-log",
                           str(store.with_name("access.log")))
    daemon.wait_ready()
    sim = FleetSimulator(fleet=TINY_FLEET, seed=99, start="2026-03-02T00:00:00Z")
    stranger = FleetSimulator(fleet={"database": 1}, seed=5, start="2026-03-02T02:05:00Z")  # the last 5 buckets
    with daemon.client() as client:
        feed_buckets(client, sim, 30)
        # A server the model has never seen, with only a few buckets so far.
        records = stranger.records(stranger.advance(5))
        for r in records:
            r["server_name"] = "ppdb777"
        assert client.post("/feed", json={"records": records}).status_code == 200
        # One more bucket of the fleet completes the stranger's fifth bucket too.
        feed_buckets(client, sim, 1)
        wait_for(lambda: any(s["server_name"] == "ppdb777"
                             for s in client.get("/predictions/current").json()["servers"]))
    yield daemon, sim
    daemon.stop()


def test_health_and_status(live):
    daemon, _ = live
    assert httpx.get(f"{daemon.url}/health").json() == {"status": "ok", "model_loaded": True}
    with daemon.client() as client:
        status = client.get("/status").json()
    assert status["model_loaded"] and status["contract_version"] == CONTRACT_VERSION
    assert status["servers_tracked"] == len(FleetSimulator(fleet=TINY_FLEET).server_names) + 1
    assert status["servers_ready"] == status["servers_tracked"] - 1
    assert status["servers_warming_up"] == 1 and status["unknown_servers"] >= 1
    assert status["trained_at"] and status["model_version"].startswith("tft_model_")
    assert status["forecasts_per_second"] > 0 and status["average_cycle_ms"] > 0
    assert status["feed_records_stored"] > 0 and status["error_rate"] == 0.0


def test_current_predictions_in_codex_format(live, tiny_training):
    daemon, sim = live
    with daemon.client() as client:
        body = client.get("/predictions/current").json()
    FleetPredictions.model_validate(body)  # the documented response model (OpenAPI) holds
    # Where each metric's forecast comes from (the model's persistence blend), as the model's spec says.
    assert body["sources"] == forecast_sources(load_model(tiny_training.model_dir).spec)
    assert set(body["sources"]["cpu_used_pct"]) == {"30min", "1hr", "8hr"}
    servers = {s["server_name"]: s for s in body["servers"]}
    assert set(sim.server_names) <= set(servers)  # decoded names, never ids
    ready = servers[sim.server_names[0]]
    assert ready["status"] == "ok" and ready["profile"] in TINY_FLEET
    assert ready["prediction_time"].endswith("Z")
    assert set(ready["predictions"]) == {"30min", "1hr", "8hr"}
    for horizon in ready["predictions"].values():
        assert "cpu_used_pct" in horizon and "cpu_idle_pct" not in horizon  # CPU shown as used
        for band in horizon.values():
            assert band["p10"] <= band["p50"] <= band["p90"]
    assert 0.0 <= ready["risk_score"] <= 1.0 and ready["risk_level"] in ("green", "yellow", "red")
    assert "cpu_used_pct" in ready["current"]
    warming = servers["ppdb777"]
    assert warming["status"] == "warming_up" and warming["buckets_needed"] > 0 and not warming["known_to_model"]
    assert body["summary"]["warming_up"] == 1


def test_fan_alerts_history_and_metrics(live):
    daemon, sim = live
    name = sim.server_names[0]
    with daemon.client() as client:
        fan = client.get(f"/predictions/{name}").json()
        ServerFan.model_validate(fan)
        assert len(fan["steps"]) == 96 and len(fan["fan"]["mem_used_pct"]["p50"]) == 96
        assert client.get("/predictions/ppnope001").status_code == 404
        alerts = client.get("/alerts/active").json()
        AlertsResponse.model_validate(alerts)
        for alert in alerts["alerts"]:
            assert {"server_name", "level", "metric", "horizon", "predicted_value", "threshold", "reason"} <= set(alert)
            assert alert["id"] == f"{alert['kind']}:{alert['server_name']}:{alert['metric']}" and alert["starts_at"]
        history_of_alerts = client.get("/alerts/history", params={"hours": 24}).json()
        AlertHistoryResponse.model_validate(history_of_alerts)
        assert {a["id"] for a in alerts["alerts"]} <= {a["id"] for a in history_of_alerts["alerts"]}
        assert client.get("/alerts/history", params={"hours": 0}).status_code == 422
        history = client.get(f"/history/{name}", params={"hours": 2}).json()
        assert len(history["timestamps"]) == 24 and len(history["actuals"]["cpu_used_pct"]) == 24
        assert set(history["forecasts"]) == {"30min", "1hr", "8hr"}
        metrics = client.get("/metrics").text
        current = {s["server_name"]: s for s in client.get("/predictions/current").json()["servers"]}
    assert "tft_feed_records_total" in metrics and "tft_forecast_cycle_seconds" in metrics
    # Prometheus-native: one series name per metric in base units, numeric quantile, horizon in seconds.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("server"), s.labels.get("horizon_seconds"), s.labels.get("quantile")): s
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    served = current[name]["predictions"]["1hr"]
    memory = samples[("tft_forecast_memory_used_ratio", name, "3600", "0.9")]
    assert memory.value == pytest.approx(served["mem_used_pct"]["p90"] / 100, abs=1e-3)
    assert memory.labels["profile"] == current[name]["profile"] and memory.labels.get("instance", "") == ""  # unknown
    network = samples[("tft_forecast_network_receive_bytes_per_second", name, "28800", "0.5")]
    assert network.value == pytest.approx(current[name]["predictions"]["8hr"]["net_in_mb_s"]["p50"] * 1e6, rel=1e-2,
                                          abs=10)
    assert not any(key[0] == "tft_forecast" for key in samples)  # the old mixed-unit name is gone
    open_alerts = [s for family in text_string_to_metric_families(metrics) for s in family.samples
                   if s.name == "tft_alert"]
    assert len(open_alerts) == len(alerts["alerts"]) + len(alerts["suppressed"])
    for series in open_alerts:
        assert series.labels["state"] in {"firing", "suppressed"} and series.labels["horizon_seconds"].isdigit()


def test_shipped_rules_use_series_the_daemon_exposes(live):
    """Every tft_* series deploy/prometheus/tft_rules.yml reads exists on a real daemon's /metrics."""
    import re

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    daemon, _ = live
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "tft_rules.yml").read_text())
    used = {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"(?<![:\w])tft_[a-z0-9_]+", rule["expr"])}
    with daemon.client() as client:
        exposed = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert len(used) >= 7 and used <= exposed, sorted(used - exposed)


def test_websocket_pushes_each_new_cycle(live):
    from websockets.sync.client import connect

    daemon, sim = live
    with connect(f"ws://127.0.0.1:{daemon.port}/ws/predictions", additional_headers={"X-API-Key": API_KEY}) as ws:
        first = json.loads(ws.recv(timeout=10))  # the current cycle on connect
        with daemon.client() as client:
            feed_buckets(client, sim, 1)
        second = json.loads(ws.recv(timeout=30))
    assert second["prediction_time"] > first["prediction_time"]
    from websockets.exceptions import ConnectionClosedError

    url = f"ws://127.0.0.1:{daemon.port}/ws/predictions"
    for target, headers, first_message, reason in (
            (url, {"X-API-Key": "wrong"}, None, "unauthorized"),
            (url, None, json.dumps({"api_key": "wrong"}), "unauthorized"),
            (url, None, "not json", "unauthorized"),
            (f"{url}?api_key={API_KEY}", None, None, "URLs"),  # even the right key: URLs end up in logs
            (url, None, None, "unauthorized")):  # nothing sent: closed after DAEMON.ws_auth_timeout_seconds
        with connect(target, additional_headers=headers) as ws, pytest.raises(ConnectionClosedError) as closed:
            if first_message is not None:
                ws.send(first_message)
            ws.recv(timeout=DAEMON.ws_auth_timeout_seconds + 5)
        assert closed.value.rcvd.code == DAEMON.ws_unauthorized_code and reason in closed.value.rcvd.reason
    # A browser, which cannot set headers, sends the key as its first message.
    with connect(url) as ws:
        ws.send(json.dumps({"api_key": API_KEY}))
        assert json.loads(ws.recv(timeout=10))["prediction_time"] is not None


def _record(sim: FleetSimulator) -> dict:
    record = dict(sim.records(sim.advance(1))[0])
    return record


@pytest.mark.parametrize("day,field,value,reason", [
    (1, "cpu_iowait_pct", "lots", "valid number"),
    (2, "mem_used_pct", 140.0, "less than or equal to 100"),
    (3, "state", "on_fire", "Input should be"),
    (4, "back_close_wait", 3.5, "valid integer"),
    (5, "server_name", "DROP TABLE", "should match pattern"),
])
def test_bad_records_are_named_and_good_ones_kept(live, day, field, value, reason):
    daemon, _ = live
    sim = FleetSimulator(fleet={"web_api": 2}, seed=123, start=f"2026-03-02T0{day}:00:00Z")
    good = sim.records(sim.advance(1))
    for i, record in enumerate(good):  # names of their own: not duplicates of the fixture's fleet
        record["server_name"] = f"ppweb{800 + 10 * day + i}"
    bad = {**good[0], "server_name": "ppweb900", field: value}
    with daemon.client() as client:
        response = client.post("/feed", json={"records": [good[0], bad, good[1]]})
    assert response.status_code == 422
    body = response.json()
    assert body["stored"] == [0, 2]
    [rejected] = body["rejected"]
    assert rejected["index"] == 1 and rejected["field"] == field and reason in rejected["reason"]


def test_contract_rules_and_security(live):
    daemon, _ = live
    sim = FleetSimulator(fleet={"web_api": 1}, seed=4, start="2026-03-02T01:00:00Z")
    record = dict(sim.records(sim.advance(1))[0], server_name="ppweb950")
    with daemon.client() as client:
        cpu = client.post("/feed", json={"records": [dict(record, cpu_idle_pct=10.0)]}).json()
        assert "must be 100" in cpu["rejected"][0]["reason"]
        prefix = client.post("/feed", json={"records": [dict(record, profile="database")]}).json()
        assert "name pattern of profile 'web_api'" in prefix["rejected"][0]["reason"]
        stored = client.post("/feed", json={"records": [record]}).json()
        assert stored["stored"] == [0]
        again = client.post("/feed", json={"records": [record]}).json()  # a retried batch
        assert again["duplicates"] == [0] and again["stored"] == []
        not_json = client.post("/feed", content=b"{not json", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        assert client.post("/feed", json={"rows": []}).status_code == 422
        far = client.post("/feed", json={"records": [dict(record, timestamp="2263-01-01T00:00:00Z")]})
        assert far.status_code == 422 and "between 1970 and 2200" in far.text
        huge = client.post("/feed", content=b"x" * (DAEMON.max_body_bytes + 1),
                           headers={"content-type": "application/json"})
        assert huge.status_code == 413
        assert client.post("/admin/reload-model").status_code == 200
    with daemon.client(key=None) as anonymous:
        denied = anonymous.post("/feed", json={"records": [record]})
        assert denied.status_code == 401 and "X-API-Key" in denied.json()["detail"]
        assert anonymous.get("/predictions/current").status_code == 401
        assert anonymous.get("/health").status_code == 200
    with daemon.client(key="wrong") as wrong:
        assert wrong.get("/status").status_code == 401


def _in_process(**settings: object) -> TestClient:
    """The app the daemon serves, in process with the test's key (routing and validation need no uvicorn)."""
    from daemon_state import DaemonSettings
    from tft_inference import create_app

    return TestClient(create_app(DaemonSettings(api_key=API_KEY, **settings)), headers={"X-API-Key": API_KEY})


def test_no_model_means_503_not_a_guess(tmp_path):
    """In process: the error shape of a model-less daemon."""
    with _in_process(model_dir=tmp_path / "missing_model", store_path=tmp_path / "store.sqlite3",
                     allow_no_model=True) as client:
        assert client.get("/health").json() == {"status": "ok", "model_loaded": False}
        response = client.get("/predictions/current")
        assert response.status_code == 503
        assert response.json()["error"] == "model_not_loaded" and "Fix:" in response.json()["detail"]
        assert client.get("/alerts/active").status_code == 503


def test_refuses_to_start_with_an_incomplete_model(tiny_training, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_training.model_dir, broken)
    (broken / "config.json").unlink()
    result = subprocess.run([sys.executable, "main.py", "infer", "--daemon", "--model-dir", str(broken),
                             "--port", str(free_port()), "--store", str(tmp_path / "s.sqlite3")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "Refusing to start" in result.stderr and "incomplete" in result.stderr and "Fix:" in result.stderr


def test_rate_limit(tiny_training, tmp_path):
    """In process: the token bucket is the app's middleware."""
    with _in_process(model_dir=tiny_training.model_dir, store_path=tmp_path / "store.sqlite3", rate_per_minute=60,
                     rate_burst=5) as client:
        responses = [client.get("/status") for _ in range(8)]
    codes = [r.status_code for r in responses]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1  # one token a second at 60/min
    assert limited.json()["error"] == "rate_limited" and "retry in" in limited.json()["detail"]


def test_sigkill_mid_feed_loses_no_acknowledged_record(tiny_training, tmp_path):
    store = tmp_path / "store.sqlite3"
    daemon = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000")
    daemon.wait_ready()
    sim = FleetSimulator(fleet=TINY_FLEET, seed=21, start="2026-06-01T00:00:00Z")
    acked, stop = [0], threading.Event()
    with daemon.client() as client:
        feed_buckets(client, sim, 26)  # enough history to forecast
        wait_for(lambda: client.get("/status").json()["cycles"] >= 1)
        before = client.get("/predictions/current").json()

    def hammer() -> None:
        with daemon.client() as client:
            while not stop.is_set():
                records = sim.records(sim.advance(1))
                try:
                    response = client.post("/feed", json={"records": records})
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    acked[0] += len(records)

    total_before = 26 * len(sim.server_names)
    thread = threading.Thread(target=hammer)
    thread.start()
    wait_until(lambda: acked[0] >= HAMMER_BATCHES * len(sim.server_names), timeout=60,
               what="the hammer's batches to be acknowledged")
    os.kill(daemon.proc.pid, signal.SIGKILL)
    stop.set()
    thread.join(10)
    daemon.proc.wait(10)

    from metrics_store import MetricsStore

    stored = MetricsStore(store).count_samples()
    in_flight = len(sim.server_names)  # at most one unacknowledged batch may also have landed
    assert acked[0] > 0
    assert total_before + acked[0] <= stored <= total_before + acked[0] + in_flight

    restarted = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000")
    try:
        restarted.wait_ready()
        with restarted.client() as client:
            after = wait_for(lambda: client.get("/predictions/current").json()
                             if client.get("/status").json()["cycles"] >= 1 else None)
        ready = [s for s in after["servers"] if s["status"] == "ok"]
        assert len(ready) == len(sim.server_names), "no new warm-up after a restart"
        assert after["prediction_time"] >= before["prediction_time"]
    finally:
        restarted.stop()


def test_offline_forecast_of_a_file(tiny_training, tiny_data, tmp_path):
    out = tmp_path / "predictions.json"
    result = subprocess.run([sys.executable, "main.py", "infer", "--data", str(tiny_data), "--model-dir",
                             str(tiny_training.model_dir), "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(out.read_text())
    assert len(document["servers"]) == 12 and len(document["steps"]) == 96
    assert all(s["status"] == "ok" for s in document["servers"])
    assert set(document["fans"][document["servers"][0]["server_name"]]) >= {"cpu_used_pct", "mem_used_pct"}
    assert set(LINBORG_METRICS) <= set(document["servers"][0]["current"])


def test_forecasting_in_slices_changes_nothing(tiny_training, monkeypatch):
    """Big fleets run the model slice by slice (ENGINE.inference_chunk_servers); the forecasts must not change."""
    import numpy as np

    import forecast_engine
    from metrics_generator import fleet_from_total
    from metrics_store import FleetWindows
    from tft_model import load_model

    engine = forecast_engine.ForecastEngine(load_model(tiny_training.model_dir))
    sim = FleetSimulator(fleet=fleet_from_total(11), seed=4)
    fleet = FleetWindows.from_records(sim.records(sim.advance(6 * 12)))
    origin = fleet.newest_bucket
    whole = engine.forecast(fleet, origin)
    monkeypatch.setattr(forecast_engine, "ENGINE",
                        dataclasses.replace(forecast_engine.ENGINE, inference_chunk_servers=3))
    sliced = engine.forecast(fleet, origin)
    assert whole.forecast_count == sliced.forecast_count == 11
    from config import INTEGER_METRICS

    compared = 0
    for name, result in whole.servers.items():
        for metric, band in result.fan.items():
            # Counts are rounded after decoding: a float-level difference may flip a .5 by one.
            atol = 1.0 if metric in INTEGER_METRICS else 1e-4
            for quantile, values in band.items():
                np.testing.assert_allclose(sliced.servers[name].fan[metric][quantile], values, rtol=1e-4,
                                           atol=atol, err_msg=f"{name} {metric} {quantile}")
                compared += 1
    assert compared >= 11 * 3


def test_an_unknown_host_is_forecast_from_its_profile(tiny_training):
    """A real host name the model never saw, with the same history under two profiles: the profile decides."""

    from forecast_engine import ForecastEngine
    from metrics_store import FleetWindows
    from tft_model import load_model

    engine = ForecastEngine(load_model(tiny_training.model_dir))
    sim = FleetSimulator(fleet={"web_api": 1}, seed=21, start="2026-03-03T00:00:00Z")
    history = sim.records(sim.advance(engine.spec.encoder_length))  # exactly one full window
    records = [dict(r, server_name=name, profile=profile)
               for name, profile in (("db-eu-3", "database"), ("web-eu-3", "web_api")) for r in history]
    fleet = FleetWindows.from_records(records)
    result = engine.forecast(fleet, fleet.newest_bucket)
    db, web = (result.servers[n].prediction for n in ("db-eu-3", "web-eu-3"))
    assert db.status == web.status == "ok" and not db.known_to_model and not web.known_to_model
    assert db.history_buckets == web.history_buckets == engine.spec.encoder_length
    # Same metrics, different role: the forecasts must differ, so the profile is really read. The API
    # rounds to 0.001; the tiny 2-epoch model moves p50 by a few hundredths (0.03-0.14 seen).
    diffs = [abs(db.predictions["8hr"][m]["p50"] - web.predictions["8hr"][m]["p50"])
             for m in db.predictions["8hr"]]
    assert max(diffs) >= 0.01, diffs


def test_cycles_are_summarised_not_logged_one_by_one(tiny_training, tmp_path, caplog):
    """One INFO line per DAEMON_STATE.log_summary_seconds about the cycles since the last; each cycle is DEBUG."""
    from daemon_state import Daemon, DaemonSettings

    daemon = Daemon(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3"))
    sim = FleetSimulator(fleet=TINY_FLEET, seed=12, start="2026-03-02T00:00:00Z")
    daemon.ingest(sim.records(sim.advance(40)))
    newest = daemon.fleet.newest_bucket
    with caplog.at_level(logging.DEBUG, logger="daemon_state"):
        for origin in range(newest - 10, newest):
            assert daemon.run_cycle(origin) is not None
        info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert info == []  # ten cycles well inside one summary interval: nothing at INFO
        assert sum("forecast cycle 2026" in r.getMessage() for r in caplog.records) == 10  # each one at DEBUG
        daemon.cycle_log.every_seconds = 0.0
        assert daemon.run_cycle(newest) is not None
        [summary] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    daemon.close()
    assert "11 forecast cycles" in summary and "median" in summary and "max" in summary


def test_every_prediction_request_is_in_the_access_log(live):
    """Codex: every prediction request is logged; --access-log keeps those lines out of the daemon's own log."""
    daemon, _ = live
    with daemon.client() as client:
        assert client.get("/predictions/current").status_code == 200
        assert client.get("/predictions/no-such-server").status_code == 404
    access = daemon.log.with_name("access.log")
    lines = wait_for(lambda: [json.loads(line.split(": ", 1)[1]) for line in access.read_text().splitlines()
                              if "prediction_request" in line] if access.exists() else None)
    keyed = {(entry["path"], entry["status"]) for entry in lines if entry["client"].startswith("key:")}
    assert ("/predictions/current", 200) in keyed and ("/predictions/no-such-server", 404) in keyed
    assert all(entry["ms"] >= 0 and entry["client"].startswith(("key:", "addr:")) for entry in lines)
    assert "prediction_request" not in daemon.log.read_text()


def test_without_an_access_log_file_only_errors_and_slow_requests_are_logged(monkeypatch):
    """The daemon's own log gets an access line for an error or a slow request, not for a dashboard's polling."""
    import tft_inference
    from config import DAEMON

    monkeypatch.setattr(tft_inference, "_access_log_every", False)
    assert not tft_inference.access_logged(200, 0.01)
    assert tft_inference.access_logged(DAEMON.access_log_min_status, 0.01) and tft_inference.access_logged(503, 0.01)
    assert tft_inference.access_logged(200, DAEMON.access_log_slow_seconds)
    monkeypatch.setattr(tft_inference, "_access_log_every", True)  # --access-log FILE
    assert tft_inference.access_logged(200, 0.01)


def test_housekeeping_logs_a_summary_and_only_what_matters_at_once(caplog):
    """Routine removals are DEBUG and summed into one INFO line per interval; a released server is INFO at once."""
    from config import DAEMON_STATE
    from daemon_state import HousekeepingLog

    now = [0.0]
    log = HousekeepingLog(every_seconds=600, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="daemon_state"):
        for _ in range(9):
            now[0] += 60
            log.add({"buckets": 30, "sample_keys": 1800, "servers_released": 0})
        assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
        log.add({"buckets": 0, "sample_keys": 0, "servers_released": 2})
        log.add({"buckets": DAEMON_STATE.housekeeping_loud_rows, "sample_keys": 0, "servers_released": 0})
        now[0] += 60
        log.add({"buckets": 30, "sample_keys": 1800, "servers_released": 0})
        info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 3 and "'servers_released': 2" in info[0] and str(DAEMON_STATE.housekeeping_loud_rows) in info[1]
    assert info[2].startswith("housekeeping: 12 runs in the last 600 s removed ")
    assert f"{30 * 10 + DAEMON_STATE.housekeeping_loud_rows} buckets, 18000 sample_keys, 2 servers_released" in info[2]
