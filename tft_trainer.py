"""Train the fleet's Temporal Fusion Transformer and save it without pickles.

    python tft_trainer.py --data training/server_metrics.parquet --epochs 20
    python main.py train --data training/server_metrics.parquet --epochs 5 --devices 2 --strategy ddp

What happens, in order:

1. the data is validated against the contract in strict mode (training stops on errors);
2. every server is put on the complete 5-minute grid (contract offline rule) and split by
   time: training, then the last ``--val-hours`` for validation, then the last
   ``--holdout-hours`` kept out entirely for the backtest. A few whole servers are held
   out too, to measure how the model does on servers it has never seen;
3. scalers and normalisers are fitted on training rows only; the model is built from a
   ``TimeSeriesDataSet`` with ``TemporalFusionTransformer.from_dataset``;
4. Lightning trains it (GPU + bf16 when present, CPU otherwise; DDP over devices/nodes
   with ``--devices/--num-nodes/--strategy``) on a bounded number of sampled windows per
   epoch, with gradient clipping, early stopping, and a safetensors checkpoint every
   ``TRAINER.checkpoint_every_n_epochs`` epochs that ``--resume`` continues from;
5. the best epoch's weights are backtested on the held-out range against persistence and
   seasonal-naive baselines, and the model directory is written atomically:
   ``models/tft_model_YYYYMMDD_HHMMSS/{model.safetensors, config.json, training_info.json,
   server_mapping.json}``, with ``models/latest`` pointing at it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl  # lightning.pytorch only, never pytorch_lightning (GUIDE section 5)
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from alert_fitting import fit_alert_thresholds
from baselines import statistical_option
from calibration_fit import fit_calibration
from cli_options import add_options, option, settings_from
from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import (
    ALERT_POLICY,
    BAND_CALIBRATION,
    CONTRACT_VERSION,
    ENCODER_LENGTH,
    GROUP_ID,
    HOLDOUT_HOURS,
    LATEST_MODEL_LINK,
    LEARNING_RATE,
    MAX_PREDICTION_LENGTH,
    MODEL_CONFIG_FILE,
    MODEL_DIR_PREFIX,
    MODEL_REQUIRED_FILES,
    MODEL_WEIGHTS_FILE,
    MODELS_DIR,
    PROJECT_VERSION,
    SERVER_MAPPING_FILE,
    STEPS_PER_HOUR,
    TARGET_METRICS,
    TIME_IDX,
    TRAINER,
    TRAINING_DATA_PATH,
    TRAINING_GUIDE_DOC,
    TRAINING_INFO_FILE,
    TRAINING_MEMORY_BUDGET_GB,
)
from contract import bucket_of_times, bucket_start
from data_validator import DataValidator, format_report
from errors import EXIT_RUNTIME, ToolkitError, run_cli
from model_registry import point_latest
from server_encoder import ServerEncoder
from tft_evaluate import backtest_store, format_table
from tft_features import FeatureSpec, SeriesStore, build_features, load_training_frame, servers_within_budget
from tft_model import FleetTFT, build_model, count_parameters, model_config, model_from_config, save_weights
from trace_importer import measured_metrics_for

logger = logging.getLogger(__name__)


class TrainingError(ToolkitError, RuntimeError):
    """Training cannot start or finish; the message says why and how to fix it."""


# ---------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """Everything the run needs from the data file."""

    frame: pd.DataFrame
    spec: FeatureSpec
    store: SeriesStore
    encoder: ServerEncoder
    dataset_for_model: Any
    train_end_tidx: int  # last bucket whose target may be used for training
    val_end_tidx: int  # last validation bucket
    data_end_tidx: int
    unseen_servers: list[str]
    fingerprint: str
    n_rows: int


def data_fingerprint(path: Path) -> str:
    """SHA256 of the data file (first 16 hex digits), to tie a model to its data."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def choose_unseen_servers(frame: pd.DataFrame, per_profile: int) -> list[str]:
    """Whole servers kept out of training: per profile with >= 4 servers, the smallest hash ids."""
    if per_profile <= 0:
        return []
    chosen = []
    pairs = frame[["server_name", "profile", GROUP_ID]].drop_duplicates()
    for _, group in pairs.groupby("profile"):
        if len(group) >= 4:
            chosen += group.sort_values(GROUP_ID)["server_name"].head(per_profile).tolist()
    return sorted(chosen)


def measured_targets(data_path: Path) -> list[str]:
    """The target metrics to train on: all of ``TARGET_METRICS`` the data really measured.

    Imported traces list their measured metrics in ``metrics_metadata.json``; the others were
    filled by a rule and must not be learned or scored (Docs/IMPORTING.md).
    """
    measured = measured_metrics_for(data_path)
    if measured is None:
        return list(TARGET_METRICS)
    targets = [t for t in TARGET_METRICS if t in measured]
    if not targets:
        raise TrainingError(f"{data_path}: none of the target metrics {TARGET_METRICS} was measured "
                            f"(metrics_metadata.json lists {measured})", "there is nothing real to learn",
                            "map at least CPU or memory in the import mapping", TRAINING_GUIDE_DOC)
    skipped = [t for t in TARGET_METRICS if t not in targets]
    if skipped:
        logger.warning("training on measured targets only: %s (not measured, not trained: %s)",
                       ", ".join(targets), ", ".join(skipped))
    return targets


