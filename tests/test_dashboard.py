"""Dashboard: Streamlit AppTest per panel, the demo stream, and a real browser end to end."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import streamlit
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Selectbox

from api_models import Alert
from config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    DASHBOARD,
    DASHBOARD_DAEMON_URL_ENV,
    DASHBOARD_DEMO_ADMIN_KEY_ENV,
    DASHBOARD_DEMO_ENV,
    DEFAULT_HOST,
    DEMO,
    DEMO_SCENARIOS,
    DRIFT_COVERAGE_BAND,
    DRIFT_SKILL_FLOOR,
    HORIZON_TEXT,
    HORIZONS,
    METRIC_LABELS,
)
from daemon_client import DaemonClient
from metrics_generator import FleetSimulator
from tests.helpers import API_KEY, ROOT, TINY_FLEET, DaemonProcess, feed_buckets, free_port, wait_for

ARTIFACTS = ROOT / "test-artifacts"
PANELS = ["Overview", "Heatmap", "Top Servers", "Historical", "Model health", "Advanced"]
HEALTH = PANELS.index("Model health")
# A key the dashboard must never hand to a browser (beside the daemon's read key API_KEY): a key file's
# admin line, or a demo's admin key. Distinctive, so that finding it anywhere is a leak.
ADMIN_SECRET = "admin-secret-never-in-a-browser-4d1c"
ONE_BY_ONE = HORIZONS["30min"] + 2  # buckets fed one at a time, each forecast: +30 min forecasts mature


def _feed_one_at_a_time(client: httpx.Client, sim: FleetSimulator, n_buckets: int) -> None:
    """Feed single buckets, each forecast before the next arrives (as test_live_accuracy does)."""
    for _ in range(n_buckets):
        stamp = feed_buckets(client, sim, 1)[-1]["timestamp"][:16]
        wait_for(lambda s=stamp: (client.get("/status").json()["last_forecast_time"] or "")[:16] == s)


@pytest.fixture(scope="module")
def fed_daemon(tiny_training, tmp_path_factory):
    """A daemon with the tiny model and 40 buckets of the tiny fleet, one server in trouble.

    The last buckets come one at a time, each forecast, so +30 min forecasts have matured and been scored
    (``--established-hours 0``: the fleet's few hours of history count, as a day would in production).
    """
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path_factory.mktemp("dash") / "store.sqlite3",
                           "--rate-per-minute", "100000", "--established-hours", "0")
    daemon.wait_ready()
    sim = FleetSimulator(fleet=TINY_FLEET, seed=3, start="2026-03-02T06:00:00Z")
    sim.incident_rate_scale = 0.0
    with daemon.client() as client:
        feed_buckets(client, sim, 26)
        sim.inject_incident("ppdb001", "io_saturation", ramp_hours=1.0)
        feed_buckets(client, sim, 14 - ONE_BY_ONE)
        _feed_one_at_a_time(client, sim, ONE_BY_ONE)
        wait_for(lambda: client.get("/status").json()["cycles"] >= 1)
    yield daemon
    daemon.stop()


@pytest.fixture
def dashboard(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a factory of AppTests
    """Run the dashboard script (AppTest) against a daemon URL and key, set through the environment.

    ``key`` None: no $TFT_API_KEY; ``demo``: $TFT_DASHBOARD_DEMO=1; ``env``: more variables. Nothing else of
    the dashboard's configuration leaks in from the environment pytest runs in.
    """

    def run(url: str, key: str | None = API_KEY, demo: bool = False, **env: str) -> AppTest:
        for name in (API_KEY_ENV, API_KEY_FILE_ENV, DASHBOARD.daemon_urls_env, DASHBOARD_DEMO_ADMIN_KEY_ENV,
                     DASHBOARD_DEMO_ENV):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(DASHBOARD_DAEMON_URL_ENV, url)
        for name, value in {API_KEY_ENV: key, DASHBOARD_DEMO_ENV: "1" if demo else None, **env}.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        at = AppTest.from_file(str(ROOT / "tft_dashboard_web.py"), default_timeout=120)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return run


def _text(element) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "metric", "subheader"):
        for item in element.get(kind):
            parts.append(str(getattr(item, "value", "")) + " " + str(getattr(item, "label", "")))
    return "\n".join(parts)


def test_every_panel_renders_with_data(fed_daemon, dashboard):
    at = dashboard(fed_daemon.url)
    assert [t.label for t in at.tabs] == PANELS
    header = _text(at)
    assert "Connected" in header and "tft_model_" in header and "Last forecast" in header
    overview, heat, top, history, _, advanced = at.tabs  # Model health: the tests below
    metrics = {m.label: m.value for m in overview.metric}
    assert metrics["Servers"] == str(len(FleetSimulator(fleet=TINY_FLEET).server_names))
    assert len(overview.get("plotly_chart")) == 2
    assert len(heat.get("plotly_chart")) == 1 and "ppdb001" in _text(heat) + str(heat.selectbox[0].options)
    top_text = _text(top)
    names = FleetSimulator(fleet=TINY_FLEET).server_names
    assert "· risk" in top_text and any(f"### {name}" in top_text for name in names)
    assert len(top.get("plotly_chart")) >= 2  # forecast fans
    assert top_text.count("p50: ") == len(top.get("plotly_chart"))  # each fan says where its p50 comes from
    assert history.selectbox[0].value.startswith("pp") and history.selectbox[1].value == "cpu_used_pct"
    assert len(history.get("plotly_chart")) == 1
    assert "Backtest on held-out data" in _text(advanced) and len(advanced.get("table")) == 3
    connection = advanced.get("table")[1].value
    assert fed_daemon.url in connection.to_string() and "every" in connection.to_string()
    assert "cpu_idle" not in _text(at)  # CPU is only ever shown as used
    # "Anomalous now": the daemon's scores above the band's edge, or a sentence saying there are none.
    with fed_daemon.client() as client:
        anomalies = client.get("/anomalies", params={"min_score": DASHBOARD.anomaly_outside_above}).json()
    outside = [r for r in anomalies["anomalies"] if r["score"] > DASHBOARD.anomaly_outside_above]
    assert anomalies["at"] and "Anomalous now" in _text(overview)  # +30 min forecasts came due at the last cycle
    if outside:
        assert list(overview.dataframe[-1].value["server"]) == [r["server_name"] for r in
                                                                outside[:DASHBOARD.anomaly_rows]]
    else:
        assert "Nothing anomalous now" in _text(overview)


def _figure(element) -> dict:  # noqa: ANN001 - an AppTest plotly_chart element
    """A Plotly chart's figure and its Plotly config, as the page sent them."""
    return {**json.loads(element.proto.spec), "config": json.loads(element.proto.config)}


def _grid(figure: dict) -> dict[tuple[str, str], float | None]:
    """A metric x horizon heatmap as {(metric label, horizon label): value} (None: not scored yet)."""
    trace = figure["data"][0]
    return {(metric, horizon): value for metric, row in zip(trace["y"], trace["z"], strict=True)
            for horizon, value in zip(trace["x"], row, strict=True)}


def _label(metric: str) -> str:
    """How the page names a metric: 'Memory (%)'."""
    name, unit = METRIC_LABELS[metric]
    return f"{name} ({unit})" if unit else name


def _cell(row: dict) -> tuple[str, str]:
    """Where an /accuracy row is drawn: its metric's label ('Memory (%)') and horizon ('+30 min')."""
    name, unit = METRIC_LABELS[row["metric"]]
    return (f"{name} ({unit})" if unit else name), "+" + HORIZON_TEXT[row["horizon"]]


def test_model_health_shows_the_daemons_live_accuracy(fed_daemon, dashboard):
    """Coverage and skill heatmaps, band multipliers and worst servers are the daemon's own /accuracy figures."""
    with fed_daemon.client() as client:
        accuracy = client.get("/accuracy").json()
        status = client.get("/status").json()
    at = dashboard(fed_daemon.url)
    health = at.tabs[HEALTH]
    text = _text(health)
    assert f"`{status['model_version']}`" in text and re.search(r"· \*\*(less than 1 h|\d+ h|\d+ days) old\*\*", text)
    assert "Scored since" in text and "Nothing has been scored yet" not in text
    if accuracy["model_degraded"]:  # the tiny model may or may not have earned one: the box matches the daemon
        assert f"Model degraded: {len(accuracy['model_degraded'])} model_degraded warning" in text
    else:
        assert "No model_degraded warning" in text
    charts = health.get("plotly_chart")
    assert len(charts) == 2
    coverage, skill = (_figure(c) for c in charts)
    assert all(f["config"] == {"displayModeBar": False} for f in (coverage, skill))  # as the other charts
    fleet_24h = [r for r in accuracy["rows"] if r["window"] == "24h" and r["group"] == "all"]
    scored = [r for r in fleet_24h if r["n"]]
    assert {r["horizon"] for r in scored} >= {"30min"}  # the fixture's last buckets matured +30 min forecasts
    shown_coverage, shown_skill = _grid(coverage), _grid(skill)
    assert len(shown_coverage) == len(fleet_24h)  # every metric x horizon, scored or not
    for row in scored:
        key = _cell(row)
        assert shown_coverage[key] == pytest.approx(row["coverage_p10_p90"])
        if row["skill_vs_persistence"] is not None:
            assert shown_skill[key] == pytest.approx(max(-1.0, min(1.0, row["skill_vs_persistence"])))
    assert any(f"(own {row['coverage_unadjusted']:.2f})" in cell for cell in sum(coverage["data"][0]["text"], [])
               for row in scored)
    for row in fleet_24h:
        if not row["n"]:
            assert shown_coverage[_cell(row)] is None
    bands, worst, every, selected, *quality = (d.value for d in health.dataframe)
    # live selection: "n of m" per metric x horizon as /accuracy says, then the servers concerned if any
    selection = accuracy["live_selection"]
    first_row = selection["rows"][0]
    assert selected.iloc[0]["+30 min"] == f"{first_row['servers']} of {first_row['of']}" and \
        len(selected) == len(selection["rows"]) // 3
    if selection["servers"]:
        servers_table, *quality = quality
        assert list(servers_table["server"]) == [s["server_name"] for s in selection["servers"]]
    assert "Served the last value" in text and "Flips since this model was loaded" in text
    if accuracy.get("alert_quality"):
        assert list(quality[0]["metric"]) == [_label(q["metric"]) for q in accuracy["alert_quality"]]
    else:
        assert not quality and "No alert judged yet: an alert is judged once it has closed" in text
    assert list(bands.columns) == ["metric", "+30 min", "+1 h", "+8 h"] and len(bands) == len(fleet_24h) // 3
    first = fleet_24h[0]
    assert bands.iloc[0]["+30 min"] == f"x{first['band_scale_low']:.2f} / x{first['band_scale_high']:.2f}"
    assert set(worst["server"]) <= {w["server_name"] for w in accuracy["worst_servers"]} and len(worst)
    assert min(worst["skill"]) == pytest.approx(min(w["skill_vs_persistence"] for w in accuracy["worst_servers"]
                                                    if w["skill_vs_persistence"] is not None), abs=0.005)
    assert set(every["window"]) <= {"24 h", "7 d"} and len(every) == sum(
        1 for r in accuracy["rows"] if r["group"] == "all" and r["n"])
    # One profile: the figures follow the selector.
    health.selectbox(key="health_group").select("database").run()
    assert not at.exception
    database = {_cell(r): r["coverage_p10_p90"]
                for r in accuracy["rows"] if r["window"] == "24h" and r["group"] == "database" and r["n"]}
    shown = _grid(_figure(at.tabs[HEALTH].get("plotly_chart")[0]))
    assert database and all(shown[key] == pytest.approx(value) for key, value in database.items())
    assert set(at.tabs[HEALTH].dataframe[1].value["profile"]) == {"database"}


def test_model_degraded_warnings_read_as_the_models_not_a_servers(fed_daemon, dashboard, monkeypatch):
    """Warnings about the model itself (server "fleet") get their own box on Overview and Model health.

    A tiny daemon has too few matured forecasts for a verdict, so two are added to its real answers,
    built as live_accuracy builds them.
    """
    low, _ = DRIFT_COVERAGE_BAND
    degraded = [Alert(kind="model_degraded", server_name="fleet", profile="all", level="warning", metric=metric,
                      horizon=horizon, predicted_value=value, threshold=threshold, p50=None, minutes_to_breach=None,
                      reason=f"{metric} at {horizon}: made up for the test. Suggested: retrain").model_dump()
                for metric, horizon, value, threshold in (("cpu_iowait_pct", "30min", 0.55, low),
                                                          ("mem_used_pct", "8hr", -0.2, DRIFT_SKILL_FLOOR))]
    real_alerts, real_accuracy = DaemonClient.alerts, DaemonClient.accuracy
    monkeypatch.setattr(DaemonClient, "alerts", lambda self, **kw: {
        **(answer := real_alerts(self, **kw)), "alerts": answer["alerts"] + degraded})
    monkeypatch.setattr(DaemonClient, "accuracy", lambda self, *a, **kw: {
        **real_accuracy(self, *a, **kw), "model_degraded": degraded})
    streamlit.cache_data.clear()  # answers cached by an earlier test would hide the patched ones
    at = dashboard(fed_daemon.url)
    overview, health = at.tabs[0], at.tabs[HEALTH]
    for tab in (overview, health):
        box = next(w.value for w in tab.warning if "Model degraded" in w.value)
        assert "Model degraded: 2 model_degraded warnings" in box and "not a server" in box
        assert f"p10-p90 coverage outside {low:.2f}" in box and "I/O wait (%) +30 min 0.55" in box
        assert "worse than the last value" in box and "Memory (%) +8 h -0.20" in box
        assert "made up for the test" in _text(tab.expander[0])  # the full reasons, one click away
    if overview.dataframe:  # the server alerts' table has no "fleet" row
        assert "fleet" not in set(overview.dataframe[0].value["server"])
    else:
        assert "No server alerts." in _text(overview)
    assert "No model_degraded warning" not in _text(health)


def test_anomalies_and_alert_quality_are_the_daemons_figures(fed_daemon, dashboard, monkeypatch):
    """The Overview lists what lies outside its band (score above 1) and nothing inside it; Model health's alert
    quality table is /accuracy's alert_quality. The tiny daemon has neither to show for sure, so its real answers
    get made-up rows, shaped as the daemon builds them."""
    def row(server: str, metric: str, score: float) -> dict:
        return {"server_name": server, "profile": "database", "metric": metric, "horizon": "30min", "score": score,
                "side": "above", "actual": 31.5, "p10": 8.0, "p50": 12.0, "p90": 17.5,
                "forecast_made_at": "2026-03-02T08:55:00Z"}

    quality = [{"metric": "cpu_iowait_pct", "window": "7d", "breaches": 4, "warned": 3, "timely": 2,
                "median_lead_minutes": 42.0, "episodes": 5, "false_episodes": 1, "precision": 0.8, "recall": 0.75},
               {"metric": "mem_used_pct", "window": "7d", "breaches": 0, "warned": 0, "timely": 0,
                "median_lead_minutes": None, "episodes": 2, "false_episodes": 2, "precision": 0.0, "recall": None}]
    real_anomalies, real_accuracy = DaemonClient.anomalies, DaemonClient.accuracy
    monkeypatch.setattr(DaemonClient, "anomalies", lambda self, *a, **kw: {
        **real_anomalies(self, *a, **kw), "anomalies": [row("ppdb001", "cpu_iowait_pct", 3.4),
                                                        row("ppdb002", "mem_used_pct", 0.5)]})
    monkeypatch.setattr(DaemonClient, "accuracy", lambda self, *a, **kw: {
        **real_accuracy(self, *a, **kw), "alert_quality": quality})
    streamlit.cache_data.clear()
    at = dashboard(fed_daemon.url)
    overview, health = at.tabs[0], at.tabs[HEALTH]
    table = overview.dataframe[-1].value
    assert list(table["server"]) == ["ppdb001"] and list(table["score"]) == [3.4]
    assert table.iloc[0]["metric"] == "I/O wait (%)" and table.iloc[0]["band made"] == "30 min ago"
    assert table.iloc[0]["p10-p90"] == "8.00-17.50" and "1 metric outside the band" in _text(overview)
    assert "Alert quality, last 7 d" in _text(health) and "No alert judged yet" not in _text(health)
    shown = health.dataframe[-1].value
    assert list(shown["metric"]) == ["I/O wait (%)", "Memory (%)"]
    assert list(shown["precision"]) == [0.8, 0.0] and shown.iloc[0]["recall"] == 0.75
    assert shown.iloc[0]["median lead (min)"] == 42 and shown.iloc[1].isna()["median lead (min)"]


def test_model_health_says_when_nothing_has_matured(tiny_training, tmp_path, dashboard):
    """Before any forecast's target time has come: a plain sentence of when figures come, no chart."""
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "young.sqlite3", "--rate-per-minute", "100000")
    try:
        daemon.wait_ready()
        at = dashboard(daemon.url)  # no data at all: no forecast either
        health = at.tabs[HEALTH]
        assert "Nothing has been scored yet" in health.info[0].value
        assert "30 min after the first forecast" in health.info[0].value and "not made a forecast" in \
            health.info[0].value
        assert not health.get("plotly_chart") and not health.dataframe
        # One POST of 16 buckets: forecasts from the model's minimum history on, too close together to mature.
        sim = FleetSimulator(fleet=TINY_FLEET, seed=5, start="2026-03-02T00:00:00Z")
        with daemon.client() as client:
            feed_buckets(client, sim, 16, chunk=16)
            wait_for(lambda: client.get("/status").json()["servers_ready"] == len(sim.server_names), timeout=60)
            accuracy = client.get("/accuracy").json()
        assert accuracy["scored_since"] and not any(r["n"] for r in accuracy["rows"])
        streamlit.cache_data.clear()
        at.run()
        assert not at.exception
        health = at.tabs[HEALTH]
        info = health.info[0].value
        assert "Nothing has been scored yet" in info and "30 min after the first forecast" in info
        first = datetime.fromisoformat(accuracy["scored_since"].replace("Z", "+00:00"))
        assert f"+30 min at {(first + timedelta(minutes=30)):%Y-%m-%d %H:%M} UTC" in info
        assert f"+8 h at {(first + timedelta(hours=8)):%Y-%m-%d %H:%M} UTC" in info
        assert not health.get("plotly_chart") and not health.dataframe and not health.error
        assert "No alert judged yet" in _text(health)
        assert "No anomaly scores yet" in _text(at.tabs[0])  # nothing has come due (and none is established)
    finally:
        daemon.stop()


