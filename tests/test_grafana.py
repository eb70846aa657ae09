"""The Grafana mixin (deploy/grafana/): generated dashboards, valid against the Foundation SDK's schema, and
every query real against Debian's Prometheus scraping a real, fed daemon.

Grafana itself is not installable here (no Debian package, no network for its image), so the test does what
Grafana would do with these files: it reads each dashboard's template variables and panel targets, fills the
variables from the variables' own queries, and evaluates every expression through Prometheus' HTTP API over
the dashboard's kind of time range. Costs (2 cores): the schema checks ~1 s; the live test ~30 s (the tiny
model's training is shared with the session).
"""

from __future__ import annotations

import enum
import json
import re
import shutil
import subprocess
import time
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from config import DASHBOARD, GRAFANA_DASHBOARD_DIR, HORIZONS, PROJECT_ROOT, SAMPLING_INTERVAL_SECONDS
from metrics_generator import FleetSimulator
from tests.helpers import API_KEY, TINY_FLEET, DaemonProcess, feed_buckets, free_port, wait_for

GRAFANA_DIR = PROJECT_ROOT / "deploy" / "grafana"
RULES = PROJECT_ROOT / "deploy" / "prometheus" / "tft_rules.yml"
DASHBOARD_FILES = sorted(GRAFANA_DASHBOARD_DIR.glob("*.json"))
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval would be for this test's 1 s scrapes, with room
START = "2026-03-02T06:00:00Z"  # the fed fleet's first bucket (bucket 0 below)
# The alert panels need the daemon to have judged its own alerts (live_alerts.py), so three web servers' memory
# (warning tier 90 %, elevated 85 %; ~50 % otherwise, below elevated for the hour a breach needs) is set to
# 95 % in these buckets, each fed as _feed_with_instances says:
# - ppweb001, 30-33, fed one by one: the cycle of bucket 30 already alerts (the model sees 95 %), the cycle of 31
#   confirms the breach (10 min at the tier): warned, lead 0;
# - ppweb002, 32-33, fed in one request: its only cycle, 33, confirms the breach and opens the alert ("breach
#   in progress") for it then: unwarned;
# - ppweb003, 30 only: the model's alert and no breach (5 min at the tier, not 10): a false episode.
# Both breaches' alerts stay open an hour ("breach in progress" is kept for 12 buckets), close after their
# hold-down and are judged true by bucket 47. The last bucket fed is a surprise: ppweb003 at 95 % again, so an
# alert with a time to breach is open and its memory lies far outside its band when Prometheus scrapes.
MEMORY_AT_95 = {"ppweb001": range(30, 34), "ppweb002": range(32, 34), "ppweb003": range(30, 31)}
SURPRISE = "ppweb003"


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARD_FILES}


def targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


# ============================================================================ generated, valid, complete
def test_committed_dashboards_are_what_the_builder_writes():
    """The JSON is generated (tools/build_grafana.py), never hand-edited: a changed file fails this check."""
    from tools import build_grafana

    assert [p.name for p in DASHBOARD_FILES] == sorted(build_grafana.DASHBOARDS)
    assert build_grafana.main(["--check"]) == 0
    edited = json.loads(DASHBOARD_FILES[0].read_text(encoding="utf-8"))
    edited["title"] += " (edited)"
    assert build_grafana.render(build_grafana.DASHBOARDS[DASHBOARD_FILES[0].name]) != json.dumps(edited)


