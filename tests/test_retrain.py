"""The learning loop end to end, through the CLI and HTTP on a tiny fleet.

A daemon following ``models/latest`` is fed 60 h of a tiny fleet -> accuracy appears for the
matured horizon -> the store's export validates -> ``main.py retrain`` promotes a challenger that
backtests better than a deliberately bad champion (trained on shuffled targets; the daemon picks
the challenger up, forecasts go on) ->
a challenger trained on shuffled targets is rejected -> ``main.py rollback`` restores the previous
model (picked up too) -> a retrain killed mid-run is logged and counted, and the daemon serves on.

Cost (2 cores): ~2.5 min (three tiny trainings of one epoch, the feed, two backtests).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config import HORIZONS, LATEST_MODEL_LINK, LINBORG_METRICS, REGISTRY, RETRAIN_REPORTS_SUBDIR
from metrics_generator import FleetSimulator
from tests.helpers import ROOT, TINY_FLEET, DaemonProcess, feed_buckets, run_cli, wait_for, wait_until

# The tiny trainer flags without --epochs / --windows-per-epoch (each run sets its own).
TINY_SHAPE = ["--batch-size", "64", "--encoder-length", "24", "--hidden-size", "8", "--attention-heads", "2",
              "--hidden-continuous-size", "4", "--val-windows", "256", "--val-hours", "12", "--holdout-hours", "24",
              "--no-statistical"]
# Tiny models' 8 h bands cover 0.4-0.6 (12 h of validation calibrate them): the gate's coverage
# band is widened for them; the q-risk half of the gate is the default one.
BAND = ["--coverage-band", "0.3,0.99"]
GOOD = ["--epochs", "2", "--windows-per-epoch", "512"]
# The challenger that must win: a champion trained on noise sits near the mean level, which at 8 h is
# hard to beat; 2 tiny epochs did not always beat it at every horizon.
BETTER = ["--epochs", "4", "--windows-per-epoch", "1024"]
FEED_HOURS = 84  # encoder + yesterday + 8 h horizon + 12 h validation + 24 h hold-out + training windows


def _version(client) -> str:  # noqa: ANN001
    return client.get("/status").json()["model_version"]


def _retrain_log_written(client) -> bool:  # noqa: ANN001
    """The running retrain has written to its log: it is under way, past its start."""
    log = client.get("/status").json()["retrain"].get("log")
    return bool(log) and Path(log).is_file() and Path(log).stat().st_size > 0


def _shuffle_training_part(source: Path, out: Path, holdout_hours: int = 24) -> None:
    """The same file with its metric rows shuffled across time and servers (each row's metrics stay together,
    so the contract holds), except the last hours (the gate's)."""
    frame = pd.read_parquet(source)
    cut = frame["timestamp"].max() - pd.Timedelta(hours=holdout_hours + 1 if holdout_hours else 0)
    early = (frame["timestamp"] <= cut).to_numpy()
    order = np.random.default_rng(0).permutation(int(early.sum()))
    frame.loc[early, LINBORG_METRICS] = frame.loc[early, LINBORG_METRICS].to_numpy()[order]
    frame.to_parquet(out, index=False)
    for sidecar in source.parent.iterdir():
        if sidecar != source and sidecar.suffix == ".json":
            (out.parent / sidecar.name).write_bytes(sidecar.read_bytes())


def test_feed_score_export_retrain_promote_reject_rollback_and_survive_a_killed_retrain(tiny_data, tmp_path):
    models = tmp_path / "models"
    # A deliberately bad champion: trained on the tiny fleet's history with its targets shuffled, and left
    # uncalibrated (its persistence blend would otherwise fall back on the last value and rescue it).
    noise = tmp_path / "noise" / "server_metrics.parquet"
    noise.parent.mkdir()
    _shuffle_training_part(tiny_data, noise, holdout_hours=0)
    trained = run_cli("main.py", "train", "--data", str(noise), "--models-dir", str(models), *GOOD, *TINY_SHAPE,
                      "--no-calibration", timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    champion = (models / LATEST_MODEL_LINK).resolve().name
    store = tmp_path / "store.sqlite3"
    daemon = DaemonProcess(models / LATEST_MODEL_LINK, store, "--rate-per-minute", "100000", "--retrain-args",
                           " ".join(["--epochs", "1", "--windows-per-epoch", "512", *TINY_SHAPE]))
    daemon.wait_ready()
    sim = FleetSimulator(fleet=TINY_FLEET, seed=51, start="2026-03-02T00:00:00Z")
    sent: list[dict] = []

    def feed(client, n: int, chunk: int = 6) -> str:  # noqa: ANN001
        """Feed n buckets; the newest record's minute (what last_forecast_time will show)."""
        records = feed_buckets(client, sim, n, chunk)
        sent.extend(records)
        return records[-1]["timestamp"][:16]

    try:
        with daemon.client() as client:
            assert _version(client) == champion
            feed(client, FEED_HOURS * 12 - 8, chunk=48)
            for _ in range(HORIZONS["30min"] + 2):  # bucket by bucket: each is forecast, then scored 30 min on
                stamp = feed(client, 1)
                wait_for(lambda s=stamp: (client.get("/status").json()["last_forecast_time"] or "")[:16] == s)
            scored = [r for r in client.get("/accuracy", params={"window": "24h"}).json()["rows"] if r["n"]]
            # 30 min has matured (the last buckets were forecast one by one); 1 h and 8 h only where a cycle
            # during the bulk feed happened to land 12 or 96 buckets before one of them.
            assert "30min" in {r["horizon"] for r in scored}

            # The store's history exports as contract Parquet that the validator accepts.
            exported = tmp_path / "export" / "server_metrics.parquet"
            result = run_cli("main.py", "export", "--store", str(store), "--out", str(exported))
            assert result.returncode == 0, result.stderr[-2000:]
            assert run_cli("main.py", "validate", str(exported)).returncode == 0

            # A challenger trained on the store: better than the weak champion -> promoted and picked up.
            result = run_cli("main.py", "retrain", "--store", str(store), "--models-dir", str(models), *BETTER,
                             *TINY_SHAPE, *BAND, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "decision: promoted" in result.stdout, result.stdout
            promoted = (models / LATEST_MODEL_LINK).resolve().name
            assert promoted != champion
            report = json.loads((models / RETRAIN_REPORTS_SUBDIR / f"retrain_{promoted}.json").read_text())
            for row in report["gate"]["per_horizon"]:
                assert row["challenger_qrisk_50"] <= row["champion_qrisk_50"]
                assert row["windows"] == row["champion_windows"]  # the same held-out windows for both
            wait_for(lambda: _version(client) == promoted, timeout=60)
            stamp = feed(client, 1)  # forecasts go on with the new model
            body = wait_for(lambda: (lambda b: b if (b["prediction_time"] or "")[:16] == stamp else None)(
                client.get("/predictions/current").json()))
            assert body["model_version"] == promoted
            assert client.get("/status").json()["model_reloads"] == 1
            assert client.get("/accuracy").json()["model_version"] == promoted  # scored afresh for the new model

            # A challenger trained on shuffled targets backtests worse: rejected, nothing changes.
            shuffled = tmp_path / "shuffled" / "server_metrics.parquet"
            shuffled.parent.mkdir()
            _shuffle_training_part(exported, shuffled)
            result = run_cli("main.py", "retrain", "--data", str(shuffled), "--models-dir", str(models), *GOOD,
                             *TINY_SHAPE, *BAND, "--no-warm-start", timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "decision: kept the champion" in result.stdout, result.stdout
            assert (models / LATEST_MODEL_LINK).resolve().name == promoted
            events = json.loads((models / REGISTRY.promotions_file).read_text())
            assert [e["action"] for e in events] == ["trained", "promoted", "rejected"]  # main.py train is recorded
            assert not (models / events[-1]["model"]).exists()  # the rejected challenger is not kept

            # Rollback: the model the promoted one replaced serves again, and the daemon follows.
            result = run_cli("main.py", "rollback", "--models-dir", str(models))
            assert result.returncode == 0, result.stderr[-2000:]
            assert (models / LATEST_MODEL_LINK).resolve().name == champion
            wait_for(lambda: _version(client) == champion, timeout=60)

            # A retrain killed mid-run: logged and counted; the champion keeps serving.
            started = client.post("/admin/retrain")
            assert started.status_code == 202, started.text
            pid = started.json()["pid"]
            assert client.post("/admin/retrain").status_code == 409  # one at a time
            wait_until(lambda: _retrain_log_written(client), what="the retrain to be under way (its log written)")
            os.kill(pid, signal.SIGKILL)
            status = wait_for(lambda: (lambda s: s if s["retrain"]["failures"] == 1 else None)(
                client.get("/status").json()), timeout=30)
            assert status["retrain"]["last_exit"] == -signal.SIGKILL and not status["retrain"]["running"]
            stamp = feed(client, 1)
            wait_for(lambda: (client.get("/status").json()["last_forecast_time"] or "")[:16] == stamp)
            assert _version(client) == champion and client.get("/health").json()["status"] == "ok"
            # Through promotion, rollback and the killed retrain, every acknowledged record is stored.
            status = client.get("/status").json()
            assert status["feed_records_stored"] == len(sent) and status["feed_records_rejected"] == 0
        log = daemon.log.read_text()
        assert "killed by signal 9" in log and "Traceback" not in log
    finally:
        daemon.stop()


def test_a_scheduled_retrain_that_fails_is_counted_and_the_next_one_is_scheduled(tmp_path):
    """The timer path without a daemon: due -> started at low priority -> its failure counted -> next due."""
    from retrain_scheduler import RetrainScheduler, parse_interval

    assert parse_interval("24h") == 86400 and parse_interval("90m") == 5400 and parse_interval("2d") == 172800
    for bad in ("soon", "10", "5m"):  # no unit, no number, shorter than an hour
        with pytest.raises(ValueError, match="--retrain-every"):
            parse_interval(bad)
    now = [0.0]
    scheduler = RetrainScheduler(store=tmp_path / "missing.sqlite3", models_dir=tmp_path / "models",
                                 every_seconds=3600.0, clock=lambda: now[0])
    scheduler.poll()
    assert not scheduler.running and scheduler.runs == 0  # not due yet
    now[0] = 3600.0
    scheduler.poll()
    assert scheduler.running and scheduler.runs == 1
    assert os.getpriority(os.PRIO_PROCESS, scheduler.pid) == 19
    wait_for(lambda: scheduler.poll() or not scheduler.running, timeout=300)
    assert scheduler.failures == 1 and scheduler.last_exit == 2  # the store does not exist: exit 2, counted
    log = Path(scheduler.status()["log"]).read_text()
    assert "retrain failed, nothing changed" in log and "Traceback" not in log
    assert scheduler.status()["next_in_seconds"] == 3600.0  # the next run counts from this one's start


def test_retrain_every_is_refused_with_the_reason_when_it_cannot_work(tiny_training, tmp_path):
    """Too short an interval, or a daemon that does not follow <models>/latest: no start, the fix said."""
    store = str(tmp_path / "s.sqlite3")
    short = run_cli("main.py", "infer", "--daemon", "--store", store, "--retrain-every", "5m", timeout=120)
    assert short.returncode == 2 and "shorter than 1 h" in short.stderr and "Traceback" not in short.stderr
    concrete = run_cli("main.py", "infer", "--daemon", "--store", store, "--model-dir",
                       str(tiny_training.model_dir), "--retrain-every", "24h", timeout=120)
    assert concrete.returncode == 2 and "needs --model-dir <models-dir>/latest" in concrete.stderr
    assert "Traceback" not in concrete.stderr


def test_the_registry_keeps_k_models_never_the_serving_one_or_its_predecessor(tmp_path):
    """Promotions on plain folders: pruning keeps the newest K plus the serving one and the way back."""
    from model_registry import RegistryError, current_model, history, point_latest, previous_model, promote, rollback

    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(models)
    folders = [models / f"tft_model_20260101_00000{i}" for i in range(6)]
    for folder in folders:
        folder.mkdir()
    promote(models, folders[0], keep=2)
    with pytest.raises(RegistryError, match="no earlier model"):
        rollback(models)  # the first model replaced nothing
    promote(models, folders[5], keep=2)  # serving 5, its predecessor 0: both kept, 1-3 pruned
    assert sorted(p.name for p in models.glob("tft_model_*")) == [folders[0].name, folders[4].name, folders[5].name]
    assert current_model(models) == folders[5] and previous_model(models) == folders[0]
    restored, replaced = rollback(models)
    assert (restored, replaced) == (folders[0], folders[5]) and current_model(models) == folders[0]
    assert [e["action"] for e in history(models)] == ["promoted", "promoted", "rolled_back"]
    point_latest(folders[4], "trained")  # what main.py train does: recorded, so it can be rolled back too
    assert rollback(models) == (folders[0], folders[4])
    assert (models / LATEST_MODEL_LINK).is_symlink()  # a relative link: the folder can move as a whole
    assert not (models / LATEST_MODEL_LINK).readlink().is_absolute()


def test_a_daemon_without_a_model_loads_the_first_one_that_appears_in_latest(tiny_training, tmp_path):
    """--allow-no-model, then a first training: served without a restart; a damaged one is tried once."""
    import shutil

    from daemon_state import Daemon, DaemonSettings
    from model_registry import point_latest

    models = tmp_path / "models"
    models.mkdir()
    daemon = Daemon(DaemonSettings(model_dir=models / LATEST_MODEL_LINK, store_path=tmp_path / "s.sqlite3",
                                   allow_no_model=True))
    try:
        assert daemon.engine is None and daemon.watch_model() is False  # nothing there yet
        damaged = models / "tft_model_20260101_000000"
        damaged.mkdir()
        point_latest(damaged)
        assert daemon.watch_model() is False and daemon.engine is None and daemon.model_error
        assert daemon.watch_model() is False and daemon.model_reload_failures == 0  # not retried until it moves
        good = models / "tft_model_20260101_000001"
        shutil.copytree(tiny_training.model_dir, good)
        point_latest(good)
        assert daemon.watch_model() is True and daemon.engine is not None and daemon.model_version == good.name
    finally:
        daemon.close()


# ============================================================================ bounds (issue 26 item 7)
# Real processes and real signals; stand-in commands where no training is needed.

# A retrain stand-in: it starts a grandchild that ignores SIGTERM, and itself ignores SIGTERM ("ignore", a hung
# retrain) or dies of it ("obey"); both would sleep for ten minutes.
_STAND_IN = r"""
import signal, subprocess, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
                               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(f"grandchild {grandchild.pid}", flush=True)
time.sleep(600)
"""


def _dead(pid: int) -> bool:
    """The process is gone, or a zombie (dead: it runs no more and holds no memory; a container's pid 1 that does
    not reap leaves a killed orphan so)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _grandchild(log: str) -> int | None:
    text = Path(log).read_text() if Path(log).exists() else ""
    found = [line.split()[1] for line in text.splitlines() if line.startswith("grandchild ")]
    return int(found[0]) if found else None


def test_a_hung_retrain_is_timed_out_with_its_whole_process_group_and_the_next_one_can_start(tmp_path, caplog):
    """Past the timeout the group gets SIGTERM, then SIGKILL after the grace (the stand-in ignores SIGTERM): the
    grandchild dies too, it counts as a failure with one log line, old logs are rotated, and the next retrain
    starts; stop() ends that one's group as well (its leader obeys SIGTERM, its grandchild needs the SIGKILL).
    Cost: ~2 s."""
    from retrain_scheduler import RetrainScheduler

    caplog.set_level(logging.INFO, logger="retrain_scheduler")
    models = tmp_path / "models"
    old_log = models / RETRAIN_REPORTS_SUBDIR / "retrain_20000101_000000.log"
    old_log.parent.mkdir(parents=True)
    old_log.write_text("an old run\n")
    os.utime(old_log, (946684800, 946684800))
    scheduler = RetrainScheduler(store=tmp_path / "unused.sqlite3", models_dir=models, every_seconds=None,
                                 timeout_seconds=1.0, kill_grace_seconds=0.5, keep_reports=1,
                                 command=[sys.executable, "-c", _STAND_IN, "ignore"])
    began = time.monotonic()
    assert scheduler.start()
    child = scheduler.pid
    grandchild = wait_for(lambda: _grandchild(scheduler.last_log), timeout=20, interval=0.05)
    assert os.getpgid(child) == child != os.getpgrp()  # a process group (session) of its own ...
    assert os.getpgid(grandchild) == child  # ... that its grandchild is in
    assert not scheduler.start()  # one at a time (POST /admin/retrain answers 409)
    wait_for(lambda: scheduler.poll() or not scheduler.running, timeout=20, interval=0.05)
    took = time.monotonic() - began
    status = scheduler.status()
    assert status["last_outcome"] == "timed_out" and status["timeouts"] == 1 and status["failures"] == 1, status
    assert status["last_exit"] == -signal.SIGKILL  # it ignored SIGTERM: the grace ran out
    assert 1.5 <= took < 15, took  # the timeout plus the grace
    assert _dead(child) and wait_for(lambda: _dead(grandchild), timeout=5, interval=0.05)
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(lines) == 1 and "SIGKILL after the" in lines[0] and "process group" in lines[0], lines
    assert not old_log.exists() and Path(scheduler.last_log).exists()  # rotated: the newest log is kept

    scheduler.command = [sys.executable, "-c", _STAND_IN, "obey"]
    scheduler.timeout_seconds = 600.0
    assert scheduler.start()  # a timed-out retrain no longer blocks the next
    child = scheduler.pid
    grandchild = wait_for(lambda: _grandchild(scheduler.last_log), timeout=20, interval=0.05)
    scheduler.poll()
    assert scheduler.running
    scheduler.stop()
    assert scheduler.status()["last_outcome"] == "stopped" and scheduler.last_exit == -signal.SIGTERM
    assert _dead(child) and wait_for(lambda: _dead(grandchild), timeout=5, interval=0.05)
    assert not scheduler.running and scheduler.failures == 1


def test_a_daemon_started_retrain_skips_while_another_holds_the_lock_and_says_who(tmp_path, caplog):
    """The real ``main.py retrain`` the daemon starts, while this process holds the models directory's retrain
    lock (as tft-retrain.timer's run would): it exits RETRAIN_EXIT_LOCKED with one clear line, and the scheduler
    counts it as skipped, not as a failure. Its command carries the daemon's pid and the memory limit, which the
    daemon's --retrain-args override. Cost: ~10 s (the child imports torch)."""
    from config import RETRAIN_EXIT_LOCKED
    from model_retrain import RetrainLocked, retrain_lock
    from retrain_scheduler import RetrainScheduler

    models = tmp_path / "models"
    scheduler = RetrainScheduler(store=tmp_path / "store.sqlite3", models_dir=models, every_seconds=None,
                                 extra_args=["--accelerator", "cpu", "--memory-limit-mb", "20000"])
    command = scheduler.retrain_command()
    assert command[command.index("--parent-pid") + 1] == str(os.getpid())
    with retrain_lock(models):
        assert scheduler.start()
        wait_for(lambda: scheduler.poll() or not scheduler.running, timeout=180, interval=0.2)
    status = scheduler.status()
    assert status["last_outcome"] == "skipped" and status["skipped"] == 1 and status["failures"] == 0, status
    assert status["last_exit"] == RETRAIN_EXIT_LOCKED
    log = Path(status["log"]).read_text()
    assert f"another retrain holds {models / '.retrain.lock'} (pid {os.getpid()}); skipping" in log, log[-2000:]
    assert "address space limited to 20000 MB" in log and "Traceback" not in log, log[-2000:]
    with retrain_lock(models) as held:  # released with the holder's descriptor; a later retrain can take it
        assert held.read_text().strip() == str(os.getpid())
    child = subprocess_holding_the_lock(models)
    try:
        with pytest.raises(RetrainLocked) as caught:
            with retrain_lock(models):
                pass
        assert caught.value.holder == child.pid
    finally:
        child.kill()
        child.wait()
    with retrain_lock(models):  # a holder killed with SIGKILL leaves no stale lock behind
        pass


def subprocess_holding_the_lock(models: Path) -> subprocess.Popen:
    """A process that takes the retrain lock, says so, and sleeps."""
    code = ("import sys, time; from pathlib import Path; from model_retrain import retrain_lock\n"
            "with retrain_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(models)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_retrain_whose_daemon_dies_ends_itself_and_its_group(tmp_path):
    """The daemon (a stand-in) is SIGKILLed: its retrain child, started in a session of its own and watching
    --parent-pid, logs one line and ends its group, here by SIGKILL after the grace since it ignores SIGTERM.
    Cost: ~2 s."""

    log = tmp_path / "retrain.log"
    child_code = ("import logging, signal, subprocess, sys, time\n"
                  "logging.basicConfig(level=logging.INFO)\n"
                  "from model_retrain import watch_parent\n"
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "grandchild = subprocess.Popen(['sleep', '600'])\n"
                  "print(f'grandchild {grandchild.pid}', flush=True)\n"
                  "watch_parent(int(sys.argv[1]), interval=0.1, grace=0.5)\n"
                  "time.sleep(600)\n")
    daemon_code = ("import os, subprocess, sys, time\n"
                   "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())], "
                   "start_new_session=True, stderr=open(sys.argv[2], 'w'))\n"
                   "print(f'child {child.pid}', flush=True)\n"
                   "time.sleep(600)\n")
    daemon = subprocess.Popen([sys.executable, "-c", daemon_code, child_code, str(log)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids: dict[str, int] = {}
    try:
        assert daemon.stdout is not None
        while len(pids) < 2:
            what, pid = daemon.stdout.readline().split()
            pids[what] = int(pid)
        time.sleep(0.5)  # wall-clock: the watcher must not misfire; only time passing can show that
        assert not _dead(pids["child"]) and not _dead(pids["grandchild"])  # it runs while the daemon lives
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        wait_for(lambda: _dead(pids["child"]) and _dead(pids["grandchild"]), timeout=15, interval=0.05)
    finally:
        daemon.kill()
        for pid in pids.values():
            if not _dead(pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert f"the daemon that started it (pid {daemon.pid}) is gone; ending this retrain" in text, text


def test_the_memory_limit_bounds_the_retrains_address_space(tmp_path):
    """apply_memory_limit in a fresh process: a 1 GiB allocation past the limit fails with MemoryError, a small one
    fits; 0 and GPU training leave the limit alone. Cost: ~1 s."""

    code = ("import resource\n"
            "from model_retrain import apply_memory_limit\n"
            "before = resource.getrlimit(resource.RLIMIT_AS)\n"
            "size_mb = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) // 1024\n"
            "assert apply_memory_limit(0, 'cpu') is None and apply_memory_limit(size_mb + 64, 'gpu') is None\n"
            "assert resource.getrlimit(resource.RLIMIT_AS) == before\n"
            "limit = apply_memory_limit(size_mb + 256, 'cpu')\n"
            "assert resource.getrlimit(resource.RLIMIT_AS) == (limit, limit), resource.getrlimit(resource.RLIMIT_AS)\n"
            "small = bytearray(64 * 1024 * 1024)\n"
            "try:\n    bytearray(1024 * 1024 * 1024)\n    print('allocated past the limit')\n"
            "except MemoryError:\n    print('refused past the limit')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "refused past the limit", result.stdout


def test_two_writers_of_promotions_json_never_lose_an_entry(tmp_path):
    """Two processes record 80 rejections each at the same moment: all 160 entries are there, each writer's in its
    own order (without the lock a read-modify-write race drops entries). Cost: ~2 s."""

    models = tmp_path / "models"
    models.mkdir()
    code = ("import sys, time\nfrom pathlib import Path\nfrom model_registry import record_rejection\n"
            "start = float(sys.argv[3])\nwhile time.time() < start:\n    pass\n"
            "for i in range(80):\n    record_rejection(Path(sys.argv[1]), f'{sys.argv[2]}-{i}', {'decision': 'x'})\n")
    start = str(time.time() + 1.5)
    writers = [subprocess.Popen([sys.executable, "-c", code, str(models), name, start],
                                cwd=ROOT) for name in ("a", "b")]
    assert [w.wait(60) for w in writers] == [0, 0]
    models_seen = [event["model"] for event in json.loads((models / REGISTRY.promotions_file).read_text())]
    assert len(models_seen) == 160
    for name in ("a", "b"):
        assert [m for m in models_seen if m.startswith(name)] == [f"{name}-{i}" for i in range(80)]
    assert models_seen != sorted(models_seen)  # they did interleave: the lock was contended


def test_reports_and_logs_are_rotated_keeping_the_newest_of_each(tmp_path):
    """Five runs' logs and reports -> the newest two of each kind; other files (a cron log) stay. Cost: <0.1 s."""
    from model_retrain import rotate_reports

    reports = tmp_path / "reports"
    reports.mkdir()
    for i in range(5):
        for name in (f"retrain_2026010{i}_000000.log", f"retrain_tft_model_2026010{i}.json",
                     f"retrain_tft_model_2026010{i}.txt"):
            (reports / name).write_text("x")
            os.utime(reports / name, (1_700_000_000 + i * 3600, 1_700_000_000 + i * 3600))
    (reports / "cron.log").write_text("kept")
    removed = rotate_reports(reports, keep=2)
    assert len(removed) == 9
    assert sorted(p.name for p in reports.iterdir()) == [
        "cron.log", "retrain_20260103_000000.log", "retrain_20260104_000000.log", "retrain_tft_model_20260103.json",
        "retrain_tft_model_20260103.txt", "retrain_tft_model_20260104.json", "retrain_tft_model_20260104.txt"]


def test_population_change_is_the_share_of_servers_new_or_gone():
    """The gate's measure and where it refuses at the default 0.5. Cost: <0.1 s."""
    from model_retrain import population_change, refusal_reason

    ten = {f"s{i}" for i in range(10)}
    same = population_change(ten, ten)
    assert same["change"] == 0.0 and refusal_reason(same, 0.5) is None
    doubled = population_change(ten, ten | {f"n{i}" for i in range(10)})
    assert (doubled["new"], doubled["gone"], doubled["change"]) == (10, 0, 0.5) and refusal_reason(doubled, 0.5) is None
    half_replaced = population_change(ten, {f"s{i}" for i in range(5)} | {f"n{i}" for i in range(5)})
    assert half_replaced["change"] == round(10 / 15, 4)
    reason = refusal_reason(half_replaced, 0.5)
    assert reason is not None and reason.startswith("refused: population changed: 5 of the 10 established servers")
    assert "Fix:" in reason and refusal_reason(half_replaced, 1.0) is None


def test_a_retrain_on_a_sharply_changed_fleet_is_refused_before_training(tmp_path, caplog):
    """A store with 4 established servers and 3 fed for an hour, a champion trained on 8 other servers: the export
    keeps the 4 (the 3 left out, logged), the gate refuses without training ("refused: population changed"), the
    refusal is reported and recorded, and latest stays. Cost: ~3 s (plus torch's import when first in the run)."""

    from metrics_store import MetricsStore
    from model_registry import history, point_latest
    from model_retrain import build_arg_parser, retrain, retrain_lock, settings_from_args
    from server_encoder import ServerEncoder

    caplog.set_level(logging.INFO)
    store = tmp_path / "store.sqlite3"
    sim = FleetSimulator(fleet={"web_api": 2, "database": 1, "generic": 1}, seed=5, start="2026-01-05T00:00:00Z")
    records = [{**r, "ts_ns": int(pd.Timestamp(r["timestamp"]).value)} for r in sim.records(sim.advance(144))]
    last_hour = [r for r in records if r["server_name"] == "ppweb001"][-12:]
    records += [{**r, "server_name": f"new-{k}"} for k in range(3) for r in last_hour]
    metrics_store = MetricsStore(store, synchronous="OFF")
    metrics_store.add_records(records)
    metrics_store.close()
    models = tmp_path / "models"
    champion = models / "tft_model_20260101_000000"
    champion.mkdir(parents=True)
    encoder = ServerEncoder()
    encoder.encode_many([f"old-{k}" for k in range(6)] + ["ppweb001", "ppweb002"])
    encoder.save(champion)
    point_latest(champion)
    args = build_arg_parser().parse_args(["--store", str(store), "--models-dir", str(models),
                                          "--min-history-days", "0.5", "--memory-limit-mb", "0"])
    with retrain_lock(models):
        report = retrain(*settings_from_args(args))
    assert report["decision"].startswith("refused: population changed"), report["decision"]
    assert report["challenger"] is None and report["gate"] is None
    population = report["population"]
    assert (population["challenger_servers"], population["left_out"]) == (4, 3)  # established only
    assert (population["new"], population["gone"], population["champion_servers"]) == (2, 6, 8)
    assert [e["action"] for e in history(models)] == ["trained", "refused"]
    assert (models / LATEST_MODEL_LINK).resolve() == champion.resolve()
    text = Path(report["report_path"]).with_suffix(".txt").read_text()
    assert "decision: refused: population changed" in text and "3 left out" in text, text
    assert not (models / ".retrain").exists()  # the export is removed
    messages = [r.getMessage() for r in caplog.records]
    assert any("left out with less than 0.5 days" in m for m in messages), messages
    assert any(m.startswith("retrain: refused: population changed") for m in messages), messages
