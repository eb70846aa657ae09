"""Late arrivals are forecast promptly: a server that becomes ready for the last cycle's bucket after that cycle
ran (a backfill fed host after host, a late collector) is forecast by an incremental pass within seconds, once,
and merged into the published cycle (Daemon.run_incremental); servers already forecast are not rerun.

In process (the app's own forecast loop under TestClient); the history ends an hour ago, so the wall clock has
completed every bucket and only the data decide which bucket a cycle forecasts. Costs (2 cores): ~2 s each
after the session's tiny model.
"""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from config import STEPS_PER_HOUR
from contract import bucket_iso, bucket_of_times
from metrics_generator import FleetSimulator
from tests.helpers import API_KEY, TINY_FLEET, wait_until

BATCH = 500  # records per POST /feed, as a backfill sends them (main.py generate writes host after host)
WAIT = 10.0  # seconds a test waits for the daemon; a pass runs within one poll (DAEMON_STATE.forecast_poll_seconds)


@pytest.fixture
def app(tiny_training, tmp_path):
    from daemon_state import DaemonSettings
    from tft_inference import create_app

    return create_app(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                     api_key=API_KEY, rate_per_minute=100_000, rate_burst=100_000))


def _past_sim(buckets: int, seed: int) -> FleetSimulator:
    """The tiny fleet over ``buckets`` buckets ending an hour before now."""
    end = pd.Timestamp.now(tz="UTC").floor("5min") - pd.Timedelta(hours=1)
    return FleetSimulator(fleet=TINY_FLEET, seed=seed, start=end - pd.Timedelta(minutes=5 * (buckets - 1)))


def _spy(engine) -> list[tuple[int, list[str]]]:  # noqa: ANN001 - a ForecastEngine
    """(origin, servers) of every forward pass the engine runs from now on."""
    calls: list[tuple[int, list[str]]] = []
    real = engine.predict_fleet

    def spy(names, windows, states, profiles, lengths, origin, yesterdays=None):  # noqa: ANN001, ANN202
        calls.append((origin, list(names)))
        return real(names, windows, states, profiles, lengths, origin, yesterdays)

    engine.predict_fleet = spy
    return calls


def _post(client: TestClient, records: list[dict]) -> dict:
    response = client.post("/feed", json={"records": records})
    assert response.status_code == 200, response.text
    return response.json()


def _servers(client: TestClient) -> dict[str, dict]:
    return {s["server_name"]: s for s in client.get("/predictions/current").json()["servers"]}


def test_a_backfill_fed_host_after_host_is_forecast_within_seconds(app):
    """The issue's repro in small: history fed host after host; the one cycle runs after the first batch, and
    every other server is forecast for that bucket by incremental passes, each server exactly once."""
    daemon = app.state.daemon
    buckets = daemon.engine.spec.history_buckets + STEPS_PER_HOUR  # the encoder, yesterday's input if any, an hour
    sim = _past_sim(buckets, seed=3)
    records = sorted(sim.records(sim.advance(buckets)), key=lambda r: r["server_name"])  # stable: host after host
    origin = int(bucket_of_times(pd.Series([records[-1]["timestamp"]]))[0])
    names = sorted(sim.server_names)
    calls = _spy(daemon.engine)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        _post(client, records[:BATCH])  # the first host whole (and the start of the next)
        wait_until(lambda: client.get("/status").json()["cycles"] == 1, timeout=WAIT, what="the first cycle")
        in_cycle = [name for name, s in _servers(client).items() if s["status"] == "ok"]
        assert 1 <= len(in_cycle) < len(names)  # the repro: only the hosts fed so far
        for start in range(BATCH, len(records), BATCH):
            _post(client, records[start:start + BATCH])
        servers = wait_until(lambda: (s := _servers(client)) and len(s) == len(names)
                             and all(v["status"] == "ok" and v["prediction_time"] == bucket_iso(origin)
                                     for v in s.values()) and s, timeout=WAIT, what="every server forecast")
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
        stored = sorted(server for server, _ in daemon.store.forecasts_at(origin))  # closed with the app
    assert sorted(servers) == names
    assert status["cycles"] == 1  # historical data bring no newer bucket: no second cycle, passes did it
    forecast = [name for at, batch in calls if at == origin for name in batch]
    assert sorted(forecast) == names  # each server forecast once for the bucket: none rerun
    assert calls[0][1] == sorted(in_cycle) and status["incremental_passes"] >= 1
    assert status["incremental_forecasts"] == len(names) - len(in_cycle)
    assert f"tft_incremental_forecasts_total {float(len(names) - len(in_cycle))}" in metrics
    assert stored == names  # stored, so each is scored when its targets arrive
    assert status["servers_ready"] == len(names)