def load_checked_frame(data_path: Path, memory_budget_gb: float = TRAINING_MEMORY_BUDGET_GB) -> pd.DataFrame:
    """Read the data (a subset of servers if it would not fit the memory budget) and gate it on the contract.

    Training stops with a :class:`TrainingError` listing the problems if the data is invalid
    in strict mode; warnings are logged.
    """
    subset, file_rows = servers_within_budget(data_path, memory_budget_gb * 1e9, TRAINER.training_bytes_per_row)
    if subset is not None:
        logger.warning("%s has %s rows: more than fits %.1f GB; training on %d servers chosen by hash id "
                       "(raise --max-memory-gb to use more)", data_path, f"{file_rows:,}", memory_budget_gb,
                       len(subset))
    frame = load_training_frame(data_path, servers=subset)
    is_valid, errors, warnings = DataValidator(strict=True).validate_schema(frame)
    if not is_valid:
        raise TrainingError(format_report(data_path, len(frame), is_valid, errors, warnings, 0.0)
                            + f"\nTraining stopped: fix the data first. See {TRAINING_GUIDE_DOC}.")
    for warning in warnings:
        logger.warning("data: %s", warning)
    return frame


@dataclass(frozen=True)
class TimeSplit:
    """Bucket boundaries of the split: training, then validation, then the held-out range."""

    train_end: int  # last bucket whose target may be used for training
    val_end: int  # last validation bucket
    data_end: int  # last bucket of the data (the hold-out range ends here)


def time_split(frame: pd.DataFrame, encoder_length: int, val_hours: int, holdout_hours: int) -> TimeSplit:
    """Split the data's time range: the last ``holdout_hours`` are held out, the ``val_hours`` before
    them validate, the rest trains.

    Raises :class:`TrainingError` if what remains for training cannot hold one window
    (encoder + horizon) plus an hour.
    """
    first, data_end = (int(b) for b in bucket_of_times(pd.DatetimeIndex([frame["timestamp"].min(),
                                                                         frame["timestamp"].max()])))
    val_end = data_end - holdout_hours * STEPS_PER_HOUR
    train_end = val_end - val_hours * STEPS_PER_HOUR
    window = encoder_length + MAX_PREDICTION_LENGTH
    if train_end - first + 1 < window + STEPS_PER_HOUR:
        span = data_end - first + 1
        raise TrainingError(
            f"Not enough history: {span / STEPS_PER_HOUR:.0f} h of data, but encoder ({encoder_length}) + horizon "
            f"({MAX_PREDICTION_LENGTH}) buckets of training windows plus {val_hours} h validation and "
            f"{holdout_hours} h hold-out are needed. Fix: generate more hours (--hours), or lower --val-hours/"
            f"--holdout-hours/--encoder-length. See {TRAINING_GUIDE_DOC}.")
    return TimeSplit(train_end=train_end, val_end=val_end, data_end=data_end)


def prepare_data(data_path: Path, encoder_length: int, val_hours: int, holdout_hours: int,
                 unseen_per_profile: int, spec: FeatureSpec | None = None,
                 memory_budget_gb: float = TRAINING_MEMORY_BUDGET_GB) -> PreparedData:
    """Load and gate the data, split it by time, and run the feature pipeline on it.

    The feature spec (when not given, as on resume) is fitted on training rows only: buckets up
    to the end of training, without the servers held out whole.
    """
    began = time.perf_counter()
    frame = load_checked_frame(data_path, memory_budget_gb)
    n_rows = len(frame)
    split = time_split(frame, encoder_length, val_hours, holdout_hours)
    targets = measured_targets(data_path) if spec is None else None

    def training_rows(dense: pd.DataFrame) -> pd.DataFrame:
        unseen = choose_unseen_servers(dense, unseen_per_profile)
        return dense[(dense[TIME_IDX] <= split.train_end) & ~dense["server_name"].isin(unseen)]

    features = build_features(frame, spec=spec, encoder_length=encoder_length, targets=targets,
                              training_rows=training_rows, dataset_servers=TRAINER.model_dataset_servers,
                              dataset_rows=encoder_length + MAX_PREDICTION_LENGTH + 1)
    unseen = choose_unseen_servers(features.frame, unseen_per_profile)
    logger.info("data ready: %d rows, %d servers (%d held out), %.1fs", len(features.frame), features.store.n_servers,
                len(unseen), time.perf_counter() - began)
    return PreparedData(frame=features.frame, spec=features.spec, store=features.store, encoder=features.encoder,
                        dataset_for_model=features.dataset, train_end_tidx=split.train_end,
                        val_end_tidx=split.val_end, data_end_tidx=split.data_end, unseen_servers=unseen,
                        fingerprint=data_fingerprint(data_path), n_rows=n_rows)


