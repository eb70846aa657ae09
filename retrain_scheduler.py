"""Scheduled retraining for the daemon: ``main.py infer --daemon --retrain-every 24h``.

The retrain runs as a separate process (``python main.py retrain --store ... --models-dir ...``)
at the lowest CPU priority, so a forecast cycle never waits for it; the daemon only starts it,
polls it between cycles, and logs and counts how it ended. A crash or a kill of the retrain
leaves ``models/latest`` (and so the serving model) untouched: promotion is the retrain's last,
atomic step. A promoted model reaches the daemon through the ``latest`` link it follows.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import PROJECT_ROOT, RETRAIN_DOC, RETRAIN_MIN_INTERVAL_SECONDS, RETRAIN_NICE, RETRAIN_WORK_SUBDIR

logger = logging.getLogger("tft_inference")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str, minimum: float = RETRAIN_MIN_INTERVAL_SECONDS) -> float:
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


@dataclass
class RetrainScheduler:
    """Starts a retrain every ``every_seconds`` (or on request) and watches it; never blocks."""

    store: Path
    models_dir: Path
    every_seconds: float | None
    extra_args: list[str] = field(default_factory=list)
    clock: Any = time.monotonic
    runs: int = 0
    failures: int = 0
    last_exit: int | None = None
    last_started_at: str | None = None
    last_finished_at: str | None = None
    last_log: str | None = None
    _process: subprocess.Popen | None = None
    _next_at: float | None = None

    def __post_init__(self) -> None:
        if self.every_seconds:
            self._next_at = self.clock() + self.every_seconds

    @property
    def running(self) -> bool:
        """A retrain is in progress."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The running retrain's process id."""
        return self._process.pid if self._process is not None else None

    def start(self) -> bool:
        """Start a retrain now; False if one is already running."""
        if self._process is not None:
            return False
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        log_dir = self.models_dir / "reports"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"retrain_{stamp}.log"
        command = [sys.executable, str(PROJECT_ROOT / "main.py"), "retrain", "--store", str(self.store),
                   "--models-dir", str(self.models_dir), *self.extra_args]
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:  # set from here (not in the child: a pre-exec hook is unsafe in a threaded daemon)
            os.setpriority(os.PRIO_PROCESS, self._process.pid, RETRAIN_NICE)
        except OSError as exc:
            logger.warning("could not lower the retrain's CPU priority: %s", exc)
        self.runs += 1
        self.last_started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.last_log = str(log_path)
        if self.every_seconds:
            self._next_at = self.clock() + self.every_seconds
        logger.info("retrain started (pid %d, nice %d), log %s", self._process.pid, RETRAIN_NICE, log_path)
        return True

    def poll(self) -> None:
        """Between cycles: note a finished retrain, start a due one."""
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                return
            self._process = None
            self.last_exit = code
            self.last_finished_at = datetime.now(UTC).isoformat(timespec="seconds")
            if code == 0:
                logger.info("retrain finished: a decision was made (see %s); the serving model changes only if the "
                            "challenger was promoted", self.last_log)
            else:
                self.failures += 1
                how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
                logger.error("retrain %s (%d failed so far); the serving model is unchanged. Its log: %s", how,
                             self.failures, self.last_log)
                # Its unfinished export; the daemon starts one retrain at a time, so none is in use.
                shutil.rmtree(self.models_dir / RETRAIN_WORK_SUBDIR, ignore_errors=True)
        if self._next_at is not None and self.clock() >= self._next_at:
            self.start()

    def stop(self) -> None:
        """On shutdown: end a running retrain (it leaves the serving model unchanged)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def status(self) -> dict[str, Any]:
        """What /status shows."""
        next_in = None if self._next_at is None else max(0.0, round(self._next_at - self.clock(), 1))
        return {"every_seconds": self.every_seconds, "running": self.running, "pid": self.pid, "runs": self.runs,
                "failures": self.failures, "last_exit": self.last_exit, "last_started_at": self.last_started_at,
                "last_finished_at": self.last_finished_at, "next_in_seconds": next_in, "log": self.last_log}
