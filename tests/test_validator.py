"""Contract validator: one test per class of bad input, plus the CLI's exit codes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config import DATA_CONTRACT_DOC, TRAINING_DATA_FILE
from data_validator import DataValidator, InputLimitError, ReadLimits
from tests.helpers import run_cli


@pytest.fixture()
def good(fleet_df: pd.DataFrame) -> pd.DataFrame:
    """Three servers, one day: a clean frame to break in each test."""
    names = fleet_df["server_name"].astype(str)
    keep = names.isin(["ppdb001", "ppweb001", "ppml0001"])
    df = fleet_df[keep].copy()
    df = df[df["timestamp"] < df["timestamp"].min() + pd.Timedelta(days=1)]
    for column in ("server_name", "profile", "state"):
        df[column] = df[column].astype(str)
    return df.reset_index(drop=True)


def _errors(df: pd.DataFrame, strict: bool = True) -> list[str]:
    is_valid, errors, _ = DataValidator(strict=strict).validate_schema(df)
    assert is_valid == (not errors)
    return [str(e) for e in errors]


def _assert_one_error(df: pd.DataFrame, check: str, column: str) -> str:
    errors = _errors(df)
    hits = [e for e in errors if e.startswith(f"[{check}]")]
    assert hits, f"expected a {check} error, got {errors}"
    message = hits[0]
    # Codex rule: what went wrong (column), why it matters, how to fix it, which doc.
    assert f"'{column}'" in message
    assert "Why it matters:" in message and "Fix:" in message and "See Docs/" in message
    return message


def test_clean_frame_is_valid(good):
    assert _errors(good) == []


def test_missing_column(good):
    _assert_one_error(good.drop(columns=["cpu_iowait_pct"]), "missing_column", "cpu_iowait_pct")


def test_deprecated_column(good):
    message = _assert_one_error(good.assign(cpu_pct=1.0), "deprecated_column", "cpu_pct")
    assert "regenerate" in message


def test_text_in_a_metric_column(good):
    _assert_one_error(good.assign(mem_used_pct="high"), "wrong_dtype", "mem_used_pct")


def test_fractional_connection_counts(good):
    bad = good.assign(back_close_wait=good["back_close_wait"].astype(float) + 0.5)
    _assert_one_error(bad, "not_integer", "back_close_wait")


def test_whole_floats_in_integer_column_error_strict_warn_lenient(good):
    bad = good.assign(uptime_days=good["uptime_days"].astype(float))
    _assert_one_error(bad, "wrong_dtype", "uptime_days")
    is_valid, _, warnings = DataValidator(strict=False).validate_schema(bad)
    assert is_valid and any("uptime_days" in str(w) for w in warnings)


@pytest.mark.parametrize("column,value", [("cpu_iowait_pct", 130.0), ("mem_used_pct", -1.0),
                                          ("net_in_mb_s", -5.0), ("uptime_days", 45)])
def test_out_of_range(good, column, value):
    bad = good.copy()
    bad.loc[3, column] = value
    message = _assert_one_error(bad, "out_of_range", column)
    assert "(1 rows)" in message and "row 3" in message


def test_unknown_state(good):
    bad = good.copy()
    bad.loc[0, "state"] = "on_fire"
    message = _assert_one_error(bad, "unknown_state", "state")
    assert "on_fire" in message and "critical_issue" in message


def test_unknown_profile(good):
    bad = good.copy()
    bad.loc[bad["server_name"] == "ppdb001", "profile"] = "mainframe"
    message = _assert_one_error(bad, "unknown_profile", "profile")
    assert "SERVER_PROFILES.md" in message


def test_name_does_not_match_profile(good):
    bad = good.copy()
    bad.loc[bad["server_name"] == "ppdb001", "server_name"] = "ppweb901"  # a web name labelled database
    message = _assert_one_error(bad, "name_profile_mismatch", "server_name")
    assert "ppdb###" in message and "ppweb901 labelled database" in message


def test_real_host_names_with_a_profile_are_valid(good):
    """Contract 1.2: a host's own name is fine when its profile is given."""
    renamed = good.copy()
    renamed["server_name"] = renamed["server_name"].astype(str)
    renamed.loc[renamed["server_name"] == "ppdb001", "server_name"] = "db-eu-3.dc2"
    is_valid, errors, _ = DataValidator(strict=True).validate_schema(renamed)
    assert is_valid, errors


def test_names_that_are_not_host_names(good):
    bad = good.copy()
    bad["server_name"] = bad["server_name"].astype(str)
    bad.loc[bad["server_name"] == "ppdb001", "server_name"] = "DB Server/1"
    message = _assert_one_error(bad, "bad_server_name", "server_name")
    assert "DB Server/1" in message and "DATA_CONTRACT.md" in message


def test_server_with_two_profiles(good):
    bad = good.copy()
    bad.loc[bad.index[:5], "profile"] = "generic"  # ppdb001's first rows
    assert any(e.startswith("[profile_changes]") for e in _errors(bad))


