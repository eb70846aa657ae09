"""Contract validator: one test per class of bad input, plus the CLI's exit codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from config import DATA_CONTRACT_DOC, TRAINING_DATA_FILE
from data_validator import DataValidator
from tests.conftest import run_cli


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
