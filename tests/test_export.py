"""Training data from the store: ``main.py export`` and the daemon's bucket retention.

The store is filled through ``MetricsStore.add_records`` (what ``POST /feed`` calls once a batch is
validated) with a simulated fleet, plus the cases a live store holds: buckets with several samples
(means, latest counts, most severe state), a gap (offline rows), and a server whose feeder cannot
measure three metrics and sends the contract's fill value for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import errors
from config import (
    FLOAT_METRICS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METADATA_FILE,
    RETENTION_MIN_DAYS,
    SERVER_MAPPING_FILE,
    STEPS_PER_DAY,
    UNMEASURED_FILL,
)
from contract import NS_PER_BUCKET, bucket_iso
from metrics_generator import FleetSimulator
from metrics_store import MetricsStore
from state_rules import STATE_PRECEDENCE
from tests.helpers import run_cli

START = "2026-01-05T00:00:00Z"
FLEET = {"web_api": 2, "database": 1, "generic": 1}
BUCKETS = STEPS_PER_DAY  # one day
EDGE = "edge-01.example.net"  # fed by a feeder without Java CPU or CLOSE_WAIT counts (node_exporter-like)
EDGE_FILLED = ["java_cpu_pct", "back_close_wait", "front_close_wait"]
GAP = (100, 111)  # ppdb001 sends nothing for these buckets (offsets from the start)
RANK = {state: rank for rank, state in enumerate(STATE_PRECEDENCE)}


def fleet_records() -> list[dict]:
    """The fed records (each with ``ts_ns``), as the daemon stores them after validation."""
    sim = FleetSimulator(fleet=FLEET, seed=21, start=START)
    records = []
    for record in sim.records(sim.advance(BUCKETS)):
        record = {**record, "ts_ns": int(pd.Timestamp(record["timestamp"]).value)}
        offset = (record["ts_ns"] - pd.Timestamp(START).value) // NS_PER_BUCKET
        if record["server_name"] == "ppdb001" and GAP[0] <= offset < GAP[1]:
            continue
        if record["server_name"] == "ppgen001":
            record.update(server_name=EDGE, **{m: UNMEASURED_FILL[m] for m in EDGE_FILLED})
        records.append(record)
        if record["server_name"] == "ppweb001" and record["cpu_idle_pct"] >= 1.0:
            # A second sample 2.5 minutes later: other values, a later count, a more severe state.
            second = {**record, "ts_ns": record["ts_ns"] + 150 * 10**9,
                      "cpu_user_pct": round(record["cpu_user_pct"] + 1.0, 2),
                      "cpu_idle_pct": round(record["cpu_idle_pct"] - 1.0, 2),
                      "mem_used_pct": min(100.0, record["mem_used_pct"] + 3.0),
                      "back_close_wait": record["back_close_wait"] + 7,
                      "state": "heavy_load" if RANK[record["state"]] > RANK["heavy_load"] else record["state"]}
            records.append(second)
    return records


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A closed store holding the fleet, and the records fed into it."""
    path = tmp_path_factory.mktemp("export") / "store.sqlite3"
    records = fleet_records()
    metrics_store = MetricsStore(path, synchronous="OFF")
    for i in range(0, len(records), 500):
        metrics_store.add_records(records[i:i + 500])
    metrics_store.close()
    return path, records


def expected_buckets(records: list[dict]) -> pd.DataFrame:
    """The bucketing rule applied to the records themselves: gauge means, latest counts, most severe state."""
    frame = pd.DataFrame(records).sort_values("ts_ns")
    frame["bucket"] = frame["ts_ns"] // NS_PER_BUCKET
    groups = frame.groupby(["server_name", "bucket"])
    out = groups[FLOAT_METRICS].mean().join(groups[INTEGER_METRICS].last())
    out["state"] = groups["state"].agg(lambda states: min(states, key=RANK.__getitem__))
    return out


def exported(path: Path) -> pd.DataFrame:
    """The exported file indexed like :func:`expected_buckets`."""
    frame = pd.read_parquet(path)
    frame["bucket"] = frame["timestamp"].dt.as_unit("ns").astype("int64") // NS_PER_BUCKET
    frame["server_name"] = frame["server_name"].astype(str)
    frame["state"] = frame["state"].astype(str)
    return frame.set_index(["server_name", "bucket"])


