"""Backtest a saved model against baselines measured in the same run.

    python main.py evaluate --model models/latest --data training/server_metrics.parquet
    python tft_evaluate.py --model models/latest --data new_day.parquet --out backtest.json

For forecast origins every ``BACKTEST_ORIGIN_STRIDE`` buckets inside a held-out time range
(by default the range the model was not trained or validated on), and for each target
metric and each horizon (30 min, 1 h, 8 h = 6, 12, 96 buckets ahead):

* MAE of the p50 forecast;
* normalised quantile loss, q-risk, at 0.5 and 0.9 (as in the TFT paper):
  ``2 * sum(QL_q(y, yhat_q)) / sum(|y|)``;
* p10-p90 coverage (share of actuals inside the band; 0.8 is calibrated);

side by side with two naive baselines, persistence (the last observed value) and seasonal naive
(the value at the same time yesterday), whose point forecast stands in for all their quantiles,
and the statistical models a practitioner tries first (statsforecast AutoETS and MSTL with a
daily season, ``baselines.py``) with their 80 % intervals, all scored by the same code. CPU is
scored as *used* % (what users see), and q-risk's denominator has a floor per metric
(``QRISK_DENOMINATOR_FLOOR``) so near-silent series are judged by absolute error. Servers held
out of training are scored separately, with their real profile and with the profile hidden, to
show what profile conditioning is worth on a new server.

:func:`measure_profile_value` asks the same on a freshly generated fleet of servers the model
has never seen, against a profile-agnostic model (:func:`train_agnostic_model`) too; the
benchmark ``bench/bench_profile_value.py`` prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common_utils import atomic_write_json, parse_utc, quiet_library_noise, read_json, setup_logging
from config import (
    BACKTEST_ORIGIN_STRIDE,
    BAND_CALIBRATION,
    BAND_CALIBRATION_MAX_SHIFT,
    BAND_CALIBRATION_MAX_WINDOWS,
    DISPLAY_CPU,
    HOLDOUT_HOURS,
    HORIZONS,
    IMPORTING_DOC,
    INTEGER_METRICS,
    LINBORG_METRICS,
    LIVE_SELECTION,
    METRIC_RANGES,
    PERSISTENCE_BLEND,
    PERSISTENCE_BLEND_GRID,
    PERSISTENCE_BLEND_MIN_GAIN,
    PERSISTENCE_BLEND_SIGNIFICANCE,
    PROFILE_PREFIXES,
    PROFILE_VALUE_BOOTSTRAP_RESAMPLES,
    PROFILE_VALUE_ORIGIN_STRIDE,
    QRISK_DENOMINATOR_FLOOR,
    QUANTILE_LABELS,
    QUANTILES,
    SEASONAL_LAG_STEPS,
    STATISTICAL_METHODS,
    STATISTICAL_METHODS_ALL,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TIME_IDX,
    TRAINING_DATA_FILE,
    TRAINING_GUIDE_DOC,
    TRAINING_INFO_FILE,
    VALID_PROFILES,
)
from contract import bucket_of_times, bucket_start, cpu_used
from data_validator import DataValidator, format_report
from errors import UsageError, run_cli
from scoring import diebold_mariano, score_from_sums, score_terms, significantly
from tft_features import (
    FeatureSpec,
    SeriesStore,
    build_features,
    decode_quantiles,
    encoder_center_scale,
    inverse_transform_target,
    level_ceiling,
    load_training_frame,
    transform_target,
)
from tft_model import FleetTFT, LoadedModel, load_model
from trace_importer import measured_metrics_for

logger = logging.getLogger(__name__)
PREDICT_BATCH = 512
NAIVE_METHODS = ("persistence", "seasonal_naive")
METHODS = ("tft", *NAIVE_METHODS)


def predict_windows(model: FleetTFT, store: SeriesStore, servers: np.ndarray, starts: np.ndarray,
                    hide_profile: bool = False, batch_size: int = PREDICT_BATCH,
                    encoder_length: int | None = None) -> np.ndarray:
    """Quantile forecasts for windows: (W, targets, D, Q) in metric units.

    ``encoder_length`` restricts every window to its last L history buckets (cold start); a window
    with a level shift reads only the buckets after it, as in the daemon (``SeriesStore.settled``).
    """
    device = next(model.parameters()).device
    outputs = []
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(servers), batch_size):
            sl = slice(begin, begin + batch_size)
            n = len(servers[sl])
            hide = np.full(n, hide_profile) if hide_profile else None
            lengths = store.settled(servers[sl], starts[sl])
            if encoder_length:
                lengths = np.minimum(lengths, encoder_length)
            x, _ = store.batch(servers[sl], starts[sl], hide_profile=hide, encoder_lengths=lengths)
            x = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in x.items()}
            outputs.append(decode_quantiles(model(x)["prediction"], store.spec))
    if not outputs:
        return np.zeros((0, len(store.spec.targets), store.spec.prediction_length, len(store.spec.quantiles)))
    return np.concatenate(outputs)


def actuals_and_baselines(store: SeriesStore, servers: np.ndarray, starts: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actual decoder values, persistence and seasonal-naive forecasts: each (W, targets, D)."""
    enc, dec = store.spec.encoder_length, store.spec.prediction_length
    first = store.offsets[servers] + starts  # row of each window's first encoder step
    decoder_rows = (first + enc)[:, None] + np.arange(dec)[None, :]
    actual = store.targets[decoder_rows].transpose(0, 2, 1)
    persistence = np.repeat(store.targets[first + enc - 1][:, :, None], dec, axis=2)
    seasonal_rows = decoder_rows - SEASONAL_LAG_STEPS
    available = seasonal_rows >= store.offsets[servers][:, None]
    seasonal = store.targets[np.maximum(seasonal_rows, 0)].transpose(0, 2, 1).astype(np.float64)
    seasonal[~np.broadcast_to(available[:, None, :], seasonal.shape)] = np.nan
    return actual, persistence, seasonal


def scored_name(target: str) -> str:
    """The name a target is scored and reported under: CPU as *used* %, the rest as they are."""
    return DISPLAY_CPU if target == "cpu_idle_pct" else target