class WindowBatches(torch.utils.data.Dataset):
    """A map-style dataset whose items are whole batches, built vectorised from the store.

    Training: each item draws ``batch_size`` random windows, seeded by (seed, epoch, rank,
    item), so every epoch sees fresh windows and DDP ranks never share a batch. Validation:
    a fixed, evenly spread subset of the validation windows, split between ranks.
    """

    def __init__(self, store: SeriesStore, servers: np.ndarray, starts: np.ndarray, batch_size: int,
                 n_batches: int | None, seed: int, train: bool, profile_dropout: float = 0.0,
                 rank: int = 0, world_size: int = 1, short_history_fraction: float = 0.0) -> None:
        self.store, self.servers, self.starts = store, servers, starts
        self.short_history_fraction = short_history_fraction
        self.batch_size, self.seed, self.train = batch_size, seed, train
        self.profile_dropout, self.rank, self.world_size = profile_dropout, rank, world_size
        self.epoch = 0
        if train:
            self.n_batches = max(1, (n_batches or 1) // world_size)
        else:
            mine = np.arange(len(servers))[rank::world_size]
            self.val_order = mine
            self.n_batches = max(1, int(np.ceil(len(mine) / batch_size)))

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, item: int) -> tuple[dict[str, Any], Any]:
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, item])
            pick = rng.integers(0, len(self.servers), self.batch_size)
            hide = rng.random(self.batch_size) < self.profile_dropout if self.profile_dropout else None
            lengths = None
            spec = self.store.spec
            if self.short_history_fraction and rng.random() < self.short_history_fraction:
                # A whole batch of short histories (one length keeps the fast unpacked path).
                short = int(rng.integers(spec.min_encoder_length, spec.encoder_length))
                lengths = np.full(self.batch_size, short)
            return self.store.batch(self.servers[pick], self.starts[pick], hide_profile=hide,
                                    encoder_lengths=lengths)
        pick = self.val_order[item * self.batch_size:(item + 1) * self.batch_size]
        return self.store.batch(self.servers[pick], self.starts[pick])


def _spread(n_total: int, n_keep: int) -> np.ndarray:
    """Evenly spaced indices (deterministic subsample)."""
    if n_total <= n_keep:
        return np.arange(n_total)
    return np.linspace(0, n_total - 1, n_keep).round().astype(np.int64)


