"""Importing recorded traces: mapping, units, resampling, unmeasured metrics, and what training does with them."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config import FEATURES, LINBORG_METRICS, METADATA_FILE, SERVER_MAPPING_FILE, TARGET_METRICS, UNMEASURED_FILL
from data_validator import DataValidator, InputLimitError, load_frame
from tests.helpers import ROOT, TINY_TRAIN_ARGS, run_cli, write_bitbrains_trace
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
    # Names follow the contract, numbered by the source ids; each server on its own 5-minute grid, first to
    # last sample, every bucket present (these two traces span the same buckets).
    assert sorted(frame["server_name"].unique()) == ["ppgen007", "ppgen019"]
    assert (frame["timestamp"].dt.minute % 5 == 0).all() and (frame["timestamp"].dt.second == 0).all()
    assert frame.groupby("server_name", observed=True).size().nunique() == 1
    steps = frame.groupby("server_name", observed=True)["timestamp"].diff().dropna()
    assert (steps == pd.Timedelta(minutes=5)).all()
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
    assert (spec.target_normalizers["net_in_mb_s"]["scale_floor"]
            == pytest.approx(FEATURES.target_scale_floor_min["net_in_mb_s"]))
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
    # Grids are per server: a host seen only in July is not padded with offline rows for August.
    per_server = frame.groupby("server_name", observed=True).size().to_dict()
    assert per_server == {"ppgen001": 600, "ppgen002": 300, "ppgen003": 300}


def test_cli_import_exit_codes(traces, tmp_path):
    out = tmp_path / "t" / "server_metrics.parquet"
    ok = run_cli("main.py", "import", "--mapping", str(MAPPING), "--out", str(out), *map(str, traces.glob("*.csv")))
    assert ok.returncode == 0, ok.stderr
    assert "Imported 2 servers" in ok.stdout and "unmeasured (filled, not trained on or scored)" in ok.stdout
    assert run_cli("main.py", "validate", str(out)).returncode == 0
    bad = run_cli("main.py", "import", "--mapping", str(tmp_path / "missing.json"), "--out", str(out),
                  str(next(traces.glob("*.csv"))))
    assert bad.returncode == 2 and "import failed" in bad.stderr


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


# ---------------------------------------------------------------------------- limits (Docs/IMPORTING.md, Limits)
# A CLI run that reports its own peak resident memory on stderr (peak_rss_kib=...), so a test can tell whether
# a refused file was decoded. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking
# parent (here the test process) across exec.
MEASURED_MAIN = (
    "import re, sys\n"
    "import main\n"
    "try:\n"
    "    code = main.main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code or 0\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
    "print(f'peak_rss_kib={hwm}', file=sys.stderr)\n"
    "sys.exit(code)\n")
BITBRAINS_COLUMNS = ("CPU usage [%]", "Memory usage [KB]", "Memory capacity provisioned [KB]",
                     "Network received throughput [KB/s]", "Network transmitted throughput [KB/s]")


def _peak_kib(result) -> int:  # noqa: ANN001 - CompletedProcess
    return int(re.search(r"peak_rss_kib=(\d+)", result.stderr).group(1))


def compressible_parquet(path, rows: int, start: int = 1_780_000_000) -> int:  # noqa: ANN001
    """A Bitbrains-shaped Parquet file of ``rows`` identical rows: it compresses to almost nothing and decodes
    to 48 bytes a row. Returns its size on disk."""
    columns = {"Timestamp [ms]": pa.array(np.full(rows, start, dtype=np.int64))}
    columns.update({name: pa.array(np.ones(rows)) for name in BITBRAINS_COLUMNS})
    pq.write_table(pa.table(columns), path, compression="zstd")
    return path.stat().st_size


def bitbrains_frame(n: int, start: int = 1_780_000_000) -> pd.DataFrame:
    """``n`` 5-minute samples of one VM in the Bitbrains mapping's columns."""
    return pd.DataFrame({"Timestamp [ms]": start + np.arange(n, dtype=np.int64) * 300,
                         **{name: 1.0 for name in BITBRAINS_COLUMNS}})


def test_a_compressible_parquet_over_the_row_limit_is_refused_from_its_footer(tmp_path):
    rows = 4_000_000
    source = tmp_path / "bomb.parquet"
    assert compressible_parquet(source, rows) < 500_000  # 4 M rows in a few hundred KB
    out = tmp_path / "out" / "server_metrics.parquet"
    baseline = run_cli("-c", MEASURED_MAIN, "import", "--help")  # the same modules loaded, no source read
    refused = run_cli("-c", MEASURED_MAIN, "import", "--mapping", str(MAPPING), "--out", str(out),
                      "--max-rows", "1000000", str(source))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert ("bomb.parquet holds 4,000,000 rows, more than the 1,000,000 rows main.py import reads at most"
            in refused.stderr), refused.stderr[-2000:]
    assert "Why it matters:" in refused.stderr and "--max-rows" in refused.stderr
    assert "See Docs/IMPORTING.md (Limits)" in refused.stderr
    # Decoding would have taken 4 M x 6 columns x 8 bytes (192 MB) twice (Arrow, then pandas).
    grown_kib = _peak_kib(refused) - _peak_kib(baseline)
    assert grown_kib * 1024 < rows * 6 * 8 / 4, f"the refused run grew by {grown_kib} KiB: it decoded the file"
    assert not out.exists()


