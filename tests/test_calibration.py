"""Post-training calibration: the persistence blend, its `source` in the API, and the daemon's live bands replayed.

The blend and the conformal offsets are fitted on the trainer's validation windows and applied by
the model itself (so backtest, offline forecast and daemon agree); the replay scores the bands a
fed daemon would have served over a backtest range. ~20 s on two cores (reuses the session's tiny
model).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration_fit import apply_persistence_blend, fit_band_offsets, fit_persistence_blend
from config import CALIBRATION, HORIZONS
from forecast_engine import forecast_sources
from tft_evaluate import actuals_and_baselines, backtest_store, predict_windows
from tft_features import FeatureSpec, transform_target


def _spec(targets: list[str], steps: int) -> FeatureSpec:
    transforms = {"mem_used_pct": None, "net_in_mb_s": "log1p"}
    return FeatureSpec(encoder_length=4, prediction_length=steps, targets=targets, center="last",
                       log1p_inverse="expm1",
                       target_normalizers={t: {"transformation": transforms[t], "scale_floor": 0.1} for t in targets})


def test_a_spec_saved_before_the_calibration_keys_reads_as_that_model_was_trained():
    """upgrade_feature_spec is the one reader of old specs: missing keys get the old model's behaviour, and a
    current spec passes unchanged."""
    from tft_features import SPEC_UPGRADES, upgrade_feature_spec

    current = _spec(["mem_used_pct", "net_in_mb_s"], 6).to_dict()
    assert upgrade_feature_spec(current) == current
    old = {k: v for k, v in current.items() if k not in {key for _, key, _ in SPEC_UPGRADES}}
    spec = FeatureSpec.from_dict(old)
    assert (spec.center, spec.loss_space, spec.log1p_inverse) == ("mean", "metric", "exp")
    assert spec.band_offsets is spec.center_weights is spec.level_ceilings is spec.alert_thresholds is None
    assert not spec.seasonal_lag and spec.seasonal_inputs == [] and spec.history_buckets == spec.encoder_length
    assert "center" not in old  # the caller's dict is left as it was


def test_band_offsets_count_misses_as_the_served_band_does():
    """A count on the rounded p90 is inside the band; an actual on the metric's floor cannot be above it.

    Counted as misses (before 0.14.0), both made the offsets widen every band of the target:
    CLOSE_WAIT bands covered 0.92 of the very windows they were fitted on for 0.80.
    """
    from config import CALIBRATION

    rng = np.random.default_rng(1)
    windows, steps = 2000, 6
    targets = ["front_close_wait", "mem_used_pct"]
    spec = FeatureSpec(encoder_length=4, prediction_length=steps, targets=targets, center="last",
                       log1p_inverse="expm1",
                       target_normalizers={"front_close_wait": {"transformation": "log1p", "scale_floor": 0.1},
                                           "mem_used_pct": {"transformation": None, "scale_floor": 0.1}})
    counts = rng.integers(1, 30, (windows, steps)).astype(float)
    memory = rng.uniform(20, 80, (windows, steps))
    actual = np.stack([counts, memory], axis=1)  # (W, T, D)
    # p10 well below, p90 exactly on the actual (whole numbers for the count, as served)
    forecasts = np.stack([actual * 0.5, actual, actual], axis=-1)
    center = np.stack([np.log1p(counts[:, 0]), memory[:, 0]], axis=1)
    scale = np.ones((windows, 2))
    offsets = fit_band_offsets(spec, forecasts, actual, center, scale)
    assert all(o < 0 for o in offsets["front_close_wait"]["upper"])  # ties are inside: the band may shrink
    assert offsets["mem_used_pct"]["upper"] == pytest.approx([0.0] * steps, abs=1e-9)  # a real number on p90: the edge
    # one in ten counts a whole socket above p90: those are misses, and the offset widens the band to take them
    forecasts[::10, 0, :, 2] -= 1.0
    widened = fit_band_offsets(spec, forecasts, actual, center, scale)["front_close_wait"]["upper"]
    assert all(w > o for w, o in zip(widened, offsets["front_close_wait"]["upper"], strict=True))
    # silent sockets: the actual on the floor (0) and the served p90 there too cannot be a miss
    zeros = np.zeros_like(actual)
    zeros[:, 1] = memory
    floor = fit_band_offsets(spec, np.stack([zeros, zeros, zeros], axis=-1), zeros,
                             np.stack([np.zeros(windows), memory[:, 0]], axis=1), scale)
    assert floor["front_close_wait"]["upper"] == pytest.approx([-CALIBRATION.band_max_shift] * steps)


def test_blend_keeps_a_useful_model_and_drops_a_noisy_one():
    """Where the model's forecast change is right, w = 1; where it is noise around a persistent series, w -> 0."""
    rng = np.random.default_rng(0)
    windows, steps = 4000, 12
    targets = ["mem_used_pct", "net_in_mb_s"]
    spec = _spec(targets, steps)
    last = np.stack([rng.uniform(20, 80, windows), rng.uniform(0.0, 2.0, windows)], axis=1)  # (W, T)
    # Memory follows a trend the model knows exactly; network stays at its last value, the model adds noise.
    trend = np.linspace(1, 6, steps)
    actual = np.stack([last[:, 0, None] + trend, np.repeat(last[:, 1, None], steps, axis=1)], axis=1)  # (W, T, D)
    p50 = np.stack([actual[:, 0], np.expm1(np.log1p(actual[:, 1]) + rng.normal(0, 0.3, (windows, steps)))], axis=1)
    forecasts = np.stack([p50 - 1.0, p50, p50 + 1.0], axis=-1).clip(0)  # (W, T, D, Q)
    anchor = np.stack([transform_target(t, last[:, j], spec) for j, t in enumerate(targets)], axis=1)
    hours = np.arange(windows) // 40  # 100 hours of 40 windows
    weights = fit_persistence_blend(spec, forecasts, actual, anchor, np.ones_like(anchor), hours)
    assert weights["mem_used_pct"] == [1.0] * steps
    assert max(weights["net_in_mb_s"]) <= 0.1 and set(weights["net_in_mb_s"]) <= set(CALIBRATION.persistence_blend_grid)
    spec.center_weights = weights
    blended = apply_persistence_blend(spec, forecasts, anchor)
    np.testing.assert_allclose(blended[:, 0], forecasts[:, 0])  # the model alone: unchanged
    error = {name: np.abs(f[:, 1, :, 1] - actual[:, 1]).sum() for name, f in (("model", forecasts),
                                                                            ("blend", blended))}
    assert error["blend"] < 0.2 * error["model"], error
    # The band keeps its width around the moved median (in the modelled units).
    width = np.log1p(blended[:, 1, :, 2]) - np.log1p(blended[:, 1, :, 1])
    np.testing.assert_allclose(width, np.log1p(forecasts[:, 1, :, 2]) - np.log1p(forecasts[:, 1, :, 1]), atol=1e-9)


