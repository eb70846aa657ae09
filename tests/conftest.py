"""Shared fixtures: small generated fleets and a tiny trained model (seconds, not minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from common_utils import free_loopback_port
from config import PROJECT_ROOT, TRAINING_DATA_FILE
from metrics_generator import FleetSimulator, generate_dataset

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
                   "--val-windows", "256", "--val-hours", "12", "--holdout-hours", "24",
                   "--no-statistical"]


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


# ============================================================================ daemon harness
API_KEY = "test-key-0123456789"


def free_port() -> int:
    """A free TCP port on loopback."""
    return free_loopback_port()


class DaemonProcess:
    """``python tft_inference.py --daemon`` on a free loopback port."""

    def __init__(self, model_dir: Path | None, store: Path, *extra: str, env_key: str | None = API_KEY,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TFT_LOG_LEVEL": "INFO"}
        env.pop("TFT_API_KEY", None)
        if env_key:
            env["TFT_API_KEY"] = env_key
        args = [sys.executable, "tft_inference.py", "--daemon", "--port", str(self.port), "--store", str(store)]
        if model_dir is not None:
            args += ["--model-dir", str(model_dir)]
        self.log = store.with_suffix(f".{self.port}.log")
        self.proc = subprocess.Popen([*args, *extra], cwd=ROOT, env=env, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key} if key else {}, timeout=30)


def feed_buckets(client: httpx.Client, sim: FleetSimulator, n_buckets: int, chunk: int = 6) -> list[dict]:
    """Stream n buckets of the simulated fleet into POST /feed; returns the records sent."""
    sent = []
    done = 0
    while done < n_buckets:
        step = min(chunk, n_buckets - done)
        records = sim.records(sim.advance(step))
        response = client.post("/feed", json={"records": records})
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == list(range(len(records)))
        sent += records
        done += step
    return sent


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):  # noqa: ANN001, ANN201
    """Poll ``predicate`` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


# ============================================================================ imported traces
HEADER = ("Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\t"
          "Memory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\t"
          "Disk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]")


def write_bitbrains_trace(path: Path, start: int, n: int, seed: int, cpu_spike: float | None = None,
                          gap: tuple[int, int] | None = None, bursty_network: bool = False) -> pd.DataFrame:
    """A Bitbrains-format trace: ';\\t' separated, epoch seconds, ~300 s apart with drift.

    The network is a constant 3 KB/s in, 0.5 KB/s out, or with ``bursty_network`` a mostly
    quiet series with rare bursts of hundreds of KB/s, as on the real VMs.
    """
    rng = np.random.default_rng(seed)
    t = start + np.cumsum(np.r_[0, rng.integers(299, 302, n - 1)])
    cpu = np.clip(20 + 10 * np.sin(np.arange(n) / 288 * 2 * np.pi) + rng.normal(0, 2, n), 0, 100)
    if cpu_spike is not None:
        cpu[5] = cpu_spike
    mem_cap = np.where(np.arange(n) < n // 2, 4_000_000.0, 8_000_000.0)  # capacity changes mid-trace
    mem = mem_cap * 0.5
    frame = pd.DataFrame({"t": t, "cores": 2, "cap": 5200.0, "mhz": cpu * 52, "cpu": cpu, "memcap": mem_cap,
                          "mem": mem, "dr": 1.0, "dw": 2.0, "rx": 1024.0 * 3, "tx": 512.0})
    if bursty_network:
        burst = rng.random(n) < 0.03
        frame["rx"] = rng.lognormal(0.0, 1.0, n) + np.where(burst, rng.uniform(100, 800, n), 0.0)
        frame["tx"] = rng.lognormal(-0.5, 1.0, n) + np.where(burst, rng.uniform(50, 400, n), 0.0)
    if gap:
        frame = frame.drop(index=range(*gap))
    lines = [HEADER] + [";\t".join(str(v) for v in row) for row in frame.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")
    return frame