def test_daemon_down_shows_nothing_invented(dashboard):
    at = dashboard(f"http://127.0.0.1:{free_port()}")
    assert "Not connected" in at.error[0].value and "daemon unreachable" in at.error[0].value
    assert not at.tabs and not at.get("plotly_chart") and not at.metric


def test_wrong_key_is_an_error_not_an_empty_fleet(fed_daemon, dashboard):
    at = dashboard(fed_daemon.url, key="wrong")
    assert "401" in at.error[0].value and not at.tabs


def test_empty_fleet(tiny_training, tmp_path, dashboard):
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "empty.sqlite3")
    try:
        daemon.wait_ready()
        at = dashboard(daemon.url)
        assert {m.label: m.value for m in at.tabs[0].metric}["Servers"] == "0"
        assert "No servers have reported yet" in _text(at.tabs[0])
        assert not at.exception
    finally:
        daemon.stop()


def _demo_state(at: AppTest) -> tuple[str, list[str]]:
    """The sidebar's demo caption and which demo buttons are highlighted (primary)."""
    caption = " ".join(c.value for c in at.sidebar.caption if "Demo stream plays" in c.value)
    pressed = [s for s in DEMO_SCENARIOS if at.sidebar.button(key=f"demo_{s}").proto.type == "primary"]
    return caption, pressed


