"""One error type (errors.ToolkitError) and one exit-code convention for every command."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from errors import (
    EXIT_NEGATIVE,
    EXIT_RUNTIME,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    MissingFileError,
    ToolkitError,
    UsageError,
    exit_code_of,
    run_cli,
)
from tests.helpers import ROOT, free_port

# Control flow that never reaches a person or an exit code (each says so in its docstring).
PLAIN_ON_PURPOSE = {"SubscriberLimit", "_BodyTooLarge"}
_EXCEPTION_CLASS = re.compile(r"^class (\w+)\(([^)]*)\):", re.MULTILINE)


def test_the_four_parts_render_in_the_projects_style():
    error = ToolkitError("the store x does not exist", "the export reads it", "pass --store", "Docs/X.md (Store)")
    assert str(error) == ("the store x does not exist. Why it matters: the export reads it. Fix: pass --store. "
                          "See Docs/X.md (Store).")
    assert (error.what, error.why, error.fix, error.doc) == ("the store x does not exist", "the export reads it",
                                                            "pass --store", "Docs/X.md (Store)")
    assert str(ToolkitError("free text, as it was")) == "free text, as it was"
    assert str(ToolkitError("what", fix="do this")) == "what. Fix: do this."
    assert ToolkitError("x").exit_code == EXIT_USAGE and ToolkitError("x", exit_code=EXIT_RUNTIME).exit_code == 3
    # Builtin second bases keep their callers' except clauses working, and a KeyError's str is not quoted.
    assert isinstance(UsageError("x"), ValueError) and isinstance(MissingFileError("x"), FileNotFoundError)
    from server_encoder import ServerEncoder, UnknownServerIdError

    with pytest.raises(KeyError) as raised:
        ServerEncoder().decode("ffff")
    assert isinstance(raised.value, UnknownServerIdError) and str(raised.value).startswith("Unknown server id 'ffff'.")
    assert "Why it matters:" in str(raised.value) and "Fix:" in str(raised.value) and "See Docs/" in str(raised.value)


def test_every_project_exception_class_is_a_toolkit_error():
    found = []
    for path in sorted(ROOT.glob("*.py")):
        candidates = [name for name, bases in _EXCEPTION_CLASS.findall(path.read_text(encoding="utf-8"))
                      if re.search(r"Error|Exception|Locked|Limit|Failure", bases)]
        if not candidates:
            continue
        module = importlib.import_module(path.stem)
        for name in candidates:
            cls = getattr(module, name)
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == path.stem:
                found.append(name)
                assert issubclass(cls, ToolkitError) or name in PLAIN_ON_PURPOSE, f"{path.name}: {name}"
    assert {"KeyFileError", "DaemonError", "StoreError", "RetrainLocked", "ModelLoadError", "TrainingError"} <= set(
        found)


def test_run_cli_turns_errors_into_exit_codes_and_keeps_tracebacks_for_bugs(caplog):
    def raising(exc):
        def run(_args):
            raise exc
        return run

    assert run_cli(lambda _args: 0, None) == 0
    assert run_cli(raising(ToolkitError("x", exit_code=EXIT_RUNTIME)), None, "thing failed") == EXIT_RUNTIME
    assert "thing failed: x" in caplog.text and not any(r.exc_info for r in caplog.records if r.levelname == "ERROR")
    assert exit_code_of(FileNotFoundError("gone")) == EXIT_USAGE and exit_code_of(OSError(28, "full")) == EXIT_RUNTIME
    assert exit_code_of(ValueError("bad value")) == EXIT_USAGE and exit_code_of(MemoryError()) == EXIT_RUNTIME
    caplog.clear()
    assert run_cli(raising(TypeError("a bug")), None) == EXIT_SOFTWARE
    assert any(record.exc_info for record in caplog.records)  # a bug keeps its traceback


def _invalid_file(tmp: Path) -> Path:
    import pandas as pd

    path = tmp / "invalid.csv"
    pd.DataFrame({"timestamp": ["2026-01-01T00:00:00Z"], "server_name": ["ppweb001"]}).to_csv(path, index=False)
    return path


# (command line with {tmp} and {invalid}, expected exit code, a phrase of the message)
CASES = {
    "validate an invalid file": (["validate", "{invalid}"], EXIT_NEGATIVE, "missing_column"),
    "validate a missing file": (["validate", "{tmp}/none.parquet"], EXIT_USAGE, "none.parquet"),
    "a bad flag": (["validate", "--no-such-flag", "{invalid}"], EXIT_USAGE, "unrecognized arguments"),
    "generate too short": (["generate", "--hours", "1", "--out-dir", "{tmp}/g"], EXIT_USAGE, "Why it matters"),
    "export a missing store": (["export", "--store", "{tmp}/none.sqlite3", "--out", "{tmp}/x.parquet"], EXIT_USAGE,
                               "does not exist"),
    "import a missing mapping": (["import", "--mapping", "{tmp}/none.json", "--out", "{tmp}/x.parquet", "{invalid}"],
                                 EXIT_USAGE, "import failed"),
    "rollback with no model": (["rollback", "--models-dir", "{tmp}/empty"], EXIT_USAGE, "nothing to roll back"),
    "retrain without input": (["retrain", "--models-dir", "{tmp}/empty"], EXIT_USAGE, "exactly one of --store"),
    "train on a missing file": (["train", "--data", "{tmp}/none.parquet", "--models-dir", "{tmp}/m"], EXIT_USAGE,
                                "none.parquet"),
    "infer without a model": (["infer", "--daemon", "--model-dir", "{tmp}/empty", "--store", "{tmp}/s.sqlite3",
                               "--port", "{port}"], EXIT_USAGE, "Refusing to start"),
    "infer neither way": (["infer"], EXIT_USAGE, "Give --daemon"),
    "collect a missing volume": (["collect", "--data-path", "/no/such/volume", "--samples", "1"], EXIT_USAGE,
                                 "does not exist"),
    "prometheus unreachable": (["prometheus", "--url", "http://127.0.0.1:{port}", "--out", "{tmp}/x.parquet",
                                "--hours", "1"], EXIT_RUNTIME, "unreachable"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_exit_code_convention_through_the_cli(case, tmp_path):
    argv, expected, phrase = CASES[case]
    (tmp_path / "empty").mkdir()
    values = {"tmp": str(tmp_path), "invalid": str(_invalid_file(tmp_path)), "port": str(free_port())}
    result = subprocess.run([sys.executable, "main.py", *(a.format(**values) for a in argv)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == expected, (case, result.returncode, output[-2000:])
    assert phrase in output and "Traceback" not in output, (case, output[-2000:])