def test_a_gain_the_validation_hours_cannot_tell_from_noise_is_shrunk_to_the_last_value():
    """A model better than the last value on average, but only by winning some hours and losing others: w = 0.

    A steady gain is kept. What differs is whether the hours agree (the Diebold-Mariano test over
    hourly blocks, Newey-West), not the average.
    """
    rng = np.random.default_rng(5)
    hours_n, per_hour, steps = 48, 30, 12
    windows = hours_n * per_hour
    spec = _spec(["mem_used_pct"], steps)
    hours = np.arange(windows) // per_hour
    last = rng.uniform(30, 70, windows)
    move = rng.normal(0, 2.0, (windows, steps))  # the actual change from the last value
    actual = (last[:, None] + move)[:, None, :]
    anchor = last[:, None]
    # steady: the model knows 40 % of every move; noisy: in half the hours it knows half the move, in
    # the other half it forecasts 42 % of the opposite move (a regime it gets right or wrong, hour by hour)
    steady = last[:, None] + 0.4 * move
    right = rng.permutation(hours_n) < hours_n // 2  # half the hours, in no pattern
    noisy = last[:, None] + np.where(right[hours][:, None], 0.5, -0.42) * move
    assert np.abs(noisy - actual[:, 0]).mean() < np.abs(move).mean()  # better than the last value on average
    for p50, expect_kept in ((steady, True), (noisy, False)):
        forecasts = np.stack([p50 - 1.0, p50, p50 + 1.0], axis=-1)[:, None]
        weights = fit_persistence_blend(spec, forecasts, actual, anchor, np.ones_like(anchor), hours)["mem_used_pct"]
        if expect_kept:
            assert min(weights) > 0.0, weights
        else:
            assert weights == [0.0] * steps, weights


