"""Capacity of one shard: forecast cycles at 1,000-10,000 servers, their phases, the forward's floor, memory per
server, the feed's cost at 10,000 servers every 15 s and the start-up read, with ratios against a baseline
checkout measured in the same invocation.

    python -m bench.bench_scale --model-dir models/latest --compare-root ../base [--servers 1000 10000] [--quick]

Each checkout (this one, and ``--compare-root``: e.g. ``git worktree add ../base <base commit>``) runs the same
measurements in its own child process (flat modules: one checkout per interpreter), alternately, on the same
fleet (same seed: the simulator is deterministic). Every child writes each server's decoded quantiles; the
parent asserts they are identical between the checkouts (exact optimisations only) and prints the ratios.

Phases of a cycle (wall time, summed over its forward passes): ``windows`` (the per-server loop reading each
ring: encoder and yesterday's buckets), ``yesterday`` (the yesterday inputs from those buckets), ``settled``
(the level-shift cut), ``tensors`` (rows and the batch), ``forward`` (the model, its decode of normalised
outputs included), ``decode`` (quantiles to arrays), ``results`` (display, bands, risk, the per-server
results). ``floor``: the same forward passes on the same prepared tensors, nothing else: the compute floor
of a cycle with this model on this machine.

A fleet of N servers is built from a simulated 1,000-server fleet (``--sim-servers``) whose rings are copied
under new names (simulating 10,000 servers over 30 h takes minutes); every server has full history.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]


# ============================================================================ child: one checkout
def _child(args: argparse.Namespace) -> None:
    """Measure in this interpreter (cwd = the checkout being measured) and write JSON + quantiles."""
    import torch

    import forecast_engine as fe
    from bench.bench_inference import fleet_windows
    from common_utils import quiet_library_noise
    from tft_model import load_model

    quiet_library_noise()
    torch.set_num_threads(args.threads)
    engine = fe.ForecastEngine(load_model(args.model_dir))
    spec = engine.spec
    out: dict = {"root": str(Path.cwd()), "threads": torch.get_num_threads(),
                 "parameters": sum(p.numel() for p in engine.loaded.model.parameters()),
                 "history_buckets": spec.history_buckets, "cycles": {}}
    hours = (spec.history_buckets + 12) // 12 + 1
    base, origin, _ = fleet_windows(args.sim_servers, hours, seed=args.seed)
    out["ring_capacity"] = base.capacity

    # ---- phase timers: wrap the engine's steps (the same names exist in the baseline)
    phases: dict[str, float] = {}
    captured: list = []

    def timed(owner, name: str, label: str, capture: bool = False) -> None:  # noqa: ANN001
        inner = getattr(owner, name)

        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            began = time.perf_counter()
            result = inner(*a, **k)
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - began
            if capture:
                captured.append(a[0])
            return result
        setattr(owner, name, wrapper)

    model = engine.loaded.model
    for name, label in (("yesterdays", "yesterday"), ("settled", "settled"), ("_ready_results", "results"),
                        ("_predict_slice", "_slice")):
        if hasattr(engine, name):
            timed(engine, name, label)
    timed(model, "forward", "forward", capture=True)
    timed(fe, "decode_quantiles", "decode")

    for n in args.servers:
        fleet = _scaled(base, n)
        engine.forecast(fleet, origin)  # warm-up
        runs = []
        for _ in range(args.repeat):
            phases.clear()
            captured.clear()
            began = time.perf_counter()
            result = engine.forecast(fleet, origin)
            total = time.perf_counter() - began
            slices = phases.pop("_slice", 0.0)
            known = sum(v for k, v in phases.items() if k not in ("forward", "decode"))
            runs.append({"cycle": total, **phases, "tensors": slices - phases.get("forward", 0.0)
                         - phases.get("decode", 0.0),
                         "windows": total - known - slices})
        assert result.forecast_count == n, (result.forecast_count, n)
        # the floor: the forward alone on this cycle's prepared tensors, repeated
        floors, batches = [], list(captured)
        forward = type(model).forward.__get__(model)  # the unwrapped forward: nothing is timed or captured
        with torch.inference_mode():
            for _ in range(args.repeat):
                began = time.perf_counter()
                for x in batches:
                    forward(x)
                floors.append(time.perf_counter() - began)
        cycle = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        cycle["cycle_min"] = float(min(r["cycle"] for r in runs))
        cycle["floor"] = float(np.median(floors))
        cycle["forward_passes"] = len(batches)
        out["cycles"][str(n)] = cycle
        names = sorted(result.servers)
        np.save(Path(args.out) / f"q{n}.npy", np.stack([np.frombuffer(result.servers[s].horizon_blob, np.float32)
                                                        for s in names]))
        fan = result.servers[names[0]].fleet_fan
        np.save(Path(args.out) / f"fan{n}.npy", np.stack([fan[m][q] for m in fan for q in ("p10", "p50", "p90")]))
        del fleet, result
    out["memory"] = _memory(base, origin, args.memory_servers)
    out["feed"] = _feed(base, args.feed_servers)
    out["startup"] = _startup(args.startup_servers, args.startup_days, base.capacity)
    (Path(args.out) / "result.json").write_text(json.dumps(out, indent=1))


def _scaled(base, n: int):  # noqa: ANN001, ANN202
    """A fleet of ``n`` servers: the simulated ones, then copies of their rings under new names."""
    from metrics_store import FleetWindows

    fleet = FleetWindows(base.capacity)
    names = list(base.servers)
    for i in range(n):
        source = base.servers[names[i % len(names)]]
        fleet.servers[names[i % len(names)] if i < len(names) else f"{names[i % len(names)]}-c{i // len(names)}"] = \
            source if i < len(names) else copy.deepcopy(source)
    fleet._newest = base.newest_bucket
    return fleet


def _memory(base, origin: int, n: int) -> dict:  # noqa: ANN001
    """Bytes per tracked server at full history: tracemalloc of a fleet of ``n`` built by merging aggregates."""
    from metrics_store import Aggregate, FleetWindows

    span = base.capacity
    aggs_by_server = []
    for w in list(base.servers.values())[:50]:  # the rings' contents as aggregates, replayed per new name
        held = np.flatnonzero(w.slot_bucket >= 0)
        aggs_by_server.append((w.profile, [(int(w.slot_bucket[s]), int(w.n[s]), w.sums[s].copy(), int(w.last_ts[s]),
                                            w.last_counts[s].astype(np.int64), int(w.state_rank[s])) for s in held]))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fleet = FleetWindows(base.capacity)
    for i in range(n):
        profile, rows = aggs_by_server[i % len(aggs_by_server)]
        name = f"mem-server-{i:05d}"
        fleet.merge([Aggregate(name, b, k, s, t, c, r) for b, k, s, t, c, r in rows], {name: profile})
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    held = sum(int((w.slot_bucket >= 0).sum()) for w in fleet.servers.values()) / n
    return {"servers": n, "traced_bytes_per_server": traced / n, "ring_bytes_per_server": fleet.memory_bytes() / n,
            "buckets_held": held, "capacity": span}


def _feed(base, n: int) -> dict:  # noqa: ANN001
    """One 15-second batch of ``n`` servers (one record each): validate-free aggregate + SQLite + windows."""
    from metrics_store import MetricsStore, aggregate

    names = [f"feed-{i:05d}" for i in range(n)]
    template = next(iter(base.servers.values()))
    profile = template.profile
    newest = base.newest_bucket
    values = template.current(newest)
    from config import LINBORG_METRICS

    def batch(k: int) -> list[dict]:
        ts = (newest + 1) * 300 * 10**9 + k * 15 * 10**9
        return [{"server_name": s, "profile": profile, "ts_ns": ts, "state": "healthy",
                 **{m: (int(v) if m in ("back_close_wait", "front_close_wait", "uptime_days") else float(v))
                    for m, v in zip(LINBORG_METRICS, values, strict=True)}} for s in names]
    with tempfile.TemporaryDirectory() as tmp:
        store = MetricsStore(Path(tmp) / "feed.sqlite3")
        fleet = copy.copy(base)
        fleet.servers = {}
        times_store, times_merge = [], []
        for k in range(4):
            records = batch(k)
            began = time.perf_counter()
            _, _, aggs = store.add_records(records)
            times_store.append(time.perf_counter() - began)
            began = time.perf_counter()
            fleet.merge(aggs, {s: profile for s in names})
            times_merge.append(time.perf_counter() - began)
        aggregate_s = time.perf_counter()
        aggregate(batch(5))
        aggregate_s = time.perf_counter() - aggregate_s
        store.close()
    return {"servers": n, "store_s": float(np.median(times_store[1:])), "merge_s": float(np.median(times_merge[1:])),
            "aggregate_s": aggregate_s}


def _startup(n: int, days: int, capacity: int) -> dict:
    """A store of ``n`` servers x ``days`` days written row by row in SQL, then opened as the daemon does."""
    import sqlite3

    from metrics_store import COUNTS, GAUGES, MetricsStore

    if n <= 0:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "start.sqlite3"
        MetricsStore(path).close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA synchronous=OFF")
        buckets = days * 288
        newest = 5_900_000
        rng = np.random.default_rng(1)
        sums = rng.uniform(0, 50, (buckets, len(GAUGES))).tolist()
        began = time.perf_counter()
        conn.executemany("INSERT INTO servers (server, profile, first_bucket, last_bucket) VALUES (?, ?, ?, ?)",
                         [(f"s{i:05d}", "web_api", newest - buckets + 1, newest) for i in range(n)])
        cols = f"server, bucket, n, {', '.join('sum_' + g for g in GAUGES)}, last_ts, " \
               f"{', '.join('last_' + c for c in COUNTS)}, state_rank"
        sql = f"INSERT INTO buckets ({cols}) VALUES ({', '.join('?' * (5 + len(GAUGES) + len(COUNTS)))})"
        for i in range(n):
            conn.executemany(sql, [(f"s{i:05d}", newest - buckets + 1 + b, 1, *sums[b], 0, 3, 4, 5, 0)
                                   for b in range(buckets)])
        conn.commit()
        conn.close()
        written = time.perf_counter() - began
        size = path.stat().st_size
        began = time.perf_counter()
        store = MetricsStore(path)
        opened = time.perf_counter() - began
        began = time.perf_counter()
        fleet = store.load_windows(capacity)
        loaded = time.perf_counter() - began
        store.close()
    return {"servers": n, "days": days, "rows": n * buckets, "bytes": size, "write_s": written,
            "open_check_s": opened, "load_windows_s": loaded, "servers_loaded": len(fleet.servers)}


# ============================================================================ parent: both checkouts, ratios
def _run_child(root: Path, args: argparse.Namespace, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # This file runs in either checkout (the baseline may not have it); PYTHONPATH picks the checkout's modules.
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(out), "--model-dir",
               str(args.model_dir.resolve()), "--servers", *map(str, args.servers), "--repeat", str(args.repeat),
               "--threads", str(args.threads), "--sim-servers", str(args.sim_servers), "--seed", str(args.seed),
               "--memory-servers", str(args.memory_servers), "--feed-servers", str(args.feed_servers),
               "--startup-servers", str(args.startup_servers), "--startup-days", str(args.startup_days)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(root)}
    subprocess.run(command, cwd=root, env=env, check=True)
    return json.loads((out / "result.json").read_text())


def _report(now: dict, before: dict | None, args: argparse.Namespace, exact: dict[int, str]) -> None:
    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:5.2f}x" if b else "    -"

    print(f"model: {now['parameters']:,} parameters, history {now['history_buckets']} buckets; torch threads "
          f"{now['threads']}; medians of {args.repeat} cycles; ratio = this checkout / baseline (same invocation)")
    phases = ("windows", "yesterday", "settled", "tensors", "forward", "decode", "results", "cycle", "floor")
    for n in args.servers:
        c, b = now["cycles"][str(n)], (before or {}).get("cycles", {}).get(str(n))
        print(f"\n{n:,} servers ({c['forward_passes']} forward passes; forecasts vs baseline: {exact.get(n, '-')})")
        print(f"{'phase':<12}{'now ms':>10}{'base ms':>10}{'ratio':>8}")
        for p in phases:
            print(f"{p:<12}{c.get(p, 0) * 1000:>10.1f}{(b or {}).get(p, 0) * 1000:>10.1f}"
                  f"{ratio(c.get(p, 0), (b or {}).get(p)):>8}")
        print(f"cycle / floor: {c['cycle'] / c['floor']:.2f} (baseline {b['cycle'] / b['floor']:.2f})" if b else
              f"cycle / floor: {c['cycle'] / c['floor']:.2f}")
    m, bm = now["memory"], (before or {}).get("memory")
    print(f"\nmemory per tracked server at full history ({m['servers']:,} servers, ring {m['capacity']} buckets, "
          f"{m['buckets_held']:.0f} held): tracemalloc {m['traced_bytes_per_server'] / 1024:.1f} KiB, ring arrays "
          f"{m['ring_bytes_per_server'] / 1024:.1f} KiB"
          + (f"; baseline {bm['traced_bytes_per_server'] / 1024:.1f} / {bm['ring_bytes_per_server'] / 1024:.1f} KiB "
             f"({ratio(m['traced_bytes_per_server'], bm['traced_bytes_per_server'])})" if bm else ""))
    f = now["feed"]
    print(f"feed, one 15 s batch of {f['servers']:,} servers: SQLite (dedupe keys, aggregate, upsert, commit) "
          f"{f['store_s'] * 1000:.0f} ms, windows merge {f['merge_s'] * 1000:.0f} ms; 20 batches + one cycle "
          f"per 5 min")
    s = now.get("startup") or {}
    if s:
        print(f"start-up: store of {s['servers']:,} servers x {s['days']} days ({s['rows']:,} rows, "
              f"{s['bytes'] / 2**20:.0f} MiB): open + quick_check {s['open_check_s']:.2f} s, load_windows "
              f"{s['load_windows_s']:.2f} s")


def main(argv: list[str] | None = None) -> None:
    """Parse, run the child (or both checkouts) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/latest"))
    parser.add_argument("--compare-root", type=Path, default=None, help="baseline checkout, measured in the same run")
    parser.add_argument("--servers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the 2-core VM is shared)")
    parser.add_argument("--sim-servers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--memory-servers", type=int, default=2000)
    parser.add_argument("--feed-servers", type=int, default=10000)
    parser.add_argument("--startup-servers", type=int, default=200)
    parser.add_argument("--startup-days", type=int, default=35)
    parser.add_argument("--quick", action="store_true", help="1,000 servers, 2 cycles, small memory/start-up runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.servers, args.repeat, args.sim_servers = [1000], 2, min(args.sim_servers, 1000)
        args.memory_servers, args.startup_servers, args.startup_days = 500, 50, 7
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        now = _run_child(HERE, args, Path(tmp) / "now")
        before = _run_child(args.compare_root.resolve(), args, Path(tmp) / "base") if args.compare_root else None
        exact: dict[int, str] = {}
        if before:
            for n in args.servers:
                a, b = np.load(Path(tmp) / "now" / f"q{n}.npy"), np.load(Path(tmp) / "base" / f"q{n}.npy")
                fa, fb = np.load(Path(tmp) / "now" / f"fan{n}.npy"), np.load(Path(tmp) / "base" / f"fan{n}.npy")
                same = a.shape == b.shape and np.array_equal(a, b) and np.array_equal(fa, fb)
                exact[n] = "identical" if same else \
                    f"DIFFER (max |d| {np.abs(a - b).max() if a.shape == b.shape else 'shape'})"
    _report(now, before, args, exact)
    if any(v != "identical" for v in exact.values()):
        raise SystemExit("the forecasts differ from the baseline's: not an exact optimisation")


if __name__ == "__main__":
    main()
