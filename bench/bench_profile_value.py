"""What is a server's profile worth to a forecast of a server the model has never seen?

    python -m bench.bench_profile_value --model models/latest
    python -m bench.bench_profile_value --model models/latest --agnostic-model <dir> --per-profile 12

Generates a fresh fleet with another seed and keeps only servers whose names the model has
never seen (``--per-profile`` of each profile), then scores forecasts over the last ``--days``
days of it, with the full history window and at cold start (the daemon's minimum history):

* **with profile**: the model, told each server's real profile;
* **profile hidden**: the same model with the profile set to its unknown category;
* **agnostic model** (``--agnostic-model``): a model trained with the profile hidden in every
  window, i.e. one that never learned what profiles mean. Train one with
  ``python -m bench.bench_profile_value --train-agnostic --data <the model's training data>``.

q-risk at 0.5 is averaged over the targets, next to the better of persistence and seasonal
naive measured on the same windows, overall and per profile. The gains are
``1 - q-risk(with profile) / q-risk(profile-agnostic forecast)``. The measurement itself is
library code (``profile_study.measure_profile_value``); this script is its command line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common_utils import quiet_library_noise, setup_logging
from config import DEFAULT_FLEET
from profile_study import format_profile_value, measure_profile_value, train_agnostic_model
from tft_model import load_model

BENCH_SEED = 4242  # any seed but the training fleet's


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/latest"))
    parser.add_argument("--agnostic-model", type=Path, default=None)
    parser.add_argument("--train-agnostic", action="store_true",
                        help="train the agnostic model on --data first (default settings; ~20 min on 2 CPU cores)")
    parser.add_argument("--data", type=Path, default=None, help="training data for --train-agnostic")
    parser.add_argument("--agnostic-models-dir", type=Path, default=Path("models/agnostic"))
    parser.add_argument("--per-profile", type=int, default=max(DEFAULT_FLEET.values()) // 2)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=BENCH_SEED)
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    if args.train_agnostic:
        if args.data is None:
            parser.error("--train-agnostic needs --data (the with-profile model's training data)")
        args.agnostic_model = train_agnostic_model(args.data, args.agnostic_models_dir)
    began = time.perf_counter()
    model = load_model(args.model)
    agnostic = load_model(args.agnostic_model) if args.agnostic_model else None
    result = measure_profile_value(model, agnostic, args.per_profile, args.days, args.seed)
    print(format_profile_value(result))
    print(f"\n({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
