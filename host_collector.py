"""Sample the Linux host this runs on into LINBORG records and feed them to the daemon.

    python main.py collect --daemon-url http://127.0.0.1:8000 [--interval 5] [--profile database]
    python host_collector.py --daemon-url http://127.0.0.1:8000 --name db-eu-3 --profile database

Every ``--interval`` seconds one record is taken from psutil and /proc (how each metric is
derived: Docs/COLLECTING.md), labelled with a contract ``state`` by the same rules the
simulator and importer use (``state_rules.StreamStateLabeler``), and handed to a
:class:`feed_client.DaemonFeed`, which survives a daemon restart by buffering and retrying.
The daemon groups the samples into 5-minute buckets. Runs until stopped (Ctrl-C / SIGTERM),
or for ``--duration`` seconds / ``--samples`` samples.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from common_utils import (
    host_name_to_server_name,
    isoformat_utc_ms,
    profile_for_host,
    setup_logging,
)
from config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    COLLECTOR,
    CPU_COMPONENTS,
    DATA_CONTRACT_DOC,
    DEFAULT_DAEMON_URL,
    FEED_FLUSH_ON_EXIT_SECONDS,
    INSTANCE_MAX_LENGTH,
    INSTANCE_PATTERN,
    SCALING_DOC,
    SHARD_HASH,
    UPTIME_MAX_DAYS,
    VALID_PROFILES,
)
from errors import EXIT_RUNTIME, EXIT_USAGE, ToolkitError, UsageError, run_cli
from feed_client import DaemonFeed, ShardedFeed, open_feed
from sharding import HASHES
from state_rules import StreamStateLabeler

logger = logging.getLogger(__name__)
COLLECTING_DOC = "Docs/COLLECTING.md"


class CollectorError(ToolkitError, RuntimeError):
    """A collector cannot start; the message says what, why and how to fix it."""


def resolve_identity(name: str | None, profile: str | None) -> tuple[str, str]:
    """The host's contract name and profile: flags first, then the name's prefix, then ``generic``."""
    try:
        server_name = host_name_to_server_name(name or socket.gethostname().split(".")[0])
    except ValueError as exc:
        raise CollectorError(f"{exc} ({DATA_CONTRACT_DOC}, Server names)") from exc
    if profile is not None and profile not in VALID_PROFILES:
        raise CollectorError(f"unknown profile '{profile}': the model knows {VALID_PROFILES} "
                             f"(Docs/SERVER_PROFILES.md)")
    try:
        chosen = profile_for_host(server_name, profile)
    except ValueError as exc:
        raise CollectorError(str(exc)) from exc
    if chosen is None:
        chosen = "generic"
        logger.warning("no --profile given and '%s' is not a convention name: reporting it as 'generic'. "
                       "Pass --profile (one of %s) so the model forecasts it with its role's patterns.",
                       server_name, ", ".join(VALID_PROFILES))
    return server_name, chosen


def _cpu_parts(before: Any, after: Any) -> dict[str, float]:
    """User / system / iowait / idle percentages between two ``psutil.cpu_times()`` readings (sum 100)."""
    def delta(*names: str) -> float:
        return sum(max(0.0, getattr(after, n, 0.0) - getattr(before, n, 0.0)) for n in names)

    parts = {"cpu_user_pct": delta("user", "nice"), "cpu_sys_pct": delta("system", "irq", "softirq", "steal"),
             "cpu_iowait_pct": delta("iowait"), "cpu_idle_pct": delta("idle")}
    total = sum(parts.values())
    if total <= 0:  # two readings within one clock tick
        return {"cpu_user_pct": 0.0, "cpu_sys_pct": 0.0, "cpu_iowait_pct": 0.0, "cpu_idle_pct": 100.0}
    return {k: 100.0 * v / total for k, v in parts.items()}


class HostSampler:
    """Turns successive readings of this host into LINBORG metric values.

    Rates (CPU shares, Java CPU, network) are measured between two calls of :meth:`sample`;
    the constructor takes the first reading.
    """

    def __init__(self, data_path: str = COLLECTOR.data_path,
                 nic_exclude: tuple[str, ...] = COLLECTOR.nic_exclude_prefixes,
                 java_names: tuple[str, ...] = COLLECTOR.java_process_names) -> None:
        if not Path(data_path).exists():
            raise CollectorError(f"--data-path {data_path} does not exist: name the mount point of the data "
                                 f"volume whose fill level is disk_usage_pct ({COLLECTING_DOC})")
        self.data_path = data_path
        self.nic_exclude = nic_exclude
        self.java_names = {n.lower() for n in java_names}
        self.cpu_count = psutil.cpu_count() or 1
        self._warned: set[str] = set()
        self._time = time.monotonic()
        self._cpu = psutil.cpu_times()
        self._net = self._net_bytes()
        self._java = self._java_cpu_seconds()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _net_bytes(self) -> tuple[int, int]:
        counters = psutil.net_io_counters(pernic=True)
        rx = tx = 0
        for nic, c in counters.items():
            if not nic.startswith(self.nic_exclude):
                rx += c.bytes_recv
                tx += c.bytes_sent
        return rx, tx

    def _java_cpu_seconds(self) -> dict[int, tuple[float, float]]:
        """pid -> (create time, user+system CPU seconds) of the Java processes."""
        found: dict[int, tuple[float, float]] = {}
        for proc in psutil.process_iter(["name", "create_time", "cpu_times"]):
            info = proc.info
            if (info.get("name") or "").lower() in self.java_names and info.get("cpu_times") is not None:
                times = info["cpu_times"]
                found[proc.pid] = (info.get("create_time") or 0.0, times.user + times.system)
        return found

    def _close_wait(self) -> tuple[int, int]:
        """(back-end, front-end) TCP sockets in CLOSE_WAIT; front = on a port this host listens on."""
        try:
            connections = psutil.net_connections(kind="tcp")
        except (psutil.AccessDenied, PermissionError):
            self._warn_once("close_wait", "cannot read this host's TCP sockets (permission denied): "
                            "back/front_close_wait are reported as 0 (%s)", COLLECTING_DOC)
            return 0, 0
        listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN and c.laddr}
        front = back = 0
        for c in connections:
            if c.status == psutil.CONN_CLOSE_WAIT:
                if c.laddr and c.laddr.port in listening:
                    front += 1
                else:
                    back += 1
        return back, front

    def sample(self) -> dict[str, float | int]:
        """The 14 LINBORG metrics since the previous call."""
        now = time.monotonic()
        elapsed = max(now - self._time, 1e-6)
        cpu = psutil.cpu_times()
        metrics: dict[str, float | int] = dict(_cpu_parts(self._cpu, cpu))

        java = self._java_cpu_seconds()
        java_seconds = 0.0
        for pid, (created, seconds) in java.items():
            previous = self._java.get(pid)
            if previous is not None and previous[0] == created:
                java_seconds += max(0.0, seconds - previous[1])
            elif created >= time.time() - elapsed:  # started during this interval: all of its CPU counts
                java_seconds += seconds
        java_pct = 100.0 * java_seconds / (elapsed * self.cpu_count)
        metrics["java_cpu_pct"] = min(java_pct, metrics["cpu_user_pct"] + metrics["cpu_sys_pct"])

        memory = psutil.virtual_memory()
        metrics["mem_used_pct"] = 100.0 * (1.0 - memory.available / memory.total) if memory.total else 0.0
        swap = psutil.swap_memory()
        metrics["swap_used_pct"] = 100.0 * swap.used / swap.total if swap.total else 0.0
        metrics["disk_usage_pct"] = float(psutil.disk_usage(self.data_path).percent)

        rx, tx = self._net_bytes()
        metrics["net_in_mb_s"] = max(0, rx - self._net[0]) / COLLECTOR.bytes_per_mb / elapsed
        metrics["net_out_mb_s"] = max(0, tx - self._net[1]) / COLLECTOR.bytes_per_mb / elapsed

        metrics["back_close_wait"], metrics["front_close_wait"] = self._close_wait()
        metrics["load_average"] = float(os.getloadavg()[0])
        days = int((time.time() - psutil.boot_time()) // 86400)
        if days > UPTIME_MAX_DAYS:
            self._warn_once("uptime", "this host has been up %d days; the contract caps uptime_days at %d "
                            "(a host past its patch cycle), so %d is reported", days, UPTIME_MAX_DAYS,
                            UPTIME_MAX_DAYS)
        metrics["uptime_days"] = min(days, UPTIME_MAX_DAYS)

        for key in ("mem_used_pct", "swap_used_pct", "disk_usage_pct", *CPU_COMPONENTS, "java_cpu_pct"):
            metrics[key] = round(min(100.0, max(0.0, float(metrics[key]))), 3)
        for key in ("net_in_mb_s", "net_out_mb_s", "load_average"):
            metrics[key] = round(float(metrics[key]), 4)
        # Rounding must not break the contract's CPU sum: idle is what rounding left, never below 0 (a
        # saturated host's rounded parts can add to 100.001, inside the contract's sum tolerance).
        metrics["cpu_idle_pct"] = max(0.0, round(100.0 - sum(float(metrics[k]) for k in CPU_COMPONENTS
                                                             if k != "cpu_idle_pct"), 3))
        self._time, self._cpu, self._net, self._java = now, cpu, (rx, tx), java
        return metrics


class HostCollector:
    """Samples this host on a fixed interval and feeds the records to the daemon."""

    def __init__(self, feed: DaemonFeed | ShardedFeed | None, server_name: str, profile: str, sampler: HostSampler,
                 interval: float = COLLECTOR.interval_seconds, time_scale: float = 1.0) -> None:
        self.feed = feed
        self.server_name = server_name
        self.profile = profile
        self.sampler = sampler
        self.interval = interval
        self.labeler = StreamStateLabeler(profile)
        self.samples = 0
        # time_scale > 1 stamps samples on an accelerated clock (demos and tests: an hour of
        # buckets in a minute); the measured values stay real.
        self.time_scale = time_scale
        self._clock_origin = (pd.Timestamp.now(tz="UTC"), time.monotonic())

    def record(self) -> dict[str, Any]:
        """One contract record of this host, now."""
        metrics = self.sampler.sample()
        if self.time_scale == 1.0:
            stamp = pd.Timestamp.now(tz="UTC")
        else:
            wall, mono = self._clock_origin
            stamp = wall + pd.Timedelta(seconds=(time.monotonic() - mono) * self.time_scale)
        state = self.labeler.label(stamp, metrics)
        return {"timestamp": isoformat_utc_ms(stamp), "server_name": self.server_name, "profile": self.profile,
                "state": state, **metrics}

    def run(self, stop: threading.Event, duration: float | None = None, max_samples: int | None = None) -> None:
        """Sample and deliver until ``stop`` is set, ``duration`` has passed or ``max_samples`` were taken."""
        if self.feed is None:
            raise CollectorError("a collector without a daemon feed can only take records (--print)")
        started = time.monotonic()
        next_tick = started + self.interval
        while not stop.is_set():
            if stop.wait(max(0.0, next_tick - time.monotonic())):
                break
            next_tick += self.interval
            if time.monotonic() > next_tick:  # fell behind (suspended, overloaded): skip, do not burst
                next_tick = time.monotonic() + self.interval
            self.feed.put([self.record()])
            self.samples += 1
            self.feed.flush()
            if self.samples == 1 or self.samples % 60 == 0:
                s = self.feed.stats
                logger.info("%s (%s): %d samples, %d stored by the daemon, %d waiting, %d rejected, %d dropped",
                            self.server_name, self.profile, self.samples, s.stored, self.feed.pending,
                            s.rejected, s.dropped_buffer_full)
            if (max_samples is not None and self.samples >= max_samples) or \
                    (duration is not None and time.monotonic() - started >= duration):
                break


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the host collector (``main.py collect``)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemon-url", action="append", metavar="URL",
                        help=f"inference daemon (default {DEFAULT_DAEMON_URL}); repeat for the shards of a sharded "
                             f"fleet, in shard order (--daemon-url of shard 0/N first): each record goes to the "
                             f"shard that owns its server ({SCALING_DOC})")
    parser.add_argument("--shard-hash", choices=tuple(HASHES), default=SHARD_HASH,
                        help="with several --daemon-url: the daemons' --shard-hash (default %(default)s)")
    parser.add_argument("--interval", type=float, default=COLLECTOR.interval_seconds,
                        help="seconds between samples (default %(default)s)")
    parser.add_argument("--name", help="server name to report (default: this host's name, lower-cased)")
    parser.add_argument("--profile", choices=VALID_PROFILES,
                        help="this host's role (default: from a convention name, else generic)")
    parser.add_argument("--data-path", default=COLLECTOR.data_path,
                        help="mount point of the data volume for disk_usage_pct (default %(default)s)")
    parser.add_argument("--api-key",
                        help=f"daemon API key with the ingest scope (default: the first ingest key in the file "
                             f"${API_KEY_FILE_ENV}, else ${API_KEY_ENV})")
    parser.add_argument("--instance", default=None,
                        help="the 'instance' label this host has in Prometheus (e.g. db1.example:9100), put on its "
                             "forecast series and alerts (default: this host's fully qualified name)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    parser.add_argument("--samples", type=int, help="stop after this many samples")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="stamp samples on a clock running this many times faster (demos, tests; default 1)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print one record as JSON and exit (nothing is sent)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the collector; 0 on a clean stop, 3 when records stayed undelivered; raises when it cannot start
    (exit 2, ``errors.run_cli``)."""
    import json

    if args.interval <= 0 or args.time_scale <= 0:
        raise UsageError("--interval and --time-scale must be positive")
    name, profile = resolve_identity(args.name, args.profile)
    sampler = HostSampler(args.data_path)
    if args.print_only:
        time.sleep(min(args.interval, 1.0))  # rates need two readings
        collector = HostCollector(None, name, profile, sampler, args.interval)
        print(json.dumps(collector.record(), indent=2))
        return 0
    urls = args.daemon_url or [DEFAULT_DAEMON_URL]
    feed = open_feed(urls, args.api_key, args.shard_hash)
    if feed is None:
        return EXIT_USAGE  # open_feed logged why the key file cannot be used
    instance = args.instance or socket.getfqdn()
    if not re.fullmatch(INSTANCE_PATTERN, instance) or len(instance) > INSTANCE_MAX_LENGTH:
        raise UsageError(f"--instance '{instance}' cannot be a Prometheus label value here: printable characters "
                         f"without spaces or quotes, at most {INSTANCE_MAX_LENGTH}", None,
                         "pass --instance host:port as Prometheus shows it")
    feed.instances[name] = instance
    collector = HostCollector(feed, name, profile, sampler, args.interval, args.time_scale)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("collecting %s as '%s' (%s) every %.1f s into %s", socket.gethostname(), name, profile,
                args.interval, ", ".join(urls))
    collector.run(stop, duration=args.duration, max_samples=args.samples)
    left = feed.close(FEED_FLUSH_ON_EXIT_SECONDS)
    s = feed.stats
    logger.info("stopped after %d samples: %d stored, %d duplicates, %d rejected, %d dropped (buffer full), "
                "%d undelivered", collector.samples, s.stored, s.duplicates, s.rejected, s.dropped_buffer_full, left)
    return EXIT_RUNTIME if left else 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), "collect failed"))
