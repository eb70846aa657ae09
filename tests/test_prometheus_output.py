"""Prometheus output: the instance label and per-alert series on /metrics, and the shipped rules
(deploy/prometheus/tft_rules.yml) under Debian's promtool (check + unit tests, which catch a changed rule).

Costs (2 cores): promtool tests ~3 s; the daemon test ~5 s (one cycle of the tiny model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from config import PROJECT_ROOT
from metrics_generator import FleetSimulator
from tests.helpers import TINY_FLEET

RULES_DIR = PROJECT_ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed; "
                                                             "./bootstrap.sh --dev installs it")


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_rules_pass_promtool_check_and_unit_tests():
    checked = promtool("check", "rules", "tft_rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = promtool("test", "rules", "tft_rules_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
@pytest.mark.parametrize("original,mutated", [
    ('quantile="0.5"} > 0.95', 'quantile="0.5"} > 0.97'),  # the disk alert would no longer fire at 96 %
    ("increase(tft_forecast_cycle_seconds_count[20m]) == 0", "increase(tft_forecast_cycle_seconds_count[5m]) == 0"),
    ('count by (profile, severity) (tft_alert{kind="risk", state="firing"})',
     'count by (profile, severity) (tft_alert{kind="risk"})'),  # suppressed alerts would be counted
])
def test_the_rule_tests_catch_a_changed_rule(tmp_path, original, mutated):
    """The unit tests are not vacuous: each of these edits to a rule makes them fail."""
    for name in ("tft_rules.yml", "tft_rules_test.yml"):
        shutil.copy(RULES_DIR / name, tmp_path / name)
    rules = (tmp_path / "tft_rules.yml").read_text()
    assert original in rules
    (tmp_path / "tft_rules.yml").write_text(rules.replace(original, mutated))
    assert promtool("check", "rules", "tft_rules.yml", cwd=tmp_path).returncode == 0  # still valid rules
    assert promtool("test", "rules", "tft_rules_test.yml", cwd=tmp_path).returncode != 0


def test_instance_labels_and_alert_series(tiny_training, tmp_path):
    """A feeder's instance reaches the forecast and alert series, survives a restart; a bad one is refused."""
    from prometheus_client.parser import text_string_to_metric_families

    from daemon_state import Daemon, DaemonSettings, FeedRequestError

    settings = DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3")
    daemon = Daemon(settings)
    sim = FleetSimulator(fleet=TINY_FLEET, seed=8, start="2026-03-02T00:00:00Z")
    records = sim.records(sim.advance(40))
    newest = max(r["timestamp"] for r in records)
    for r in records:  # a database at 45 % I/O wait: a critical alert now; ppdb001 is in maintenance
        if r["timestamp"] == newest and r["server_name"] in ("ppdb001", "ppdb002"):
            r.update({"cpu_user_pct": 10.0, "cpu_sys_pct": 5.0, "cpu_iowait_pct": 45.0, "cpu_idle_pct": 40.0})
    daemon.maintenance.set("ppdb001", 1.0, "", "operator")
    daemon.ingest(records, instances={"ppdb001": "db1.example:9100", "ppdb002": "db2.example:9100",
                                      "ppnot001": "never-fed:9100"})
    assert daemon.run_cycle(daemon.fleet.newest_bucket) is not None
    samples = [s for f in text_string_to_metric_families(daemon.metrics.render().decode()) for s in f.samples]
    memory = [s for s in samples if s.name == "tft_forecast_memory_used_ratio" and s.labels["server"] == "ppdb002"]
    assert len(memory) == 9 and {s.labels["instance"] for s in memory} == {"db2.example:9100"}
    assert {s.labels["horizon_seconds"] for s in memory} == {"1800", "3600", "28800"}
    assert {s.labels["quantile"] for s in memory} == {"0.1", "0.5", "0.9"}
    assert all(0 <= s.value <= 1 for s in memory)  # a ratio, not a percentage
    iowait = {(s.labels["server"], s.labels["state"], s.labels["instance"]) for s in samples
              if s.name == "tft_alert" and s.labels["metric"] == "cpu_iowait_pct"}
    assert ("ppdb002", "firing", "db2.example:9100") in iowait
    assert ("ppdb001", "suppressed", "db1.example:9100") in iowait
    firing = [s for s in samples if s.name == "tft_active_alerts" and s.labels["level"] == "critical"]
    assert firing[0].value == sum(1 for a in daemon.alerts.active()[0] if a.level == "critical")
    body = {"records": sim.records(sim.advance(1))[:1], "instances": {"ppdb001": "has space:9100"}}
    with pytest.raises(FeedRequestError) as refused:
        daemon.ingest.body(json.dumps(body).encode())
    assert refused.value.status == 422 and "instance" in refused.value.detail
    daemon.close()
    again = Daemon(settings)  # the labels survive a restart; a server never fed got none
    assert again.instances.get("ppdb002") == "db2.example:9100" and again.instances.get("ppnot001") is None
    again.close()
