"""Alerts pushed to Prometheus Alertmanager (API v2), as Prometheus' own notifier does it.

Costs (2 cores, measured): the payload test < 0.1 s; the CLI test < 0.1 s once tft_inference is imported (5-8 s
when it is the first to import it); the notifier against a fake endpoint ~3 s for both (short resend and
back-off intervals); the in-process daemon with a fake and a hanging Alertmanager ~3.5 s (two cycles of the
tiny model, and a close that waits 2 s for the hanging POST); the real daemon process against Debian's
``prometheus-alertmanager`` (0.25) 10-20 s (daemon start, ~20 cycles, Alertmanager's 1 s group waits). The
tiny model (session fixture, ~15-50 s) is shared with the other daemon tests.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from alertmanager_push import AlertmanagerNotifier, alert_annotations, alert_labels
from api_models import Alert
from common_utils import free_loopback_port
from metrics_generator import FleetSimulator
from tests.helpers import TINY_FLEET, DaemonProcess, feed_buckets, wait_for

AM_BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
HOT = {"cpu_user_pct": 10.0, "cpu_sys_pct": 5.0, "cpu_iowait_pct": 45.0, "cpu_idle_pct": 40.0}  # critical now
START = "2026-03-02T08:00:00Z"  # a Monday morning: outside the databases' nightly backup window


def _alert(server: str = "ppdb001", level: str = "critical", horizon: str = "30min", **update: Any) -> Alert:
    alert = Alert(server_name=server, profile="database", level=level, metric="cpu_iowait_pct", horizon=horizon,
                  predicted_value=31.4, threshold=30.0, p50=21.7, minutes_to_breach=25,
                  reason="I/O wait may reach 31.4% in ~25 min (p90; p50 21.7%) - critical at 30.0%",
                  id=f"risk:{server}:cpu_iowait_pct", starts_at="2026-03-02T09:35:00Z")
    return alert.model_copy(update=update)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Recorder:
    """A tiny HTTP server on loopback that records every POST (a fake Alertmanager, or a webhook receiver).

    ``statuses`` are answered in turn (then 200).
    """

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = recorder.statuses.pop(0) if recorder.statuses else 200
                recorder.posts.append({"at": time.time(), "path": self.path, "status": status,
                                       "authorization": self.headers.get("Authorization"), "body": json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Every alert POSTed (in order) whose labels include ``labels``."""
        return [a for p in self.posts for a in p["body"] if labels.items() <= a["labels"].items()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


# ============================================================================ payload
def test_labels_and_annotations_name_each_value_for_what_it_is():
    labels = alert_labels(_alert(), "db1.example:9100")
    assert labels == {"alertname": "FleetForecastRisk", "severity": "critical", "server": "ppdb001",
                      "instance": "db1.example:9100", "profile": "database", "metric": "cpu_iowait_pct",
                      "horizon": "30min"}
    assert "instance" not in alert_labels(_alert(), None)  # only where a feeder named it
    notes = alert_annotations(_alert(), "http://dash.example:8501")
    assert notes["p90"] == "31.4" and notes["p50"] == "21.7" and notes["threshold"] == "30.0"
    assert notes["minutes_to_breach"] == "25" and notes["dashboard"] == "http://dash.example:8501"
    assert notes["description"].startswith("I/O wait may reach") and "within 30 min" in notes["summary"]
    assert notes["alert_id"] == "risk:ppdb001:cpu_iowait_pct" and notes["data_starts_at"] == "2026-03-02T09:35:00Z"
    now = alert_annotations(_alert(horizon="now", p50=None, minutes_to_breach=None))
    assert now["current_value"] == "31.4" and "p90" not in now and "p50" not in now and "minutes_to_breach" not in now
    degraded = _alert(kind="model_degraded", server_name="fleet", profile="all", level="warning", horizon="1hr",
                      predicted_value=0.41, threshold=0.65, p50=None, minutes_to_breach=None)
    assert alert_labels(degraded)["alertname"] == "FleetModelDegraded"
    assert alert_annotations(degraded)["observed_value"] == "0.41"


# ============================================================================ notifier (fake Alertmanager)
def test_sends_resends_and_resolves_like_prometheus(recorder):
    """Firing: at once, then every resend interval with endsAt = now + 4 x it; startsAt never after now;
    resolved: endsAt = when it resolved, with the next sends, then silence; credentials only as basic auth."""
    url = recorder.url.replace("http://", "http://am:s3cret@")
    notifier = AlertmanagerNotifier([url], resend_seconds=0.4, resolved_sends=2)
    try:
        future = _alert(starts_at=(datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        before = time.time()
        notifier.notify([future])
        wait_for(lambda: len(recorder.posts) >= 2, timeout=5, interval=0.02)  # the first send and a resend
        first, second = recorder.posts[0], recorder.posts[1]
        assert first["path"] == "/api/v2/alerts" and first["authorization"].startswith("Basic ")
        [sent] = first["body"]
        assert before - 0.01 <= _epoch(sent["startsAt"]) <= first["at"]  # data time ahead of the clock: now
        assert _epoch(sent["endsAt"]) == pytest.approx(first["at"] + 4 * 0.4, abs=0.3)
        assert sent["generatorURL"] == "http://127.0.0.1:8501" and sent["labels"]["server"] == "ppdb001"
        assert 0.39 <= second["at"] - first["at"] < 1.0  # the resend interval after the first answer
        assert second["body"][0]["startsAt"] == sent["startsAt"]  # stable across sends
        # Escalated to "now": Alertmanager identifies alerts by labels, so the old label set is resolved.
        n = len(recorder.posts)
        notifier.notify([_alert(horizon="now")])
        wait_for(lambda: len(recorder.posts) > n, timeout=5, interval=0.02)
        change = {a["labels"]["horizon"]: a for a in recorder.posts[n]["body"]}
        assert _epoch(change["30min"]["endsAt"]) <= recorder.posts[n]["at"] < _epoch(change["now"]["endsAt"])
        # Resolved (or suppressed: the daemon hands over only firing alerts): sent with endsAt, twice, then no more.
        n = len(recorder.posts)
        resolved_at = time.time()
        notifier.notify([])
        wait_for(lambda: len(recorder.posts) >= n + 2, timeout=5, interval=0.02)
        for post in recorder.posts[n:n + 2]:
            [gone] = [a for a in post["body"] if a["labels"]["horizon"] == "now"]
            assert _epoch(gone["endsAt"]) == pytest.approx(resolved_at, abs=0.5)
        time.sleep(1.0)  # wall-clock: nothing may be sent; only time passing can show that
        assert len(recorder.posts) == n + 2  # nothing firing, nothing left to resolve: quiet
        [status] = notifier.status()
        assert status["url"] == recorder.url and "s3cret" not in json.dumps(status)
        assert status["state"] == "ok" and status["failures"] == 0 and status["firing"] == 0
    finally:
        notifier.close()


def test_failures_back_off_are_counted_and_logged_once_per_state_change(caplog):
    """503, 503, 503, then 200: retried after 0.05, 0.1, 0.2 s; one WARNING, one INFO; counted; a second
    Alertmanager that refuses connections delays nothing."""
    from prometheus_client import CollectorRegistry

    flaky = Recorder(statuses=[503, 503, 503])
    registry = CollectorRegistry()
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    caplog.set_level(logging.INFO, logger="alertmanager_push")
    notifier = AlertmanagerNotifier([closed, flaky.url], registry=registry, resend_seconds=30,
                                    retry_base_seconds=0.05, retry_max_seconds=0.2)
    try:
        notifier.notify([_alert()])
        wait_for(lambda: len(flaky.posts) >= 4, timeout=5, interval=0.01)
        gaps = [b["at"] - a["at"] for a, b in zip(flaky.posts, flaky.posts[1:], strict=False)]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.19, gaps  # doubling back-off
        time.sleep(0.3)  # wall-clock: no further send may come; only time passing can show that
        assert len(flaky.posts) == 4  # delivered: the next send is a resend interval away
        dead, ok = notifier.status()
        assert ok["state"] == "ok" and ok["failures"] == 3 and ok["notifications_sent"] == 1
        assert dead["state"] == "failing" and dead["failures"] >= 3 and "ConnectError" in dead["last_error"]

        def sample(url: str, result: str) -> float:
            return registry.get_sample_value("tft_alertmanager_notifications_total",
                                             {"alertmanager": url, "result": result}) or 0.0

        assert sample(flaky.url, "failure") == 3 and sample(flaky.url, "success") == 1
        assert sample(closed, "failure") >= 3
        lines = [r.getMessage() for r in caplog.records if "Alertmanager" in r.getMessage()]
        assert sum("sending alerts failed" in m for m in lines) == 2  # one per URL, not one per retry
        assert sum("delivering again after 3 failed attempts" in m for m in lines) == 1
    finally:
        notifier.close()
        flaky.close()


def test_a_bad_url_is_refused_with_exit_code_2(caplog):
    from errors import run_cli
    from tft_inference import build_arg_parser, run_from_args

    for flags in (["--alertmanager-url", "localhost:9093"], ["--dashboard-url", "ftp://dash"]):
        caplog.clear()
        assert run_cli(run_from_args, build_arg_parser().parse_args(["--daemon", *flags])) == 2
        assert "is not a valid http(s) URL" in caplog.text and "Fix:" in caplog.text
        assert "Docs/RISK_SCORING.md (Alertmanager)" in caplog.text


# ============================================================================ the daemon, in process
def test_the_cycle_hands_over_without_waiting_and_maintenance_resolves(tiny_training, tmp_path, recorder):
    """One Alertmanager answers, one accepts connections and never answers: cycles do not wait, the answering
    one gets the alert; when an operator puts the server into maintenance the pushed alert is sent resolved."""
    from daemon_state import Daemon, DaemonSettings, status_document

    hanging = socket.create_server(("127.0.0.1", 0))  # listens, never accepts: a POST hangs until its timeout
    daemon = Daemon(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                   alertmanager_urls=[f"http://127.0.0.1:{hanging.getsockname()[1]}", recorder.url]))
    sim = FleetSimulator(fleet=TINY_FLEET, seed=8, start=START)

    def cycle(buckets: int, **hot: str) -> None:
        records = sim.records(sim.advance(buckets))
        newest = max(r["timestamp"] for r in records)
        for r in records:
            if r["timestamp"] == newest and r["server_name"] == "ppdb001":
                r.update(HOT, **hot)
        daemon.ingest(records)
        began = time.perf_counter()
        assert daemon.run_cycle(daemon.fleet.newest_bucket) is not None
        assert time.perf_counter() - began < 5.0  # the hanging POST (10 s timeout) is not waited for

    try:
        cycle(40)
        firing = wait_for(lambda: recorder.alerts(server="ppdb001", metric="cpu_iowait_pct"), timeout=5)[-1]
        assert time.time() < _epoch(firing["endsAt"])
        assert firing["labels"]["horizon"] == "now" and firing["labels"]["severity"] == "critical"
        posts = len(recorder.posts)
        daemon.maintenance.set("ppdb001", 1.0, "reboot", "operator")
        cycle(1)  # still hot, but in an operator's maintenance window: suppressed
        wait_for(lambda: len(recorder.posts) > posts, timeout=5)
        resolved = recorder.alerts(server="ppdb001", metric="cpu_iowait_pct", horizon="now")[-1]
        assert _epoch(resolved["endsAt"]) <= time.time()  # sent resolved
        def delivered() -> dict[str, Any]:  # counted once the answer is read, a moment after the recorder has it
            am = {s["url"]: s for s in status_document(daemon).model_dump()["alertmanager"]}
            return am[recorder.url] if am[recorder.url]["notifications_sent"] >= 2 else {}

        assert wait_for(delivered, timeout=5)["state"] == "ok"
        # A hand-over that fails never reaches the cycle.
        daemon.notifier._lock = None  # type: ignore[assignment]
        assert daemon.run_cycle(daemon.fleet.newest_bucket) is not None and daemon.notifier.handoff_errors == 1
    finally:
        began = time.perf_counter()
        daemon.close()
        hanging.close()
    assert time.perf_counter() - began < 5.0  # the hanging POST is abandoned, not waited out
    n = len(recorder.posts)
    time.sleep(0.3)  # wall-clock: no send may come after close; only time passing can show that
    assert len(recorder.posts) == n  # closed: nothing more is sent


# ============================================================================ a real Alertmanager
@pytest.fixture
def alertmanager(tmp_path):
    """Debian's prometheus-alertmanager on loopback, routing to a webhook receiver the test records."""
    if AM_BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    hook = Recorder()
    port = free_loopback_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(f"""
route:
  receiver: hook
  group_by: [alertname, server, metric]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook.url}/hook
        send_resolved: true
""")
    log = tmp_path / "alertmanager.log"
    proc = subprocess.Popen([AM_BINARY, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", f"--storage.path={tmp_path / 'am-data'}"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=20)
        yield url, hook
    finally:
        proc.terminate()
        proc.wait(10)
        hook.close()


def test_a_real_alertmanager_gets_routes_silences_and_resolves(tiny_training, tmp_path, alertmanager):
    """Through a real daemon process: two web servers at 45 % I/O wait (critical now); ppweb002 is silenced in
    Alertmanager. ppweb001's alert reaches Alertmanager with its labels and the webhook; ppweb002's is
    suppressed there and never notified; when the stream recovers the alert is resolved in both."""
    am_url, hook = alertmanager
    now = datetime.now(UTC)
    silence = httpx.post(f"{am_url}/api/v2/silences", json={
        "matchers": [{"name": "server", "value": "ppweb002", "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "test_alertmanager", "comment": "ppweb002 is being worked on"}).json()["silenceID"]
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--rate-per-minute", "100000",
                           "--alertmanager-url", am_url, "--dashboard-url", "http://dash.example:8501")

    def in_am(server: str) -> list[dict[str, Any]]:
        return httpx.get(f"{am_url}/api/v2/alerts",
                         params={"filter": [f'server="{server}"', 'metric="cpu_iowait_pct"']}).json()

    try:
        daemon.wait_ready()
        sim = FleetSimulator(fleet=TINY_FLEET, seed=8, start=START)
        with daemon.client() as client:
            feed_buckets(client, sim, 14)  # an hour of history: every server forecast
            for _ in range(2):  # 10 minutes at 45 %: a breach in progress (one bucket would be a noisy sample)
                records = sim.records(sim.advance(1))
                for r in records:
                    if r["server_name"] in ("ppweb001", "ppweb002"):
                        r.update(HOT)
                response = client.post("/feed", json={"records": records,
                                                      "instances": {"ppweb001": "web1.example:9100"}})
                assert response.status_code == 200, response.text
            [fired] = wait_for(lambda: [a for a in in_am("ppweb001") if a["labels"]["horizon"] == "now"])
            assert fired["labels"] == {"alertname": "FleetForecastRisk", "severity": "critical", "server": "ppweb001",
                                       "instance": "web1.example:9100", "profile": "web_api",
                                       "metric": "cpu_iowait_pct", "horizon": "now"}
            assert fired["status"]["state"] == "active" and fired["generatorURL"] == "http://dash.example:8501"
            assert fired["annotations"]["current_value"] == "45.0" and "I/O wait" in fired["annotations"]["summary"]
            assert _epoch(fired["startsAt"]) <= time.time() < _epoch(fired["endsAt"])
            [silenced] = wait_for(lambda: [a for a in in_am("ppweb002") if a["labels"]["horizon"] == "now"])
            assert silenced["status"]["state"] == "suppressed" and silenced["status"]["silencedBy"] == [silence]
            # The webhook hears of ppweb001 (after the route's 1 s group_wait), never of the silenced ppweb002.
            wait_for(lambda: [a for p in hook.posts for a in p["body"]["alerts"]
                              if a["labels"]["server"] == "ppweb001" and a["status"] == "firing"], timeout=15)
            status = client.get("/status").json()["alertmanager"]
            assert status[0]["url"] == am_url and status[0]["state"] == "ok" and status[0]["failures"] == 0
            # The stream recovers: once the daemon resolves it (an hour below the elevated tier ends the breach in
            # progress, then the hold-down), so does Alertmanager.
            for _ in range(40):
                newest = max(r["timestamp"] for r in feed_buckets(client, sim, 1))
                wait_for(lambda newest=newest: client.get("/status").json()["last_forecast_time"] == newest)
                if not [a for a in client.get("/alerts/active").json()["alerts"]
                        if a["id"] == "risk:ppweb001:cpu_iowait_pct"]:
                    break
            else:
                pytest.fail("the daemon never resolved risk:ppweb001:cpu_iowait_pct")
            wait_for(lambda: not in_am("ppweb001"), timeout=10)
            wait_for(lambda: [a for p in hook.posts for a in p["body"]["alerts"]
                              if a["labels"]["server"] == "ppweb001" and a["status"] == "resolved"], timeout=15)
        assert not [a for p in hook.posts for a in p["body"]["alerts"] if a["labels"]["server"] == "ppweb002"]
    finally:
        daemon.stop()
    assert "Traceback" not in Path(daemon.log).read_text()
