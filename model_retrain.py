"""Retrain from the fleet's own history; promote the challenger only when it is shown better.

    python main.py retrain --store data/metrics_store.sqlite3 --models-dir models
    python main.py retrain --data training/live.parquet --models-dir models --epochs 4
    python main.py retrain --store shard0.sqlite3 --store shard1.sqlite3 --models-dir models   # a sharded fleet

One retrain:

1. the data: the daemon's store exported as contract Parquet (``store_export``; it may run
   beside the daemon), or a Parquet file; several stores or files (a sharded fleet's, ``--store`` or
   ``--data`` repeated): their union, on which the challenger is trained and the gate judges;
2. a challenger trained by the ordinary trainer on everything but the most recent
   ``--holdout-hours`` (default 24 h; it never sees them, not even for validation), warm-started
   from the serving model's weights where the shapes match, with progress; it is written
   beside the others but ``latest`` is left alone;
3. the champion (``<models-dir>/latest``) and the challenger backtested on the same held-out
   windows with the same code (``tft_evaluate.backtest_store``), compared on the metrics both
   forecast;
4. the gate: promote only if the challenger's mean q-risk at 0.5 is no worse at every horizon
   and its mean p10-p90 coverage at every horizon lies inside ``RETRAIN.promotion_coverage_band``;
   otherwise the champion keeps serving and the report says why. The report (JSON + a table)
   goes to ``<models-dir>/reports/``; promotion is an atomic symlink swap (``model_registry``),
   which a daemon started with ``--model-dir <models-dir>/latest`` picks up by itself.

Bounds (Docs/RETRAINING.md, "Bounds"): one retrain at a time per models directory (an exclusive,
non-blocking ``flock`` on ``<models-dir>/.retrain.lock``, shared by the daemon's ``--retrain-every``
and ``tft-retrain.timer``; a second one exits ``RETRAIN_EXIT_LOCKED`` at once, "skipping"), an
address-space limit (``--memory-limit-mb``), an end when the daemon that started it is gone
(``--parent-pid``), SIGTERM as a clean stop (its export and challenger removed), and at most
``--keep-reports`` reports and logs kept. Only servers with ``--min-history-days`` of stored history
are trained and judged on, and the gate refuses outright when the population changed by more than
``--max-population-change`` since the champion was trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import logging
import os
import resource
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cli_options import add_options, option, settings_from
from common_utils import atomic_write_json, atomic_write_text
from config import (
    HORIZONS,
    MODELS_KEEP,
    RETRAIN,
    RETRAIN_DOC,
    RETRAIN_EXIT_LOCKED,
    RETRAIN_KEEP_REPORTS,
    RETRAIN_KILL_GRACE_SECONDS,
    RETRAIN_LOCK_FILE,
    RETRAIN_MEMORY_LIMIT_MB,
    RETRAIN_REPORTS_SUBDIR,
    RETRAIN_WORK_SUBDIR,
    SERVER_MAPPING_FILE,
    TRAINING_DATA_FILE,
)
from errors import EXIT_RUNTIME, ToolkitError
from model_registry import current_model, promote, record_refusal, record_rejection
from server_encoder import ServerEncoder
from store_export import export_store, union_parquet
from tft_evaluate import backtest_store
from tft_model import load_model
from tft_trainer import TrainSettings, prepare_data, train

logger = logging.getLogger(__name__)


class RetrainError(ToolkitError, RuntimeError):
    """A retrain that could not be run (the message says why and what to do); exit 2 unless told."""


class RetrainLocked(RetrainError):
    """Another retrain holds the models directory's retrain lock; this one must not run (exit
    ``RETRAIN_EXIT_LOCKED``, logged as a warning: a skip, not a failure)."""

    exit_code = RETRAIN_EXIT_LOCKED
    log_level = logging.WARNING

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"another retrain holds {path} (pid {holder if holder else 'unknown'}); skipping: one retrain "
                         f"at a time per models directory (the daemon's --retrain-every and tft-retrain.timer share "
                         f"this lock). See {RETRAIN_DOC}.")


# ---------------------------------------------------------------------------- bounds
@contextmanager
def retrain_lock(models_dir: Path) -> Iterator[Path]:
    """Hold ``<models-dir>/.retrain.lock`` (exclusive ``flock``, non-blocking) for one retrain.

    Raises :class:`RetrainLocked` at once when another process holds it. The holder writes its pid
    into the file (for that message); the file itself is never removed (removing a lock file lets two
    processes lock two different files). The lock ends with the descriptor: on exit, or when the
    process dies, however it dies.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / RETRAIN_LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise RetrainLocked(path, int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)


