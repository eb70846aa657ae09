"""Early warning on real traces: do the daemon's alerts come before breaches, and beat the rules SREs run?

    python -m bench.bench_early_warning                          # Bitbrains: train days 1-23, score 24-30
    python -m bench.bench_early_warning --model models/x         # score a trained model (fits its alert
                                                                 # thresholds on its training days if it has none)
    python -m bench.bench_early_warning --traces DIR --mapping M --train-days 20 --score-days 8
    python -m bench.bench_early_warning --simulate 30 --days 12 --seed 9117   # a fresh simulated fleet

1. **Data**: a trace directory through the importer (``--traces``, ``--mapping``, as ``main.py import``), or
   a fresh simulated fleet (``--simulate N``: the generator's own incidents, a seed no model trained on).
2. **Model**: trained with the trainer's defaults on the first ``--train-days`` whole days only (its
   validation days, the last 48 h of those, fit the alert thresholds), unless ``--model`` is given.
3. **Replay**: the scored days go through the daemon itself (``daemon_state.Daemon``: feed ingest, the
   forecast engine, live band calibration, risk scoring, the alert policy and the alert lifecycle), one
   5-minute bucket at a time with the daemon's clock at data time, after ``--warmup-hours`` of unscored
   cycles. The open alerts after each cycle are the product's alert episodes.
4. **Score** (``alert_quality.py``, the definitions of Docs/RISK_SCORING.md "Measuring alerts"): breach
   events from the actuals and the tiers in ``config.py``; for the product, the pre-0.16 rule (any p90
   within 8 h / 1 h at the warning tier, from the same cycles' bands) and the rules an SRE already runs
   (static thresholds with ``for: 10m``, ``predict_linear`` 1 h -> 1 h and 6 h -> 8 h, "it reached the
   tier in the same 8 h yesterday"), every rule with the daemon's hold-down: share warned, share warned
   timely (30 min - 8 h ahead), median lead, episodes, false episodes per server-day, precision, time in
   alert, per metric.
5. **The bar** (issue 27): per metric, against the SRE rule with the largest timely share, the product at
   a false-episode rate no higher than that rule's and within the budget warns timely at least
   min(2 x its share, its share + half of its misses). Table and JSON (``--out``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alert_fitting import fit_model_dir
from alert_policy import reach_profile, thresholds_for, within
from alert_quality import (
    breach_onsets,
    hold_open,
    predict_linear_rule,
    score_rule,
    seasonal_rule,
    static_rule,
)
from bench.bench_real_data import DEFAULT_MAPPING, DEFAULT_TRACES, split_days, train_model
from common_utils import atomic_write_json, quiet_library_noise, setup_logging
from config import (
    ALERT_POLICY,
    ALERT_QUALITY,
    HORIZONS,
    LINBORG_METRICS,
    SAMPLING_INTERVAL_SECONDS,
    STEPS_PER_DAY,
    STEPS_PER_HOUR,
    TRAINER,
    TRAINING_DATA_FILE,
)
from contract import DISPLAY_CPU, bucket_of_times, cpu_used
from daemon_state import Daemon, DaemonSettings
from metrics_generator import fleet_from_total, generate_dataset
from risk_scoring import breach_tiers, tier_threshold
from tft_model import load_model
from trace_importer import import_traces, measured_metrics_for

logger = logging.getLogger(__name__)
PRODUCT = "product: alert policy"
SRE_RULES = ("static: elevated tier for 10m", "static: >= 80 % for 10m", "predict_linear 1h -> 1h",
             "predict_linear 6h -> 8h", "seasonal: tier in the same 8h yesterday")
FORECAST_PART = "  its forecast alerts only"
NOW_PART = "  its breach-in-progress alerts only"
OLD_RULES = ("0.15 rule: any p90 within 8h >= warning", "0.15 rule: any p90 within 1h >= warning")
FEED_BATCH_BUCKETS = 12  # history is fed an hour of buckets per call


def display_frame(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(servers x buckets) of one display metric (CPU as used %)."""
    values = cpu_used(frame["cpu_idle_pct"]) if metric == DISPLAY_CPU else frame[metric]
    wide = pd.DataFrame({"server": frame["server_name"].to_numpy(), "bucket": bucket_of_times(frame["timestamp"]),
                         "v": np.asarray(values, dtype=float)})
    return wide.pivot_table(index="server", columns="bucket", values="v", aggfunc="last")


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = rows[["timestamp", "server_name", "profile", "state", *LINBORG_METRICS]].copy()
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.to_dict("records")


