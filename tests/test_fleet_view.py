"""One view over many shards: daemon_client.FleetClient, ``main.py status`` and the dashboard against two real
shard daemons (``--shard 0/2``, ``--shard 1/2``) on loopback, each fed its own half of the tiny fleet.

Cost (2 idle cores, measured): the module's fixture, two daemons started in parallel and fed 30 buckets, 26 s
with the session's tiny model trained in it (about 45 s on busy cores); then the client tests 0.3 s, the CLI
1.5 s, the AppTest 1.2 s, the stopped shard 6 s and the browser test (slow) 21 s: 57 s for the module. The last
test stops shard 1, so the tests that need both shards come first.
"""

from __future__ import annotations

import json
import re

import pytest

from config import API_KEY_ENV, API_KEY_FILE_ENV, DASHBOARD, DASHBOARD_DAEMON_URL_ENV, DASHBOARD_DEMO_ENV
from daemon_client import DaemonClient, FleetClient, FleetError, alert_order
from metrics_generator import FleetSimulator
from sharding import shard_of
from tests.helpers import API_KEY, TINY_FLEET, DaemonProcess, free_port, run_cli, wait_for


@pytest.fixture(scope="module")
def shards(tiny_training, tmp_path_factory):
    """Two daemons, shard 0/2 and 1/2, each fed the servers Prometheus' hashmod gives it (30 buckets)."""
    store = tmp_path_factory.mktemp("shards")
    daemons = [DaemonProcess(tiny_training.model_dir, store / f"shard{k}.sqlite3", "--shard", f"{k}/2",
                             "--rate-per-minute", "100000") for k in range(2)]
    sim = FleetSimulator(fleet=TINY_FLEET, seed=5, start="2026-03-02T00:00:00Z")
    sim.incident_rate_scale = 0.0
    owned = [[n for n in sim.server_names if shard_of(n, 2) == k] for k in range(2)]
    assert all(owned), owned  # the tiny fleet has servers on both shards
    try:
        for daemon in daemons:
            daemon.wait_ready()
        clients = [DaemonClient(d.url, API_KEY) for d in daemons]
        for chunk in range(3):
            if chunk == 2:
                sim.inject_incident(owned[0][0], "io_saturation", ramp_hours=1.0)
            records = sim.records(sim.advance(10))
            for k, client in enumerate(clients):
                mine = [r for r in records if r["server_name"] in owned[k]]
                assert client.feed(mine).stored == list(range(len(mine)))
        for k, client in enumerate(clients):
            wait_for(lambda c=client, k=k: c.status()["servers_ready"] == len(owned[k]), timeout=60)
            client.close()
        yield daemons, owned
    finally:
        for daemon in daemons:
            daemon.stop()


def test_the_fleet_is_the_union_of_the_shards(shards):
    daemons, owned = shards
    with FleetClient([d.url for d in daemons], API_KEY) as fleet:
        status = fleet.status()
        assert [r["shard"] for r in status["shards"]] == ["0/2", "1/2"] and status["problems"] == []
        assert status["shards_answered"] == 2 and status["servers_tracked"] == sum(map(len, owned))
        assert all(r["ok"] and f"shard {r['shard']} at {r['url']}: " in r["line"] for r in status["shards"])
        current = fleet.predictions_current()
        names = [s["server_name"] for s in current["servers"]]
        assert sorted(names) == sorted(owned[0] + owned[1]) and current["duplicates"] == {}
        assert {s["server_name"]: s["shard"] for s in current["servers"]} == {
            n: f"{k}/2" for k in range(2) for n in owned[k]}
        risks = [s["risk_score"] for s in current["servers"]]
        assert risks == sorted(risks, reverse=True)  # most at risk first, as one daemon sorts them
        assert sum(current["summary"].values()) == len(names)
        # Alerts: every shard's, in one daemon's order; each with its shard.
        alerts = fleet.alerts()
        own = []
        for k, daemon in enumerate(daemons):
            with daemon.client() as raw:
                own += [{**a, "shard": f"{k}/2"} for a in raw.get("/alerts/active").json()["alerts"]]
        assert alerts["alerts"] == sorted(own, key=alert_order)
        # One server's fan comes from its own shard, whichever URL is first.
        fan = fleet.server_fan(owned[1][0])
        with daemons[1].client() as raw:
            assert fan == raw.get(f"/predictions/{owned[1][0]}").json()
        # Accuracy per shard, never averaged: each shard's own document.
        accuracy = fleet.accuracy(window="24h")
        for k, row in enumerate(accuracy["shards"]):
            with daemons[k].client() as raw:
                assert row["shard"] == f"{k}/2" and row["accuracy"] == raw.get("/accuracy?window=24h").json()