def _conforms(value: Any, hint: Any, path: str, errors: list[str]) -> None:
    """``value`` has the type the SDK's generated model declares for it (recursing into model objects)."""
    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is object:  # a plugin's options or field config: decoded by its plugin's model
        _model_types(value, path, errors)
        return
    if origin in (typing.Union, types.UnionType):
        trials = []
        for arm in typing.get_args(hint):
            found: list[str] = []
            _conforms(value, arm, path, found)
            if not found:
                return
            trials.append(found[0])
        errors.append(trials[0])
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            errors.append(f"{path}: {value!r} is not one of {typing.get_args(hint)}")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: a list expected, got {value!r:.60}")
            return
        for i, item in enumerate(value):
            _conforms(item, typing.get_args(hint)[0], f"{path}[{i}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: an object expected, got {value!r:.60}")
        return
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if value not in {member.value for member in hint}:
            errors.append(f"{path}: {value!r} is not a {hint.__name__} ({[m.value for m in hint]})")
        return
    if hint is type(None):
        if value is not None:
            errors.append(f"{path}: null expected")
        return
    if hint in (str, bool):
        if not isinstance(value, hint):
            errors.append(f"{path}: {hint.__name__} expected, got {value!r:.60}")
        return
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (hint is int and value != int(value)):
            errors.append(f"{path}: {hint.__name__} expected, got {value!r:.60}")
        return
    if isinstance(hint, type):
        if isinstance(value, dict) and hasattr(hint, "from_json"):  # left undecoded by its parent: decode it here
            _lost_into(value, hint, path, errors)
            value = hint.from_json(value)
        if not isinstance(value, hint):
            errors.append(f"{path}: {hint.__name__} expected, got {type(value).__name__}")
            return
        _model_types(value, path, errors)


def _model_types(obj: Any, path: str, errors: list[str]) -> None:
    if not hasattr(obj, "to_json"):
        return
    for name, hint in typing.get_type_hints(type(obj)).items():
        if hasattr(obj, name):
            _conforms(getattr(obj, name), hint, f"{path}.{name}", errors)