def test_a_full_fallback_forecasts_the_last_value_and_says_so(tiny_training):
    """center_weights 0 in the model: p50 is the last value at every step; the API's sources say "last_value"."""
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, store = loaded.spec, tiny_training.data.store
    servers, starts = store.window_starts(tiny_training.data.train_end_tidx + 1, None, stride=48)
    # with the conformal offsets as fitted: a negative one narrows a band, never moves its median
    spec.center_weights = {t: [0.0] * spec.prediction_length for t in spec.targets}
    loaded.model.set_calibration(spec)
    forecasts = predict_windows(loaded.model, store, servers, starts)
    _, persistence, _ = actuals_and_baselines(store, servers, starts)
    np.testing.assert_allclose(forecasts[..., 1], persistence, rtol=1e-3, atol=1e-3)
    assert (forecasts[..., 0] <= forecasts[..., 1]).all() and (forecasts[..., 1] <= forecasts[..., 2]).all()
    sources = forecast_sources(spec)
    assert set(sources) >= {"cpu_used_pct", "mem_used_pct"} and "cpu_idle_pct" not in sources
    assert all(s == {"source": "last_value", "model_share": 0.0} for by in sources.values() for s in by.values())
    spec.center_weights = None
    assert {s["source"] for by in forecast_sources(spec).values() for s in by.values()} == {"model"}


def test_the_trainer_fits_a_blend_that_is_no_worse_on_its_validation_windows(tiny_training):
    """On the windows it was fitted on: where the blend keeps some of the model, its p50 errs no more (normalised
    units, as fitted) than the model's; where it keeps none (the gain was not significant), p50 is the last value."""
    from calibration_fit import _transformed
    from tft_features import encoder_center_scale
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, data = loaded.spec, tiny_training.data
    assert set(spec.center_weights) == set(spec.targets)
    assert all(len(w) == spec.prediction_length and 0.0 <= min(w) and max(w) <= 1.0
               for w in spec.center_weights.values())
    servers, starts = data.store.window_starts(data.train_end_tidx + 1, data.val_end_tidx)
    actual, persistence, _ = actuals_and_baselines(data.store, servers, starts)
    first = data.store.offsets[servers] + starts
    floors, ceilings = spec.scale_limits()
    rows = first[:, None] + np.arange(spec.encoder_length)[None, :]
    center, scale = encoder_center_scale(data.store.rows.targets_tf[rows], floors, spec.center, ceilings)
    weights = dict(spec.center_weights)
    loaded.model.set_calibration(spec)  # with the offsets: they never move p50
    blended = predict_windows(loaded.model, data.store, servers, starts)[..., 1]
    spec.center_weights = None
    loaded.model.set_calibration(spec)
    alone = predict_windows(loaded.model, data.store, servers, starts)[..., 1]
    for j, target in enumerate(spec.targets):
        w = np.asarray(weights[target])
        y = _transformed(spec, target, actual[:, j])
        errors = [(np.abs(_transformed(spec, target, p[:, j]) - y) / scale[:, j, None]).sum(axis=0)
                  for p in (blended, alone)]  # per step
        kept = w > 0
        assert (errors[0][kept] <= errors[1][kept] * 1.01 + 1e-6).all(), (target, errors)
        np.testing.assert_allclose(blended[:, j][:, ~kept], persistence[:, j][:, ~kept], rtol=1e-3, atol=1e-3)


def test_served_bands_replay_the_daemons_live_calibration(tiny_training):
    """Bands that are far too narrow (no conformal offsets) are widened by the replayed live calibration."""
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, data = loaded.spec, tiny_training.data
    spec.band_offsets = None
    loaded.model.set_calibration(spec)
    last = int(data.store.time_idx.max())
    result = backtest_store(loaded.model, spec, data.store, data.val_end_tidx + 1, last, stride=6,
                            live_calibration=True, live_selection=False)  # the bands alone (selection moves p50)
    served = result["served"]
    model_cover, served_cover = ([row["30min"]["tft"]["coverage_p10_p90"] for row in r["per_target"].values()]
                                 for r in (result, served))
    assert np.mean(served_cover) > np.mean(model_cover) + 0.1, (model_cover, served_cover)
    for metric, horizons in result["per_target"].items():  # p50 untouched: the same q-risk at 0.5
        for label in HORIZONS:
            assert served["per_target"][metric][label]["tft"]["qrisk_50"] == pytest.approx(
                horizons[label]["tft"]["qrisk_50"], rel=1e-6)