def split_windows(data: PreparedData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training and validation windows (servers, starts); no window crosses its boundary."""
    store = data.store
    train_servers, train_starts = store.window_starts(last_decoder_tidx=data.train_end_tidx)
    val_servers, val_starts = store.window_starts(first_decoder_tidx=data.train_end_tidx + 1,
                                                  last_decoder_tidx=data.val_end_tidx)
    known = np.array([name not in set(data.unseen_servers) for name in store.server_names])
    train_keep = known[train_servers]
    val_keep = known[val_servers]
    return {"train": (train_servers[train_keep], train_starts[train_keep]),
            "val": (val_servers[val_keep], val_starts[val_keep])}


# ---------------------------------------------------------------------------- lightning glue
class FleetDataModule(pl.LightningDataModule):
    """Builds per-rank loaders once the trainer knows its rank (DDP-safe)."""

    def __init__(self, data: PreparedData, windows: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int,
                 windows_per_epoch: int, val_windows: int, seed: int, profile_dropout: float) -> None:
        super().__init__()
        self.data, self.windows = data, windows
        self.batch_size, self.windows_per_epoch = batch_size, windows_per_epoch
        self.val_windows, self.seed, self.profile_dropout = val_windows, seed, profile_dropout
        self.train_set: WindowBatches | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Random windows, fresh every epoch; batches are built whole (batch_size=None)."""
        rank, world = self._rank()
        servers, starts = self.windows["train"]
        self.train_set = WindowBatches(self.data.store, servers, starts, self.batch_size,
                                       max(1, self.windows_per_epoch // self.batch_size), self.seed, train=True,
                                       profile_dropout=self.profile_dropout, rank=rank, world_size=world,
                                       short_history_fraction=TRAINER.short_history_fraction)
        return torch.utils.data.DataLoader(self.train_set, batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        """A fixed, evenly spread subset of validation windows."""
        rank, world = self._rank()
        servers, starts = self.windows["val"]
        keep = _spread(len(servers), self.val_windows)
        dataset = WindowBatches(self.data.store, servers[keep], starts[keep], self.batch_size, None, self.seed,
                                train=False, rank=rank, world_size=world)
        return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)


def _format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class RunState:
    """Mutable state of one training run, shared with the callbacks."""

    max_epochs: int
    start_epoch: int = 0
    started: float = 0.0
    epoch_started: float = 0.0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    checkpoint_root: Path | None = None
    checkpoint_every: int = TRAINER.checkpoint_every_n_epochs
    resume_from: Path | None = None
    config: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


class EpochReport(pl.Callback):
    """One line per epoch (losses, learning rate, elapsed, ETA); keeps the best weights;
    reseeds the window sampler; writes a checkpoint every TRAINER.checkpoint_every_n_epochs."""

    def __init__(self, run: RunState) -> None:
        self.run = run

    @staticmethod
    def _emit(trainer: pl.Trainer, message: str) -> None:
        """Print above a live progress bar, or log a line when there is none (CI, log files)."""
        bar = trainer.progress_bar_callback
        if bar is not None and getattr(bar, "is_enabled", False):
            bar.print(message)
        else:
            logger.info("%s", message)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Tell the sampler which epoch it is, start the epoch clock."""
        data_module = trainer.datamodule
        if data_module is not None and data_module.train_set is not None:
            data_module.train_set.epoch = self.run.start_epoch + trainer.current_epoch
        self.run.epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Without a live bar, log progress four times per epoch."""
        total = trainer.num_training_batches
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero or not total:
            return
        if (batch_idx + 1) % max(1, total // 4) == 0 and batch_idx + 1 < total:
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float("nan")
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            logger.info("epoch %d step %d/%d  loss %.4f  lr %.2e", self.run.start_epoch + trainer.current_epoch + 1,
                        batch_idx + 1, total, loss, lr)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Report, remember the best weights, checkpoint."""
        run = self.run
        metrics = trainer.callback_metrics
        epoch = run.start_epoch + trainer.current_epoch + 1
        train_loss = float(metrics.get("train_loss_epoch", metrics.get("train_loss", float("nan"))))
        val_loss = float(metrics.get("val_loss", float("nan")))
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        run.epoch_seconds.append(time.perf_counter() - run.epoch_started)
        eta = (run.max_epochs - epoch) * float(np.mean(run.epoch_seconds[-3:]))
        run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                            "seconds": round(run.epoch_seconds[-1], 2)})
        if val_loss < run.best_val_loss:
            run.best_val_loss, run.best_epoch = val_loss, epoch
            run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        if trainer.is_global_zero:
            self._emit(trainer, f"epoch {epoch}/{run.max_epochs}  train_loss {train_loss:.4f}  "
                                f"val_loss {val_loss:.4f}  lr {lr:.2e}  "
                                f"{_format_duration(run.epoch_seconds[-1])}/epoch  "
                                f"elapsed {_format_duration(time.perf_counter() - run.started)}  "
                                f"ETA {_format_duration(eta)}")
            if run.checkpoint_root is not None and epoch % run.checkpoint_every == 0:
                save_checkpoint(run.checkpoint_root / f"epoch_{epoch:04d}", module, trainer, run)


class ResumeState(pl.Callback):
    """Restores optimiser and scheduler state from a checkpoint at the start of fit."""

    def __init__(self, run: RunState) -> None:
        self.run = run

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Load the saved optimiser/scheduler state, if resuming."""
        if self.run.resume_from is not None:
            restore_optimizer(self.run.resume_from, trainer)


def make_callbacks(run: RunState) -> list[pl.Callback]:
    """Epoch report and checkpoints, resume, early stopping, a step progress bar."""
    early = pl.callbacks.EarlyStopping(monitor="val_loss", patience=TRAINER.early_stopping_patience, mode="min")
    callbacks = [EpochReport(run), ResumeState(run), early]
    if sys.stderr.isatty():  # a live step bar in a terminal; log lines otherwise
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=10))
    return callbacks


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: Path, module: FleetTFT, trainer: Any, run: RunState) -> None:
    """Weights, optimiser and scheduler state as safetensors + JSON (no pickles)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(module, tmp / MODEL_WEIGHTS_FILE)
    optimizer = trainer.optimizers[0]
    opt_state = optimizer.state_dict()
    tensors, skeleton = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for index, values in opt_state["state"].items():
        skeleton["state"][str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                name = f"state.{index}.{key}"
                tensors[name] = value.detach().to("cpu").contiguous()
                skeleton["state"][str(index)][key] = {"tensor": name}
            else:
                skeleton["state"][str(index)][key] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    atomic_write_json(tmp / "trainer_state.json", {
        "epoch": run.start_epoch + trainer.current_epoch + 1, "global_step": trainer.global_step,
        "optimizer": skeleton, "schedulers": schedulers, "best_val_loss": run.best_val_loss,
        "best_epoch": run.best_epoch, "history": run.history, "max_epochs": run.max_epochs,
    })
    atomic_write_json(tmp / MODEL_CONFIG_FILE, run.config)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    logger.info("checkpoint written: %s", directory)


def restore_optimizer(directory: Path, trainer: Any) -> None:
    """Load optimiser and scheduler state saved by :func:`save_checkpoint`."""
    state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(directory / "optimizer.safetensors"))
    device = next(trainer.lightning_module.parameters()).device
    skeleton = state["optimizer"]
    opt_state = {"param_groups": skeleton["param_groups"], "state": {}}
    for index, values in skeleton["state"].items():
        opt_state["state"][int(index)] = {
            key: tensors[value["tensor"]].to(device) if isinstance(value, dict) and "tensor" in value else value
            for key, value in values.items()}
    for group in opt_state["param_groups"]:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    trainer.optimizers[0].load_state_dict(opt_state)
    for config, saved in zip(trainer.lr_scheduler_configs, state["schedulers"], strict=False):
        # Keep the position in the schedule, but its length is the (possibly longer) new run's.
        fresh = config.scheduler.state_dict()
        for key in ("total_steps", "_schedule_phases"):
            if key in fresh:
                saved[key] = fresh[key]
        config.scheduler.load_state_dict(saved)
    logger.info("resumed optimiser and schedule from %s (epoch %d)", directory, state["epoch"])


# ---------------------------------------------------------------------------- artefacts
def new_model_dir(models_dir: Path) -> Path:
    """``models/tft_model_YYYYMMDD_HHMMSS`` (a suffix is added if that second is taken)."""
    stamp = datetime.now(UTC).strftime(TRAINER.model_dir_time_format)
    candidate = models_dir / f"{MODEL_DIR_PREFIX}{stamp}"
    suffix = 1
    while candidate.exists():
        candidate = models_dir / f"{MODEL_DIR_PREFIX}{stamp}_{suffix}"
        suffix += 1
    return candidate


def write_model_dir(final_dir: Path, model: FleetTFT, spec: FeatureSpec, encoder: ServerEncoder,
                    training_info: dict[str, Any], update_latest: bool = True) -> Path:
    """Write all artefacts into a staging directory, check them, then rename into place.

    A failure at any point leaves no ``tft_model_*`` directory behind. ``update_latest`` False
    leaves ``models/latest`` where it was (a challenger waiting for the promotion gate).
    """
    staging = final_dir.with_name(f".staging_{final_dir.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_weights(model, staging / MODEL_WEIGHTS_FILE)
        atomic_write_json(staging / MODEL_CONFIG_FILE, model_config(model, spec))
        atomic_write_json(staging / TRAINING_INFO_FILE, training_info)
        encoder.save(staging / SERVER_MAPPING_FILE)
        missing = [name for name in MODEL_REQUIRED_FILES if not (staging / name).is_file()]
        if missing:
            raise TrainingError(f"Model files not written: {missing}", "the training output is discarded",
                                "check the models directory's disk space and permissions, then train again",
                                TRAINING_GUIDE_DOC, exit_code=EXIT_RUNTIME)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if update_latest:
        update_latest_link(final_dir)
    return final_dir


def update_latest_link(model_dir: Path) -> Path:
    """Point ``models/latest`` at ``model_dir`` (atomic symlink swap, recorded in promotions.json)."""
    point_latest(model_dir, "trained", "python main.py train (no promotion gate)")
    return model_dir.parent / LATEST_MODEL_LINK


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape the model."""
    import lightning
    import pytorch_forecasting

    return {"python": sys.version.split()[0], "torch": torch.__version__, "lightning": lightning.__version__,
            "pytorch_forecasting": pytorch_forecasting.__version__, "numpy": np.__version__, "pandas": pd.__version__}


