"""What cutting the history at a level shift does to the forecasts (tft_features.settled_lengths).

    python -m bench.bench_level_shift --model models/latest --data training/server_metrics.parquet --hours 72

Scores every window whose 8-hour decoder lies in the last ``--hours`` of the data twice in the same
run: as served (history cut after a level shift) and with the full history (the rule off), on
the windows the rule changes and on all windows. Prints q-risk at 0.5, p10-p90 coverage and the
mean band width (p90 - p10, metric units) and the share of bands wider than ``WIDE_BAND_POINTS``
(half the range of these percentage metrics: "no forecast") per level-shift metric and horizon, with
the ratio of the two, and writes JSON with ``--out``. The windows the rule leaves alone get identical forecasts,
so the "all windows" rows differ only through the changed ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import FEATURES, HORIZONS, STEPS_PER_HOUR, WIDE_BAND_POINTS
from tft_evaluate import actuals_and_baselines, predict_windows, score, scoring_view
from tft_features import build_features
from tft_model import load_model


def _rows(spec: Any, targets: list[str], forecasts: np.ndarray, actual: np.ndarray, persistence: np.ndarray
          ) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> horizon -> q-risk 0.5, coverage, band width of the forecasts, and persistence's q-risk."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets:
        j = spec.targets.index(target)
        out[target] = {}
        for label, steps in HORIZONS.items():
            k = steps - 1
            y, f = scoring_view(target, actual[:, j, k], forecasts[:, j, k, :])
            scores = score(y, f)
            _, p = scoring_view(target, actual[:, j, k], persistence[:, j, k])
            out[target][label] = {"qrisk_50": scores["qrisk_50"], "coverage": scores["coverage_p10_p90"],
                                  "band_width": float(np.mean(f[:, -1] - f[:, 0])),
                                  "wide_band_share": float(np.mean(f[:, -1] - f[:, 0] > WIDE_BAND_POINTS)),
                                  "persistence_qrisk_50": score(y, p)["qrisk_50"]}
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/latest"))
    parser.add_argument("--data", type=Path, default=Path("training/server_metrics.parquet"))
    parser.add_argument("--hours", type=float, default=72.0, help="score windows whose decoder ends in the last "
                                                                  "this many hours (default %(default)s)")
    parser.add_argument("--stride", type=int, default=1, help="buckets between window origins (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    loaded = load_model(args.model)
    spec = loaded.spec
    began = time.perf_counter()
    store = build_features(args.data, encoder=loaded.encoder, spec=spec, dataset_servers=0).store
    last = int(store.time_idx.max())
    first = last - int(args.hours * STEPS_PER_HOUR) + 1
    servers, starts = store.window_starts(first, last, stride=args.stride)
    settled = store.settled(servers, starts)
    changed = settled < spec.encoder_length
    targets = [m for m in FEATURES.level_shift_metrics if m in spec.targets]
    served = predict_windows(loaded.model, store, servers, starts)
    store.settled = lambda s, _: np.full(len(s), spec.encoder_length)  # type: ignore[method-assign]
    full = predict_windows(loaded.model, store, servers, starts)
    actual, persistence, _ = actuals_and_baselines(store, servers, starts)
    result: dict[str, Any] = {"model": str(args.model), "data": str(args.data), "windows": int(len(servers)),
                              "windows_cut": int(changed.sum()),
                              "servers_with_a_cut": int(len(np.unique(servers[changed]))),
                              "mean_history_when_cut": float(settled[changed].mean()) if changed.any() else None,
                              "seconds": None}
    for name, mask in (("cut_windows", changed), ("all_windows", np.ones(len(servers), dtype=bool))):
        if not mask.any():
            continue
        result[name] = {"served": _rows(spec, targets, served[mask], actual[mask], persistence[mask]),
                        "full_history": _rows(spec, targets, full[mask], actual[mask], persistence[mask])}
    result["seconds"] = round(time.perf_counter() - began, 1)

    print(f"{result['windows']:,} windows ({args.hours:g} h of origins, stride {args.stride}); the rule cut "
          f"{result['windows_cut']:,} of them on {result['servers_with_a_cut']} servers "
          f"(mean history when cut: {result['mean_history_when_cut']} buckets)")
    for name in ("cut_windows", "all_windows"):
        if name not in result:
            continue
        print(f"\n{name}: served (cut) vs full history; ratio = served / full")
        print(f"{'metric':16} {'horizon':7} {'q-risk cut':>10} {'full':>8} {'ratio':>6} {'persist':>8} "
              f"{'cover cut':>9} {'full':>6} {'width cut':>9} {'full':>8} {'ratio':>6} {'wide cut':>8} {'full':>6}")
        for target in targets:
            for label in HORIZONS:
                a, b = result[name]["served"][target][label], result[name]["full_history"][target][label]
                print(f"{target:16} {label:7} {a['qrisk_50']:10.4f} {b['qrisk_50']:8.4f} "
                      f"{a['qrisk_50'] / max(b['qrisk_50'], 1e-12):6.2f} {a['persistence_qrisk_50']:8.4f} "
                      f"{a['coverage']:9.2f} {b['coverage']:6.2f} {a['band_width']:9.2f} {b['band_width']:8.2f} "
                      f"{a['band_width'] / max(b['band_width'], 1e-12):6.2f} {a['wide_band_share']:8.3f} "
                      f"{b['wide_band_share']:6.3f}")
    if args.out:
        atomic_write_json(args.out, result)
        print(f"\nJSON: {args.out}")
    else:
        print("\n" + json.dumps({k: result[k] for k in ("windows", "windows_cut", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
