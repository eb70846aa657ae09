"""Anomalous now: |actual - p50| / half-width of the band forecast 30 min / 1 h before the bucket that just completed.

Costs (2 cores): the score and board tests well under a second; the HTTP test ~2 s (an in-process app
without a model, bands written to the store by hand); the model test a few seconds (3 cycles of the
tiny model, shared with the other tests' session).
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api_models import AnomaliesResponse, ServerFan
from config import ANOMALY, HORIZONS, STEPS_PER_DAY
from contract import bucket_iso
from live_accuracy import LiveAccuracy, bands_of, display_values
from live_anomaly import anomaly_scores
from metrics_generator import FleetSimulator
from metrics_store import FleetWindows, MetricsStore
from tests.helpers import API_KEY, TINY_FLEET

METRICS = ["cpu_used_pct", "mem_used_pct", "net_in_mb_s"]
K = {label: k for k, label in enumerate(HORIZONS)}  # horizon label -> index in a stored blob
JUMPY = "ppweb001"


# ---------------------------------------------------------------------------- the score
def test_score_is_the_distance_from_p50_over_the_half_width_on_the_actuals_side():
    band = [10.0, 20.0, 30.0]  # p10, p50, p90
    cases = [  # (metric, band, actual, score)
        ("mem_used_pct", band, 25.0, 0.5), ("mem_used_pct", band, 30.0, 1.0), ("mem_used_pct", band, 45.0, 2.5),
        ("mem_used_pct", band, 20.0, 0.0), ("mem_used_pct", band, 10.0, 1.0), ("mem_used_pct", band, 0.0, 2.0),
        ("mem_used_pct", [15.0, 20.0, 40.0], 10.0, 2.0),  # below p50: p50 - p10 = 5 decides, not the wide top
        ("mem_used_pct", [15.0, 20.0, 40.0], 30.0, 0.5),
        # a needle-thin band is read as ANOMALY.min_half_width wide (0.01 MB/s; one percent point)
        ("net_in_mb_s", [0.0, 0.0, 0.0], 0.05, 0.05 / ANOMALY.min_half_width["net_in_mb_s"]),
        ("cpu_used_pct", [50.0, 50.0, 50.0], 50.0, 0.0), ("cpu_used_pct", [50.0, 50.0, 50.4], 50.3, 0.3),
        ("cpu_used_pct", [0.0, 2.0, 6.0], 0.0, 1.0),  # p10 clipped at the range's bottom: cannot be passed
    ]
    for metric, q, actual, expected in cases:
        got = anomaly_scores(np.array([[actual]]), np.array([[q]]), [metric])[0, 0]
        assert got == pytest.approx(expected), (metric, q, actual, expected, got)
    assert np.isnan(anomaly_scores(np.array([[5.0]]), np.array([[[np.nan, 1.0, 2.0]]]), ["mem_used_pct"])[0, 0])


# ---------------------------------------------------------------------------- the board, fed as the daemon feeds it
def _fleet(buckets: int = 20, seed: int = 5) -> tuple[list[dict], FleetWindows, int]:
    """Records of the tiny fleet (no incidents, so no server is offline), their windows and the newest bucket."""
    sim = FleetSimulator(fleet=TINY_FLEET, seed=seed, start="2026-03-02T00:00:00Z")
    sim.incident_rate_scale = 0.0
    records = sim.records(sim.advance(buckets))
    fleet = FleetWindows.from_records(records)
    return records, fleet, fleet.newest_bucket


def _now(fleet: FleetWindows, server: str, bucket: int) -> np.ndarray:
    """A server's METRICS at a bucket, as displayed (CPU used)."""
    return display_values(fleet.servers[server].current(bucket)[None], METRICS)[0]


def _calm(actual: np.ndarray) -> np.ndarray:
    """A band the actual sits inside: p50 one above it, half-widths of 5 (score 0.2)."""
    return np.stack([actual - 4.0, actual + 1.0, actual + 4.0], axis=-1)


