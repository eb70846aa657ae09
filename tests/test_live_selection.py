"""Live selection (live_selection.py): the last value is served where the model keeps losing to it, per series.

The rule on synthetic hourly bins, the band move it serves, and a fed daemon in-process with one
server whose forecasts are made deliberately bad, then deliberately perfect (~15 s on two cores).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

import live_selection
from config import HORIZONS, STEPS_PER_HOUR
from live_accuracy import LIVE, LIVE_TERMS, bands_of
from live_selection import LiveSelection, serve_last_value, step_horizons
from metrics_generator import FleetSimulator
from tests.helpers import TINY_FLEET

METRICS = ["cpu_used_pct", "mem_used_pct"]


def _bins(hours: range, servers: dict[str, float], rng: np.random.Generator,
          scale: float = 1.0) -> dict[int, dict[str, np.ndarray]]:
    """Hourly sums per server: 12 forecasts an hour, the model's loss ``ratio`` x persistence's (noisy)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for hour in hours:
        out[hour] = {}
        for name, ratio in servers.items():
            sums = np.zeros((len(METRICS), len(HORIZONS), len(LIVE_TERMS)))
            persistence = scale * rng.uniform(5.0, 10.0, (len(METRICS), len(HORIZONS)))
            sums[..., LIVE["n"]] = 12
            sums[..., LIVE["persistence_pinball_50"]] = persistence
            sums[..., LIVE["pinball_50"]] = persistence * ratio * rng.uniform(0.9, 1.1, persistence.shape)
            out[hour][name] = sums
    return out


def test_the_rule_flips_on_evidence_only_and_starts_new_servers_on_the_last_value(monkeypatch):
    rng = np.random.default_rng(3)
    chooser = LiveSelection(METRICS, known={"seen-good", "seen-bad"})
    assert not chooser.mask(["seen-good"]).any() and chooser.mask(["never-seen"]).all()
    servers = {"seen-good": 0.5, "seen-bad": 1.6, "never-seen": 0.5, "never-seen-bad": 1.6}
    few = _bins(range(0, live_selection.LIVE_SELECTION.min_hours - 1), servers, rng)
    chooser.update(few, live_selection.LIVE_SELECTION.min_hours - 2, servers)
    assert not chooser.mask(["seen-bad"]).any() and chooser.mask(["never-seen"]).all()  # too few hours: no verdict
    bins = _bins(range(0, 24), servers, rng)
    chooser.update(bins, 23, servers)
    masks = dict(zip(servers, chooser.mask(list(servers)), strict=True))
    assert not masks["seen-good"].any()
    assert masks["seen-bad"].all()  # lost significantly: the last value
    assert not masks["never-seen"].any()  # earned the model
    assert masks["never-seen-bad"].all()
    assert chooser.switches == {"last_value": 6, "model": 6}
    # consistently but immaterially worse (an idle VM's network: the last value exact, the model a hair off)
    hair = LiveSelection(METRICS, known={"idle"})
    hair.update(_bins(range(0, 24), {"idle": 1.5}, rng, scale=0.01), 23, ["idle"])
    assert not hair.mask(["idle"]).any()
    # a tie is no evidence: few of 300 tied series flip (the one-sided 1 % test alone, materiality off)
    monkeypatch.setattr(live_selection, "LIVE_SELECTION",
                        dataclasses.replace(live_selection.LIVE_SELECTION, material_share=0.0))
    ties = {f"even-{i}": 1.0 for i in range(300)}
    even = LiveSelection(METRICS, known=ties)
    even.update(_bins(range(0, 24), ties, rng, scale=10.0), 23, ties)
    flipped = even.mask(list(ties)).sum(axis=0)
    assert (flipped / len(ties) < 0.04).all(), flipped
    assert chooser.mask(list(servers)).sum(axis=0).tolist() == [[2, 2, 2], [2, 2, 2]]
    # the model wins on the bad server again: back to the model once the evidence against it is gone
    chooser.update(_bins(range(24, 48), {"seen-bad": 0.5}, rng), 47, ["seen-bad"])
    assert not chooser.mask(["seen-bad"]).any()
    off = LiveSelection(METRICS, known=(), enabled=False)
    off.update(bins, 23, servers)
    assert not off.mask(list(servers)).any()


