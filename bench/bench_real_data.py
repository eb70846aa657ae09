"""Forecast quality on real traces: the model against naive and statistical baselines, per metric and horizon.

    python -m bench.bench_real_data                      # train on days 1-23, score days 24-30
    python -m bench.bench_real_data --dev                # train on days 1-19, score days 20-23
    python -m bench.bench_real_data --model models/x     # score a trained model (e.g. one trained by --dev)
    python -m bench.bench_real_data --cold-start-model models/latest   # a simulator model on never-seen VMs

1. **Import** the traces (default: the 26 Bitbrains "Rnd" VMs of August 2013 in
   ``../shared/realdata/bitbrains-rnd-2013-8``) with ``mappings/bitbrains_rnd.json`` into contract
   Parquet, the same as ``main.py import``.
2. **Train** with the trainer's default settings on the first ``--train-days`` whole UTC days only
   (and any partial day before them): the training file holds nothing later (no server is held
   out; validation is the last 48 h of those days).
3. **Score** forecasts made every hour (``--stride`` buckets) whose 8-hour decoder lies in the
   scored days, the model reading only data before each origin: q-risk at 0.5 and 0.9, MAE and
   p10-p90 coverage per measured metric (CPU as used %) and horizon, next to persistence,
   seasonal naive and the statsforecast models, all by ``tft_evaluate``'s scoring code.
4. **Judge** against the quality bar of Docs/IMPORTING.md and print the table; ``--out`` writes
   the JSON.

Choices (transforms, floors, hyper-parameters) are made with ``--dev`` (days 1-19 -> 20-23);
the default run's days 24-30 are only ever scored.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import (
    HORIZONS,
    METADATA_FILE,
    STATISTICAL_METHODS,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TIME_IDX,
    TRAINING_DATA_FILE,
    VALIDATION_HOURS,
)
from contract import bucket_of_times
from tft_evaluate import NAIVE_METHODS, backtest_store, calibrate_model_dir, format_table, statistical_from_args
from tft_features import build_features
from tft_model import load_model
from trace_importer import import_traces, measured_metrics_for

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACES = ROOT.parent / "shared" / "realdata" / "bitbrains-rnd-2013-8"
DEFAULT_MAPPING = ROOT / "mappings" / "bitbrains_rnd.json"
# The quality bar (issue 14; Docs/IMPORTING.md): q-risk 0.5, lower is better.
BAR_VS_NAIVE_MEAN = 0.10  # the metric-averaged q-risk beats the best naive baseline by this at 1 h and 8 h
BAR_HORIZONS = ("1hr", "8hr")
BAR_COVERAGE = (0.75, 0.85)  # p10-p90 coverage of every metric x horizon
SCORE_STRIDE = STEPS_PER_HOUR  # a forecast every hour


def split_days(data: Path, out_dir: Path, train_days: int, score_days: int | None) -> tuple[Path, Path, int]:
    """Write the first ``train_days`` (training) and the first ``train_days + score_days`` (scoring) days.

    Returns both paths and the first scored bucket. Each file gets the import's metadata, so
    the trainer and the scorer know which metrics were measured.
    """
    frame = pd.read_parquet(data)
    first = int(bucket_of_times(pd.DatetimeIndex([frame["timestamp"].min()]))[0])
    # Day 1 is the first whole UTC day (the Bitbrains traces start at 22:02 on 31 July: those two hours
    # are training data before day 1), so "days 24-30" are 24-30 August.
    first = first + (-first) % STEPS_PER_DAY
    cut = first + train_days * STEPS_PER_DAY
    tidx = bucket_of_times(frame["timestamp"])
    parts = {"train": frame[tidx < cut]}
    if score_days is not None:
        parts["score"] = frame[tidx < cut + score_days * STEPS_PER_DAY]
    else:
        parts["score"] = frame
    paths = {}
    for name, part in parts.items():
        target = out_dir / name / TRAINING_DATA_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target, index=False)
        shutil.copy(data.parent / METADATA_FILE, target.parent / METADATA_FILE)
        paths[name] = target
    logger.info("split: %d training rows (days 1-%d), scoring from %s", len(parts["train"]), train_days,
                pd.Timestamp(cut * 300, unit="s", tz="UTC").isoformat())
    return paths["train"], paths["score"], cut


def train_model(train_data: Path, models_dir: Path, trainer_args: list[str]) -> Path:
    """Train with the trainer's defaults (plus ``trainer_args``) on every server; the model directory."""
    from tft_trainer import build_arg_parser, settings_from_args, train

    args = build_arg_parser().parse_args(["--data", str(train_data), "--models-dir", str(models_dir),
                                          "--holdout-hours", "0", "--unseen-per-profile", "0", "--no-backtest",
                                          *trainer_args])
    return train(settings_from_args(args)).model_dir