def _save(store: MetricsStore, made: int, bands: dict[str, np.ndarray], k: int) -> None:
    """Store (metrics, 3) bands per server as the forecasts made at ``made`` for horizon index ``k``."""
    blobs = {}
    for server, band in bands.items():
        full = np.zeros((len(METRICS), len(HORIZONS), 3), dtype=np.float32)
        full[:, k] = band
        blobs[server] = full.tobytes()
    store.save_forecasts(made, blobs)


def _forecasts(store: MetricsStore, fleet: FleetWindows, origin: int) -> None:
    """Every server calm at 30 min and 1 h, except JUMPY at 30 min: memory 30 above p50 (half-width 5: score 6),
    CPU 20 below p50 (p50 - p10 = 4: score 5), network 0.04 MB/s off a needle-thin band (the floor: score 4)."""
    for label in ("30min", "1hr"):
        bands = {s: _calm(_now(fleet, s, origin)) for s in fleet.servers}
        if label == "30min":
            cpu, mem, net = _now(fleet, JUMPY, origin)
            bands[JUMPY] = np.array([[cpu + 16.0, cpu + 20.0, cpu + 25.0], [mem - 38.0, mem - 30.0, mem - 25.0],
                                     [net - 0.04, net - 0.04, net - 0.04]])
        _save(store, origin - HORIZONS[label], bands, K[label])


def _scores(rows) -> dict[tuple[str, str, str], float]:  # noqa: ANN001 - AnomalyRow list
    return {(r.server_name, r.metric, r.horizon): r.score for r in rows}


def test_the_board_holds_the_scores_of_the_cycles_own_origin(tmp_path):
    records, fleet, origin = _fleet()
    store = MetricsStore(tmp_path / "s.sqlite3")
    live = LiveAccuracy(store, METRICS, "m1")
    live.since_origin, live.last_target = origin - 19, origin - 2  # a catch-up: origin - 1 and origin mature now
    _forecasts(store, fleet, origin)
    # A forecast that matured one bucket ago, far off: scored for accuracy, but it is not "now".
    _save(store, origin - 1 - HORIZONS["30min"], {"ppdb001": _calm(_now(fleet, "ppdb001", origin - 1)) + 50.0},
          K["30min"])
    matured = live.collect(fleet, origin)
    assert {m.target for m in matured} == {origin - 1, origin}
    rows, matching = live.anomalies.rows()
    scores = _scores(rows)
    assert matching == len(rows) == len(fleet.servers) * len(METRICS) * 2
    assert scores[(JUMPY, "mem_used_pct", "30min")] == pytest.approx(6.0, abs=1e-3)
    assert scores[(JUMPY, "cpu_used_pct", "30min")] == pytest.approx(5.0, abs=1e-3)
    assert scores[(JUMPY, "net_in_mb_s", "30min")] == pytest.approx(4.0, abs=2e-3)
    outside = {key for key, score in scores.items() if score > 1}
    assert outside == {(JUMPY, m, "30min") for m in METRICS}  # every calm score (ppdb001's too) is 0.2
    assert all(score == pytest.approx(0.2, abs=1e-3) for key, score in scores.items() if key not in outside)
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    top = rows[0]
    assert (top.server_name, top.metric, top.side) == (JUMPY, "mem_used_pct", "above")
    cpu = next(r for r in rows if (r.server_name, r.metric, r.horizon) == (JUMPY, "cpu_used_pct", "30min"))
    assert top.p50 < top.p90 < top.actual and cpu.side == "below" and cpu.actual < cpu.p10 < cpu.p50
    assert top.forecast_made_at < records[-1]["timestamp"]
    # A retried cycle (the same origin again) keeps the scores; the next origin replaces them, so a server
    # that is not scored there (no forecast made for it) has none, rather than a stale one.
    live.collect(fleet, origin)
    assert live.anomalies.rows()[1] == matching
    live.collect(fleet, origin + 1)
    assert live.anomalies.rows() == ([], 0) and live.anomalies.snapshot.target == origin + 1