def test_demo_buttons_switch_the_stream_scenario(fed_daemon, dashboard):
    at = dashboard(fed_daemon.url, demo=True)  # main.py demo's set-up: one key, every scope
    assert [at.sidebar.button(key=f"demo_{s}").label for s in DEMO_SCENARIOS] == ["Healthy", "Degrading",
                                                                                   "Critical"]
    at.sidebar.button(key="demo_degrading").click().run()
    with fed_daemon.client() as client:
        assert client.get("/demo-scenario").json()["scenario"] == "degrading"
    assert _demo_state(at) == ("Demo stream plays: **degrading**", ["degrading"])  # at once, not a refresh later
    at.sidebar.button(key="demo_healthy").click().run()
    with fed_daemon.client() as client:
        assert client.get("/demo-scenario").json()["scenario"] == "healthy"
    assert _demo_state(at) == ("Demo stream plays: **healthy**", ["healthy"])


def test_demo_caption_follows_a_switch_made_by_another_client(fed_daemon, dashboard):
    """Another browser (or a script) switches the stream: the sidebar says so on its next run.

    AppTest cannot fire the refresh timer; the browser test checks the timer itself.
    """
    at = dashboard(fed_daemon.url, demo=True)
    with fed_daemon.client() as client:
        client.post("/admin/demo-scenario", json={"scenario": "healthy"}).raise_for_status()
        time.sleep(DASHBOARD.cache_seconds + 0.5)  # wall-clock: past the cached read's TTL (nothing to poll)
        at.run()
        assert _demo_state(at) == ("Demo stream plays: **healthy**", ["healthy"])
        client.post("/admin/demo-scenario", json={"scenario": "critical"}).raise_for_status()
    time.sleep(DASHBOARD.cache_seconds + 0.5)  # wall-clock: the cache TTL again
    at.run()
    assert _demo_state(at) == ("Demo stream plays: **critical**", ["critical"])


