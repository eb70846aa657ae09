"""Hostile input and damaged state: one bad record or file must never blank, stall or erase the fleet.

Each test is a regression test for a failure reproduced against the daemon (issue 13). Most run a
real daemon process on loopback, fed a fleet whose newest bucket is "now".
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from config import API, DAEMON, DAEMON_STATE, FEED_MAX_FUTURE_SECONDS
from daemon_state import RateLimiter
from metrics_generator import FleetSimulator
from metrics_store import MetricsStore
from tests.helpers import API_KEY, ROOT, TINY_FLEET, DaemonProcess, free_port, wait_for

FED_BUCKETS = 30


def strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity tokens, as strict parsers (browsers, Go, jq) do."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def recent_sim(seed: int = 99, fleet: dict[str, int] | None = None, buckets_back: int = FED_BUCKETS) -> FleetSimulator:
    """A simulator whose ``buckets_back`` buckets end at the current 5-minute bucket."""
    now = pd.Timestamp.now(tz="UTC").floor("5min")
    start = now - pd.Timedelta(minutes=5 * (buckets_back - 1))
    return FleetSimulator(fleet=fleet or TINY_FLEET, seed=seed, start=start)


def post_raw(client: httpx.Client, text: str) -> httpx.Response:
    return client.post("/feed", content=text.encode(), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def fed(tiny_training, tmp_path_factory):
    """A daemon with the tiny model, fed the tiny fleet up to now, one cycle done."""
    store = tmp_path_factory.mktemp("hostile") / "store.sqlite3"
    daemon = DaemonProcess(tiny_training.model_dir, store, "--rate-per-minute", "100000", "--rate-burst", "100000")
    daemon.wait_ready()
    sim = recent_sim()
    with daemon.client() as client:
        records = sim.records(sim.advance(FED_BUCKETS))
        assert client.post("/feed", json={"records": records}).status_code == 200
        servers = len({r["server_name"] for r in records})  # the simulator may leave out an offline bucket
        wait_for(lambda: client.get("/status").json()["servers_ready"] == servers, timeout=60)
    yield daemon, records
    daemon.stop()


def test_a_record_from_the_future_is_refused_and_moves_no_clock(fed):
    daemon, records = fed
    with daemon.client() as client:
        before = client.get("/predictions/current").json()
        ahead = dict(records[-1], timestamp=(pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)).isoformat())
        far = dict(records[-1], timestamp="2199-01-01T00:00:00Z")
        for record in (ahead, far):
            response = client.post("/feed", json={"records": [record]})
            assert response.status_code == 422
            [rejected] = response.json()["rejected"]
            assert rejected["field"] == "timestamp" and "ahead of the daemon's clock" in rejected["reason"]
            assert f"at most {FEED_MAX_FUTURE_SECONDS} s ahead" in rejected["reason"]
        time.sleep(1.5)  # wall-clock: a few forecast polls, which must change nothing (nothing to poll for)
        after = client.get("/predictions/current").json()
        assert after["prediction_time"] == before["prediction_time"]
        assert after["summary"]["offline"] == 0 and after["summary"] == before["summary"]
        # A real record after the hostile ones is still taken (the 2199 record did not move the retention cut).
        sim = recent_sim(seed=5, fleet={"web_api": 1}, buckets_back=1)
        fresh = dict(sim.records(sim.advance(1))[0], server_name="ppweb990")
        assert client.post("/feed", json={"records": [fresh]}).status_code == 200


def test_a_store_holding_future_records_recovers_without_losing_history(tiny_training, tmp_path):
    store_path = tmp_path / "store.sqlite3"
    sim = recent_sim(seed=3)
    good = sim.records(sim.advance(FED_BUCKETS))
    poisoned = dict(good[0], timestamp="2199-01-01T00:00:00Z")
    rows = [dict(r, ts_ns=int(pd.Timestamp(r["timestamp"]).value)) for r in [*good, poisoned]]
    store = MetricsStore(store_path)  # written as an older daemon without the clock check would have
    store.add_records(rows)
    store.close()
    daemon = DaemonProcess(tiny_training.model_dir, store_path)
    try:
        daemon.wait_ready()
        with daemon.client() as client:
            status = wait_for(lambda: (s := client.get("/status").json())["cycles"] >= 1 and s, timeout=60)
            assert status["servers_offline"] == 0 and status["servers_ready"] == len({r["server_name"] for r in good})
            assert status["last_forecast_time"] < "2100"
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert "held 1 buckets stamped after the daemon's clock" in log and "quarantined_buckets" in log
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == len(good)  # every good bucket kept
        assert conn.execute("SELECT COUNT(*) FROM quarantined_buckets").fetchone()[0] == 1


@pytest.mark.parametrize("field,token", [
    ("net_in_mb_s", "Infinity"), ("load_average", "-Infinity"), ("cpu_iowait_pct", "NaN"),
    ("net_out_mb_s", "1e400"), ("back_close_wait", str(2**63)), ("front_close_wait", str(10**30)),
    ("back_close_wait", str(API.integer_metric_max + 1)),
])
def test_only_finite_numbers_are_stored(fed, field, token):
    daemon, records = fed
    record = dict(records[-1], server_name="ppweb991")
    body = json.dumps({"records": [dict(record, **{field: "__TOKEN__"})]}).replace('"__TOKEN__"', token)
    with daemon.client() as client:
        response = post_raw(client, body)
        assert response.status_code == 422, response.text
        [rejected] = strict_json(response.text)["rejected"]
        assert rejected["index"] == 0 and rejected["field"] == field
        # Every document the daemon emits stays strict JSON.
        for path in ("/predictions/current", "/status", "/alerts/active"):
            strict_json(client.get(path).text)


@pytest.mark.parametrize("field,value,reason", [
    ("cpu_iowait_pct", True, "valid number"),
    ("mem_used_pct", "12.5", "valid number"),
    ("back_close_wait", "7", "valid integer"),
    ("back_close_wait", 3.5, "valid integer"),
    ("load_average", 1e308, "less than or equal"),  # finite, but beyond float32 and any real host
    ("net_in_mb_s", 2e5, "less than or equal"),
])
def test_types_are_strict(fed, field, value, reason):
    daemon, records = fed
    with daemon.client() as client:
        response = client.post("/feed", json={"records": [dict(records[-1], server_name="ppweb992", **{field: value})]})
        assert response.status_code == 422
        [rejected] = response.json()["rejected"]
        assert rejected["field"] == field and reason in rejected["reason"]


def test_plain_text_bodies_and_profile_changes_are_refused(fed):
    daemon, records = fed
    with daemon.client() as client:
        text = client.post("/feed", content=json.dumps({"records": records[-1:]}),
                           headers={"content-type": "text/plain"})
        assert text.status_code == 415 and text.json()["error"] == "unsupported_media_type"
        sim = recent_sim(seed=8, fleet={"web_api": 1}, buckets_back=2)
        first, second = sim.records(sim.advance(2))
        host = "db-eu-west-9"  # a real host name: its profile is whatever it is sent with
        assert client.post("/feed", json={"records": [dict(first, server_name=host, profile="database")]}
                           ).status_code == 200
        changed = client.post("/feed", json={"records": [dict(second, server_name=host, profile="web_api")]})
        assert changed.status_code == 422
        [rejected] = changed.json()["rejected"]
        assert rejected["field"] == "profile" and "tracked as 'database'" in rejected["reason"]


def test_malformed_framing_is_a_client_error(fed):
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    daemon, _ = fed
    with daemon.client() as client:
        nested = post_raw(client, "[" * 100_000)
        assert nested.status_code == 400 and nested.json()["error"] == "invalid_json"
        nested_records = post_raw(client, '{"records": ' + "[" * 100_000)
        assert nested_records.status_code == 400
        assert client.get("/health").json()["status"] == "ok"
    with connect(f"ws://127.0.0.1:{daemon.port}/ws/predictions", additional_headers={"X-API-Key": API_KEY}) as ws:
        ws.recv(timeout=10)  # the current cycle
        ws.send(b"\x00\x01binary")
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == DAEMON.ws_unsupported_data_code
    assert "Traceback" not in daemon.log.read_text()


def test_wrong_keys_are_limited_per_address_and_cost_bounded_memory(tiny_training, tmp_path):
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3")
    try:
        daemon.wait_ready()
        attempts = DAEMON_STATE.anonymous_rate_burst + 200
        with httpx.Client(base_url=daemon.url) as guesser:  # every request with a new wrong key
            began = time.monotonic()
            codes = [guesser.get("/status", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(attempts)]
            seconds = time.monotonic() - began
        refilled = int(seconds * DAEMON_STATE.anonymous_rate_per_minute / 60) + 1
        assert set(codes) == {401, 429}
        assert codes.count(401) <= DAEMON_STATE.anonymous_rate_burst + refilled, (codes.count(401), seconds)
        with daemon.client() as client:  # the right key has its own bucket: not locked out by the guesser
            assert client.get("/status").status_code == 200
        from websockets.exceptions import ConnectionClosedError
        from websockets.sync.client import connect

        close_codes = []  # handshakes are limited too: a burst of wrong-key WebSockets meets 4429
        for _ in range(20):
            with connect(f"ws://127.0.0.1:{daemon.port}/ws/predictions?api_key=wrong") as ws, \
                    pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=5)
            close_codes.append(closed.value.rcvd.code)
        assert DAEMON.ws_rate_limited_code in close_codes and set(close_codes) <= {DAEMON.ws_rate_limited_code, 4401}
    finally:
        daemon.stop()
    limiter = RateLimiter(per_minute=60, burst=5, prune_above=1_000, max_clients=2_000)
    for i in range(20_000):
        limiter.allow(f"addr:10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 2_000


def _start(model_dir, store_path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "tft_inference.py", "--daemon", "--port", str(free_port()),
                           "--model-dir", str(model_dir), "--store", str(store_path), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={"TFT_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("damage", ["garbage_header", "garbage_pages", "truncated", "directory"])
def test_a_damaged_store_is_refused_with_the_fix(tiny_training, tmp_path, damage):
    store_path = tmp_path / "store.sqlite3"
    sim = recent_sim(seed=4)
    store = MetricsStore(store_path)
    store.add_records([dict(r, ts_ns=int(pd.Timestamp(r["timestamp"]).value)) for r in sim.records(sim.advance(60))])
    store.close()
    data = store_path.read_bytes()
    if damage == "garbage_header":
        store_path.write_bytes(b"\x13" * 100 + data[100:])
    elif damage == "garbage_pages":
        page = 4096
        store_path.write_bytes(data[:page] + bytes(range(256)) * ((len(data) - page) // 256 + 1))
    elif damage == "truncated":
        store_path.write_bytes(data[: len(data) // 3])
    else:
        store_path.unlink()
        store_path.mkdir()
    result = _start(tiny_training.model_dir, store_path)
    assert result.returncode == 3, result.stderr[-2000:]  # a damaged store: the environment (errors.py)
    assert "Refusing to start" in result.stderr and "Fix:" in result.stderr and "Docs/" in result.stderr
    assert "Traceback" not in result.stderr


def test_failing_cycles_make_health_degraded(tiny_training, tmp_path):
    """An in-process daemon whose store refuses writes: cycles fail, /health says so, and recovers."""
    from fastapi.testclient import TestClient

    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                    api_key=API_KEY))
    daemon = app.state.daemon
    sim = recent_sim(seed=6)
    daemon.ingest(sim.records(sim.advance(FED_BUCKETS)))
    origin = daemon.complete_through()
    real_save = daemon.store.save_forecasts

    def broken(*_args: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    daemon.store.save_forecasts = broken
    with TestClient(app) as client:
        for _ in range(3):
            assert daemon.run_cycle(origin) is None
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "malformed" not in health["reason"]  # no exception text to probes
        assert "malformed" in client.get("/status", headers={"X-API-Key": API_KEY}).json()["last_cycle_error"]
        daemon.store.save_forecasts = real_save
        assert daemon.run_cycle(origin) is not None
        assert client.get("/health").json() == {"status": "ok", "model_loaded": True}


def test_a_full_disk_is_507_and_loses_nothing(tiny_training, tmp_path):
    """SQLite's page cap makes the store's disk 'full' for real: 507 with Retry-After, then recovery."""
    from fastapi.testclient import TestClient

    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                    api_key=API_KEY))
    daemon = app.state.daemon
    sim = recent_sim(seed=7, buckets_back=20)
    first, rest = sim.records(sim.advance(2)), sim.records(sim.advance(18))
    with TestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        assert client.post("/feed", json={"records": first}).status_code == 200
        pages = daemon.store._writer.execute("PRAGMA page_count").fetchone()[0]
        daemon.store._writer.execute(f"PRAGMA max_page_count = {pages}")
        full = client.post("/feed", json={"records": rest})
        assert full.status_code == 507 and full.headers["Retry-After"]
        assert full.json()["error"] == "insufficient_storage" and "full" in full.json()["detail"]
        assert daemon.store.count_samples() == len(first)  # nothing of the refused batch, nothing lost
        daemon.store._writer.execute("PRAGMA max_page_count = 1073741823")  # space freed
        assert client.post("/feed", json={"records": rest}).status_code == 200
        assert daemon.store.count_samples() == len(first) + len(rest)


WRITER = """
import os, sys
import pandas as pd
from metrics_store import MetricsStore
from tests.test_hostile import recent_sim