def test_unparsable_timestamps(good):
    bad = good.copy()
    bad["timestamp"] = bad["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _errors(bad) == []  # ISO strings (CSV) are fine
    bad.loc[2, "timestamp"] = "yesterday at noon"
    _assert_one_error(bad, "unparsable_timestamp", "timestamp")


def test_non_monotonic_timestamps(good):
    bad = good.copy()
    times = bad["timestamp"].to_numpy().copy()
    times[[5, 6]] = times[[6, 5]]
    bad["timestamp"] = times
    _assert_one_error(bad, "non_monotonic_timestamps", "timestamp")


def test_duplicate_rows(good):
    bad = pd.concat([good, good.iloc[[10]]]).sort_values(["server_name", "timestamp"], kind="stable")
    _assert_one_error(bad.reset_index(drop=True), "duplicate_rows", "timestamp")


def test_gaps_and_off_grid_times(good):
    gappy = good.drop(index=range(20, 30))
    is_valid, _, warnings = DataValidator().validate_schema(gappy)
    assert is_valid and any(w.check == "gaps" for w in warnings)
    shifted = good.assign(timestamp=good["timestamp"] + pd.Timedelta(seconds=90))
    _assert_one_error(shifted, "off_grid", "timestamp")
    assert DataValidator(strict=False).validate_schema(shifted)[0]


def test_missing_values(good):
    bad = good.copy()
    bad.loc[7, "swap_used_pct"] = np.nan
    message = _assert_one_error(bad, "missing_values", "swap_used_pct")
    assert "offline" in message


def test_cpu_parts_must_add_to_100(good):
    bad = good.copy()
    bad["cpu_idle_pct"] = bad["cpu_idle_pct"] - 10.0
    bad["cpu_idle_pct"] = bad["cpu_idle_pct"].clip(lower=0)
    _assert_one_error(bad, "cpu_sum", "cpu_idle_pct")


def test_empty_frame(good):
    assert _errors(good.iloc[:0])[0].startswith("[empty]")


# ---------------------------------------------------------------------------- CLI
def test_cli_exit_codes(fleet_dir, good, tmp_path):
    ok = run_cli("data_validator.py", str(fleet_dir / TRAINING_DATA_FILE))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("VALID")

    bad_path = tmp_path / "bad.parquet"
    good.assign(cpu_iowait_pct=150.0).to_parquet(bad_path)
    bad = run_cli("main.py", "validate", str(bad_path))
    assert bad.returncode == 1
    assert "INVALID" in bad.stdout and "cpu_iowait_pct" in bad.stdout and DATA_CONTRACT_DOC in bad.stdout

    as_json = run_cli("data_validator.py", str(bad_path), "--json")
    assert as_json.returncode == 1 and '"check": "out_of_range"' in as_json.stdout

    missing = run_cli("main.py", "validate", str(tmp_path / "nope.parquet"))
    assert missing.returncode == 2 and "not found" in missing.stderr


# ---------------------------------------------------------------------------- read limits (Validating)
def _compressible_parquet(path, rows: int) -> None:  # noqa: ANN001
    """``rows`` identical rows of three contract columns: a few KB on disk, ~20 bytes a row decoded."""
    pq.write_table(pa.table({"timestamp": pa.array(np.full(rows, 1_780_000_000 * 10**9), pa.timestamp("ns", "UTC")),
                             "server_name": pa.array(["ppdb001"] * rows).dictionary_encode(),
                             "cpu_user_pct": pa.array(np.zeros(rows))}), path, compression="zstd")


def test_cli_refuses_a_parquet_over_the_row_limit_from_its_footer(tmp_path, monkeypatch):
    path = tmp_path / "bomb.parquet"
    _compressible_parquet(path, 2_000_000)
    assert path.stat().st_size < 200_000
    refused = run_cli("main.py", "validate", "--max-rows", "100000", str(path))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert ("bomb.parquet holds 2,000,000 rows, more than the 100,000 rows main.py validate reads at most"
            in refused.stderr), refused.stderr
    assert "Why it matters:" in refused.stderr and "--max-rows" in refused.stderr
    assert f"See {DATA_CONTRACT_DOC} (Validating)" in refused.stderr
    # In process, the decoders are never reached (the footer alone refused it).
    def decode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("decoded before the limit was checked")

    monkeypatch.setattr(pq, "read_table", decode)
    monkeypatch.setattr(pd, "read_parquet", decode)
    with pytest.raises(InputLimitError, match="holds 2,000,000 rows"):
        DataValidator().validate_file(path, ReadLimits(max_rows=100_000, max_bytes=10**9))
    with pytest.raises(InputLimitError, match=r"hold [\d,]+ bytes uncompressed.*--max-bytes"):
        DataValidator().validate_file(path, ReadLimits(max_rows=10**9, max_bytes=1_000))
    monkeypatch.undo()
    # Within the limit it is read and judged (three columns: invalid, not refused).
    judged = run_cli("main.py", "validate", str(path))
    assert judged.returncode == 1 and "missing_column" in judged.stdout, judged.stdout[-2000:]


def test_cli_reads_a_csv_only_up_to_the_limits(good, tmp_path):
    path = tmp_path / "extract.csv"
    good.to_csv(path, index=False)
    assert run_cli("main.py", "validate", str(path)).returncode == 0
    rows = run_cli("main.py", "validate", "--max-rows", "100", str(path))
    assert rows.returncode == 2 and "extract.csv holds more than 100 rows" in rows.stderr, rows.stderr
    text = run_cli("main.py", "validate", "--max-bytes", "10000", str(path))
    assert text.returncode == 2 and "extract.csv holds more than 10,000 bytes of text" in text.stderr, text.stderr


def test_a_1970_row_among_current_rows_needs_no_time_grid(good):
    """The validator never builds a grid (it sorts and differences the timestamps), so a row 56 years away is
    a gap warning, checked in a few MB; a grid would be 5.9 M buckets (47 MB) for that one server."""
    import tracemalloc

    bad = good.copy()
    first = bad.index[bad["server_name"] == "ppdb001"][0]
    bad.loc[first, "timestamp"] = pd.Timestamp("1970-01-01", tz=bad["timestamp"].dt.tz)
    tracemalloc.start()
    try:
        is_valid, _, warnings = DataValidator().validate_schema(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    gaps = [w for w in warnings if w.check == "gaps"]
    assert is_valid and gaps and int(re.search(r"longest (\d+) buckets", gaps[0].what).group(1)) > 5_800_000
    assert peak < 16 * 1024**2, f"peak {peak} bytes"