# ---------------------------------------------------------------------------- what the page keeps to itself


def _sent(node) -> str:  # noqa: ANN001 - an AppTest block or element
    """Every element under ``node`` as protobuf text: what Streamlit sends a browser for it."""
    return "\n".join([str(getattr(node, "proto", "")),
                      *(_sent(child) for child in getattr(node, "children", {}).values())])


def test_outside_demo_mode_no_button_no_key_widget_and_no_key_sent(fed_daemon, dashboard):
    """The default: no demo button, no widget holding a key, no key in anything sent; the sidebar only says
    that a key is set and where from. A demo admin key in the environment stays unused."""
    at = dashboard(fed_daemon.url, **{DASHBOARD_DEMO_ADMIN_KEY_ENV: ADMIN_SECRET})
    assert at.tabs and not at.button and not at.text_input
    assert "Demo mode" not in [h.value for h in at.sidebar.header]
    assert "API key: set (from TFT_API_KEY)" in [c.value for c in at.sidebar.caption]
    sent = _sent(at.main) + _sent(at.sidebar)
    assert fed_daemon.url in sent and "Backtest on held-out data" in sent  # the page's own text is in it
    assert API_KEY not in sent and ADMIN_SECRET not in sent


def test_demo_mode_switches_with_its_admin_key_and_never_sends_it(fed_daemon, dashboard):
    """In demo mode a button switches the stream with $TFT_DEMO_ADMIN_KEY, not the read key: here one the
    daemon refuses, so the switch fails and says so. The admin key is in nothing the page sends."""
    with fed_daemon.client() as client:
        client.post("/admin/demo-scenario", json={"scenario": "healthy"}).raise_for_status()
    at = dashboard(fed_daemon.url, demo=True, **{DASHBOARD_DEMO_ADMIN_KEY_ENV: ADMIN_SECRET})
    at.sidebar.button(key="demo_critical").click().run()
    assert "Could not switch the demo: 401" in at.sidebar.error[0].value, at.sidebar.error[0].value
    with fed_daemon.client() as client:
        assert client.get("/demo-scenario").json()["scenario"] == "healthy"
    sent = _sent(at.main) + _sent(at.sidebar)
    assert "Demo stream plays" in sent and ADMIN_SECRET not in sent and API_KEY not in sent


