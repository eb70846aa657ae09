"""Helpers and constants the tests share (fixtures live in tests/conftest.py).

Waits poll a condition (:func:`wait_until`) instead of sleeping a fixed time; the timeouts below are
upper bounds, not the time a test takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pandas as pd

from common_utils import free_loopback_port
from config import PROJECT_ROOT
from metrics_generator import FleetSimulator

T = TypeVar("T")

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


# ============================================================================ waiting on conditions
WAIT_TIMEOUT_SECONDS = 30.0  # how long a test waits for something to happen before it fails
WAIT_INTERVAL_SECONDS = 0.2  # how often the condition is polled
DAEMON_START_TIMEOUT_SECONDS = 60.0  # a daemon process answering /health (imports torch, loads a model)


def wait_until(predicate: Callable[[], T], timeout: float = WAIT_TIMEOUT_SECONDS,
               interval: float = WAIT_INTERVAL_SECONDS, what: str = "the condition") -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Raises AssertionError naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for(predicate, timeout: float = WAIT_TIMEOUT_SECONDS, interval: float = WAIT_INTERVAL_SECONDS):  # noqa: ANN001, ANN201
    """:func:`wait_until` under its older name (a truthy value, or AssertionError on timeout)."""
    return wait_until(predicate, timeout=timeout, interval=interval)


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

    def wait_ready(self, timeout: float = DAEMON_START_TIMEOUT_SECONDS) -> None:
        """Wait for /health to answer 200; RuntimeError with the log if the process exits first."""

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout=timeout, what=f"the daemon on {self.url} to answer /health")
        except AssertionError:
            raise TimeoutError(self.log.read_text()[-3000:]) from None

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