def test_a_small_loss_on_every_server_sends_the_fleet_to_the_last_value_until_it_clearly_ends(monkeypatch):
    """Fleet-wide evidence: each server's loss is immaterial, pooled it is significant; released only well past it."""
    rng = np.random.default_rng(8)
    servers = {f"vm-{i}": 1.04 for i in range(26)}
    chooser = LiveSelection(METRICS, known=set(servers) - {"vm-0"})
    bins = _bins(range(0, 24), servers, rng, scale=0.05)
    fleet = {hour: sum(by.values()) for hour, by in bins.items()}
    chooser.update(bins, 23, servers, fleet)
    assert chooser.fleet_naive.all()
    assert chooser.mask(list(servers)).all()  # trained-on servers start on the last value now; none earned more
    # evidence no longer enough to enter (a far stricter level) but still past the release level: it stays
    monkeypatch.setattr(live_selection, "LIVE_SELECTION",
                        dataclasses.replace(live_selection.LIVE_SELECTION, level=1e-300))
    chooser.update(bins, 23, servers, fleet)
    assert chooser.fleet_naive.all()
    fresh = LiveSelection(METRICS, known=set(servers))
    fresh.update(bins, 23, servers, fleet)
    assert not fresh.fleet_naive.any()  # the same evidence does not send a fleet there at that level
    monkeypatch.undo()
    # the loss turns into a small gain: back to the model only once the evidence has clearly weakened
    tie = _bins(range(24, 48), {name: 0.97 for name in servers}, rng, scale=0.05)
    tie_fleet = {hour: sum(by.values()) for hour, by in tie.items()}
    chooser.update(tie, 47, servers, tie_fleet)
    assert not chooser.fleet_naive.any()
    masks = dict(zip(servers, chooser.mask(list(servers)), strict=True))
    assert not masks["vm-1"].any() and masks["vm-0"].all()  # never trained on vm-0: it must win there itself


def test_the_last_value_is_served_with_the_models_band_width_in_range_and_order():
    rng = np.random.default_rng(0)
    p50 = rng.uniform(0, 100, (50, 96))
    band = {"p10": p50 - rng.uniform(0, 20, p50.shape), "p50": p50, "p90": p50 + rng.uniform(0, 20, p50.shape)}
    original = {q: v.copy() for q, v in band.items()}
    last = rng.uniform(0, 100, 50)
    naive = np.zeros(p50.shape, dtype=bool)
    naive[::2, step_horizons(96) == 0] = True  # every other server, 30-minute steps only
    serve_last_value(band, last, naive, 0.0, 100.0, integer=False)
    rows = np.flatnonzero(naive.any(axis=1))
    np.testing.assert_allclose(band["p50"][rows][:, :6], np.repeat(last[rows, None], 6, axis=1))
    for q in band:
        np.testing.assert_array_equal(band[q][~naive], original[q][~naive])  # the rest untouched
    assert (band["p10"] <= band["p50"]).all() and (band["p50"] <= band["p90"]).all()
    assert band["p10"][naive].min() >= 0.0 and band["p90"][naive].max() <= 100.0  # moved bands stay in range
    inside = naive & (band["p10"] > 0) & (band["p90"] < 100)  # not clipped: the model's width kept
    np.testing.assert_allclose((band["p90"] - band["p10"])[inside], (original["p90"] - original["p10"])[inside])
    assert step_horizons(96)[[0, 5, 6, 11, 12, 95]].tolist() == [0, 0, 1, 1, 2, 2]