def replay(model_dir: Path, frame: pd.DataFrame, first_scored: int, last: int, warmup: int, work: Path,
           metrics: list[str]) -> dict[str, Any]:
    """Run the daemon over ``frame`` bucket by bucket; the product's and the 0.15 rule's raised/open masks.

    Returns ``{"servers": [...], "first": bucket, "open": {metric: (S, T)}, "old_8h", "old_1h"}`` over the
    buckets ``first_cycle .. last``.
    """
    loaded = load_model(model_dir)
    first_cycle = first_scored - warmup
    history = loaded.spec.history_buckets + STEPS_PER_HOUR
    tidx = bucket_of_times(frame["timestamp"])
    servers = sorted(frame["server_name"].unique())
    index = {s: i for i, s in enumerate(servers)}
    n_t = last - first_cycle + 1
    masks = {name: {m: np.zeros((len(servers), n_t), dtype=bool) for m in metrics}
             for name in ("open", "old_8h", "old_1h", "now")}
    chances = {m: np.zeros((len(servers), n_t)) for m in metrics}  # the policy's chance within 8 h, per cycle
    now = {"t": float((first_cycle - history) * SAMPLING_INTERVAL_SECONDS)}
    settings = DaemonSettings(model_dir=model_dir, store_path=work / "replay.sqlite3", api_key="bench-replay-key",
                              established_hours=0.0)
    daemon = Daemon(settings, clock=lambda: now["t"])
    by_bucket = {int(b): g for b, g in frame.groupby(tidx)}
    began = time.perf_counter()
    try:
        for b0 in range(first_cycle - history, first_cycle, FEED_BATCH_BUCKETS):
            part = [by_bucket[b] for b in range(b0, min(b0 + FEED_BATCH_BUCKETS, first_cycle)) if b in by_bucket]
            if part:
                now["t"] = float((b0 + FEED_BATCH_BUCKETS) * SAMPLING_INTERVAL_SECONDS)
                daemon.ingest(_records(pd.concat(part)))
        steps = {label: HORIZONS[label] for label in ("1hr", "8hr")}
        for k, origin in enumerate(range(first_cycle, last + 1)):
            if origin in by_bucket:
                now["t"] = float((origin + 1) * SAMPLING_INTERVAL_SECONDS)
                daemon.ingest(_records(by_bucket[origin]))
            result = daemon.run_cycle(origin)
            if result is None:
                raise RuntimeError(f"the daemon's cycle at bucket {origin} failed: {daemon.last_cycle_error}")
            for tracked in daemon.alerts.open.values():
                alert = tracked.alert
                if alert.kind == "risk" and alert.metric in masks["open"] and alert.server_name in index:
                    masks["open"][alert.metric][index[alert.server_name], k] = True
            for name, server in result.servers.items():
                fan = server.fan
                if fan is None:
                    continue
                for alert in server.prediction.alerts:
                    if alert.horizon == "now" and alert.metric in masks["now"]:
                        masks["now"][alert.metric][index[name], k] = True
                for m in metrics:
                    warning = tier_threshold(m, server.prediction.profile, "warning")
                    p90 = fan[m]["p90"]
                    masks["old_8h"][m][index[name], k] = p90[: steps["8hr"]].max() >= warning
                    masks["old_1h"][m][index[name], k] = p90[: steps["1hr"]].max() >= warning
                    band = {q: fan[m][q][None, :] for q in ("p10", "p50", "p90")}
                    chances[m][index[name], k] = within(reach_profile(band, np.array([warning])), steps["8hr"])[0]
            if k and k % STEPS_PER_DAY == 0:
                logger.info("replayed %d of %d cycles (%.0f s)", k, n_t, time.perf_counter() - began)
    finally:
        daemon.close()
    logger.info("replayed %d cycles of %d servers in %.0f s", n_t, len(servers), time.perf_counter() - began)
    return {"servers": servers, "first": first_cycle, "chances": chances,
            "thresholds": thresholds_for(metrics, loaded.spec.alert_thresholds), **masks}