def _lost(original: Any, decoded: Any, path: str = "") -> list[str]:
    """Paths of ``original`` the decode-encode round trip did not keep (a key or value the schema lacks)."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [path]
        return [p for key, value in original.items()
                for p in ([f"{path}/{key}"] if key not in decoded else _lost(value, decoded[key], f"{path}/{key}"))]
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return [path]
        return [p for i, (a, b) in enumerate(zip(original, decoded, strict=True)) for p in _lost(a, b, f"{path}[{i}]")]
    return [] if original == decoded else [f"{path}: {original!r:.60} became {decoded!r:.60}"]


def _lost_into(value: dict[str, Any], model: Any, path: str, errors: list[str]) -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    errors += [f"{path}{p}" for p in _lost(value, json.loads(json.dumps(model.from_json(value), cls=JSONEncoder)))]


def schema_errors(data: dict[str, Any]) -> list[str]:
    """What the Grafana Foundation SDK's dashboard schema says is wrong with ``data``.

    The SDK ships Grafana's schema as generated, typed models (not a JSON Schema file): a dashboard is valid
    when decoding it with them keeps every key and value (nothing the schema lacks), and every decoded field
    holds the type, enum member or literal its model declares. Panels' options and field configs are decoded
    by their plugins' models (timeseries, stat, table, text).
    """
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    decoded = Dashboard.from_json(data)
    errors = _lost(data, json.loads(json.dumps(decoded, cls=JSONEncoder)))
    _model_types(decoded, "dashboard", errors)
    return errors


def test_dashboards_are_valid_against_the_foundation_sdk_schema():
    boards = dashboards()
    assert len(boards) == 4
    for name, board in boards.items():
        assert schema_errors(board) == [], name
    # The check can fail: a key the schema lacks, a wrong enum value, a wrong type.
    board = boards["tft-server.json"]
    for mutate, expected in [(lambda b: b["panels"][1].__setitem__("colour", "red"), "colour"),
                             (lambda b: b["panels"][1]["options"].__setitem__("graphMode", "sparkline"), "graph_mode"),
                             (lambda b: b.__setitem__("graphTooltip", 7), "graph_tooltip"),
                             (lambda b: b["panels"][1].__setitem__("title", 42), "title")]:
        broken = json.loads(json.dumps(board))
        mutate(broken)
        errors = schema_errors(broken)
        assert errors and any(expected in e for e in errors), (expected, errors)


def test_dashboards_have_variables_units_and_descriptions_grafana_users_expect():
    boards = dashboards()
    for name, board in boards.items():
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:3] == ["datasource", "job", "shard"], name
        assert board["uid"].startswith("tft-") and "tft" in board["tags"] and board["refresh"] and board["time"]
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel.get("description"), (name, panel["title"])
            if panel.get("targets"):
                assert panel["fieldConfig"]["defaults"].get("unit"), (name, panel["title"])
                assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    fleet = [v["name"] for v in boards["tft-fleet-overview.json"]["templating"]["list"]]
    assert {"server", "profile", "instance", "shard"} <= set(fleet)
    server = {v["name"]: v for v in boards["tft-server.json"]["templating"]["list"]}
    assert not server["server"]["multi"] and server["horizon"]["type"] == "custom"
    # The per-server view draws, per forecast metric, the actuals, the band and median made "horizon" earlier
    # (offset), and the tiers where the metric has them.
    metric_panels = [p for p in boards["tft-server.json"]["panels"] if p["title"].endswith("the forecast made for it")]
    assert len(metric_panels) == 10
    for panel in metric_panels:
        exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
        assert {"A", "B", "C", "D"} <= set(exprs) and "tft_observed_" in exprs["A"]
        assert all("offset ${horizon}s" in exprs[r] and 'horizon_seconds="$horizon"' in exprs[r] for r in "BCD")
        overrides = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}
        assert {"id": "custom.fillBelowTo", "value": "p10"} in overrides["p90"]
    drawn = [p["title"] for p in boards["tft-server.json"]["panels"]
             if any(t["refId"] == "T" for t in p.get("targets", []))]
    assert len(drawn) == 8  # every risk metric; network has no tiers
    # "Anomalous now": the server's score per metric with the band's edge drawn; the fleet's count outside it.
    [anomalous] = [p for p in boards["tft-server.json"]["panels"]
                   if p["type"] == "timeseries" and p["title"].startswith("Anomalous now")]
    [expr] = [t["expr"] for t in anomalous["targets"]]
    assert "tft_anomaly_score" in expr and 'server="$server"' in expr
    steps = anomalous["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, DASHBOARD.anomaly_outside_above]
    assert any("tft_anomaly_score" in e for t, e in targets(boards["tft-fleet-overview.json"])
               if t == "Servers outside their band")
    # The alert panels: precision and recall as 0-1 ratios, the lead in seconds; no text panel left.
    alerts = {p["title"]: p for p in boards["tft-live-accuracy.json"]["panels"]}
    for title, unit in [("Alert precision (7 days)", "percentunit"), ("Alert recall (7 days)", "percentunit"),
                        ("Median alert lead (7 days)", "s")]:
        defaults = alerts[title]["fieldConfig"]["defaults"]
        assert defaults["unit"] == unit and (unit == "s" or (defaults["min"], defaults["max"]) == (0, 1)), title
    assert not [p for board in boards.values() for p in board["panels"] if p["type"] == "text"]
    # Docs/DEPLOYMENT.md describes every panel (no screenshots without Grafana).
    doc = (PROJECT_ROOT / "Docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    missing = [f"{name}: {panel['title']}" for name, board in boards.items() for panel in board["panels"]
               if panel["type"] != "row" and panel["title"] not in doc]
    assert not missing, missing


def test_provisioning_files_point_at_the_dashboards():
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "tft.yaml").read_text())
    assert datasources["apiVersion"] == 1 and datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "tft.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose.yaml").read_text())
    mounts = dict(v.split(":")[1::-1] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert (GRAFANA_DIR / mounts[provider["options"]["path"]].removeprefix("./grafana/")).resolve() == \
        GRAFANA_DASHBOARD_DIR.resolve()
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# ============================================================================ every query is real
def _prometheus_yaml(daemon_port: int, key_file: Path, rules: Path) -> str:
    return ("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n  - job_name: tft\n"
            f"    authorization: {{credentials_file: {key_file}}}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{daemon_port}']}}]\n")


def _feed_with_instances(client: httpx.Client, sim: FleetSimulator, n: int, together: bool = False,
                         surprise: str | None = None) -> None:
    """n buckets one at a time, each forecast before the next (``together``: in one request, the last one
    forecast), naming each server's Prometheus instance; memory as MEMORY_AT_95 stages it (and at 95 % for
    ``surprise`` in every bucket)."""
    for _ in range(1 if together else n):
        records = sim.records(sim.advance(n if together else 1))
        for r in records:
            bucket = int((datetime.fromisoformat(r["timestamp"]) - datetime.fromisoformat(START)).total_seconds()
                         // SAMPLING_INTERVAL_SECONDS)
            if bucket in MEMORY_AT_95.get(r["server_name"], ()) or r["server_name"] == surprise:
                r["mem_used_pct"] = 95.0
        body = {"records": records, "instances": {r["server_name"]: f"{r['server_name']}.example:9100"
                                                  for r in records}}
        assert client.post("/feed", json=body).status_code == 200
        stamp = records[-1]["timestamp"][:16]
        wait_for(lambda s=stamp: (client.get("/status").json()["last_forecast_time"] or "")[:16] == s)


def _memory_alerts_judged(client: httpx.Client) -> dict[str, Any] | None:
    """The daemon's figures of its memory alerts once MEMORY_AT_95's breaches and episodes are all in."""
    rows = client.get("/accuracy", params={"metric": "mem_used_pct"}).json()["alert_quality"]
    row = rows[0] if rows else {}
    done = (row.get("breaches") == 2 and row.get("warned") == 1 and row["episodes"] - row["false_episodes"] >= 2
            and row["false_episodes"] >= 1)
    return row if done else None


def _otlp_and_remote_write(daemon: DaemonProcess) -> None:
    """One OTLP export and one remote-write request, so both inputs' counters exist."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from remote_write import encode, write_request
    from tests.test_remote_write import HEADERS, Node

    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.add(key="host.name").value.string_value = "otel-grafana-host"
    metric = resource.scope_metrics.add().metrics.add(name="system.cpu.load_average.1m", unit="{thread}")
    metric.gauge.data_points.add(time_unix_nano=time.time_ns(), as_double=0.5)
    answer = httpx.post(f"{daemon.url}/v1/metrics", content=request.SerializeToString(),
                        headers={"Content-Type": "application/x-protobuf", "X-API-Key": API_KEY})
    assert answer.status_code == 200, answer.content
    node_samples = Node().samples(int(time.time() * 1000))
    answer = httpx.post(f"{daemon.url}/api/v1/write", content=encode(write_request(node_samples)), headers=HEADERS)
    assert answer.status_code == 204, answer.text
    assert httpx.post(f"{daemon.url}/feed", json={"records": []}).status_code == 401  # a refusal, counted


