"""Backtest a saved model against baselines measured in the same run.

    python main.py evaluate --model models/latest --data training/server_metrics.parquet
    python tft_evaluate.py --model models/latest --data new_day.parquet --out backtest.json

For forecast origins every ``EVALUATION.backtest_origin_stride`` buckets inside a held-out time range
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

``profile_study.py`` asks the same on a freshly generated fleet of servers the model has never
seen, against a profile-agnostic model too. Calibration fitting, a training step that uses this
module's window forecasts, is ``calibration_fit.py``; this module never imports the trainer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from baselines import statistical_forecasts, statistical_option
from cli_options import add_options, option, settings_from
from common_utils import atomic_write_json, parse_utc, quiet_library_noise, read_json, setup_logging
from config import (
    DISPLAY_CPU,
    EVALUATION,
    HOLDOUT_HOURS,
    HORIZONS,
    IMPORTING_DOC,
    LATEST_MODEL_DIR,
    LINBORG_METRICS,
    LIVE_SELECTION,
    QRISK_DENOMINATOR_FLOOR,
    QUANTILE_LABELS,
    QUANTILES,
    STEPS_PER_HOUR,
    TIME_IDX,
    TRAINING_DATA_PATH,
    TRAINING_GUIDE_DOC,
    TRAINING_INFO_FILE,
)
from contract import bucket_of_times, bucket_start, cpu_used
from data_validator import DataValidator, format_report
from errors import UsageError, run_cli
from forecast_engine import display_forecast, display_metrics, serve_selected
from live_accuracy import LIVE_TERMS, BandAdjuster, display_values, live_terms
from live_selection import LiveSelection
from scoring import score_from_sums, score_terms
from tft_features import (
    FeatureSpec,
    SeriesStore,
    build_features,
    decode_quantiles,
    load_training_frame,
)
from tft_model import FleetTFT, load_model
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
    seasonal_rows = decoder_rows - EVALUATION.seasonal_lag_steps
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
                   stride: int = EVALUATION.backtest_origin_stride, scored: list[str] | None = None,
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


def relative_gain(ours: float, theirs: float) -> float:
    """How much lower ``ours`` is than ``theirs`` (q-risk), as a share of ``theirs``: 0.1 = 10 % better."""
    return 1.0 - ours / max(theirs, 1e-12)


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
            label: relative_gain(with_profile[label]["qrisk_50_mean"]["tft"], without[label]["qrisk_50_mean"]["tft"])
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


# ---------------------------------------------------------------------------- CLI
@dataclass
class BacktestSettings:
    """What ``main.py evaluate`` backtests, and how (each field is its flag, cli_options.py)."""

    model: Path = option(LATEST_MODEL_DIR, "model directory", parse=Path)
    data: Path = option(TRAINING_DATA_PATH, "LINBORG Parquet holding the backtest range", parse=Path)
    since: str | None = option(None, "first forecast bucket (ISO 8601). Default: the model's hold-out start if the "
                               f"data covers it, else the last {HOLDOUT_HOURS} h of the data")
    stride: int = option(EVALUATION.backtest_origin_stride, "buckets between forecast origins", parse=int)
    out: Path | None = option(None, "write the full result as JSON here", parse=Path)
    statistical: tuple[str, ...] = statistical_option()
    store_summary: bool = option(True, f"do not record the summary in {TRAINING_INFO_FILE}", flag="--no-store")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the backtest (shared with ``main.py evaluate``): the fields of :class:`BacktestSettings`."""
    parser = parser or argparse.ArgumentParser(description="Backtest a model against persistence and seasonal naive.")
    return add_options(parser, BacktestSettings)


def run_from_args(args: argparse.Namespace) -> int:
    """Backtest from parsed arguments; 0 on success; 2 (raised, ``errors.run_cli``) on a data or model problem."""
    settings = settings_from(BacktestSettings, args)
    loaded = load_model(settings.model)
    frame = load_training_frame(settings.data)
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(frame)
    if not is_valid:
        raise UsageError(format_report(settings.data, len(frame), False, errors, warnings, 0.0))
    features = build_features(frame, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0)
    frame, store = features.frame, features.store
    data_end = int(frame[TIME_IDX].max())
    if settings.since:
        first = int(bucket_of_times(pd.DatetimeIndex([parse_utc(settings.since)]))[0])
    else:
        holdout = (loaded.training_info.get("data") or {}).get("holdout_start")
        first = int(bucket_of_times(pd.DatetimeIndex([parse_utc(holdout)]))[0]) if holdout else -1
        if first < int(frame[TIME_IDX].min()) + loaded.spec.encoder_length or first > data_end:
            first = data_end - HOLDOUT_HOURS * STEPS_PER_HOUR + 1
    unseen = sorted(set(store.server_names) - set(loaded.encoder.name_to_id))
    unseen += list((loaded.training_info.get("data") or {}).get("unseen_servers", []))
    scored = measured_metrics_for(settings.data)
    if scored is not None and not set(loaded.spec.targets) <= set(scored):
        logger.warning("not scoring %s: not measured in %s (Docs/IMPORTING.md)",
                       ", ".join(t for t in loaded.spec.targets if t not in scored), settings.data)
    summary = backtest_store(loaded.model, loaded.spec, store, first, data_end, unseen_servers=unseen,
                             stride=settings.stride, scored=scored, statistical=settings.statistical)
    summary["model_dir"] = str(settings.model)
    summary["data"] = str(settings.data)
    print(format_table(summary))
    if settings.out:
        atomic_write_json(settings.out, summary)
        print(f"\nFull result: {settings.out}")
    if settings.store_summary:
        info_path = Path(settings.model) / TRAINING_INFO_FILE
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