def scoring_view(target: str, actual: np.ndarray, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actuals and forecasts in the units users see: CPU idle -> used (100 - x, quantiles flipped).

    ``forecast`` is (..., Q) quantiles or a point forecast of ``actual``'s shape.
    """
    if target != "cpu_idle_pct":
        return actual, forecast
    used = cpu_used(np.asarray(forecast, dtype=np.float64))
    if used.ndim == np.asarray(actual).ndim + 1:  # quantiles: the p10 of used is 100 - the p90 of idle
        used = used[..., ::-1]
    return cpu_used(np.asarray(actual, dtype=np.float64)), used


def score(actual: np.ndarray, quantiles: np.ndarray, denominator_floor: float = 0.0) -> dict[str, float]:
    """Metrics for one target and horizon; ``quantiles`` is (W, Q) or (W,) for a point forecast.

    q-risk divides by ``max(sum |y|, n * denominator_floor)`` (``QRISK_DENOMINATOR_FLOOR``), so a
    near-silent series is judged by its absolute error instead of exploding. The figures come
    from ``scoring`` (the daemon's live accuracy uses the same code).
    """
    q = quantiles if quantiles.ndim == 2 else np.repeat(quantiles[:, None], len(QUANTILES), axis=1)
    p10, p50, p90 = q[:, QUANTILES.index(0.1)], q[:, QUANTILES.index(0.5)], q[:, QUANTILES.index(0.9)]
    figures = score_from_sums(score_terms(actual, p10, p50, p90).sum(axis=0), denominator_floor)
    result = {key: figures[key] for key in ("mae_p50", "qrisk_50", "qrisk_90", "n", "denominator_floored")}
    if quantiles.ndim == 2:
        result["coverage_p10_p90"] = figures["coverage_p10_p90"]
    return result


def evaluate_windows(spec: FeatureSpec, forecasts: np.ndarray, actual: np.ndarray, persistence: np.ndarray,
                     seasonal: np.ndarray, scored: list[str] | None = None,
                     statistical: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per-metric and per-horizon metrics for the TFT and every baseline, plus summaries.

    ``scored`` limits the targets that are scored (the data's measured metrics); a filled,
    unmeasured metric is never scored. ``statistical`` adds quantile forecasts of other models
    ((W, targets, D, Q), e.g. :func:`baselines.statistical_forecasts`), scored by the same code.
    Metrics are reported under :func:`scored_name` (CPU as used %); each horizon's summary is the
    plain mean over the metrics, next to the per-metric rows.
    """
    statistical = statistical or {}
    methods = [*METHODS, *statistical]
    targets = [t for t in spec.targets if scored is None or t in scored]
    if not targets:
        raise ValueError(f"none of the model's targets {spec.targets} is measured in this data ({scored}); "
                         f"there is nothing to score. See {IMPORTING_DOC}.")
    per_target: dict[str, Any] = {}
    for j, target in enumerate(spec.targets):
        if target not in targets:
            continue
        name = scored_name(target)
        floor = QRISK_DENOMINATOR_FLOOR.get(name, 0.0)
        per_target[name] = {}
        for label, steps in HORIZONS.items():
            k = steps - 1
            candidates = {"tft": forecasts[:, j, k, :], "persistence": persistence[:, j, k],
                          "seasonal_naive": seasonal[:, j, k],
                          **{m: values[:, j, k, :] for m, values in statistical.items()}}
            row = {}
            for method, values in candidates.items():
                y, f = scoring_view(target, actual[:, j, k], values)
                row[method] = score(y, f, floor)
            per_target[name][label] = row
    names = list(per_target)
    per_horizon: dict[str, Any] = {}
    for label in HORIZONS:
        means = {m: float(np.mean([per_target[t][label][m]["qrisk_50"] for t in names])) for m in methods}
        best_baseline = min(NAIVE_METHODS, key=lambda m: means[m])
        per_target_gain = [1.0 - per_target[t][label]["tft"]["qrisk_50"]
                           / max(min(per_target[t][label][m]["qrisk_50"] for m in NAIVE_METHODS), 1e-12)
                           for t in names]
        row = {
            "qrisk_50_mean": means,
            "qrisk_90_mean": {m: float(np.mean([per_target[t][label][m]["qrisk_90"] for t in names]))
                              for m in methods},
            "best_baseline": best_baseline,
            "improvement_vs_best_baseline": 1.0 - means["tft"] / max(means[best_baseline], 1e-12),
            "mean_per_target_improvement": float(np.mean(per_target_gain)),
            "coverage_p10_p90_mean": float(np.mean([per_target[t][label]["tft"]["coverage_p10_p90"]
                                                     for t in names])),
        }
        if statistical:
            best_stat = min(statistical, key=lambda m: means[m])
            row["best_statistical"] = best_stat
            row["improvement_vs_best_statistical"] = 1.0 - means["tft"] / max(means[best_stat], 1e-12)
        per_horizon[label] = row
    return {"per_target": per_target, "per_horizon": per_horizon, "methods": methods}


def fit_calibration(model: FleetTFT, spec: FeatureSpec, store: SeriesStore, first_decoder_tidx: int,
                    last_decoder_tidx: int, seed: int = 0, blend: bool = PERSISTENCE_BLEND,
                    bands: bool = BAND_CALIBRATION) -> None:
    """Calibrate ``model`` on the windows whose decoder lies in [first, last] (its validation days).

    The model forecasts those windows uncalibrated, once. Then, in this order: the persistence
    blend (:func:`fit_persistence_blend`, models anchored on the last value) and the conformal
    band offsets of the blended forecasts (:func:`fit_band_offsets`). Both go into ``spec``
    (``center_weights``, ``band_offsets``) and are applied with ``model.set_calibration(spec)``,
    so the backtest, the offline forecast and the daemon serve the same calibrated forecast.
    """
    servers, starts = store.window_starts(first_decoder_tidx, last_decoder_tidx)
    if len(servers) == 0:
        raise ValueError(f"No window to calibrate the bands on. See {TRAINING_GUIDE_DOC} (Bands).")
    if len(servers) > BAND_CALIBRATION_MAX_WINDOWS:
        pick = np.sort(np.random.default_rng(seed).choice(len(servers), BAND_CALIBRATION_MAX_WINDOWS, replace=False))
        servers, starts = servers[pick], starts[pick]
    spec.center_weights, spec.band_offsets = None, None
    model.set_calibration(spec)
    forecasts = predict_windows(model, store, servers, starts)  # (W, T, D, Q), uncalibrated
    actual = actuals_and_baselines(store, servers, starts)[0]  # (W, T, D)
    enc = spec.encoder_length
    first = store.offsets[servers] + starts
    floors, ceilings = spec.scale_limits()
    center, scale = encoder_center_scale(store.rows.targets_tf[first[:, None] + np.arange(enc)[None, :]], floors,
                                         spec.center, ceilings)  # (W, T): each window's anchor and spread
    if blend and spec.center == "last":
        hours = store.time_idx[first + enc - 1] // STEPS_PER_HOUR  # each window's origin hour
        spec.center_weights = fit_persistence_blend(spec, forecasts, actual, center, scale, hours)
        forecasts = apply_persistence_blend(spec, forecasts, center)
    if bands:
        spec.band_offsets = fit_band_offsets(spec, forecasts, actual, center, scale)
    model.set_calibration(spec)


def _decode(spec: FeatureSpec, target: str, transformed: np.ndarray) -> np.ndarray:
    """Transformed values -> metric units, clipped to the metric's range (as the model decodes)."""
    low, high = METRIC_RANGES[target]
    return np.clip(inverse_transform_target(target, transformed, spec), low, high if high is not None else np.inf)


def _transformed(spec: FeatureSpec, target: str, values: np.ndarray) -> np.ndarray:
    log_scale = bool(spec.target_normalizers[target]["transformation"])
    v = np.maximum(values.astype(np.float64), 0.0) if log_scale else values.astype(np.float64)
    return transform_target(target, v, spec)


def fit_persistence_blend(spec: FeatureSpec, forecasts: np.ndarray, actual: np.ndarray, anchor: np.ndarray,
                          scale: np.ndarray, origin_hours: np.ndarray | None = None) -> dict[str, list[float]]:
    """Per target and decoder step, the share ``w`` of the model's forecast change from the last value to keep.

    ``p50 = last + w * (model p50 - last)`` in the target's modelled units (log1p for heavy-tailed
    metrics); ``w`` is the value of ``PERSISTENCE_BLEND_GRID`` with the smallest absolute error of
    p50 over these windows in each window's normalised units (over its spread ``scale``, as the
    training loss: every window counts alike, so a few bursty servers do not decide the fleet's
    blend). A ``w`` below 1 is kept only where it lowers that error by at least
    ``PERSISTENCE_BLEND_MIN_GAIN`` (the model alone otherwise). Then the forecast is shrunk to the
    last value (``w = 0``) unless its gain over the last value is significant: the Diebold-Mariano
    statistic of the hourly mean loss differences (windows pooled by the hour of their origin,
    ``origin_hours``; :func:`scoring.diebold_mariano` over the step's horizon in hours) must pass a
    one-sided test at ``PERSISTENCE_BLEND_SIGNIFICANCE``. A model that only ties the last value on
    its validation days is not served as if it beat it. ``anchor`` and ``scale`` are (W, T), transformed units;
    without ``origin_hours`` every window is its own block.
    """
    grid = np.asarray(PERSISTENCE_BLEND_GRID, dtype=np.float64)
    median = spec.quantiles.index(0.5)
    hours = np.arange(len(actual)) if origin_hours is None else np.asarray(origin_hours, dtype=np.int64)
    unique_hours, block = np.unique(hours, return_inverse=True)
    n_blocks = len(unique_hours)
    weights: dict[str, list[float]] = {}
    shrunk: dict[str, int] = {}
    for j, target in enumerate(spec.targets):
        valid = np.isfinite(actual[:, j])
        truth = (_transformed(spec, target, np.where(valid, actual[:, j], 0.0)) - anchor[:, j, None])  # (W, D)
        change = _transformed(spec, target, forecasts[:, j, :, median]) - anchor[:, j, None]
        errors = np.stack([(np.where(valid, np.abs(truth - w * change), 0.0) / scale[:, j, None]).sum(axis=0)
                           for w in grid])  # (grid, D)
        best = errors.argmin(axis=0)
        gain = 1.0 - errors[best, np.arange(errors.shape[1])] / np.maximum(errors[-1], 1e-12)
        chosen = np.where(gain >= PERSISTENCE_BLEND_MIN_GAIN, grid[best], 1.0)
        # the chosen blend against the last value, window by window, then hour by hour
        difference = np.where(valid, np.abs(truth - chosen * change) - np.abs(truth), 0.0) / scale[:, j, None]
        counts = np.stack([np.bincount(block, weights=valid[:, d].astype(np.float64), minlength=n_blocks)
                           for d in range(truth.shape[1])])  # (D, B)
        sums = np.stack([np.bincount(block, weights=difference[:, d], minlength=n_blocks)
                         for d in range(truth.shape[1])])
        means = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
        tests = [diebold_mariano(means[d], -(-(d + 1) // STEPS_PER_HOUR)) for d in range(len(means))]
        significant = np.array([bool(significantly(t, df, PERSISTENCE_BLEND_SIGNIFICANCE, lower=True))
                                for t, df in tests])
        chosen = np.where(significant, chosen, 0.0)
        shrunk[target] = int((~significant).sum())
        weights[target] = chosen.round(4).tolist()
    logger.info("persistence blend on %d windows (%d hours): model share at 30 min / 1 h / 8 h %s; steps shrunk to "
                "the last value (gain not significant): %s", len(actual), n_blocks,
                ", ".join(f"{t} " + "/".join(f"{w[s - 1]:.2f}" for s in HORIZONS.values() if s <= len(w))
                          for t, w in weights.items()),
                ", ".join(f"{t} {n}" for t, n in shrunk.items() if n) or "none")
    return weights


def apply_persistence_blend(spec: FeatureSpec, forecasts: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The blend of ``spec.center_weights`` applied to decoded forecasts (W, T, D, Q), as the model applies it."""
    if not spec.center_weights:
        return forecasts
    out = forecasts.astype(np.float64).copy()
    median = spec.quantiles.index(0.5)
    for j, target in enumerate(spec.targets):
        w = np.asarray(spec.center_weights[target], dtype=np.float64)[: forecasts.shape[2]]  # (D,)
        transformed = _transformed(spec, target, forecasts[:, j])  # (W, D, Q)
        shift = (w - 1.0) * (transformed[..., median] - anchor[:, j, None])
        out[:, j] = _decode(spec, target, transformed + shift[..., None])
    return out


def fit_band_offsets(spec: FeatureSpec, forecasts: np.ndarray, actual: np.ndarray, center: np.ndarray,
                     scale: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Conformal band offsets (``BAND_CALIBRATION``) from forecasts of windows and their actuals.

    In each window's normalised units (the transformed value minus the window's anchor ``center``,
    over its spread ``scale``; both (W, T)) the distances ``p10 - actual`` and ``actual - p90``
    are collected per target and decoder step, and each offset is their finite-sample 90 %
    quantile (split conformal, each side on its own), bounded by ``BAND_CALIBRATION_MAX_SHIFT``.
    An actual on its metric's floor counts as inside the band's top, one on its ceiling as inside
    its bottom: the served quantiles are clipped to the metric's range (``METRIC_RANGES``); counts
    (``INTEGER_METRICS``, served rounded) are compared from half a unit beyond the actual.
    """
    n = len(forecasts)
    level = min(1.0, np.ceil((n + 1) * (1.0 - QUANTILES[0])) / n)
    offsets: dict[str, dict[str, list[float]]] = {}
    for j, target in enumerate(spec.targets):

        def normalised(values: np.ndarray, j: int = j, target: str = target) -> np.ndarray:
            return (_transformed(spec, target, values) - center[:, j, None]) / scale[:, j, None]

        # Counts are served as whole numbers: an actual count is under the rounded p10 only when p10 is
        # above it by more than half a unit (a tie is inside the band), so it is compared from there.
        half = 0.5 if target in INTEGER_METRICS else 0.0
        below = normalised(forecasts[:, j, :, 0]) - normalised(actual[:, j] + half)  # > 0: the actual fell under p10
        above = normalised(actual[:, j] - half) - normalised(forecasts[:, j, :, -1])  # > 0: it rose over p90
        bound = BAND_CALIBRATION_MAX_SHIFT
        # Served quantiles are clipped to the metric's range, so an actual on its floor (0 sockets, 0 %
        # swap) is never above the band, and one on its ceiling (100 % idle) never below it, whatever
        # the offset; counted as misses they would widen every other window's band.
        low, high = METRIC_RANGES[target]
        above[actual[:, j] <= low] = -bound
        if high is not None:
            below[actual[:, j] >= high] = -bound
        offsets[target] = {side: np.clip(np.quantile(d, level, axis=0), -bound, bound).round(4).tolist()
                           for side, d in (("lower", below), ("upper", above))}
    logger.info("bands calibrated on %d windows: mean shift p10 / p90 (spreads) %s", n,
                ", ".join(f"{t} {np.mean(o['lower']):+.2f}/{np.mean(o['upper']):+.2f}" for t, o in offsets.items()))
    return offsets


def calibrate_model_dir(model_dir: Path, data: Path, hours: int) -> FeatureSpec:
    """Fit the level ceilings, persistence blend and band offsets of a saved model on ``data`` (its last ``hours``).

    For a model trained without calibration (or before 0.9.0 / 0.12.0 / 0.13.0); ``data`` must be data the
    model may see (its own training file: the trainer uses its validation hours). Saves them into
    the model's config.json and returns the spec.
    """
    import json

    from config import MODEL_CONFIG_FILE

    loaded = load_model(model_dir)
    spec = loaded.spec
    store = build_features(data, encoder=loaded.encoder, spec=spec, dataset_servers=0).store
    ceilings = {t: level_ceiling(spec.target_normalizers[t]["transformation"], store.rows.targets_tf[:, j])
                for j, t in enumerate(spec.targets)}  # the highest levels in the model's own data
    spec.level_ceilings = {t: c for t, c in ceilings.items() if c is not None} or None
    last = int(store.time_idx.max())
    fit_calibration(loaded.model, spec, store, last - hours * STEPS_PER_HOUR + 1, last)
    path = Path(model_dir) / MODEL_CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("band_offsets", "center_weights", "level_ceilings"):
        config["feature_spec"][key] = getattr(spec, key)
    atomic_write_json(path, config)
    return loaded.spec


def served_forecasts(spec: FeatureSpec, store: SeriesStore, servers: np.ndarray, starts: np.ndarray,
                     forecasts: np.ndarray, known: set[str] | None = None,
                     selection: bool = LIVE_SELECTION.enabled, report: dict[str, Any] | None = None) -> np.ndarray:
    """The forecasts of consecutive origins as a fed daemon serves them: live band calibration and selection.

    ``forecasts`` (W, targets, D, Q) are the model's for windows at every origin of a range (stride
    1: the daemon forecasts every bucket). Origin by origin, in time order, the daemon's own code
    (:class:`live_accuracy.BandAdjuster`, :func:`live_accuracy.live_terms`,
    :class:`live_selection.LiveSelection`) first learns from the forecasts whose target bucket has
    just arrived (both ends observed, as in the daemon), then widens or narrows the bands made at
    that origin with today's multipliers, and, with ``selection``, serves the last value for each
    server x metric x horizon where the model's matured forecasts there lose to it significantly
    (``known``: the servers the model was trained on, which start on the model; None: all of them).
    The multipliers start at 1, as for a newly deployed model. Returns the served forecasts (same
    shape, metric units); ``report`` (if given) gets the share of served forecasts that were the
    last value, per metric and horizon.
    """
    from forecast_engine import display_forecast, display_metrics, serve_selected
    from live_accuracy import LIVE_TERMS, BandAdjuster, display_values, live_terms
    from live_selection import LiveSelection

    targets = spec.targets
    metrics = display_metrics(targets)
    names = np.asarray(store.server_names)[servers]
    adjuster = BandAdjuster(metrics)
    chooser = LiveSelection(metrics, set(store.server_names) if known is None else known, enabled=selection)
    enc = spec.encoder_length
    first = store.offsets[servers] + starts
    origin = store.time_idx[first + enc - 1]  # each window's last complete bucket
    offline = spec.categories["state"].get("offline", -1)
    state_col = spec.x_categoricals.index("state")
    observed = store.rows.cats[:, state_col] != offline  # per row
    fan = display_forecast(forecasts.astype(np.float64), targets)  # metric -> {p10, p50, p90} (W, D)
    served = {m: {q: band[q].copy() for q in QUANTILE_LABELS} for m, band in fan.items()}
    issued = np.ones((len(servers), len(metrics), len(HORIZONS), 2))
    naive = np.zeros((len(servers), len(metrics), len(HORIZONS)), dtype=bool)
    server_bins: dict[int, dict[str, np.ndarray]] = {}
    fleet_bins: dict[int, np.ndarray] = {}

    def display_rows(rows: np.ndarray) -> np.ndarray:
        values = np.zeros((len(rows), len(LINBORG_METRICS)))
        for j, target in enumerate(targets):
            values[:, LINBORG_METRICS.index(target)] = store.targets[rows, j]
        return display_values(values, metrics)

    by_origin = {int(t): np.flatnonzero(origin == t) for t in np.unique(origin)}
    for t in sorted(by_origin):
        cycle = np.zeros((len(metrics), len(HORIZONS), len(LIVE_TERMS)))
        hour = t // STEPS_PER_HOUR
        matured: set[str] = set()
        for k, steps in enumerate(HORIZONS.values()):
            made = by_origin.get(t - steps)
            if made is None:
                continue
            target_rows = first[made] + enc - 1 + steps
            origin_rows = first[made] + enc - 1
            keep = observed[target_rows] & observed[origin_rows]
            if not keep.any():
                continue
            made, target_rows, origin_rows = made[keep], target_rows[keep], origin_rows[keep]
            bands = np.stack([np.stack([served[m][q][made, steps - 1] for q in QUANTILE_LABELS], axis=-1)
                              for m in metrics], axis=1)  # (N, metrics, 3)
            terms = live_terms(display_rows(target_rows), display_rows(origin_rows), bands, issued[made, :, k, :],
                               adjuster.scales[:, k, :], metrics)
            cycle[:, k] += terms.sum(axis=0)
            per_server = server_bins.setdefault(hour, {})
            for position, name in enumerate(names[made]):
                sums = per_server.get(name)
                if sums is None:
                    sums = per_server[name] = np.zeros((len(metrics), len(HORIZONS), len(LIVE_TERMS)))
                sums[:, k] += terms[position]
                matured.add(name)
        adjuster.update(cycle)
        fleet_bins[hour] = fleet_bins.get(hour, 0.0) + cycle
        for old in [h for h in server_bins if h <= hour - LIVE_SELECTION.window_hours]:
            del server_bins[old]
        for old in [h for h in fleet_bins if h <= hour - LIVE_SELECTION.window_hours]:
            del fleet_bins[old]
        chooser.update(server_bins, hour, matured, fleet_bins)
        now = by_origin[t]
        part = {m: {q: served[m][q][now] for q in QUANTILE_LABELS} for m in metrics}
        adjuster.apply(part)
        for m in metrics:
            for q in QUANTILE_LABELS:
                served[m][q][now] = part[m][q]
        issued[now] = adjuster.scales
        naive[now] = chooser.mask(list(names[now]))
    current = dict(zip(metrics, display_rows(first + enc - 1).T, strict=True))
    served = serve_selected(served, naive, current) if naive.any() else served
    out = np.empty(forecasts.shape, dtype=np.float64)
    for j, (target, metric) in enumerate(zip(targets, metrics, strict=True)):
        bands = np.stack([served[metric][q] for q in QUANTILE_LABELS], axis=-1)  # (W, D, 3) display units
        out[:, j] = cpu_used(bands[..., ::-1]) if target == "cpu_idle_pct" else bands  # back to idle, flipped
    logger.info("live band calibration replayed over %d origins: multipliers low/high at 30 min / 1 h / 8 h %s",
                len(by_origin), ", ".join(f"{m} " + " ".join(f"{lo:.2f}/{hi:.2f}" for lo, hi in adjuster.scales[i])
                                          for i, m in enumerate(metrics)))
    shares = naive.mean(axis=0) if len(naive) else np.zeros((len(metrics), len(HORIZONS)))
    logger.info("live selection replayed: share of forecasts served the last value at 30 min / 1 h / 8 h %s",
                ", ".join(f"{m} " + "/".join(f"{v:.2f}" for v in shares[i]) for i, m in enumerate(metrics)))
    if report is not None:
        report["last_value_share"] = {m: {label: round(float(shares[i, k]), 4) for k, label in enumerate(HORIZONS)}
                                      for i, m in enumerate(metrics)}
        report["switches"] = dict(chooser.switches)
    return out


def backtest_store(model: FleetTFT, spec: FeatureSpec, store: SeriesStore, first_decoder_tidx: int,
                   last_decoder_tidx: int, unseen_servers: list[str] | None = None,
                   stride: int = BACKTEST_ORIGIN_STRIDE, scored: list[str] | None = None,
                   statistical: tuple[str, ...] | list[str] = (), live_calibration: bool = False,
                   known_servers: set[str] | None = None, live_selection: bool = LIVE_SELECTION.enabled,
                   statistical_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Backtest every window whose 8-hour decoder lies inside [first, last].

    ``statistical`` names statsforecast models (``baselines.py``) scored beside the naive
    baselines on the same windows of the servers seen in training; their cost is in
    ``statistical_seconds``. ``live_calibration``: also score the bands as a fed daemon would
    serve them over the range (:func:`served_forecasts`; forecasts at every origin, ``stride``
    of them scored) under ``"served"``, with the daemon's live selection unless ``live_selection``
    is False (``known_servers``: the servers the model was trained on; None: all but ``unseen_servers``). A
    ``statistical_cache`` dict keeps the statistical forecasts for the next call on the same
    store and windows (several models scored on one range fit them once).
    """
    began = time.perf_counter()
    servers, starts = store.window_starts(first_decoder_tidx, last_decoder_tidx, stride=stride)
    if len(servers) == 0:
        raise ValueError(
            f"No complete forecast window inside the backtest range: it must hold at least "
            f"{spec.prediction_length} buckets after {spec.encoder_length} buckets of history. Fix: pass a longer "
            f"range or more data. See {TRAINING_GUIDE_DOC} (Backtest).")
    unseen = set(unseen_servers or [])
    names = np.array(store.server_names)
    is_unseen = np.isin(names[servers], list(unseen))
    served = None
    if live_calibration:
        every_servers, every_starts = store.window_starts(first_decoder_tidx, last_decoder_tidx, stride=1)
        every = predict_windows(model, store, every_servers, every_starts)
        key = every_servers * (int(every_starts.max()) + 1) + every_starts
        pick = np.searchsorted(key, servers * (int(every_starts.max()) + 1) + starts)  # keys are sorted
        forecasts = every[pick]
        selection_report: dict[str, Any] = {}
        if known_servers is None and unseen:  # held-out servers start on the last value, as in a daemon
            known_servers = set(store.server_names) - unseen
        served = served_forecasts(spec, store, every_servers, every_starts, every, known=known_servers,
                                  selection=live_selection, report=selection_report)[pick]
        del every
    else:
        forecasts = predict_windows(model, store, servers, starts)
    actual, persistence, seasonal = actuals_and_baselines(store, servers, starts)
    seen = ~is_unseen
    stats: dict[str, np.ndarray] = {}
    stat_seconds: dict[str, float] = {}
    if statistical:
        from baselines import statistical_forecasts

        key = (tuple(statistical), servers[seen].tobytes(), starts[seen].tobytes(), tuple(scored or ()))
        if statistical_cache is not None and statistical_cache.get("key") == key:
            stats, stat_seconds = statistical_cache["forecasts"], statistical_cache["seconds"]
        else:
            stats, stat_seconds = statistical_forecasts(
                store, servers[seen], starts[seen], methods=tuple(statistical),
                targets=[t for t in spec.targets if scored is None or t in scored])
            if statistical_cache is not None:
                statistical_cache.update(key=key, forecasts=stats, seconds=stat_seconds)
    result = evaluate_windows(spec, forecasts[seen], actual[seen], persistence[seen], seasonal[seen], scored,
                              statistical=stats)
    if served is not None:  # the same windows, bands as a daemon serving this model would have served them
        result["served"] = evaluate_windows(spec, served[seen], actual[seen], persistence[seen], seasonal[seen],
                                            scored, statistical=stats)
        result["served"]["live_selection"] = {"enabled": live_selection, **selection_report}
    if statistical:
        result["statistical_seconds"] = {m: round(v, 2) for m, v in stat_seconds.items()}
    result["range"] = {"first_decoder_bucket": bucket_start(first_decoder_tidx).isoformat(),
                       "last_decoder_bucket": bucket_start(last_decoder_tidx).isoformat()}
    result["windows"] = int(seen.sum())
    result["servers"] = int(len(np.unique(servers[seen])))
    result["origin_stride_buckets"] = stride
    if is_unseen.any():
        u_servers, u_starts = servers[is_unseen], starts[is_unseen]
        args = (actual[is_unseen], persistence[is_unseen], seasonal[is_unseen])
        comparisons = {}
        for history, length in (("full_history", None), ("cold_start", spec.min_encoder_length)):
            known = forecasts[is_unseen] if length is None else \
                predict_windows(model, store, u_servers, u_starts, encoder_length=length)
            hidden = predict_windows(model, store, u_servers, u_starts, hide_profile=True, encoder_length=length)
            with_profile = evaluate_windows(spec, known, *args, scored=scored)
            without = evaluate_windows(spec, hidden, *args, scored=scored)
            comparisons[history] = {
                "history_buckets": length or spec.encoder_length,
                "per_server": _profile_gain_per_server(spec, store, u_servers, known, hidden, args, scored),
                "per_horizon": {label: {
                    "qrisk_50_with_profile": with_profile["per_horizon"][label]["qrisk_50_mean"]["tft"],
                    "qrisk_50_profile_hidden": without["per_horizon"][label]["qrisk_50_mean"]["tft"],
                    "qrisk_50_best_baseline": with_profile["per_horizon"][label]["qrisk_50_mean"][
                        with_profile["per_horizon"][label]["best_baseline"]],
                    "improvement_from_profile": 1.0 - with_profile["per_horizon"][label]["qrisk_50_mean"]["tft"]
                    / max(without["per_horizon"][label]["qrisk_50_mean"]["tft"], 1e-12),
                } for label in HORIZONS},
            }
        result["unseen_servers"] = {"servers": sorted(unseen & set(names[servers])), "windows": int(is_unseen.sum()),
                                    **comparisons}
    result["seconds"] = round(time.perf_counter() - began, 2)
    return result


def _profile_gain_per_server(spec: FeatureSpec, store: SeriesStore, servers: np.ndarray, known: np.ndarray,
                             hidden: np.ndarray, args: tuple[np.ndarray, ...], scored: list[str] | None
                             ) -> dict[str, dict[str, Any]]:
    """For each held-out server: its profile and the q-risk 0.5 gain from knowing it, per horizon."""
    out: dict[str, dict[str, Any]] = {}
    for code in np.unique(servers):
        rows = servers == code
        subset = tuple(a[rows] for a in args)
        with_profile = evaluate_windows(spec, known[rows], *subset, scored=scored)["per_horizon"]
        without = evaluate_windows(spec, hidden[rows], *subset, scored=scored)["per_horizon"]
        out[store.server_names[code]] = {"profile": store.profiles[code], "improvement_from_profile": {
            label: _gain(with_profile[label]["qrisk_50_mean"]["tft"], without[label]["qrisk_50_mean"]["tft"])
            for label in HORIZONS}}
    return out


_SHORT_METHOD = {"tft": "tft", "persistence": "pers", "seasonal_naive": "seas", "autoets": "ets", "mstl": "mstl",
                 "autotheta": "theta"}


def format_table(summary: dict[str, Any]) -> str:
    """Human-readable backtest tables: every metric and horizon, then the mean over metrics."""
    lines = [f"Backtest {summary['range']['first_decoder_bucket']} .. {summary['range']['last_decoder_bucket']}: "
             f"{summary['windows']} windows, {summary['servers']} servers"]
    methods = summary.get("methods", list(METHODS))
    banded = [m for m in methods if m not in NAIVE_METHODS]
    header = f"{'metric':<16}{'horizon':>8}{'MAE p50':>9}" + "".join(f"{'q50 ' + _SHORT_METHOD.get(m, m):>10}"
                                                                     for m in methods)
    header += "".join(f"{'cov ' + _SHORT_METHOD.get(m, m):>10}" for m in banded)
    lines.append(header)
    floored = []
    for target, horizons in summary["per_target"].items():
        for label, row in horizons.items():
            text = f"{target:<16}{label:>8}{row['tft']['mae_p50']:>9.3f}"
            text += "".join(f"{row[m]['qrisk_50']:>10.3f}" for m in methods)
            text += "".join(f"{row[m]['coverage_p10_p90']:>10.2f}" for m in banded)
            lines.append(text)
            if row["tft"].get("denominator_floored"):
                floored.append(f"{target} {label}")
    if floored:
        lines.append(f"(q-risk denominator at its floor, i.e. judged by absolute error: {', '.join(floored)}; "
                     "see QRISK_DENOMINATOR_FLOOR)")
    lines.append("")
    lines.append("mean over the metrics above:")
    lines.append(f"{'horizon':<8}" + "".join(f"{'q50 ' + _SHORT_METHOD.get(m, m):>10}" for m in methods)
                 + f"{'vs naive':>10}{'vs stat':>10}{'q90 tft':>9}{'cover':>7}")
    for label, row in summary["per_horizon"].items():
        q = row["qrisk_50_mean"]
        vs_stat = f"{row['improvement_vs_best_statistical']:>+10.1%}" if "best_statistical" in row else f"{'-':>10}"
        lines.append(f"{label:<8}" + "".join(f"{q[m]:>10.3f}" for m in methods)
                     + f"{row['improvement_vs_best_baseline']:>+10.1%}{vs_stat}{row['qrisk_90_mean']['tft']:>9.3f}"
                     f"{row['coverage_p10_p90_mean']:>7.2f}")
    if summary.get("statistical_seconds"):
        lines.append("statistical models' cost: " + ", ".join(f"{m} {v:.1f} s"
                                                              for m, v in summary["statistical_seconds"].items()))
    unseen = summary.get("unseen_servers")
    if unseen:
        lines.append("")
        lines.append(f"Servers never seen in training ({', '.join(unseen['servers'])}): q-risk 0.5, "
                     f"known profile vs profile hidden")
        for history in ("full_history", "cold_start"):
            block = unseen[history]
            lines.append(f"  {history.replace('_', ' ')} ({block['history_buckets']} buckets of history):")
            for label, row in block["per_horizon"].items():
                lines.append(f"    {label:<6} with profile {row['qrisk_50_with_profile']:.3f}   profile hidden "
                             f"{row['qrisk_50_profile_hidden']:.3f}   gain {row['improvement_from_profile']:+.1%}   "
                             f"(best baseline {row['qrisk_50_best_baseline']:.3f})")
            for name, server in block.get("per_server", {}).items():
                gains = "  ".join(f"{label} {gain:+.1%}" for label, gain in server["improvement_from_profile"].items())
                lines.append(f"      {name:<12} {server['profile']:<15} gain {gains}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- what a profile is worth
def unseen_fleet(model: LoadedModel, per_profile: int, days: int, seed: int, out_dir: Path) -> Path:
    """Generate a fleet holding ``per_profile`` servers of each profile the model never saw; the Parquet path.

    The simulator numbers servers per profile, so each profile gets as many more servers as
    the model knows of it: the extra ones have names the model has never seen.
    """
    from metrics_generator import generate_dataset

    known = set(model.encoder.name_to_id)
    counts = {p: per_profile + sum(1 for n in known if n.startswith(PROFILE_PREFIXES[p])) for p in VALID_PROFILES}
    generate_dataset(out_dir=out_dir, hours=24 * (days + 1), fleet=counts, seed=seed, progress=False)
    return out_dir / TRAINING_DATA_FILE


def _qrisk(spec: FeatureSpec, forecasts: np.ndarray, truth: tuple[np.ndarray, ...]) -> dict[str, dict[str, float]]:
    """Per horizon: mean q-risk 0.5 of the forecast and of the better baseline."""
    result = evaluate_windows(spec, forecasts, *truth)["per_horizon"]
    return {label: {"tft": row["qrisk_50_mean"]["tft"],
                    "baseline": row["qrisk_50_mean"][row["best_baseline"]]} for label, row in result.items()}


def _gain(with_profile: float, without: float) -> float:
    return 1.0 - with_profile / max(without, 1e-12)


def measure_profile_value(model: LoadedModel, agnostic: LoadedModel | None, per_profile: int, days: int,
                          seed: int) -> dict[str, Any]:
    """Score forecasts of never-seen servers: with their profile, profile hidden, and by ``agnostic``.

    On a fresh fleet (:func:`unseen_fleet`) whose kept servers neither model knows, forecast
    origins every ``PROFILE_VALUE_ORIGIN_STRIDE`` buckets over the last ``days`` days, with the
    full history window and at cold start (the model's minimum history). Returns q-risk 0.5
    per horizon, overall and per profile, next to the better baseline on the same windows, and
    95 % bootstrap intervals of the gain from the profile.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = unseen_fleet(model, per_profile, days, seed, Path(tmp))
        everyone = pd.read_parquet(path, columns=["server_name"])["server_name"].astype(str).unique()
        names = set(everyone) - set(model.encoder.name_to_id)
        if agnostic is not None:
            names -= set(agnostic.encoder.name_to_id)
        store = build_features(path, servers=names, encoder=model.encoder, spec=model.spec, dataset_servers=0).store
        other = build_features(path, servers=names, encoder=agnostic.encoder, spec=agnostic.spec,
                               dataset_servers=0).store if agnostic is not None else None
    last = int(store.time_idx.max())
    first = last - days * STEPS_PER_DAY + 1
    servers, starts = store.window_starts(first, last, stride=PROFILE_VALUE_ORIGIN_STRIDE)
    truth = actuals_and_baselines(store, servers, starts)
    profiles = np.array(store.profiles)[servers]
    out: dict[str, Any] = {"servers": len(names), "windows": len(servers), "days": days}
    for history, length in (("full_history", None), ("cold_start", model.spec.min_encoder_length)):
        forecasts = {
            "with_profile": predict_windows(model.model, store, servers, starts, encoder_length=length),
            "profile_hidden": predict_windows(model.model, store, servers, starts, hide_profile=True,
                                              encoder_length=length),
        }
        if other is not None:
            o_servers, o_starts = other.window_starts(first, last, stride=PROFILE_VALUE_ORIGIN_STRIDE)
            if not (np.array(other.server_names)[o_servers] == np.array(store.server_names)[servers]).all() \
                    or not (o_starts == starts).all():
                raise RuntimeError("the agnostic model's windows differ from the model's; are the specs compatible?")
            forecasts["agnostic_model"] = predict_windows(agnostic.model, other, o_servers, o_starts,
                                                          hide_profile=True, encoder_length=length)
        block: dict[str, Any] = {"history_buckets": length or model.spec.encoder_length, "overall": {},
                                 "per_profile": {}}
        for name, values in forecasts.items():
            block["overall"][name] = _qrisk(model.spec, values, truth)
        block["gain_interval_95"] = {name: bootstrap_gain(model.spec, servers, truth[0], forecasts["with_profile"],
                                                          values)
                                     for name, values in forecasts.items() if name != "with_profile"}
        for profile in VALID_PROFILES:
            rows = profiles == profile
            if rows.any():
                subset = tuple(t[rows] for t in truth)
                block["per_profile"][profile] = {name: _qrisk(model.spec, values[rows], subset)
                                                 for name, values in forecasts.items()}
        out[history] = block
    return out


def bootstrap_gain(spec: FeatureSpec, servers: np.ndarray, actual: np.ndarray, with_profile: np.ndarray,
                   without: np.ndarray, resamples: int = PROFILE_VALUE_BOOTSTRAP_RESAMPLES, seed: int = 0
                   ) -> dict[str, tuple[float, float]]:
    """95 % interval of the gain per horizon, resampling whole servers (windows of one server are not independent).

    q-risk 0.5 of a target is ``sum|y - p50| / sum|y|`` over windows; the gain compares the
    target-averaged q-risk of the two forecasts on the same resampled servers.
    """
    p50 = spec.quantiles.index(0.5)
    codes, inverse = np.unique(servers, return_inverse=True)
    rng = np.random.default_rng(seed)
    out = {}
    for label, steps in HORIZONS.items():
        y = actual[:, :, steps - 1].astype(np.float64)  # (W, targets); CPU as used % (the errors do not change)
        for j, target in enumerate(spec.targets):
            y[:, j] = scoring_view(target, y[:, j], y[:, j])[0]
        sums = []
        for forecast in (with_profile, without):
            point = forecast[:, :, steps - 1, p50].astype(np.float64)
            for j, target in enumerate(spec.targets):
                point[:, j] = scoring_view(target, point[:, j], point[:, j])[0]
            error = np.abs(y - point)
            keep = np.isfinite(error)
            per_server = np.zeros((len(codes), y.shape[1], 2))
            np.add.at(per_server[:, :, 0], inverse, np.where(keep, error, 0.0))
            np.add.at(per_server[:, :, 1], inverse, np.where(keep, np.abs(y), 0.0))
            sums.append(per_server)
        gains = np.empty(resamples)
        for i in range(resamples):
            pick = rng.integers(0, len(codes), len(codes))
            risks = [(part[pick, :, 0].sum(0) / np.maximum(part[pick, :, 1].sum(0), 1e-9)).mean() for part in sums]
            gains[i] = _gain(risks[0], risks[1])
        out[label] = (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))
    return out


_SHORT = {"profile_hidden": "hidden", "agnostic_model": "agnostic"}


def format_profile_value(result: dict[str, Any]) -> str:
    """Tables of :func:`measure_profile_value`: overall per horizon, then the gain per profile."""
    lines = [f"{result['servers']} never-seen servers, {result['windows']} windows over {result['days']} day(s)"]
    for history in ("full_history", "cold_start"):
        block = result[history]
        others = [k for k in block["overall"] if k != "with_profile"]
        lines.append("")
        lines.append(f"{history.replace('_', ' ')} ({block['history_buckets']} buckets of history), q-risk 0.5:")
        header = f"  {'horizon':<8}{'profile':>9}" + "".join(f"{k.replace('_', ' '):>16}" for k in others)
        header += f"{'baseline':>10}" + "".join(f"{'gain vs ' + _SHORT[k] + ' [95 %]':>30}" for k in others)
        lines.append(header)
        for label in HORIZONS:
            row = {k: v[label] for k, v in block["overall"].items()}
            text = f"  {label:<8}{row['with_profile']['tft']:>9.3f}"
            text += "".join(f"{row[k]['tft']:>16.3f}" for k in others)
            text += f"{row['with_profile']['baseline']:>10.3f}"
            for k in others:
                low, high = block["gain_interval_95"][k][label]
                gain = _gain(row["with_profile"]["tft"], row[k]["tft"])
                text += f"{gain:>+12.1%} [{low:+.1%}, {high:+.1%}]".rjust(30)
            lines.append(text)
        lines.append("  per profile, gain from the profile (30 min / 1 h / 8 h):")
        for profile, methods in block["per_profile"].items():
            parts = []
            for k in others:
                gains = " / ".join(f"{_gain(methods['with_profile'][h]['tft'], methods[k][h]['tft']):+.1%}"
                                   for h in HORIZONS)
                parts.append(f"vs {_SHORT[k]} {gains}")
            lines.append(f"    {profile:<16}" + "   ".join(parts))
    return "\n".join(lines)


def train_agnostic_model(data: Path, models_dir: Path, trainer_args: list[str] | None = None) -> Path:
    """Train a model that never sees a profile; ``trainer_args`` as for ``main.py train``. Returns its directory.

    Every window of its training, validation and backtest has the profile hidden
    (``TrainSettings.hide_profiles``; ``profile_dropout`` 1.0 records it in ``training_info.json``).
    """
    from tft_trainer import build_arg_parser, settings_from_args, train

    args = build_arg_parser().parse_args(["--data", str(data), "--models-dir", str(models_dir), *(trainer_args or [])])
    settings = dataclasses.replace(settings_from_args(args), profile_dropout=1.0, hide_profiles=True)
    return train(settings).model_dir


# ---------------------------------------------------------------------------- CLI
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the backtest (shared with ``main.py evaluate``)."""
    parser = parser or argparse.ArgumentParser(description="Backtest a model against persistence and seasonal naive.")
    parser.add_argument("--model", type=Path, default=Path("models/latest"), help="model directory")
    parser.add_argument("--data", type=Path, default=Path("training/server_metrics.parquet"))
    parser.add_argument("--since", default=None,
                        help="first forecast bucket (ISO 8601). Default: the model's hold-out start if the data "
                             f"covers it, else the last {HOLDOUT_HOURS} h of the data")
    parser.add_argument("--stride", type=int, default=BACKTEST_ORIGIN_STRIDE, help="buckets between forecast origins")
    parser.add_argument("--out", type=Path, default=None, help="write the full result as JSON here")
    add_statistical_arguments(parser)
    parser.add_argument("--no-store", action="store_true", help=f"do not record the summary in {TRAINING_INFO_FILE}")
    return parser


def add_statistical_arguments(parser: argparse.ArgumentParser) -> None:
    """``--statistical`` / ``--no-statistical`` (shared by evaluate and train)."""
    parser.add_argument("--statistical", default=",".join(STATISTICAL_METHODS),
                        help="statsforecast models scored beside the naive baselines, comma-separated, from "
                             f"{', '.join(STATISTICAL_METHODS_ALL)} (default: %(default)s)")
    parser.add_argument("--no-statistical", action="store_true",
                        help="skip the statistical models (quick runs: they cost seconds to minutes)")


def statistical_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The statistical models the arguments ask for (empty with ``--no-statistical``)."""
    if getattr(args, "no_statistical", False):
        return ()
    methods = tuple(m.strip() for m in str(args.statistical).split(",") if m.strip())
    unknown = [m for m in methods if m not in STATISTICAL_METHODS_ALL]
    if unknown:
        raise ValueError(f"--statistical {','.join(unknown)}: unknown model(s). Fix: use any of "
                         f"{', '.join(STATISTICAL_METHODS_ALL)}, or --no-statistical. "
                         f"See {TRAINING_GUIDE_DOC} (Backtest).")
    return methods


def run_from_args(args: argparse.Namespace) -> int:
    """Backtest from parsed arguments; 0 on success; 2 (raised, ``errors.run_cli``) on a data or model problem."""
    loaded = load_model(args.model)
    frame = load_training_frame(args.data)
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(frame)
    if not is_valid:
        raise UsageError(format_report(args.data, len(frame), False, errors, warnings, 0.0))
    features = build_features(frame, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0)
    frame, store = features.frame, features.store
    data_end = int(frame[TIME_IDX].max())
    if args.since:
        first = int(bucket_of_times(pd.DatetimeIndex([parse_utc(args.since)]))[0])
    else:
        holdout = (loaded.training_info.get("data") or {}).get("holdout_start")
        first = int(bucket_of_times(pd.DatetimeIndex([parse_utc(holdout)]))[0]) if holdout else -1
        if first < int(frame[TIME_IDX].min()) + loaded.spec.encoder_length or first > data_end:
            first = data_end - HOLDOUT_HOURS * STEPS_PER_HOUR + 1
    unseen = sorted(set(store.server_names) - set(loaded.encoder.name_to_id))
    unseen += list((loaded.training_info.get("data") or {}).get("unseen_servers", []))
    scored = measured_metrics_for(args.data)
    if scored is not None and not set(loaded.spec.targets) <= set(scored):
        logger.warning("not scoring %s: not measured in %s (Docs/IMPORTING.md)",
                       ", ".join(t for t in loaded.spec.targets if t not in scored), args.data)
    summary = backtest_store(loaded.model, loaded.spec, store, first, data_end, unseen_servers=unseen,
                             stride=args.stride, scored=scored, statistical=statistical_from_args(args))
    summary["model_dir"] = str(args.model)
    summary["data"] = str(args.data)
    print(format_table(summary))
    if args.out:
        atomic_write_json(args.out, summary)
        print(f"\nFull result: {args.out}")
    if not args.no_store:
        info_path = Path(args.model) / TRAINING_INFO_FILE
        info = read_json(info_path)
        info["backtest"] = summary
        atomic_write_json(info_path, info)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    quiet_library_noise()
    return run_cli(run_from_args, build_arg_parser().parse_args(argv), "evaluate failed")


if __name__ == "__main__":
    sys.exit(main())