def score_model(model_dir: Path, score_data: Path, first_scored: int, stride: int,
                statistical: tuple[str, ...], live_calibration: bool = True) -> dict[str, Any]:
    """Backtest ``model_dir`` on every origin whose decoder lies at or after ``first_scored``.

    ``live_calibration``: also score the bands as a daemon serving the model from the first scored
    bucket would have served them (its online calibration, learning only from forecasts whose
    target had arrived; ``tft_evaluate.served_forecasts``), under ``"served"``.
    """
    loaded = load_model(model_dir)
    known = set(loaded.encoder.name_to_id)  # before build_features, which adds the new names
    features = build_features(score_data, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0)
    last = int(features.frame[TIME_IDX].max())
    scored = measured_metrics_for(score_data)
    unseen = sorted(set(features.store.server_names) - known)
    # Every server is scored in the main table: servers the model never saw are its cold start.
    result = backtest_store(loaded.model, loaded.spec, features.store, first_scored, last, stride=stride,
                            scored=scored, statistical=statistical, live_calibration=live_calibration)
    result["model_dir"] = str(model_dir)
    result["servers_never_seen_by_the_model"] = len(unseen)
    return result


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality bar, clause by clause: what was required, what was measured, pass or fail.

    Coverage is judged on the served bands when the result has them (what a user of the daemon
    gets), else on the model's own; both are in the JSON.
    """
    checks = []
    served = result.get("served")
    which = "served" if served else "model"
    for metric, horizons in result["per_target"].items():
        for label, row in horizons.items():
            naive = min(row[m]["qrisk_50"] for m in NAIVE_METHODS)
            checks.append({"clause": f"{metric} {label}: q-risk <= best naive", "measured": row["tft"]["qrisk_50"],
                           "required": naive, "ok": row["tft"]["qrisk_50"] <= naive})
            cover = (served["per_target"][metric][label] if served else row)["tft"]["coverage_p10_p90"]
            checks.append({"clause": f"{metric} {label}: {which} coverage in {BAR_COVERAGE}", "measured": cover,
                           "required": BAR_COVERAGE, "ok": BAR_COVERAGE[0] <= cover <= BAR_COVERAGE[1]})
    for label in BAR_HORIZONS:
        row = result["per_horizon"][label]
        checks.append({"clause": f"mean {label}: >= {BAR_VS_NAIVE_MEAN:.0%} better than best naive",
                       "measured": row["improvement_vs_best_baseline"], "required": BAR_VS_NAIVE_MEAN,
                       "ok": row["improvement_vs_best_baseline"] >= BAR_VS_NAIVE_MEAN})
        if "best_statistical" in row:
            checks.append({"clause": f"mean {label}: no worse than best statistical ({row['best_statistical']})",
                           "measured": row["improvement_vs_best_statistical"], "required": 0.0,
                           "ok": row["improvement_vs_best_statistical"] >= 0.0})
    return checks


def format_checks(checks: list[dict[str, Any]]) -> str:
    """The bar as lines of PASS/FAIL."""
    lines = [f"Quality bar: {sum(c['ok'] for c in checks)}/{len(checks)} clauses hold"]
    for c in checks:
        required = c["required"]
        shown = f"{required:.3f}" if isinstance(required, float) else str(required)
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['clause']:<58} measured {c['measured']:+.3f} "
                     f"(bar {shown})")
    return "\n".join(lines)


def format_served(result: dict[str, Any]) -> str:
    """p10-p90 coverage of the model's bands and of the served ones (live calibration), per metric and horizon."""
    served = result.get("served")
    if not served:
        return ""
    lines = ["p10-p90 coverage: model's bands (conformal offsets from its validation days) -> served "
             "(the daemon's live calibration replayed from the first scored bucket)"]
    for metric, horizons in result["per_target"].items():
        cells = [f"{label} {row['tft']['coverage_p10_p90']:.3f} -> "
                 f"{served['per_target'][metric][label]['tft']['coverage_p10_p90']:.3f}"
                 for label, row in horizons.items()]
        lines.append(f"  {metric:<14} " + "   ".join(cells))
    return "\n".join(lines)


