"""Shared fixtures: small generated fleets and a tiny trained model (seconds, not minutes).

Helpers and constants are in tests/helpers.py; only fixtures live here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from config import TRAINING_DATA_FILE
from metrics_generator import generate_dataset
from tests.helpers import SMALL_FLEET, TINY_FLEET, TINY_HOURS, TINY_TRAIN_ARGS


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
