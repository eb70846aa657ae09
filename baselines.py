"""Statistical baseline forecasts for the backtest (Nixtla statsforecast).

The backtest scores the TFT against the models a practitioner tries first, on the very same
windows: the same servers, the same forecast origins, the same decoder steps. For each method,
server and target metric:

1. **fit once**: the model is fitted on the last ``BASELINES.fit_buckets`` rows of the server that
   lie before its *earliest* forecast origin among the windows (all of them when there are
   fewer), so no fit ever reads a row at or after any window's origin;
2. **run forward at each origin**: the fitted model (its parameters kept) is applied to the
   last ``BASELINES.forward_buckets`` rows before that window's origin and forecasts ``D`` steps
   (the store's prediction length) with its ``BASELINES.interval_level`` % interval. That is
   statsforecast's ``forward``: fresh data, no refit, a few milliseconds per call.

The methods (``config.BASELINES.statistical_methods_all``):

* ``autoets``: ``AutoETS(model="ZZN")``, exponential smoothing with error and trend chosen by
  AICc and no season (ETS cannot hold a 288-step season);
* ``autotheta``: ``AutoTheta(season_length=BASELINES.season_length)`` (on request: ~10x slower);
* ``mstl``: ``MSTL(season_length=BASELINES.season_length, trend_forecaster=AutoETS(model="ZZN"))``.
  MSTL's own ``forward`` decomposes the new history again (STL, ~0.5 s per call: hours for a
  fleet backtest), so the forward step here applies MSTL's forecast rule with the objects the
  library fitted instead: MSTL forecasts ``trend forecaster's forecast + the last fitted season
  repeated``. The fitted daily profile is the last ``BASELINES.season_length`` values of the fitted
  seasonal component (``MSTL.model_``), indexed by time of day: a row ``r`` of the server gets
  ``profile[(r - fit_end) % season]``, ``fit_end`` being the first row after the fit. At each
  origin the forward history is deseasonalised with that profile, the fitted trend forecaster
  (``MSTL.trend_forecaster``, an AutoETS fitted by MSTL on trend + remainder) runs ``forward``
  on it, and the profile of the forecast steps is added back to the mean and to both interval
  bounds, exactly as ``MSTL.predict`` does. At the fit's end this is ``MSTL.predict`` itself.
  STL needs two full seasons: a series with less than ``2 * BASELINES.season_length`` rows before
  its first origin is fitted with ``AutoETS(model="ZZN")`` alone (no season), logged once.

Robustness: a series whose fit history is constant or holds missing values, or whose fit
fails, gets a persistence forecast (the last value before each origin, a zero-width band);
so does a single window whose forward step fails or returns non-finite numbers. The run never
stops for one series; the fallbacks are counted and logged in one line per method.

Output per method: ``(W, n_targets, D, 3)`` float32, ``[p10, p50, p90] = [lo-80, mean, hi-80]``
in metric units, sorted per step, clipped to the contract range of each metric (rounded for
counts), NaN for targets not asked for, the layout ``tft_evaluate`` scores.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cli_options import option
from config import BASELINES, INTEGER_METRICS, METRIC_RANGES, TRAINING_GUIDE_DOC

if TYPE_CHECKING:
    from tft_features import SeriesStore

logger = logging.getLogger(__name__)

_LO, _HI = f"lo-{BASELINES.interval_level}", f"hi-{BASELINES.interval_level}"


class _Forecaster(Protocol):
    """A fitted model that forecasts from a fresh history starting at within-server row ``first_row``."""

    def forward(self, history: np.ndarray, first_row: int, horizon: int) -> tuple[np.ndarray, ...]:
        """``(mean, low, high)`` for the ``horizon`` rows after ``history``."""
        ...


@dataclass
class _LibraryForward:
    """A fitted statsforecast model (AutoETS, AutoTheta) applied by its own ``forward``."""

    model: Any

    def forward(self, history: np.ndarray, first_row: int, horizon: int) -> tuple[np.ndarray, ...]:
        """The library's forward step: fitted parameters, fresh data."""
        res = self.model.forward(y=history, h=horizon, level=[BASELINES.interval_level])
        return res["mean"], res[_LO], res[_HI]