def wins_per_server(model_dir: Path, score_data: Path, first_scored: int, stride: int) -> dict[str, Any]:
    """How many servers the model beats persistence on, per horizon (metric-averaged q-risk per server)."""
    import numpy as np

    from tft_evaluate import actuals_and_baselines, evaluate_windows, predict_windows

    loaded = load_model(model_dir)
    store = build_features(score_data, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0).store
    last = int(store.time_idx.max())
    servers, starts = store.window_starts(first_scored, last, stride=stride)
    forecasts = predict_windows(loaded.model, store, servers, starts)
    truth = actuals_and_baselines(store, servers, starts)
    scored = measured_metrics_for(score_data)
    wins = {label: 0 for label in HORIZONS}
    for code in np.unique(servers):
        rows = servers == code
        summary = evaluate_windows(loaded.spec, forecasts[rows], *(t[rows] for t in truth), scored=scored)
        for label, row in summary["per_horizon"].items():
            wins[label] += row["qrisk_50_mean"]["tft"] < row["qrisk_50_mean"]["persistence"]
    return {"servers": int(len(np.unique(servers))), "beats_persistence": wins}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="directory of trace CSVs")
    parser.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING)
    parser.add_argument("--work", type=Path, default=Path("bench_real_data"), help="imports and models go here")
    parser.add_argument("--dev", action="store_true",
                        help="development split: train on days 1-19, score days 20-23 (never look at 24-30)")
    parser.add_argument("--train-days", type=int, default=None, help="default 23 (19 with --dev)")
    parser.add_argument("--score-days", type=int, default=None, help="default: the rest (4 with --dev)")
    parser.add_argument("--model", type=Path, default=None, help="score this model instead of training one")
    parser.add_argument("--recalibrate", action="store_true",
                        help="with --model: fit its persistence blend and conformal bands on the last 48 h of the "
                             "training days first (for a model trained without them)")
    parser.add_argument("--cold-start-model", type=Path, default=None,
                        help="also score this model (e.g. trained on the simulator only) on the VMs as never-seen "
                             "servers")
    parser.add_argument("--stride", type=int, default=SCORE_STRIDE, help="buckets between forecast origins")
    parser.add_argument("--statistical", default=",".join(STATISTICAL_METHODS))
    parser.add_argument("--no-statistical", action="store_true")
    parser.add_argument("--no-live-calibration", action="store_true",
                        help="skip replaying the daemon's live band calibration (forecasts at every origin)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("trainer_args", nargs="*", help="after --: extra arguments for the trainer (e.g. --epochs 8)")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    began = time.perf_counter()
    train_days = args.train_days or (19 if args.dev else 23)
    score_days = args.score_days or (4 if args.dev else None)
    work = args.work / ("dev" if args.dev else "final")
    sources = sorted(args.traces.glob("*.csv"))
    if not sources:
        print(f"No trace CSVs in {args.traces}. Fix: pass --traces DIR. See Docs/IMPORTING.md.", file=sys.stderr)
        return 1
    imported = work / "import" / TRAINING_DATA_FILE
    import_traces(sources, args.mapping, imported)
    train_data, score_data, first_scored = split_days(imported, work, train_days, score_days)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_dir = args.model or train_model(train_data, work / "models", args.trainer_args)
    timings["train"] = time.perf_counter() - t0
    if args.model and args.recalibrate:
        calibrate_model_dir(args.model, train_data, VALIDATION_HOURS)
    statistical = statistical_from_args(args)
    t0 = time.perf_counter()
    result = score_model(model_dir, score_data, first_scored, args.stride, statistical,
                         live_calibration=not args.no_live_calibration)
    timings["score"] = time.perf_counter() - t0
    result["wins"] = wins_per_server(model_dir, score_data, first_scored, args.stride)
    result["bar"] = judge(result)
    report: dict[str, Any] = {"traces": str(args.traces), "train_days": train_days, "score_days": score_days,
                              "dev": args.dev, "trained": result}
    print(format_table(result))
    if result.get("served"):
        print("\n" + format_served(result))
    wins = result["wins"]
    print("\nmodel beats persistence (metric-averaged q-risk 0.5) on "
          + ", ".join(f"{n}/{wins['servers']} servers at {h}" for h, n in wins["beats_persistence"].items()))
    print("\n" + format_checks(result["bar"]))
    if args.cold_start_model:
        t0 = time.perf_counter()
        cold = score_model(args.cold_start_model, score_data, first_scored, args.stride, (),
                           live_calibration=not args.no_live_calibration)
        timings["cold_start"] = time.perf_counter() - t0
        report["cold_start"] = cold
        print(f"\nCold start: {args.cold_start_model} (never saw these {cold['servers_never_seen_by_the_model']} "
              "servers) on the same windows")
        print(format_table(cold))
        if cold.get("served"):
            print("\n" + format_served(cold))
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    report["seconds"]["total"] = round(time.perf_counter() - began, 1)
    print(f"\ntook {report['seconds']['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    out = args.out or work / "result.json"
    atomic_write_json(out, report)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
