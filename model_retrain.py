"""Retrain from the fleet's own history; promote the challenger only when it is shown better.

    python main.py retrain --store data/metrics_store.sqlite3 --models-dir models
    python main.py retrain --data training/live.parquet --models-dir models --epochs 4

One retrain:

1. the data: the daemon's store exported as contract Parquet (``store_export``; it may run
   beside the daemon), or a Parquet file;
2. a challenger trained by the ordinary trainer on everything but the most recent
   ``--holdout-hours`` (default 24 h; it never sees them, not even for validation), warm-started
   from the serving model's weights where the shapes match, with progress; it is written
   beside the others but ``latest`` is left alone;
3. the champion (``<models-dir>/latest``) and the challenger backtested on the same held-out
   windows with the same code (``tft_evaluate.backtest_store``), compared on the metrics both
   forecast;
4. the gate: promote only if the challenger's mean q-risk at 0.5 is no worse at every horizon
   and its mean p10-p90 coverage at every horizon lies inside ``PROMOTION_COVERAGE_BAND``;
   otherwise the champion keeps serving and the report says why. The report (JSON + a table)
   goes to ``<models-dir>/reports/``; promotion is an atomic symlink swap (``model_registry``),
   which a daemon started with ``--model-dir <models-dir>/latest`` picks up by itself.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common_utils import atomic_write_json, atomic_write_text
from config import (
    HORIZONS,
    MODELS_KEEP,
    PROMOTION_COVERAGE_BAND,
    PROMOTION_QRISK_TOLERANCE,
    RETRAIN_DOC,
    RETRAIN_EPOCHS,
    RETRAIN_REPORTS_SUBDIR,
    RETRAIN_WORK_SUBDIR,
    TRAINING_DATA_FILE,
)
from model_registry import current_model, promote, record_rejection

logger = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """A retrain that could not be run (the message says why and what to do)."""


# ---------------------------------------------------------------------------- the gate
def backtest_champion(champion_dir: Path, data_path: Path, val_hours: int, holdout_hours: int,
                      unseen_per_profile: int, unseen_servers: list[str]) -> dict[str, Any]:
    """The serving model's backtest on the challenger's held-out window (its own feature spec)."""
    from tft_evaluate import backtest_store
    from tft_model import load_model
    from tft_trainer import prepare_data

    loaded = load_model(champion_dir)
    data = prepare_data(data_path, loaded.spec.encoder_length, val_hours, holdout_hours, unseen_per_profile,
                        spec=loaded.spec)
    return backtest_store(loaded.model, loaded.spec, data.store, first_decoder_tidx=data.val_end_tidx + 1,
                          last_decoder_tidx=data.data_end_tidx, unseen_servers=unseen_servers)


def compare(champion: dict[str, Any] | None, challenger: dict[str, Any],
            coverage_band: tuple[float, float] = PROMOTION_COVERAGE_BAND,
            tolerance: float = PROMOTION_QRISK_TOLERANCE) -> dict[str, Any]:
    """The gate's verdict from two backtests: per horizon the mean q-risk and coverage over the shared metrics."""
    metrics = sorted(set(challenger["per_target"]) & set(champion["per_target"]) if champion
                     else set(challenger["per_target"]))
    if not metrics:
        theirs = sorted((champion or {}).get("per_target", {}))
        raise RetrainError(f"the champion forecasts {theirs} and the challenger "
                           f"{sorted(challenger['per_target'])}: no metric in common to compare them on. Fix: "
                           f"retrain with the same measured metrics, or promote by hand. See {RETRAIN_DOC}.")
    low, high = coverage_band
    rows, reasons = [], []
    for label in HORIZONS:
        def mean(backtest: dict[str, Any], method: str, key: str, label: str = label) -> float:
            return float(np.mean([backtest["per_target"][m][label][method][key] for m in metrics]))

        row = {"horizon": label, "challenger_qrisk_50": mean(challenger, "tft", "qrisk_50"),
               "challenger_coverage": mean(challenger, "tft", "coverage_p10_p90"),
               "persistence_qrisk_50": mean(challenger, "persistence", "qrisk_50"),
               "windows": int(challenger["per_target"][metrics[0]][label]["tft"]["n"])}
        if champion is not None:
            row["champion_qrisk_50"] = mean(champion, "tft", "qrisk_50")
            row["champion_coverage"] = mean(champion, "tft", "coverage_p10_p90")
            row["champion_windows"] = int(champion["per_target"][metrics[0]][label]["tft"]["n"])
            if row["challenger_qrisk_50"] > row["champion_qrisk_50"] * (1.0 + tolerance):
                reasons.append(f"{label}: q-risk {row['challenger_qrisk_50']:.4f} is worse than the champion's "
                               f"{row['champion_qrisk_50']:.4f}")
        if not low <= row["challenger_coverage"] <= high:
            reasons.append(f"{label}: p10-p90 coverage {row['challenger_coverage']:.3f} is outside "
                           f"{low:.2f}-{high:.2f}")
        rows.append(row)
    promoted = not reasons
    decision = ("promoted: no worse than the champion at every horizon, coverage inside the band"
                if promoted and champion is not None else
                "promoted: no champion to compare with, coverage inside the band" if promoted else
                "kept the champion: " + "; ".join(reasons))
    return {"promote": promoted, "decision": decision, "metrics": metrics, "coverage_band": [low, high],
            "qrisk_tolerance": tolerance, "per_horizon": rows, "reasons": reasons}


