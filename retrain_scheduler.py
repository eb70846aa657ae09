"""Scheduled retraining for the daemon: ``main.py infer --daemon --retrain-every 24h``.

The retrain runs as a separate process (``python main.py retrain --store ... --models-dir ...``)
at the lowest CPU priority, so a forecast cycle never waits for it; the daemon only starts it,
polls it between cycles, and logs and counts how it ended. A crash or a kill of the retrain
leaves ``models/latest`` (and so the serving model) untouched: promotion is the retrain's last,
atomic step. A promoted model reaches the daemon through the ``latest`` link it follows.

Bounds (Docs/RETRAINING.md, "Bounds"): the retrain starts in a session (process group) of its own;
past ``SCHEDULER.retrain_timeout_seconds`` the whole group gets SIGTERM, then SIGKILL after
``RETRAIN_KILL_GRACE_SECONDS`` (so does a retrain running at shutdown), counted as a failure, and the
next one can start. It is told the daemon's pid (``--parent-pid``: it ends itself when the daemon is
gone) and its address-space limit (``--memory-limit-mb``, which it applies to itself first thing; the
daemon's ``--retrain-args`` can override it). It takes the models directory's retrain lock itself, the
one ``tft-retrain.timer``'s run takes too: when that one holds it, the run exits ``RETRAIN_EXIT_LOCKED``
and counts as "skipped", not as a failure. After each run old retrain logs and reports are rotated.

A sharded daemon (``--shard K/N``, N > 1) holds one slice of the fleet, which shares one model and one
registry: its retrain must read every shard's store (Docs/RETRAINING.md, "Several shards"). It is refused
(:class:`RetrainScheduleError`, at start-up for ``--retrain-every``, and for ``POST /admin/retrain``) unless
``--retrain-args`` names the other N - 1 stores (``--store PATH`` each).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import (
    PROJECT_ROOT,
    RETRAIN_DOC,
    RETRAIN_EXIT_LOCKED,
    RETRAIN_KEEP_REPORTS,
    RETRAIN_KILL_GRACE_SECONDS,
    RETRAIN_LOCK_FILE,
    RETRAIN_MEMORY_LIMIT_MB,
    RETRAIN_REPORTS_SUBDIR,
    RETRAIN_WORK_SUBDIR,
    SCHEDULER,
)
from errors import ToolkitError
from model_retrain import RetrainLocked, retrain_lock, rotate_reports
from sharding import Shard

logger = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str, minimum: float = SCHEDULER.retrain_min_interval_seconds) -> float:
    """"24h", "90m", "2d", "3600s" -> seconds (at least ``minimum``); ValueError with the fix otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not match:
        raise ValueError(f"--retrain-every {text!r}: expected a number and a unit such as 24h, 90m or 2d. "
                         f"See {RETRAIN_DOC}.")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < minimum:
        raise ValueError(f"--retrain-every {text!r} is shorter than {minimum / 3600:.0f} h: a retrain trains a model "
                         f"and needs new history to be worth it. See {RETRAIN_DOC}.")
    return seconds


class RetrainScheduleError(ToolkitError, ValueError):
    """A scheduled retrain that would not cover the fleet (a shard's store alone); what, why, fix, doc."""


def stores_in(store: Path, extra_args: list[str]) -> list[Path]:
    """The stores a scheduled retrain reads: the daemon's own, then each ``--store PATH`` / ``--store=PATH`` of
    its ``--retrain-args``, in order."""
    stores = [store]
    args = iter(extra_args)
    for arg in args:
        if arg == "--store":
            value = next(args, None)
            if value is not None:
                stores.append(Path(value))
        elif arg.startswith("--store="):
            stores.append(Path(arg.partition("=")[2]))
    return stores


def fleet_coverage_problem(store: Path, extra_args: list[str], shard: Shard | None) -> RetrainScheduleError | None:
    """Why a retrain started by the daemon of ``shard`` would not read the whole fleet (None: it would).

    A daemon that is not sharded (or ``--shard 0/1``) reads its one store. A sharded one must be given the
    other shards' stores in ``--retrain-args`` (``--store PATH`` each, N stores in all, none twice), so the one
    retrain trains on and judges the union; its own store is passed already.
    """
    if shard is None or shard.count < 2:
        return None
    stores = stores_in(store, extra_args)
    resolved = [path.resolve() for path in stores]
    if resolved.count(store.resolve()) > 1:
        return RetrainScheduleError(
            f"--retrain-args names this daemon's own store {store} with --store", "the daemon passes its own store "
            "to the retrain already, and a store read twice counts every sample twice",
            "list only the other shards' stores in --retrain-args", RETRAIN_DOC)
    distinct = len(set(resolved))
    if distinct >= shard.count:
        return None
    return RetrainScheduleError(
        f"a retrain started by shard {shard} would read {distinct} of the fleet's {shard.count} stores (this shard's "
        f"{store}{' and ' + str(distinct - 1) + ' more from --retrain-args' if distinct > 1 else ''})",
        f"the {shard.count} shards serve one model from one models directory: a retrain on a slice trains the "
        "fleet's model on part of it, judges it on part of it, and its population check counts the other shards' "
        "servers as gone",
        f"give the retrain every other shard's store, on one shard only: --retrain-args '--store <shard J's store> "
        f"...' ({shard.count - 1} of them); or leave --retrain-every out and run the fleet's one retrain from "
        f"tft-retrain.timer with every store (TFT_RETRAIN_ARGS='--store ...')", RETRAIN_DOC)


