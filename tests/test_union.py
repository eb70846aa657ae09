"""One model, one registry for a sharded fleet: export and retrain over every shard's store (Docs/RETRAINING.md,
"Several shards").

Two shards split a tiny fleet by Prometheus' hashmod (sharding.shard_of), each with its own store. The export of
both stores is the export of one store fed everything, a server moved between them (a reshard) included; the
retrain over both trains on and judges the whole fleet and promotes, and two shard daemons following the same
``<models>/latest`` both serve the promoted model. A sharded daemon's scheduled retrain must be given every
store.

Cost (2 cores): ~2.5 min, nearly all of it two tiny trainings and a retrain (the promotion test);
the others ~20 s together (CLI exports, one daemon start-up refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from config import LATEST_MODEL_LINK, METADATA_FILE, RETRAIN_REPORTS_SUBDIR
from contract import NS_PER_BUCKET
from metrics_generator import FleetSimulator
from metrics_store import MetricsStore
from sharding import Shard, shard_of
from tests.helpers import TINY_FLEET, run_cli
from tests.test_retrain import BAND, BETTER, GOOD, TINY_SHAPE, _shuffle_training_part

MOVED = "ppweb001"  # the server a reshard moves from shard 0's store to shard 1's halfway through


def _records(hours: int, seed: int, start: str) -> list[dict]:
    sim = FleetSimulator(fleet=TINY_FLEET, seed=seed, start=start)
    return [{**r, "ts_ns": int(pd.Timestamp(r["timestamp"]).value)} for r in sim.records(sim.advance(hours * 12))]


def _write(path: Path, records: list[dict]) -> None:
    store = MetricsStore(path, synchronous="OFF")
    for i in range(0, len(records), 2000):
        store.add_records(records[i:i + 2000])
    store.close()


def _split(records: list[dict], moved_at: int | None = None) -> tuple[list[dict], list[dict]]:
    """Each record to its shard's store by hashmod over 2; ``MOVED`` (when ``moved_at`` is a time in ns) to store
    0 before that time and to store 1 from then on."""
    parts: tuple[list[dict], list[dict]] = ([], [])
    for record in records:
        name = record["server_name"]
        slot = shard_of(name, 2) if moved_at is None or name != MOVED else int(record["ts_ns"] >= moved_at)
        parts[slot].append(record)
    return parts


def _frame(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    for column in ("server_name", "profile", "state"):
        frame[column] = frame[column].astype(str)
    return frame.sort_values(["server_name", "timestamp"]).reset_index(drop=True)


def test_the_export_of_two_stores_is_the_export_of_one_store_fed_everything(tmp_path):
    """A day of the tiny fleet split over two shards' stores, one server moved from the first to the second
    halfway (its bucket at the move holds one sample in each store): ``main.py export --store A --store B`` writes
    exactly what the export of one store holding every record writes, the moved server's history whole (its
    split bucket merged: mean of both samples, the later count). The moved server is logged and listed in the
    metadata. The stores stay open as a running daemon's (WAL), read-only beside it. Cost: ~10 s."""
    records = _records(24, seed=3, start="2026-01-05T00:00:00Z")
    moved_at = records[len(records) // 2]["ts_ns"]
    moved_bucket = moved_at // NS_PER_BUCKET
    # A second sample 2.5 min into the bucket of the move, sent to the old shard: the bucket is split.
    split = next(r for r in records if r["server_name"] == MOVED and r["ts_ns"] // NS_PER_BUCKET == moved_bucket)
    shift = min(2.0, split["cpu_idle_pct"])  # CPU moved from idle to user: the four parts still sum to 100
    late = {**split, "ts_ns": split["ts_ns"] + 150 * 10**9, "cpu_user_pct": split["cpu_user_pct"] + shift,
            "cpu_idle_pct": split["cpu_idle_pct"] - shift, "back_close_wait": split["back_close_wait"] + 5}
    first, second = _split(records, moved_at)
    first.append(late)
    assert {r["server_name"] for r in first} & {r["server_name"] for r in second} == {MOVED}
    a, b, whole = tmp_path / "shard0.sqlite3", tmp_path / "shard1.sqlite3", tmp_path / "one.sqlite3"
    _write(a, first)
    _write(b, second)
    _write(whole, [*records, late])
    live = [MetricsStore(a), MetricsStore(b)]  # as two running daemons hold them (WAL writers)
    try:
        out = tmp_path / "union" / "server_metrics.parquet"
        result = run_cli("main.py", "export", "--store", str(a), "--store", str(b), "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Exported {sum(TINY_FLEET.values())} servers" in result.stdout, result.stdout
        assert "1 of the servers are in more than one of the 2 stores" in result.stderr and MOVED in result.stderr
        reference = tmp_path / "one" / "server_metrics.parquet"
        assert run_cli("main.py", "export", "--store", str(whole), "--out", str(reference)).returncode == 0
        pd.testing.assert_frame_equal(_frame(out), _frame(reference))
        merged = _frame(out).set_index(["server_name", "timestamp"]).loc[(MOVED, pd.Timestamp(
            moved_bucket * NS_PER_BUCKET, tz="UTC"))]
        assert merged["back_close_wait"] == late["back_close_wait"]  # the later sample's count
        assert merged["cpu_user_pct"] == pytest.approx(split["cpu_user_pct"] + shift / 2, abs=1e-4)  # the mean of both
        meta = json.loads((out.parent / METADATA_FILE).read_text())
        assert meta["servers_in_several_stores"] == {MOVED: [str(a.resolve()), str(b.resolve())]}
        assert meta["stores"] == [str(a.resolve()), str(b.resolve())]
        assert meta["samples"] == len(records) + 1

        twice = run_cli("main.py", "export", "--store", str(a), "--store", str(a), "--out", str(tmp_path / "x.parquet"))
        assert twice.returncode == 2 and "is given more than once" in twice.stderr and "Fix:" in twice.stderr
        assert "Traceback" not in twice.stderr
    finally:
        for store in live:
            store.close()


def test_parquet_slices_join_whole_servers_and_a_duplicate_comes_from_the_fuller_slice(tmp_path):
    """Each shard's export as a file, joined (what ``retrain --data A --data B`` trains on): every server once,
    from one file; a server in both is taken from the file holding more of its sampled rows. Cost: ~2 s."""
    from store_export import export_store, union_parquet

    records = _records(12, seed=4, start="2026-01-05T00:00:00Z")
    moved_at = records[len(records) // 4]["ts_ns"]  # a quarter in shard 0's store, the rest in shard 1's
    files = []
    for k, part in enumerate(_split(records, moved_at)):
        _write(tmp_path / f"s{k}.sqlite3", part)
        files.append(tmp_path / f"slice{k}" / "server_metrics.parquet")
        export_store(tmp_path / f"s{k}.sqlite3", files[-1])
    meta = union_parquet(files, tmp_path / "union" / "server_metrics.parquet", chunk_rows=500)
    union = _frame(tmp_path / "union" / "server_metrics.parquet")
    assert sorted(meta["servers"]) == sorted(union["server_name"].unique()) and len(meta["servers"]) == 12
    assert meta["servers_in_several_files"] == {MOVED: [str(files[0]), str(files[1])]}
    slice1 = _frame(files[1])
    pd.testing.assert_frame_equal(union[union["server_name"] == MOVED].reset_index(drop=True),
                                  slice1[slice1["server_name"] == MOVED].reset_index(drop=True))
    assert len(union) == sum(len(_frame(f)) for f in files) - int((_frame(files[0])["server_name"] == MOVED).sum())
    assert run_cli("main.py", "validate", str(tmp_path / "union" / "server_metrics.parquet")).returncode == 0


def test_a_sharded_daemon_retrains_only_with_every_shards_store(tmp_path):
    """``--retrain-every`` on ``--shard 0/2`` without the other store is refused at start (exit 2, what/why/fix);
    with it in ``--retrain-args`` the one retrain reads both stores; a hand-started retrain is refused the same
    way. Cost: ~8 s (one refused daemon start imports torch)."""
    from retrain_scheduler import RetrainScheduleError, RetrainScheduler

    a, b, models = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3", tmp_path / "models"
    refused = run_cli("main.py", "infer", "--daemon", "--shard", "0/2", "--store", str(a), "--model-dir",
                      str(models / LATEST_MODEL_LINK), "--retrain-every", "24h", timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "would read 1 of the fleet's 2 stores" in refused.stderr and "Fix:" in refused.stderr
    assert "--retrain-args '--store" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(RetrainScheduleError, match="names this daemon's own store"):
        RetrainScheduler(store=a, models_dir=models, every_seconds=3600.0, shard=Shard(0, 2),
                         extra_args=["--store", str(a)])
    whole = RetrainScheduler(store=a, models_dir=models, every_seconds=3600.0, shard=Shard(0, 2),
                             extra_args=["--epochs", "1", f"--store={b}"])
    command = whole.retrain_command()
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--store"] == [str(a)]
    assert f"--store={b}" in command
    by_hand = RetrainScheduler(store=b, models_dir=models, every_seconds=None, shard=Shard(1, 2))  # POST /admin/retrain
    with pytest.raises(RetrainScheduleError, match="would read 1 of the fleet's 2 stores"):
        by_hand.start()
    assert not by_hand.running and by_hand.runs == 0
    assert RetrainScheduler(store=a, models_dir=models, every_seconds=3600.0, shard=Shard(0, 1)).shard is not None


def test_one_retrain_over_both_stores_promotes_and_both_shards_serve_the_new_model(tmp_path):
    """84 h of the tiny fleet in two shards' stores; a bad champion (trained on the union's export with its targets
    shuffled) serves two in-process shard daemons that follow the same ``models/latest``. ``main.py retrain --store
    A --store B`` (the stores held open by the daemons) trains on all 12 servers, judges the union (population
    change 0 against the champion's 12), promotes, and both daemons load the promoted model and forecast with it.
    A retrain from the shards' exported slices (``--data`` twice) sees the same 12. Cost: ~2.5 min."""
    from daemon_state import Daemon, DaemonSettings

    records = _records(84, seed=51, start="2026-03-02T00:00:00Z")
    stores = [tmp_path / f"shard{k}.sqlite3" for k in range(2)]
    for path, part in zip(stores, _split(records), strict=True):
        _write(path, part)
    union = tmp_path / "union" / "server_metrics.parquet"
    assert run_cli("main.py", "export", "--store", str(stores[0]), "--store", str(stores[1]), "--out",
                   str(union)).returncode == 0
    noise = tmp_path / "noise" / "server_metrics.parquet"
    noise.parent.mkdir()
    _shuffle_training_part(union, noise, holdout_hours=0)
    models = tmp_path / "models"
    trained = run_cli("main.py", "train", "--data", str(noise), "--models-dir", str(models), *GOOD, *TINY_SHAPE,
                      "--no-calibration", timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    champion = (models / LATEST_MODEL_LINK).resolve().name
    daemons = [Daemon(DaemonSettings(model_dir=models / LATEST_MODEL_LINK, store_path=path, shard=Shard(k, 2)))
               for k, path in enumerate(stores)]
    try:
        assert [d.model_version for d in daemons] == [champion, champion]
        result = run_cli("main.py", "retrain", "--store", str(stores[0]), "--store", str(stores[1]), "--models-dir",
                         str(models), *BETTER, *TINY_SHAPE, *BAND, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "decision: promoted" in result.stdout, result.stdout
        promoted = (models / LATEST_MODEL_LINK).resolve().name
        assert promoted != champion
        report = json.loads((models / RETRAIN_REPORTS_SUBDIR / f"retrain_{promoted}.json").read_text())
        population = report["population"]
        assert (population["challenger_servers"], population["champion_servers"], population["stores"]) == (12, 12, 2)
        assert population["change"] == 0.0 and population["in_several_stores"] == 0
        holdout = report["holdout"]
        for daemon in daemons:  # each shard follows the one registry
            assert daemon.watch_model() is True
            assert daemon.model_version == promoted
            origin = daemon.complete_through()
            assert origin is not None
            cycle = daemon.run_cycle(origin)
            assert cycle is not None and cycle.forecast_count > 0
    finally:
        for daemon in daemons:
            daemon.close()

    # The same fleet from the shards' own exports (each daemon's host exports its slice): one retrain on the union.
    slices = []
    for k, path in enumerate(stores):
        slices.append(tmp_path / f"slice{k}" / "server_metrics.parquet")
        assert run_cli("main.py", "export", "--store", str(path), "--out", str(slices[-1])).returncode == 0
    result = run_cli("main.py", "retrain", "--data", str(slices[0]), "--data", str(slices[1]), "--models-dir",
                     str(models), "--epochs", "1", "--windows-per-epoch", "256", *TINY_SHAPE, *BAND, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "joining 2 files into one" in result.stderr
    report = json.loads(sorted((models / RETRAIN_REPORTS_SUBDIR).glob("retrain_*.json"),
                               key=lambda p: p.stat().st_mtime)[-1].read_text())
    assert (report["population"]["challenger_servers"], report["population"]["files"]) == (12, 2)
    assert report["population"]["change"] == 0.0
    assert report["holdout"] == holdout  # the same held-out window as the retrain over the stores