# ---------------------------------------------------------------------------- the run
def _devices(text: str) -> int | str:
    """``--devices``: a count per node (an int for Lightning) or ``auto``."""
    return int(text) if text.isdigit() else text


@dataclass
class TrainSettings:
    """Knobs of one training run: each flagged field is also its ``main.py train`` flag (cli_options.py)."""

    data: Path = option(TRAINING_DATA_PATH, "LINBORG Parquet to train on", parse=Path)
    models_dir: Path = option(MODELS_DIR, "where model directories go", parse=Path)
    epochs: int = option(TRAINER.max_epochs, "maximum epochs (early stopping may end sooner)", parse=int)
    batch_size: int = option(TRAINER.batch_size, "training windows per optimiser step", parse=int)
    encoder_length: int = option(ENCODER_LENGTH, "history buckets the model reads", parse=int)
    hidden_size: int = option(TRAINER.model_hidden_size, "the TFT's hidden size", parse=int)
    attention_heads: int = option(TRAINER.model_attention_heads, "attention heads", parse=int)
    hidden_continuous_size: int = option(TRAINER.model_hidden_continuous_size, "hidden size of the continuous inputs",
                                         parse=int)
    dropout: float = option(TRAINER.model_dropout, "dropout rate", parse=float)
    lstm_layers: int = TRAINER.model_lstm_layers
    learning_rate: float = option(LEARNING_RATE, "peak learning rate of the one-cycle schedule", parse=float)
    windows_per_epoch: int = option(TRAINER.windows_per_epoch,
                                    "sampled training windows per epoch (bounds epoch time on "
                                    "any fleet)", parse=int)
    val_windows: int = option(TRAINER.val_windows, "fixed validation windows", parse=int)
    val_hours: int = option(TRAINER.validation_hours, "the last hours of each server's training history used for "
                            "validation", parse=int)
    holdout_hours: int = option(HOLDOUT_HOURS, "the last hours kept out of training entirely (the backtest's range)",
                                parse=int)
    unseen_per_profile: int = option(TRAINER.unseen_per_profile, "whole servers per profile kept out of training to "
                                     "test unseen-server forecasts", parse=int)
    profile_dropout: float = TRAINER.profile_dropout
    seed: int = option(TRAINER.seed, "random seed (same seed and data: the same weights)", parse=int)
    accelerator: str = option(TRAINER.accelerator, "auto, cpu or gpu")
    devices: int | str = option(TRAINER.devices, "devices per node (e.g. 2), or auto", parse=_devices)
    num_nodes: int = option(TRAINER.num_nodes, "nodes of a multi-node run", parse=int)
    strategy: str = option(TRAINER.strategy, "auto, ddp, ddp_spawn, ...")
    precision: str | None = option(None, "default: bf16-mixed on GPU, 32-true on CPU")
    resume: Path | None = option(None, "checkpoint directory to continue from", parse=Path)
    keep_checkpoints: bool = option(False, "keep checkpoints after a successful run")
    checkpoint_every: int = option(TRAINER.checkpoint_every_n_epochs, "epochs between checkpoints", parse=int)
    backtest: bool = option(True, "skip the post-training backtest")
    # persistence blend and conformal p10/p90 offsets fitted on the validation windows after training
    # (calibration_fit.py; config CALIBRATION.persistence_blend, BAND_CALIBRATION)
    calibrate_bands: bool = option(BAND_CALIBRATION, "keep the model's raw output (no persistence blend or "
                                   "conformal bands fitted on the validation windows)", flag="--no-calibration")
    # the alert policy's probability thresholds fitted on the validation days (alert_fitting.py)
    fit_alert_thresholds: bool = option(ALERT_POLICY.fit_on_validation, "keep the alert policy's default "
                                        "probability threshold for every metric (no fit to the false-alarm budget "
                                        "on the validation days)", flag="--no-alert-fit")
    # statsforecast models scored beside the naive baselines in that backtest (empty: none)
    statistical: tuple[str, ...] = statistical_option()
    max_time_minutes: float | None = option(None, "stop after this much training time", flag="--max-minutes",
                                            parse=float)
    max_memory_gb: float = option(TRAINING_MEMORY_BUDGET_GB, "train on a subset of servers if the data would need "
                                  "more memory than this", parse=float)
    compile: str = option(TRAINER.torch_compile, f"torch.compile the variable-selection networks (auto: CPU runs of at "
                          f"least {TRAINER.torch_compile_min_steps} steps)", choices=("auto", "on", "off"))
    # A profile-agnostic model (profile_study.train_agnostic_model): every window of training,
    # validation and backtest has its profile hidden.
    hide_profiles: bool = False
    # Retraining (model_retrain.py): start from this model's weights where the shapes match, and
    # leave models/latest alone (the promotion gate decides).
    warm_start: Path | None = None
    update_latest: bool = True


