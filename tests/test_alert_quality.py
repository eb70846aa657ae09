"""Alert quality definitions (alert_quality.py): breaches, episodes, leads, and the SRE rules scored beside us."""

from __future__ import annotations

import numpy as np
import pytest

from alert_quality import (
    breach_onsets,
    confirmed_onsets,
    episodes,
    hold_open,
    predict_linear,
    score_rule,
    seasonal_rule,
    static_rule,
)
from config import ALERT_QUALITY, STEPS_PER_DAY

WARN, ELEV = np.array([90.0]), np.array([85.0])


def series(*parts: tuple[float, int]) -> np.ndarray:
    """(1, T) from (value, buckets) runs."""
    return np.concatenate([np.full(n, v, dtype=float) for v, n in parts])[None, :]


def test_a_breach_needs_the_hold_and_a_quiet_hour_before_it():
    x = series((50, 12), (95, 1), (50, 12), (95, 30), (88, 5), (95, 5), (50, 12), (96, 2))
    onsets = np.flatnonzero(breach_onsets(x, WARN, ELEV)[0]).tolist()
    # the one-bucket spike at 12 is no breach; the run from 25 is one; the dip to 88 (not below the elevated
    # tier) starts none; after an hour at 50 the last run (2 buckets = the hold) is a new one
    assert onsets == [25, 25 + 30 + 5 + 5 + 12]
    # the first hour of a series cannot start a breach (no quiet hour known), nor can a gap
    assert not breach_onsets(series((95, 20)), WARN, ELEV).any()
    gap = series((50, 12), (95, 3))
    gap[0, 5] = np.nan
    assert not breach_onsets(gap, WARN, ELEV).any()
    # a server without the tier never breaches
    assert not breach_onsets(x, np.array([np.inf]), np.array([np.inf])).any()


def test_the_daemon_confirms_a_breach_when_its_hold_completes():
    x = series((50, 12), (95, 2))
    need = ALERT_QUALITY.quiet_buckets + ALERT_QUALITY.breach_hold_buckets
    assert confirmed_onsets(x[:, -need:], WARN, ELEV)[0]
    assert not confirmed_onsets(x[:, -need - 1:-1], WARN, ELEV)[0]  # one bucket earlier: not held yet


def test_hold_down_keeps_an_alert_open_across_short_gaps():
    raised = np.zeros((1, 20), dtype=bool)
    raised[0, [3, 5, 12]] = True
    assert episodes(hold_open(raised, 3)[0]) == [(3, 8), (12, 15)]


def test_scoring_counts_warned_timely_false_and_lead():
    onsets = np.zeros((1, 400), dtype=bool)
    onsets[0, 150] = True  # a breach at 150
    onsets[0, 300] = True  # an unwarned one at 300
    opened = np.zeros((1, 400), dtype=bool)
    opened[0, 130:160] = True  # warned 20 buckets = 100 min ahead: timely, true
    opened[0, 200:210] = True  # nothing follows: false
    opened[0, 301:305] = True  # raised for the breach in progress: true, but no warning
    s = score_rule(opened, onsets).summary()
    assert (s["breaches"], s["warned"], s["timely"], s["median_lead_minutes"]) == (2, 0.5, 0.5, 100.0)
    assert (s["episodes"], s["false_episodes"], s["precision"]) == (3, 1, pytest.approx(2 / 3, abs=1e-3))
    assert s["time_in_alert"] == pytest.approx(44 / 400)
    # an alert open for a whole day before the breach warned it, but not in time
    opened[0, :160] = True
    s = score_rule(opened, onsets).summary()
    assert s["warned"] == 0.5 and s["timely"] == 0.0 and s["median_lead_minutes"] == 750.0


def test_predict_linear_is_prometheus_least_squares_from_the_newest_sample():
    x = (10.0 + 0.5 * np.arange(40))[None, :]  # slope 0.5 per bucket
    projected = predict_linear(x, 12, 12)
    assert np.isnan(projected[0, :11]).all()
    assert projected[0, 20] == pytest.approx(x[0, 20] + 0.5 * 12)
    noisy = x + np.random.default_rng(3).normal(0, 1, x.shape)
    t = 30
    slope, intercept = np.polyfit(np.arange(12), noisy[0, t - 11:t + 1], 1)
    assert predict_linear(noisy, 12, 12)[0, t] == pytest.approx(intercept + slope * (11 + 12))


def test_static_and_seasonal_rules():
    x = series((50, STEPS_PER_DAY), (50, 100), (95, 3), (50, 200))
    raised = static_rule(x, 90.0, hold=2)
    assert np.flatnonzero(raised[0]).tolist() == [STEPS_PER_DAY + 101, STEPS_PER_DAY + 102]
    # yesterday it reached the tier at day-bucket 100-102: today it is raised from 8 h before that hour
    x2 = series((50, 100), (95, 3), (50, STEPS_PER_DAY + 50))
    seasonal = np.flatnonzero(seasonal_rule(x2, WARN, window=96, hold=2)[0])
    held_yesterday = 101  # the first bucket the tier had held 2 buckets
    assert seasonal.min() == STEPS_PER_DAY + held_yesterday - 95 and seasonal.max() == STEPS_PER_DAY + 102


def test_the_trainer_fits_each_metric_threshold_to_the_false_alarm_budget(tiny_training):
    """The lowest candidate within the budget where the validation days raised alerts; the default where they
    raised none; saved with the model and loaded by the daemon's engine."""
    from config import ALERT_POLICY
    from tft_model import load_model

    report = tiny_training.training_info["alert_policy"]
    thresholds = tiny_training.data.spec.alert_thresholds
    assert report["budget_false_episodes_per_server_week"] == ALERT_POLICY.false_episodes_per_server_week
    assert set(thresholds) == set(report["metrics"]) and thresholds
    for metric, fitted in report["metrics"].items():
        candidates = {float(t): v for t, v in fitted["candidates"].items()}
        within = [t for t, v in candidates.items()
                  if v["false_per_server_week"] <= ALERT_POLICY.false_episodes_per_server_week]
        if not any(v["episodes"] for v in candidates.values()):
            assert thresholds[metric] == ALERT_POLICY.default_threshold
        elif within:
            assert thresholds[metric] == min(within)
        else:
            assert thresholds[metric] == max(ALERT_POLICY.grid)
    assert load_model(tiny_training.model_dir).spec.alert_thresholds == thresholds
