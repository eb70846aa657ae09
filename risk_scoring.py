"""Risk scores and alerts from current values and the model's quantile forecasts.

The only place risk is computed; every threshold and weight is in config.py (section 8),
and Docs/RISK_SCORING.md walks through examples. In short:

1. Each metric's value is placed in a severity tier (elevated / warning / critical) using
   fleet-wide tiers, replaced per profile where a role has its own "normal" (database I/O
   wait, ML compute I/O wait and CPU, load average per profile).
2. This is done for "now" (current values) and for each forecast horizon, where the value
   is the *worst case within the horizon*: the highest p90 over the next 30 min / 1 h / 8 h
   ("will it breach?"); for CPU the p90 of CPU used, i.e. 100 - p10 of CPU idle.
3. Per horizon, metrics combine like independent chances, ``1 - prod(1 - weight)``, with
   I/O wait weighted extra, and the horizon discounted (the further ahead, the less sure).
4. The server's risk is the worst horizon: 0..1, green < 0.3 <= yellow <= 0.7 < red.
5. Alerts (alert_policy.py): one per metric at warning level or worse, when the chance of
   reaching the tier within 8 h (from the calibrated band) is at least the metric's fitted
   threshold, or when a breach is in progress (the tier held for 10 min). The alert says the
   chance and when ("~35 % chance of >= 90 % within 2 h"). The risk score above is unchanged
   by the policy: it ranks servers, the alerts page people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alert_policy import chance_of, reach_z, thresholds_for, z_for
from alert_quality import breach_in_progress
from api_models import Alert
from config import (
    ALERT_MIN_LEVEL,
    HORIZON_WEIGHT,
    HORIZONS,
    LEVEL_WEIGHT,
    LOAD_TIERS_BY_PROFILE,
    METRIC_LABELS,
    METRIC_WEIGHT_MULTIPLIER,
    PROFILE_RISK_TIERS,
    RISK_HORIZONS,
    RISK_METRICS,
    RISK_RED_ABOVE,
    RISK_TIERS,
    RISK_YELLOW_AT,
    SAMPLING_INTERVAL_MINUTES,
)

LEVEL_ORDER = {"elevated": 1, "warning": 2, "critical": 3}


@dataclass
class RiskResult:
    """A server's risk: score, colour, per-horizon scores, what drives it, and its alerts."""

    risk_score: float
    risk_level: str
    per_horizon: dict[str, float]
    drivers: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


def risk_level(score: float) -> str:
    """Colour band for a 0..1 risk score."""
    if score > RISK_RED_ABOVE:
        return "red"
    if score >= RISK_YELLOW_AT:
        return "yellow"
    return "green"


def tiers_for(metric: str, profile: str) -> list[tuple[float, str]]:
    """Severity tiers (worst first) for a metric on a server of ``profile``."""
    if metric == "load_average":
        return LOAD_TIERS_BY_PROFILE.get(profile, LOAD_TIERS_BY_PROFILE["generic"])
    return PROFILE_RISK_TIERS.get(profile, {}).get(metric, RISK_TIERS.get(metric, []))


def classify(metric: str, profile: str, value: float) -> tuple[str | None, float | None]:
    """(level, threshold) of the worst tier ``value`` reaches, or (None, None)."""
    for threshold, level in tiers_for(metric, profile):
        if value >= threshold:
            return level, threshold
    return None, None


def _value_text(metric: str, value: float) -> str:
    """'34.1%', '512 sockets', '14.2' - a value with its unit."""
    unit = METRIC_LABELS.get(metric, (metric, ""))[1]
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "sockets":
        return f"{value:.0f} sockets"
    return f"{value:.1f}{' ' + unit if unit else ''}"


def _chance_text(probability: float) -> str:
    """'~35 %', '<5 %', '>95 %': rounded to 5 points (a band's chance is an estimate, not a measurement)."""
    rounded = int(round(probability * 20)) * 5
    return "<5 %" if rounded < 5 else ">95 %" if rounded > 95 else f"~{rounded} %"


def _duration_text(minutes: int) -> str:
    hours, mins = divmod(minutes, 60)
    if not hours:
        return f"{mins} min"
    return f"{hours} h" if not mins else f"{hours} h {mins:02d} min"


def _profile_note(metric: str, profile: str) -> str:
    """Where a profile has its own normal, say so (e.g. database I/O wait)."""
    if metric in PROFILE_RISK_TIERS.get(profile, {}) or metric == "load_average":
        tiers = tiers_for(metric, profile)
        if tiers:
            return f"; normal for {profile} below {_value_text(metric, tiers[-1][0])}"
    return ""


_LEVELS = ["elevated", "warning", "critical"]  # codes 1, 2, 3 (0 = no tier reached)


def tier_threshold(metric: str, profile: str, level: str) -> float:
    """The threshold of one tier of ``metric`` for ``profile`` (inf: it has no such tier)."""
    return next((t for t, lv in tiers_for(metric, profile) if lv == level), np.inf)