def score_all(frame: pd.DataFrame, replayed: dict[str, Any], first_scored: int, last: int,
              metrics: list[str]) -> dict[str, Any]:
    """Per metric: every rule's score over the scored buckets (``alert_quality.RuleScore.summary``)."""
    servers, first_cycle = replayed["servers"], replayed["first"]
    profiles = frame.groupby("server_name", observed=True)["profile"].first().reindex(servers).tolist()
    span = STEPS_PER_DAY + ALERT_QUALITY.seasonal_window_buckets  # what the longest rule looks back
    lo = first_cycle - span
    out: dict[str, Any] = {}
    for m in metrics:
        wide = display_frame(frame, m).reindex(index=servers, columns=range(lo, last + 1))
        values = wide.to_numpy(dtype=float)
        warning, elevated = breach_tiers(m, profiles)
        onsets = breach_onsets(values, warning, elevated)
        offset = first_cycle - lo  # column of the first cycle
        first, stop = first_scored - lo, last - lo + 1
        sre: dict[str, np.ndarray | None] = {
            SRE_RULES[0]: static_rule(values, elevated),
            # "80 % for 10 min" is a rule for percentages whose warning tier lies above 80 (CPU, memory, disk)
            SRE_RULES[1]: (static_rule(values, ALERT_QUALITY.static_pct) if (warning > ALERT_QUALITY.static_pct).all()
                           else None),
            SRE_RULES[2]: predict_linear_rule(values, warning, *ALERT_QUALITY.predict_linear[0]),
            SRE_RULES[3]: predict_linear_rule(values, warning, *ALERT_QUALITY.predict_linear[1]),
            SRE_RULES[4]: seasonal_rule(values, warning),
        }
        rules: dict[str, np.ndarray] = {}
        for name, key in ((PRODUCT, "open"), (OLD_RULES[0], "old_8h"), (OLD_RULES[1], "old_1h")):
            mask = np.zeros_like(values, dtype=bool)
            mask[:, offset:offset + replayed[key][m].shape[1]] = replayed[key][m]
            rules[name] = mask if key == "open" else hold_open(mask)
        rules.update({name: hold_open(raised) for name, raised in sre.items() if raised is not None})
        out[m] = {name: score_rule(mask, onsets, first=first, last=stop).summary() for name, mask in rules.items()}
        # The policy's two parts apart (diagnostic): its forecast alerts at the fitted threshold, which can warn,
        # and its breach-in-progress alerts, which by construction open at or after a breach's start
        def part(raised_part: np.ndarray, shape: tuple[int, ...] = values.shape, at: int = offset) -> np.ndarray:
            mask = np.zeros(shape, dtype=bool)
            mask[:, at:at + raised_part.shape[1]] = raised_part
            return hold_open(mask)

        theta_m = replayed["thresholds"].get(m, ALERT_POLICY.default_threshold)
        out[m][FORECAST_PART] = score_rule(part(replayed["chances"][m] >= theta_m), onsets, first=first,
                                           last=stop).summary()
        out[m][NOW_PART] = score_rule(part(replayed["now"][m]), onsets, first=first, last=stop).summary()
        # Diagnostic, never used to choose: the same policy at every candidate threshold on these days (the
        # chances and breaches-in-progress of the same cycles, held open as the lifecycle holds them)
        curve = {}
        for theta in ALERT_POLICY.grid:
            raised = np.zeros_like(values, dtype=bool)
            raised[:, offset:offset + replayed["now"][m].shape[1]] = (replayed["chances"][m] >= theta) | \
                replayed["now"][m]
            curve[str(theta)] = score_rule(hold_open(raised), onsets, first=first, last=stop).summary()
        out[m]["_curve"] = curve
    return out


