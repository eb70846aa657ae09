"""The backtest's scoring: CPU as used %, a floor under q-risk's denominator, per-metric rows beside averages."""

from __future__ import annotations

import numpy as np
import pytest

from config import QRISK_DENOMINATOR_FLOOR
from tft_evaluate import evaluate_windows, format_table, score, scoring_view
from tft_features import FeatureSpec


def test_cpu_is_scored_as_used_with_the_band_flipped():
    idle = np.array([90.0, 80.0])
    bands = np.array([[85.0, 90.0, 95.0], [70.0, 80.0, 90.0]])  # idle p10 / p50 / p90
    used, used_bands = scoring_view("cpu_idle_pct", idle, bands)
    assert used.tolist() == [10.0, 20.0]
    assert used_bands.tolist() == [[5.0, 10.0, 15.0], [10.0, 20.0, 30.0]]  # p10 of used = 100 - p90 of idle
    # q-risk is scale-dependent: the same error is 9x larger on 'used' (mean 15) than on 'idle' (mean 85).
    forecast = np.array([88.0, 83.0])
    as_idle = score(idle, forecast)["qrisk_50"]
    as_used = score(*scoring_view("cpu_idle_pct", idle, forecast))["qrisk_50"]
    assert as_used == pytest.approx(as_idle * 170.0 / 30.0)
    assert scoring_view("mem_used_pct", idle, forecast)[0] is idle  # other metrics pass through


def test_near_silent_series_are_judged_by_absolute_error():
    actual = np.full(100, 1e-7)  # an idle VM's network, MB/s
    forecast = np.full(100, 0.002)  # 2 KB/s off: nobody would page for it
    unfloored = score(actual, forecast)
    floored = score(actual, forecast, QRISK_DENOMINATOR_FLOOR["net_in_mb_s"])
    assert unfloored["qrisk_50"] > 1e4  # the raw ratio explodes
    assert floored["qrisk_50"] == pytest.approx(2 * 0.5 * 0.002 / 0.01, rel=1e-3)
    assert floored["denominator_floored"] and not score(np.full(10, 5.0), np.full(10, 5.0), 1.0)["denominator_floored"]


def test_every_metric_gets_a_row_next_to_the_average():
    spec = FeatureSpec(encoder_length=4, prediction_length=96, targets=["cpu_idle_pct", "net_in_mb_s"])
    rng = np.random.default_rng(0)
    windows = 50
    actual = np.stack([rng.uniform(60, 100, (windows, 96)), rng.uniform(0, 1e-4, (windows, 96))], axis=1)
    forecasts = np.repeat(actual[..., None], 3, axis=3) + np.array([-1.0, 0.0, 1.0])
    persistence = actual + 1.0
    stat = {"autoets": forecasts + 0.5}
    result = evaluate_windows(spec, forecasts, actual, persistence, persistence, statistical=stat)
    assert list(result["per_target"]) == ["cpu_used_pct", "net_in_mb_s"]
    assert result["methods"] == ["tft", "persistence", "seasonal_naive", "autoets"]
    row = result["per_horizon"]["1hr"]
    assert row["best_statistical"] == "autoets" and row["improvement_vs_best_statistical"] > 0
    summary = {"range": {"first_decoder_bucket": "a", "last_decoder_bucket": "b"}, "windows": windows,
               "servers": 1, **result}
    table = format_table(summary)
    for name in ("cpu_used_pct", "net_in_mb_s", "mean over the metrics", "q50 ets", "judged by absolute error"):
        assert name in table


def test_conformal_bands_are_saved_applied_and_cover_their_calibration_windows(tiny_training):
    """The trainer fits p10/p90 offsets on its validation windows; applied, ~80 % of actuals fall inside there."""
    from config import CALIBRATION
    from tft_evaluate import actuals_and_baselines, predict_windows
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, data = loaded.spec, tiny_training.data
    assert set(spec.band_offsets) == set(spec.targets)
    for sides in spec.band_offsets.values():
        for side in ("lower", "upper"):
            assert len(sides[side]) == spec.prediction_length
            assert max(abs(v) for v in sides[side]) <= CALIBRATION.band_max_shift
    servers, starts = data.store.window_starts(data.train_end_tidx + 1, data.val_end_tidx)
    actual = actuals_and_baselines(data.store, servers, starts)[0]

    def coverage(model) -> float:
        q = predict_windows(model, data.store, servers, starts)
        return float(((actual >= q[..., 0]) & (actual <= q[..., -1])).mean())

    calibrated = coverage(loaded.model)
    loaded.model.band_offsets = None
    raw = coverage(loaded.model)
    # Each side misses ~10 % by construction, except where an offset sits at its bound (the tiny
    # model's raw bands cover ~0.2: some steps need more than the bound allows) or ties (integers, clips).
    assert 0.7 <= calibrated <= 0.9, (raw, calibrated)
    assert abs(calibrated - 0.8) < abs(raw - 0.8) - 0.2, (raw, calibrated)
