"""Feature pipeline shared by training, evaluation and the inference daemon.

One definition of what the model reads, so the three can never drift apart. The whole
recipe (load -> densify -> ids -> spec -> dataset -> series store) is :func:`build_features`;
its steps:

* ``densify``: put every server on the complete 5-minute grid, filling buckets without
  samples with the contract's offline vector (Docs/DATA_CONTRACT.md);
* ``add_model_columns``: hash server id, bucket number (``contract.bucket_of_times``) and
  calendar features;
* ``FeatureSpec``: every fitted scaler, normaliser and category code as plain JSON
  (saved in the model's ``config.json``; nothing is pickled);
* ``SeriesStore``: the fleet as compact per-server arrays, and ``batch`` which cuts windows
  out of them and returns exactly the tensors ``TimeSeriesDataSet``'s data loader would
  (tests/test_features.py proves it), but vectorised: thousands of windows in milliseconds;
* ``make_timeseries_dataset``: the stock ``TimeSeriesDataSet`` for the same spec, used to
  build the model with ``TemporalFusionTransformer.from_dataset`` and by the benchmarks.

Tensor shapes below: B windows, E encoder steps, D decoder steps, R reals, C categoricals.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting.data import EncoderNormalizer

from config import (
    DATA_CONTRACT_DOC,
    FEATURES,
    FLOAT_METRICS,
    GROUP_ID,
    INTEGER_METRICS,
    LINBORG_METRICS,
    MAX_PREDICTION_LENGTH,
    METRIC_RANGES,
    QUANTILES,
    SAMPLING_INTERVAL_SECONDS,
    TARGET_METRICS,
    TIME_IDX,
    TRAINING_GUIDE_DOC,
    VALID_PROFILES,
    VALID_STATES,
)
from contract import bucket_of_times, bucket_start, fill_offline
from server_encoder import ServerEncoder, hash_server_name

logger = logging.getLogger(__name__)

RELATIVE_TIME_IDX = "relative_time_idx"
NAN_CODE = 0  # NaNLabelEncoder(add_nan=True) reserves code 0 for unknown / missing


# ---------------------------------------------------------------------------- frames
def calendar_features(time_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Sine/cosine of time of day, day of week and minute of the hour for bucket numbers."""
    seconds = time_idx.astype(np.int64) * SAMPLING_INTERVAL_SECONDS
    day_fraction = (seconds % 86_400) / 86_400.0
    # 1970-01-01 was a Thursday: shift so that Monday = 0, as pandas' dayofweek.
    week_fraction = (((seconds // 86_400) + 3) % 7 + day_fraction) / 7.0
    hour_fraction = (seconds % 3_600) / 3_600.0
    two_pi = 2.0 * math.pi
    features = {
        "tod_sin": np.sin(two_pi * day_fraction), "tod_cos": np.cos(two_pi * day_fraction),
        "dow_sin": np.sin(two_pi * week_fraction), "dow_cos": np.cos(two_pi * week_fraction),
        "moh_sin": np.sin(two_pi * hour_fraction), "moh_cos": np.cos(two_pi * hour_fraction),
    }
    return {name: features[name].astype(np.float32) for name in FEATURES.known_reals}


def densify(df: pd.DataFrame) -> pd.DataFrame:
    """Every server on its complete grid, first to last bucket; gaps get the offline vector.

    The contract's rule for a bucket without samples: activity metrics 0, ``cpu_idle_pct``
    100, ``disk_usage_pct`` and ``uptime_days`` carried forward, state ``offline``. Rows
    come back sorted by server and time.
    """
    frame = df.sort_values(["server_name", "timestamp"], kind="stable").reset_index(drop=True)
    tidx = bucket_of_times(frame["timestamp"])
    names = frame["server_name"].astype(str).to_numpy()
    starts = np.r_[0, np.flatnonzero(names[1:] != names[:-1]) + 1]
    ends = np.r_[starts[1:], len(frame)]
    spans = tidx[ends - 1] - tidx[starts] + 1
    if (spans == ends - starts).all():
        return frame
    full_len = int(spans.sum())
    server_of_row = np.repeat(np.arange(len(starts)), spans)
    offset_in_server = np.arange(full_len) - np.repeat(np.cumsum(spans) - spans, spans)
    full_tidx = tidx[starts][server_of_row] + offset_in_server
    # Position of each existing row on the full grid.
    pos = (np.cumsum(spans) - spans)[np.repeat(np.arange(len(starts)), ends - starts)] \
        + (tidx - np.repeat(tidx[starts], ends - starts))
    present = np.zeros(full_len, dtype=bool)
    present[pos] = True
    source = np.maximum.accumulate(np.where(present, np.arange(full_len), -1))
    row_of = np.full(full_len, -1)
    row_of[pos] = np.arange(len(frame))
    filled = frame.iloc[row_of[source]].reset_index(drop=True)  # names, profile: from the last sample
    missing = ~present
    filled["timestamp"] = bucket_start(full_tidx)
    metrics = [name for name in LINBORG_METRICS if name in filled]
    offline = fill_offline({name: filled[name].to_numpy() for name in metrics}, present)
    for name in metrics:  # the values are exact in the column's own dtype (0, 100 or a carried sample)
        filled[name] = offline[name].astype(filled[name].dtype)
    if isinstance(filled["state"].dtype, pd.CategoricalDtype) and "offline" not in filled["state"].cat.categories:
        filled["state"] = filled["state"].cat.add_categories(["offline"])
    filled.loc[missing, "state"] = "offline"
    logger.info("densify: filled %d missing buckets with the offline vector", int(missing.sum()))
    return filled


def add_model_columns(df: pd.DataFrame, encoder: ServerEncoder) -> pd.DataFrame:
    """Add ``server_id`` (hash), ``time_idx`` and calendar features; metrics as float32."""
    frame = df.copy()
    names = frame["server_name"].astype(str)
    ids = encoder.encode_many(names.unique())
    frame[GROUP_ID] = names.map(ids).astype(str)
    frame[TIME_IDX] = bucket_of_times(frame["timestamp"])
    for name, values in calendar_features(frame[TIME_IDX].to_numpy()).items():
        frame[name] = values
    for name in LINBORG_METRICS:
        frame[name] = frame[name].astype(np.float32)
    for name in ("profile", "state"):
        frame[name] = frame[name].astype(str)
    return frame


# ---------------------------------------------------------------------------- normaliser
class FlooredEncoderNormalizer(EncoderNormalizer):
    """pytorch-forecasting's EncoderNormalizer whose per-window scale stays between a floor and a ceiling."""

    def __init__(self, method: str = "standard", center: bool = True, transformation: str | None = None,
                 method_kwargs: dict | None = None, max_length: int | None = None, scale_floor: float = 0.0,
                 anchor: str = "mean", log1p_inverse: str = "exp", scale_ceiling: float = math.inf) -> None:
        super().__init__(method=method, center=center, transformation=transformation, method_kwargs=method_kwargs,
                         max_length=max_length)
        self.scale_floor = scale_floor
        self.scale_ceiling = scale_ceiling
        self.anchor = anchor
        self.log1p_inverse = log1p_inverse

    def inverse_preprocess(self, y: Any) -> Any:
        """Undo the transformation; ``log1p`` with ``expm1`` when so configured (the stock uses exp: +1)."""
        if self.transformation == "log1p" and self.log1p_inverse == "expm1":
            return torch.expm1(y) if torch.is_tensor(y) else np.expm1(np.asarray(y))
        return super().inverse_preprocess(y)

    def fit(self, y: Any) -> FlooredEncoderNormalizer:
        """Fit on one encoder window, apply the floor and ceiling, and anchor on the last value if configured."""
        super().fit(y)
        if torch.is_tensor(self.scale_):
            self.scale_ = torch.clamp(self.scale_, min=self.scale_floor, max=self.scale_ceiling)
        else:
            self.scale_ = np.minimum(np.maximum(self.scale_, self.scale_floor), self.scale_ceiling)
        if self.anchor == "last":
            transformed = self.preprocess(y)
            last = transformed[..., -1] if torch.is_tensor(transformed) else np.asarray(transformed)[..., -1]
            self.center_ = last.to(self.center_.dtype) if torch.is_tensor(self.center_) else \
                np.asarray(last, dtype=np.asarray(self.center_).dtype)
        return self


# ---------------------------------------------------------------------------- the spec
@dataclass
class FeatureSpec:
    """Everything needed to turn LINBORG rows into model tensors, as plain JSON."""

    encoder_length: int
    min_encoder_length: int = FEATURES.min_encoder_length
    prediction_length: int = MAX_PREDICTION_LENGTH
    targets: list[str] = field(default_factory=lambda: list(TARGET_METRICS))
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))
    x_reals: list[str] = field(default_factory=list)  # order of encoder_cont/decoder_cont columns
    x_categoricals: list[str] = field(default_factory=list)
    scalers: dict[str, dict[str, float] | None] = field(default_factory=dict)  # StandardScaler mean/scale
    target_normalizers: dict[str, dict[str, Any]] = field(default_factory=dict)  # transformation, scale floor
    categories: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> code per categorical
    loss_weights: list[float] = field(default_factory=list)
    # fit_feature_spec sets these from config (FEATURES.target_center, FEATURES.train_loss_space,
    # FEATURES.log1p_inverse); a saved
    # spec from before they existed is read through upgrade_feature_spec.
    center: str = "mean"  # each window's anchor: "mean" or "last" (its last observed value)
    loss_space: str = "metric"  # "metric" or "normalised" (tft_model.FleetTFT.step)
    log1p_inverse: str = "exp"  # how log1p targets are decoded: "exp" (stock, +1) or "expm1"
    # Conformal band offsets per target: {"lower": [D], "upper": [D]} in normalised units (None:
    # uncalibrated); see calibration_fit.fit_band_offsets.
    band_offsets: dict[str, dict[str, list[float]]] | None = None
    # Per target, per decoder step: the share of the model's forecast change from the anchor that is
    # kept (1 = the model alone, 0 = the last value with the model's band); fitted on the validation
    # windows where it is better there (calibration_fit.fit_persistence_blend). None: the model alone.
    center_weights: dict[str, list[float]] | None = None
    # Per log-modelled target: the highest value the training rows showed, in the modelled units
    # (FEATURES.level_ceiling: no quantile is served above MODEL.level_ceiling_factor x it, or x the window's last
    # value when that is higher). None: no ceiling.
    level_ceilings: dict[str, float] | None = None
    # Yesterday as a known input: the lag in buckets of each target's ``<target>_yesterday`` input
    # and its ``yesterday_known`` flag (FEATURES.seasonal_input), averaged over ``seasonal_half_window`` buckets
    # either side of the lagged one. None: no such input.
    seasonal_lag: int | None = None
    seasonal_half_window: int = 0
    # Per display metric: the chance of reaching its tier within 8 h from which it alerts, fitted on the
    # validation days to the false-alarm budget (alert_fitting.fit_alert_thresholds). None: the policy's
    # default for every metric.
    alert_thresholds: dict[str, float] | None = None

    @property
    def seasonal_inputs(self) -> list[str]:
        """The known-future inputs that carry yesterday: one per target, then the flag ([] when off)."""
        if not self.seasonal_lag:
            return []
        return [f"{t}{FEATURES.seasonal_input_suffix}" for t in self.targets] + [FEATURES.seasonal_input_flag]

    @property
    def history_buckets(self) -> int:
        """Buckets before the forecast origin (included) that one forecast reads: the encoder and yesterday's."""
        return self.encoder_length + (self.seasonal_lag + self.seasonal_half_window if self.seasonal_lag else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; a spec saved by an older version is read as :func:`upgrade_feature_spec`
        says."""
        return cls(**upgrade_feature_spec(data))

    def scale_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per target, the floor and the ceiling of a window's spread (inf: none)."""
        limits = [(n["scale_floor"], n.get("scale_ceiling", math.inf))
                  for n in (self.target_normalizers[t] for t in self.targets)]
        return np.array([f for f, _ in limits], dtype=np.float64), np.array([c for _, c in limits], dtype=np.float64)

    @property
    def group_codes(self) -> dict[str, int]:
        """Server id -> group code (0 = a server the model never saw)."""
        return self.categories[GROUP_ID]

    def encode(self, name: str, values: pd.Series | np.ndarray | list[str]) -> np.ndarray:
        """Category codes for ``values``; unknown labels get the NaN code 0."""
        mapping = self.categories[name]
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        lookup = np.array([mapping.get(u, NAN_CODE) for u in uniques] + [NAN_CODE], dtype=np.int64)
        return lookup[codes]  # factorize marks missing values -1: the appended NaN code


# What a feature spec saved by an older version lacks, with the version that added it and the value such a
# model was trained and calibrated with (its own behaviour, not today's config).
SPEC_UPGRADES: tuple[tuple[str, str, Any], ...] = (
    ("0.9.0", "center", "mean"),  # each window anchored on its mean
    ("0.9.0", "loss_space", "metric"),  # the loss in metric units, each target weighted by 1/its spread
    ("0.9.0", "log1p_inverse", "exp"),  # pytorch-forecasting's stock log1p decode (+1 in the target's units)
    ("0.9.0", "band_offsets", None),  # uncalibrated bands
    ("0.12.0", "center_weights", None),  # no persistence blend: the model alone
    ("0.13.0", "level_ceilings", None),  # no level ceiling
    ("0.14.0", "seasonal_lag", None),  # no "yesterday" input ...
    ("0.14.0", "seasonal_half_window", 0),  # ... nor its window
    ("0.16.0", "alert_thresholds", None),  # the alert policy's default chance for every metric
)


def upgrade_feature_spec(data: dict[str, Any]) -> dict[str, Any]:
    """A saved spec (``config.json``'s ``feature_spec``) in the current shape: each key a spec saved before
    its version (``SPEC_UPGRADES``) lacks is filled with what that model was trained with.

    The one place that knows older specs: everything else reads :class:`FeatureSpec` as it is now.
    (A target's ``scale_ceiling`` may be absent in a current spec too: an uncapped target, spread
    ceiling inf.)
    """
    upgraded = dict(data)
    for _, key, value in SPEC_UPGRADES:
        upgraded.setdefault(key, value)
    return upgraded


def _categories(values: list[str]) -> dict[str, int]:
    """Codes as NaNLabelEncoder(add_nan=True) assigns them: 0 = nan, then sorted labels."""
    return {label: code + 1 for code, label in enumerate(sorted(values))}


def transform_target(name: str, values: np.ndarray, spec_or_transform: FeatureSpec | str | None) -> np.ndarray:
    """Apply a target's transformation (log1p for heavy-tailed metrics)."""
    transformation = spec_or_transform.target_normalizers[name]["transformation"] \
        if isinstance(spec_or_transform, FeatureSpec) else spec_or_transform
    if transformation is None:
        return values
    if transformation == "log1p":
        return np.log1p(values)
    raise ValueError(f"unsupported target transformation {transformation!r}")


def inverse_transform_target(name: str, values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Undo :func:`transform_target` as the model decodes (``spec.log1p_inverse``: expm1, or the stock exp)."""
    transformation = spec.target_normalizers[name]["transformation"]
    if transformation is None:
        return values
    if transformation == "log1p":
        return np.expm1(values) if spec.log1p_inverse == "expm1" else np.exp(values)
    raise ValueError(f"unsupported target transformation {transformation!r}")


def level_ceiling(transformation: str | None, transformed: np.ndarray) -> float | None:
    """The guard's ceiling of one target (``FEATURES.level_ceiling``): its highest transformed value, log1p targets
    only."""
    if not FEATURES.level_ceiling or transformation != "log1p" or not np.isfinite(transformed).any():
        return None
    return float(np.nanmax(transformed))


def yesterday_values(values_tf: np.ndarray, lag: int, half_window: int, last: int | None = None) -> np.ndarray:
    """Per row of a server's consecutive buckets, the mean of its rows ``lag`` +- ``half_window`` earlier.

    ``values_tf`` (..., n, targets) holds transformed targets, rows along the second-to-last axis (one
    server, or a stack of servers), NaN where a bucket does not exist (before the server's first
    one, or a decoder's future); a row whose lagged window reaches such a bucket, or before the
    first row, is NaN ("not known"). ``last``: only the last rows are wanted (the rest are not
    computed; the result has ``last`` rows). One definition for the series store and the daemon.
    """
    width, rows = 2 * half_window + 1, values_tf.shape[-2]
    start = 0 if last is None else rows - last
    out = np.full((*values_tf.shape[:-2], rows - start, values_tf.shape[-1]), np.nan)
    first = max(lag + half_window, start)  # the first wanted row whose lagged window lies in the array
    if rows > first:
        windows = np.lib.stride_tricks.sliding_window_view(values_tf, width, axis=-2)  # (..., rows-width+1, T, width)
        back = lag + half_window  # row i's window starts at row i - back
        out[..., first - start:, :] = windows[..., first - back:rows - back, :, :].mean(axis=-1)
    return out


def encoder_center_scale(encoder_values: np.ndarray, floor: np.ndarray | float, anchor: str = "mean",
                         ceiling: np.ndarray | float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Per-window center and scale (unbiased std + float32 eps, floored, then capped) over axis 1.

    ``encoder_values`` is (B, E, ...) in transformed units; the center is the mean, or the last
    value with ``anchor="last"``. The formula is :class:`FlooredEncoderNormalizer`'s (torch path).
    """
    values = encoder_values.astype(np.float64)
    center = values[:, -1] if anchor == "last" else values.mean(axis=1)
    scale = values.std(axis=1, ddof=1) + np.finfo(np.float32).eps
    return center, np.minimum(np.maximum(scale, floor), ceiling)


def settled_lengths(spec: FeatureSpec, targets: np.ndarray, state_codes: np.ndarray) -> np.ndarray:
    """Buckets of each window's history after its latest level shift: (B,) lengths, E when none.

    ``targets`` is (B, E, len(spec.targets)) in metric units, ``state_codes`` (B, E) the windows'
    state codes. Offline buckets hold filler, not observations, so the rule reads the observed
    buckets only and a shift can span an offline gap (a reboot that brings memory back low). A
    shift is a step of at least ``FEATURES.level_shift_min_points`` between consecutive observed buckets in
    one of ``FEATURES.level_shift_metrics`` (those among the targets) whose new level holds: the median
    after it is at least ``FEATURES.level_shift_persist_points`` from the median of the
    ``FEATURES.level_shift_context`` observed buckets before it (a one-bucket spike is not a shift). Lengths
    never go below the model's minimum history. One rule for the daemon, the offline forecast and
    the backtest.
    """
    batch, enc = targets.shape[0], spec.encoder_length
    lengths = np.full(batch, enc, dtype=np.int64)
    columns = [spec.targets.index(m) for m in FEATURES.level_shift_metrics if m in spec.targets]
    if not columns or batch == 0:
        return lengths
    levels = targets[:, :, columns].astype(np.float64)  # (B, E, K)
    observed = state_codes != spec.categories["state"].get("offline", NAN_CODE)
    masked = np.where(observed[:, :, None], levels, np.nan)
    with np.errstate(all="ignore"):  # all-offline windows: NaN spans, never candidates
        spans = np.nanmax(masked, axis=1) - np.nanmin(masked, axis=1)  # (B, K)
    for b in np.flatnonzero((spans >= FEATURES.level_shift_min_points).any(axis=1)):  # few windows can hold a shift
        where = np.flatnonzero(observed[b])
        values = levels[b, where]  # (n, K): the observed buckets, in order
        steps = np.abs(np.diff(values, axis=0)) >= FEATURES.level_shift_min_points  # (n-1, K): into observed i + 1
        for i in np.flatnonzero(steps.any(axis=1))[::-1] + 1:  # latest first
            after = np.median(values[i:], axis=0)
            before = np.median(values[max(0, i - FEATURES.level_shift_context):i], axis=0)
            if (np.abs(after - before)[steps[i - 1]] >= FEATURES.level_shift_persist_points).any():
                lengths[b] = max(spec.min_encoder_length, enc - int(where[i]))
                break
    return lengths


def fit_feature_spec(train_frame: pd.DataFrame, encoder_length: int,
                     targets: list[str] | None = None, seed: int = 0) -> FeatureSpec:
    """Fit scalers, target settings and category codes on training rows only."""
    from sklearn.preprocessing import StandardScaler

    targets = list(targets or TARGET_METRICS)
    spec = FeatureSpec(encoder_length=encoder_length, targets=targets,
                       min_encoder_length=min(FEATURES.min_encoder_length, encoder_length),
                       center=FEATURES.target_center,
                       loss_space=FEATURES.train_loss_space, log1p_inverse=FEATURES.log1p_inverse,
                       seasonal_lag=FEATURES.seasonal_input_lag if FEATURES.seasonal_input else None,
                       seasonal_half_window=FEATURES.seasonal_input_half_window if FEATURES.seasonal_input else 0)
    longest = int(train_frame.groupby(GROUP_ID, observed=True).size().max()) if len(train_frame) else 0
    if spec.seasonal_lag and longest < spec.history_buckets + spec.prediction_length:
        # No training window would see a known yesterday: the model could not learn what one means,
        # and would be served one as soon as its servers are a day old.
        logger.warning("training history is %d buckets at most (< %d): the model does not read yesterday's values "
                       "(FEATURES.seasonal_input needs a day more than a window). See %s.", longest,
                       spec.history_buckets + spec.prediction_length, TRAINING_GUIDE_DOC)
        spec.seasonal_lag, spec.seasonal_half_window = None, 0
    if spec.seasonal_lag and spec.seasonal_lag - spec.seasonal_half_window < spec.prediction_length:
        raise ValueError(f"FEATURES.seasonal_input_lag - FEATURES.seasonal_input_half_window ({spec.seasonal_lag} - "
                         f"{spec.seasonal_half_window} buckets) must be at least the forecast length "
                         f"({spec.prediction_length}): every value a decoder step reads from yesterday must be "
                         f"measured at the origin. See {TRAINING_GUIDE_DOC}.")
    spec.categories = {
        GROUP_ID: _categories(train_frame[GROUP_ID].unique().tolist()),
        "profile": _categories(VALID_PROFILES),
        "state": _categories(VALID_STATES),
    }
    for name in LINBORG_METRICS:
        if name in targets:
            continue
        scaler = StandardScaler().fit(train_frame[[name]].to_numpy(np.float64))
        spec.scalers[name] = {"mean": float(scaler.mean_[0]), "scale": float(scaler.scale_[0])}
    for name in [*FEATURES.known_reals, RELATIVE_TIME_IDX, *spec.seasonal_inputs]:
        spec.scalers[name] = None  # already in [-1, 1], or normalised per window (yesterday)

    # Sample encoder windows to fit the scalers of the per-window level/spread inputs.
    ordered = train_frame.sort_values([GROUP_ID, TIME_IDX], kind="stable")
    ids = ordered[GROUP_ID].to_numpy()
    bounds = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1, len(ordered)]
    rng = np.random.default_rng(seed)
    usable = [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi - lo >= encoder_length]
    firsts = np.concatenate([np.arange(lo, hi - encoder_length + 1) for lo, hi in usable]) if usable \
        else np.zeros(0, dtype=np.int64)
    if len(firsts) == 0:
        raise ValueError(f"No server has {encoder_length} buckets of training history. See {TRAINING_GUIDE_DOC}.")
    firsts = rng.choice(firsts, size=min(len(firsts), FEATURES.target_scale_fit_windows), replace=False)
    rows = firsts[:, None] + np.arange(encoder_length)[None, :]

    weights = []
    for name in targets:
        transformation = FEATURES.target_transforms.get(name)
        transformed = transform_target(name, ordered[name].to_numpy(np.float64), transformation)
        floor = max(FEATURES.target_scale_floor_fraction * max(float(transformed.std()), 1e-6),
                    FEATURES.target_scale_floor_min.get(name, 0.0))
        spec.target_normalizers[name] = {"method": "standard", "transformation": transformation, "scale_floor": floor}
        ceiling = level_ceiling(transformation, transformed)
        if ceiling is not None:
            spec.level_ceilings = {**(spec.level_ceilings or {}), name: ceiling}
        center, scale = encoder_center_scale(transformed[rows], floor, spec.center)
        if transformation == "log1p" and FEATURES.target_scale_ceiling_quantile is not None:
            ceiling = float(np.quantile(scale, FEATURES.target_scale_ceiling_quantile))
            spec.target_normalizers[name]["scale_ceiling"] = ceiling
            scale = np.minimum(scale, ceiling)
        for suffix, values in (("center", center), ("scale", scale)):
            spec.scalers[f"{name}_{suffix}"] = {"mean": float(values.mean()), "scale": float(max(values.std(), 1e-8))}
        # With loss_space "metric" (models before 0.9.0) the loss is in metric units; weighting each
        # target by 1/its spread makes MB/s and percentages count alike. The normalised loss ignores it.
        weights.append(1.0 / max(float(train_frame[name].std()), 1e-3))
    spec.loss_weights = weights
    return spec


def target_normalizer_objects(spec: FeatureSpec) -> list[Any]:
    """The per-window target normalisers, rebuilt from the spec's JSON."""
    return [FlooredEncoderNormalizer(method="standard", transformation=spec.target_normalizers[name]["transformation"],
                                     scale_floor=spec.target_normalizers[name]["scale_floor"], anchor=spec.center,
                                     scale_ceiling=spec.target_normalizers[name].get("scale_ceiling", math.inf),
                                     log1p_inverse=spec.log1p_inverse)
            for name in spec.targets]


def make_timeseries_dataset(frame: pd.DataFrame, spec: FeatureSpec, predict: bool = False) -> Any:
    """The stock ``TimeSeriesDataSet`` for ``frame`` with the spec's fitted encoders.

    Used to create the model (``from_dataset``), by the equivalence test and by the
    benchmark's stock pipeline. ``frame`` must come from :func:`add_model_columns`.
    """
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import MultiNormalizer, NaNLabelEncoder
    from sklearn.preprocessing import StandardScaler

    encoders = {}
    for name in (GROUP_ID, "profile", "state"):
        enc = NaNLabelEncoder(add_nan=True)
        enc.classes_ = {"nan": NAN_CODE, **spec.categories[name]}
        enc.classes_vector_ = np.array(list(enc.classes_.keys()))
        encoders[name] = enc
    # The group id's encoder is looked up under its internal column name.
    encoders[f"__group_id__{GROUP_ID}"] = encoders[GROUP_ID]
    scalers = {}
    for name, params in spec.scalers.items():
        if params is None:
            scalers[name] = None
            continue
        scaler = StandardScaler()
        scaler.mean_ = np.array([params["mean"]])
        scaler.scale_ = np.array([params["scale"]])
        scaler.var_ = scaler.scale_ ** 2
        scaler.n_features_in_ = 1
        scaler.n_samples_seen_ = 1
        scalers[name] = scaler
    unknown_reals = [m for m in LINBORG_METRICS]
    # Yesterday's inputs are normalised per window by BatchAssembler; this dataset only defines the
    # model's inputs, so it holds them as zeros (the flag: 0, "not known").
    missing = {name: np.float32(0.0) for name in spec.seasonal_inputs if name not in frame.columns}
    if missing:
        frame = frame.assign(**missing)
    return TimeSeriesDataSet(
        frame,
        time_idx=TIME_IDX,
        target=list(spec.targets),
        group_ids=[GROUP_ID],
        min_encoder_length=spec.min_encoder_length,
        max_encoder_length=spec.encoder_length,
        min_prediction_length=spec.prediction_length,
        max_prediction_length=spec.prediction_length,
        static_categoricals=list(FEATURES.static_categoricals),
        time_varying_known_reals=[*FEATURES.known_reals, *spec.seasonal_inputs],
        time_varying_unknown_reals=unknown_reals,
        time_varying_unknown_categoricals=list(FEATURES.unknown_categoricals),
        categorical_encoders=encoders,
        scalers=scalers,
        target_normalizer=MultiNormalizer(target_normalizer_objects(spec)),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=False,
        predict_mode=predict,
    )


def complete_spec_from_dataset(spec: FeatureSpec, dataset: Any) -> FeatureSpec:
    """Record the dataset's real and categorical order (the model's tensor layout)."""
    spec.x_reals = list(dataset.reals)
    spec.x_categoricals = list(dataset.flat_categoricals)
    return spec


# ---------------------------------------------------------------------------- rows and batches
@dataclass
class EncodedRows:
    """Rows of the 5-minute grid encoded for the model (n rows).

    ``reals`` holds the inputs that do not depend on the window (scaled metrics, calendar);
    the per-window ones (normalised targets, their level/spread, relative time) are zero
    here and filled in by :class:`BatchAssembler`.
    """

    reals: np.ndarray  # (n, R) float32 in spec.x_reals order
    cats: np.ndarray  # (n, C) int64 in spec.x_categoricals order
    targets: np.ndarray  # (n, targets) float32, metric units
    targets_tf: np.ndarray  # (n, targets) float64, transformed (log1p where configured)
    time_idx: np.ndarray  # (n,) int64 bucket numbers


def encode_rows(spec: FeatureSpec, metrics: dict[str, np.ndarray], time_idx: np.ndarray,
                profiles: np.ndarray | pd.Series, states: np.ndarray | pd.Series) -> EncodedRows:
    """Encode raw LINBORG values of n rows; the single definition used everywhere."""
    n = len(time_idx)
    calendar = calendar_features(np.asarray(time_idx, dtype=np.int64))
    reals = np.zeros((n, len(spec.x_reals)), dtype=np.float32)
    for j, name in enumerate(spec.x_reals):
        if name in calendar:
            reals[:, j] = calendar[name]
        elif name in metrics and name not in spec.target_normalizers:
            params = spec.scalers.get(name)
            values = np.asarray(metrics[name], dtype=np.float64)
            reals[:, j] = values if params is None else (values - params["mean"]) / params["scale"]
    columns = {"profile": profiles, "state": states}
    # Integer arrays are category codes already (the daemon encodes per server, not per row).
    cats = np.stack([np.asarray(columns[name], dtype=np.int64) if np.issubdtype(np.asarray(columns[name]).dtype,
                                                                                 np.integer)
                     else spec.encode(name, columns[name]) for name in spec.x_categoricals], axis=1)
    targets = np.stack([np.asarray(metrics[name], dtype=np.float32) for name in spec.targets], axis=1)
    targets_tf = np.stack([transform_target(name, np.asarray(metrics[name], dtype=np.float64), spec)
                           for name in spec.targets], axis=1)
    return EncodedRows(reals=reals, cats=cats, targets=targets, targets_tf=targets_tf,
                       time_idx=np.asarray(time_idx, dtype=np.int64))


class BatchAssembler:
    """Turns gathered windows into ``(x, y)`` in the layout of ``TimeSeriesDataSet.to_dataloader``."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._rel_col = spec.x_reals.index(RELATIVE_TIME_IDX)
        self._profile_col = spec.x_categoricals.index("profile")
        self._target_cols = [spec.x_reals.index(t) for t in spec.targets]
        self._center_cols = [spec.x_reals.index(f"{t}_center") for t in spec.targets]
        self._scale_cols = [spec.x_reals.index(f"{t}_scale") for t in spec.targets]
        seasonal = spec.seasonal_inputs
        self._yesterday_cols = [spec.x_reals.index(name) for name in seasonal[:-1]]
        self._yesterday_flag_col = spec.x_reals.index(seasonal[-1]) if seasonal else None
        self._floors, self._ceilings = spec.scale_limits()
        self._level_scalers = {suffix: (np.array([spec.scalers[f"{t}_{suffix}"]["mean"] for t in spec.targets]),
                                        np.array([spec.scalers[f"{t}_{suffix}"]["scale"] for t in spec.targets]))
                               for suffix in ("center", "scale")}
        steps = np.arange(-spec.encoder_length, spec.prediction_length, dtype=np.float32)
        self._relative_time = steps / spec.encoder_length

    def __call__(self, cont: np.ndarray, cat: np.ndarray, raw: np.ndarray, target_tf: np.ndarray,
                 groups: np.ndarray, time_idx: np.ndarray, hide_profile: np.ndarray | None = None,
                 encoder_lengths: np.ndarray | None = None, yesterday_tf: np.ndarray | None = None,
                 ) -> tuple[dict[str, Any], tuple[list[torch.Tensor], None]]:
        """Windows of E+D rows ending at the decoder's end -> model inputs.

        Arrays are shaped (B, E+D, ...) (``cont`` and ``cat`` may be modified in place).
        ``encoder_lengths`` (B,) lets a window read only its last L <= E encoder rows (a new
        server with short history); as in ``TimeSeriesDataSet``'s collate, shorter encoders
        are right-padded with zeros to the longest one in the batch. ``yesterday_tf`` (B, E+D,
        targets): each row's yesterday (:func:`yesterday_values`: the mean of the transformed targets
        around ``spec.seasonal_lag`` buckets earlier), NaN where unknown; required when the spec has
        yesterday's inputs.
        """
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        batch_size, n_targets = len(cont), raw.shape[2]
        if self._yesterday_flag_col is not None and yesterday_tf is None:
            raise ValueError("BatchAssembler: this model reads yesterday's values (FeatureSpec.seasonal_lag) and "
                             "none were passed. Fix: pass yesterday_tf, as SeriesStore.batch and ForecastEngine "
                             f"do. See {TRAINING_GUIDE_DOC} (Yesterday as an input).")
        lengths = np.full(batch_size, enc, dtype=np.int64) if encoder_lengths is None \
            else np.asarray(encoder_lengths, dtype=np.int64)
        longest = int(lengths.max())
        if (lengths == enc).all():
            valid = None
        else:  # re-index: encoder step j of window b is row E - L_b + j; pads beyond L_b
            steps = np.arange(longest)[None, :]
            valid = steps < lengths[:, None]  # (B, Lmax)
            source = np.where(valid, enc - lengths[:, None] + steps, 0)
            full = np.concatenate([source, enc + np.arange(dec)[None, :].repeat(batch_size, 0)], axis=1)

            def take(a: np.ndarray) -> np.ndarray:
                return np.take_along_axis(a, full.reshape(batch_size, -1, *([1] * (a.ndim - 2))), axis=1)

            cont, cat, raw, target_tf, time_idx = take(cont), take(cat), take(raw), take(target_tf), take(time_idx)
            if yesterday_tf is not None:
                yesterday_tf = take(yesterday_tf)
        # Per-window normalisation of the targets over the real encoder steps (EncoderNormalizer, floored, capped).
        if valid is None:
            center, scale = encoder_center_scale(target_tf[:, :enc], self._floors, self.spec.center,
                                                 self._ceilings)  # (B, targets)
            cont[:, :, self._rel_col] = self._relative_time
        else:
            encoder_tf = np.where(valid[:, :, None], target_tf[:, :longest], np.nan)
            center = target_tf[np.arange(batch_size), lengths - 1] if self.spec.center == "last" \
                else np.nanmean(encoder_tf, axis=1)
            with np.errstate(invalid="ignore"):
                spread = np.nan_to_num(np.nanstd(encoder_tf, axis=1, ddof=1), nan=0.0)
            scale = np.minimum(np.maximum(spread + np.finfo(np.float32).eps, self._floors), self._ceilings)
            relative = np.concatenate([np.arange(longest)[None, :] - lengths[:, None],
                                       np.arange(dec)[None, :].repeat(batch_size, 0)], axis=1) / enc
            cont[:, :, self._rel_col] = relative
        cont[:, :, self._target_cols] = (target_tf - center[:, None, :]) / scale[:, None, :]
        if self._yesterday_flag_col is not None:
            known = np.isfinite(yesterday_tf)
            with np.errstate(invalid="ignore"):
                normalised = np.clip((yesterday_tf - center[:, None, :]) / scale[:, None, :],
                                     -FEATURES.seasonal_input_clip, FEATURES.seasonal_input_clip)
            cont[:, :, self._yesterday_cols] = np.where(known, normalised, 0.0)
            cont[:, :, self._yesterday_flag_col] = known.all(axis=2)
        for cols, suffix, values in ((self._center_cols, "center", center), (self._scale_cols, "scale", scale)):
            mean, std = self._level_scalers[suffix]
            cont[:, :, cols] = ((values - mean) / std)[:, None, :]
        if valid is not None:  # zero padding, exactly as pad_sequence leaves it
            pad = ~valid
            cont[:, :longest][pad] = 0.0
            cat[:, :longest][pad] = 0
            raw[:, :longest][pad] = 0.0
        if hide_profile is not None and hide_profile.any():
            cat[hide_profile, :, self._profile_col] = NAN_CODE
        cont = np.ascontiguousarray(cont, dtype=np.float32)
        cont_t, cat_t, raw_t = torch.from_numpy(cont), torch.from_numpy(np.ascontiguousarray(cat)), \
            torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        x = {
            "encoder_cat": cat_t[:, :longest], "encoder_cont": cont_t[:, :longest],
            "decoder_cat": cat_t[:, longest:], "decoder_cont": cont_t[:, longest:],
            "encoder_lengths": torch.from_numpy(lengths),
            "decoder_lengths": torch.full((batch_size,), dec, dtype=torch.long),
            "encoder_target": [raw_t[:, :longest, j] for j in range(n_targets)],
            "decoder_target": [raw_t[:, longest:, j] for j in range(n_targets)],
            "target_scale": [torch.from_numpy(np.stack([center[:, j], scale[:, j]], axis=1).astype(np.float32))
                             for j in range(n_targets)],
            "groups": torch.from_numpy(np.asarray(groups, dtype=np.int64)[:, None]),
            "decoder_time_idx": torch.from_numpy(np.ascontiguousarray(time_idx[:, longest:])),
        }
        y = ([raw_t[:, longest:, j] for j in range(n_targets)], None)
        return x, y


class SeriesStore:
    """The fleet as compact encoded rows: one contiguous block of rows per server."""

    def __init__(self, frame: pd.DataFrame, spec: FeatureSpec) -> None:
        frame = frame.sort_values([GROUP_ID, TIME_IDX], kind="stable")
        self.spec = spec
        ids = frame[GROUP_ID].to_numpy()
        bounds = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1, len(frame)]
        self.offsets = bounds[:-1].astype(np.int64)
        self.lengths = np.diff(bounds).astype(np.int64)
        self.server_ids = ids[self.offsets].tolist()
        self.server_names = frame["server_name"].astype(str).to_numpy()[self.offsets].tolist()
        self.profiles = frame["profile"].astype(str).to_numpy()[self.offsets].tolist()
        self.group_codes = spec.encode(GROUP_ID, self.server_ids)
        time_idx = frame[TIME_IDX].to_numpy(np.int64)
        same_server = np.ones(max(len(frame) - 1, 0), dtype=bool)
        same_server[self.offsets[1:] - 1] = False
        if (np.diff(time_idx)[same_server] != 1).any():
            raise ValueError(
                "SeriesStore needs every server on a complete 5-minute grid. Fix: pass the frame through "
                f"tft_features.densify() first. See {DATA_CONTRACT_DOC} (Offline rows)."
            )
        self.rows = encode_rows(spec, {name: frame[name].to_numpy() for name in LINBORG_METRICS}, time_idx,
                                frame["profile"].astype(str).to_numpy(), frame["state"].astype(str).to_numpy())
        self.time_idx = self.rows.time_idx
        self.targets = self.rows.targets
        # each row's yesterday (FeatureSpec.seasonal_lag), per server so no window reaches another server
        self.yesterday_tf = None
        if spec.seasonal_lag:
            self.yesterday_tf = np.concatenate([
                yesterday_values(self.rows.targets_tf[o:o + n], spec.seasonal_lag, spec.seasonal_half_window)
                for o, n in zip(self.offsets, self.lengths, strict=True)]).astype(np.float32)
        self._assemble = BatchAssembler(spec)
        self.hide_profiles = False  # True: every batch has the profile hidden (a profile-agnostic model)

    @property
    def n_servers(self) -> int:
        """Number of servers in the store."""
        return len(self.offsets)

    def window_starts(self, first_decoder_tidx: int | None = None, last_decoder_tidx: int | None = None,
                      stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """All windows whose decoder lies inside [first, last] (bucket numbers), per server.

        Returns ``(server_index, start_row_within_server)`` arrays.
        """
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        servers, starts = [], []
        for s in range(self.n_servers):
            t0 = self.time_idx[self.offsets[s]]
            lo, hi = 0, self.lengths[s] - enc - dec
            if first_decoder_tidx is not None:
                lo = max(lo, int(first_decoder_tidx - t0 - enc))
            if last_decoder_tidx is not None:
                hi = min(hi, int(last_decoder_tidx - t0 - enc - dec + 1))
            if hi < lo:
                continue
            idx = np.arange(lo, hi + 1, stride)
            servers.append(np.full(len(idx), s))
            starts.append(idx)
        if not servers:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(servers).astype(np.int64), np.concatenate(starts).astype(np.int64)

    def settled(self, servers: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Each window's history after its latest level shift (:func:`settled_lengths`), (W,)."""
        enc = self.spec.encoder_length
        rows = (self.offsets[servers] + starts)[:, None] + np.arange(enc)[None, :]  # (W, E)
        states = self.rows.cats[rows][:, :, self.spec.x_categoricals.index("state")]
        return settled_lengths(self.spec, self.targets[rows], states)

    def batch(self, servers: np.ndarray, starts: np.ndarray, hide_profile: np.ndarray | None = None,
              encoder_lengths: np.ndarray | None = None) -> tuple[dict[str, Any], tuple[list[torch.Tensor], None]]:
        """Windows -> ``(x, y)``.

        A window is named by its full-length start; ``encoder_lengths`` shortens the history it
        reads (keeping the same forecast origin), ``hide_profile`` sets its profile to unknown
        (every window's when ``hide_profiles`` is set).
        """
        if self.hide_profiles:
            hide_profile = np.ones(len(servers), dtype=bool)
        enc, dec = self.spec.encoder_length, self.spec.prediction_length
        rows = (self.offsets[servers] + starts)[:, None] + np.arange(enc + dec)[None, :]  # (B, E+D)
        rows = np.maximum(rows, 0)  # a short-history window's unused leading rows may precede its server
        r = self.rows
        return self._assemble(r.reals[rows], r.cats[rows], r.targets[rows], r.targets_tf[rows],
                              self.group_codes[servers], r.time_idx[rows], hide_profile, encoder_lengths,
                              None if self.yesterday_tf is None else self.yesterday_tf[rows].astype(np.float64))


# ---------------------------------------------------------------------------- outputs
def servers_within_budget(path: str | Path, budget_bytes: float, bytes_per_row: float) -> tuple[set[str] | None, int]:
    """Servers to train on so the compact data fits ``budget_bytes`` (None = all fit).

    Reads the row count from the Parquet footer and, only when over budget, the server
    column; keeps a deterministic subset (sorted by hash id) sized to fit. Returns the
    subset and the file's row count.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".csv":
        return None, -1
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows * bytes_per_row <= budget_bytes:
        return None, rows
    names = pq.read_table(path, columns=["server_name"]).column(0).to_pandas().astype(str)
    counts = names.value_counts()
    ordered = sorted(counts.index, key=hash_server_name)
    kept, total = set(), 0
    for name in ordered:
        if (total + counts[name]) * bytes_per_row > budget_bytes:
            break
        kept.add(name)
        total += int(counts[name])
    if not kept:
        raise ValueError(f"Not even one server of {path} fits the memory budget of {budget_bytes / 1e9:.1f} GB. "
                         f"Fix: raise --max-memory-gb. See {TRAINING_GUIDE_DOC} (Large data).")
    return kept, rows


def ordered_quantiles(part: torch.Tensor, keep_median: bool = False) -> torch.Tensor:
    """Quantiles (..., Q) put in order: the one place where p10 <= p50 <= p90 is enforced.

    Without ``keep_median`` the quantiles are sorted (a monotone rearrangement, Chernozhukov,
    Fernandez-Val & Galichon 2010: never worse in quantile loss than the crossed ones). With it the
    middle quantile stays where it is and the others are clamped to it from their side: after the
    band offsets move p10 and p90, a negative offset may narrow a band to its median but never
    swap p10 with p50 (a sort would then serve the shifted p10 as the median).
    """
    if not keep_median:
        return torch.sort(part, dim=-1).values
    middle = part.size(-1) // 2
    median = part[..., middle:middle + 1]
    below = torch.sort(torch.minimum(part[..., :middle], median), dim=-1).values
    above = torch.sort(torch.maximum(part[..., middle + 1:], median), dim=-1).values
    return torch.cat([below, median, above], dim=-1)


def decode_quantiles(prediction: list[torch.Tensor], spec: FeatureSpec) -> np.ndarray:
    """Model output (per target: B x D x Q, metric units) -> array (B, targets, D, Q).

    Every served and backtested forecast passes here. The quantiles are put in order by
    :func:`ordered_quantiles` (a no-op for a calibrated model, whose decode ordered them before its
    blend and after its band offsets, ``FleetTFT.transform_output``); clipping each metric to the
    contract's range and rounding counts are monotone, so p10 <= p50 <= p90 holds for what leaves.
    """
    stacked = ordered_quantiles(torch.stack([p.detach().float() for p in prediction], dim=1)).cpu().numpy()
    for j, name in enumerate(spec.targets):
        low, high = METRIC_RANGES[name]
        stacked[:, j] = np.clip(stacked[:, j], low, high if high is not None else np.inf)
        if name in INTEGER_METRICS:
            stacked[:, j] = np.round(stacked[:, j])
    return stacked


def load_training_frame(path: str | Path, columns: list[str] | None = None,
                        batch_rows: int = 1_000_000, servers: set[str] | None = None) -> pd.DataFrame:
    """Read LINBORG Parquet by row groups into a compact frame (float32, categoricals).

    Reads only the contract columns, one batch of row groups at a time (keeping only
    ``servers`` when given), so peak memory is the compact result plus one batch.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".csv":
        frame = pd.read_csv(path, usecols=columns)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        return frame
    columns = columns or ["timestamp", "server_name", "profile", "state", *LINBORG_METRICS]
    parts = []
    with pq.ParquetFile(path) as handle:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            part = batch.to_pandas()
            if servers is not None:
                part = part[part["server_name"].astype(str).isin(servers)]
            for name in FLOAT_METRICS:
                part[name] = part[name].astype(np.float32)
            for name in INTEGER_METRICS:
                part[name] = part[name].astype(np.int32)
            for name in ("server_name", "profile", "state"):
                part[name] = part[name].astype("category")
            parts.append(part)
    if not parts:
        raise ValueError(f"{path} holds no rows. Fix: regenerate or re-export it. See {TRAINING_GUIDE_DOC}.")
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    for name in ("server_name", "profile", "state"):
        if not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype("category")
    return frame


# ---------------------------------------------------------------------------- the recipe
@dataclass
class Features:
    """What :func:`build_features` produces."""

    frame: pd.DataFrame  # every server on its complete grid, with the model's columns
    encoder: ServerEncoder  # server name -> hash id (saved as the model's server_mapping.json)
    spec: FeatureSpec  # scalers, normalisers, category codes and the tensor layout
    dataset: Any | None  # the stock TimeSeriesDataSet the model is created from (None: not built)
    store: SeriesStore  # the fleet as compact per-server arrays, cut into batches
    seconds: dict[str, float] = field(default_factory=dict)  # time per step


def build_features(source: str | Path | pd.DataFrame, *, encoder: ServerEncoder | None = None,
                   spec: FeatureSpec | None = None, encoder_length: int | None = None,
                   targets: list[str] | None = None,
                   training_rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                   dataset_servers: int | None = None, dataset_rows: int | None = None,
                   servers: set[str] | None = None) -> Features:
    """The feature pipeline, one step after the other: load -> densify -> ids -> spec -> dataset -> series store.

    1. **load**: ``source`` is a LINBORG Parquet/CSV file, read compactly by
       :func:`load_training_frame` (only ``servers`` when given), or a frame the caller already
       loaded (and checked against the contract);
    2. **densify**: every server on its complete 5-minute grid, buckets without samples filled
       with the contract's offline vector (:func:`densify`);
    3. **ids**: hash server ids from ``encoder`` (a new :class:`ServerEncoder` by default), bucket
       numbers and calendar features (:func:`add_model_columns`);
    4. **spec**: ``spec`` as given (a saved model's, or a checkpoint's), else fitted by
       :func:`fit_feature_spec` on the training rows for ``encoder_length`` and ``targets``;
       the training rows are ``training_rows(frame)`` (all rows by default), so nothing is
       fitted on validation or held-out data;
    5. **dataset**: the stock ``TimeSeriesDataSet`` (:func:`make_timeseries_dataset`) of the
       training rows (of the first ``dataset_servers`` servers and ``dataset_rows`` rows each,
       when given): the model is created from it, and it records the model's tensor layout in
       the spec. ``dataset_servers=0`` skips it: the spec must then be complete (a saved model's);
    6. **series store**: the whole dense frame as a :class:`SeriesStore` for the spec.

    ``Features.seconds`` has the time of each step.
    """
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    def step_done(name: str) -> None:
        nonlocal began
        now = time.perf_counter()
        seconds[name] = now - began
        began = now

    frame = source if isinstance(source, pd.DataFrame) else load_training_frame(source, servers=servers)
    step_done("load")
    frame = densify(frame)
    step_done("densify")
    encoder = encoder if encoder is not None else ServerEncoder()
    frame = add_model_columns(frame, encoder)
    step_done("ids")
    rows = None
    if spec is None or dataset_servers != 0:
        rows = training_rows(frame) if training_rows is not None else frame
    if spec is None:
        if encoder_length is None:
            raise ValueError("build_features: fitting a feature spec needs encoder_length (or pass a fitted spec)")
        spec = fit_feature_spec(rows, encoder_length=encoder_length, targets=targets)
    step_done("spec")
    dataset = None
    if dataset_servers != 0:
        sample = rows
        if dataset_servers is not None:
            sample = rows[rows[GROUP_ID].isin(rows[GROUP_ID].drop_duplicates().head(dataset_servers))]
        if dataset_rows is not None:
            sample = sample.groupby(GROUP_ID, group_keys=False).head(dataset_rows)
        dataset = make_timeseries_dataset(sample, spec)
        spec = complete_spec_from_dataset(spec, dataset)
    step_done("dataset")
    store = SeriesStore(frame, spec)
    step_done("store")
    logger.info("features: %d rows, %d servers (%s)", len(frame), store.n_servers,
                ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items()))
    return Features(frame=frame, encoder=encoder, spec=spec, dataset=dataset, store=store, seconds=seconds)
