"""The forecast engine: the fleet's windows in, decoded and scored forecasts out.

One cycle (``ForecastEngine.forecast``):

1. sort servers into offline / warming up / ready (enough history for the model);
2. one batched forward pass per history length over the ready servers' windows
   (raw windows -> model rows -> tensors -> quantiles, in slices that stay in cache);
3. decode to display metrics (CPU as used: p10 of used = 100 - p90 of idle), score risk and
   alerts fleet-wide, and build each server's :class:`api_models.ServerPrediction`.

No FastAPI here: the daemon (daemon_state.py), the offline ``forecast_file``, the notebook and
the benchmarks all use this module as it is.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from api_models import FleetPredictions, ForecastSource, ServerPrediction
from config import ENGINE, GROUP_ID, HORIZONS, INTEGER_METRICS, LINBORG_METRICS, QUANTILE_LABELS
from contract import DISPLAY_CPU, bucket_iso, bucket_of_times, cpu_used
from data_validator import DataValidator, format_report
from live_accuracy import BandAdjuster, display_range
from live_selection import LiveSelection, serve_last_value, step_horizons
from metrics_store import FleetWindows
from risk_scoring import score_fleet
from state_rules import STATE_PRECEDENCE
from tft_features import (
    NAN_CODE,
    BatchAssembler,
    FeatureSpec,
    decode_quantiles,
    encode_rows,
    load_training_frame,
    settled_lengths,
    transform_target,
    yesterday_values,
)
from tft_model import LoadedModel, load_model

HORIZON_STEPS = [steps - 1 for steps in HORIZONS.values()]  # decoder rows of 30 min, 1 h, 8 h
SUMMARY_ORDER = ("green", "yellow", "red", "warming_up", "offline", "not_ready")  # /predictions/current "summary"


# ============================================================================ display conversions
def display_forecast(quantiles: np.ndarray, targets: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """(S, targets, D, Q) model quantiles -> display metric -> {p10, p50, p90} arrays (S, D); CPU as used."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for j, name in enumerate(targets):
        if name == "cpu_idle_pct":  # the quantiles flip: p10 of used = 100 - p90 of idle
            out[DISPLAY_CPU] = {"p10": cpu_used(quantiles[:, j, :, 2]), "p50": cpu_used(quantiles[:, j, :, 1]),
                                "p90": cpu_used(quantiles[:, j, :, 0])}
        else:
            out[name] = {label: quantiles[:, j, :, k] for k, label in enumerate(QUANTILE_LABELS)}
    return out


def display_current(values: np.ndarray) -> dict[str, np.ndarray]:
    """(S, 14) bucket values -> display metric -> (S,) values, plus CPU used."""
    current = {name: values[:, i] for i, name in enumerate(LINBORG_METRICS)}
    current[DISPLAY_CPU] = cpu_used(current["cpu_idle_pct"])
    return current


def display_metrics(targets: list[str]) -> list[str]:
    """The model's targets under their display names (cpu_idle_pct -> cpu_used_pct), in order."""
    return [DISPLAY_CPU if t == "cpu_idle_pct" else t for t in targets]


def round_fan(fan: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list[float]]]:
    """One server's fan as JSON-ready lists, 3 decimals (what the API shows)."""
    return {m: {q: np.round(band[q].astype(float), 3).tolist() for q in QUANTILE_LABELS} for m, band in fan.items()}


