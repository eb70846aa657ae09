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
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config import HORIZONS, LATEST_MODEL_LINK, LINBORG_METRICS, PROMOTIONS_FILE, RETRAIN_REPORTS_SUBDIR
from metrics_generator import FleetSimulator
from tests.conftest import TINY_FLEET, DaemonProcess, feed_buckets, run_cli, wait_for

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
            events = json.loads((models / PROMOTIONS_FILE).read_text())
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
            time.sleep(2)
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
    assert scheduler.failures == 1 and scheduler.last_exit == 1  # the store does not exist: exit 1, counted
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
    assert concrete.returncode == 1 and "needs --model-dir <models-dir>/latest" in concrete.stderr
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
