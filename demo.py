"""The one-command demo: model, daemon, live stream and dashboard together.

    python main.py demo            # then open the printed dashboard URL; Ctrl-C stops everything

On a fresh checkout it first generates a small fleet and trains a small model (measured:
about DEMO.first_model_minutes on an idle 2-core CPU), unless ``models/latest`` already holds one. Then
it starts, each as its own process: the inference daemon (fresh store, a random API key), the
demo stream (``metrics_generator.py --stream``, one 5-minute bucket per second) and the
Streamlit dashboard (started in the repository root, so it reads ``.streamlit/config.toml``).
Their output goes to ``<work dir>/<name>.log``, so the dashboard URL stays the last line of the
start-up output. The dashboard runs in demo mode (``TFT_DASHBOARD_DEMO=1``): its Healthy / Degrading /
Critical buttons switch the stream, with the daemon's one random key, which holds every scope (admin
included); a dashboard started any other way shows no button and uses no admin key (Docs/DASHBOARD.md).
The daemon is awaited through :class:`daemon_client.DaemonClient`, like every other client of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from config import (
    API_KEY_ENV,
    DAEMON_PORT,
    DAEMON_WAIT_POLL_SECONDS,
    DASHBOARD_DAEMON_URL_ENV,
    DASHBOARD_DEMO_ADMIN_KEY_ENV,
    DASHBOARD_DEMO_ENV,
    DASHBOARD_PORT,
    DASHBOARD_TIMEOUT_SECONDS,
    DEFAULT_HOST,
    DEMO,
    DEMO_SERVERS,
    LATEST_MODEL_LINK,
    MODELS_DIR,
    PROJECT_ROOT,
    TRAINING_DATA_FILE,
)
from daemon_client import DaemonClient, DaemonError
from errors import RuntimeFailure, run_cli

logger = logging.getLogger(__name__)
DEMO_TRAIN_ARGS = ["--epochs", "4", "--windows-per-epoch", "8192", "--val-windows", "2048", "--holdout-hours", "24",
                   "--no-statistical"]


def ensure_model(models_dir: Path, work_dir: Path = DEMO.work_dir) -> Path:
    """models/latest, training a small one first (on a fleet generated in ``work_dir``) if there is none."""
    from tft_model import missing_model_files  # deferred: tft_model imports torch; `main.py demo --help` needs none

    latest = models_dir / LATEST_MODEL_LINK
    if latest.exists() and not missing_model_files(latest):
        logger.info("using the existing model %s", latest.resolve().name)
        return latest
    data_dir = work_dir / "training"
    logger.info("no model in %s yet: generating a %d-server, %d-day fleet and training a small model on it "
                "(about %d minutes on an idle 2-core CPU; later runs reuse it)", models_dir, DEMO_SERVERS,
                DEMO.train_hours // 24, DEMO.first_model_minutes)
    if not (data_dir / TRAINING_DATA_FILE).exists():
        _run([sys.executable, "metrics_generator.py", "--servers", str(DEMO_SERVERS), "--hours",
              str(DEMO.train_hours), "--out_dir", str(data_dir)])
    logger.info("training the demo model")
    _run([sys.executable, "tft_trainer.py", "--data", str(data_dir / TRAINING_DATA_FILE), "--models-dir",
          str(models_dir), *DEMO_TRAIN_ARGS])
    return latest


def _run(args: list[str]) -> None:
    result = subprocess.run(args, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        raise RuntimeFailure(f"{' '.join(args[1:3])} failed with exit code {result.returncode}")


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait for a web page that is not the daemon's (the dashboard's health check) to answer."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeFailure(f"{url} did not come up: its process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=DASHBOARD_TIMEOUT_SECONDS).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(DAEMON_WAIT_POLL_SECONDS)
    raise RuntimeFailure(f"{url} did not answer within {timeout:.0f}s")


def _log_tail(path: Path, lines: int = DEMO.log_tail_lines) -> str:
    """The last ``lines`` lines of a child's log, to say why it stopped."""
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(tail)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(models_dir: Path, host: str, daemon_port: int, dashboard_port: int, duration: float | None,
             servers: int, work_dir: Path = DEMO.work_dir) -> int:
    """Start everything, print the URLs, stop cleanly on Ctrl-C (or after ``duration`` seconds)."""
    model_dir = ensure_model(models_dir, work_dir)
    api_key = secrets.token_urlsafe(18)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Each demo starts from a fresh store: the stream pre-fills its own history, and an old run's
    # simulated clock would only confuse the new one.
    store = work_dir / "demo_store.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    env = {**os.environ, API_KEY_ENV: api_key}
    daemon_url = f"http://{host}:{daemon_port}"
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs = {name: work_dir / f"{name}.log" for name in ("daemon", "stream", "dashboard")}

    def start(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # Each child logs to its own file, not to this terminal: the URL stays the last start-up line.
        logger.info("starting the %s (log: %s)", name, logs[name])
        with logs[name].open("wb") as log:
            proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env={**env, **(extra_env or {})},
                                    stdout=log, stderr=subprocess.STDOUT)
        children.append((name, proc))
        return proc

    def failure(name: str, what: str) -> RuntimeFailure:
        # What went wrong with a child, with the end of its log (which is not on this terminal).
        return RuntimeFailure(f"{what}; the end of {logs[name]}:\n{_log_tail(logs[name])}")

    def stop_all(*_: object) -> None:
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(children):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            logger.info("stopped %s", name)

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the demo as cleanly as Ctrl-C
    try:
        daemon = start("daemon", [sys.executable, "tft_inference.py", "--daemon", "--host", host, "--port",
                                  str(daemon_port), "--model-dir", str(model_dir), "--store", str(store),
                                  "--max-future-seconds", str(DEMO.max_future_seconds)])
        with DaemonClient(daemon_url, api_key) as client:
            try:
                client.wait_until_healthy(DEMO.start_timeout_seconds, still_starting=lambda: daemon.poll() is None)
            except DaemonError as exc:
                raise failure("daemon", exc.summary) from exc
        start("stream", [sys.executable, "metrics_generator.py", "--stream", "--daemon-url", daemon_url, "--servers",
                         str(servers), "--scenario", "healthy"])
        dashboard = start("dashboard", [sys.executable, "-m", "streamlit", "run", "tft_dashboard_web.py",
                                        "--server.port", str(dashboard_port), "--server.address", host,
                                        "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                          # Demo mode: its buttons, with the daemon's one key as the admin key.
                          {DASHBOARD_DAEMON_URL_ENV: daemon_url, DASHBOARD_DEMO_ENV: "1",
                           DASHBOARD_DEMO_ADMIN_KEY_ENV: api_key})
        try:
            _wait_http(f"http://{host}:{dashboard_port}/_stcore/health", DEMO.start_timeout_seconds, dashboard)
        except RuntimeError as exc:
            raise failure("dashboard", str(exc)) from exc
        # The URL is the last line: it is what to open.
        print(f"\n  Daemon API: {daemon_url}/docs\n  API key:    {api_key}\n"
              f"  Logs:       {work_dir}/{{daemon,stream,dashboard}}.log\n"
              f"  Demo mode:  the Healthy / Degrading / Critical buttons in the dashboard's sidebar\n"
              f"  Stop:       Ctrl-C\n  Dashboard:  http://{host}:{dashboard_port}", flush=True)
        began = time.time()
        while duration is None or time.time() - began < duration:
            for name, proc in children:
                if proc.poll() is not None:
                    raise failure(name, f"the {name} stopped unexpectedly (exit code {proc.returncode})")
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except RuntimeError:  # a child or the daemon failed (exit 3 by errors.run_cli): stop the others first
        stop_all()
        raise
    stop_all()
    return 0


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the demo (``main.py demo``)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--work-dir", type=Path, default=DEMO.work_dir,
                        help="where the demo keeps its training fleet and its store")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DAEMON_PORT, help="daemon port")
    parser.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT)
    parser.add_argument("--servers", type=int, default=DEMO_SERVERS, help="servers in the live stream")
    parser.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments (a failure raises: exit 3, ``errors.run_cli``)."""
    return run_demo(args.models_dir, args.host, args.port, args.dashboard_port, args.duration, args.servers,
                    args.work_dir)


if __name__ == "__main__":
    from common_utils import setup_logging

    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), "demo failed"))