def recent_display(windows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Display metric -> (S, L): each server's last buckets (its window), CPU as used: what the alert policy
    reads to tell a breach in progress (``alert_quality.breach_in_progress``)."""
    span = min(len(w) for w in windows)
    recent = np.stack([w[-span:] for w in windows])  # (S, span, 14)
    flat = display_current(recent.reshape(-1, recent.shape[-1]))
    return {metric: values.reshape(len(windows), span) for metric, values in flat.items()}


# ============================================================================ results
@dataclass
class ServerResult:
    """What one cycle produced for one server."""

    prediction: ServerPrediction
    fleet_fan: dict[str, dict[str, np.ndarray]] | None = None  # the cycle's (S, D) arrays, shared
    row: int = -1  # this server's row in them
    horizon_blob: bytes | None = None  # (metrics, horizons, quantiles) float32 as served: what the store keeps

    @property
    def fan(self) -> dict[str, dict[str, np.ndarray]] | None:
        """This server's full fan: display metric -> {p10, p50, p90} arrays over the 96 steps."""
        if self.fleet_fan is None:
            return None
        return {m: {q: band[q][self.row] for q in QUANTILE_LABELS} for m, band in self.fleet_fan.items()}


@dataclass
class CycleResult:
    """One forecast cycle for the fleet."""

    origin: int
    prediction_time: str
    servers: dict[str, ServerResult]
    seconds: float
    forecast_count: int
    awaiting: list[str] = field(default_factory=list)  # not forecast: their data for ``origin`` are awaited


def forecast_sources(spec: FeatureSpec) -> dict[str, dict[str, ForecastSource]]:
    """Display metric -> horizon -> where its forecast comes from (``spec.center_weights``; none: the model)."""
    sources: dict[str, dict[str, ForecastSource]] = {}
    for target, metric in zip(spec.targets, display_metrics(spec.targets), strict=True):
        weights = (spec.center_weights or {}).get(target)
        sources[metric] = {}
        for label, steps in HORIZONS.items():
            share = float(weights[steps - 1]) if weights else 1.0
            source = "model" if share >= 1.0 else "last_value" if share <= 0.0 else "model+last_value"
            sources[metric][label] = ForecastSource(source=source, model_share=round(share, 4))
    return sources


def fleet_document(result: CycleResult | None, model_version: str,
                   sources: dict[str, dict[str, ForecastSource]] | None = None) -> FleetPredictions:
    """The /predictions/current document (also pushed on the WebSocket); ``result`` None: no cycle yet."""
    servers: list[ServerPrediction] = []
    if result is not None:
        servers = sorted((r.prediction for r in result.servers.values()),
                         key=lambda p: (-(p.risk_score if p.risk_score is not None else -1), p.server_name))
    summary = dict.fromkeys(SUMMARY_ORDER, 0)
    for p in servers:
        summary[p.risk_level if p.status == "ok" else p.status] += 1
    return FleetPredictions.model_construct(
        prediction_time=result.prediction_time if result else None, model_version=model_version,
        horizons=dict(HORIZONS), sources=sources or {}, summary=summary, servers=servers)


def serve_selected(fan: dict[str, dict[str, np.ndarray]], naive: np.ndarray,
                   current: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The fan as served under live selection: a new dict, the model's arrays left as they were.

    ``naive`` (S, metrics in ``fan``'s order, horizons): where the last value is served, the band of
    each step that horizon covers (``live_selection.step_horizons``) is moved to p50 = the server's
    current value, its width kept (``live_selection.serve_last_value``).
    """
    served = {m: dict(band) for m, band in fan.items()}
    steps = step_horizons(next(iter(fan.values()))["p50"].shape[1])
    for k, metric in enumerate(fan):
        if naive[:, k].any():
            low, high = display_range(metric)
            serve_last_value(served[metric], current[metric], naive[:, k][:, steps], low, high,
                             metric in INTEGER_METRICS)
    return served


def _prediction(base: dict[str, Any], status: str, **fields: Any) -> ServerPrediction:
    """A ServerPrediction from the engine's own (already valid) values, without re-validating them."""
    return ServerPrediction.model_construct(**base, status=status, **fields)


# ============================================================================ the engine
class ForecastEngine:
    """Turns the fleet's windows into one batched forward pass and decoded, scored results."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.assemble = BatchAssembler(loaded.spec)
        self.known = set(loaded.encoder.name_to_id)
        self.model_version = loaded.model_dir.resolve().name
        self.metrics = display_metrics(self.spec.targets)
        self.sources = forecast_sources(self.spec)  # per metric and horizon: model, blend or last value
        self.band_adjuster: BandAdjuster | None = None  # the daemon's live band calibration, if any
        self.selection: LiveSelection | None = None  # the daemon's live selection (model or last value), if any
        loaded.model.return_attention = False  # forecasts only: the fused attention path
        # Bucket states are kept as precedence ranks; the model wants its own category codes.
        self._state_code_of_rank = self.spec.encode("state", STATE_PRECEDENCE)
        self._target_columns = [LINBORG_METRICS.index(t) for t in self.spec.targets]

    def forecast(self, fleet: FleetWindows, origin: int, names: Iterable[str] | None = None,
                 await_late: int = 0) -> CycleResult:
        """Forecast every ready server for the buckets after ``origin`` (the last complete one).

        ``names``: only these servers (the daemon's incremental pass over servers that became ready since
        the cycle for ``origin``); None: the whole fleet. ``await_late``: a server whose newest bucket is
        at most this many buckets before ``origin`` is not forecast over the gap but reported ``not_ready``
        and listed in ``CycleResult.awaiting`` (its data are late; the daemon forecasts it when they arrive).

        The cyclic garbage collector is paused for the cycle: building the results allocates a
        burst of small objects, and a full collection over the daemon's heap in the middle of
        it cost more than the rest of the bookkeeping. Reference counting still frees
        everything; the collector runs again right after.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._forecast(fleet, origin, names, await_late)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _forecast(self, fleet: FleetWindows, origin: int, names: Iterable[str] | None, await_late: int) -> CycleResult:
        began = time.perf_counter()
        enc = self.spec.encoder_length
        prediction_time = bucket_iso(origin)
        results: dict[str, ServerResult] = {}
        ready: list[str] = []
        awaiting: list[str] = []
        windows, states, profiles, lengths, recents, firsts = [], [], [], [], [], []
        servers = fleet.servers.items() if names is None else \
            [(n, fleet.servers[n]) for n in names if n in fleet.servers]
        for name, window in servers:
            last = window.last_sample_bucket()
            base = self._base(name, window.profile, prediction_time, last)
            history = origin - (window.first_bucket or origin) + 1
            if last is None or last < origin - ENGINE.offline_after_buckets:
                results[name] = ServerResult(_prediction(base, "offline"))
            elif history < self.spec.min_encoder_length:
                results[name] = ServerResult(_prediction(
                    base, "warming_up", buckets_needed=self.spec.min_encoder_length - history))
            elif last < origin and origin - last <= await_late:
                awaiting.append(name)
                results[name] = ServerResult(_prediction(
                    base, "not_ready", reason=f"its data for {prediction_time} have not arrived yet; forecast as "
                                              f"soon as they do"))
            else:
                # the encoder's buckets, and yesterday's before them (models with yesterday's inputs)
                recent, recent_states, _ = window.window(origin, min(self.spec.history_buckets, fleet.capacity))
                values, state = recent[-enc:], recent_states[-enc:]
                if not np.isfinite(values).all():  # defence in depth: the feed rejects non-finite values
                    bad = int((~np.isfinite(values)).any(axis=1).sum())
                    results[name] = ServerResult(_prediction(
                        base, "not_ready", reason=f"{bad} of the last {enc} buckets hold non-finite values "
                                                  f"(NaN or Infinity); no forecast until they leave the window"))
                    continue
                if self.spec.seasonal_lag:
                    recents.append(recent)
                    firsts.append(window.first_bucket)
                ready.append(name)
                windows.append(values)
                states.append(state)
                profiles.append(window.profile)
                lengths.append(min(history, enc))
        if ready:
            lengths = self.settled(windows, states, lengths)
            yesterdays = self.yesterdays(recents, origin, firsts) if self.spec.seasonal_lag else None
            quantiles = self.predict_fleet(ready, windows, states, profiles, lengths, origin, yesterdays)
            results.update(self._ready_results(fleet, origin, prediction_time, ready, windows, profiles, lengths,
                                               quantiles))
        return CycleResult(origin=origin, prediction_time=prediction_time, servers=results,
                           seconds=time.perf_counter() - began, forecast_count=len(ready), awaiting=awaiting)

    def yesterdays(self, recents: list[np.ndarray], origin: int, first_buckets: list[int | None]) -> np.ndarray:
        """(S, E+D, targets): each server's yesterday at every window step (``tft_features.yesterday_values``).

        ``recents`` hold each server's buckets up to ``origin`` (the last of them), all of one length;
        buckets before a server's first one, or older than that reaches, do not exist (as before a
        server's first row in ``SeriesStore``), nor do the decoder's: NaN, "not known".
        """
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        history = np.stack(recents)[:, :, self._target_columns]  # (S, span, targets)
        span = history.shape[1]
        buckets = origin - span + 1 + np.arange(span)
        firsts = np.array([origin + 1 if b is None else b for b in first_buckets], dtype=np.int64)
        exists = buckets[None, :] >= firsts[:, None]  # (S, span)
        values = np.full((len(recents), span + dec, len(self.spec.targets)), np.nan)
        for j, target in enumerate(self.spec.targets):
            values[:, :span, j] = np.where(exists, transform_target(target, history[:, :, j], self.spec), np.nan)
        return yesterday_values(values, int(self.spec.seasonal_lag or 0), self.spec.seasonal_half_window, enc + dec)

    def settled(self, windows: list[np.ndarray], states: list[np.ndarray], lengths: list[int]) -> list[int]:
        """Each server's history, cut after a level shift in it (``tft_features.settled_lengths``)."""
        targets = np.stack(windows)[:, :, self._target_columns]
        codes = self._state_code_of_rank[np.stack(states)]
        return np.minimum(lengths, settled_lengths(self.spec, targets, codes)).tolist()

    def _base(self, name: str, profile: str, prediction_time: str, last: int | None) -> dict[str, Any]:
        """The fields every server's entry has, whatever its status."""
        return {"server_name": name, "profile": profile, "known_to_model": name in self.known,
                "prediction_time": prediction_time,
                "last_sample_time": bucket_iso(last) if last is not None else None}

    def predict_fleet(self, names: list[str], windows: list[np.ndarray], states: list[np.ndarray],
                      profiles: list[str], lengths: list[int], origin: int,
                      yesterdays: np.ndarray | None = None) -> np.ndarray:
        """(S, targets, D, Q) quantiles: one forward pass per history length (long-lived servers share one).

        ``yesterdays``: :meth:`yesterdays`' (S, E+D, targets) array (models with yesterday's inputs).
        """
        quantiles = np.empty((len(names), len(self.spec.targets), self.spec.prediction_length,
                              len(self.spec.quantiles)))
        lengths_arr = np.array(lengths)
        for length in np.unique(lengths_arr):
            rows = np.flatnonzero(lengths_arr == length)
            quantiles[rows] = self._predict([names[i] for i in rows], np.stack([windows[i] for i in rows]),
                                            [states[i] for i in rows], [profiles[i] for i in rows], origin,
                                            int(length),
                                            None if yesterdays is None else yesterdays[rows])
        return quantiles

    def _ready_results(self, fleet: FleetWindows, origin: int, prediction_time: str, ready: list[str],
                       windows: list[np.ndarray], profiles: list[str], lengths: list[int],
                       quantiles: np.ndarray) -> dict[str, ServerResult]:
        """Decode, score and summarise the forecast servers, fleet-wide arrays first."""
        fan = display_forecast(quantiles, self.spec.targets)
        if self.band_adjuster is not None:  # what is served and stored is the calibrated band
            self.band_adjuster.apply(fan)
        latest = [fleet.servers[n].current(origin) for n in ready]  # None: no sample in the origin bucket
        values = np.stack([v if v is not None else windows[i][-1] for i, v in enumerate(latest)])
        current = display_current(values)
        metrics = list(fan)
        # (S, metrics, horizons, quantiles): the model's summary, stored and scored when its targets arrive
        summary = self._summary(fan, metrics)
        stored = summary
        naive = self.selection.mask(ready) if self.selection is not None else None  # (S, metrics, horizons)
        if naive is not None and naive.any():  # the last value where the model keeps losing to it (live_selection)
            fan = serve_selected(fan, naive, current)
            summary = self._summary(fan, metrics)
        risks = score_fleet(ready, profiles, current, fan, recent=recent_display(windows),
                            alert_thresholds=self.spec.alert_thresholds)
        rounded = np.round(summary.astype(float), 3).tolist()
        horizon_labels = list(HORIZONS)
        current_rows = {m: np.round(v, 3).tolist() for m, v in current.items()}
        results = {}
        for i, name in enumerate(ready):
            window = fleet.servers[name]
            horizons = {label: {m: dict(zip(QUANTILE_LABELS, rounded[i][k][h], strict=True))
                                for k, m in enumerate(metrics)}
                        for h, label in enumerate(HORIZONS)}
            base = self._base(name, window.profile, prediction_time, window.last_sample_bucket())
            served_last = {} if naive is None or not naive[i].any() else {
                m: [horizon_labels[h] for h in np.flatnonzero(naive[i, k])] for k, m in enumerate(metrics)
                if naive[i, k].any()}
            prediction = _prediction(base, "ok", history_buckets=lengths[i],
                                     current={m: v[i] for m, v in current_rows.items()}, predictions=horizons,
                                     risk_score=risks[i].risk_score, risk_level=risks[i].risk_level,
                                     alerts=risks[i].alerts, last_value_served=served_last)
            results[name] = ServerResult(prediction, fleet_fan=fan, row=i, horizon_blob=stored[i].tobytes())
        return results

    @staticmethod
    def _summary(fan: dict[str, dict[str, np.ndarray]], metrics: list[str]) -> np.ndarray:
        """(S, metrics, horizons, quantiles) float32 at the served horizons."""
        return np.stack([np.stack([fan[m][q][:, HORIZON_STEPS] for q in QUANTILE_LABELS], axis=-1)
                         for m in metrics], axis=1).astype(np.float32)

    def _predict(self, names: list[str], values: np.ndarray, states: list[np.ndarray], profiles: list[str],
                 origin: int, history: int, yesterday: np.ndarray | None = None) -> np.ndarray:
        """(S, E, 14) raw windows -> (S, targets, D, Q) quantiles, reading the last ``history`` buckets.

        Runs in slices of ``ENGINE.inference_chunk_servers`` so each slice's tensors stay in cache.
        """
        slices = -(-len(names) // max(1, ENGINE.inference_chunk_servers))  # ceil; slices of near-equal size
        if slices <= 1:
            return self._predict_slice(names, values, states, profiles, origin, history, yesterday)
        bounds = np.linspace(0, len(names), slices + 1).round().astype(int)
        return np.concatenate([
            self._predict_slice(names[a:b], values[a:b], states[a:b], profiles[a:b], origin, history,
                                None if yesterday is None else yesterday[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def _predict_slice(self, names: list[str], values: np.ndarray, states: list[np.ndarray], profiles: list[str],
                       origin: int, history: int, yesterday: np.ndarray | None = None) -> np.ndarray:
        """One slice of ``_predict``."""
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        n_servers, steps = len(names), enc + dec
        full = np.zeros((n_servers, steps, len(LINBORG_METRICS)))
        full[:, :enc] = values  # decoder rows: unknown future, never read by the model
        time_idx = origin - enc + 1 + np.arange(steps)
        state_rows = np.full((n_servers, steps), NAN_CODE, dtype=np.int64)  # future states: unknown
        state_rows[:, :enc] = self._state_code_of_rank[np.stack(states)]
        profile_codes = self.spec.encode("profile", profiles)
        rows = encode_rows(self.spec, {m: full[:, :, i].reshape(-1) for i, m in enumerate(LINBORG_METRICS)},
                           np.tile(time_idx, n_servers), np.repeat(profile_codes, steps), state_rows.reshape(-1))
        shape = (n_servers, steps)
        groups = self.spec.encode(GROUP_ID, [self.loaded.encoder.name_to_id.get(n, "") for n in names])
        lengths = None if history == enc else np.full(n_servers, history)
        x, _ = self.assemble(rows.reals.reshape(*shape, -1), rows.cats.reshape(*shape, -1),
                             rows.targets.reshape(*shape, -1), rows.targets_tf.reshape(*shape, -1), groups,
                             rows.time_idx.reshape(shape), encoder_lengths=lengths, yesterday_tf=yesterday)
        with torch.inference_mode():
            output = self.loaded.model(x)
        return decode_quantiles(output["prediction"], self.spec)


# ============================================================================ offline mode
def forecast_file(model_dir: Path, data_path: Path) -> dict[str, Any]:
    """Forecast every server of a data file once, from its last complete bucket, without a server.

    The file goes through the same windows as a fed daemon (``FleetWindows``), so the offline
    forecast and the daemon's agree for the same history.
    """
    frame = load_training_frame(data_path)
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(frame)
    if not is_valid:
        raise ValueError(format_report(data_path, len(frame), False, errors, warnings, 0.0))
    engine = ForecastEngine(load_model(model_dir))
    # Only the last window of every server and yesterday's values matter (plus the hour that decides "offline").
    buckets = bucket_of_times(frame["timestamp"])
    frame = frame[buckets > buckets.max() - (engine.spec.history_buckets + ENGINE.offline_after_buckets + 1)]
    records = frame.assign(server_name=frame["server_name"].astype(str), profile=frame["profile"].astype(str),
                           state=frame["state"].astype(str)).to_dict(orient="records")
    fleet = FleetWindows.from_records(records)
    origin = fleet.newest_bucket
    result = engine.forecast(fleet, origin)
    document = fleet_document(result, engine.model_version, engine.sources).model_dump(mode="json")
    document["fans"] = {name: round_fan(r.fan) for name, r in result.servers.items() if r.fan is not None}
    document["steps"] = [bucket_iso(origin + k) for k in range(1, engine.spec.prediction_length + 1)]
    return document