def breach_tiers(metric: str, profiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(S,) warning tiers and (S,) the level a metric must stay below for an hour before a new breach
    (the elevated tier, or the warning one where a profile has no elevated tier): alert_quality's inputs."""
    warning = np.array([tier_threshold(metric, p, "warning") for p in profiles], dtype=float)
    elevated = np.array([tier_threshold(metric, p, "elevated") for p in profiles], dtype=float)
    return warning, np.minimum(elevated, warning)


def _threshold_columns(metric: str, profiles: list[str]) -> np.ndarray:
    """(S, 3) thresholds of the elevated, warning, critical tiers per server (inf = no such tier)."""
    columns = np.full((len(profiles), len(_LEVELS)), np.inf)
    for profile in set(profiles):
        rows = [i for i, p in enumerate(profiles) if p == profile]
        for threshold, level in tiers_for(metric, profile):
            columns[rows, _LEVELS.index(level)] = threshold
    return columns


def score_fleet(names: list[str], profiles: list[str], current: dict[str, np.ndarray],
                forecast: dict[str, dict[str, np.ndarray]] | None, recent: dict[str, np.ndarray] | None = None,
                alert_thresholds: dict[str, float] | None = None) -> list[RiskResult]:
    """Risk for many servers at once (the forecast cycle scores the whole fleet in one pass).

    ``current``: display metric -> (S,) values now (NaN = not reported). ``forecast``: display
    metric -> {"p10", "p50", "p90": (S, D)} (None when nothing is forecast). ``recent``: display metric -> (S, L)
    the last buckets up to now (``forecast_engine.recent_display``), from which a breach in progress is read
    (``alert_quality.breach_in_progress``; None: from ``current`` alone). ``alert_thresholds``: per metric,
    the chance within 8 h it alerts from (``FeatureSpec.alert_thresholds``; None: the policy's default).
    """
    n = len(names)
    survive = {h: np.ones(n) for h in RISK_HORIZONS}
    findings: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    horizons = [h for h in RISK_HORIZONS if h == "now" or forecast is not None]
    level_weight = np.array([0.0] + [LEVEL_WEIGHT[level] for level in _LEVELS])
    for metric in RISK_METRICS:
        thresholds = _threshold_columns(metric, profiles)  # (S, 3)
        multiplier = METRIC_WEIGHT_MULTIPLIER.get(metric, 1.0)
        for horizon in horizons:
            if horizon == "now":
                if metric not in current:
                    continue
                value = np.asarray(current[metric], dtype=float)
                p50 = eta_source = None
            else:
                if metric not in forecast:
                    continue
                steps = HORIZONS[horizon]
                p90 = np.asarray(forecast[metric]["p90"], dtype=float)[:, :steps]
                worst = np.argmax(p90, axis=1)
                value = p90[np.arange(n), worst]
                p50 = np.asarray(forecast[metric]["p50"], dtype=float)[np.arange(n), worst]
                eta_source = p90
            reached = value[:, None] >= thresholds  # (S, 3); NaN compares False
            code = np.where(reached[:, 2], 3, np.where(reached[:, 1], 2, np.where(reached[:, 0], 1, 0)))
            weight = np.minimum(1.0, level_weight[code] * multiplier)
            survive[horizon] *= 1.0 - weight
            for i in np.flatnonzero(code):
                threshold = float(thresholds[i, code[i] - 1])
                eta = None
                if eta_source is not None:
                    crossing = np.flatnonzero(eta_source[i] >= threshold)
                    eta = int((crossing[0] + 1) * SAMPLING_INTERVAL_MINUTES) if len(crossing) else None
                findings[i].append({"metric": metric, "horizon": horizon, "level": _LEVELS[code[i] - 1],
                                    "value": float(value[i]), "threshold": threshold,
                                    "p50": None if p50 is None else float(p50[i]), "eta": eta,
                                    "weight": float(weight[i])})
    if recent is None:
        recent = {m: np.asarray(v, dtype=float)[:, None] for m, v in current.items()}
    alerts = _policy_findings(n, profiles, current, recent, forecast,
                              thresholds_for(list(forecast or {}), alert_thresholds))
    results = []
    for i in range(n):
        per_horizon = {h: round(HORIZON_WEIGHT[h] * (1.0 - float(survive[h][i])), 4) for h in horizons}
        score = max(per_horizon.values())
        drivers = sorted(findings[i], key=lambda f: (-f["weight"] * HORIZON_WEIGHT[f["horizon"]],
                                                     RISK_HORIZONS.index(f["horizon"])))
        results.append(RiskResult(risk_score=round(float(score), 4), risk_level=risk_level(score),
                                  per_horizon=per_horizon, drivers=drivers[:5],
                                  alerts=_alerts(names[i], profiles[i], alerts[i])))
    return results


_ALERT_LEVELS = [lv for lv in reversed(_LEVELS) if LEVEL_ORDER[lv] >= LEVEL_ORDER[ALERT_MIN_LEVEL]]  # worst first


def _horizon_of(step: int) -> str:
    """The shortest forecast horizon that contains decoder step ``step`` (0-based)."""
    return next((h for h, steps in HORIZONS.items() if step < steps), list(HORIZONS)[-1])


def _policy_findings(n: int, profiles: list[str], current: dict[str, np.ndarray], recent: dict[str, np.ndarray],
                     forecast: dict[str, dict[str, np.ndarray]] | None,
                     thresholds: dict[str, float]) -> list[list[dict[str, Any]]]:
    """Per server, the alert findings of the policy (alert_policy.py): a breach in progress, or a chance
    of reaching a tier within 8 h at least the metric's threshold; the worst level of each, per metric."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for metric in RISK_METRICS:
        tiers = _threshold_columns(metric, profiles)  # (S, 3) elevated, warning, critical
        series = recent.get(metric)
        band = (forecast or {}).get(metric)
        elevated = np.minimum(tiers[:, 0], tiers[:, 1])
        for level in _ALERT_LEVELS:
            column = tiers[:, _LEVELS.index(level)]
            if series is not None and np.isfinite(column).any():
                now = np.asarray(current.get(metric, series[:, -1]), dtype=float)
                going = breach_in_progress(series, column, np.minimum(elevated, column))[:, -1]
                for i in np.flatnonzero(going):
                    out[i].append({"metric": metric, "horizon": "now", "level": level, "value": float(now[i]),
                                   "held": float(np.nanmax(series[i])), "threshold": float(column[i]), "p50": None,
                                   "eta": None, "probability": 1.0})
            if band is None or not np.isfinite(column).any():
                continue
            z = reach_z(band, column)  # (S, D): the chance falls as z grows, so compare distances
            peak = np.argmin(z, axis=1)
            best = chance_of(z[np.arange(n), peak])
            theta = thresholds.get(metric, 1.0)
            limit = z_for(theta)
            for i in np.flatnonzero(best >= theta):
                first = int(np.flatnonzero(z[i] <= limit)[0]) if (z[i] <= limit).any() else int(peak[i])
                out[i].append({"metric": metric, "horizon": _horizon_of(first), "level": level,
                               "value": float(band["p90"][i, peak[i]]), "threshold": float(column[i]),
                               "p50": float(band["p50"][i, peak[i]]), "probability": float(best[i]),
                               "eta": int((first + 1) * SAMPLING_INTERVAL_MINUTES),
                               "within": int((peak[i] + 1) * SAMPLING_INTERVAL_MINUTES)})
    return out


def score_server(server_name: str, profile: str, current: dict[str, float],
                 forecast: dict[str, dict[str, np.ndarray]] | None) -> RiskResult:
    """Risk for one server.

    ``current``: display metric -> value now. ``forecast``: display metric -> {"p10", "p50",
    "p90"} arrays over the next steps (None when the server has no forecast yet).
    """
    one_current = {m: np.array([float(v)]) for m, v in current.items()}
    one_forecast = None if forecast is None else {
        m: {q: np.asarray(band[q], dtype=float)[None, :] for q in ("p10", "p50", "p90")}
        for m, band in forecast.items()}
    return score_fleet([server_name], [profile], one_current, one_forecast)[0]


def _alerts(server_name: str, profile: str, findings: list[dict[str, Any]]) -> list[Alert]:
    """One alert per metric: its most severe level, at the earliest horizon showing it."""
    best: dict[str, dict[str, Any]] = {}
    for f in findings:
        if LEVEL_ORDER[f["level"]] < LEVEL_ORDER[ALERT_MIN_LEVEL]:
            continue
        key = (-LEVEL_ORDER[f["level"]], RISK_HORIZONS.index(f["horizon"]))
        if f["metric"] not in best or key < best[f["metric"]]["_key"]:
            best[f["metric"]] = {**f, "_key": key}
    alerts = []
    for metric, f in best.items():
        name = METRIC_LABELS.get(metric, (metric, ""))[0]
        limit = f"{f['level']} at {_value_text(metric, f['threshold'])}{_profile_note(metric, profile)}"
        if f["horizon"] == "now" and f["value"] >= f["threshold"]:
            reason = f"{name} is {_value_text(metric, f['value'])} now ({limit})"
        elif f["horizon"] == "now":  # below the tier this bucket, but not yet an hour below the elevated one
            reason = (f"{name} breach in progress: up to {_value_text(metric, f['held'])} recently, "
                      f"{_value_text(metric, f['value'])} now ({limit}; it ends after an hour below the "
                      f"elevated tier)")
        else:
            reason = (f"{name}: {_chance_text(f['probability'])} chance of >= {_value_text(metric, f['threshold'])} "
                      f"within {_duration_text(f['within'])} (then p50 {_value_text(metric, f['p50'])}, "
                      f"p90 {_value_text(metric, f['value'])}) - {limit}")
        alerts.append(Alert(server_name=server_name, profile=profile, level=f["level"], metric=metric,
                            horizon=f["horizon"], predicted_value=round(f["value"], 3),
                            threshold=float(f["threshold"]), p50=None if f["p50"] is None else round(f["p50"], 3),
                            minutes_to_breach=f["eta"], reason=reason, probability=round(f["probability"], 3)))
    alerts.sort(key=lambda a: (-LEVEL_ORDER[a.level], RISK_HORIZONS.index(a.horizon), a.metric))
    return alerts