def assert_clean_failure(code: int, log: str, *phrases: str) -> None:
    """Exit 2 (errors.py: an input that cannot be exported), the reason and the fix in the log, no traceback."""
    assert code == 2, (code, log[-2000:])
    assert "Traceback" not in log and "export failed" in log and "Fix:" in log, log[-2000:]
    for phrase in phrases:
        assert phrase in log, (phrase, log[-2000:])


def test_export_round_trips_the_stored_buckets_and_validates(store, tmp_path):
    """CLI export -> the validator accepts it; every sampled row is the bucket's mean/latest; gaps are offline."""
    path, records = store
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "live" / "server_metrics.parquet"
    result = run_cli("main.py", "export", "--store", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported 4 servers" in result.stdout and "exporting 4 servers" in result.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # read only: the store is not touched
    validated = run_cli("main.py", "validate", str(out))
    assert validated.returncode == 0 and validated.stdout.startswith("VALID"), validated.stdout[-3000:]

    schema = pq.read_schema(out)  # the generator's and the importer's types
    assert str(schema.field("timestamp").type) == "timestamp[ns, tz=UTC]"
    for column in ("server_name", "profile", "state"):
        assert str(schema.field(column).type) == "dictionary<values=string, indices=int32, ordered=0>"
    for metric in LINBORG_METRICS:
        assert str(schema.field(metric).type) == ("int32" if metric in INTEGER_METRICS else "float"), metric

    frame = exported(out)
    expected = expected_buckets(records)
    sampled = frame.loc[expected.index]
    for metric in FLOAT_METRICS:
        np.testing.assert_allclose(sampled[metric].to_numpy(float), expected[metric].to_numpy(float), rtol=1e-6,
                                   atol=1e-9, err_msg=metric)
    for metric in INTEGER_METRICS:
        assert (sampled[metric].to_numpy() == expected[metric].to_numpy()).all(), metric
    assert (sampled["state"] == expected["state"]).all()
    assert expected.loc["ppweb001", "state"].eq("heavy_load").any()  # the second samples did raise states

    first = pd.Timestamp(START).value // NS_PER_BUCKET
    assert len(frame) == 4 * BUCKETS and len(expected) == 4 * BUCKETS - (GAP[1] - GAP[0])  # dense: gaps are rows
    gap = frame.loc["ppdb001"].loc[first + GAP[0]:first + GAP[1] - 1]
    before_gap = frame.loc[("ppdb001", first + GAP[0] - 1)]
    assert len(gap) == GAP[1] - GAP[0] and (gap["state"] == "offline").all()
    assert (gap["cpu_idle_pct"] == 100.0).all() and (gap["net_in_mb_s"] == 0.0).all()
    assert (gap["disk_usage_pct"] == before_gap["disk_usage_pct"]).all()  # carried from the last sample

    meta = json.loads((out.parent / METADATA_FILE).read_text())
    assert (out.parent / SERVER_MAPPING_FILE).exists()
    assert meta["rows"] == len(frame) and meta["sampled_rows"] == len(expected) and meta["samples"] == len(records)
    assert meta["measured_metrics"] == LINBORG_METRICS and meta["measured_metrics_inferred"] is True
    assert meta["servers_constant_at_fill"] == {EDGE: EDGE_FILLED}
    assert meta["servers"] == {EDGE: "generic", "ppdb001": "database", "ppweb001": "web_api", "ppweb002": "web_api"}


def test_since_until_and_servers_select_and_unmeasured_metrics_are_inferred(store, tmp_path):
    """--since/--until take the buckets holding them (inclusive); --servers picks servers; the trainer sees the fill."""
    from trace_importer import measured_metrics_for

    path, _ = store
    out = tmp_path / "part.parquet"
    result = run_cli("main.py", "export", "--store", str(path), "--out", str(out), "--since", "2026-01-05T01:42:10Z",
                     "--until", "2026-01-05T10:00:00", "--servers", f"{EDGE},ppdb001")
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_parquet(out)
    assert sorted(frame["server_name"].astype(str).unique()) == [EDGE, "ppdb001"]
    for _, rows in frame.groupby("server_name", observed=True):
        assert rows["timestamp"].min() == pd.Timestamp("2026-01-05T01:40:00Z")
        assert rows["timestamp"].max() == pd.Timestamp("2026-01-05T10:00:00Z")

    alone = tmp_path / "edge" / "server_metrics.parquet"
    assert run_cli("main.py", "export", "--store", str(path), "--out", str(alone), "--servers", EDGE).returncode == 0
    meta = json.loads((alone.parent / METADATA_FILE).read_text())
    assert sorted(meta["unmeasured_metrics"]) == sorted(EDGE_FILLED)
    assert measured_metrics_for(alone) == [m for m in LINBORG_METRICS if m not in EDGE_FILLED]


def test_a_long_export_logs_its_progress_and_a_summary(store, tmp_path, caplog):
    """Chunks of whole servers; a progress line per 10 % of the rows crossed, then one summary line."""
    from store_export import export_store

    path, _ = store
    with caplog.at_level(logging.INFO, logger="store_export"):
        meta = export_store(path, tmp_path / "p.parquet", chunk_rows=BUCKETS)  # one server per chunk
    lines = [r.getMessage() for r in caplog.records]
    progress = [line.split(", ")[0:2] for line in lines if line.startswith("export: ")]
    assert progress == [[f"export: {k} of 4 servers", f"{k * BUCKETS:,} of {4 * BUCKETS:,} rows ({25 * k} %)"]
                        for k in (1, 2, 3)]
    assert lines[-1].startswith("exported 4 servers") and meta["rows"] == 4 * BUCKETS


def test_errors_say_what_why_and_how_to_fix_without_a_traceback(store, tmp_path, caplog):
    """A missing store, an empty range, a foreign file (CLI), bad times and unknown servers: exit 1, readable."""
    import store_export

    path, _ = store
    missing = tmp_path / "no" / "store.sqlite3"
    foreign = tmp_path / "notes.sqlite3"
    foreign.write_text("not a database\n" * 100)
    out = tmp_path / "out" / "x.parquet"
    cli_cases = [
        (["--store", str(missing)], ["does not exist", "--store"]),
        (["--store", str(path), "--since", "2030-01-01"],
         ["no buckets from 2030-01-01T00:00:00Z on", "from 2026-01-05T00:00:00Z to 2026-01-05T23:55:00Z"]),
        (["--store", str(foreign)], ["is not a readable SQLite database"]),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: run_cli("main.py", "export", "--out", str(out), *case[0]), cli_cases))
    for result, (_, phrases) in zip(results, cli_cases, strict=True):
        assert_clean_failure(result.returncode, result.stderr + result.stdout, *phrases)
    assert not missing.exists() and not missing.parent.exists()  # a missing store is not created

    parser = store_export.build_arg_parser()
    for extra, phrases in [
        (["--until", "next tuesday"], ["--until 'next tuesday' is not a time", "ISO 8601"]),
        (["--since", "2026-01-05T12:00", "--until", "2026-01-05T06:00"], ["is after --until"]),
        (["--servers", "ppweb001,ppweb999"], ["not in the store", "ppweb999"]),
        (["--out", str(tmp_path / "x.csv")], ["does not end in .parquet"]),
    ]:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="store_export"):
            code = errors.run_cli(store_export.run_from_args,
                                  parser.parse_args(["--store", str(path), "--out", str(out), *extra]), "export failed")
        assert_clean_failure(code, caplog.text, *phrases)
        assert all(record.exc_info is None for record in caplog.records)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing half-written left behind


