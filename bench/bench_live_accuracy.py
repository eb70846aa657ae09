"""Live accuracy: what scoring matured forecasts costs per cycle, and what it reports on the demo stream.

    python -m bench.bench_live_accuracy --model models/latest [--servers 1000] [--demo-hours 8]

1. **Cost at fleet scale** (in-process ``Daemon``, ``--servers`` simulated servers): forecast cycles
   are run at the origins whose forecasts mature at the last ``--targets`` buckets for all three
   horizons (30 min, 1 h, 8 h), then cycles at those buckets, which score ``servers x 3`` matured
   forecasts each. Printed per cycle: the scoring step (read the stored forecasts, score, update the
   bins and the band calibration, persist, drift, gauges) next to the forecast step measured in the
   same cycles, and their ratio.
2. **The demo stream** (``--demo-hours``, 0 to skip): a daemon process and the demo's stream
   (``metrics_generator.py --stream``, one 5-minute bucket per second, healthy scenario, the demo's
   server count) run until the daemon has scored ``--demo-hours`` simulated hours of targets; then
   ``/accuracy`` (24 h window, fleet-wide) is printed per metric and horizon: coverage of the served
   and of the model's own band, skill against persistence, the band multipliers.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common_utils import free_loopback_port, quiet_library_noise, setup_logging
from config import DEMO, DEMO_SERVERS, HORIZONS, PROJECT_ROOT, STEPS_PER_HOUR
from contract import bucket_of_ns
from daemon_state import Daemon, DaemonSettings
from metrics_generator import FleetSimulator, fleet_from_total

logger = logging.getLogger("bench.bench_live_accuracy")
STEPS = list(HORIZONS.values())


def cost_at_scale(model: Path, servers: int, targets: int, seed: int = 3,
                  live_selection: bool = True) -> dict[str, float]:
    """Median milliseconds per cycle of scoring and forecasting at ``servers`` servers.

    The simulated servers are not in the model's mapping, so with ``live_selection`` every one of
    them is served the last value: the selection's whole cost (judging every server, moving every
    band) is in both steps.
    """
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(DaemonSettings(model_dir=model, store_path=Path(tmp) / "store.sqlite3",
                                       established_hours=0.0, live_selection=live_selection))
        history = daemon.engine.spec.encoder_length + max(STEPS) + targets + 2
        sim = FleetSimulator(fleet=fleet_from_total(servers), seed=seed, start="2026-03-02T00:00:00Z")
        began = time.perf_counter()
        for _ in range(0, history, STEPS_PER_HOUR):
            daemon.ingest(sim.records(sim.advance(STEPS_PER_HOUR)))
        logger.info("fed %d servers x %d buckets in %.0f s", servers, history, time.perf_counter() - began)
        newest = daemon.fleet.newest_bucket
        last_targets = list(range(newest - targets + 1, newest + 1))
        origins = sorted({t - s for t in last_targets for s in STEPS})
        for origin in origins:  # the forecasts that mature at the last buckets, for every horizon
            daemon.run_cycle(origin)
        scoring, forecasting = [], []
        for target in last_targets:
            t0 = time.perf_counter()
            daemon._score_matured(target)  # noqa: SLF001 - the step measured on its own
            t1 = time.perf_counter()
            with daemon.lock:
                daemon.engine.forecast(daemon.fleet, target)
            t2 = time.perf_counter()
            scoring.append((t1 - t0) * 1000.0)
            forecasting.append((t2 - t1) * 1000.0)
        matured = daemon.accuracy.rows("24h")[0]["n"]
        daemon.close()
    return {"servers": servers, "cycles": targets, "scoring_ms": statistics.median(scoring),
            "forecast_ms": statistics.median(forecasting), "matured_per_metric_and_horizon": matured}


def demo_stream(model: Path, hours: float, servers: int, timeout: float) -> dict:
    """Run a daemon and the demo stream until ``hours`` of targets are scored; the /accuracy document."""
    key = secrets.token_urlsafe(18)
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TFT_API_KEY": key}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite3"
        daemon = subprocess.Popen([sys.executable, "tft_inference.py", "--daemon", "--port", str(port), "--model-dir",
                                   str(model), "--store", str(store), "--max-future-seconds",
                                   str(DEMO.max_future_seconds)], cwd=PROJECT_ROOT, env=env,
                                  stdout=open(Path(tmp) / "daemon.log", "wb"), stderr=subprocess.STDOUT)
        stream = None
        try:
            headers = {"X-API-Key": key}
            _wait(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120)
            stream = subprocess.Popen([sys.executable, "metrics_generator.py", "--stream", "--daemon-url", url,
                                       "--servers", str(servers), "--scenario", "healthy"], cwd=PROJECT_ROOT,
                                      env=env, stdout=open(Path(tmp) / "stream.log", "wb"),
                                      stderr=subprocess.STDOUT)
            deadline = time.time() + timeout
            while time.time() < deadline:
                body = httpx.get(f"{url}/accuracy", headers=headers, timeout=10).json()
                since, last = body.get("scored_since"), body.get("last_scored_target")
                if since and last:
                    span = (bucket_of_ns(_ns(last)) - bucket_of_ns(_ns(since))) / STEPS_PER_HOUR
                    if span >= hours:
                        logger.info("scored %.1f simulated hours (%s .. %s)", span, since, last)
                        return httpx.get(f"{url}/accuracy", params={"window": "24h", "profile": "all"},
                                         headers=headers, timeout=10).json()
                time.sleep(5)
            raise TimeoutError(f"fewer than {hours} h scored within {timeout:.0f} s")
        finally:
            for proc in (stream, daemon):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(15)


def _ns(iso: str) -> int:
    import pandas as pd

    return int(pd.Timestamp(iso).value)


def _wait(predicate, timeout: float) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the daemon did not come up")


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (e.g. models/latest)")
    parser.add_argument("--servers", type=int, default=1000, help="fleet size for the cost part (0 skips it)")
    parser.add_argument("--targets", type=int, default=5, help="scoring cycles timed")
    parser.add_argument("--demo-hours", type=float, default=8.0, help="simulated hours of the demo stream (0 skips)")
    parser.add_argument("--demo-servers", type=int, default=DEMO_SERVERS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the demo part may take")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    if args.servers:
        costs = {flag: cost_at_scale(args.model, args.servers, args.targets, live_selection=flag)
                 for flag in (False, True)}
        for flag, cost in costs.items():
            print(f"\nscoring cost at {cost['servers']} servers ({cost['cycles']} cycles, "
                  f"{cost['matured_per_metric_and_horizon']} matured forecasts per metric x horizon), live selection "
                  f"{'on (every server served the last value)' if flag else 'off'}:")
            print(f"  scoring  {cost['scoring_ms']:8.1f} ms/cycle (median)\n  forecast {cost['forecast_ms']:8.1f} "
                  f"ms/cycle (median, same cycles)\n  ratio    {cost['scoring_ms'] / cost['forecast_ms']:8.3f}")
        on, off = costs[True], costs[False]
        print(f"\nlive selection on / off, same run: scoring x{on['scoring_ms'] / off['scoring_ms']:.2f}, forecast "
              f"x{on['forecast_ms'] / off['forecast_ms']:.2f}, both x"
              f"{(on['scoring_ms'] + on['forecast_ms']) / (off['scoring_ms'] + off['forecast_ms']):.2f}")
    if args.demo_hours:
        body = demo_stream(args.model, args.demo_hours, args.demo_servers, args.timeout)
        print(f"\ndemo stream ({args.demo_servers} servers, healthy), model {body['model_version']}, scored "
              f"{body['scored_since']} .. {body['last_scored_target']}, window 24h, fleet-wide:")
        print(f"  {'metric':<18}{'horizon':<8}{'n':>6}{'coverage':>10}{'unadjusted':>12}{'skill':>8}"
              f"{'q-risk':>8}{'scale lo/hi':>14}")
        for row in body["rows"]:
            if not row["n"]:
                continue

            def fmt(value: float | None, spec: str) -> str:
                return "-" if value is None else format(value, spec)

            print(f"  {row['metric']:<18}{row['horizon']:<8}{row['n']:>6}{fmt(row['coverage_p10_p90'], '.3f'):>10}"
                  f"{fmt(row['coverage_unadjusted'], '.3f'):>12}{fmt(row['skill_vs_persistence'], '+.3f'):>8}"
                  f"{fmt(row['qrisk_50'], '.3f'):>8}{row['band_scale_low']:>7.2f}/{row['band_scale_high']:.2f}")
        for label in HORIZONS:
            picked = [r for r in body["rows"] if r["horizon"] == label and r["n"]]
            if picked:
                cov = statistics.mean(r["coverage_p10_p90"] for r in picked)
                skill = statistics.mean(r["skill_vs_persistence"] for r in picked
                                        if r["skill_vs_persistence"] is not None)
                print(f"  mean over the metrics at {label}: coverage {cov:.3f}, skill {skill:+.3f}")
        print(f"  model_degraded warnings: {len(body['model_degraded'])}")
        for alert in body["model_degraded"]:
            print(f"    {alert['reason'][:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