def test_log_targets_get_a_level_ceiling_and_a_capped_window_spread(tiny_training):
    """Heavy-tailed targets: the spread is capped at the training windows' quantile; no quantile above the ceiling."""
    from config import FEATURES, MODEL
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, store = loaded.spec, tiny_training.data.store
    logged = [t for t in spec.targets if FEATURES.target_transforms.get(t) == "log1p"]
    assert logged and set(spec.level_ceilings) == set(logged)
    floors, ceilings = spec.scale_limits()
    for j, target in enumerate(spec.targets):
        assert np.isfinite(ceilings[j]) == (target in logged) and ceilings[j] >= floors[j]
        if target in logged:  # the training rows' highest level (the store also holds later days)
            assert np.nanmin(store.rows.targets_tf[:, j]) < spec.level_ceilings[target] \
                <= np.nanmax(store.rows.targets_tf[:, j]) + 1e-9
    servers, starts = store.window_starts(None, None, stride=3)
    x, _ = store.batch(servers, starts)
    spreads = np.stack([s[:, 1].numpy() for s in x["target_scale"]], axis=1)  # (W, T)
    assert (spreads <= ceilings[None, :] * (1 + 1e-6)).all()
    capped = np.isclose(spreads, ceilings[None, :], rtol=1e-5)[:, [spec.targets.index(t) for t in logged]]
    assert 0 < capped.mean() < 3 * (1 - FEATURES.target_scale_ceiling_quantile) + 0.01, capped.mean()

    # A ceiling below every level: each window's quantiles stop at factor x (1 + its last value) - 1.
    j = spec.targets.index("net_in_mb_s")
    sample = slice(0, 64)
    plain = predict_windows(loaded.model, store, servers[sample], starts[sample])
    spec.level_ceilings = {**spec.level_ceilings, "net_in_mb_s": -1.0}
    loaded.model.set_calibration(spec)
    capped_forecast = predict_windows(loaded.model, store, servers[sample], starts[sample])
    last = actuals_and_baselines(store, servers[sample], starts[sample])[1][:, j, 0]
    limit = MODEL.level_ceiling_factor * (1.0 + last) - 1.0
    assert (capped_forecast[:, j] <= limit[:, None, None] * (1 + 1e-4) + 1e-6).all()
    assert (capped_forecast[:, j] < plain[:, j] - 1e-6).any()  # the cap bound somewhere
    others = [k for k in range(len(spec.targets)) if k != j]
    np.testing.assert_allclose(capped_forecast[:, others], plain[:, others])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(-3.0, 3.0))
def test_ordered_quantiles_never_cross_and_keep_the_median(seed: int, shift: float) -> None:
    """Any raw quantiles come out sorted; with keep_median the middle one is untouched and the others clamp to it."""
    from tft_features import ordered_quantiles

    raw = torch.from_numpy(np.random.default_rng(seed).normal(0.0, 1.0, (5, 7, 3))).float()
    ordered = ordered_quantiles(raw)
    assert (ordered[..., :-1] <= ordered[..., 1:]).all()
    np.testing.assert_allclose(ordered.sum(-1), raw.sum(-1), rtol=1e-5, atol=1e-5)  # a rearrangement
    moved = ordered.clone()
    moved[..., 0] += shift  # an offset of any sign on p10, the opposite on p90
    moved[..., 2] -= shift
    kept = ordered_quantiles(moved, keep_median=True)
    assert (kept[..., 0] <= kept[..., 1]).all() and (kept[..., 1] <= kept[..., 2]).all()
    assert torch.equal(kept[..., 1], ordered[..., 1])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_served_and_backtested_quantiles_never_cross(tiny_training, seed: int, offset_scale: float,
                                                     low_share: float) -> None:
    """Random blends and conformal offsets (negative ones too) in the model: p10 <= p50 <= p90, the median kept.

    The same forward pass serves the daemon (ForecastEngine) and the backtest (predict_windows); the
    live band calibration and the live selection that follow only widen, narrow or move a band as a
    whole (tests/test_live_selection.py).
    """
    from config import CALIBRATION
    from tft_model import load_model

    loaded = load_model(tiny_training.model_dir)
    spec, store = loaded.spec, tiny_training.data.store
    servers, starts = store.window_starts(tiny_training.data.train_end_tidx + 1, None, stride=96)
    rng = np.random.default_rng(seed)
    steps, bound = spec.prediction_length, CALIBRATION.band_max_shift * offset_scale
    spec.center_weights = {t: rng.uniform(0.0, 1.0, steps).round(2).tolist() if rng.random() > low_share
                           else [0.0] * steps for t in spec.targets}
    spec.band_offsets = None
    loaded.model.set_calibration(spec)
    medians = predict_windows(loaded.model, store, servers, starts)[..., 1]
    spec.band_offsets = {t: {side: rng.uniform(-bound, bound, steps).tolist() for side in ("lower", "upper")}
                         for t in spec.targets}
    loaded.model.set_calibration(spec)
    forecasts = predict_windows(loaded.model, store, servers, starts)
    assert (forecasts[..., 0] <= forecasts[..., 1]).all() and (forecasts[..., 1] <= forecasts[..., 2]).all()
    np.testing.assert_allclose(forecasts[..., 1], medians, rtol=1e-5, atol=1e-5)
