"""Dashboard: Streamlit AppTest per panel, the demo stream, and a real browser end to end."""

from __future__ import annotations

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

from api_models import Alert
from config import (
    DASHBOARD_CACHE_SECONDS,
    DEMO_MAX_FUTURE_SECONDS,
    DEMO_SCENARIOS,
    DRIFT_COVERAGE_BAND,
    DRIFT_SKILL_FLOOR,
    HORIZON_TEXT,
    HORIZONS,
    METRIC_LABELS,
)
from daemon_client import DaemonClient
from metrics_generator import FleetSimulator
from tests.conftest import API_KEY, ROOT, TINY_FLEET, DaemonProcess, feed_buckets, free_port, wait_for

ARTIFACTS = ROOT / "test-artifacts"
PANELS = ["Overview", "Heatmap", "Top Servers", "Historical", "Model health", "Advanced"]
HEALTH = PANELS.index("Model health")
ONE_BY_ONE = HORIZONS["30min"] + 2  # buckets fed one at a time, each forecast: +30 min forecasts mature


def _feed_one_at_a_time(client: httpx.Client, sim: FleetSimulator, n_buckets: int) -> None:
    """Feed single buckets, each forecast before the next arrives (as test_live_accuracy does)."""
    for _ in range(n_buckets):
        stamp = feed_buckets(client, sim, 1)[-1]["timestamp"][:16]
        wait_for(lambda s=stamp: (client.get("/status").json()["last_forecast_time"] or "")[:16] == s)


@pytest.fixture(scope="module")
def fed_daemon(tiny_training, tmp_path_factory):
    """A daemon with the tiny model and 40 buckets of the tiny fleet, one server in trouble.

    The last buckets come one at a time, each forecast, so +30 min forecasts have matured and been scored.
    """
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path_factory.mktemp("dash") / "store.sqlite3",
                           "--rate-per-minute", "100000")
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
    """Run the dashboard script (AppTest) against a daemon URL and key, set through the environment."""

    def run(url: str, key: str = API_KEY) -> AppTest:
        monkeypatch.setenv("TFT_DAEMON_URL", url)
        monkeypatch.setenv("TFT_API_KEY", key)
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


def _figure(element) -> dict:  # noqa: ANN001 - an AppTest plotly_chart element
    """A Plotly chart's figure and its Plotly config, as the page sent them."""
    return {**json.loads(element.proto.spec), "config": json.loads(element.proto.config)}


def _grid(figure: dict) -> dict[tuple[str, str], float | None]:
    """A metric x horizon heatmap as {(metric label, horizon label): value} (None: not scored yet)."""
    trace = figure["data"][0]
    return {(metric, horizon): value for metric, row in zip(trace["y"], trace["z"], strict=True)
            for horizon, value in zip(trace["x"], row, strict=True)}


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
    bands, worst, every = (d.value for d in health.dataframe)
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
    at = dashboard(fed_daemon.url)
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
    at = dashboard(fed_daemon.url)
    with fed_daemon.client() as client:
        client.post("/admin/demo-scenario", json={"scenario": "healthy"}).raise_for_status()
        time.sleep(DASHBOARD_CACHE_SECONDS + 0.5)  # past the cached read
        at.run()
        assert _demo_state(at) == ("Demo stream plays: **healthy**", ["healthy"])
        client.post("/admin/demo-scenario", json={"scenario": "critical"}).raise_for_status()
    time.sleep(DASHBOARD_CACHE_SECONDS + 0.5)
    at.run()
    assert _demo_state(at) == ("Demo stream plays: **critical**", ["critical"])


def test_streamlit_started_in_the_checkout_watches_nothing_and_hides_deploy():
    """.streamlit/config.toml is read by a Streamlit started in the repository root (as main.py demo does)."""
    probe = ("from streamlit import config; config.get_config_options(force_reparse=True); "
             "print(config.get_option('server.fileWatcherType'), config.get_option('client.toolbarMode'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.split() == ["none", "minimal"], result.stdout + result.stderr


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


@pytest.mark.slow
def test_dashboard_in_a_real_browser_fed_by_the_stream(tiny_training, tmp_path):
    from tools.dashboard_screenshots import CHROMEDRIVER, CHROMIUM, capture_panels, open_browser

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "Debian chromium + chromium-driver are needed (bootstrap.sh --dev installs them)"
    # The stream's clock runs ahead of the wall clock (2 buckets a second), as in the demo.
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--rate-per-minute", "100000",
                           "--max-future-seconds", str(DEMO_MAX_FUTURE_SECONDS))
    processes = []
    driver = None
    try:
        daemon.wait_ready()
        # A slow refresh keeps each panel still long enough to be checked and photographed on 2 busy cores.
        env = {**os.environ, "TFT_API_KEY": API_KEY, "TFT_DAEMON_URL": daemon.url, "TFT_DASHBOARD_REFRESH": "30"}
        stream = subprocess.Popen([sys.executable, "metrics_generator.py", "--stream", "--daemon-url", daemon.url,
                                   "--servers", "12", "--speed", "2", "--scenario", "degrading"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stream.log", "w"))
        processes.append(stream)
        port = free_port()
        dashboard = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "tft_dashboard_web.py",
                                      "--server.port", str(port), "--server.address", "127.0.0.1",
                                      "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(tmp_path / "dashboard.log", "w"))
        processes.append(dashboard)
        with daemon.client() as client:
            wait_for(lambda: client.get("/status").json()["servers_ready"] >= 12, timeout=120)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/_stcore/health").status_code == 200, timeout=60)

        driver = open_browser(tmp_path / "chrome")
        texts, header = capture_panels(driver, f"http://127.0.0.1:{port}", ARTIFACTS)
        (ARTIFACTS / "dashboard_texts.txt").write_text("\n\n".join(f"== {k}\n{v}" for k, v in texts.items()))
        assert set(texts) == set(PANELS)
        assert "Connected" in header and "tft_model_" in header and "Last forecast" in header, header
        assert "Servers" in texts["Overview"] and "Active alerts" in texts["Overview"]
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

        wait_for(lambda: "Demo stream plays: critical" in sidebar(), timeout=int(env["TFT_DASHBOARD_REFRESH"]) + 30)
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
