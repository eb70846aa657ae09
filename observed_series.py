"""What a Grafana panel needs beside the forecasts on the daemon's /metrics: the actuals, the tiers, the ages.

A forecast series alone cannot be judged: a panel draws it over what happened, against the
thresholds that decide alerts. :class:`ObservedSeries` is a prometheus_client collector on the
daemon's registry that, at each scrape, reads what the last cycle published (no work in the cycle,
nothing new in memory) and exposes, in the forecast series' own base units and labels:

* ``tft_observed_<what>_<unit>{server, profile, instance}``: the value of the bucket the last cycle
  forecast from (its origin), per forecast metric (``tft_forecast_cpu_used_ratio`` ->
  ``tft_observed_cpu_used_ratio``). A forecast made ``h`` ago for now is
  ``tft_forecast_..{horizon_seconds="h"} offset h``: the panel's line against this one.
* ``tft_risk_threshold_<what>_<unit>{profile, level}``: the risk tiers (warning, critical, elevated)
  per profile, from ``config.py`` through ``risk_scoring.tiers_for`` (the only place that decides them).
* ``tft_model_trained_timestamp_seconds`` (when the served model was trained) and
  ``tft_forecast_origin_timestamp_seconds`` (the data time of the last cycle's origin bucket): ages are
  ``time() - x``, Prometheus' convention for timestamps.

Docs/API_REFERENCE.md (Prometheus) lists them; deploy/grafana/ draws them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from config import PROM_FORECAST_SERIES, SAMPLING_INTERVAL_SECONDS, VALID_PROFILES
from risk_scoring import tiers_for

logger = logging.getLogger(__name__)
FORECAST_PREFIX = "tft_forecast_"
OBSERVED_PREFIX = "tft_observed_"
THRESHOLD_PREFIX = "tft_risk_threshold_"
SERVER_LABELS = ["server", "profile", "instance"]  # as the forecast series (daemon_state.SERVER_LABELS)


def observed_name(metric: str) -> str:
    """The observed series of an API metric: ``cpu_used_pct`` -> ``tft_observed_cpu_used_ratio``."""
    return PROM_FORECAST_SERIES[metric][0].replace(FORECAST_PREFIX, OBSERVED_PREFIX, 1)


def threshold_name(metric: str) -> str:
    """The risk-tier series of an API metric: ``cpu_used_pct`` -> ``tft_risk_threshold_cpu_used_ratio``."""
    return PROM_FORECAST_SERIES[metric][0].replace(FORECAST_PREFIX, THRESHOLD_PREFIX, 1)


class ObservedSeries:
    """A prometheus_client custom collector over a :class:`daemon_state.Daemon` (register it on its registry)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self._trained: tuple[str, float | None] = ("", None)  # (trained_at text, epoch seconds), parsed once

    def describe(self) -> list[Any]:
        """Nothing up front: the families depend on what the cycle published (and registering must not collect)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The observed values, the tiers and the two timestamps, as they stand now."""
        from prometheus_client.core import GaugeMetricFamily

        yield from self._observed(GaugeMetricFamily)
        for metric, (_, factor) in PROM_FORECAST_SERIES.items():
            family = GaugeMetricFamily(threshold_name(metric), f"Risk tier of {metric} (base unit) per profile and "
                                       f"level, from config.py", labels=["profile", "level"])
            for profile in VALID_PROFILES:
                for threshold, level in tiers_for(metric, profile):
                    family.add_metric([profile, level], float(threshold) * factor)
            if family.samples:
                yield family
        engine = self.daemon.engine
        trained = self._trained_epoch(engine.loaded.training_info.get("trained_at") if engine else None)
        if trained is not None:
            yield GaugeMetricFamily("tft_model_trained_timestamp_seconds", "When the served model was trained "
                                    "(Unix time); its age is time() - this", value=trained)
        cycle = self.daemon.published.result
        if cycle is not None:
            yield GaugeMetricFamily("tft_forecast_origin_timestamp_seconds", "Start of the bucket the last cycle "
                                    "forecast from (data time, Unix time)",
                                    value=float(cycle.origin * SAMPLING_INTERVAL_SECONDS))

    def _observed(self, family_type: Any) -> Iterator[Any]:
        cycle = self.daemon.published.result
        if cycle is None:
            return
        families = {metric: family_type(observed_name(metric), f"{metric} of the bucket the last cycle forecast from "
                                        f"(base unit)", labels=SERVER_LABELS) for metric in PROM_FORECAST_SERIES}
        for name, result in cycle.servers.items():
            prediction = result.prediction
            if prediction.status != "ok":
                continue
            labels = [name, prediction.profile, self.daemon.instances.get(name) or ""]
            for metric, value in prediction.current.items():
                if metric in families and value is not None:
                    families[metric].add_metric(labels, float(value) * PROM_FORECAST_SERIES[metric][1])
        yield from (family for family in families.values() if family.samples)

    def _trained_epoch(self, trained_at: str | None) -> float | None:
        if not trained_at:
            return None
        if self._trained[0] != trained_at:
            try:
                epoch: float | None = datetime.fromisoformat(trained_at).timestamp()
            except ValueError:
                logger.warning("training_info.json trained_at %r is not ISO 8601; tft_model_trained_timestamp_seconds "
                               "is left out", trained_at)
                epoch = None
            self._trained = (trained_at, epoch)
        return self._trained[1]
