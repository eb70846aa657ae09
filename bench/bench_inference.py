"""Benchmark the daemon's hot paths against budgets, with ratios measured in the same run.

    python -m bench.bench_inference --model-dir models/latest

1. One forecast cycle for the 90-server fleet (windows -> batch -> forward -> decode ->
   risk), median of ``--repeat`` cycles, against the stock path on the same fleet and the
   same weights: ``TimeSeriesDataSet(predict=True)`` + ``TemporalFusionTransformer.predict``.
   Budget: <= 100 ms on this 2-core CPU.
2. One cycle for 1,000 servers. Budget: <= 1 s.
3. ``POST /feed`` throughput into a real daemon on loopback (uvicorn subprocess, SQLite
   synchronous=FULL: every acknowledged batch is on disk). Budget: >= 20,000 records/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common_utils import free_loopback_port, quiet_library_noise
from config import PROJECT_ROOT, TRAINING_DATA_FILE
from forecast_engine import ForecastEngine
from metrics_generator import FleetSimulator, fleet_from_total, generate_dataset
from metrics_store import FleetWindows
from server_encoder import ServerEncoder
from tft_features import add_model_columns, load_training_frame, make_timeseries_dataset
from tft_model import load_model, make_loss

CYCLE_BUDGET_90_S = 0.100
CYCLE_BUDGET_1000_S = 1.0
FEED_BUDGET_RECORDS_S = 20_000


def fleet_windows(n_servers: int, hours: int, seed: int) -> tuple[FleetWindows, int, FleetSimulator]:
    """A simulated fleet's recent history as the daemon holds it."""
    sim = FleetSimulator(fleet=fleet_from_total(n_servers), seed=seed)
    fleet = FleetWindows.from_records(sim.records(sim.advance(hours * 12)))
    return fleet, fleet.newest_bucket, sim


def time_cycles(engine: ForecastEngine, fleet: FleetWindows, origin: int, repeat: int) -> tuple[float, float]:
    """Median and fastest wall time of a full forecast cycle."""
    engine.forecast(fleet, origin)  # warm-up
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = engine.forecast(fleet, origin)
        times.append(time.perf_counter() - began)
    assert result.forecast_count == len(fleet.servers), "every server must be forecast"
    return float(np.median(times)), float(np.min(times))


def time_stock_predict(model_dir: Path, hours: int, n_servers: int, repeat: int) -> float:
    """The library's own path: TimeSeriesDataSet(predict=True) + TemporalFusionTransformer.predict."""
    from pytorch_forecasting import TemporalFusionTransformer
    from torch import nn

    loaded = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, hours=hours, fleet=fleet_from_total(n_servers), progress=False)
        frame = add_model_columns(load_training_frame(Path(tmp) / TRAINING_DATA_FILE), ServerEncoder())
    hparams = {k: v for k, v in dict(loaded.model.hparams).items()
               if k not in ("loss", "logging_metrics", "output_transformer")}
    stock = TemporalFusionTransformer(**hparams, loss=make_loss(loaded.spec), logging_metrics=nn.ModuleList(),
                                      output_transformer=loaded.model.output_transformer)
    stock.load_state_dict(loaded.model.state_dict())
    stock.eval()
    times = []
    for i in range(repeat + 1):
        began = time.perf_counter()
        dataset = make_timeseries_dataset(frame, loaded.spec, predict=True)
        stock.predict(dataset, mode="quantiles", batch_size=128,
                      trainer_kwargs={"logger": False, "enable_progress_bar": False, "accelerator": "cpu"})
        if i:  # the first call warms up
            times.append(time.perf_counter() - began)
    return float(np.median(times))