def test_demo_mode_never_takes_a_key_files_admin_line(fed_daemon, dashboard, tmp_path):
    """The read key comes from the key file; an admin key only from the demo's variables, so with neither the
    buttons are disabled and the sidebar says which variable to set."""
    keys = tmp_path / "keys"
    keys.write_text(f"read={API_KEY}\nadmin={ADMIN_SECRET}\n")
    at = dashboard(fed_daemon.url, key=None, demo=True, **{API_KEY_FILE_ENV: str(keys)})
    captions = [c.value for c in at.sidebar.caption]
    assert at.tabs and "API key: set (read key from TFT_API_KEY_FILE)" in captions
    assert all(at.sidebar.button(key=f"demo_{s}").proto.disabled for s in DEMO_SCENARIOS)
    assert any(f"No admin key: set {DASHBOARD_DEMO_ADMIN_KEY_ENV}" in c for c in captions), captions


def test_the_daemon_is_one_of_the_configured_urls_whatever_a_browser_sends(fed_daemon, dashboard, monkeypatch):
    """$TFT_DAEMON_URLS makes a selectbox of daemons. A browser may send any string as a selectbox's value
    and Streamlit hands it back as is: the dashboard then reads (and sends its key to) the default one."""
    other = f"http://127.0.0.1:{free_port()}"
    at = dashboard(fed_daemon.url, **{DASHBOARD.daemon_urls_env: f" {other} , {fed_daemon.url}/,"})
    picker = at.sidebar.selectbox(key="daemon_url")
    assert picker.options == [fed_daemon.url, other] and picker.value == fed_daemon.url and at.tabs
    picker.select(other).run()
    assert "daemon unreachable" in at.error[0].value and not at.tabs
    crafted = "http://attacker.example"
    honest = Selectbox._widget_state

    def forged(self: Selectbox) -> object:  # what a hand-made websocket message can say
        state = honest.fget(self)
        if self.key == "daemon_url":
            state.string_value = crafted
        return state

    monkeypatch.setattr(Selectbox, "_widget_state", property(forged))
    at.run()
    assert not at.exception and at.tabs, [e.value for e in at.error]
    connection = at.tabs[PANELS.index("Advanced")].get("table")[1].value.to_string()
    assert fed_daemon.url in connection and crafted not in connection


