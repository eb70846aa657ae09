"""Benchmark: training samples/s of our pipeline vs the stock pytorch-forecasting pipeline.

    python -m bench.bench_training                      # CPU, 90 servers x 30 days, GUIDE config
    python -m bench.bench_training --device gpu --steps 40 --profile

Both pipelines train the same model definition on the same data with the same
hyper-parameters (GUIDE section 4: hidden 64, 4 heads, hidden_continuous 32, 6 targets,
encoder 96, decoder 96, batch 256) through ``lightning.pytorch.Trainer.fit``:

* stock: ``TimeSeriesDataSet.to_dataloader`` + ``TemporalFusionTransformer.from_dataset``
  (the library's defaults, including its per-step logging metrics);
* ours: ``SeriesStore`` batches built whole + ``FleetTFT`` (same parameters, faster forward),
  eager, and on CPU also with its variable GRNs compiled (what ``--compile auto`` does for long
  CPU runs; the one-off compile time is printed, not counted in the timed steps).

Samples/s are measured over the timed steps after warm-up, in the same process, and the
ratio is printed. ``--profile`` adds a torch.profiler table of where our step spends time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from pytorch_forecasting import TemporalFusionTransformer

from common_utils import quiet_library_noise
from config import TRAINING_DATA_FILE
from metrics_generator import fleet_from_total, generate_dataset
from tft_features import build_features
from tft_model import build_model, make_loss
from tft_trainer import WindowBatches

GUIDE_CONFIG = {"hidden_size": 64, "attention_heads": 4, "hidden_continuous_size": 32, "dropout": 0.1,
                "encoder_length": 96, "batch_size": 256}
GUIDE_TARGETS = ["cpu_idle_pct", "cpu_iowait_pct", "mem_used_pct", "swap_used_pct", "disk_usage_pct", "load_average"]


class StepTimer(pl.Callback):
    """Wall-clock time of each training step (device synchronised)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001, D102
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def _fit(model: pl.LightningModule, train_loader, steps: int, warmup: int, accelerator: str,
         precision: str) -> float:
    timer = StepTimer()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps + warmup, limit_val_batches=0,
                         accelerator=accelerator, devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(model, train_dataloaders=train_loader)
    timed = np.diff(timer.stamps[warmup - 1:])
    return float(np.sum(timed))