@dataclass(frozen=True)
class Hardware:
    """Where and in which precision the run trains."""

    accelerator: str  # "gpu" or "cpu"
    precision: str  # a Lightning precision, e.g. "bf16-mixed" or "32-true"


def choose_accelerator(settings: TrainSettings) -> Hardware:
    """GPU with bf16 mixed precision when one is present (or asked for), else CPU in fp32."""
    accelerator = settings.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = settings.precision or ("bf16-mixed" if accelerator == "gpu" else "32-true")
    return Hardware(accelerator=accelerator, precision=precision)


@dataclass
class TrainResult:
    """What a finished run produced (on the rank-0 process)."""

    model_dir: Path
    model: FleetTFT
    data: PreparedData
    training_info: dict[str, Any]


def _compile_decision(settings: TrainSettings, accelerator: str, planned_steps: int) -> bool:
    """Whether training compiles the variable GRNs: ``--compile on/off``, or auto (long CPU runs)."""
    if settings.compile not in ("auto", "on", "off"):
        raise TrainingError(f"--compile must be auto, on or off, not {settings.compile!r}")
    if settings.compile != "auto":
        return settings.compile == "on"
    return accelerator == "cpu" and planned_steps >= TRAINER.torch_compile_min_steps


def _world_size(settings: TrainSettings, accelerator: str) -> int:
    """Processes taking part in training (devices x nodes), as Lightning will launch them."""
    devices = settings.devices
    if devices == "auto":
        devices = torch.cuda.device_count() if accelerator == "gpu" else 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return max(1, count * settings.num_nodes)


def _share_cpu_threads(settings: TrainSettings, accelerator: str) -> None:
    """Several CPU processes on one host split the cores; oversubscribed threads spin and crawl."""
    if accelerator != "cpu":
        return
    local = _world_size(settings, accelerator) // max(1, settings.num_nodes)
    if local > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


@dataclass
class ResumePoint:
    """A checkpoint to continue from (``--resume``): the model's config and the trainer's state."""

    directory: Path
    config: dict[str, Any]  # the checkpoint's config.json (hyper-parameters and feature spec)
    trainer_state: dict[str, Any]  # trainer_state.json: epoch, history, best validation loss

    @property
    def epoch(self) -> int:
        """Epochs already run."""
        return int(self.trainer_state["epoch"])