def test_the_board_forgets_released_servers_and_scores_only_established_ones(tmp_path):
    _, fleet, origin = _fleet()
    store = MetricsStore(tmp_path / "s.sqlite3")
    live = LiveAccuracy(store, METRICS, "m1")
    live.since_origin = origin - 19
    live.established_buckets = 10  # history held at the forecast's origin: 13 buckets at 30 min, 7 at 1 h
    _forecasts(store, fleet, origin)
    live.collect(fleet, origin)
    assert {r.horizon for r in live.anomalies.rows()[0]} == {"30min"}  # 1 h ago no server was established yet
    live.anomalies.forget([JUMPY, "nobody"])
    assert JUMPY not in {r.server_name for r in live.anomalies.rows()[0]}
    assert live.anomalies.rows(server=JUMPY) == ([], 0)
    assert len(live.anomalies.rows()[0]) == (len(fleet.servers) - 1) * len(METRICS)


# ---------------------------------------------------------------------------- HTTP and Prometheus, in process
@pytest.fixture
def served(tmp_path):
    """An app without a model whose live accuracy (the forecasts' scorer) is fed bands written by hand.

    No ``with``: the app's lifespan (the forecast loop) does not run, so nothing races the test's cycle.
    """
    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=None, store_path=tmp_path / "s.sqlite3", api_key=API_KEY,
                                    allow_no_model=True, retention_days=7))
    daemon = app.state.daemon
    records, fleet, origin = _fleet()
    daemon.ingest(records, instances={JUMPY: "web1.example:9100"})
    daemon.accuracy = LiveAccuracy(daemon.store, METRICS, "m1")
    daemon.accuracy.since_origin = origin - 19
    _forecasts(daemon.store, fleet, origin)
    daemon._score_matured(origin)  # as the cycle does, before it forecasts
    yield TestClient(app, headers={"X-API-Key": API_KEY}), daemon, origin
    daemon.close()


def _anomaly_series(client: TestClient) -> dict[tuple[str, str, str], tuple[float, dict[str, str]]]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.labels["server"], s.labels["metric"], s.labels["horizon_seconds"]): (s.value, s.labels)
            for family in families if family.name == "tft_anomaly_score" for s in family.samples}


def test_anomalies_route_filters_auth_and_gauge(served):
    client, daemon, origin = served
    assert TestClient(client.app).get("/anomalies").status_code == 401  # no key
    body = client.get("/anomalies").json()
    document = AnomaliesResponse.model_validate(body)
    servers = len(daemon.fleet.servers)
    assert document.servers_scored == servers and document.horizons == ["30min", "1hr"]
    assert document.matching == len(document.anomalies) == servers * len(METRICS) * 2 <= ANOMALY.max_rows
    assert document.at == bucket_iso(origin) and body["anomalies"][0]["forecast_made_at"] == bucket_iso(origin - 6)
    assert document.min_half_width == {m: ANOMALY.min_half_width[m] for m in METRICS}
    outside = client.get("/anomalies", params={"min_score": 1}).json()
    assert [(r["server_name"], r["metric"], r["horizon"]) for r in outside["anomalies"]] == [
        (JUMPY, "mem_used_pct", "30min"), (JUMPY, "cpu_used_pct", "30min"), (JUMPY, "net_in_mb_s", "30min")]
    assert outside["matching"] == 3 and outside["anomalies"][0]["score"] == pytest.approx(6.0, abs=1e-3)
    mine = client.get("/anomalies", params={"server": JUMPY, "horizon": "1hr"}).json()["anomalies"]
    assert len(mine) == len(METRICS) and all(r["score"] < 1 for r in mine)
    memory = client.get("/anomalies", params={"metric": "mem_used_pct", "min_score": 0.5}).json()["anomalies"]
    assert [r["server_name"] for r in memory] == [JUMPY]
    for params, status in (({"server": "nope"}, 404), ({"metric": "cpu_idle_pct"}, 422), ({"min_score": -1}, 422),
                           ({"min_score": "nan"}, 422), ({"min_score": "inf"}, 422), ({"horizon": "8hr"}, 422)):
        refused = client.get("/anomalies", params=params)
        assert refused.status_code == status, (params, refused.text)
        assert set(refused.json()) == {"error", "detail"} and "Traceback" not in refused.text
    # One series per server x metric x horizon, with the instance label where the feeder named one.
    series = _anomaly_series(client)
    assert len(series) == servers * len(METRICS) * 2
    value, labels = series[(JUMPY, "mem_used_pct", "1800")]
    assert value == pytest.approx(6.0, abs=1e-3) and labels["instance"] == "web1.example:9100"
    assert labels["profile"] == "web_api" and series[(JUMPY, "mem_used_pct", "3600")][0] < 1
    assert series[("ppdb001", "cpu_used_pct", "1800")][0] == pytest.approx(0.2, abs=1e-3)
    assert series[("ppdb001", "cpu_used_pct", "1800")][1]["instance"] == ""
    # Housekeeping releases servers silent past the retention: their scores and series go at once.
    sim = FleetSimulator(fleet={"web_api": 4}, seed=9, start="2026-03-10T00:00:00Z")  # 8 days later
    daemon.ingest(sim.records(sim.advance(1)))
    assert daemon.fleet.newest_bucket >= origin + 7 * STEPS_PER_DAY
    assert daemon.housekeeping()["servers_released"] == servers - 4
    left = {r["server_name"] for r in client.get("/anomalies").json()["anomalies"]}
    assert left == {JUMPY, "ppweb002", "ppweb003", "ppweb004"}
    assert {server for server, _, _ in _anomaly_series(client)} == left


