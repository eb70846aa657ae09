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

from baselines import StatisticalSettings
from calibration_fit import calibrate_model_dir
from cli_options import add_options
from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import (
    HORIZONS,
    METADATA_FILE,
    RETRAIN,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TIME_IDX,
    TRAINER,
    TRAINING_DATA_FILE,
)
from contract import bucket_of_times
from tft_evaluate import (
    NAIVE_METHODS,
    actuals_and_baselines,
    backtest_store,
    evaluate_windows,
    format_table,
    predict_windows,
)
from tft_features import build_features
from tft_model import load_model
from tft_trainer import build_arg_parser, settings_from_args, train
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


def split_days(data: Path, out_dir: Path, train_days: int, score_days: int | None,
               history_days: int | None = None) -> tuple[Path, Path, int]:
    """Write the first ``train_days`` (training) and the first ``train_days + score_days`` (scoring) days.

    ``history_days``: the training file holds only the last that many of the training days (a
    fleet that has fed a daemon for that long). Returns both paths and the first scored bucket.
    Each file gets the import's metadata, so the trainer and the scorer know which metrics were
    measured.
    """
    frame = pd.read_parquet(data)
    first = int(bucket_of_times(pd.DatetimeIndex([frame["timestamp"].min()]))[0])
    # Day 1 is the first whole UTC day (the Bitbrains traces start at 22:02 on 31 July: those two hours
    # are training data before day 1), so "days 24-30" are 24-30 August.
    first = first + (-first) % STEPS_PER_DAY
    cut = first + train_days * STEPS_PER_DAY
    tidx = bucket_of_times(frame["timestamp"])
    begin = cut - history_days * STEPS_PER_DAY if history_days else None
    parts = {"train": frame[(tidx < cut) & ((tidx >= begin) if begin is not None else True)]}
    if score_days is not None:
        parts["score"] = frame[tidx < cut + score_days * STEPS_PER_DAY]
    else:
        parts["score"] = frame
    paths = {}
    for name, part in parts.items():
        target = out_dir / (f"{name}-last{history_days}d" if history_days and name == "train" else name) \
            / TRAINING_DATA_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target, index=False)
        shutil.copy(data.parent / METADATA_FILE, target.parent / METADATA_FILE)
        paths[name] = target
    logger.info("split: %d training rows (days 1-%d), scoring from %s", len(parts["train"]), train_days,
                pd.Timestamp(cut * 300, unit="s", tz="UTC").isoformat())
    return paths["train"], paths["score"], cut


def train_model(train_data: Path, models_dir: Path, trainer_args: list[str], warm_start: Path | None = None) -> Path:
    """Train with the trainer's defaults (plus ``trainer_args``) on every server; the model directory.

    ``warm_start``: start from that model's weights with the retrain's epochs (``RETRAIN.epochs``),
    as the learning loop's retrain does.
    """
    epochs = ["--epochs", str(RETRAIN.epochs)] if warm_start is not None else []
    args = build_arg_parser().parse_args(["--data", str(train_data), "--models-dir", str(models_dir),
                                          "--holdout-hours", "0", "--unseen-per-profile", "0", "--no-backtest",
                                          *epochs, *trainer_args])
    settings = settings_from_args(args)
    settings.warm_start = warm_start
    return train(settings).model_dir


