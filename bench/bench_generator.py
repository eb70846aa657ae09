"""Benchmark: generate + write the default fleet (90 servers x 30 days) and validate it.

    python -m bench.bench_generator [--servers 90] [--hours 720] [--repeat 3]

Prints rows/s for generation (including the Parquet write) and for validation
(including the Parquet read), the best of ``--repeat`` runs, against the budgets in the
foundation issue (<= 10 s to generate, <= 3 s to validate 777,600 rows).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from config import DEFAULT_FLEET, GENERATOR, TRAINING_DATA_FILE
from data_validator import DataValidator, load_frame
from metrics_generator import fleet_from_total, generate_dataset

GENERATE_BUDGET_S = 10.0
VALIDATE_BUDGET_S = 3.0


def main() -> None:
    """Run the benchmark and print a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=sum(DEFAULT_FLEET.values()))
    parser.add_argument("--hours", type=int, default=GENERATOR.recommended_generate_hours)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    fleet = fleet_from_total(args.servers)
    gen_times, val_times, rows = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            began = time.perf_counter()
            meta = generate_dataset(out_dir=tmp, hours=args.hours, fleet=fleet, progress=False)
            gen_times.append(time.perf_counter() - began)
            rows = int(meta["rows"])
            began = time.perf_counter()
            is_valid, errors, _ = DataValidator(strict=True).validate_schema(load_frame(Path(tmp) / TRAINING_DATA_FILE))
            val_times.append(time.perf_counter() - began)
            assert is_valid, errors
    gen, val = min(gen_times), min(val_times)
    print(f"fleet: {args.servers} servers x {args.hours} h = {rows:,} rows (best of {args.repeat})")
    print(f"{'step':<10}{'seconds':>10}{'rows/s':>14}{'budget s':>10}{'within':>8}")
    for step, seconds, budget in (("generate", gen, GENERATE_BUDGET_S), ("validate", val, VALIDATE_BUDGET_S)):
        within = "yes" if seconds <= budget else "NO"
        print(f"{step:<10}{seconds:>10.2f}{rows / seconds:>14,.0f}{budget:>10.1f}{within:>8}")


if __name__ == "__main__":
    main()
