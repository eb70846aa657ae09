"""Shared fixtures: small generated fleets and a tiny trained model (seconds, not minutes)."""

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
# The fleet tiny models train on: every profile, four web servers so one can be held out.
TINY_FLEET = {"web_api": 4, "database": 2, "ml_compute": 2, "data_ingest": 1, "risk_analytics": 1,
              "generic": 1, "conductor_mgmt": 1}
TINY_HOURS = 96
# A model small enough to train in seconds on two cores; the flags are the CLI's.
TINY_TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64", "--encoder-length", "24", "--hidden-size", "8",
                   "--attention-heads", "2", "--hidden-continuous-size", "4", "--windows-per-epoch", "512",
                   "--val-windows", "256", "--val-hours", "12", "--holdout-hours", "24"]


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parquet file of a 12-server, 4-day fleet for training tests."""
    out = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(out_dir=out, hours=TINY_HOURS, fleet=TINY_FLEET, seed=11, progress=False)
    return out / TRAINING_DATA_FILE


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path):  # noqa: ANN201 - TrainResult
    """A tiny model trained in-process once per session (the in-memory result)."""
    from tft_trainer import build_arg_parser, settings_from_args, train

    models = tmp_path_factory.mktemp("models")
    args = build_arg_parser().parse_args(["--data", str(tiny_data), "--models-dir", str(models), *TINY_TRAIN_ARGS])
    return train(settings_from_args(args))
