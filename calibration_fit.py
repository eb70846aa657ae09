"""Calibration fitting: a training step that tunes a fitted model on its validation days.

The trainer runs it after the last epoch (``main.py train``; ``--no-calibration`` skips it), and
``calibrate_model_dir`` runs it on a saved model. In this order:

* the persistence blend (:func:`fit_persistence_blend`): per target and decoder step, how much
  of the model's forecast change from the last value to keep, shrunk to the last value unless
  the gain is significant (Diebold-Mariano over hourly blocks);
* the conformal p10/p90 offsets (:func:`fit_band_offsets`) of the blended forecasts.

Both are stored in the model's ``FeatureSpec`` and applied by the model itself, so the backtest
(``tft_evaluate``), the offline forecast and the daemon serve the same calibrated forecast. This
module forecasts windows with the backtest's primitives and never imports the trainer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from common_utils import atomic_write_json
from config import (
    BAND_CALIBRATION,
    CALIBRATION,
    HORIZONS,
    INTEGER_METRICS,
    METRIC_RANGES,
    MODEL_CONFIG_FILE,
    QUANTILES,
    STEPS_PER_HOUR,
    TRAINING_GUIDE_DOC,
)
from scoring import diebold_mariano, significantly
from tft_evaluate import actuals_and_baselines, predict_windows
from tft_features import (
    FeatureSpec,
    SeriesStore,
    build_features,
    encoder_center_scale,
    inverse_transform_target,
    level_ceiling,
    transform_target,
)
from tft_model import FleetTFT, load_model

logger = logging.getLogger(__name__)


def fit_calibration(model: FleetTFT, spec: FeatureSpec, store: SeriesStore, first_decoder_tidx: int,
                    last_decoder_tidx: int, seed: int = 0, blend: bool = CALIBRATION.persistence_blend,
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
    if len(servers) > CALIBRATION.band_max_windows:
        pick = np.sort(np.random.default_rng(seed).choice(len(servers), CALIBRATION.band_max_windows, replace=False))
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
    metrics); ``w`` is the value of ``CALIBRATION.persistence_blend_grid`` with the smallest absolute error of
    p50 over these windows in each window's normalised units (over its spread ``scale``, as the
    training loss: every window counts alike, so a few bursty servers do not decide the fleet's
    blend). A ``w`` below 1 is kept only where it lowers that error by at least
    ``CALIBRATION.persistence_blend_min_gain`` (the model alone otherwise). Then the forecast is shrunk to the
    last value (``w = 0``) unless its gain over the last value is significant: the Diebold-Mariano
    statistic of the hourly mean loss differences (windows pooled by the hour of their origin,
    ``origin_hours``; :func:`scoring.diebold_mariano` over the step's horizon in hours) must pass a
    one-sided test at ``CALIBRATION.persistence_blend_significance``. A model that only ties the last value on
    its validation days is not served as if it beat it. ``anchor`` and ``scale`` are (W, T), transformed units;
    without ``origin_hours`` every window is its own block.
    """
    grid = np.asarray(CALIBRATION.persistence_blend_grid, dtype=np.float64)
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
        chosen = np.where(gain >= CALIBRATION.persistence_blend_min_gain, grid[best], 1.0)
        # the chosen blend against the last value, window by window, then hour by hour
        difference = np.where(valid, np.abs(truth - chosen * change) - np.abs(truth), 0.0) / scale[:, j, None]
        counts = np.stack([np.bincount(block, weights=valid[:, d].astype(np.float64), minlength=n_blocks)
                           for d in range(truth.shape[1])])  # (D, B)
        sums = np.stack([np.bincount(block, weights=difference[:, d], minlength=n_blocks)
                         for d in range(truth.shape[1])])
        means = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
        tests = [diebold_mariano(means[d], -(-(d + 1) // STEPS_PER_HOUR)) for d in range(len(means))]
        significant = np.array([bool(significantly(t, df, CALIBRATION.persistence_blend_significance, lower=True))
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
    quantile (split conformal, each side on its own), bounded by ``CALIBRATION.band_max_shift``.
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
        bound = CALIBRATION.band_max_shift
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

    For a model trained without calibration (or by a release older than the calibration step); ``data`` must be data the
    model may see (its own training file: the trainer uses its validation hours). Saves them into
    the model's config.json and returns the spec.
    """
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
