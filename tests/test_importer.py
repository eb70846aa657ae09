"""Importing recorded traces: mapping, units, resampling, unmeasured metrics, and what training does with them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from config import (
    LINBORG_METRICS,
    METADATA_FILE,
    SERVER_MAPPING_FILE,
    TARGET_METRICS,
    TARGET_SCALE_FLOOR_MIN,
    UNMEASURED_FILL,
)
from data_validator import DataValidator, load_frame
from tests.conftest import ROOT, TINY_TRAIN_ARGS, run_cli, write_bitbrains_trace
from tft_features import build_features
from tft_trainer import TrainingError, measured_targets
from trace_importer import TraceImportError, import_traces, load_mapping

MAPPING = ROOT / "mappings" / "bitbrains_rnd.json"
REAL_TRACES = ROOT.parent / "shared" / "realdata" / "bitbrains-rnd-2013-8"
@pytest.fixture()
def traces(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    start = 1375308176  # not on a 5-minute boundary, like the real traces
    write_bitbrains_trace(src / "19.csv", start, 600, seed=1, cpu_spike=105.0)
    write_bitbrains_trace(src / "7.csv", start + 40, 600, seed=2, gap=(100, 120))  # 20 missing samples
    return src


def test_import_maps_units_resamples_and_records_what_was_measured(traces, tmp_path):
    out = tmp_path / "training" / "server_metrics.parquet"
    meta = import_traces(sorted(traces.glob("*.csv")), MAPPING, out)
    frame = load_frame(out)
    is_valid, errors, _ = DataValidator(strict=True).validate_schema(frame)
    assert is_valid, errors
    # Names follow the contract, numbered by the source ids; both servers on one 5-minute grid.
    assert sorted(frame["server_name"].unique()) == ["ppgen007", "ppgen019"]
    assert (frame["timestamp"].dt.minute % 5 == 0).all() and (frame["timestamp"].dt.second == 0).all()
    assert frame.groupby("server_name").size().nunique() == 1
    one = frame[frame["server_name"] == "ppgen019"].set_index("timestamp")
    # Units: memory is a per-row ratio (capacity changes), network KB/s -> MB/s, CPU idle = 100 - used.
    assert one["mem_used_pct"].between(49.9, 50.1).all()
    assert one["net_in_mb_s"].iloc[10] == pytest.approx(3.0) and one["net_out_mb_s"].iloc[10] == pytest.approx(0.5)
    assert (one["cpu_user_pct"] + one["cpu_idle_pct"]).between(99.9, 100.1).all()
    assert meta["clipped_values"]["cpu_user_pct"] >= 1  # the 105 % sample was clipped to the contract
    # Unmeasured metrics: filled by the rule and listed, never claimed as measured.
    assert meta["measured_metrics"] == ["cpu_user_pct", "cpu_idle_pct", "mem_used_pct", "net_in_mb_s", "net_out_mb_s"]
    assert set(meta["unmeasured_metrics"]) == set(LINBORG_METRICS) - set(meta["measured_metrics"])
    assert (one["swap_used_pct"] == UNMEASURED_FILL["swap_used_pct"]).all()
    # A 20-sample gap is longer than the interpolation limit: offline buckets, not invented values.
    other = frame[frame["server_name"] == "ppgen007"].reset_index(drop=True)
    offline = other.index[other["state"] == "offline"]
    assert 18 <= len(offline) <= 21 and offline.max() - offline.min() == len(offline) - 1  # one whole gap
    assert json.loads((out.parent / METADATA_FILE).read_text())["rows"] == len(frame)
    assert (out.parent / SERVER_MAPPING_FILE).exists()


def test_trainer_learns_only_measured_targets(traces, tmp_path):
    out = tmp_path / "training" / "server_metrics.parquet"
    import_traces(sorted(traces.glob("*.csv")), MAPPING, out)
    assert measured_targets(out) == ["cpu_idle_pct", "mem_used_pct", "net_in_mb_s", "net_out_mb_s"]
    # Quiet series (constant network here) get the absolute scale floor, not a vanishing relative one.
    spec = build_features(out, encoder_length=24, targets=measured_targets(out)).spec
    assert spec.targets == measured_targets(out)
    assert spec.target_normalizers["net_in_mb_s"]["scale_floor"] == pytest.approx(TARGET_SCALE_FLOOR_MIN["net_in_mb_s"])
    meta_path = out.parent / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["measured_metrics"] = ["cpu_user_pct"]  # nothing the model forecasts
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TrainingError, match="none of the target metrics"):
        measured_targets(out)
    meta_path.unlink()  # simulator output has no such list: every target is measured
    assert measured_targets(out) == TARGET_METRICS


def test_a_cpu_only_trace_trains_and_backtests(traces, tmp_path):
    """Exactly one measured target (a CPU-only export) trains, saves, loads and is scored (it once crashed)."""
    mapping = json.loads(MAPPING.read_text())
    mapping["metrics"] = {k: v for k, v in mapping["metrics"].items() if k in ("cpu_user_pct", "cpu_idle_pct")}
    (tmp_path / "cpu.json").write_text(json.dumps(mapping))
    out = tmp_path / "training" / "server_metrics.parquet"
    import_traces(sorted(traces.glob("*.csv")), tmp_path / "cpu.json", out)
    assert measured_targets(out) == ["cpu_idle_pct"]
    trained = run_cli("main.py", "train", "--data", str(out), "--models-dir", str(tmp_path / "models"),
                      *TINY_TRAIN_ARGS)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    scored = run_cli("main.py", "evaluate", "--model", str(tmp_path / "models" / "latest"), "--data", str(out),
                     "--no-statistical")
    assert scored.returncode == 0, scored.stderr[-3000:]
    rows = [line.split()[0] for line in scored.stdout.splitlines() if line.split()[:1] and line.endswith(
        tuple("0123456789"))]
    assert "cpu_used_pct" in rows, scored.stdout  # scored as used %, the only metric measured
    assert not {"cpu_idle_pct", "mem_used_pct", "net_in_mb_s"} & set(rows)


def test_bad_mappings_and_sources_say_what_to_fix(traces, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"timestamp": {"column": "Timestamp [ms]", "unit": "s"},
                               "metrics": {"cpu_pct": {"column": "CPU usage [%]"}}}))
    with pytest.raises(TraceImportError, match="'cpu_pct' is not a LINBORG metric.*Fix: map to one of"):
        load_mapping(bad)
    wrong_column = json.loads(MAPPING.read_text())
    wrong_column["metrics"]["mem_used_pct"]["column"] = "RAM [KB]"
    bad.write_text(json.dumps(wrong_column))
    with pytest.raises(TraceImportError, match=r"lacks column\(s\) \['RAM \[KB\]'\].*Docs/IMPORTING.md"):
        import_traces(sorted(traces.glob("*.csv")), bad, tmp_path / "x" / "out.parquet")
    assert not (tmp_path / "x" / "out.parquet").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "19.csv").write_text((traces / "19.csv").read_text())
    with pytest.raises(TraceImportError, match=r"source ids \['19'\] appear in more than one file"):
        import_traces([traces / "19.csv", other / "19.csv"], MAPPING, tmp_path / "y" / "out.parquet")


def test_server_column_across_files_with_non_numeric_hosts(tmp_path):
    """Hosts named in a column, one of them in two monthly files: one server each, numbered once."""
    mapping = json.loads(MAPPING.read_text())
    mapping["server"] = {"column": "host"}
    mapping["csv_sep"] = ","
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    columns = {"Memory usage [KB]": 1.0, "Memory capacity provisioned [KB]": 4.0,
               "Network received throughput [KB/s]": 0.0, "Network transmitted throughput [KB/s]": 0.0}
    start = 1_700_000_000
    def month(hosts: list[str], offset: int, n: int) -> pd.DataFrame:
        return pd.DataFrame([{"host": h, "Timestamp [ms]": start + (offset + i) * 300, "CPU usage [%]": 10.0,
                              **columns} for h in hosts for i in range(n)])
    month(["db-a", "web-b"], 0, 300).to_csv(tmp_path / "july.csv", index=False)
    month(["db-a", "etl-c"], 300, 300).to_csv(tmp_path / "august.csv", index=False)
    meta = import_traces([tmp_path / "july.csv", tmp_path / "august.csv"], tmp_path / "m.json",
                         tmp_path / "out" / "server_metrics.parquet")
    assert sorted(meta["servers"]) == ["ppgen001", "ppgen002", "ppgen003"]  # db-a, etl-c, web-b
    frame = load_frame(tmp_path / "out" / "server_metrics.parquet")
    db_a = frame[frame["server_name"] == "ppgen001"]
    assert (db_a["state"] != "offline").sum() == 600  # both months, one server
    assert db_a["mem_used_pct"].iloc[:600].eq(25.0).all()


def test_cli_import_exit_codes(traces, tmp_path):
    out = tmp_path / "t" / "server_metrics.parquet"
    ok = run_cli("main.py", "import", "--mapping", str(MAPPING), "--out", str(out), *map(str, traces.glob("*.csv")))
    assert ok.returncode == 0, ok.stderr
    assert "Imported 2 servers" in ok.stdout and "unmeasured (filled, not trained on or scored)" in ok.stdout
    assert run_cli("main.py", "validate", str(out)).returncode == 0
    bad = run_cli("main.py", "import", "--mapping", str(tmp_path / "missing.json"), "--out", str(out),
                  str(next(traces.glob("*.csv"))))
    assert bad.returncode == 1 and "import failed" in bad.stderr


@pytest.mark.skipif(not REAL_TRACES.exists(), reason="the real Bitbrains traces are not on this machine")
def test_real_bitbrains_traces_import_cleanly(tmp_path):
    sources = sorted(REAL_TRACES.glob("*.csv"))
    meta = import_traces(sources, MAPPING, tmp_path / "server_metrics.parquet")
    assert len(meta["servers"]) == len(sources) == 26
    assert meta["rows"] == 26 * 8640  # 30 days on the 5-minute grid
    assert meta["offline_share"] < 0.05


def test_backtest_never_scores_unmeasured_metrics(tiny_training, tiny_data, tmp_path):
    """A full model evaluated on data that lacks swap and disk scores only what was measured."""
    import shutil

    data = tmp_path / "server_metrics.parquet"
    shutil.copy(tiny_data, data)
    measured = [m for m in LINBORG_METRICS if m not in ("swap_used_pct", "disk_usage_pct")]
    (tmp_path / METADATA_FILE).write_text(json.dumps({"measured_metrics": measured}))
    out = tmp_path / "backtest.json"
    result = run_cli("main.py", "evaluate", "--model", str(tiny_training.model_dir), "--data", str(data),
                     "--out", str(out), "--no-store", "--statistical", "autoets")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not scoring swap_used_pct, disk_usage_pct" in result.stderr
    scored = json.loads(out.read_text())["per_target"]
    assert "swap_used_pct" not in scored and "disk_usage_pct" not in scored
    assert {"cpu_used_pct", "mem_used_pct", "net_in_mb_s"} <= set(scored) and "cpu_idle_pct" not in scored
    # The statistical model is scored beside the naive ones, by the same code, with its cost reported.
    assert "q50 ets" in result.stdout and "statistical models' cost: autoets" in result.stdout
    assert all(0.0 <= scored[m]["1hr"]["autoets"]["coverage_p10_p90"] <= 1.0 for m in scored)