def test_a_server_on_two_shards_is_flagged_not_overwritten(shards):
    """The same daemon under two URLs looks like two shards reporting the same servers and the same slice."""
    daemons, owned = shards
    alias = daemons[0].url.replace("127.0.0.1", "localhost")
    with FleetClient([daemons[0].url, alias], API_KEY) as fleet:
        status = fleet.status()
        assert any("all say they are shard 0/2" in p for p in status["problems"]), status["problems"]
        current = fleet.predictions_current()
        assert sorted(s["server_name"] for s in current["servers"]) == sorted(owned[0])  # each once
        assert set(current["duplicates"]) == set(owned[0])
        assert current["duplicates"][owned[0][0]] == [f"shard 0/2 at {daemons[0].url}", f"shard 0/2 at {alias}"]


def test_main_status_prints_each_shard_and_the_fleet(shards):
    daemons, owned = shards
    urls = [a for d in daemons for a in ("--daemon-url", d.url)]
    result = run_cli("main.py", "status", *urls, "--api-key", API_KEY, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"shard 0/2 at {daemons[0].url}: {len(owned[0])} servers")
    assert lines[1].startswith(f"shard 1/2 at {daemons[1].url}: {len(owned[1])} servers")
    assert lines[2].startswith(f"fleet: 2 of 2 shards answered; {sum(map(len, owned))} servers: ")
    only_one = run_cli("main.py", "status", "--daemon-url", daemons[0].url, "--api-key", API_KEY, "--json", timeout=60)
    document = json.loads(only_one.stdout)
    # One shard of two: it answers, but slice 1/2 has no URL, so this is not the whole fleet (exit 1).
    assert only_one.returncode == 1 and document["problems"] == [
        "no URL for shard 1/2: the servers of that slice are not shown"], only_one.stdout + only_one.stderr
    assert sorted(s["server_name"] for s in document["servers"]) == sorted(owned[0])