store = MetricsStore(sys.argv[1])
sim = recent_sim(seed=9)
store.add_records([dict(r, ts_ns=int(pd.Timestamp(r["timestamp"]).value)) for r in sim.records(sim.advance(20))])
store.write_ledger()
os._exit(0)  # killed: no checkpoint, the records live only in the write-ahead log
"""


def test_a_truncated_write_ahead_log_is_reported_with_what_was_lost(tmp_path, caplog):
    store_path = tmp_path / "store.sqlite3"
    done = subprocess.run([sys.executable, "-c", WRITER, str(store_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    wal = tmp_path / "store.sqlite3-wal"
    acknowledged = json.loads((tmp_path / "store.sqlite3.ledger.json").read_text())["samples"]
    assert acknowledged > 0 and wal.stat().st_size > 4096
    data = wal.read_bytes()
    frame = 24 + int.from_bytes(data[8:12], "big")  # frame header + page
    frames = (len(data) - 32) // frame
    wal.write_bytes(data[: 32 + (frames // 2) * frame + 100])  # cut 100 bytes into a frame half-way through
    with caplog.at_level("ERROR", logger="metrics_store"):
        store = MetricsStore(store_path)
    kept = store.samples
    store.close()
    assert kept < acknowledged
    assert f"{acknowledged - kept} samples were lost" in caplog.text
    assert "write-ahead log" in caplog.text and "inside a frame" in caplog.text


def test_a_non_finite_window_is_not_ready_and_the_document_stays_strict_json(tiny_training):
    """Defence in depth: history that holds a NaN (an old store) gives 'not_ready' with a reason, not NaN forecasts."""
    from forecast_engine import ForecastEngine, fleet_document
    from metrics_store import FleetWindows
    from tft_model import load_model

    engine = ForecastEngine(load_model(tiny_training.model_dir))
    sim = recent_sim(seed=10, buckets_back=engine.spec.encoder_length)
    records = sim.records(sim.advance(engine.spec.encoder_length))
    poisoned = records[0]["server_name"]
    records = [dict(r, net_in_mb_s=float("inf")) if r["server_name"] == poisoned and i % 5 == 0 else r
               for i, r in enumerate(records)]
    fleet = FleetWindows.from_records(records)
    result = engine.forecast(fleet, fleet.newest_bucket)
    bad = result.servers[poisoned].prediction
    assert bad.status == "not_ready" and "non-finite" in bad.reason and bad.predictions == {}
    assert all(r.prediction.status == "ok" for name, r in result.servers.items() if name != poisoned)
    document = fleet_document(result, engine.model_version)
    parsed = strict_json(document.model_dump_json())
    assert parsed["summary"]["not_ready"] == 1


def _damage_model(model_dir, damage: str) -> None:
    """Break one file of a copied model directory the way a bad copy, a wrong tool or an editor would."""
    import pickle  # only to write a pickle-format file the loader must refuse; nothing here unpickles

    weights, config, mapping = (model_dir / "model.safetensors", model_dir / "config.json",
                                model_dir / "server_mapping.json")
    if damage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "weights_random":
        weights.write_bytes(bytes(range(256)) * 64)
    elif damage == "weights_empty":
        weights.write_bytes(b"")
    elif damage == "weights_pickle":
        weights.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    elif damage == "config_not_object":
        config.write_text("[1, 2, 3]")
    elif damage in ("config_no_feature_spec", "config_no_hparams"):
        document = json.loads(config.read_text())
        document.pop("feature_spec" if damage == "config_no_feature_spec" else "hparams")
        config.write_text(json.dumps(document))
    elif damage == "mapping_altered":
        document = json.loads(mapping.read_text())
        name = next(iter(document["servers"]))
        document["servers"][name] = "0" * len(document["servers"][name])
        mapping.write_text(json.dumps(document))
    elif damage == "mapping_invalid":
        mapping.write_text("{not json")
    elif damage == "mapping_not_object":
        mapping.write_text('"servers"')
    else:
        raise AssertionError(damage)


MODEL_DAMAGES = ["weights_truncated", "weights_random", "weights_empty", "weights_pickle", "config_not_object",
                 "config_no_feature_spec", "config_no_hparams", "mapping_altered", "mapping_invalid",
                 "mapping_not_object"]


@pytest.mark.parametrize("damage", MODEL_DAMAGES)
def test_a_damaged_model_is_the_codex_error(tiny_training, tmp_path, damage):
    import shutil

    from tft_model import ModelLoadError, load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_training.model_dir, model_dir)
    _damage_model(model_dir, damage)
    with pytest.raises(ModelLoadError) as refused:
        load_model(model_dir)
    message = str(refused.value)
    assert "Fix:" in message and "Why it matters" in message and "Docs/" in message


@pytest.mark.parametrize("damage", ["weights_pickle", "mapping_altered"])
def test_the_daemon_refuses_a_damaged_model_or_runs_without_it(tiny_training, tmp_path, damage):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_training.model_dir, model_dir)
    _damage_model(model_dir, damage)
    result = _start(model_dir, tmp_path / "store.sqlite3")
    assert result.returncode == 2 and "Refusing to start" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr
    from fastapi.testclient import TestClient

    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=model_dir, store_path=tmp_path / "s.sqlite3", api_key=API_KEY,
                                    allow_no_model=True))
    with TestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        assert client.get("/health").json()["model_loaded"] is False
        refused = client.get("/predictions/current")
        assert refused.status_code == 503 and "Fix:" in refused.json()["detail"]


def test_reloading_a_damaged_model_keeps_the_old_one_serving(tiny_training, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from daemon_state import DaemonSettings
    from tft_inference import create_app

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_training.model_dir, model_dir)
    app = create_app(DaemonSettings(model_dir=model_dir, store_path=tmp_path / "s.sqlite3", api_key=API_KEY))
    with TestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        version = client.get("/status").json()["model_version"]
        _damage_model(model_dir, "weights_truncated")
        reload = client.post("/admin/reload-model")
        assert reload.status_code == 409 and reload.json()["error"] == "model_reload_failed"
        assert "keeps serving" in reload.json()["detail"] and "safetensors" in reload.json()["detail"]
        status = client.get("/status").json()
        assert status["model_loaded"] and status["model_version"] == version