def main() -> None:
    """Run both pipelines and print samples/s and the ratio."""
    quiet_library_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="LINBORG Parquet (default: generate 90 x 30 days)")
    parser.add_argument("--servers", type=int, default=90)
    parser.add_argument("--hours", type=int, default=720)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stock-workers", type=int, default=None,
                        help="DataLoader workers for the stock loader (default: 0 on CPU, 8 on GPU as in GUIDE)")
    parser.add_argument("--batch-size", type=int, default=GUIDE_CONFIG["batch_size"])
    parser.add_argument("--profile", action="store_true", help="print where our training step spends its time")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant of our pipeline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    precision = "bf16-mixed" if args.device == "gpu" else "32-true"
    workers = args.stock_workers if args.stock_workers is not None else (8 if args.device == "gpu" else 0)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            generate_dataset(tmp, hours=args.hours, fleet=fleet_from_total(args.servers), progress=False)
            data = Path(tmp) / TRAINING_DATA_FILE
        # The feature pipeline: both pipelines read the same frame and spec; the stock one its
        # TimeSeriesDataSet (the whole fleet), ours its SeriesStore.
        features = build_features(data, encoder_length=GUIDE_CONFIG["encoder_length"], targets=GUIDE_TARGETS)
        frame, spec, dataset, store = features.frame, features.spec, features.dataset, features.store
        build_seconds = sum(seconds for step, seconds in features.seconds.items() if step != "store")
        hp = {k: GUIDE_CONFIG[k] for k in ("hidden_size", "attention_heads", "hidden_continuous_size", "dropout")}

        # --- stock pipeline --------------------------------------------------------
        torch.manual_seed(0)
        stock_loader = dataset.to_dataloader(train=True, batch_size=args.batch_size, num_workers=workers,
                                             persistent_workers=workers > 0)
        stock_model = TemporalFusionTransformer.from_dataset(
            dataset, hidden_size=hp["hidden_size"], attention_head_size=hp["attention_heads"],
            hidden_continuous_size=hp["hidden_continuous_size"], dropout=hp["dropout"], loss=make_loss(spec),
            output_size=[len(spec.quantiles)] * len(spec.targets), learning_rate=1e-3)
        stock_seconds = _fit(stock_model, stock_loader, args.steps, args.warmup, args.device, precision)

        # --- our pipeline -------------------------------------------------------------
        began = time.perf_counter()
        servers, starts = store.window_starts()
        store_seconds = features.seconds["store"] + time.perf_counter() - began
        torch.manual_seed(0)
        ours = build_model(dataset, spec, hp["hidden_size"], hp["attention_heads"], hp["hidden_continuous_size"],
                           hp["dropout"], learning_rate=1e-3)
        ours.planned_total_steps = args.steps + args.warmup
        batches = WindowBatches(store, servers, starts, args.batch_size, args.steps + args.warmup, seed=0, train=True)
        our_loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
        our_seconds = _fit(ours, our_loader, args.steps, args.warmup, args.device, precision)

        # --- ours with the variable GRNs compiled (what long CPU runs do: --compile auto) ----
        compiled_seconds = compile_seconds = None
        if args.device == "cpu" and not args.no_compile:
            torch.manual_seed(0)
            compiled = build_model(dataset, spec, hp["hidden_size"], hp["attention_heads"],
                                   hp["hidden_continuous_size"], hp["dropout"], learning_rate=1e-3)
            compiled.planned_total_steps = args.steps + args.warmup
            compiled.compile_training = True
            began = time.perf_counter()
            compiled_seconds = _fit(compiled, our_loader, args.steps, args.warmup, args.device, precision)
            compile_seconds = time.perf_counter() - began - compiled_seconds * (args.steps + args.warmup) / args.steps

    samples = args.steps * args.batch_size
    stock_rate, our_rate = samples / stock_seconds, samples / our_seconds
    device_name = torch.cuda.get_device_name(0) if args.device == "gpu" else "cpu"
    print(f"data: {len(frame):,} rows, {len(dataset):,} windows; TimeSeriesDataSet built in {build_seconds:.1f}s, "
          f"our store in {store_seconds:.1f}s")
    print(f"device: {device_name}, precision {precision}, batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warm-up; stock loader workers: {workers}")
    print(f"{'pipeline':<10}{'samples/s':>12}{'s/step':>10}")
    print(f"{'stock':<10}{stock_rate:>12.1f}{stock_seconds / args.steps:>10.3f}")
    print(f"{'ours':<10}{our_rate:>12.1f}{our_seconds / args.steps:>10.3f}   (eager)")
    result = {"device": device_name, "precision": precision, "batch_size": args.batch_size, "steps": args.steps,
              "stock_samples_per_s": stock_rate, "ours_samples_per_s": our_rate, "ratio": our_rate / stock_rate,
              "stock_loader_workers": workers, "config": GUIDE_CONFIG, "targets": GUIDE_TARGETS}
    if compiled_seconds is not None:
        compiled_rate = samples / compiled_seconds
        print(f"{'ours':<10}{compiled_rate:>12.1f}{compiled_seconds / args.steps:>10.3f}   (variable GRNs compiled; "
              f"one-off compile ~{compile_seconds:.0f} s, not in the timed steps)")
        result.update(ours_compiled_samples_per_s=compiled_rate, ratio_compiled=compiled_rate / stock_rate,
                      compile_seconds=compile_seconds)
        print(f"ratio ours/stock: {our_rate / stock_rate:.2f}x eager, {compiled_rate / stock_rate:.2f}x compiled")
    else:
        print(f"ratio ours/stock: {our_rate / stock_rate:.2f}x")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        device = torch.device("cuda" if args.device == "gpu" else "cpu")
        ours.to(device).train()
        optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-3)
        x, y = batches[0]
        x = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in x.items()}
        y = ([t.to(device) for t in y[0]], None)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.device == "gpu"):
                loss = ours.loss(ours(x)["prediction"], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "gpu" else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            if args.device == "gpu":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if args.device == "gpu" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=20)
        print(table)
        result["profile_top"] = table
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