@dataclass
class RetrainScheduler:
    """Starts a retrain every ``every_seconds`` (or on request) and watches it; never blocks (but in :meth:`stop`).

    ``command`` replaces the ``main.py retrain ...`` command line (tests point it at a stand-in); the
    bounds (own process group, timeout, the kill of the whole group) apply to it all the same. ``shard``:
    the daemon's ``--shard``; a sharded daemon's retrain must read every shard's store
    (:func:`fleet_coverage_problem`): with ``every_seconds`` it raises :class:`RetrainScheduleError` here,
    and :meth:`start` raises it for a retrain asked for by hand.
    """

    store: Path
    models_dir: Path
    every_seconds: float | None
    extra_args: list[str] = field(default_factory=list)
    clock: Any = time.monotonic
    timeout_seconds: float = SCHEDULER.retrain_timeout_seconds
    kill_grace_seconds: float = RETRAIN_KILL_GRACE_SECONDS
    memory_limit_mb: int = RETRAIN_MEMORY_LIMIT_MB
    keep_reports: int = RETRAIN_KEEP_REPORTS
    command: list[str] | None = None
    shard: Shard | None = None
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    skipped: int = 0
    last_exit: int | None = None
    last_outcome: str | None = None  # finished, failed, timed_out, skipped, stopped
    last_started_at: str | None = None
    last_finished_at: str | None = None
    last_log: str | None = None
    _process: subprocess.Popen | None = None
    _next_at: float | None = None
    _started_clock: float = 0.0
    _terminated_at: float | None = None  # when the timeout's SIGTERM went to the group
    _killed: bool = False  # ... and the SIGKILL after the grace

    def __post_init__(self) -> None:
        problem = fleet_coverage_problem(self.store, self.extra_args, self.shard)
        if problem is not None and self.every_seconds:
            raise problem
        if self.every_seconds:
            self._next_at = self.clock() + self.every_seconds

    @property
    def running(self) -> bool:
        """A retrain is in progress."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The running retrain's process id (also its process group's id)."""
        return self._process.pid if self._process is not None else None

    def retrain_command(self) -> list[str]:
        """The child's command line: ``main.py retrain`` on the store, told the daemon's pid and the memory limit.

        The limit comes before ``extra_args``, so ``--retrain-args '--memory-limit-mb N'`` overrides it.
        """
        if self.command is not None:
            return list(self.command)
        return [sys.executable, str(PROJECT_ROOT / "main.py"), "retrain", "--store", str(self.store),
                "--models-dir", str(self.models_dir), "--parent-pid", str(os.getpid()),
                "--memory-limit-mb", str(self.memory_limit_mb), *self.extra_args]

    def start(self) -> bool:
        """Start a retrain now; False if one is already running. Raises :class:`RetrainScheduleError` on a sharded
        daemon whose retrain would not read every shard's store."""
        if self._process is not None:
            return False
        problem = fleet_coverage_problem(self.store, self.extra_args, self.shard)
        if problem is not None:
            raise problem
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        log_dir = self.models_dir / RETRAIN_REPORTS_SUBDIR
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"retrain_{stamp}.log"
        with open(log_path, "ab") as log:
            # A session of its own: the timeout and stop() end the whole group (its workers and anything they
            # started), and a signal to the daemon's group (a terminal's Ctrl-C) does not reach it.
            self._process = subprocess.Popen(self.retrain_command(), cwd=PROJECT_ROOT, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        try:  # set from here (not in the child: a pre-exec hook is unsafe in a threaded daemon)
            os.setpriority(os.PRIO_PROCESS, self._process.pid, SCHEDULER.retrain_nice)
        except OSError as exc:
            logger.warning("could not lower the retrain's CPU priority: %s", exc)
        self.runs += 1
        self._started_clock = self.clock()
        self._terminated_at, self._killed = None, False
        self.last_started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.last_log = str(log_path)
        if self.every_seconds:
            self._next_at = self.clock() + self.every_seconds
        logger.info("retrain started (pid %d, nice %d, at most %.0f s), log %s", self._process.pid,
                    SCHEDULER.retrain_nice,
                    self.timeout_seconds, log_path)
        return True

    def _signal_group(self, sig: int) -> None:
        """Send ``sig`` to the retrain's whole process group (gone already: nothing to do)."""
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # a member changed its uid: nothing the daemon may do about it
            logger.warning("could not signal the retrain's process group %d: %s", self._process.pid, exc)

    def poll(self) -> None:
        """Between cycles: end an overdue retrain, note a finished one, start a due one."""
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                now = self.clock()
                if self._terminated_at is None and now - self._started_clock >= self.timeout_seconds:
                    self._terminated_at = now
                    self._signal_group(signal.SIGTERM)
                elif (self._terminated_at is not None and not self._killed
                      and now - self._terminated_at >= self.kill_grace_seconds):
                    self._killed = True
                    self._signal_group(signal.SIGKILL)
                return
            self._finished(code)
        if self._next_at is not None and self.clock() >= self._next_at:
            self.start()

    def _finished(self, code: int) -> None:
        """Count and log how the reaped retrain ended; sweep its group, its unfinished export, old logs."""
        assert self._process is not None
        self._signal_group(signal.SIGKILL)  # anything of the group still running outlives its leader no more
        timed_out = self._terminated_at is not None
        elapsed = self.clock() - self._started_clock
        self._process = None
        self.last_exit = code
        self.last_finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        if timed_out:
            self.failures += 1
            self.timeouts += 1
            self.last_outcome = "timed_out"
            how = (f"SIGTERM, then SIGKILL after the {self.kill_grace_seconds:g} s grace" if self._killed
                   else "SIGTERM")
            logger.error("retrain timed out after %.0f s (limit %.0f s, SCHEDULER.retrain_timeout_seconds) and its "
                         "process group "
                         "was ended (%s); %d failed so far; the serving model is unchanged. Its log: %s", elapsed,
                         self.timeout_seconds, how, self.failures, self.last_log)
        elif code == 0:
            self.last_outcome = "finished"
            logger.info("retrain finished: a decision was made (see %s); the serving model changes only if the "
                        "challenger was promoted", self.last_log)
        elif code == RETRAIN_EXIT_LOCKED:
            self.skipped += 1
            self.last_outcome = "skipped"
            logger.warning("retrain skipped: another retrain (tft-retrain.timer's, or one started by hand) holds "
                           "%s, so this one did nothing (not a failure). Its log: %s",
                           self.models_dir / RETRAIN_LOCK_FILE, self.last_log)
        else:
            self.failures += 1
            self.last_outcome = "failed"
            how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
            logger.error("retrain %s (%d failed so far); the serving model is unchanged. Its log: %s", how,
                         self.failures, self.last_log)
        if self.last_outcome in ("timed_out", "failed"):
            self._remove_unfinished_export()
        rotate_reports(self.models_dir / RETRAIN_REPORTS_SUBDIR, self.keep_reports)

    def _remove_unfinished_export(self) -> None:
        """A killed retrain's export (it can be large); only while no other retrain (the timer's) uses the folder."""
        try:
            with retrain_lock(self.models_dir):
                shutil.rmtree(self.models_dir / RETRAIN_WORK_SUBDIR, ignore_errors=True)
        except (RetrainLocked, OSError):
            pass  # the retrain holding the lock removes stale exports when it starts

    def stop(self) -> None:
        """On shutdown: end a running retrain's whole process group (it leaves the serving model unchanged)."""
        if self._process is None:
            return
        code = self._process.poll()
        if code is not None:  # it ended by itself before the daemon did
            self._finished(code)
            return
        self._signal_group(signal.SIGTERM)
        try:
            self._process.wait(self.kill_grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self._process.wait()
        self._signal_group(signal.SIGKILL)  # what its leader left behind
        self.last_exit = self._process.returncode
        self.last_outcome = "stopped"
        self.last_finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._process = None
        logger.info("retrain stopped with the daemon (exit %s); the serving model is unchanged", self.last_exit)

    def status(self) -> dict[str, Any]:
        """What /status shows."""
        next_in = None if self._next_at is None else max(0.0, round(self._next_at - self.clock(), 1))
        return {"every_seconds": self.every_seconds, "running": self.running, "pid": self.pid, "runs": self.runs,
                "failures": self.failures, "timeouts": self.timeouts, "skipped": self.skipped,
                "last_exit": self.last_exit, "last_outcome": self.last_outcome,
                "last_started_at": self.last_started_at, "last_finished_at": self.last_finished_at,
                "next_in_seconds": next_in, "timeout_seconds": self.timeout_seconds,
                "memory_limit_mb": self.memory_limit_mb, "log": self.last_log}
