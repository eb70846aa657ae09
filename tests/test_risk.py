"""Risk scoring: the worked examples of Docs/RISK_SCORING.md, and the rules' shape."""

from __future__ import annotations

import numpy as np
import pytest

from config import RISK_RED_ABOVE, RISK_YELLOW_AT
from risk_scoring import classify, risk_level, score_server


def flat(value: float) -> dict[str, np.ndarray]:
    return {"p10": np.full(96, value * 0.9), "p50": np.full(96, value), "p90": np.full(96, value * 1.1)}


def ramp(start: float, end: float, p90_extra: float) -> dict[str, np.ndarray]:
    p50 = np.linspace(start, end, 96)
    return {"p10": p50 * 0.85, "p50": p50, "p90": p50 + p90_extra}


def test_example_a_critical_now():
    result = score_server("ppdb007", "database", {"cpu_used_pct": 40, "cpu_iowait_pct": 34, "mem_used_pct": 75}, None)
    assert result.risk_score == pytest.approx(0.92) and result.risk_level == "red"
    assert result.alerts[0].reason == "I/O wait is 34.0% now (critical at 30.0%; normal for database below 20.0%)"


def test_example_b_forecast_breach_is_an_early_warning():
    forecast = {"cpu_iowait_pct": ramp(16, 28, 6.0), "cpu_used_pct": flat(40), "mem_used_pct": flat(75)}
    result = score_server("ppdb007", "database", {"cpu_used_pct": 40, "cpu_iowait_pct": 15, "mem_used_pct": 75},
                          forecast)
    assert result.risk_score == pytest.approx(0.69) and result.risk_level == "yellow"
    assert result.per_horizon["now"] == 0.0 and result.per_horizon["30min"] == pytest.approx(0.4916)
    [alert] = result.alerts
    assert (alert.level, alert.horizon, alert.minutes_to_breach) == ("critical", "8hr", 325)
    assert alert.p50 == pytest.approx(28.0) and alert.predicted_value == pytest.approx(34.0)


def test_example_c_ml_compute_runs_hot_but_io_wait_is_abnormal():
    result = score_server("ppml0003", "ml_compute", {"cpu_used_pct": 100, "cpu_iowait_pct": 7, "mem_used_pct": 70},
                          None)
    assert result.risk_score == pytest.approx(0.23) and result.risk_level == "green" and not result.alerts
    assert classify("cpu_iowait_pct", "database", 15) == (None, None)  # normal for a database
    assert classify("cpu_iowait_pct", "web_api", 15) == ("elevated", 10.0)


def test_example_d_memory_leak_with_swap():
    forecast = {"mem_used_pct": ramp(84, 96, 1.5), "swap_used_pct": ramp(2, 30, 8), "cpu_used_pct": flat(55),
                "cpu_iowait_pct": flat(2)}
    result = score_server("ppweb012", "web_api", {"cpu_used_pct": 55, "cpu_iowait_pct": 2, "mem_used_pct": 84,
                                                  "swap_used_pct": 2}, forecast)
    assert result.risk_score == pytest.approx(0.6675) and result.risk_level == "yellow"
    assert [(a.metric, a.level) for a in result.alerts] == [("mem_used_pct", "critical"), ("swap_used_pct", "warning")]


def test_example_e_two_elevated_metrics():
    result = score_server("ppgen002", "generic", {"cpu_used_pct": 86, "cpu_iowait_pct": 3, "mem_used_pct": 87}, None)
    assert result.risk_score == pytest.approx(0.36) and result.risk_level == "yellow" and not result.alerts


def test_nearer_breaches_score_higher_and_bands_are_the_codex_ones():
    soon = {"mem_used_pct": {"p10": np.full(96, 90.0), "p50": np.full(96, 93.0), "p90": np.full(96, 96.0)}}
    late = {"mem_used_pct": {"p10": np.full(96, 80.0), "p50": np.r_[np.full(80, 85.0), np.full(16, 93.0)],
                             "p90": np.r_[np.full(80, 86.0), np.full(16, 96.0)]}}
    near = score_server("a", "generic", {"mem_used_pct": 80}, soon)
    far = score_server("b", "generic", {"mem_used_pct": 80}, late)
    assert near.risk_score > RISK_RED_ABOVE >= far.risk_score >= RISK_YELLOW_AT
    assert risk_level(0.29) == "green" and risk_level(0.3) == "yellow" and risk_level(0.7) == "yellow"
    assert risk_level(0.71) == "red"