def read_resume_point(directory: Path | None) -> ResumePoint | None:
    """The checkpoint in ``directory`` (None when not resuming)."""
    if directory is None:
        return None
    config = json.loads((directory / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    trainer_state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    return ResumePoint(directory=directory, config=config, trainer_state=trainer_state)


def create_model(settings: TrainSettings, data: PreparedData, resume: ResumePoint | None) -> FleetTFT:
    """A new model from the data's dataset, or the checkpoint's model with its weights."""
    if resume is None:
        model = build_model(data.dataset_for_model, data.spec, settings.hidden_size, settings.attention_heads,
                            settings.hidden_continuous_size, settings.dropout, settings.lstm_layers,
                            settings.learning_rate)
        if settings.warm_start is not None:
            warm_start(model, settings.warm_start / MODEL_WEIGHTS_FILE)
        return model

    model, _ = model_from_config(resume.config)
    model.load_state_dict(load_file(str(resume.directory / MODEL_WEIGHTS_FILE)))
    return model


def warm_start(model: FleetTFT, weights: Path) -> int:
    """Copy every tensor of ``weights`` whose name and shape match into ``model``; the count copied.

    Tensors that differ (a new server count in the id embedding, a new target or category)
    keep their fresh initialisation.
    """
    own = model.state_dict()
    taken = {name: tensor for name, tensor in load_file(str(weights)).items()
             if name in own and own[name].shape == tensor.shape}
    model.load_state_dict(taken, strict=False)
    logger.info("warm start from %s: %d of %d tensors (%.0f %% of the parameters) copied", weights.parent.name,
                len(taken), len(own), 100.0 * sum(t.numel() for t in taken.values())
                / max(1, sum(t.numel() for t in own.values())))
    return len(taken)


def new_run_state(settings: TrainSettings, model: FleetTFT, data: PreparedData,
                  resume: ResumePoint | None) -> RunState:
    """The run's shared state; a resumed run continues its history, best epoch and checkpoint folder."""
    run_name = settings.resume.parent.name if settings.resume else \
        datetime.now(UTC).strftime(TRAINER.model_dir_time_format)
    run = RunState(max_epochs=settings.epochs, start_epoch=resume.epoch if resume else 0,
                   started=time.perf_counter(),
                   checkpoint_root=settings.models_dir / TRAINER.checkpoints_subdir / run_name,
                   checkpoint_every=settings.checkpoint_every, resume_from=settings.resume,
                   config=model_config(model, data.spec))
    if resume is not None:
        run.history = list(resume.trainer_state["history"])
        run.best_val_loss = float(resume.trainer_state["best_val_loss"])
        run.best_epoch = int(resume.trainer_state["best_epoch"])
        run.best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if settings.epochs - run.start_epoch <= 0:
        raise TrainingError(f"--epochs {settings.epochs} is not beyond the checkpoint's epoch {run.start_epoch}.")
    return run


def plan_steps(model: FleetTFT, settings: TrainSettings, hardware: Hardware) -> None:
    """Tell the model the run's optimiser steps (its schedule), share CPU cores, decide on torch.compile."""
    batches_per_epoch = max(1, settings.windows_per_epoch // settings.batch_size)
    model.planned_total_steps = settings.epochs * max(1, batches_per_epoch
                                                      // _world_size(settings, hardware.accelerator))
    _share_cpu_threads(settings, hardware.accelerator)
    model.compile_training = _compile_decision(settings, hardware.accelerator, model.planned_total_steps)
    if model.compile_training:
        logger.info("compiling the variable-selection networks for training (torch.compile; the first steps "
                    "take ~1 min longer, every later step ~30 % less; --compile off to skip)")


def build_lightning_trainer(settings: TrainSettings, run: RunState, hardware: Hardware) -> pl.Trainer:
    """The Lightning trainer for the epochs still to run.

    Our callbacks (epoch report, checkpoints, resume, early stopping), gradient clipping; no
    Lightning checkpoints or logger (the run writes its own), and no distributed sampler (each
    rank's loader draws its own windows).
    """
    return pl.Trainer(
        max_epochs=settings.epochs - run.start_epoch, accelerator=hardware.accelerator, devices=settings.devices,
        num_nodes=settings.num_nodes, strategy=settings.strategy, precision=hardware.precision,
        gradient_clip_val=TRAINER.gradient_clip_val, callbacks=make_callbacks(run), logger=False,
        enable_checkpointing=False, use_distributed_sampler=False, num_sanity_val_steps=0,
        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
        max_time={"minutes": settings.max_time_minutes} if settings.max_time_minutes else None,
    )


def backtest_held_out(model: FleetTFT, data: PreparedData, statistical: tuple[str, ...] = ()) -> dict[str, Any]:
    """Backtest on the held-out range (after validation), the whole held-out servers scored apart."""
    return backtest_store(model, data.spec, data.store, first_decoder_tidx=data.val_end_tidx + 1,
                          last_decoder_tidx=data.data_end_tidx, unseen_servers=data.unseen_servers,
                          statistical=statistical)


def training_info(settings: TrainSettings, data: PreparedData, run: RunState, model: FleetTFT,
                  hardware: Hardware, devices: int, fit_seconds: float, total_seconds: float,
                  backtest: dict[str, Any] | None) -> dict[str, Any]:
    """The ``training_info.json`` document: versions, data and its split, settings, history, device, timings."""
    last = run.history[-1] if run.history else {}

    def bucket_time(bucket: int) -> str:
        return bucket_start(bucket).isoformat()

    samples_per_second = len(run.history) * settings.windows_per_epoch / max(fit_seconds, 1e-9)
    return {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "contract_version": CONTRACT_VERSION,
        "project_version": PROJECT_VERSION,
        "packages": package_versions(),
        "data": {
            "path": str(settings.data), "fingerprint_sha256_16": data.fingerprint, "rows": data.n_rows,
            "servers": data.store.n_servers, "unseen_servers": data.unseen_servers,
            "train_end": bucket_time(data.train_end_tidx), "validation_end": bucket_time(data.val_end_tidx),
            "holdout_start": bucket_time(data.val_end_tidx + 1), "data_end": bucket_time(data.data_end_tidx),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()},
        "epochs_run": len(run.history),
        "stopped_early": bool(len(run.history) < settings.epochs and not settings.max_time_minutes),
        "history": run.history,
        "best_epoch": run.best_epoch,
        "best_val_loss": run.best_val_loss,
        "final_train_loss": last.get("train_loss"),
        "val_to_train_loss_ratio": (run.best_val_loss / last["train_loss"]) if last.get("train_loss") else None,
        "parameters": count_parameters(model),
        "device": {"accelerator": hardware.accelerator, "devices": devices, "num_nodes": settings.num_nodes,
                   "strategy": settings.strategy, "precision": hardware.precision,
                   "compiled_variable_grns": bool(model.compile_training),
                   "gpu": torch.cuda.get_device_name(0) if hardware.accelerator == "gpu" else None},
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "timings": {"fit_seconds": round(fit_seconds, 1), "total_seconds": round(total_seconds, 1),
                    "samples_per_second": round(samples_per_second, 1)},
        "backtest": backtest,
    }


def train(settings: TrainSettings) -> TrainResult | None:
    """Run training end to end; returns the result (None on non-zero DDP ranks).

    The recipe: data (gated, split, features) -> model (new or resumed) -> Lightning fit ->
    best epoch's weights -> backtest -> model directory.
    """
    quiet_library_noise()
    began = time.perf_counter()
    resume = read_resume_point(settings.resume)
    if resume is not None:  # the checkpoint's model reads this much history
        settings.encoder_length = int(resume.config["feature_spec"]["encoder_length"])
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    data = prepare_data(settings.data, settings.encoder_length, settings.val_hours, settings.holdout_hours,
                        settings.unseen_per_profile,
                        spec=FeatureSpec.from_dict(resume.config["feature_spec"]) if resume else None,
                        memory_budget_gb=settings.max_memory_gb)
    data.store.hide_profiles = settings.hide_profiles
    windows = split_windows(data)
    if len(windows["train"][0]) == 0 or len(windows["val"][0]) == 0:
        raise TrainingError(f"No training or validation windows; the data is too short. See {TRAINING_GUIDE_DOC}.")

    model = create_model(settings, data, resume)
    run = new_run_state(settings, model, data, resume)
    hardware = choose_accelerator(settings)
    plan_steps(model, settings, hardware)
    trainer = build_lightning_trainer(settings, run, hardware)
    datamodule = FleetDataModule(data, windows, settings.batch_size, settings.windows_per_epoch,
                                 settings.val_windows, settings.seed, settings.profile_dropout)
    logger.info("training: %d parameters, %d training windows available, %d validation windows, %s x %s, "
                "precision %s, up to %d epochs x %d windows", count_parameters(model), len(windows["train"][0]),
                min(len(windows["val"][0]), settings.val_windows), hardware.accelerator, trainer.num_devices,
                hardware.precision, settings.epochs, settings.windows_per_epoch)
    fit_started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - fit_started
    if not trainer.is_global_zero:
        return None

    if run.best_state is None:
        raise TrainingError("Training produced no validated epoch (interrupted?)", None, None, TRAINING_GUIDE_DOC,
                            exit_code=EXIT_RUNTIME)
    model.load_state_dict(run.best_state)
    model.to("cpu").eval()
    if settings.calibrate_bands:
        fit_calibration(model, data.spec, data.store, data.train_end_tidx + 1, data.val_end_tidx, seed=settings.seed)
    alert_report = None
    if settings.fit_alert_thresholds:
        thresholds, alert_report = fit_alert_thresholds(model, data.spec, data.store, data.train_end_tidx + 1,
                                                        data.val_end_tidx, seed=settings.seed)
        data.spec.alert_thresholds = thresholds or None
    backtest = backtest_held_out(model, data, settings.statistical) if settings.backtest else None
    info = training_info(settings, data, run, model, hardware, trainer.num_devices, fit_seconds,
                         time.perf_counter() - began, backtest)
    info["alert_policy"] = alert_report
    model_dir = write_model_dir(new_model_dir(settings.models_dir), model, data.spec, data.encoder, info,
                                update_latest=settings.update_latest)
    if not settings.keep_checkpoints:
        shutil.rmtree(run.checkpoint_root, ignore_errors=True)
    logger.info("model saved to %s (best epoch %d, val_loss %.4f)", model_dir, run.best_epoch, run.best_val_loss)
    return TrainResult(model_dir=model_dir, model=model, data=data, training_info=info)


# ---------------------------------------------------------------------------- CLI
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the trainer (shared with ``main.py train``): the flagged fields of :class:`TrainSettings`."""
    parser = parser or argparse.ArgumentParser(description="Train the fleet TFT (see Docs/TRAINING_GUIDE.md).")
    return add_options(parser, TrainSettings)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from parsed arguments."""
    return settings_from(TrainSettings, args)


def run_from_args(args: argparse.Namespace) -> int:
    """Train from parsed arguments; 0 on success; raises on a data or training error (exit 2: data, flags or a
    checkpoint that cannot be used, ``errors.run_cli``)."""
    result = train(settings_from_args(args))
    if result is not None:
        print(f"Model saved: {result.model_dir}  (latest -> {result.model_dir.name})")
        if result.training_info.get("backtest"):
            print(format_table(result.training_info["backtest"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    return run_cli(run_from_args, build_arg_parser().parse_args(argv), "train failed")


if __name__ == "__main__":
    sys.exit(main())
