"""Shared fixtures: small generated fleets (seconds, not minutes) and helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from config import PROJECT_ROOT, TRAINING_DATA_FILE
from metrics_generator import generate_dataset

ROOT = PROJECT_ROOT

# A fleet with every profile: big enough for statistics, small enough for CI.
SMALL_FLEET = {"web_api": 6, "ml_compute": 5, "database": 5, "data_ingest": 4, "risk_analytics": 3,
               "generic": 3, "conductor_mgmt": 2}


def run_cli(*args: str, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` from the repo root and capture output."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="session")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 28-server, 14-day dense fleet written by the generator."""
    out = tmp_path_factory.mktemp("fleet")
    generate_dataset(out_dir=out, hours=14 * 24, fleet=SMALL_FLEET, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def fleet_df(fleet_dir: Path) -> pd.DataFrame:
    """The session fleet as a DataFrame sorted by server and time."""
    df = pd.read_parquet(fleet_dir / TRAINING_DATA_FILE)
    return df.sort_values(["server_name", "timestamp"]).reset_index(drop=True)