def test_a_server_with_bad_forecasts_is_served_the_last_value_until_the_model_earns_it(tiny_training, tmp_path,
                                                                                       monkeypatch):
    """feed -> forecast (one server's memory forecast sabotaged) -> scored -> the last value served and said so.

    Then the same server's forecasts are made perfect: it goes back to the model. The judging window is
    shortened to 3 h (2 h of evidence) so the test runs in simulated hours, not days; the rule is the same.
    """
    from daemon_state import Daemon, DaemonSettings, accuracy_document
    from forecast_engine import display_metrics

    monkeypatch.setattr(live_selection, "LIVE_SELECTION",
                        dataclasses.replace(live_selection.LIVE_SELECTION, window_hours=3, min_hours=2))
    daemon = Daemon(DaemonSettings(model_dir=tiny_training.model_dir, store_path=tmp_path / "s.sqlite3",
                                   established_hours=0.0))
    engine = daemon.engine
    sim = FleetSimulator(fleet=TINY_FLEET, seed=43, start="2026-03-02T00:00:00Z")
    records = sim.records(sim.advance(150))
    frame = pd.DataFrame(records)
    victim = sorted(frame["server_name"].unique())[0]
    fleet_size = frame["server_name"].nunique()
    assert victim in engine.known  # a server the model was trained on: it starts on the model
    buckets = sorted(frame["timestamp"].unique())
    memory = {r["timestamp"]: r["mem_used_pct"] for r in records if r["server_name"] == victim}
    target = engine.spec.targets.index("mem_used_pct")
    mode = {"now": "bad"}
    predict = engine.predict_fleet

    def sabotaged(names, windows, states, profiles, lengths, origin, yesterdays=None):
        quantiles = predict(names, windows, states, profiles, lengths, origin, yesterdays)
        i = names.index(victim)
        if mode["now"] == "bad":  # far from anything the server does
            quantiles[i, target] = 1.0
        else:  # the truth, from the records to come
            steps = quantiles.shape[2]
            truth = [memory.get(buckets[min(len(buckets) - 1, first_index + 1 + d)], np.nan) for d in range(steps)]
            quantiles[i, target] = np.asarray(truth)[:, None]
        return quantiles

    monkeypatch.setattr(engine, "predict_fleet", sabotaged)
    history = 30
    daemon.ingest([r for r in records if buckets.index(r["timestamp"]) < history])
    served_last: list[bool] = []
    for first_index in range(history, len(buckets)):
        daemon.ingest([r for r in records if r["timestamp"] == buckets[first_index]])
        if first_index == history + 5 * STEPS_PER_HOUR:
            mode["now"] = "perfect"
        result = daemon.run_cycle(daemon.fleet.newest_bucket)
        assert result is not None
        prediction = result.servers[victim].prediction
        served_last.append("30min" in prediction.last_value_served.get("mem_used_pct", []))
        if mode["now"] == "bad" and served_last[-1]:
            # served: p50 is the last value; stored (and scored): the model's own forecast
            assert prediction.predictions["30min"]["mem_used_pct"]["p50"] == pytest.approx(
                prediction.current["mem_used_pct"], abs=1e-3)
            [blob] = [b for s, b in daemon.store.forecasts_at(result.origin) if s == victim]
            stored = bands_of([blob], len(display_metrics(engine.spec.targets)))[0]
            assert stored[display_metrics(engine.spec.targets).index("mem_used_pct"), 0, 1] == pytest.approx(1.0)
            series = 'tft_forecast_last_value_servers{horizon_seconds="1800",metric="mem_used_pct"}'
            gauge = [line for line in generate_latest(daemon.metrics.registry).decode().splitlines()
                     if line.startswith(series)]
            assert gauge and float(gauge[0].split()[-1]) >= 1.0
            summary = accuracy_document(daemon, None, "mem_used_pct", "30min", None, None).live_selection
            [row] = summary.rows
            assert row.servers == float(gauge[0].split()[-1]) and row.of == fleet_size
            assert victim in {s.server_name for s in summary.servers}
    bad_cycles = 5 * STEPS_PER_HOUR
    flipped = served_last.index(True)
    assert flipped < bad_cycles  # judged within the bad hours
    assert all(served_last[flipped:bad_cycles])  # and stays so while the model keeps losing
    assert not served_last[-1]  # the perfect forecasts earned the model back
    back = flipped + served_last[flipped:].index(False)
    assert back > bad_cycles
    assert daemon.accuracy.selection.switches["model"] >= 1


def test_the_backtest_replays_the_selection_a_daemon_would_make(tiny_training, monkeypatch):
    """tft_evaluate.served_forecasts: one server's memory forecasts sabotaged -> served the last value after the
    evidence, never before; in order, and said in the report."""
    from forecast_engine import display_metrics
    from tft_evaluate import predict_windows, served_forecasts
    from tft_model import load_model

    monkeypatch.setattr(live_selection, "LIVE_SELECTION",
                        dataclasses.replace(live_selection.LIVE_SELECTION, window_hours=3, min_hours=2))
    loaded = load_model(tiny_training.model_dir)
    spec, data = loaded.spec, tiny_training.data
    store = data.store
    servers, starts = store.window_starts(data.val_end_tidx + 1, int(store.time_idx.max()), stride=1)
    forecasts = predict_windows(loaded.model, store, servers, starts)
    j = spec.targets.index("mem_used_pct")
    victim = servers == servers[0]
    forecasts[victim, j] = 1.0  # far below anything the server does
    report: dict = {}
    served = served_forecasts(spec, store, servers, starts, forecasts, report=report)
    alone = served_forecasts(spec, store, servers, starts, forecasts, selection=False)
    last = store.targets[store.offsets[servers] + starts + spec.encoder_length - 1]  # (W, targets)
    moved = ~np.isclose(served[:, j, 0, 1], alone[:, j, 0, 1])
    assert moved[victim].sum() > 0 and not moved[victim][:STEPS_PER_HOUR].any()  # evidence (2 hours with scores) first
    np.testing.assert_allclose(served[victim & moved, j, 0, 1], last[victim & moved, j], atol=1e-6)
    # (the tiny model's other series may flip too, on their own evidence: a barely trained model)
    assert report["last_value_share"]["mem_used_pct"]["30min"] > 0
    assert report["switches"]["last_value"] >= 1
    assert (served[..., 0] <= served[..., 1]).all() and (served[..., 1] <= served[..., 2]).all()
    metrics = display_metrics(spec.targets)
    assert set(report["last_value_share"]) == set(metrics)