def test_limits_are_checked_on_every_footer_before_any_source_is_read(tmp_path, monkeypatch):
    import trace_importer

    source = tmp_path / "b.parquet"
    compressible_parquet(source, 200_000)
    bitbrains_frame(50).to_csv(tmp_path / "a.csv", sep=";", index=False)  # sorted first: must not be read either
    out = tmp_path / "out" / "server_metrics.parquet"
    read = []

    def decoder(name):  # noqa: ANN001, ANN202
        def decode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            read.append(name)
            raise AssertionError(f"{name} was called: the refusal came after decoding")
        return decode

    for module, name in ((pq, "read_table"), (pd, "read_parquet"), (pd, "read_csv")):
        monkeypatch.setattr(module, name, decoder(name))
    with pytest.raises(InputLimitError, match=r"b\.parquet holds 200,000 rows, more than the 100,000 rows"):
        import_traces([tmp_path / "a.csv", source], MAPPING, out, max_rows=100_000)
    with pytest.raises(InputLimitError, match=r"b\.parquet's mapped columns hold [\d,]+ bytes uncompressed.*"
                                              r"--max-bytes"):
        import_traces([tmp_path / "a.csv", source], MAPPING, out, max_bytes=1_000)
    assert read == []
    monkeypatch.undo()
    # Within the limits the same file imports (it was the limit that refused it): one server, one bucket.
    meta = trace_importer.import_traces([source], MAPPING, out, max_rows=300_000)
    assert meta["rows"] == 1 and meta["servers"] == {"ppgen001": "generic"}


def test_csv_sources_stop_at_the_row_and_byte_limits(traces, tmp_path):
    import gzip
    import tracemalloc

    out = tmp_path / "out" / "server_metrics.parquet"
    sources = sorted(str(p) for p in traces.glob("*.csv"))  # 19.csv (600 rows), then 7.csv (580)
    few = run_cli("main.py", "import", "--mapping", str(MAPPING), "--out", str(out), "--max-rows", "700", *sources)
    assert few.returncode == 2
    assert "7.csv holds more than 100 rows (after 600 rows of earlier files)" in few.stderr, few.stderr[-2000:]
    assert "--max-rows" in few.stderr and not out.exists()
    # A gzip'd CSV of 300,000 rows (~9 MB of text, ~100 KB on disk) read with a 1 MB budget: refused at the
    # budget, without parsing the rest (the parsed columns alone would be ~15 MB).
    bomb = tmp_path / "1.csv.gz"
    with gzip.open(bomb, "wt") as handle:
        handle.write(";".join(["Timestamp [ms]", *BITBRAINS_COLUMNS]) + "\n")
        handle.writelines("1780000000;1.0;1.0;4.0;0.0;0.0\n" for _ in range(300_000))
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(InputLimitError, match=r"1\.csv\.gz holds more than 1,000,000 bytes of text.*--max-bytes"):
            import_traces([bomb], MAPPING, out, max_bytes=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2, f"peak {peak} bytes: the CSV was read past its budget"
    assert import_traces([bomb], MAPPING, out)["rows"] == 1  # within the default budget it imports


def test_a_1970_row_among_current_rows_is_refused_before_any_grid(tmp_path):
    import tracemalloc

    frame = bitbrains_frame(300)
    frame.loc[5, "Timestamp [ms]"] = 0  # epoch 0: a collector that wrote no time
    source = tmp_path / "vm.parquet"
    frame.to_parquet(source)
    out = tmp_path / "out" / "server_metrics.parquet"
    refused = run_cli("main.py", "import", "--mapping", str(MAPPING), "--out", str(out), str(source))
    assert refused.returncode == 2
    message = refused.stderr
    assert "vm.parquet: 1 of 300 rows have a timestamp that is missing or outside 2000-01-01" in message, message
    assert "row 5: 0" in message and "56 years" in message and "unit" in message and "Docs/IMPORTING.md" in message
    # In process: refused with a few MB at most; the 56-year grid alone would be 5.9 M timestamps (47 MB).
    tracemalloc.start()
    try:
        with pytest.raises(TraceImportError, match="1 of 300 rows"):
            import_traces([source], MAPPING, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"peak {peak} bytes"
    assert not out.exists()


def test_each_servers_span_and_all_grids_are_bounded_before_they_are_allocated(tmp_path):
    import tracemalloc

    frame = bitbrains_frame(300)
    frame.loc[0, "Timestamp [ms]"] = 1_560_000_000  # June 2019: plausible alone, 7 years before the rest
    source = tmp_path / "vm.parquet"
    frame.to_parquet(source)
    out = tmp_path / "out" / "server_metrics.parquet"
    tracemalloc.start()
    try:
        with pytest.raises(TraceImportError, match=r"1 server\(s\) span more than 1098 days.*ppgen001 \(from "
                                                   r"vm\.parquet\): 2019-06-08.*--max-span-days"):
            import_traces([source], MAPPING, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"peak {peak} bytes: a grid was allocated"  # 7 years: 736,000 buckets
    # Allowed a longer span, the grids' total is still bounded (sparse samples make many rows).
    capped = run_cli("main.py", "import", "--mapping", str(MAPPING), "--out", str(out), "--max-span-days", "3000",
                     "--max-rows", "100000", str(source))
    assert capped.returncode == 2
    assert "5-minute grids would hold 73" in capped.stderr and "more than the 100,000" in capped.stderr, capped.stderr
    assert not out.exists()