def test_the_dashboard_reads_the_shards_as_one_fleet(shards, monkeypatch):
    """$TFT_DAEMON_SHARDS (Streamlit AppTest, a few seconds): servers of both shards, a line per shard, the
    Model health panel one shard at a time."""
    from streamlit.testing.v1 import AppTest

    from tests.helpers import ROOT

    daemons, owned = shards
    for name in (DASHBOARD_DAEMON_URL_ENV, DASHBOARD.daemon_urls_env, API_KEY_FILE_ENV, DASHBOARD_DEMO_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    monkeypatch.setenv(DASHBOARD.shard_urls_env, ",".join(d.url for d in daemons))
    at = AppTest.from_file(str(ROOT / "tft_dashboard_web.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "Connected to 2 of 2 shards" in text and "One fleet, 2 shards" in " ".join(
        m.value for m in at.sidebar.markdown)
    for k, daemon in enumerate(daemons):
        assert f"shard {k}/2 at {daemon.url}: {len(owned[k])} servers" in text
    heat = at.tabs[1]
    assert sorted(heat.selectbox[0].options) == sorted(owned[0] + owned[1])
    health = at.tabs[4]
    assert health.radio(key="health_shard").options == [f"shard {k}/2 ({d.url})" for k, d in enumerate(daemons)]


@pytest.mark.slow
def test_the_dashboard_shows_one_fleet_over_two_shards_in_a_browser(shards, tmp_path):
    """Streamlit with $TFT_DAEMON_SHARDS in headless Chromium: servers of both shards and a line per shard; then
    shard 1 stops and the page says it is unreachable while shard 0's servers stay."""
    from selenium.webdriver.common.by import By

    from tests.test_dashboard import _dashboard_env, _start_streamlit
    from tools.dashboard_screenshots import open_browser

    daemons, owned = shards
    env = _dashboard_env(**{API_KEY_ENV: API_KEY, DASHBOARD.shard_urls_env: ",".join(d.url for d in daemons),
                            DASHBOARD.refresh_env: "3"})
    proc, url = _start_streamlit(env, tmp_path / "dashboard.log")
    driver = None
    try:
        driver = open_browser(tmp_path / "chrome")
        driver.get(url)

        def page() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        def heatmap_names() -> set[str]:
            """The names written in the Heatmap's cells (every server of the view), the Heatmap tab open."""
            tab = next((t for t in driver.find_elements(By.CSS_SELECTOR, "[role='tab']") if t.text == "Heatmap"), None)
            if tab is None:
                return set()
            if tab.get_attribute("aria-selected") != "true":
                tab.click()
            cells = driver.execute_script("return [...document.querySelectorAll('[role=tabpanel] .js-plotly-plot "
                                          "text')].map(t => t.textContent)")
            return {c for c in cells if re.fullmatch(r"pp[a-z]+\d{2,4}", c)}

        try:
            wait_for(lambda: "Connected to 2 of 2 shards" in page() and heatmap_names() == set(owned[0] + owned[1]),
                     timeout=90)
            text = page()
            assert f"shard 0/2 at {daemons[0].url}: {len(owned[0])} servers" in text
            assert f"shard 1/2 at {daemons[1].url}: {len(owned[1])} servers" in text
            daemons[1].stop()
            wait_for(lambda: f"shard 1/2 at {daemons[1].url} unreachable" in page()
                     and heatmap_names() == set(owned[0]), timeout=60)
            assert "Connected to 1 of 2 shards" in page()
        except AssertionError:
            (tmp_path / "page.txt").write_text(page() + "\n" + str(sorted(heatmap_names())))
            raise AssertionError(f"page text in {tmp_path / 'page.txt'}: {page()[:2000]}") from None
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(15)


def test_a_stopped_shard_is_reported_down_and_the_others_servers_stay(shards):
    daemons, owned = shards
    daemons[1].stop()  # (already stopped when the browser test ran)
    with FleetClient([d.url for d in daemons], API_KEY, timeout=5) as fleet:
        status = fleet.status()
        down = status["shards"][1]
        assert not down["ok"] and down["http_status"] is None
        assert down["line"].startswith(f"shard ? at {daemons[1].url} unreachable: ConnectError")
        assert status["shards_answered"] == 1 and status["servers_tracked"] == len(owned[0])
        current = fleet.predictions_current()
        assert sorted(s["server_name"] for s in current["servers"]) == sorted(owned[0])
        assert [r["ok"] for r in current["shards"]] == [True, False]
    with FleetClient([daemons[1].url, f"http://127.0.0.1:{free_port()}"], API_KEY, timeout=5) as nothing:
        with pytest.raises(FleetError) as raised:
            nothing.predictions_current()
        assert len(raised.value.shards) == 2 and "no shard of the fleet answered" in raised.value.summary
    urls = [a for d in daemons for a in ("--daemon-url", d.url)]
    result = run_cli("main.py", "status", *urls, "--api-key", API_KEY, "--timeout", "5", timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"at {daemons[1].url} unreachable: " in result.stdout
    assert f"fleet: 1 of 2 shards answered; {len(owned[0])} servers: " in result.stdout