@dataclass
class _MSTLForward:
    """MSTL's forecast rule (trend forecast + repeated fitted season) without a new decomposition."""

    trend: Any  # MSTL.trend_forecaster: an AutoETS fitted on the fit's trend + remainder
    profile: np.ndarray  # (season,) the last season of the fitted seasonal component
    fit_end: int  # within-server row just after the fit: profile[0] is the season of this row

    def season_of(self, rows: np.ndarray) -> np.ndarray:
        """The fitted seasonal value of within-server ``rows`` (by their time of day)."""
        return self.profile[(rows - self.fit_end) % len(self.profile)]

    def forward(self, history: np.ndarray, first_row: int, horizon: int) -> tuple[np.ndarray, ...]:
        """Deseasonalise, run the trend forecaster forward, add the season of the forecast steps."""
        rows = first_row + np.arange(len(history))
        res = self.trend.forward(y=history - self.season_of(rows), h=horizon, level=[BASELINES.interval_level])
        ahead = self.season_of(first_row + len(history) + np.arange(horizon))
        return res["mean"] + ahead, res[_LO] + ahead, res[_HI] + ahead


@dataclass
class _Tally:
    """What happened to the series and windows of one method (for its summary line)."""

    series: int = 0
    constant: int = 0
    missing: int = 0
    failed_fit: int = 0
    no_season: int = 0  # mstl only: under two seasons of history, fitted AutoETS instead
    failed_windows: int = 0
    errors: list[str] = field(default_factory=list)  # first few fit errors, for the log

    @property
    def fallback_series(self) -> int:
        """Series forecast by persistence for every window."""
        return self.constant + self.missing + self.failed_fit


def _autoets() -> Any:
    """A fresh ``AutoETS(model="ZZN")`` (statsforecast is imported on first use: ~3 s)."""
    from statsforecast.models import AutoETS

    return AutoETS(model="ZZN")


def _fit(method: str, y: np.ndarray, fit_end: int, tally: _Tally) -> _Forecaster:
    """Fit ``method`` on ``y`` (the rows just before within-server row ``fit_end``)."""
    from statsforecast.models import MSTL, AutoTheta

    if method == "autoets":
        return _LibraryForward(_autoets().fit(y))
    if method == "autotheta":
        return _LibraryForward(AutoTheta(season_length=BASELINES.season_length).fit(y))
    if len(y) < 2 * BASELINES.season_length:  # STL needs two full seasons
        tally.no_season += 1
        return _LibraryForward(_autoets().fit(y))
    model = MSTL(season_length=BASELINES.season_length, trend_forecaster=_autoets()).fit(y)
    seasonal = model.model_.filter(regex="^seasonal").sum(axis=1).to_numpy(dtype=np.float64)
    return _MSTLForward(trend=model.trend_forecaster, profile=seasonal[-BASELINES.season_length:].copy(),
                        fit_end=fit_end)


def _last_finite(values: np.ndarray) -> float:
    """The last finite value (NaN when there is none): the persistence forecast."""
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if len(finite) else float("nan")


def _finish(out: np.ndarray, target_names: Sequence[str]) -> np.ndarray:
    """Sort each step's three quantiles, clip to the contract range, round counts."""
    a, b, c = out[..., 0], out[..., 1], out[..., 2]
    low, high = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    out = np.stack([low, a + b + c - low - high, high], axis=-1)
    for j, name in enumerate(target_names):
        lo, hi = METRIC_RANGES[name]
        # An exploding ETS trend can leave float32's range: unbounded metrics stop at its largest value.
        out[:, j] = np.clip(out[:, j], lo, hi if hi is not None else float(np.finfo(np.float32).max))
        if name in INTEGER_METRICS:
            out[:, j] = np.round(out[:, j])
    return out.astype(np.float32)


