"""Fit the alert policy's probability thresholds on a model's validation days (a training step).

For every validation origin (every 5-minute bucket, as the daemon forecasts) the calibrated model
forecasts each server; :mod:`alert_policy` turns each forecast into the chance of reaching the metric's
warning tier within 8 h. For each candidate threshold of ``ALERT_POLICY.grid`` the alerts that policy
would have raised (that chance at or above it, or a breach in progress) are held open as the daemon's
lifecycle holds them and scored against the breaches of the same days (:mod:`alert_quality`). Per
metric, the lowest threshold whose false episodes stay within ``false_episodes_per_server_week`` is
kept: the most warnings the false-alarm budget allows. A metric that never fits (or has no tier)
keeps the default.

Called by the trainer after the band calibration (``tft_trainer.train``) and by
:func:`fit_model_dir` for a model trained before 0.16 (``main.py``-free: a benchmark may call it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from alert_policy import reach_profile, within
from alert_quality import breach_in_progress, breach_onsets, hold_open, score_rule
from common_utils import atomic_write_json
from config import ALERT_POLICY, MODEL_CONFIG_FILE, STEPS_PER_HOUR
from contract import cpu_used
from forecast_engine import display_forecast, display_metrics
from risk_scoring import breach_tiers
from tft_evaluate import predict_windows
from tft_features import FeatureSpec, SeriesStore, build_features
from tft_model import FleetTFT, load_model

logger = logging.getLogger(__name__)


def _display_series(store: SeriesStore, target_index: int, target: str, server: int) -> np.ndarray:
    rows = slice(store.offsets[server], store.offsets[server] + store.lengths[server])
    values = store.targets[rows, target_index].astype(float)
    return cpu_used(values) if target == "cpu_idle_pct" else values


def fit_alert_thresholds(model: FleetTFT, spec: FeatureSpec, store: SeriesStore, first_decoder_tidx: int,
                         last_decoder_tidx: int, seed: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
    """Per display metric, the probability threshold that meets the false-alarm budget on these days.

    ``model`` must already carry its calibration (``model.set_calibration(spec)``). Returns the
    thresholds and a report (per metric and candidate: false episodes per server-week, breaches warned).
    """
    rng = np.random.default_rng(seed)
    servers_all = np.arange(store.n_servers)
    if len(servers_all) > ALERT_POLICY.fit_max_servers:
        servers_all = np.sort(rng.choice(servers_all, ALERT_POLICY.fit_max_servers, replace=False))
    servers, starts = store.window_starts(first_decoder_tidx, last_decoder_tidx)
    keep = np.isin(servers, servers_all)
    servers, starts = servers[keep], starts[keep]
    budget = ALERT_POLICY.false_episodes_per_server_week
    report: dict[str, Any] = {"budget_false_episodes_per_server_week": budget, "windows": int(len(servers)),
                              "metrics": {}}
    if len(servers) == 0:
        logger.warning("no validation window to fit the alert thresholds on: every metric keeps the default %.2f",
                       ALERT_POLICY.default_threshold)
        return {}, report
    fan = display_forecast(predict_windows(model, store, servers, starts).astype(np.float64), spec.targets)
    enc = spec.encoder_length
    thresholds: dict[str, float] = {}
    for j, (target, metric) in enumerate(zip(spec.targets, display_metrics(spec.targets), strict=True)):
        profiles = [store.profiles[s] for s in servers]
        warning = breach_tiers(metric, profiles)[0]
        if not np.isfinite(warning).any():
            continue
        chance = within(reach_profile(fan[metric], warning), spec.prediction_length)  # (W,)
        rows = _timelines(store, j, target, metric, servers, starts, enc, chance)
        if rows is None:
            continue
        chances, now_raised, onsets, first = rows
        scores = {}
        for theta in ALERT_POLICY.grid:
            opened = hold_open((chances >= theta) | now_raised)
            score = score_rule(opened, onsets, first=first)
            weeks = score.server_days / 7.0
            scores[theta] = {"false_per_server_week": round(score.false_episodes / weeks, 3) if weeks else None,
                             **{k: score.summary()[k] for k in ("breaches", "warned", "timely", "episodes")}}
        fitting = [t for t in ALERT_POLICY.grid if (scores[t]["false_per_server_week"] or 0.0) <= budget]
        if not any(v["episodes"] for v in scores.values()):
            # no alert at any candidate: these days say nothing about the metric's false alarms
            thresholds[metric], why = ALERT_POLICY.default_threshold, "no alert on the validation days: the default"
        elif fitting:
            thresholds[metric], why = float(fitting[0]), "the lowest candidate within the budget"
        else:
            thresholds[metric], why = float(ALERT_POLICY.grid[-1]), "no candidate within the budget: the highest"
        report["metrics"][metric] = {"threshold": thresholds[metric], "why": why,
                                     "candidates": {str(t): v for t, v in scores.items()}}
        chosen = scores.get(thresholds[metric], {})
        logger.info("alert threshold for %s: %.2f, %s (validation: %s false episodes per server-week, budget "
                    "%.1f; %s of %s breaches warned)", metric, thresholds[metric], why,
                    chosen.get("false_per_server_week"), budget, chosen.get("warned"), chosen.get("breaches"))
    return thresholds, report


def _timelines(store: SeriesStore, j: int, target: str, metric: str, servers: np.ndarray, starts: np.ndarray,
               enc: int, chance: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Per server, the chance at each origin, breaches in progress and breach onsets on one time axis.

    Returns (chances, now_raised, onsets) as (S, T) over the buckets from an hour before the first
    origin to the last, and the index of the first origin in them.
    """
    unique = np.unique(servers)
    lead_in = STEPS_PER_HOUR  # an hour of actuals before the first origin: a breach needs a quiet hour first
    spans = {}
    for s in unique:
        origins = starts[servers == s] + enc - 1  # rows within the server
        spans[s] = (int(origins.min()), int(origins.max()))
    length = max(b - a for a, b in spans.values()) + 1 + lead_in
    shape = (len(unique), length)
    chances = np.zeros(shape)
    values = np.full(shape, np.nan)
    warning, elevated = breach_tiers(metric, [store.profiles[s] for s in unique])
    for k, s in enumerate(unique):
        a, b = spans[s]
        series = _display_series(store, j, target, s)
        lo = max(0, a - lead_in)
        part = series[lo:b + 1]
        values[k, lead_in - (a - lo):lead_in - (a - lo) + len(part)] = part
        mine = servers == s
        chances[k, lead_in + (starts[mine] + enc - 1 - a)] = chance[mine]
    now_raised = breach_in_progress(values, warning, elevated)  # as the engine's "now"
    now_raised[:, :lead_in] = False
    onsets = breach_onsets(values, warning, elevated)
    return chances, now_raised, onsets, lead_in


def fit_model_dir(model_dir: Path, data: Path, hours: int) -> dict[str, float]:
    """Fit and save the alert thresholds of a saved model on the last ``hours`` of ``data`` (data the model
    may see: its own training file, whose last hours were its validation days). For models before 0.16."""
    import json

    loaded = load_model(model_dir)
    store = build_features(data, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0).store
    last = int(store.time_idx.max())
    thresholds, _ = fit_alert_thresholds(loaded.model, loaded.spec, store, last - hours * STEPS_PER_HOUR + 1, last)
    path = Path(model_dir) / MODEL_CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["feature_spec"]["alert_thresholds"] = thresholds or None
    atomic_write_json(path, config)
    return thresholds