def judge(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 27's bar, per metric: what the best SRE rule achieved, what the product must, what it did."""
    budget_day = ALERT_POLICY.false_episodes_per_server_week / 7.0
    checks = []
    for m, rules in scores.items():
        product = rules[PRODUCT]
        if not product["breaches"]:
            checks.append({"metric": m, "ok": None, "why": "no breach in the scored days: not judged"})
            continue
        best_name = max((r for r in SRE_RULES if r in rules),
                        key=lambda r: (rules[r]["timely"] or 0.0, -(rules[r]["false_per_server_day"] or 0)))
        best = rules[best_name]
        b = best["timely"] or 0.0
        need = min(2 * b, b + (1 - b) / 2)
        false_cap = min(best["false_per_server_day"] or 0.0, budget_day)
        ok_false = (product["false_per_server_day"] or 0.0) <= false_cap
        ok_timely = (product["timely"] or 0.0) >= need
        checks.append({"metric": m, "best_baseline": best_name, "baseline_timely": b, "required_timely": need,
                       "timely": product["timely"], "false_cap_per_server_day": false_cap,
                       "false_per_server_day": product["false_per_server_day"], "ok": ok_false and ok_timely,
                       "ok_false": ok_false, "ok_timely": ok_timely})
    return checks


def format_tables(scores: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    """One table per metric, then the bar."""
    lines = []
    for m, rules in scores.items():
        first = rules[PRODUCT]
        lines.append(f"\n{m}: {first['breaches']} breaches over {first['server_days']} server-days")
        lines.append(f"  {'rule':<44} {'warned':>7} {'timely':>7} {'lead':>6} {'episodes':>8} {'false/d':>8} "
                     f"{'prec':>6} {'in alert':>8}")
        for name, s in rules.items():
            if name.startswith("_"):
                continue

            def f(v: float | None, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)
            lines.append(f"  {name:<44} {f(s['warned'], '.2f'):>7} {f(s['timely'], '.2f'):>7} "
                         f"{f(s['median_lead_minutes'], '.0f'):>6} {s['episodes']:>8} "
                         f"{f(s['false_per_server_day'], '.3f'):>8} {f(s['precision'], '.2f'):>6} "
                         f"{f(s['time_in_alert'], '.3f'):>8}")
    for m, rules in scores.items():
        curve = rules.get("_curve", {})
        if any(v["breaches"] for v in curve.values()):
            lines.append(f"\n{m}, the policy at every candidate threshold on the scored days (diagnostic only: the "
                         f"model's threshold was fitted on its validation days): theta timely false/d")
            lines.append("  " + "  ".join(f"{t}: {v['timely'] or 0:.2f} {v['false_per_server_day'] or 0:.3f}"
                                          for t, v in curve.items()))
    lines.append("\nThe bar (issue 27): timely >= min(2b, b + (1-b)/2) of the best SRE rule's share b, at a false rate "
                 "no higher than its own and the budget")
    for c in checks:
        if c["ok"] is None:
            lines.append(f"  ----  {c['metric']}: {c['why']}")
            continue
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['metric']}: timely {c['timely'] or 0:.2f} (need "
                     f"{c['required_timely']:.2f}; {c['best_baseline']} {c['baseline_timely']:.2f}), false/server-day "
                     f"{c['false_per_server_day'] or 0:.3f} (cap {c['false_cap_per_server_day']:.3f})")
    return "\n".join(lines)


def tiered_metrics(frame: pd.DataFrame, data_path: Path, targets: list[str]) -> list[str]:
    """The measured, forecast metrics that have a warning tier for some server of ``frame``."""
    measured = measured_metrics_for(data_path)
    out = []
    for target in targets:
        if measured is not None and target not in measured:
            continue
        m = DISPLAY_CPU if target == "cpu_idle_pct" else target
        if any(np.isfinite(tier_threshold(m, p, "warning")) for p in frame["profile"].unique()):
            out.append(m)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="directory of trace CSVs")
    parser.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING)
    parser.add_argument("--simulate", type=int, default=None, metavar="SERVERS",
                        help="a fresh simulated fleet of this many servers instead of traces")
    parser.add_argument("--days", type=int, default=12, help="--simulate: days generated")
    parser.add_argument("--seed", type=int, default=9117, help="--simulate: the fleet's seed")
    parser.add_argument("--work", type=Path, default=Path("bench_early_warning"), help="imports, models, stores")
    parser.add_argument("--train-days", type=int, default=None, help="default 23 (traces), days - 3 (simulate)")
    parser.add_argument("--score-days", type=int, default=None, help="default: the rest")
    parser.add_argument("--warmup-hours", type=int, default=24, help="unscored daemon cycles before the scored days")
    parser.add_argument("--model", type=Path, default=None, help="score this model instead of training one")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("trainer_args", nargs="*", help="after --: extra arguments for the trainer")
    args = parser.parse_args(argv)
    setup_logging()
    quiet_library_noise()
    began = time.perf_counter()
    work = args.work / (f"simulated-{args.simulate}-{args.seed}" if args.simulate else "traces")
    imported = work / "import" / TRAINING_DATA_FILE
    if args.simulate:
        generate_dataset(out_dir=imported.parent, hours=args.days * 24, fleet=fleet_from_total(args.simulate),
                         seed=args.seed, progress=False)
        train_days = args.train_days or args.days - 3
    else:
        sources = sorted(args.traces.glob("*.csv"))
        if not sources:
            print(f"No trace CSVs in {args.traces}. Fix: pass --traces DIR. See Docs/IMPORTING.md.", file=sys.stderr)
            return 1
        import_traces(sources, args.mapping, imported)
        train_days = args.train_days or 23
    train_data, score_data, first_scored = split_days(imported, work, train_days, args.score_days)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_dir = args.model or train_model(train_data, work / "models", args.trainer_args)
    timings["train"] = time.perf_counter() - t0
    loaded = load_model(model_dir)
    if loaded.spec.alert_thresholds is None:  # a model from before the policy: fit on its own training days
        logger.info("%s has no alert thresholds: fitting them on the last %d h of its training days", model_dir,
                    TRAINER.validation_hours)
        fit_model_dir(model_dir, train_data, TRAINER.validation_hours)
        loaded = load_model(model_dir)
    frame = pd.read_parquet(score_data)
    last = int(bucket_of_times(frame["timestamp"]).max())
    metrics = tiered_metrics(frame, score_data, loaded.spec.targets)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        replayed = replay(model_dir, frame, first_scored, last, args.warmup_hours * STEPS_PER_HOUR, Path(tmp),
                          metrics)
    timings["replay"] = time.perf_counter() - t0
    scores = score_all(frame, replayed, first_scored, last, metrics)
    checks = judge(scores)
    print(format_tables(scores, checks))
    print(f"\nalert thresholds of {model_dir.name}: {loaded.spec.alert_thresholds} "
          f"(budget {ALERT_POLICY.false_episodes_per_server_week:g} false episodes per server-week)")
    report = {"data": str(args.traces if not args.simulate else f"simulated {args.simulate} servers, seed "
                                                                  f"{args.seed}"),
              "train_days": train_days,
              "first_scored": pd.Timestamp(first_scored * SAMPLING_INTERVAL_SECONDS, unit="s", tz="UTC").isoformat(),
              "model_dir": str(model_dir), "alert_thresholds": loaded.spec.alert_thresholds,
              "budget_false_episodes_per_server_week": ALERT_POLICY.false_episodes_per_server_week,
              "definitions": {k: getattr(ALERT_QUALITY, k) for k in ALERT_QUALITY.__dataclass_fields__},
              "scores": scores, "bar": checks,
              "seconds": {**{k: round(v, 1) for k, v in timings.items()},
                          "total": round(time.perf_counter() - began, 1)}}
    out = args.out or work / "early_warning.json"
    atomic_write_json(out, report)
    print(f"took {report['seconds']['total']:.0f} s; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