def format_report(report: dict[str, Any]) -> str:
    """The promotion report as a readable table."""
    lines = [f"retrain {report['started_at']}: challenger {report['challenger']} vs champion "
             f"{report['champion'] or 'none'}",
             f"held-out window {report['holdout']['first']} .. {report['holdout']['last']} "
             f"(never seen by the challenger); metrics: {', '.join(report['gate']['metrics'])}",
             f"{'horizon':<8}{'champion q50':>14}{'challenger q50':>16}{'persistence':>13}"
             f"{'cov champion':>14}{'cov challenger':>16}{'windows':>9}"]
    for row in report["gate"]["per_horizon"]:
        champion_q = f"{row['champion_qrisk_50']:.4f}" if "champion_qrisk_50" in row else "-"
        champion_c = f"{row['champion_coverage']:.3f}" if "champion_coverage" in row else "-"
        lines.append(f"{row['horizon']:<8}{champion_q:>14}{row['challenger_qrisk_50']:>16.4f}"
                     f"{row['persistence_qrisk_50']:>13.4f}{champion_c:>14}{row['challenger_coverage']:>16.3f}"
                     f"{row['windows']:>9}")
    lines.append(f"decision: {report['gate']['decision']}")
    lines.append(f"took {report['seconds']:.0f} s (training {report['train_seconds']:.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the run
def export_for_retrain(store: Path, work: Path, since: str | None) -> Path:
    """The store's history as contract Parquet in ``work`` (beside a running daemon)."""
    from store_export import export_store

    out = work / TRAINING_DATA_FILE
    export_store(store, out, since=since)
    return out


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    """Train, compare, promote or reject; the report (also written under the models directory)."""
    from tft_trainer import settings_from_args, train

    began = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    models_dir: Path = args.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    if args.holdout_hours <= 0:
        raise RetrainError("--holdout-hours must be > 0: the gate compares the models on the most recent hours, "
                           f"which the challenger must not train on. See {RETRAIN_DOC}.")
    champion = current_model(models_dir)
    work = models_dir / RETRAIN_WORK_SUBDIR / datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
    work.mkdir(parents=True, exist_ok=True)
    challenger_dir: Path | None = None
    try:
        if args.store is not None:
            logger.info("retrain: exporting %s", args.store)
            args.data = export_for_retrain(args.store, work, args.since)
        settings = settings_from_args(args)
        settings.update_latest = False
        settings.backtest = True
        settings.warm_start = champion if champion is not None and not args.no_warm_start else None
        logger.info("retrain: training a challenger on %s (the last %d h held out for the gate)%s", settings.data,
                    settings.holdout_hours, f", warm-started from {champion.name}" if settings.warm_start else "")
        train_began = time.perf_counter()
        result = train(settings)
        train_seconds = time.perf_counter() - train_began
        challenger_dir = result.model_dir
        challenger_backtest = result.training_info["backtest"]
        champion_backtest = None
        if champion is not None:
            logger.info("retrain: backtesting the champion %s on the same held-out window", champion.name)
            champion_backtest = backtest_champion(champion, settings.data, settings.val_hours, settings.holdout_hours,
                                                  settings.unseen_per_profile, result.data.unseen_servers)
        gate = compare(champion_backtest, challenger_backtest, tuple(args.coverage_band))
        report = {"started_at": started_at, "champion": champion.name if champion else None,
                  "challenger": challenger_dir.name, "data": str(settings.data),
                  "holdout": {"first": challenger_backtest["range"]["first_decoder_bucket"],
                              "last": challenger_backtest["range"]["last_decoder_bucket"]},
                  "warm_start": bool(settings.warm_start), "gate": gate,
                  "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - began, 1),
                  "decision": gate["decision"]}
        reports = models_dir / RETRAIN_REPORTS_SUBDIR
        stem = f"retrain_{challenger_dir.name}"
        atomic_write_json(reports / f"{stem}.json", report)
        atomic_write_text(reports / f"{stem}.txt", format_report(report) + "\n")
        report["report_path"] = str(reports / f"{stem}.json")
        if gate["promote"]:
            atomic_write_json(challenger_dir / "promotion_report.json", report)
            promote(models_dir, challenger_dir, report, keep=args.keep)
        else:
            record_rejection(models_dir, challenger_dir.name, report)
            shutil.rmtree(challenger_dir, ignore_errors=True)
            logger.warning("retrain: %s", gate["decision"])
        return report
    except BaseException:
        if challenger_dir is not None and current_model(models_dir) != challenger_dir.resolve():
            shutil.rmtree(challenger_dir, ignore_errors=True)  # an unfinished retrain leaves no model behind
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if work.parent.is_dir() and not any(work.parent.iterdir()):
            work.parent.rmdir()


# ---------------------------------------------------------------------------- CLI
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``main.py retrain``: the trainer's flags plus where the data comes from and the gate."""
    from tft_trainer import build_arg_parser as trainer_arguments

    parser = parser or argparse.ArgumentParser(description="Retrain from the store and promote only a better model.")
    trainer_arguments(parser)
    parser.set_defaults(data=None, epochs=RETRAIN_EPOCHS, no_statistical=True)
    parser.add_argument("--store", type=Path, default=None,
                        help="the daemon's metrics store to train on (exported first; may run beside the daemon)")
    parser.add_argument("--since", default=None, help="with --store: export buckets from this ISO 8601 time on")
    parser.add_argument("--coverage-band", type=_band, default=PROMOTION_COVERAGE_BAND, metavar="LOW,HIGH",
                        help="the challenger's mean p10-p90 coverage must lie inside this band at every horizon "
                             "(default %(default)s)")
    parser.add_argument("--no-warm-start", action="store_true", help="train the challenger from scratch")
    parser.add_argument("--keep", type=int, default=MODELS_KEEP, help="model folders kept (default %(default)s)")
    return parser


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW,HIGH such as 0.65,0.92") from None
    if not 0.0 <= low < high <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW < HIGH <= 1")
    return low, high


def run_from_args(args: argparse.Namespace) -> int:
    """Retrain; 0 when a decision was made (promoted or kept), 1 when the retrain could not run."""
    from metrics_store import StoreError
    from store_export import StoreExportError
    from tft_trainer import TrainingError

    if (args.store is None) == (args.data is None):
        logger.error("give exactly one of --store (the daemon's metrics store) or --data (a contract Parquet "
                     "file). See %s.", RETRAIN_DOC)
        return 1
    try:
        report = retrain(args)
    except (RetrainError, TrainingError, StoreExportError, StoreError, FileNotFoundError, ValueError) as exc:
        logger.error("retrain failed, nothing changed: %s", exc)
        return 1
    print(format_report(report))  # the CLI's result, for a person
    return 0
