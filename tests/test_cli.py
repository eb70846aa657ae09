"""The command line as a user runs it: subprocesses, exit codes, output."""

from __future__ import annotations

import json

from config import METADATA_FILE, SERVER_MAPPING_FILE, TRAINING_DATA_FILE
from tests.helpers import run_cli


def test_help_lists_the_commands():
    result = run_cli("main.py", "--help")
    assert result.returncode == 0
    for command in ("generate", "validate"):
        assert command in result.stdout
    version = run_cli("main.py", "--version")
    assert version.returncode == 0 and version.stdout.strip().startswith("main.py ")


def test_unknown_command_fails():
    result = run_cli("main.py", "frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_generate_then_validate(tmp_path):
    out = tmp_path / "training"
    gen = run_cli("main.py", "generate", "--servers", "9", "--hours", "24", "--seed", "3", "--out_dir", str(out))
    assert gen.returncode == 0, gen.stderr
    assert "Generated 2,592 rows for 9 servers" in gen.stdout
    assert "generating 9 servers" in gen.stderr  # progress bar
    for name in (TRAINING_DATA_FILE, METADATA_FILE, SERVER_MAPPING_FILE):
        assert (out / name).exists(), name
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["seed"] == 3 and meta["rows"] == 2592

    val = run_cli("main.py", "validate", str(out / TRAINING_DATA_FILE))
    assert val.returncode == 0 and val.stdout.startswith("VALID"), val.stdout


def test_generator_module_entry_point_and_bad_flags(tmp_path):
    ok = run_cli("metrics_generator.py", "--fleet", "database=2,web_api=1", "--hours", "24",
                 "--offline_mode", "sparse", "--out_dir", str(tmp_path), "--no-progress")
    assert ok.returncode == 0, ok.stderr
    too_short = run_cli("metrics_generator.py", "--hours", "12", "--out_dir", str(tmp_path))
    assert too_short.returncode == 2
    assert "below the minimum of 24" in too_short.stderr and "Fix:" in too_short.stderr
    bad_fleet = run_cli("main.py", "generate", "--fleet", "mainframe=2", "--out_dir", str(tmp_path))
    assert bad_fleet.returncode == 2 and "Bad fleet entry" in bad_fleet.stderr


def test_every_subcommand_has_help_and_refuses_a_bad_argument():
    """Each subcommand's --help answers 0 with its own usage; a bad argument is exit 2 with a usage error."""
    from concurrent.futures import ThreadPoolExecutor

    from main import SUBCOMMANDS

    def check(command: str) -> tuple[str, object, object]:
        return command, run_cli("main.py", command, "--help"), run_cli("main.py", command, "--no-such-flag")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, SUBCOMMANDS))
    for command, helped, refused in results:
        assert helped.returncode == 0, (command, helped.stderr[-500:])
        assert f"usage: main.py {command}" in helped.stdout and "--help" in helped.stdout, command
        # argparse names the first problem: the unknown flag, or a required argument that is missing.
        assert refused.returncode == 2 and f"main.py {command}: error:" in refused.stderr, command
        assert "--no-such-flag" in refused.stderr or "required" in refused.stderr, (command, refused.stderr)
