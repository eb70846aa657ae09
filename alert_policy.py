"""The alert policy: the chance of reaching a tier, from the forecast's calibrated quantiles.

The forecast gives p10 / p50 / p90 per 5-minute step. Their spread is read as a two-piece normal
around p50: above p50 its width is (p90 - p50) / z90, below it (p50 - p10) / z90 (z90 = the 90th
percentile of the standard normal), so P(value >= threshold) at a step is 1 - Phi((threshold - p50) / width).
The chance of reaching the threshold *within* a horizon is the largest of these over its steps (the
steps of one forecast move together: the highest single-step chance, not their union).

A metric alerts when that chance within 8 h reaches its threshold: fitted per metric on the model's
validation days to the false-alarm budget (``alert_fitting.py``; ``FeatureSpec.alert_thresholds``),
else ``ALERT_POLICY.default_threshold``. A 10 % chance 7 h away is then not a page, a 90 % chance in
20 minutes is. A breach in progress always alerts (``alert_quality.breach_in_progress``: from the tier held
10 min until the metric has been an hour below its elevated tier, the breach definition's own span).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from config import ALERT_POLICY


def exceedance_z(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """The threshold's distance above p50 in the band's spread on its side (the chance is ``ndtr(-z)``,
    decreasing in z); +inf where the threshold or p50 is not finite, or a zero-width band lies below it."""
    p10, p50, p90 = (np.asarray(a, dtype=float) for a in (p10, p50, p90))
    threshold = np.asarray(threshold, dtype=float)
    width = np.where(threshold >= p50, p90 - p50, p50 - p10) / ALERT_POLICY.z90
    distance = threshold - p50
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(width > 0, distance / np.where(width > 0, width, 1.0), np.where(distance > 0, np.inf, -np.inf))
    return np.where(np.isfinite(threshold) & np.isfinite(p50), z, np.inf)


def exceedance(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """P(value >= threshold) per element (arrays broadcast; a (S,) threshold against (S, D) bands: pass
    ``threshold[:, None]``). A band of zero width is a certainty either way; NaN thresholds give 0."""
    return ndtr(-exceedance_z(p10, p50, p90, threshold))


def chance_of(z: np.ndarray) -> np.ndarray:
    """The chance a distance ``z`` (:func:`exceedance_z`) stands for."""
    return ndtr(-np.asarray(z, dtype=float))


def z_for(chance: float) -> float:
    """The distance at which the chance is exactly ``chance`` (chance >= c  <=>  z <= z_for(c))."""
    return float(-ndtri(chance))


def reach_profile(band: dict[str, np.ndarray], threshold: np.ndarray) -> np.ndarray:
    """(S, D): the chance each server's metric is at or above its ``threshold`` (S,) at each forecast step."""
    return chance_of(reach_z(band, threshold))


def reach_z(band: dict[str, np.ndarray], threshold: np.ndarray) -> np.ndarray:
    """(S, D): :func:`exceedance_z` of each step (the daemon compares these, one chance per server)."""
    return exceedance_z(band["p10"], band["p50"], band["p90"], np.asarray(threshold, dtype=float)[:, None])


def within(profile: np.ndarray, steps: int) -> np.ndarray:
    """(S,): the chance of reaching the threshold within the first ``steps`` steps (their largest chance)."""
    return profile[:, :steps].max(axis=1) if profile.shape[1] else np.zeros(len(profile))


def thresholds_for(metrics: list[str], fitted: dict[str, float] | None) -> dict[str, float]:
    """Per metric, the probability threshold it alerts from: the fitted one, else the default."""
    return {m: float((fitted or {}).get(m, ALERT_POLICY.default_threshold)) for m in metrics}
