"""Risk scoring: the worked examples of Docs/RISK_SCORING.md, and the rules' shape."""

from __future__ import annotations

import numpy as np
import pytest

from alert_policy import exceedance
from config import RISK_RED_ABOVE, RISK_YELLOW_AT
from risk_scoring import classify, risk_level, score_fleet, score_server


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
    # The p90 reaches the critical 30 % at 8 h, but that is a ~35 % chance: below the default threshold
    # (0.5) it is a warning (the 20 % tier is near certain, first likely at 165 min), not a critical page.
    [alert] = result.alerts
    assert (alert.level, alert.horizon, alert.minutes_to_breach) == ("warning", "8hr", 165)
    assert alert.probability == pytest.approx(0.993, abs=1e-3)
    assert alert.reason.startswith("I/O wait: >95 % chance of >= 20.0% within 8 h (then p50 28.0%, p90 34.0%)")
    # A metric fitted to page from a 30 % chance pages the critical tier, and says the chance.
    cur = {m: np.array([v]) for m, v in {"cpu_used_pct": 40, "cpu_iowait_pct": 15, "mem_used_pct": 75}.items()}
    fleet_forecast = {m: {q: band[q][None] for q in band} for m, band in forecast.items()}
    [alert] = score_fleet(["ppdb007"], ["database"], cur, fleet_forecast,
                          alert_thresholds={"cpu_iowait_pct": 0.3})[0].alerts
    assert (alert.level, alert.minutes_to_breach) == ("critical", 465)
    assert alert.probability == pytest.approx(0.335, abs=1e-3)
    assert alert.reason.startswith("I/O wait: ~35 % chance of >= 30.0% within 8 h")


def test_a_breach_in_progress_alerts_only_once_held():
    """One noisy bucket over the tier is no breach (nor a page); the tier held 10 min is, whatever the forecast."""
    cur = {"mem_used_pct": np.array([95.0, 95.0])}
    recent = {"mem_used_pct": np.array([[50.0, 70.0, 95.0], [50.0, 92.0, 95.0]])}
    quiet = {"mem_used_pct": {"p10": np.full((2, 96), 60.0), "p50": np.full((2, 96), 65.0),
                              "p90": np.full((2, 96), 70.0)}}
    spike, held_high = score_fleet(["a", "b"], ["generic", "generic"], cur, quiet, recent=recent)
    assert not spike.alerts
    [alert] = held_high.alerts
    assert (alert.horizon, alert.level, alert.probability) == ("now", "warning", 1.0)


def test_the_chance_of_reaching_a_tier_follows_the_band():
    """The two-piece normal through p10/p50/p90: 10 % at p90, 50 % at p50, 90 % at p10, monotone between."""
    p10, p50, p90 = np.array([10.0]), np.array([20.0]), np.array([40.0])
    assert exceedance(p10, p50, p90, 40.0)[0] == pytest.approx(0.10, abs=1e-6)
    assert exceedance(p10, p50, p90, 20.0)[0] == pytest.approx(0.50, abs=1e-6)
    assert exceedance(p10, p50, p90, 10.0)[0] == pytest.approx(0.90, abs=1e-6)
    grid = exceedance(p10, p50, p90, np.linspace(0, 80, 81)[:, None])[:, 0]
    assert (np.diff(grid) <= 0).all() and grid[-1] < 0.01
    assert exceedance(np.array([5.0]), np.array([5.0]), np.array([5.0]), np.array([5.0, 6.0])).tolist() == [1.0, 0.0]


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


def test_a_breach_stays_in_progress_until_an_hour_below_the_elevated_tier():
    """breach_in_progress: entered when the tier has held 10 min, left after an hour below the elevated tier; a
    value hovering between the tiers stays one breach, one noisy bucket is none."""
    from alert_quality import breach_in_progress

    x = np.concatenate([np.full(10, 50.0), [96.0], np.full(5, 50.0),  # a spike: nothing
                        [95.0, 95.0], np.full(30, 87.0), [91.0], np.full(11, 80.0),  # one breach, hovering
                        [88.0], np.full(12, 80.0), np.full(3, 80.0)])[None, :]  # an hour below 85: over
    state = breach_in_progress(x, np.array([90.0]), np.array([85.0]))[0]
    start = 10 + 1 + 5
    assert not state[:start + 1].any() and state[start + 1]  # confirmed at its second bucket
    end = start + 2 + 30 + 1 + 11 + 1 + 12  # the 12th bucket in a row below 85 ends it
    assert state[start + 1:end - 1].all() and not state[end - 1:].any()