def test_without_a_model_nothing_is_scored(tmp_path):
    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=None, store_path=tmp_path / "s.sqlite3", api_key=API_KEY,
                                    allow_no_model=True))
    try:
        body = TestClient(app, headers={"X-API-Key": API_KEY}).get("/anomalies").json()
        assert body["anomalies"] == [] and body["at"] is None and body["model_version"] is None
    finally:
        app.state.daemon.close()


# ---------------------------------------------------------------------------- the real cycle, with the tiny model
def test_a_fed_daemon_scores_a_jump_against_the_band_it_served(tiny_training, tmp_path):
    """feed -> forecast -> the next buckets arrive, one server's memory jumps -> the cycle scores it, as stored."""
    from daemon_state import DaemonSettings
    from tft_inference import create_app

    app = create_app(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                    api_key=API_KEY, established_hours=0.0))
    daemon = app.state.daemon
    try:
        sim = FleetSimulator(fleet=TINY_FLEET, seed=31, start="2026-03-02T00:00:00Z")
        sim.incident_rate_scale = 0.0
        records = sim.records(sim.advance(40))
        last = records[-1]["timestamp"]
        jump = next(r for r in records if r["server_name"] == JUMPY and r["timestamp"] == last)
        assert jump["mem_used_pct"] < 70.0  # the fixture's precondition: room for a jump
        jump["mem_used_pct"] = 99.0
        daemon.ingest(records)
        newest = daemon.fleet.newest_bucket
        for origin in (newest - HORIZONS["1hr"], newest - HORIZONS["30min"], newest):
            assert daemon.run_cycle(origin) is not None
        metrics = daemon.engine.metrics
        [(_, blob)] = [row for row in daemon.store.forecasts_at(newest - HORIZONS["30min"]) if row[0] == JUMPY]
        band = bands_of([blob], len(metrics))[0, metrics.index("mem_used_pct"), K["30min"]]
        expected = (99.0 - band[1]) / max(band[2] - band[1], ANOMALY.min_half_width["mem_used_pct"])
        assert expected > 1  # the band the model served for now did not reach 99 %
        client = TestClient(app, headers={"X-API-Key": API_KEY})
        fan = ServerFan.model_validate(client.get(f"/predictions/{JUMPY}").json())
        row = next(r for r in fan.anomalies if r.metric == "mem_used_pct" and r.horizon == "30min")
        assert row.score == pytest.approx(expected, rel=1e-3) and row.actual == pytest.approx(99.0)
        assert (row.p10, row.p50, row.p90) == pytest.approx(tuple(band), abs=1e-3) and row.side == "above"
        assert {r.server_name for r in fan.anomalies} == {JUMPY} and len(fan.anomalies) == len(metrics) * 2
        listed = client.get("/anomalies", params={"min_score": expected - 0.01}).json()["anomalies"]
        assert (JUMPY, "mem_used_pct", "30min") in {(r["server_name"], r["metric"], r["horizon"]) for r in listed}
        assert _anomaly_series(client)[(JUMPY, "mem_used_pct", "1800")][0] == pytest.approx(expected, rel=1e-3)
    finally:
        daemon.close()
