"""What a profile is worth on servers the model has never seen.

:func:`measure_profile_value` generates a fresh fleet (:func:`unseen_fleet`) whose servers the
model never saw and scores forecasts of them with their real profile, with the profile hidden,
and by a profile-agnostic model (:func:`train_agnostic_model`, which trains one), next to the
better naive baseline on the same windows, with bootstrap intervals of the gain. The benchmark
``bench/bench_profile_value.py`` is its command line. It sits above both the trainer and the
backtest (it trains a model and scores it), so neither of them imports it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config import HORIZONS, PROFILE_PREFIXES, PROFILE_STUDY, STEPS_PER_DAY, TRAINING_DATA_FILE, VALID_PROFILES
from metrics_generator import generate_dataset
from tft_evaluate import actuals_and_baselines, evaluate_windows, predict_windows, relative_gain, scoring_view
from tft_features import FeatureSpec, build_features
from tft_model import LoadedModel
from tft_trainer import build_arg_parser, settings_from_args, train


def unseen_fleet(model: LoadedModel, per_profile: int, days: int, seed: int, out_dir: Path) -> Path:
    """Generate a fleet holding ``per_profile`` servers of each profile the model never saw; the Parquet path.

    The simulator numbers servers per profile, so each profile gets as many more servers as
    the model knows of it: the extra ones have names the model has never seen.
    """
    known = set(model.encoder.name_to_id)
    counts = {p: per_profile + sum(1 for n in known if n.startswith(PROFILE_PREFIXES[p])) for p in VALID_PROFILES}
    generate_dataset(out_dir=out_dir, hours=24 * (days + 1), fleet=counts, seed=seed, progress=False)
    return out_dir / TRAINING_DATA_FILE


def _qrisk(spec: FeatureSpec, forecasts: np.ndarray, truth: tuple[np.ndarray, ...]) -> dict[str, dict[str, float]]:
    """Per horizon: mean q-risk 0.5 of the forecast and of the better baseline."""
    result = evaluate_windows(spec, forecasts, *truth)["per_horizon"]
    return {label: {"tft": row["qrisk_50_mean"]["tft"],
                    "baseline": row["qrisk_50_mean"][row["best_baseline"]]} for label, row in result.items()}


def measure_profile_value(model: LoadedModel, agnostic: LoadedModel | None, per_profile: int, days: int,
                          seed: int) -> dict[str, Any]:
    """Score forecasts of never-seen servers: with their profile, profile hidden, and by ``agnostic``.

    On a fresh fleet (:func:`unseen_fleet`) whose kept servers neither model knows, forecast
    origins every ``PROFILE_STUDY.origin_stride`` buckets over the last ``days`` days, with the
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
    servers, starts = store.window_starts(first, last, stride=PROFILE_STUDY.origin_stride)
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
            o_servers, o_starts = other.window_starts(first, last, stride=PROFILE_STUDY.origin_stride)
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
                   without: np.ndarray, resamples: int = PROFILE_STUDY.bootstrap_resamples, seed: int = 0
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
            gains[i] = relative_gain(risks[0], risks[1])
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
                gain = relative_gain(row["with_profile"]["tft"], row[k]["tft"])
                text += f"{gain:>+12.1%} [{low:+.1%}, {high:+.1%}]".rjust(30)
            lines.append(text)
        lines.append("  per profile, gain from the profile (30 min / 1 h / 8 h):")
        for profile, methods in block["per_profile"].items():
            parts = []
            for k in others:
                gains = " / ".join(f"{relative_gain(methods['with_profile'][h]['tft'], methods[k][h]['tft']):+.1%}"
                                   for h in HORIZONS)
                parts.append(f"vs {_SHORT[k]} {gains}")
            lines.append(f"    {profile:<16}" + "   ".join(parts))
    return "\n".join(lines)


def train_agnostic_model(data: Path, models_dir: Path, trainer_args: list[str] | None = None) -> Path:
    """Train a model that never sees a profile; ``trainer_args`` as for ``main.py train``. Returns its directory.

    Every window of its training, validation and backtest has the profile hidden
    (``TrainSettings.hide_profiles``; ``profile_dropout`` 1.0 records it in ``training_info.json``).
    """
    args = build_arg_parser().parse_args(["--data", str(data), "--models-dir", str(models_dir), *(trainer_args or [])])
    settings = dataclasses.replace(settings_from_args(args), profile_dropout=1.0, hide_profiles=True)
    return train(settings).model_dir
