"""daemon_client.DaemonClient against a real daemon process on loopback.

Every path here is the one the feed, the demo stream, the dashboard and ``main.py demo`` take:
typed reads of a serving daemon, per-record feed answers, the demo scenario, errors that say
what / why / fix / doc, and the retry policy (through a daemon start-up, past a 429, not past
a 401 or a 503). Back-off waits are recorded (``sleep=``) so the policy itself is checked.
"""

from __future__ import annotations

import time

import httpx
import pytest

from config import API_REFERENCE_DOC
from daemon_client import NO_RETRY, DaemonClient, DaemonError, FeedResult, RetryPolicy
from feed_client import DaemonFeed
from metrics_generator import FleetSimulator
from tests.helpers import API_KEY, TINY_FLEET, DaemonProcess, free_port, wait_for


class Sleeps(list):
    """A ``sleep`` that really sleeps and remembers every wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)  # the client's own back-off: it must really wait


@pytest.fixture(scope="module")
def served(tiny_training, tmp_path_factory):
    """A daemon with the tiny model, fed 30 buckets of the tiny fleet through the client itself."""
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path_factory.mktemp("client") / "store.sqlite3",
                           "--rate-per-minute", "100000")
    daemon.wait_ready()
    client = DaemonClient(daemon.url, API_KEY)
    sim = FleetSimulator(fleet=TINY_FLEET, seed=17, start="2026-03-02T00:00:00Z")
    for _ in range(3):
        records = sim.records(sim.advance(10))
        result = client.feed(records)
        assert result.stored == list(range(len(records))) and not result.rejected
    wait_for(lambda: client.status()["servers_ready"] == len(sim.server_names), timeout=60)
    yield daemon, client, sim
    client.close()
    daemon.stop()


def test_typed_reads_are_the_daemons_documents(served):
    daemon, client, sim = served
    assert client.health() == {"status": "ok", "model_loaded": True}
    status = client.status()
    assert status["model_version"].startswith("tft_model_") and status["servers_tracked"] == len(sim.server_names)
    fleet = client.predictions_current()
    names = [s["server_name"] for s in fleet["servers"]]
    assert sorted(names) == sorted(sim.server_names)
    name = names[0]
    fan = client.server_fan(name)
    with daemon.client() as raw:  # the client returns exactly what the daemon sent
        assert fan == raw.get(f"/predictions/{name}").json()
    assert fan["server"]["server_name"] == name and len(fan["steps"]) == len(fan["fan"]["cpu_used_pct"]["p50"])
    history = client.history(name, 1)
    assert history["timestamps"] and set(history["actuals"]) >= {"cpu_used_pct", "mem_used_pct"}
    assert "alerts" in client.alerts()


def test_feed_answers_record_by_record_and_a_partial_rejection_is_no_error(served):
    _, client, sim = served
    records = sim.records(sim.advance(1))
    bad = {**records[1], "mem_used_pct": 140.0}
    result = client.feed([records[0], bad])
    assert isinstance(result, FeedResult) and result.received == 2
    assert result.stored == [0] and [r["index"] for r in result.rejected] == [1]
    assert result.rejected[0]["field"] == "mem_used_pct"
    again = client.feed(records)  # a retried batch: the first record is already stored
    assert again.duplicates == [0] and again.stored == list(range(1, len(records)))


def test_accuracy_is_the_daemons_document_with_its_filters(served):
    daemon, client, sim = served
    with daemon.client() as raw:  # the client returns exactly what the daemon sent
        assert client.accuracy() == raw.get("/accuracy").json()
    one = client.accuracy("24h", "mem_used_pct", "30min", "database")
    assert [(r["window"], r["metric"], r["horizon"], r["group"]) for r in one["rows"]] == [
        ("24h", "mem_used_pct", "30min", "database")]
    mine = client.accuracy(server=sim.server_names[0], horizon="1hr")
    assert {(r["group"], r["horizon"]) for r in mine["rows"]} == {(sim.server_names[0], "1hr")}
    with pytest.raises(DaemonError) as unknown:
        client.accuracy(server="ppweb999")
    assert unknown.value.status == 404 and unknown.value.error == "unknown_server" and "Fix:" in str(unknown.value)
    with pytest.raises(DaemonError, match="^422: "):
        client.accuracy(window="3d")


def test_anomalies_are_the_daemons_document_with_its_filters(served):
    daemon, client, _ = served
    params = {"min_score": 1.0, "metric": "mem_used_pct", "horizon": "30min"}
    with daemon.client() as raw:  # the client returns exactly what the daemon sent, filters passed as sent
        assert client.anomalies() == raw.get("/anomalies").json()
        assert client.anomalies(**params) == raw.get("/anomalies", params=params).json()
    assert client.anomalies()["horizons"] == ["30min", "1hr"]
    with pytest.raises(DaemonError) as unknown:
        client.anomalies(server="ppweb999")
    assert unknown.value.status == 404 and unknown.value.error == "unknown_server"
    with pytest.raises(DaemonError, match="^422: "):
        client.anomalies(min_score=-1.0)


def test_demo_scenario_round_trip(served):
    _, client, _ = served
    assert client.set_demo_scenario("degrading")["scenario"] == "degrading"
    assert client.demo_scenario()["scenario"] == "degrading"
    assert client.set_demo_scenario("healthy")["scenario"] == "healthy"


def test_refusals_say_what_why_fix_and_doc_and_are_not_retried(served):
    daemon, client, _ = served
    sleeps = Sleeps()
    wrong = DaemonClient(daemon.url, "wrong-key", sleep=sleeps)
    with pytest.raises(DaemonError) as refused:
        wrong.status()
    error = refused.value
    assert error.status == 401 and error.error == "unauthorized" and error.summary.startswith("401: ")
    assert "Why it matters:" in str(error) and "Fix:" in str(error) and "--api-key" in str(error)
    assert f"{API_REFERENCE_DOC} (Security)" in str(error)
    with pytest.raises(DaemonError) as unknown:
        client.server_fan("ppweb999")
    assert unknown.value.status == 404 and unknown.value.error == "unknown_server"
    with pytest.raises(DaemonError, match="^401: "):
        wrong.feed([])
    assert sleeps == []  # a refusal is final: nothing was retried
    wrong.close()


def test_the_buffered_feed_sends_through_a_shared_client(served):
    _, client, sim = served
    feed = DaemonFeed(client.base_url, client=client)
    records = sim.records(sim.advance(2))
    feed.put(records)
    assert feed.flush() and feed.pending == 0
    assert feed.stats.stored == len(records) and feed.stats.failed_posts == 0
    assert feed.close() == 0
    assert client.health()["status"] == "ok"  # closing the feed leaves a shared client open


def test_retries_through_start_up_wait_out_429_and_stop_at_503(tmp_path):
    """One daemon, no model, a tight rate limit: the transient failures are retried, the others are not."""
    port = free_port()
    sleeps = Sleeps()
    client = DaemonClient(f"http://127.0.0.1:{port}", API_KEY, sleep=sleeps,
                          retry=RetryPolicy(attempts=200, base_seconds=0.1, max_seconds=2.0))
    daemon = DaemonProcess(None, tmp_path / "store.sqlite3", "--allow-no-model", "--rate-per-minute", "60",
                           "--rate-burst", "2", port=port)
    try:
        assert client.health() == {"status": "ok", "model_loaded": False}  # started while we asked
        assert sleeps, "the daemon cannot have answered at once: it was just started"
        assert sleeps[:3] == [0.1, 0.2, 0.4]  # doubling back-off
        sleeps.clear()
        with pytest.raises(DaemonError) as no_model:  # 503: waiting does not load a model
            client.predictions_current()
        assert no_model.value.error == "model_not_loaded" and "Fix:" in str(no_model.value) and sleeps == []
        # Empty the key's bucket (2 tokens, 1 more per second): the next read gets a 429 with
        # Retry-After: 1, which the client waits out instead of its own shorter back-off (0.1 s).
        # (/status: /health is never rate limited)
        while client.request("GET", "/status", expect=(200, 429), retry=NO_RETRY).status_code == 200:
            pass
        assert client.status()["model_loaded"] is False
        assert sleeps == [1.0]
    finally:
        client.close()
        daemon.stop()


def test_no_daemon_is_a_clear_error_after_the_policys_tries(tmp_path):
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{free_port()}"
    client = DaemonClient(url, API_KEY, sleep=sleeps, retry=RetryPolicy(attempts=3, base_seconds=0.01))
    with pytest.raises(DaemonError) as unreachable:
        client.status()
    error = unreachable.value
    assert error.status is None and error.transient and error.summary.startswith(f"daemon unreachable at {url}")
    assert "python main.py infer --daemon" in str(error) and API_REFERENCE_DOC in str(error)
    assert sleeps == [0.01, 0.02]  # three tries, two waits
    with pytest.raises(DaemonError, match="stopped while starting"):
        client.wait_until_healthy(30, still_starting=lambda: False)
    with pytest.raises(DaemonError, match="did not answer within"):
        client.wait_until_healthy(0.2, poll_seconds=0.05)
    with pytest.raises(DaemonError, match="without JSON"):  # something that is not the daemon
        DaemonClient(url, http=httpx.Client(transport=httpx.MockTransport(
            lambda request: httpx.Response(200, text="<html>")))).health()
