"""What is a server's profile worth to a forecast of a server the model has never seen?

    python -m bench.bench_profile_value --model models/latest
    python -m bench.bench_profile_value --model models/latest --agnostic-model <dir> --per-profile 12

Generates a fresh fleet with another seed and keeps only servers whose names the model has
never seen (``--per-profile`` of each profile), then scores forecasts over the last ``--days``
days of it, with the full history window and at cold start (the daemon's minimum history):

* **with profile**: the model, told each server's real profile;
* **profile hidden**: the same model with the profile set to its unknown category;
* **agnostic model** (``--agnostic-model``): a model trained with the profile hidden in every
  window, i.e. one that never learned what profiles mean. Train one with
  ``python -m bench.bench_profile_value --train-agnostic --data <the model's training data>``.

q-risk at 0.5 is averaged over the targets, next to the better of persistence and seasonal
naive measured on the same windows, overall and per profile. The gains are
``1 - q-risk(with profile) / q-risk(profile-agnostic forecast)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common_utils import quiet_library_noise, setup_logging
from config import DEFAULT_FLEET, HORIZONS, PROFILE_PREFIXES, STEPS_PER_DAY, TRAINING_DATA_FILE, VALID_PROFILES
from metrics_generator import generate_dataset
from tft_evaluate import actuals_and_baselines, evaluate_windows, predict_windows
from tft_features import SeriesStore, add_model_columns, densify, load_training_frame
from tft_model import LoadedModel, load_model

logger = logging.getLogger(__name__)
BENCH_SEED = 4242  # any seed but the training fleet's
BENCH_STRIDE = 6  # forecast origins every 30 minutes
BOOTSTRAP_RESAMPLES = 1000


def unseen_fleet(model: LoadedModel, per_profile: int, days: int, seed: int, out_dir: Path) -> Path:
    """Write a fleet whose kept servers all have names the model never saw; returns the Parquet path."""
    known = set(model.encoder.name_to_id)
    counts = {p: per_profile + sum(1 for n in known if n.startswith(PROFILE_PREFIXES[p])) for p in VALID_PROFILES}
    generate_dataset(out_dir=out_dir, hours=24 * (days + 1), fleet=counts, seed=seed, progress=False)
    return out_dir / TRAINING_DATA_FILE


def _store(model: LoadedModel, path: Path, names: set[str]) -> SeriesStore:
    frame = load_training_frame(path, servers=names)
    return SeriesStore(add_model_columns(densify(frame), model.encoder), model.spec)


def _qrisk(spec: Any, forecasts: np.ndarray, truth: tuple[np.ndarray, ...]) -> dict[str, dict[str, float]]:
    """Per horizon: mean q-risk 0.5 of the forecast and of the better baseline."""
    result = evaluate_windows(spec, forecasts, *truth)["per_horizon"]
    return {label: {"tft": row["qrisk_50_mean"]["tft"],
                    "baseline": row["qrisk_50_mean"][row["best_baseline"]]} for label, row in result.items()}


def measure(model: LoadedModel, agnostic: LoadedModel | None, per_profile: int, days: int,
            seed: int) -> dict[str, Any]:
    """Score with-profile, profile-hidden and (optionally) agnostic forecasts on never-seen servers."""
    with tempfile.TemporaryDirectory() as tmp:
        path = unseen_fleet(model, per_profile, days, seed, Path(tmp))
        everyone = pd.read_parquet(path, columns=["server_name"])["server_name"].astype(str).unique()
        names = set(everyone) - set(model.encoder.name_to_id)
        if agnostic is not None:
            names -= set(agnostic.encoder.name_to_id)
        store = _store(model, path, names)
        other = _store(agnostic, path, names) if agnostic is not None else None
    last = int(store.time_idx.max())
    servers, starts = store.window_starts(last - days * STEPS_PER_DAY + 1, last, stride=BENCH_STRIDE)
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
            o_servers, o_starts = other.window_starts(last - days * STEPS_PER_DAY + 1, last, stride=BENCH_STRIDE)
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


def bootstrap_gain(spec: Any, servers: np.ndarray, actual: np.ndarray, with_profile: np.ndarray,
                   without: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
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
        y = actual[:, :, steps - 1].astype(np.float64)  # (W, targets)
        sums = []
        for forecast in (with_profile, without):
            error = np.abs(y - forecast[:, :, steps - 1, p50])
            keep = np.isfinite(error)
            per_server = np.zeros((len(codes), y.shape[1], 2))
            np.add.at(per_server[:, :, 0], inverse, np.where(keep, error, 0.0))
            np.add.at(per_server[:, :, 1], inverse, np.where(keep, np.abs(y), 0.0))
            sums.append(per_server)
        gains = np.empty(resamples)
        for i in range(resamples):
            pick = rng.integers(0, len(codes), len(codes))
            risks = [(part[pick, :, 0].sum(0) / np.maximum(part[pick, :, 1].sum(0), 1e-9)).mean() for part in sums]
            gains[i] = _gain(risks[0], risks[1])
        out[label] = (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))
    return out


def _gain(with_profile: float, without: float) -> float:
    return 1.0 - with_profile / max(without, 1e-12)


_SHORT = {"profile_hidden": "hidden", "agnostic_model": "agnostic"}


def format_report(result: dict[str, Any]) -> str:
    """Tables: overall per horizon, then the 8-hour gain per profile."""
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
                text += f"{_gain(row['with_profile']['tft'], row[k]['tft']):>+12.1%} [{low:+.1%}, {high:+.1%}]".rjust(30)
            lines.append(text)
        lines.append("  per profile, gain from the profile (30 min / 1 h / 8 h):")
        for profile, methods in block["per_profile"].items():
            parts = []
            for k in others:
                gains = " / ".join(f"{_gain(methods['with_profile'][h]['tft'], methods[k][h]['tft']):+.1%}"
                                   for h in HORIZONS)
                parts.append(f"vs {_SHORT[k]} {gains}")
            lines.append(f"    {profile:<16}" + "   ".join(parts))
    return "\n".join(lines)


def train_agnostic(data: Path, models_dir: Path, trainer_args: list[str] | None = None) -> Path:
    """Train a model that never sees a profile (every window hidden); ``trainer_args`` as for ``main.py train``."""
    import tft_features
    from tft_trainer import build_arg_parser, settings_from_args, train

    original = tft_features.SeriesStore.batch

    def hidden(self: SeriesStore, servers: np.ndarray, starts: np.ndarray, hide_profile: Any = None,
               **kwargs: Any) -> Any:
        return original(self, servers, starts, hide_profile=np.ones(len(servers), dtype=bool), **kwargs)

    tft_features.SeriesStore.batch = hidden  # training, validation and its backtest all hide the profile
    try:
        args = build_arg_parser().parse_args(["--data", str(data), "--models-dir", str(models_dir),
                                              *(trainer_args or [])])
        result = train(dataclasses.replace(settings_from_args(args), profile_dropout=1.0))
    finally:
        tft_features.SeriesStore.batch = original
    return result.model_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/latest"))
    parser.add_argument("--agnostic-model", type=Path, default=None)
    parser.add_argument("--train-agnostic", action="store_true",
                        help="train the agnostic model on --data first (default settings; ~20 min on 2 CPU cores)")
    parser.add_argument("--data", type=Path, default=None, help="training data for --train-agnostic")
    parser.add_argument("--agnostic-models-dir", type=Path, default=Path("models/agnostic"))
    parser.add_argument("--per-profile", type=int, default=max(DEFAULT_FLEET.values()) // 2)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=BENCH_SEED)
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    if args.train_agnostic:
        if args.data is None:
            parser.error("--train-agnostic needs --data (the with-profile model's training data)")
        args.agnostic_model = train_agnostic(args.data, args.agnostic_models_dir)
    began = time.perf_counter()
    model = load_model(args.model)
    agnostic = load_model(args.agnostic_model) if args.agnostic_model else None
    result = measure(model, agnostic, args.per_profile, args.days, args.seed)
    print(format_report(result))
    print(f"\n({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
