"""Trainer: gate on the contract, time split, artefacts, pickle-free loading, resume, DDP."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from config import (
    CONTRACT_VERSION,
    MODEL_CONFIG_FILE,
    MODEL_REQUIRED_FILES,
    SERVER_MAPPING_FILE,
    TRAINER,
    TRAINING_INFO_FILE,
)
from tests.helpers import TINY_TRAIN_ARGS, run_cli
from tft_evaluate import predict_windows
from tft_model import ModelLoadError, load_model
from tft_trainer import split_windows, write_model_dir


def test_training_writes_a_complete_model_dir(tiny_training):
    model_dir = tiny_training.model_dir
    assert model_dir.name.startswith("tft_model_") and len(model_dir.name) == len("tft_model_YYYYMMDD_HHMMSS")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(MODEL_REQUIRED_FILES)
    latest = model_dir.parent / "latest"
    assert latest.is_symlink() and latest.resolve() == model_dir.resolve()
    assert not list(model_dir.parent.glob(".staging_*"))
    assert not (model_dir.parent / TRAINER.checkpoints_subdir / "x").exists()

    info = json.loads((model_dir / TRAINING_INFO_FILE).read_text())
    assert info["contract_version"] == CONTRACT_VERSION
    assert {"torch", "lightning", "pytorch_forecasting"} <= set(info["packages"])
    assert len(info["data"]["fingerprint_sha256_16"]) == 16
    assert info["epochs_run"] == len(info["history"]) == 2
    for epoch in info["history"]:
        assert {"train_loss", "val_loss", "lr", "seconds"} <= set(epoch)
        assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["val_loss"])
    assert info["best_val_loss"] == min(e["val_loss"] for e in info["history"])
    assert info["device"]["accelerator"] == "cpu" and info["timings"]["fit_seconds"] > 0
    backtest = info["backtest"]
    assert set(backtest["per_horizon"]) == {"30min", "1hr", "8hr"}
    assert backtest["unseen_servers"]["servers"] == info["data"]["unseen_servers"] != []
    profiles = dict(zip(tiny_training.data.store.server_names, tiny_training.data.store.profiles, strict=True))
    for history in ("full_history", "cold_start"):
        per_server = backtest["unseen_servers"][history]["per_server"]
        assert sorted(per_server) == backtest["unseen_servers"]["servers"]
        for name, row in per_server.items():
            assert row["profile"] == profiles[name]
            assert set(row["improvement_from_profile"]) == {"30min", "1hr", "8hr"}
            assert all(np.isfinite(v) for v in row["improvement_from_profile"].values())

    config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    assert config["hparams"]["max_encoder_length"] == 24
    assert config["feature_spec"]["targets"][0] == "cpu_idle_pct"
    assert "profile" in config["hparams"]["static_categoricals"]


def test_time_split_has_no_leakage(tiny_training):
    data = tiny_training.data
    windows = split_windows(data)
    enc, dec = data.spec.encoder_length, data.spec.prediction_length
    store = data.store
    for name, (servers, starts) in windows.items():
        first_decoder = store.time_idx[store.offsets[servers] + starts + enc]
        last_decoder = first_decoder + dec - 1
        if name == "train":
            assert last_decoder.max() <= data.train_end_tidx
        else:
            assert first_decoder.min() > data.train_end_tidx and last_decoder.max() <= data.val_end_tidx
        names = set(np.array(store.server_names)[servers])
        assert not names & set(data.unseen_servers), "held-out servers must not be trained or validated on"
    unseen_codes = data.spec.encode("server_id", [store.server_ids[store.server_names.index(n)]
                                                  for n in data.unseen_servers])
    assert (unseen_codes == 0).all(), "held-out servers must be unknown to the model"


def test_loaded_model_forecasts_exactly_like_the_trained_one(tiny_training, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("the inference path must never unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = load_model(tiny_training.model_dir)
    store = tiny_training.data.store
    servers, starts = store.window_starts(stride=7)
    in_memory = predict_windows(tiny_training.model, store, servers, starts)
    from_disk = predict_windows(loaded.model, store, servers, starts)
    np.testing.assert_array_equal(in_memory, from_disk)
    assert loaded.encoder.name_to_id == tiny_training.data.encoder.name_to_id


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / model_dir.name
    shutil.copytree(model_dir, target)
    return target


def test_load_errors_say_what_why_and_how(tiny_training, tmp_path):
    broken = _copy(tiny_training.model_dir, tmp_path)
    (broken / SERVER_MAPPING_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"server_mapping.json not found.*Fix: retrain"):
        load_model(broken)

    other_contract = _copy(tiny_training.model_dir, tmp_path / "contract")
    config = json.loads((other_contract / MODEL_CONFIG_FILE).read_text())
    config["contract_version"] = "2.0.0"
    (other_contract / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"contract 2.0.0.*Fix: retrain.*DATA_CONTRACT"):
        load_model(other_contract)

    misfit = _copy(tiny_training.model_dir, tmp_path / "misfit")
    config = json.loads((misfit / MODEL_CONFIG_FILE).read_text())
    config["hparams"]["hidden_size"] = 12
    (misfit / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"do not fit the architecture.*Fix:"):
        load_model(misfit)

    incomplete = _copy(tiny_training.model_dir, tmp_path / "incomplete")
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"incomplete: missing \['model.safetensors'\]"):
        load_model(incomplete)


def test_a_failed_write_leaves_no_half_directory(tiny_training, tmp_path, monkeypatch):
    from server_encoder import ServerEncoder

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ServerEncoder, "save", fail)
    target = tmp_path / "tft_model_20260101_000000"
    with pytest.raises(OSError, match="disk full"):
        write_model_dir(target, tiny_training.model, tiny_training.data.spec, tiny_training.data.encoder, {})
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_invalid_data(tiny_data, tmp_path):
    bad = pd.read_parquet(tiny_data)
    bad.loc[5, "cpu_iowait_pct"] = 250.0
    bad_path = tmp_path / "bad.parquet"
    bad.to_parquet(bad_path)
    result = run_cli("main.py", "train", "--data", str(bad_path), "--models-dir", str(tmp_path / "models"),
                     *TINY_TRAIN_ARGS)
    assert result.returncode == 2
    assert "out_of_range" in result.stderr and "cpu_iowait_pct" in result.stderr and "Training stopped" in result.stderr
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("tft_model_*"))


def test_cli_trains_reports_progress_then_resumes_from_a_checkpoint(tiny_data, tmp_path):
    models = tmp_path / "models"
    first = run_cli("tft_trainer.py", "--data", str(tiny_data), "--models-dir", str(models), *TINY_TRAIN_ARGS,
                    "--checkpoint-every", "1", "--keep-checkpoints", "--no-backtest")
    assert first.returncode == 0, first.stderr[-3000:]
    for needle in ("epoch 1/2", "epoch 2/2", "train_loss", "val_loss", " lr ", "ETA"):
        assert needle in first.stderr, needle
    runs = list((models / TRAINER.checkpoints_subdir).iterdir())
    assert len(runs) == 1
    checkpoint = runs[0] / "epoch_0001"
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "optimizer.safetensors",
                                                      "trainer_state.json", "config.json"}

    resumed = run_cli("main.py", "train", "--data", str(tiny_data), "--models-dir", str(models), *TINY_TRAIN_ARGS,
                      "--epochs", "3", "--resume", str(checkpoint), "--no-backtest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed optimiser and schedule" in resumed.stderr
    assert "epoch 2/3" in resumed.stderr and "epoch 3/3" in resumed.stderr and "epoch 1/3" not in resumed.stderr
    info = json.loads((models / "latest" / TRAINING_INFO_FILE).read_text())
    assert [e["epoch"] for e in info["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_data, tmp_path):
    models = tmp_path / "models"
    result = run_cli("main.py", "train", "--data", str(tiny_data), "--models-dir", str(models), *TINY_TRAIN_ARGS,
                     "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-backtest", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((models / "latest" / TRAINING_INFO_FILE).read_text())
    assert info["device"]["devices"] == 2 and info["device"]["strategy"] == "ddp"
    assert len(list(models.glob("tft_model_*"))) == 1  # only rank 0 writes
    assert np.isfinite(info["best_val_loss"])


def test_data_over_the_memory_budget_trains_on_a_subset(tiny_data, caplog):
    from config import TRAINER  # what prepare_data budgets with
    from tft_features import servers_within_budget
    from tft_trainer import prepare_data

    everyone, rows = servers_within_budget(tiny_data, 1e12, TRAINER.training_bytes_per_row)
    assert everyone is None and rows == 12 * 96 * 12
    half, _ = servers_within_budget(tiny_data, rows * TRAINER.training_bytes_per_row / 2,
                                    TRAINER.training_bytes_per_row)
    assert 0 < len(half) < 12
    assert half == servers_within_budget(tiny_data, rows * TRAINER.training_bytes_per_row / 2,
                                         TRAINER.training_bytes_per_row)[0]  # deterministic
    with caplog.at_level("WARNING"):
        data = prepare_data(tiny_data, 24, 12, 24, 0, memory_budget_gb=rows * TRAINER.training_bytes_per_row / 2 / 1e9)
    assert set(data.store.server_names) == half and "training on" in caplog.text
    with pytest.raises(ValueError, match="raise --max-memory-gb"):
        servers_within_budget(tiny_data, 100, TRAINER.training_bytes_per_row)


def test_compile_is_used_for_long_cpu_runs_only():
    from config import TRAINER
    from tft_trainer import TrainingError, TrainSettings, _compile_decision

    auto = TrainSettings(data=Path("x.parquet"))
    assert _compile_decision(auto, "cpu", TRAINER.torch_compile_min_steps)
    assert not _compile_decision(auto, "cpu", TRAINER.torch_compile_min_steps - 1)  # the demo, the tests
    assert not _compile_decision(auto, "gpu", 10 * TRAINER.torch_compile_min_steps)
    assert _compile_decision(TrainSettings(data=Path("x.parquet"), compile="on"), "cpu", 1)
    assert not _compile_decision(TrainSettings(data=Path("x.parquet"), compile="off"), "cpu", 10**6)
    with pytest.raises(TrainingError, match="--compile"):
        _compile_decision(TrainSettings(data=Path("x.parquet"), compile="yes"), "cpu", 1)


def test_profile_value_bench_scores_only_never_seen_servers(tiny_training, tiny_data, tmp_path):
    from profile_study import format_profile_value, measure_profile_value, train_agnostic_model

    model = load_model(tiny_training.model_dir)
    agnostic = load_model(train_agnostic_model(tiny_data, tmp_path / "agnostic", TINY_TRAIN_ARGS))
    result = measure_profile_value(model, agnostic, per_profile=1, days=1, seed=5)
    assert result["servers"] == 7 and result["windows"] > 0  # one new server per profile, none the model knows
    for history in ("full_history", "cold_start"):
        block = result[history]
        assert set(block["overall"]) == {"with_profile", "profile_hidden", "agnostic_model"}
        assert len(block["per_profile"]) == 7
        for label in ("30min", "1hr", "8hr"):
            with_profile = block["overall"]["with_profile"][label]["tft"]
            hidden = block["overall"]["profile_hidden"][label]["tft"]
            assert 0 < with_profile < 10 and 0 < hidden < 10
            assert with_profile != hidden  # the profile reaches the forecast
            low, high = block["gain_interval_95"]["profile_hidden"][label]
            assert np.isfinite(low) and low <= high
    assert "gain vs hidden" in format_profile_value(result) and "gain vs agnostic" in format_profile_value(result)
    # The agnostic model never learned a profile: what it was trained and validated on had none.
    assert agnostic.training_info["settings"]["profile_dropout"] == 1.0
    assert agnostic.training_info["settings"]["hide_profiles"] is True  # validation and backtest hid it too