def _variable_values(prom: httpx.Client, variable: dict[str, Any], fill: dict[str, str]) -> list[str]:
    """The values Grafana would offer for a variable (a query variable: its label_values() through the API)."""
    if variable["type"] == "custom":
        return [part.split(" : ")[-1].strip() for part in variable["query"].split(",")]
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", _fill(variable["query"], fill))
    assert match, variable["query"]
    answer = prom.get(f"/api/v1/label/{match.group(2)}/values", params={"match[]": match.group(1)}).json()
    assert answer["status"] == "success", (variable["name"], answer)
    return answer["data"]


def _fill(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


@pytest.mark.slow
def test_every_panel_query_returns_series_from_prometheus_scraping_a_fed_daemon(tiny_training, tmp_path):
    """Debian's Prometheus 2.42 scrapes a real daemon (tiny model) fed a fleet with an incident and staged memory
    alerts (MEMORY_AT_95: a warned breach, an unwarned one, a false alarm, all judged before the first scrape),
    evaluating the mixin's rules; every variable query and every panel expression of every dashboard must parse
    and return series. Offsets of up to 8 h are evaluated over a range reaching 8 h past the first scrape (a
    query at t with ``offset 8h`` reads t - 8h), as a Grafana range ending 8 h after the data began would."""
    assert shutil.which("prometheus"), "Debian package prometheus is needed"
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--rate-per-minute", "100000",
                           "--established-hours", "0")
    key_file = tmp_path / "read.key"
    key_file.write_text(API_KEY + "\n")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(_prometheus_yaml(daemon.port, key_file, RULES))
    prometheus = None
    try:
        daemon.wait_ready()
        sim = FleetSimulator(fleet=TINY_FLEET, seed=3, start=START)
        sim.incident_rate_scale = 0.0
        with daemon.client() as client:
            feed_buckets(client, sim, 24)  # buckets 0-23
            sim.inject_incident("ppdb001", "io_saturation", ramp_hours=1.0)
            feed_buckets(client, sim, 6)  # 24-29
            _feed_with_instances(client, sim, 2)  # 30-31: ppweb001 warned, ppweb003's false alarm (MEMORY_AT_95)
            _feed_with_instances(client, sim, 2, together=True)  # 32-33: ppweb002 unwarned
            _feed_with_instances(client, sim, 10, together=True)  # 34-43: the breaches' alerts held open
            _feed_with_instances(client, sim, HORIZONS["30min"] + 2)  # 44-51: closed, judged; +30 min forecasts
            for _ in range(12):  # a model that keeps its alerts open longer: a few buckets more
                if _memory_alerts_judged(client):
                    break
                _feed_with_instances(client, sim, 1)
            try:  # the feed waits for a bucket's forecast; its alerts are judged just after
                wait_for(lambda: _memory_alerts_judged(client), timeout=10)
            except TimeoutError:
                pytest.fail(f"the staged memory alerts were not all judged: "
                            f"{client.get('/accuracy', params={'metric': 'mem_used_pct'}).json()['alert_quality']}")
            _feed_with_instances(client, sim, 1, surprise=SURPRISE)
        _otlp_and_remote_write(daemon)
        prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
        with httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=30) as prom:
            def ready() -> bool:
                try:  # two scrapes for a rate(), and the 15-minute recording rule evaluated
                    data = prom.get("/api/v1/query", params={
                        "query": "count_over_time(tft_model_loaded[1m]) >= 3 and on() "
                                 "count(tft:feed_rejected:ratio_rate15m) > 0"}).json()["data"]["result"]
                    return bool(data)
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout=40, interval=0.5)
            start = time.time() - 30
            end = start + max(s * 300 for s in HORIZONS.values()) + 600
            checked, empty = 0, []
            for name, board in dashboards().items():
                fill = {"datasource": "", "__all": ".*"}
                choices: dict[str, list[str]] = {}
                for variable in board["templating"]["list"]:
                    if variable["type"] == "datasource":
                        continue
                    values = _variable_values(prom, variable, fill)
                    assert values, f"{name}: variable {variable['name']} offers no value"
                    if variable.get("includeAll"):
                        fill[variable["name"]] = variable["allValue"]
                    else:
                        choices[variable["name"]] = values
                        fill[variable["name"]] = values[0]
                for title, expr in targets(board):
                    checked += 1
                    used = [v for v in choices if f"${v}" in expr or f"${{{v}}}" in expr]
                    combos = [dict(zip(used, c, strict=True)) for c in _product([choices[v] for v in used])]
                    for combo in combos:
                        promql = _fill(expr, {**fill, **combo})
                        answer = prom.get("/api/v1/query_range", params={
                            "query": promql, "start": start, "end": end, "step": 60}).json()
                        assert answer["status"] == "success", (name, title, promql, answer)
                        if answer["data"]["result"]:
                            break
                    else:
                        empty.append(f"{name} / {title}: {expr}")
            assert checked >= 90 and not empty, empty
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        daemon.stop()
    assert "Traceback" not in daemon.log.read_text()


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.product(*lists))