def apply_memory_limit(limit_mb: int, accelerator: str = "auto") -> int | None:
    """Limit this process's address space (``RLIMIT_AS``) to ``limit_mb``; the bytes set, or None when not set.

    Applied by the retrain to itself, first thing in :func:`run_from_args` (``--memory-limit-mb``),
    rather than by the daemon: a pre-exec hook is unsafe in a threaded daemon, and ``prlimit`` from the
    parent after the spawn races the child's start; this way the daemon's ``--retrain-args`` can
    override it and a cron or timer run gets it too. Processes it starts afterwards inherit it. Not
    applied for GPU training (``--accelerator gpu``, or ``auto`` with CUDA present): CUDA reserves host
    address space far beyond what it uses, so an address-space limit fails it at start; the cgroup's
    ``MemoryMax=`` bounds a timer run there. 0 or less: no limit.
    """
    if limit_mb <= 0:
        return None
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda_available()):
        logger.warning("retrain: --memory-limit-mb %d not applied: it trains on a GPU, and CUDA reserves more "
                       "address space than it uses (bound it with the unit's MemoryMax= instead). See %s.",
                       limit_mb, RETRAIN_DOC)
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = limit_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logger.info("retrain: address space limited to %d MB (RLIMIT_AS, --memory-limit-mb)", limit // (1024 * 1024))
    return limit


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def watch_parent(parent_pid: int, interval: float = RETRAIN.parent_check_seconds,
                 grace: float = RETRAIN_KILL_GRACE_SECONDS) -> threading.Thread:
    """End this retrain when ``parent_pid`` (the daemon that started it) is no longer its parent.

    A daemon thread checks ``os.getppid()`` every ``interval`` seconds (when the parent dies the child
    is re-parented, so the check cannot be fooled by a reused pid). Then it logs one line and sends
    SIGTERM to its own process group when it leads one (the daemon starts it in a new session, so its
    workers go too), else to itself; :func:`run_from_args` turns SIGTERM into a clean exit (export and
    challenger removed, nothing promoted). If that has not ended it after ``grace`` seconds: SIGKILL.
    Chosen over ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked the child ends (any
    thread of a threaded daemon), not the process, and is Linux-only.
    """
    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        own_group = os.getpgrp() == os.getpid()
        logger.error("retrain: the daemon that started it (pid %d) is gone; ending this retrain so it does not run "
                     "on unsupervised (the serving model is unchanged). See %s.", parent_pid, RETRAIN_DOC)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
            if own_group:
                os.killpg(os.getpid(), sig)
            else:
                os.kill(os.getpid(), sig)
            time.sleep(wait)

    thread = threading.Thread(target=run, name="retrain-parent-watch", daemon=True)
    thread.start()
    return thread


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (a timeout, a stop, a gone daemon) -> SystemExit, so the ``finally`` cleanups run."""
    logger.warning("retrain: stopped by signal %d; its export and any unpromoted challenger are removed", signum)
    raise SystemExit(128 + signum)


def rotate_reports(reports_dir: Path, keep: int = RETRAIN_KEEP_REPORTS) -> list[str]:
    """Keep the ``keep`` newest retrain reports (``retrain_*.json`` + ``.txt``, one per run) and, apart,
    the ``keep`` newest retrain logs (``retrain_*.log``) in ``reports_dir``; the names removed.

    Other files (a cron job's ``cron.log``) are left alone. Newest by modification time.
    """
    if keep < 1 or not reports_dir.is_dir():
        return []
    groups: dict[str, dict[str, list[Path]]] = {"log": {}, "report": {}}
    for path in reports_dir.glob("retrain_*"):
        if path.is_file() and path.suffix in (".log", ".json", ".txt"):
            kind = "log" if path.suffix == ".log" else "report"
            groups[kind].setdefault(path.stem, []).append(path)
    removed: list[str] = []
    for members in groups.values():
        def newest(stem: str, members: dict[str, list[Path]] = members) -> float:
            return max(_mtime(p) for p in members[stem])

        for stem in sorted(members, key=lambda stem: (newest(stem), stem), reverse=True)[keep:]:
            for path in members[stem]:
                path.unlink(missing_ok=True)
                removed.append(path.name)
    if removed:
        logger.info("retrain: removed %d old report/log file(s) beyond the %d kept of each: %s", len(removed), keep,
                    ", ".join(sorted(removed)[:6]) + (" ..." if len(removed) > 6 else ""))
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# ---------------------------------------------------------------------------- the population
def population_change(champion: set[str], challenger: set[str]) -> dict[str, Any]:
    """How the challenger's server population differs from the champion's.

    ``change`` is the share of the servers in either population that are in only one of them (new or
    gone): 0 the same servers, 1 none in common; a fleet that doubles is 0.5, one half replaced 0.67.
    """
    new, gone = sorted(challenger - champion), sorted(champion - challenger)
    union = len(champion | challenger)
    return {"champion_servers": len(champion), "challenger_servers": len(challenger), "new": len(new),
            "gone": len(gone), "change": round((len(new) + len(gone)) / union, 4) if union else 0.0,
            "new_examples": new[:10], "gone_examples": gone[:10]}


def champion_servers(champion_dir: Path) -> set[str]:
    """The servers the champion was trained with (its ``server_mapping.json``)."""
    return set(ServerEncoder.load(champion_dir / SERVER_MAPPING_FILE).name_to_id)


def data_servers(data_path: Path) -> set[str]:
    """The server names in a contract Parquet file (that column only is read)."""
    column = pq.read_table(data_path, columns=["server_name"]).column("server_name")
    return {str(name) for name in column.unique().to_pylist() if name is not None}


def refusal_reason(population: dict[str, Any], max_change: float) -> str | None:
    """The gate's refusal when the population changed by more than ``max_change``; None otherwise."""
    if population["change"] <= max_change:
        return None
    return (f"refused: population changed: {population['new']} of the {population['challenger_servers']} "
            f"established servers are new and {population['gone']} of the champion's "
            f"{population['champion_servers']} are gone ({population['change']:.2f} of the servers in either, more "
            f"than --max-population-change {max_change:.2f}); the champion never saw this fleet, so the backtest "
            f"cannot compare the two fairly. Fix: train a model for this fleet (main.py train --data <export>), check "
            f"it (main.py evaluate) and point latest at it, or rerun with --max-population-change 1. See "
            f"{RETRAIN_DOC}.")


# ---------------------------------------------------------------------------- the gate
def backtest_champion(champion_dir: Path, data_path: Path, val_hours: int, holdout_hours: int,
                      unseen_per_profile: int, unseen_servers: list[str]) -> dict[str, Any]:
    """The serving model's backtest on the challenger's held-out window (its own feature spec)."""
    loaded = load_model(champion_dir)
    data = prepare_data(data_path, loaded.spec.encoder_length, val_hours, holdout_hours, unseen_per_profile,
                        spec=loaded.spec)
    return backtest_store(loaded.model, loaded.spec, data.store, first_decoder_tidx=data.val_end_tidx + 1,
                          last_decoder_tidx=data.data_end_tidx, unseen_servers=unseen_servers)


def compare(champion: dict[str, Any] | None, challenger: dict[str, Any],
            coverage_band: tuple[float, float] = RETRAIN.promotion_coverage_band,
            tolerance: float = RETRAIN.promotion_qrisk_tolerance) -> dict[str, Any]:
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
    """The promotion report as a readable table (a refused retrain: the population and the reason)."""
    population = report.get("population") or {}
    servers = (f"servers: {population.get('challenger_servers', '?')} established"
               + (f" ({population['left_out']} left out with less than {population['min_history_days']:g} days of "
                  f"history)" if population.get("left_out") else "")
               + (f"; vs the champion's {population['champion_servers']}: {population['new']} new, "
                  f"{population['gone']} gone (change {population['change']:.2f})"
                  if "champion_servers" in population else ""))
    if report.get("gate") is None:
        return "\n".join([f"retrain {report['started_at']}: no challenger trained, champion "
                          f"{report['champion'] or 'none'}", servers, f"decision: {report['decision']}",
                          f"took {report['seconds']:.0f} s"])
    lines = [f"retrain {report['started_at']}: challenger {report['challenger']} vs champion "
             f"{report['champion'] or 'none'}", servers,
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
def export_for_retrain(store: Path | list[Path], work: Path, since: str | None,
                       min_history_days: float = RETRAIN.min_history_days) -> tuple[Path, dict[str, Any]]:
    """The store's history as contract Parquet in ``work`` (beside a running daemon), established servers only;
    the file and the export's metadata. Several stores (a sharded fleet's): their union
    (``store_export.StoreUnion``), whose established servers are judged together."""
    out = work / TRAINING_DATA_FILE
    metadata = export_store(store, out, since=since, min_history_days=min_history_days)
    return out, metadata


def _write_report(models_dir: Path, stem: str, report: dict[str, Any]) -> None:
    reports = models_dir / RETRAIN_REPORTS_SUBDIR
    atomic_write_json(reports / f"{stem}.json", report)
    atomic_write_text(reports / f"{stem}.txt", format_report(report) + "\n")
    report["report_path"] = str(reports / f"{stem}.json")


def _remove_stale_work(models_dir: Path) -> None:
    """Exports left by a retrain that was killed (SIGKILL leaves its ``finally`` unrun); called under the lock."""
    root = models_dir / RETRAIN_WORK_SUBDIR
    stale = sorted(root.iterdir()) if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        logger.info("retrain: removed %d unfinished export(s) of an earlier retrain that was killed: %s", len(stale),
                    ", ".join(f.name for f in stale[:5]))


def retrain(job: RetrainSettings, training: TrainSettings) -> dict[str, Any]:
    """Train, compare, promote or reject; the report (also written under the models directory).

    ``training`` trains the challenger (its ``data`` is the export of ``job.store``, the union of ``job.data``
    when several files, else the one file). Call it holding
    :func:`retrain_lock` (``run_from_args`` does). With ``--store`` (one store, or every shard's: their union,
    judged as one fleet) only servers
    holding ``--min-history-days`` of buckets are exported, so trained and judged on; when the
    champion was trained on a population that differs from them by more than
    ``--max-population-change``, nothing is trained and the report says "refused: population changed".
    """
    began = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    models_dir: Path = training.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    if training.holdout_hours <= 0:
        raise RetrainError("--holdout-hours must be > 0: the gate compares the models on the most recent hours, "
                           f"which the challenger must not train on. See {RETRAIN_DOC}.")
    champion = current_model(models_dir)
    _remove_stale_work(models_dir)
    work = models_dir / RETRAIN_WORK_SUBDIR / datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
    work.mkdir(parents=True, exist_ok=True)
    challenger_dir: Path | None = None
    try:
        population: dict[str, Any] = {"min_history_days": job.min_history_days, "left_out": 0}
        if job.store:
            logger.info("retrain: exporting %s (servers with at least %g days of stored history)",
                        " + ".join(map(str, job.store)), job.min_history_days)
            data, metadata = export_for_retrain(job.store, work, job.since, job.min_history_days)
            servers = set(metadata["servers"])
            population["left_out"] = len(metadata.get("servers_short_history") or {})
            population["stores"] = len(job.store)
            population["in_several_stores"] = len(metadata.get("servers_in_several_stores") or {})
            logger.info("retrain: training and judging on %d established servers%s; %d left out with less than %g "
                        "days of history", len(servers), f" of {len(job.store)} stores" if len(job.store) > 1 else "",
                        population["left_out"], job.min_history_days)
        elif len(job.data) > 1:
            logger.info("retrain: joining %d files into one (%s)", len(job.data), ", ".join(map(str, job.data)))
            data = work / TRAINING_DATA_FILE
            metadata = union_parquet(job.data, data)
            servers = set(metadata["servers"])  # the files are taken as given: their servers are the population
            population["files"] = len(job.data)
            population["in_several_files"] = len(metadata["servers_in_several_files"])
        else:
            data = job.data[0]
            servers = data_servers(data)  # a file is taken as given: its servers are the population
        population.update(challenger_servers=len(servers))
        if champion is not None:
            try:
                population.update(population_change(champion_servers(champion), servers))
            except (FileNotFoundError, ValueError) as exc:
                logger.warning("retrain: the champion's server population is unknown (%s); the population check "
                               "is skipped", exc)
        refused = refusal_reason(population, job.max_population_change) if "change" in population else None
        if refused is not None:
            report = {"started_at": started_at, "champion": champion.name if champion else None,
                      "challenger": None, "data": str(data), "population": population, "gate": None,
                      "max_population_change": job.max_population_change, "train_seconds": 0.0,
                      "seconds": round(time.perf_counter() - began, 1), "decision": refused}
            _write_report(models_dir, f"retrain_refused_{datetime.now(UTC).strftime('%Y%m%d_%H%M%S')}", report)
            record_refusal(models_dir, report)
            logger.warning("retrain: %s", refused)
            return report
        settings = dataclasses.replace(training, data=data, update_latest=False, backtest=True,
                                       warm_start=champion if champion is not None and job.warm_start else None)
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
        gate = compare(champion_backtest, challenger_backtest, tuple(job.coverage_band))
        report = {"started_at": started_at, "champion": champion.name if champion else None,
                  "challenger": challenger_dir.name, "data": str(settings.data),
                  "holdout": {"first": challenger_backtest["range"]["first_decoder_bucket"],
                              "last": challenger_backtest["range"]["last_decoder_bucket"]},
                  "warm_start": bool(settings.warm_start), "population": population, "gate": gate,
                  "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - began, 1),
                  "decision": gate["decision"]}
        _write_report(models_dir, f"retrain_{challenger_dir.name}", report)
        if gate["promote"]:
            atomic_write_json(challenger_dir / "promotion_report.json", report)
            promote(models_dir, challenger_dir, report, keep=job.keep)
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
def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW,HIGH such as 0.65,0.92") from None
    if not 0.0 <= low < high <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW < HIGH <= 1")
    return low, high


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of days such as 3") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 or more")
    return value


def _share(text: str) -> float:
    value = _non_negative(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a share, need 0 <= SHARE <= 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number such as 30") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 or more")
    return value



@dataclass
class RetrainSettings:
    """Where a retrain's data comes from, the gate and the bounds: each field is a ``main.py retrain`` flag
    beside the trainer's own (:class:`tft_trainer.TrainSettings`; cli_options.py)."""

    store: list[Path] = option(help="the daemon's metrics store to train on (exported first; may run beside the "
                               "daemon); repeat it for each shard's store: one retrain on their union", factory=list,
                               parse=Path, repeat=True)
    data: list[Path] = option(help="contract Parquet to train on instead of a store; repeat it for each shard's "
                              "export: one retrain on their union", factory=list, parse=Path, repeat=True)
    since: str | None = option(None, "with --store: export buckets from this ISO 8601 time on")
    coverage_band: tuple[float, float] = option(RETRAIN.promotion_coverage_band,
                                                "the challenger's mean p10-p90 coverage "
                                                "must lie inside this band at every horizon", parse=_band,
                                                metavar="LOW,HIGH")
    warm_start: bool = option(True, "train the challenger from scratch")
    keep: int = option(MODELS_KEEP, "model folders kept", parse=int)
    min_history_days: float = option(RETRAIN.min_history_days, "with --store: train and judge only on servers "
                                     "holding at least this many days of buckets (0: every server)",
                                     parse=_non_negative, metavar="DAYS")
    max_population_change: float = option(RETRAIN.max_population_change, "refuse (train nothing) when more than "
                                          "this share of the servers in the champion's or the new population is new "
                                          "or gone (1: never refuse)", parse=_share, metavar="SHARE")
    memory_limit_mb: int = option(RETRAIN_MEMORY_LIMIT_MB, "address space this retrain may map (RLIMIT_AS; not "
                                  "applied for GPU training; 0: none)", parse=int, metavar="MB")
    parent_pid: int | None = option(None, "end this retrain when process PID is no longer its parent (the daemon "
                                    "passes its own)", parse=int, metavar="PID")
    keep_reports: int = option(RETRAIN_KEEP_REPORTS, "retrain reports and retrain logs kept in "
                               "<models-dir>/reports, each", parse=_positive_int, metavar="N")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``main.py retrain``: the trainer's flags (its data optional, fewer epochs, no statistical models) plus
    :class:`RetrainSettings`."""
    parser = parser or argparse.ArgumentParser(description="Retrain from the store and promote only a better model.")
    add_options(parser, TrainSettings, skip=("data",), defaults={"epochs": RETRAIN.epochs, "statistical": ()})
    return add_options(parser, RetrainSettings)  # its --store and --data repeat (a sharded fleet's stores or files)


def settings_from_args(args: argparse.Namespace) -> tuple[RetrainSettings, TrainSettings]:
    """The retrain's own settings and the challenger's training settings from parsed arguments (the training data
    is set by :func:`retrain`: the export, or the union of the ``--data`` files)."""
    return settings_from(RetrainSettings, args), settings_from(TrainSettings, args, data=None)


CLI_FAILED = "retrain failed, nothing changed"  # how errors.run_cli (main.py) prefixes a failure


def run_from_args(args: argparse.Namespace) -> int:
    """Retrain; 0 when a decision was made (promoted, kept or refused), 128 + n when stopped by signal n. It
    raises (``errors.run_cli``) when the retrain could not run: exit 2 for its input (store, data, flags), 3 out
    of memory, ``RETRAIN_EXIT_LOCKED`` when another retrain holds the lock (skipped)."""
    job, training = settings_from_args(args)
    if bool(job.store) == bool(job.data):
        raise RetrainError("give exactly one of --store (the daemon's metrics store; repeated: every shard's) or "
                           f"--data (a contract Parquet file; repeated: every shard's export). See {RETRAIN_DOC}.")
    # First the bounds, before any work: the memory limit, the daemon watch, SIGTERM as a clean stop.
    apply_memory_limit(job.memory_limit_mb, training.accelerator)
    if job.parent_pid is not None:
        watch_parent(job.parent_pid)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with retrain_lock(training.models_dir):
            try:
                report = retrain(job, training)
            finally:
                rotate_reports(training.models_dir / RETRAIN_REPORTS_SUBDIR, job.keep_reports)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, ToolkitError) or (not isinstance(exc, MemoryError) and "allocate memory" not in str(exc)):
            raise  # torch's CPU allocator says "allocate memory"; any other RuntimeError is not an OOM
        raise RetrainError(f"it ran out of memory (its address-space limit is --memory-limit-mb "
                           f"{job.memory_limit_mb})", None, "raise --memory-limit-mb (0: none), or lower "
                           "--max-memory-gb so the trainer uses a subset of servers", RETRAIN_DOC,
                           exit_code=EXIT_RUNTIME) from exc
    print(format_report(report))  # the CLI's result, for a person
    return 0