def feed_throughput(model_dir: Path, batch: int, batches: int, clients: int) -> float:
    """Records/s acknowledged by a real daemon process (each batch committed before the answer)."""
    import httpx

    port = free_loopback_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TFT_API_KEY": "bench-key"}
        proc = subprocess.Popen([sys.executable, "tft_inference.py", "--daemon", "--port", str(port), "--model-dir",
                                 str(model_dir), "--store", str(Path(tmp) / "s.sqlite3"), "--rate-per-minute", "1e9",
                                 "--rate-burst", "1000000"], cwd=PROJECT_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            # 5-second agents: many samples per server and bucket, as a real collector sends them.
            import pandas as pd

            sim = FleetSimulator(fleet=fleet_from_total(90), seed=3)
            per_server = max(1, min(60, batch // sim.n_servers))
            payloads = []
            for _ in range(batches * clients):
                records = sim.records(sim.advance(1))
                payload = []
                for k in range(per_server):
                    for r in records:
                        stamp = pd.Timestamp(r["timestamp"]) + pd.Timedelta(seconds=5 * k)
                        payload.append({**r, "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")})
                payloads.append(payload)
            acknowledged = [0] * clients

            def worker(i: int) -> None:
                with httpx.Client(base_url=url, headers={"X-API-Key": "bench-key"}, timeout=60) as client:
                    for payload in payloads[i::clients]:
                        response = client.post("/feed", json={"records": payload})
                        assert response.status_code == 200, response.text[:300]
                        acknowledged[i] += len(response.json()["stored"])

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - began
            return sum(acknowledged) / seconds
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    """Run the three measurements and print them against their budgets."""
    quiet_library_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/latest"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--skip-feed", action="store_true")
    parser.add_argument("--feed-batch", type=int, default=5000)
    parser.add_argument("--feed-batches", type=int, default=8, help="batches per client")
    parser.add_argument("--feed-clients", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    engine = ForecastEngine(load_model(args.model_dir))
    hours = max(2, (engine.spec.history_buckets + 12) // 12 + 1)  # the encoder and yesterday, when it reads it
    rows = []
    fleet, origin, _ = fleet_windows(90, hours, seed=1)
    cycle_90, fastest_90 = time_cycles(engine, fleet, origin, args.repeat)
    rows.append(("cycle, 90 servers", f"{cycle_90 * 1000:.1f} ms", f"<= {CYCLE_BUDGET_90_S * 1000:.0f} ms "
                 f"(min {fastest_90 * 1000:.0f})",
                 cycle_90 <= CYCLE_BUDGET_90_S))
    if not args.skip_stock:
        stock = time_stock_predict(args.model_dir, 24, 90, max(1, args.repeat // 5))
        rows.append(("stock predict(), 90", f"{stock * 1000:.1f} ms", f"ratio {stock / cycle_90:.1f}x slower", True))
    fleet, origin, _ = fleet_windows(1000, hours, seed=2)
    cycle_1000, fastest_1000 = time_cycles(engine, fleet, origin, max(5, args.repeat // 2))
    rows.append(("cycle, 1000 servers", f"{cycle_1000 * 1000:.1f} ms", f"<= {CYCLE_BUDGET_1000_S * 1000:.0f} ms "
                 f"(min {fastest_1000 * 1000:.0f})",
                 cycle_1000 <= CYCLE_BUDGET_1000_S))
    if not args.skip_feed:
        rate = feed_throughput(args.model_dir, args.feed_batch, args.feed_batches, args.feed_clients)
        rows.append(("POST /feed", f"{rate:,.0f} rec/s", f">= {FEED_BUDGET_RECORDS_S:,} rec/s",
                     rate >= FEED_BUDGET_RECORDS_S))
    print(f"model: {engine.model_version} (encoder {engine.spec.encoder_length}, "
          f"{sum(p.numel() for p in engine.loaded.model.parameters()):,} parameters), "
          f"torch threads {torch.get_num_threads()}")
    print("cycles: median of repeated runs (fastest in brackets); the budget applies to the median")
    print(f"{'measurement':<22}{'result':>16}   {'budget / ratio':<26}{'ok':>4}")
    for name, value, budget, ok in rows:
        print(f"{name:<22}{value:>16}   {budget:<26}{'yes' if ok else 'NO':>4}")


if __name__ == "__main__":
    main()