def test_a_late_collector_is_forecast_for_its_bucket_promptly_and_once(app):
    """One server's record for bucket B arrives after B's cycle: the cycle keeps that server's previous forecast
    (not one over an offline-filled gap); the record brings its forecast for B within seconds, once."""
    daemon = app.state.daemon
    buckets = daemon.engine.spec.history_buckets + STEPS_PER_HOUR
    sim = _past_sim(buckets + 1, seed=4)
    history, last = sim.records(sim.advance(buckets)), sim.records(sim.advance(1))
    late_name = sim.server_names[0]
    late = [r for r in last if r["server_name"] == late_name]
    on_time = [r for r in last if r["server_name"] != late_name]
    b = int(bucket_of_times(pd.Series([last[0]["timestamp"]]))[0])
    calls = _spy(daemon.engine)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        _post(client, history)
        wait_until(lambda: client.get("/status").json()["cycles"] == 1, timeout=WAIT, what="the cycle for B-1")
        _post(client, on_time)
        wait_until(lambda: client.get("/status").json()["cycles"] == 2, timeout=WAIT, what="the cycle for B")
        waiting = _servers(client)[late_name]
        assert waiting["status"] == "ok" and waiting["prediction_time"] == bucket_iso(b - 1)  # its last forecast
        assert late_name not in [name for at, batch in calls if at == b for name in batch]
        _post(client, late)
        fresh = wait_until(lambda: (s := _servers(client)[late_name])["prediction_time"] == bucket_iso(b) and s,
                           timeout=WAIT, what="the late server's forecast for B")
        # Neither a duplicate of the late record nor one more sample of a server forecast for B reruns anything.
        assert _post(client, late)["duplicates"] == [0]
        extra = dict(on_time[0], timestamp=(pd.Timestamp(on_time[0]["timestamp"]) + pd.Timedelta(seconds=60))
                     .strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert _post(client, [extra])["stored"] == [0]
        wait_until(lambda: not daemon.ingest.touched, timeout=WAIT, what="the forecast loop to look at it")
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
        active = client.get("/alerts/active").json()
        stored = {server for server, _ in daemon.store.forecasts_at(b)}
    assert fresh["status"] == "ok" and fresh["current"] and fresh["predictions"]
    assert status["cycles"] == 2 and status["incremental_forecasts"] == 1 and status["incremental_passes"] == 1
    forecast = [name for at, batch in calls if at == b for name in batch]
    assert sorted(forecast) == sorted(sim.server_names)  # every server once for B, the late one included
    assert "tft_incremental_forecasts_total 1.0" in metrics
    assert f'server="{late_name}"' in metrics.split("tft_risk_score", 1)[1]
    assert stored == set(sim.server_names)
    opened = {a["id"] for a in active["alerts"]}
    assert {f"risk:{late_name}:{a['metric']}" for a in fresh["alerts"]} <= opened  # its alerts, as a cycle's


def test_a_late_server_with_no_forecast_to_keep_is_forecast_over_the_gap(app):
    """After a restart (nothing published yet) a server one bucket behind has no forecast to keep: the cycle
    forecasts it as before late data were awaited (ok, its last bucket missing), never "not ready"."""
    sim = _past_sim(40, seed=5)
    records = [r for step in range(40) for r in sim.records(sim.advance(1))]
    newest = max(r["timestamp"] for r in records)
    late = sim.server_names[0]
    fed = [r for r in records if not (r["server_name"] == late and r["timestamp"] == newest)]
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        for i in range(0, len(fed), BATCH):
            _post(client, fed[i:i + BATCH])
        servers = wait_until(lambda: (found := _servers(client)) and len(found) == len(sim.server_names)
                             and found, timeout=WAIT, what="the first cycle")
    assert servers[late]["status"] == "ok", servers[late]
    assert all(s["status"] == "ok" for s in servers.values())