def test_min_history_days_exports_only_servers_with_established_history(store, tmp_path, caplog):
    """--min-history-days 1: ppdb001 (a day less its gap of 11 buckets) is left out, named in the log and the
    metadata; the three full-day servers are exported with their mapping. Nobody long enough: an error, no file.
    Cost: ~1 s (one CLI run)."""
    from server_encoder import ServerEncoder
    from store_export import StoreExportError, export_store

    path, records = store
    held = {name: len({r["ts_ns"] // NS_PER_BUCKET for r in records if r["server_name"] == name})
            for name in {r["server_name"] for r in records}}
    assert held["ppdb001"] == BUCKETS - (GAP[1] - GAP[0])
    assert all(count == BUCKETS for name, count in held.items() if name != "ppdb001")
    out = tmp_path / "established" / "server_metrics.parquet"
    with caplog.at_level(logging.INFO, logger="store_export"):
        meta = export_store(path, out, min_history_days=1.0)
    kept = sorted(name for name in held if name != "ppdb001")
    assert sorted(meta["servers"]) == kept and meta["min_history_days"] == 1.0
    assert meta["servers_short_history"] == {"ppdb001": round(held["ppdb001"] / STEPS_PER_DAY, 2)}
    assert sorted(pd.read_parquet(out)["server_name"].astype(str).unique()) == kept
    assert sorted(ServerEncoder.load(out.parent / SERVER_MAPPING_FILE).name_to_id) == kept
    assert any("1 of the servers with buckets in the range hold less than 1 days" in r.getMessage()
               and "ppdb001 (0.96 d)" in r.getMessage() for r in caplog.records), caplog.text
    assert export_store(path, tmp_path / "all.parquet", min_history_days=0)["servers_short_history"] == {}

    none = tmp_path / "none" / "server_metrics.parquet"
    with pytest.raises(StoreExportError, match="none of the 4 servers with buckets in the range holds 2 days") as exc:
        export_store(path, none, min_history_days=2.0)
    assert "Fix:" in str(exc.value) and not none.exists()
    cli = tmp_path / "cli" / "server_metrics.parquet"
    result = run_cli("main.py", "export", "--store", str(path), "--out", str(cli), "--min-history-days", "1")
    assert result.returncode == 0 and "Exported 3 servers" in result.stdout, result.stderr[-2000:]


class _EmptyCycleEngine:
    """Stands in for a model: a forecast cycle with no forecasts, so only the cycle's retention step matters."""

    model_version = "stub"
    sources: dict = {}  # no targets, so no per-metric source to name

    def forecast(self, fleet, origin: int, names=None, await_late: int = 0):  # noqa: ANN001, ANN201 - as ForecastEngine
        from forecast_engine import CycleResult

        return CycleResult(origin=origin, prediction_time=bucket_iso(origin), servers={}, seconds=0.0,
                           forecast_count=0)


def test_retention_days_trims_buckets_at_the_configured_age(tmp_path, caplog):
    """DaemonSettings.retention_days (--retention-days) is the age the cycle's trim deletes buckets at."""
    from daemon_state import Daemon, DaemonSettings
    from tft_inference import build_arg_parser, run_from_args

    retention_days = 9  # neither the default (35) nor the minimum (7): the setting, not a constant, decides
    template = fleet_records()[0]
    origin = pd.Timestamp("2026-02-20T12:00:00Z").value // NS_PER_BUCKET
    cutoff = origin - retention_days * STEPS_PER_DAY
    kept_old = [cutoff, cutoff + 1]
    buckets = [cutoff - 5, cutoff - 1, *kept_old, *range(origin - 12, origin + 1)]
    path = tmp_path / "store.sqlite3"
    metrics_store = MetricsStore(path, synchronous="OFF")
    metrics_store.add_records([{**template, "ts_ns": b * NS_PER_BUCKET} for b in buckets])
    metrics_store.close()

    daemon = Daemon(DaemonSettings(model_dir=None, store_path=path, retention_days=retention_days),
                    clock=lambda: (origin + 1) * NS_PER_BUCKET / 1e9 + 60)
    daemon.engine = _EmptyCycleEngine()
    try:
        assert daemon.run_cycle(origin) is not None, daemon.last_cycle_error
        daemon.housekeeping()  # retention runs on its own clock, not inside a cycle
        stored = [row[0] for row in daemon.store._reader().execute("SELECT bucket FROM buckets ORDER BY bucket")]
    finally:
        daemon.close()
    assert stored == [*kept_old, *range(origin - 12, origin + 1)]

    args = build_arg_parser().parse_args(["--daemon", "--store", str(tmp_path / "other.sqlite3"),
                                          "--retention-days", str(RETENTION_MIN_DAYS - 1)])
    assert args.retention_days == RETENTION_MIN_DAYS - 1
    with caplog.at_level(logging.ERROR, logger="tft_inference"):
        assert errors.run_cli(run_from_args, args) == 2
    assert f"below the minimum of {RETENTION_MIN_DAYS}" in caplog.text and "Fix:" in caplog.text
    assert not (tmp_path / "other.sqlite3").exists()  # refused before anything was opened