def score_model(model_dir: Path, score_data: Path, first_scored: int, stride: int,
                statistical: tuple[str, ...], live_calibration: bool = True, live_selection: bool = True,
                statistical_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Backtest ``model_dir`` on every origin whose decoder lies at or after ``first_scored``.

    ``live_calibration``: also score the forecasts as a daemon serving the model from the first
    scored bucket would have served them (its online band calibration and, with ``live_selection``,
    its per-series choice of the model or the last value, learning only from forecasts whose target
    had arrived; ``tft_evaluate.served_forecasts``), under ``"served"``. Servers outside the
    model's mapping start on the last value there, as in the daemon.
    """
    loaded = load_model(model_dir)
    known = set(loaded.encoder.name_to_id)  # before build_features, which adds the new names
    features = build_features(score_data, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0)
    last = int(features.frame[TIME_IDX].max())
    scored = measured_metrics_for(score_data)
    unseen = sorted(set(features.store.server_names) - known)
    # Every server is scored in the main table: servers the model never saw are its cold start.
    result = backtest_store(loaded.model, loaded.spec, features.store, first_scored, last, stride=stride,
                            scored=scored, statistical=statistical, live_calibration=live_calibration,
                            known_servers=known, live_selection=live_selection,
                            statistical_cache=statistical_cache)
    result["model_dir"] = str(model_dir)
    result["servers_never_seen_by_the_model"] = len(unseen)
    return result


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality bar, clause by clause: what was required, what was measured, pass or fail.

    Judged on what a daemon serving the model gets when the result has it (live band calibration
    and live selection replayed, ``"served"``), else on the model's own forecasts; the model's own
    bands (what a daemon serves before live calibration has learned) must cover too.
    """
    checks = []
    served = result.get("served")
    which = "served" if served else "model"
    judged = served or result
    for metric, horizons in judged["per_target"].items():
        for label, row in horizons.items():
            naive = min(row[m]["qrisk_50"] for m in NAIVE_METHODS)
            checks.append({"clause": f"{metric} {label}: {which} q-risk <= best naive", "measured":
                           row["tft"]["qrisk_50"], "required": naive, "ok": row["tft"]["qrisk_50"] <= naive})
            cover = row["tft"]["coverage_p10_p90"]
            checks.append({"clause": f"{metric} {label}: {which} coverage in {BAR_COVERAGE}", "measured": cover,
                           "required": BAR_COVERAGE, "ok": BAR_COVERAGE[0] <= cover <= BAR_COVERAGE[1]})
            if served:
                own = result["per_target"][metric][label]["tft"]["coverage_p10_p90"]
                checks.append({"clause": f"{metric} {label}: model's own coverage in {BAR_COVERAGE}",
                               "measured": own, "required": BAR_COVERAGE,
                               "ok": BAR_COVERAGE[0] <= own <= BAR_COVERAGE[1]})
    for label in BAR_HORIZONS:
        row = judged["per_horizon"][label]
        checks.append({"clause": f"mean {label}: {which} >= {BAR_VS_NAIVE_MEAN:.0%} better than best naive",
                       "measured": row["improvement_vs_best_baseline"], "required": BAR_VS_NAIVE_MEAN,
                       "ok": row["improvement_vs_best_baseline"] >= BAR_VS_NAIVE_MEAN})
        if "best_statistical" in row:
            checks.append({"clause": f"mean {label}: {which} no worse than best statistical "
                                     f"({row['best_statistical']})",
                           "measured": row["improvement_vs_best_statistical"], "required": 0.0,
                           "ok": row["improvement_vs_best_statistical"] >= 0.0})
    return checks


def format_spread(runs: list[dict[str, Any]]) -> str:
    """Per metric x horizon, the served q-risk of every run (seed) against the best naive, and the bar's means."""
    if len(runs) < 2:
        return ""
    judged = [r.get("served") or r for r in runs]
    lines = [f"Across {len(runs)} runs (seeds): served q-risk 0.5, min-max [model's own min-max] vs best naive; "
             "runs at least as good as the best naive"]
    for metric, horizons in judged[0]["per_target"].items():
        cells = []
        for label in horizons:
            values = [j["per_target"][metric][label]["tft"]["qrisk_50"] for j in judged]
            own = [r["per_target"][metric][label]["tft"]["qrisk_50"] for r in runs]
            naive = min(judged[0]["per_target"][metric][label][m]["qrisk_50"] for m in NAIVE_METHODS)
            ok = sum(v <= naive for v in values)
            cells.append(f"{label} {min(values):.3f}-{max(values):.3f} [{min(own):.3f}-{max(own):.3f}] "
                         f"vs {naive:.3f} {ok}/{len(runs)}")
        lines.append(f"  {metric:<14} " + "   ".join(cells))
    for label in HORIZONS:
        gains = [j["per_horizon"][label]["improvement_vs_best_baseline"] for j in judged]
        lines.append(f"  mean {label:<9} served vs best naive {min(gains):+.1%} to {max(gains):+.1%}")
    return "\n".join(lines)


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
    """The model's forecasts against the served ones (live calibration and selection), per metric and horizon."""
    served = result.get("served")
    if not served:
        return ""
    lines = ["model's forecasts -> served (the daemon's live calibration and selection replayed from the first "
             "scored bucket): q-risk 0.5, p10-p90 coverage, share served the last value"]
    shares = served.get("live_selection", {}).get("last_value_share", {})
    for metric, horizons in result["per_target"].items():
        cells = []
        for label, row in horizons.items():
            after = served["per_target"][metric][label]["tft"]
            share = shares.get(metric, {}).get(label)
            cells.append(f"{label} {row['tft']['qrisk_50']:.3f}->{after['qrisk_50']:.3f} "
                         f"cov {row['tft']['coverage_p10_p90']:.2f}->{after['coverage_p10_p90']:.2f}"
                         + (f" last {share:.2f}" if share is not None else ""))
        lines.append(f"  {metric:<14} " + "   ".join(cells))
    return "\n".join(lines)


def wins_per_server(model_dir: Path, score_data: Path, first_scored: int, stride: int) -> dict[str, Any]:
    """How many servers the model beats persistence on, per horizon (metric-averaged q-risk per server)."""
    import numpy as np

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
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="score this model instead of training one (repeat for several, e.g. one per seed)")
    parser.add_argument("--seeds", default=None,
                        help="train one model per seed (comma-separated) and report the spread of every figure")
    parser.add_argument("--recalibrate", action="store_true",
                        help="with --model: fit its persistence blend and conformal bands on the last 48 h of the "
                             "training days first (for a model trained without them, or before the blend's "
                             "significance test)")
    parser.add_argument("--history-days", type=int, default=None,
                        help="train on only the last N of the training days (a fleet that has fed a daemon that "
                             "long: how much history the first retrain needs)")
    parser.add_argument("--warm-start", type=Path, default=None,
                        help="start training from this model's weights with the retrain's epochs (with "
                             "--history-days and the cold-start model: the learning loop's first retrain)")
    parser.add_argument("--cold-start-model", type=Path, default=None,
                        help="also score this model (e.g. trained on the simulator only) on the VMs as never-seen "
                             "servers")
    parser.add_argument("--stride", type=int, default=SCORE_STRIDE, help="buckets between forecast origins")
    add_options(parser, StatisticalSettings)
    parser.add_argument("--no-live-calibration", action="store_true",
                        help="skip replaying the daemon's live band calibration and selection (forecasts at every "
                             "origin)")
    parser.add_argument("--no-live-selection", action="store_true",
                        help="replay the live band calibration only (the model everywhere, as before 0.17.0)")
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
    train_data, score_data, first_scored = split_days(imported, work, train_days, score_days, args.history_days)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.model:
        model_dirs = list(args.model)
        if args.recalibrate:
            for model_dir in model_dirs:
                calibrate_model_dir(model_dir, train_data, TRAINER.validation_hours)
    else:
        seeds = [s.strip() for s in args.seeds.split(",") if s.strip()] if args.seeds else [None]
        model_dirs = [train_model(train_data, work / "models", [*args.trainer_args,
                                                                *(["--seed", seed] if seed else [])],
                                  warm_start=args.warm_start)
                      for seed in seeds]
    timings["train"] = time.perf_counter() - t0
    statistical = args.statistical
    live = not args.no_live_calibration
    cache: dict[str, Any] = {}
    runs = []
    t0 = time.perf_counter()
    for model_dir in model_dirs:
        result = score_model(model_dir, score_data, first_scored, args.stride, statistical, live_calibration=live,
                             live_selection=not args.no_live_selection, statistical_cache=cache)
        result["wins"] = wins_per_server(model_dir, score_data, first_scored, args.stride)
        result["bar"] = judge(result)
        runs.append(result)
        print(f"\n== {model_dir}")
        print(format_table(result))
        if result.get("served"):
            print("\n" + format_served(result))
        wins = result["wins"]
        print("\nmodel beats persistence (metric-averaged q-risk 0.5) on "
              + ", ".join(f"{n}/{wins['servers']} servers at {h}" for h, n in wins["beats_persistence"].items()))
        print("\n" + format_checks(result["bar"]))
    timings["score"] = time.perf_counter() - t0
    report: dict[str, Any] = {"traces": str(args.traces), "train_days": train_days, "score_days": score_days,
                              "dev": args.dev, "trained": runs[0], "runs": runs}
    spread = format_spread(runs)
    if spread:
        print("\n" + spread)
        report["bar_every_run"] = all(c["ok"] for r in runs for c in r["bar"])
    if args.cold_start_model:
        t0 = time.perf_counter()
        cold = score_model(args.cold_start_model, score_data, first_scored, args.stride, (), live_calibration=live,
                           live_selection=not args.no_live_selection)
        timings["cold_start"] = time.perf_counter() - t0
        report["cold_start"] = cold
        print(f"\nCold start: {args.cold_start_model} (never saw these {cold['servers_never_seen_by_the_model']} "
              "servers) on the same windows")
        print(format_table(cold))
        if cold.get("served"):
            print("\n" + format_served(cold))
            print("\n" + format_checks([c for c in judge(cold) if "q-risk" in c["clause"]]))
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    report["seconds"]["total"] = round(time.perf_counter() - began, 1)
    print(f"\ntook {report['seconds']['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    out = args.out or work / "result.json"
    atomic_write_json(out, report)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