def _one_method(store: SeriesStore, method: str, servers: np.ndarray, origins: np.ndarray,
                columns: list[int], progress: bool) -> np.ndarray:
    """Forecasts of one method for every window: (W, n_targets, D, 3), raw (not yet sorted or clipped)."""
    horizon = store.spec.prediction_length
    n_windows = len(servers)
    out = np.full((n_windows, len(store.spec.targets), horizon, 3), np.nan, dtype=np.float64)
    tally = _Tally()
    began = last_line = time.perf_counter()
    total = n_windows * len(columns)
    done, next_mark = 0, BASELINES.progress_fraction
    order = np.argsort(servers, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(servers[order])) + 1, n_windows] if n_windows else np.zeros(1, int)
    for group_begin, group_end in zip(bounds[:-1], bounds[1:], strict=True):
        windows = order[group_begin:group_end]
        server = int(servers[windows[0]])
        offset, length = int(store.offsets[server]), int(store.lengths[server])
        fit_end = int(origins[windows].min())
        if origins[windows].max() > length or fit_end < 1:
            raise ValueError(f"statistical_forecasts: a window of server {server} has its origin outside the "
                             f"server's {length} rows (origins must lie in 1..{length})")
        block = store.targets[offset:offset + length]
        for j in columns:
            y = block[:, j].astype(np.float64)
            fit_y = y[max(0, fit_end - BASELINES.fit_buckets):fit_end]
            tally.series += 1
            forecaster: _Forecaster | None = None
            if not np.isfinite(fit_y).all():
                tally.missing += 1
            elif np.ptp(fit_y) == 0.0:
                tally.constant += 1
            else:
                try:
                    forecaster = _fit(method, fit_y, fit_end, tally)
                except Exception as exc:  # noqa: BLE001 - one series' failure must not stop the backtest
                    tally.failed_fit += 1
                    if len(tally.errors) < 3:
                        tally.errors.append(f"{type(exc).__name__}: {exc}")
            for w in windows:
                origin = int(origins[w])
                first_row = max(0, origin - BASELINES.forward_buckets)
                history = y[first_row:origin]
                result = None
                if forecaster is not None:
                    try:
                        result = np.stack(forecaster.forward(history, first_row, horizon), axis=-1)
                    except Exception:  # noqa: BLE001 - a failed window falls back to persistence
                        result = None
                    if result is None or result.shape != (horizon, 3) or not np.isfinite(result).all():
                        tally.failed_windows += 1
                        result = None
                if result is None:
                    result = np.full((horizon, 3), _last_finite(history))
                out[w, j] = result[:, [1, 0, 2]]  # (mean, low, high) -> (p10, p50, p90)
            done += len(windows)
            now = time.perf_counter()
            if progress and total and done / total >= next_mark and now - last_line >= BASELINES.progress_seconds:
                eta = (now - began) * (total - done) / done
                logger.info("statistical baseline %s: %d%% (%d of %d window forecasts), %.0f s, about %.0f s left",
                            method, 100 * done // total, done, total, now - began, eta)
                last_line = now
            while total and done / total >= next_mark:
                next_mark += BASELINES.progress_fraction
    if tally.no_season:
        logger.info("statistical baseline %s: %d of %d series have under %d rows (two seasons) before their first "
                    "origin: fitted AutoETS without a season instead", method, tally.no_season, tally.series,
                    2 * BASELINES.season_length)
    logger.info("statistical baseline %s: persistence fallback for %d of %d series (constant %d, missing values %d, "
                "failed fit %d%s) and for %d window forecasts", method, tally.fallback_series, tally.series,
                tally.constant, tally.missing, tally.failed_fit,
                f"; first errors: {' | '.join(tally.errors)}" if tally.errors else "", tally.failed_windows)
    return out


def statistical_forecasts(store: SeriesStore, servers: np.ndarray, starts: np.ndarray,
                          methods: Sequence[str] = BASELINES.statistical_methods, targets: Sequence[str] | None = None,
                          progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Statistical baseline forecasts for the windows ``(servers[w], starts[w])`` of ``store``.

    A window is named as in ``tft_evaluate.actuals_and_baselines``: server index and the
    within-server row of its full-length start; its forecast origin (first decoder row) is
    ``starts[w] + encoder_length``, and only the server's rows before it are read. Each method
    is fitted once per server and target on the last ``BASELINES.fit_buckets`` rows before the
    server's earliest origin, then run forward at every origin over the last
    ``BASELINES.forward_buckets`` rows (see the module docstring).

    Args:
        store: the fleet's rows (``tft_features.SeriesStore``; only ``offsets``, ``lengths``,
            ``targets`` and ``spec`` are read).
        servers: (W,) server index of each window.
        starts: (W,) full-length window start, a row within the server.
        methods: names from ``config.BASELINES.statistical_methods_all``.
        targets: the target metrics to forecast (None: all of ``store.spec.targets``); the
            others are NaN.
        progress: log progress lines during long runs.

    Returns:
        ``(forecasts, seconds)``: per method, an array (W, n_targets, D, 3) float32 of
        ``[p10, p50, p90] = [lo-80, mean, hi-80]`` in metric units (sorted per step, clipped to
        the contract ranges, counts rounded), and the method's wall time in seconds.

    Raises:
        ValueError: an unknown method or target name, or windows that do not fit the store.
    """
    methods = list(methods)
    unknown = [m for m in methods if m not in BASELINES.statistical_methods_all]
    if unknown:
        raise ValueError(f"Unknown statistical method(s) {unknown}: choose from "
                         f"{list(BASELINES.statistical_methods_all)}")
    spec = store.spec
    names = list(spec.targets)
    wanted = names if targets is None else list(targets)
    missing = [t for t in wanted if t not in names]
    if missing:
        raise ValueError(f"Target(s) {missing} are not among the store's targets {names}")
    columns = [j for j, name in enumerate(names) if name in wanted]
    servers = np.asarray(servers, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    if servers.shape != starts.shape or servers.ndim != 1:
        raise ValueError(f"servers and starts must be 1-D arrays of one length (got {servers.shape}, {starts.shape})")
    origins = starts + spec.encoder_length
    forecasts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        began = time.perf_counter()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            raw = _one_method(store, method, servers, origins, columns, progress)
        forecasts[method] = _finish(raw, names)
        seconds[method] = time.perf_counter() - began
        logger.info("statistical baseline %s: %d windows x %d targets in %.1f s", method, len(servers),
                    len(columns), seconds[method])
    return forecasts, seconds


def parse_methods(text: str) -> tuple[str, ...]:
    """``--statistical a,b``: the named statsforecast models, each one of ``BASELINES.statistical_methods_all``."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in BASELINES.statistical_methods_all]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{','.join(unknown)}: unknown model(s). Fix: use any of {', '.join(BASELINES.statistical_methods_all)}, "
            f"or "
            f"--no-statistical. See {TRAINING_GUIDE_DOC} (Backtest).")
    return methods


def statistical_option() -> Any:
    """The ``--statistical`` / ``--no-statistical`` setting (the trainer's and the backtest's)."""
    return option(BASELINES.statistical_methods,
                  f"statsforecast models scored beside the naive baselines, comma-separated, "
                  f"from {', '.join(BASELINES.statistical_methods_all)}", parse=parse_methods, metavar="MODELS",
                  off=("--no-statistical", (), "skip the statistical models (quick runs: they cost seconds to "
                       "minutes)"))


@dataclass
class StatisticalSettings:
    """Only the statistical models' flag, for a command that has no other settings of ours (the benchmarks)."""

    statistical: tuple[str, ...] = statistical_option()
