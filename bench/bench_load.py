"""The daemon under sustained load, on loopback: latency percentiles and the event loop's health.

    python -m bench.bench_load --model-dir models/latest [--seconds 10]

A real daemon process (uvicorn) with a 90-server fleet, then, each for ``--seconds``:

1. ``POST /feed`` from 8 clients, batches of 500 records (5-second agents, many samples per bucket);
2. ``POST /feed`` from 8 clients, batches of 5;
3. ``GET /predictions/current`` from 16 clients;

while one more client asks ``GET /health`` every 50 ms. ``/health`` on the idle daemon is the
baseline measured in the same run: the ratio says how much the load delays the event loop.
``--compare-root OTHER_CHECKOUT`` runs the same loads against the daemon of another checkout
(e.g. the previous release, from ``git worktree add``) in the same run.
Request loops are bounded in time and stop by themselves; only 127.0.0.1 is contacted.
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

import httpx
import numpy as np
import pandas as pd

from common_utils import free_loopback_port, quiet_library_noise
from config import PROJECT_ROOT
from metrics_generator import FleetSimulator, fleet_from_total

KEY = "bench-key"
HEALTH_EVERY_SECONDS = 0.05


def start_daemon(model_dir: Path, store: Path, root: Path = PROJECT_ROOT) -> tuple[subprocess.Popen, str]:
    """The daemon on a free loopback port with limits high enough not to be what is measured."""
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "tft_inference.py", "--daemon", "--port", str(port), "--model-dir",
                             str(model_dir), "--store", str(store), "--rate-per-minute", "1e9", "--rate-burst",
                             "1000000"], cwd=root, env={**os.environ, "TFT_API_KEY": KEY},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the daemon did not start")


def payloads(n_payloads: int, batch: int, seed: int) -> list[list[dict]]:
    """Distinct records from the last day, as 5-second agents send them (no future, no duplicates)."""
    now = pd.Timestamp.now(tz="UTC").floor("5min")
    sim = FleetSimulator(fleet=fleet_from_total(90), seed=seed, start=now - pd.Timedelta(hours=20))
    base = sim.records(sim.advance(12 * 12))
    out, k = [], 0
    for _ in range(n_payloads):
        chunk = []
        while len(chunk) < batch:
            record = base[k % len(base)]
            offset = 5 * (1 + (k // len(base)) % 59)  # another sample of the same bucket, seconds later
            stamp = pd.Timestamp(record["timestamp"]) + pd.Timedelta(seconds=offset)
            chunk.append({**record, "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")})
            k += 1
        out.append(chunk)
    return out


def hammer(url: str, clients: int, seconds: float, request) -> tuple[list[float], int, int]:  # noqa: ANN001
    """``clients`` threads calling ``request(client, i)`` until the time is up: (latencies, requests, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
            i = w
            while time.monotonic() < stop:
                began = time.perf_counter()
                ok = request(client, i)
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    errors[0] += 0 if ok else 1
                i += clients

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(latencies), errors[0]


def probe_health(url: str, stop: threading.Event, out: list[float]) -> None:
    """``GET /health`` every HEALTH_EVERY_SECONDS until ``stop``."""
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            began = time.perf_counter()
            client.get("/health")
            out.append(time.perf_counter() - began)
            time.sleep(HEALTH_EVERY_SECONDS)


def under_health_probe(url: str, work) -> tuple[object, list[float]]:  # noqa: ANN001
    """Run ``work()`` while /health is probed; its result and the probe's latencies."""
    stop, health = threading.Event(), []
    prober = threading.Thread(target=probe_health, args=(url, stop, health))
    prober.start()
    try:
        result = work()
    finally:
        stop.set()
        prober.join()
    return result, health


def pct(values: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(np.array(values) * 1000.0, q)) if values else float("nan")


def measure(model_dir: Path, seconds: float, root: Path) -> list[tuple[str, object, list[float]]]:
    """The idle baseline and the three loads against a fresh daemon started from ``root``."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_daemon(model_dir.resolve(), Path(tmp) / "store.sqlite3", root)
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
                now = pd.Timestamp.now(tz="UTC").floor("5min")
                sim = FleetSimulator(fleet=fleet_from_total(90), seed=1, start=now - pd.Timedelta(hours=4))
                assert client.post("/feed", json={"records": sim.records(sim.advance(4 * 12))}).status_code == 200
                deadline = time.time() + 120
                while client.get("/status").json()["cycles"] < 1 and time.time() < deadline:
                    time.sleep(0.5)
            _, idle = under_health_probe(url, lambda: time.sleep(min(seconds, 5.0)))
            rows = [("idle daemon", None, idle)]
            for batch in (500, 5):
                data = payloads(2_000 if batch == 5 else 400, batch, seed=batch)

                def post(client: httpx.Client, i: int, data: list[list[dict]] = data) -> bool:
                    return client.post("/feed", json={"records": data[i % len(data)]}).status_code == 200

                result, health = under_health_probe(url, lambda post=post: hammer(url, 8, seconds, post))
                rows.append((f"POST /feed x8, batch {batch}", (result, batch), health))

            def current(client: httpx.Client, _: int) -> bool:
                return client.get("/predictions/current").status_code == 200

            result, health = under_health_probe(url, lambda: hammer(url, 16, seconds, current))
            rows.append(("GET /predictions/current x16", (result, 0), health))
        finally:
            proc.terminate()
            proc.wait(10)
    return rows


def report(title: str, rows: list[tuple[str, object, list[float]]], seconds: float) -> None:
    """One table: request rate, latency percentiles, and /health against the idle baseline."""
    idle_p99 = pct(rows[0][2], 99)
    print(f"{title}: daemon on loopback, 90 servers; each load {seconds:.0f} s; /health probed every "
          f"{HEALTH_EVERY_SECONDS * 1000:.0f} ms (idle /health p99 = baseline)")
    print(f"{'load':<32}{'req/s':>8}{'rec/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
          f"{'health p50':>11}{'health p99':>11}{'vs idle':>8}")
    for name, measured, health in rows:
        if measured is None:
            print(f"{name:<32}{'':>8}{'':>9}{'':>8}{'':>8}{'':>7}{pct(health, 50):>11.1f}{pct(health, 99):>11.1f}"
                  f"{1.0:>7.1f}x")
            continue
        (latencies, requests, errors), batch = measured
        rate = requests / seconds
        records = f"{rate * batch:,.0f}" if batch else "-"
        print(f"{name:<32}{rate:>8.0f}{records:>9}{pct(latencies, 50):>8.1f}{pct(latencies, 99):>8.1f}{errors:>7}"
              f"{pct(health, 50):>11.1f}{pct(health, 99):>11.1f}{pct(health, 99) / idle_p99:>7.1f}x")


def main() -> None:
    """Run the loads (against this checkout, and another one if asked) and print the tables."""
    quiet_library_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/latest"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--compare-root", type=Path, default=None, help="another checkout's daemon, same loads")
    args = parser.parse_args()
    runs = [("this checkout", PROJECT_ROOT)] + ([("compare: " + str(args.compare_root), args.compare_root)]
                                                if args.compare_root else [])
    results = [(title, measure(args.model_dir, args.seconds, root)) for title, root in runs]
    for title, rows in results:
        report(title, rows, args.seconds)


if __name__ == "__main__":
    main()