def test_streamlit_started_in_the_checkout_watches_nothing_hides_deploy_and_binds_loopback():
    """.streamlit/config.toml is read by a Streamlit started in the repository root (as main.py demo does)."""
    probe = ("from streamlit import config; config.get_config_options(force_reparse=True); "
             "print(config.get_option('server.fileWatcherType'), config.get_option('client.toolbarMode'), "
             "config.get_option('server.address'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.split() == ["none", "minimal", DEFAULT_HOST], result.stdout + result.stderr


# ---------------------------------------------------------------------------- real browser


def _mode_bar_titles(driver, panel: str) -> list[str]:  # noqa: ANN001 - a selenium webdriver
    """The titles of the Plotly mode bar buttons of one panel's charts, once they have drawn."""
    from selenium.common.exceptions import MoveTargetOutOfBoundsException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def shown() -> tuple[list[str]] | None:
        try:
            tab = next(t for t in driver.find_elements(By.CSS_SELECTOR, "[role='tab']") if t.text == panel)
            if tab.get_attribute("aria-selected") != "true":
                tab.click()
                return None
            body = next((p for p in driver.find_elements(By.CSS_SELECTOR, "[role='tabpanel']") if p.is_displayed()),
                        None)
            charts = body.find_elements(By.CSS_SELECTOR, ".js-plotly-plot") if body is not None else []
            if not charts or not all(c.find_elements(By.CSS_SELECTOR, ".main-svg") for c in charts):
                return None
            ActionChains(driver).move_to_element(charts[0]).perform()  # a hover mode bar is drawn on hover
            return ([b.get_attribute("data-title") for c in charts
                     for b in c.find_elements(By.CSS_SELECTOR, ".modebar-btn")],)
        except (StaleElementReferenceException, MoveTargetOutOfBoundsException):  # redrawn under us: look again
            return None

    return wait_for(shown, timeout=60)[0]


def _dashboard_env(**settings: str) -> dict[str, str]:
    """This environment without any of the dashboard's own variables, plus ``settings``."""
    ours = (API_KEY_ENV, API_KEY_FILE_ENV, DASHBOARD_DAEMON_URL_ENV, DASHBOARD.daemon_urls_env,
            DASHBOARD_DEMO_ADMIN_KEY_ENV, DASHBOARD_DEMO_ENV, DASHBOARD.refresh_env)
    return {**{k: v for k, v in os.environ.items() if k not in ours}, **settings}


def _start_streamlit(env: dict[str, str], log: Path, script: str = "tft_dashboard_web.py",
                     ) -> tuple[subprocess.Popen, str]:
    """``streamlit run <script>`` from the checkout (its .streamlit/config.toml: loopback), up.

    Returns the process and the page's URL.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.port",
                             str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    url = f"http://{DEFAULT_HOST}:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60)
    return proc, url


def _network_log(driver) -> tuple[list[bytes], str]:  # noqa: ANN001 - a selenium webdriver
    """Chrome's performance log since the last read (reading empties it): the payload of every websocket
    frame sent or received (Streamlit's are binary protobuf, which Chrome gives base64-encoded), and the
    whole log as text (HTTP requests and their headers included)."""
    frames, raw = [], []
    for entry in driver.get_log("performance"):
        raw.append(entry["message"])
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.webSocketFrameReceived", "Network.webSocketFrameSent"):
            frame = message["params"]["response"]
            payload = frame["payloadData"]
            frames.append(base64.b64decode(payload) if frame["opcode"] == 2 else payload.encode())
    return frames, "\n".join(raw)


def _leaks(driver, frames: list[bytes], log: str, secrets: tuple[str, ...]) -> list[str]:  # noqa: ANN001
    """Where in a browser any of ``secrets`` shows up: websocket frames, the network log, the DOM, the
    values of inputs, local and session storage."""
    values = driver.execute_script(
        "return [...document.querySelectorAll('input, textarea')].map(e => e.value)"
        ".concat(Object.values(localStorage), Object.values(sessionStorage))")
    places = {"page source": driver.page_source, "inputs and storage": "\n".join(map(str, values)),
              "network log": log}
    found = [f"{secret[:6]}... in {where}" for secret in secrets for where, text in places.items() if secret in text]
    return found + [f"{secret[:6]}... in websocket frame {i}" for secret in secrets for i, frame in enumerate(frames)
                    if secret.encode() in frame]


@pytest.mark.slow
def test_a_browser_never_gets_the_key_and_sees_no_demo_button_outside_demo_mode(fed_daemon, tmp_path):
    """The page in headless Chromium, read key and a key file's admin line both distinctive: neither is in the
    DOM or in any websocket frame Chrome recorded, while the page's own text is in those frames (so the
    capture would see a key put in a widget, as the old "API key" text input did). No demo button."""
    from selenium.webdriver.common.by import By

    from tools.dashboard_screenshots import _wait_until_idle, open_browser

    keys = tmp_path / "keys"
    keys.write_text(f"read={API_KEY}\nadmin={ADMIN_SECRET}\n")
    env = _dashboard_env(**{DASHBOARD_DAEMON_URL_ENV: fed_daemon.url, API_KEY_FILE_ENV: str(keys),
                            DASHBOARD_DEMO_ADMIN_KEY_ENV: ADMIN_SECRET})  # set, but demo mode is off
    proc, url = _start_streamlit(env, tmp_path / "dashboard.log")
    driver = None
    try:
        driver = open_browser(tmp_path / "chrome", network_log=True)
        driver.get(url)
        frames, log = [], []

        def page_sent() -> bool:  # the last panel's text came, and the tabs are drawn
            more, text = _network_log(driver)
            frames.extend(more)
            log.append(text)
            return (any(b"Backtest on held-out data" in f for f in frames)
                    and bool(driver.find_elements(By.CSS_SELECTOR, "[role='tab']")))

        wait_for(page_sent, timeout=90)
        _wait_until_idle(driver, 20.0)
        page_sent()
        sidebar = driver.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]")
        ARTIFACTS.mkdir(exist_ok=True)
        sidebar.screenshot(str(ARTIFACTS / "dashboard_sidebar.png"))
        # The capture holds what the page shows: the daemon's URL, a server's name, the key's sidebar line.
        for shown in (fed_daemon.url, "ppdb001", "API key: set (read key from TFT_API_KEY_FILE)"):
            assert any(shown.encode() in f for f in frames), shown
        assert "API key: set (read key from TFT_API_KEY_FILE)" in sidebar.text
        assert _leaks(driver, frames, "\n".join(log), (API_KEY, ADMIN_SECRET)) == []
        assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid=stTextInput], input[type=password]")
        assert "Demo mode" not in sidebar.text
        assert not [b.text for b in driver.find_elements(By.TAG_NAME, "button")
                    if b.text in ("Healthy", "Degrading", "Critical")]
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_dashboard_in_a_real_browser_fed_by_the_stream(tiny_training, tmp_path):
    from tools.dashboard_screenshots import CHROMEDRIVER, CHROMIUM, capture_panels, open_browser

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "Debian chromium + chromium-driver are needed (bootstrap.sh --dev installs them)"
    # The stream's clock runs ahead of the wall clock (2 buckets a second), as in the demo; its servers are
    # scored from their first forecasts on (--established-hours 0), so Model health has charts within the test.
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--rate-per-minute", "100000",
                           "--max-future-seconds", str(DEMO.max_future_seconds), "--established-hours", "0")
    processes = []
    driver = None
    try:
        daemon.wait_ready()
        # A slow refresh keeps each panel still long enough to be checked and photographed on 2 busy cores.
        env = _dashboard_env(**{API_KEY_ENV: API_KEY, DASHBOARD_DAEMON_URL_ENV: daemon.url, DASHBOARD.refresh_env: "30",
                                DASHBOARD_DEMO_ENV: "1"})  # as main.py demo starts it: demo mode, one key
        stream = subprocess.Popen([sys.executable, "metrics_generator.py", "--stream", "--daemon-url", daemon.url,
                                   "--servers", "12", "--speed", "2", "--scenario", "degrading"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stream.log", "w"))
        processes.append(stream)
        dashboard, url = _start_streamlit(env, tmp_path / "dashboard.log")
        processes.append(dashboard)
        with daemon.client() as client:
            wait_for(lambda: client.get("/status").json()["servers_ready"] >= 12, timeout=120)

        driver = open_browser(tmp_path / "chrome", network_log=True)
        texts, header = capture_panels(driver, url, ARTIFACTS)
        (ARTIFACTS / "dashboard_texts.txt").write_text("\n\n".join(f"== {k}\n{v}" for k, v in texts.items()))
        assert set(texts) == set(PANELS)
        assert "Connected" in header and "tft_model_" in header and "Last forecast" in header, header
        assert "Servers" in texts["Overview"] and "Active alerts" in texts["Overview"]
        assert "Anomalous now" in texts["Overview"] and "Alert quality, last 7 d" in texts["Model health"]
        # Server names (never hash ids) on the panels that list servers, each with its profile.
        for name in ("Heatmap", "Top Servers", "Historical"):
            assert re.search(r"pp[a-z]+\d{2,4}", texts[name]), name
        assert "ml_compute" in texts["Top Servers"] or "database" in texts["Top Servers"]
        assert "Backtest on held-out data" in texts["Advanced"] and "servers_ready" in texts["Advanced"]
        assert "daemon URL" in texts["Advanced"]
        assert "Scored since" in texts["Model health"] and re.search(r" old\b", texts["Model health"])
        assert ("p10-p90 coverage as served" in texts["Model health"]
                or "Nothing has been scored yet" in texts["Model health"]), texts["Model health"]
        assert not any("% CPU idle" in text for text in texts.values())
        # Charts keep their mode bar off their legends: the Overview's and Model health's charts have none; the
        # Historical chart's (drawn on hover) holds nothing but its PNG download.
        assert _mode_bar_titles(driver, "Overview") == []
        assert _mode_bar_titles(driver, "Model health") == []  # drawn once +30 min forecasts have matured
        titles = _mode_bar_titles(driver, "Historical")
        assert titles and all("png" in (title or "").lower() for title in titles), titles
        # The demo buttons' labels are whole at the default sidebar width (not "Degra...").
        labels = driver.execute_script(
            "return [...document.querySelectorAll('[data-testid=stSidebar] button p')]"
            ".map(p => [p.innerText, p.scrollWidth <= p.clientWidth])")
        assert [label for label in labels if label[0] in ("Healthy", "Degrading", "Critical")] == \
            [["Healthy", True], ["Degrading", True], ["Critical", True]], labels
        # Another client switches the stream: the sidebar follows on its next refresh, without a reload.
        with daemon.client() as client:
            client.post("/admin/demo-scenario", json={"scenario": "critical"}).raise_for_status()

        def sidebar() -> str:
            return driver.find_element("css selector", "[data-testid=stSidebar]").text

        wait_for(lambda: "Demo stream plays: critical" in sidebar(), timeout=int(env[DASHBOARD.refresh_env]) + 30)
        # Demo mode holds the daemon's every-scope key: it never reached the browser, in any frame of the run.
        frames, log = _network_log(driver)
        assert any(b"Demo stream plays" in f for f in frames) and any(b"Backtest on held-out" in f for f in frames)
        assert _leaks(driver, frames, log, (API_KEY,)) == []
        with daemon.client() as client:
            assert client.get("/status").json()["feed_records_rejected"] == 0  # every streamed record taken
    finally:
        if driver is not None:
            driver.quit()
        for proc in processes:
            proc.terminate()
            proc.wait(15)
        daemon.stop()


@pytest.mark.slow
def test_one_command_demo_starts_everything_and_stops_cleanly(tiny_training, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_training.model_dir, models / tiny_training.model_dir.name)
    (models / "latest").symlink_to(tiny_training.model_dir.name)
    dashboard_port = free_port()
    # One stream, as on a terminal: the demo's own lines and anything its children print.
    result = subprocess.run([sys.executable, "main.py", "demo", "--models-dir", str(models), "--work-dir",
                             str(tmp_path / "demo"), "--port",
                             str(free_port()), "--dashboard-port", str(dashboard_port), "--servers", "8",
                             "--duration", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=300, check=False)
    output = result.stdout
    assert result.returncode == 0, output[-3000:]
    assert "API key:" in output
    lines = [line for line in output.splitlines() if line.strip()]
    start_up = lines[:next(i for i, line in enumerate(lines) if "demo: stopped" in line)]
    # The URL to open is the last line of the start-up output: no child's line follows it.
    assert start_up[-1].strip() == f"Dashboard:  http://127.0.0.1:{dashboard_port}", "\n".join(start_up[-20:])
    for child in ("daemon", "dashboard", "stream"):
        assert f"stopped {child}" in output, child
    logs = {name: (tmp_path / "demo" / f"{name}.log").read_text() for name in ("daemon", "stream", "dashboard")}
    assert "rejected" not in logs["daemon"] + logs["stream"]  # the accelerated stream's records are all taken
    assert "Inotify" not in logs["dashboard"]  # .streamlit/config.toml: the checkout is not watched
    assert (tmp_path / "demo" / "demo_store.sqlite3").exists()  # the demo wrote where it was told


def test_fan_captions_name_a_blend_or_a_fallback():
    """The p50 source line: the model alone says so once; a blend or the last value is named per horizon."""
    from tft_dashboard_web import source_text

    model = {"source": "model", "model_share": 1.0}
    assert source_text({"30min": model, "1hr": model, "8hr": model}) == "p50: the model at every horizon"
    mixed = source_text({"30min": {"source": "last_value", "model_share": 0.0},
                         "1hr": {"source": "model+last_value", "model_share": 0.4}, "8hr": model})
    assert mixed == ("p50: 30 min the last value · 1 h 40 % of the model's change from the last value · "
                     "8 h the model")
