"""How far ahead of an actual breach does the forecast raise the alarm?

    python -m bench.bench_lead_time --model-dir models/latest

Runs the product's own forecast engine (the daemon's) over a simulated fleet, one 5-minute
bucket at a time, as the live demo does. After a warm-up, slow incidents of every kind are
injected on a few servers (the "degrading" scenario's ramps). For each incident it records
the first bucket the server's risk turned yellow and red, and the first bucket its actual
``state`` (derived from the actual values by the contract rules) became ``critical_issue``.
The lead time is the difference, in minutes. It also counts false alarms: red on servers
with no incident.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common_utils import quiet_library_noise
from config import GENERATOR, PROFILE_BEHAVIOUR, SAMPLING_INTERVAL_MINUTES, STEPS_PER_HOUR, VALID_STATES
from forecast_engine import ForecastEngine
from metrics_generator import FleetSimulator, fleet_from_total
from metrics_store import FleetWindows, aggregate
from tft_model import load_model


def _merge(fleet: FleetWindows, sim: FleetSimulator, chunk) -> None:  # noqa: ANN001 - a FleetChunk
    records = sim.records(chunk)
    for record in records:
        record["ts_ns"] = int(pd.Timestamp(record["timestamp"]).value)
    fleet.merge(aggregate(records), {r["server_name"]: r["profile"] for r in records})


def main() -> None:
    """Run the scenario and print lead times per incident."""
    quiet_library_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/latest"))
    parser.add_argument("--servers", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--scenario", choices=["degrading", "critical"], default="degrading")
    parser.add_argument("--incidents-per-kind", type=int, default=2)
    args = parser.parse_args()

    engine = ForecastEngine(load_model(args.model_dir))
    sim = FleetSimulator(fleet=fleet_from_total(args.servers), seed=args.seed, start="2026-03-02T00:00:00Z")
    sim.incident_rate_scale = 0.0  # only the injected incidents
    fleet = FleetWindows()
    warmup = engine.spec.encoder_length + 12
    _merge(fleet, sim, sim.advance(warmup))
    sim.clear_incidents()

    rng = np.random.default_rng(args.seed)
    victims: dict[str, str] = {}
    candidates = list(rng.permutation(sim.server_names))
    for kind in GENERATOR.incident_types:
        chosen = [n for n in candidates if PROFILE_BEHAVIOUR[sim.profiles[sim.server_names.index(n)]]
                  .incident_rate_per_day[kind] > 0 and n not in victims][: args.incidents_per_kind]
        for name in chosen:
            victims[name] = kind
            sim.inject_incident(name, kind, GENERATOR.demo_ramp_hours[args.scenario][kind])
    horizon = int(max(GENERATOR.demo_ramp_hours[args.scenario].values()) * STEPS_PER_HOUR + 2 * STEPS_PER_HOUR)
    first = {name: {"yellow": None, "red": None, "critical": None} for name in sim.server_names}
    critical_code = VALID_STATES.index("critical_issue")
    cycle_times = []
    for step in range(horizon):
        chunk = sim.advance(1)
        _merge(fleet, sim, chunk)
        began = time.perf_counter()
        result = engine.forecast(fleet, fleet.newest_bucket)
        cycle_times.append(time.perf_counter() - began)
        for i, name in enumerate(sim.server_names):
            entry = result.servers[name].prediction
            marks = first[name]
            if entry["status"] == "ok":
                if entry["risk_level"] in ("yellow", "red") and marks["yellow"] is None:
                    marks["yellow"] = step
                if entry["risk_level"] == "red" and marks["red"] is None:
                    marks["red"] = step
            if chunk.state_codes[0, i] == critical_code and marks["critical"] is None:
                marks["critical"] = step

    minutes = SAMPLING_INTERVAL_MINUTES
    print(f"model {engine.model_version}; {args.servers} servers; {len(victims)} injected incidents "
          f"({args.scenario} ramps); median cycle {np.median(cycle_times) * 1000:.0f} ms")
    print(f"{'server':<11}{'incident':<19}{'yellow':>8}{'red':>8}{'breach':>8}{'yellow lead':>13}{'red lead':>10}")
    leads, yellow_leads = [], []
    for name, kind in victims.items():
        m = first[name]
        lead = (m["critical"] - m["red"]) * minutes if m["critical"] is not None and m["red"] is not None else None
        if lead is not None:
            leads.append(lead)
        early = (m["critical"] - m["yellow"]) * minutes if m["critical"] is not None and m["yellow"] is not None \
            else None
        if early is not None:
            yellow_leads.append(early)
        fmt = lambda v: "-" if v is None else f"{v * minutes}m"  # noqa: E731
        print(f"{name:<11}{kind:<19}{fmt(m['yellow']):>8}{fmt(m['red']):>8}{fmt(m['critical']):>8}"
              f"{'-' if early is None else f'{early}m':>13}{'-' if lead is None else f'{lead}m':>10}")
    others = [n for n in sim.server_names if n not in victims]
    false_red = [n for n in others if first[n]["red"] is not None]
    breached = [n for n in victims if first[n]["critical"] is not None]
    ahead = [n for n in breached if first[n]["red"] is not None and first[n]["red"] < first[n]["critical"]]
    print(f"\nbreaches: {len(breached)}; red before the breach: {len(ahead)}; median lead: yellow "
          f"{np.median(yellow_leads) if yellow_leads else float('nan'):.0f} min, red "
          f"{np.median(leads) if leads else float('nan'):.0f} min; servers without incident turned red: "
          f"{len(false_red)} of {len(others)}")


if __name__ == "__main__":
    main()
