"""A level shift in the history (memory 98 % -> 28 % on a restart) no longer blows the band up to the whole range.

Costs (2 cores): the rule's unit test < 1 s; the daemon test ~5 s (two cycles of the tiny model).
"""

from __future__ import annotations

import numpy as np
import pytest

from config import FEATURES
from metrics_generator import FleetSimulator
from tests.helpers import TINY_FLEET


@pytest.fixture(scope="module")
def spec(tiny_training):
    from tft_model import load_model

    return load_model(tiny_training.model_dir).spec


def _windows(spec, memory: np.ndarray, offline: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One window: every target at a calm 30, memory as given; states healthy (or offline in a slice)."""
    enc = spec.encoder_length
    targets = np.full((1, enc, len(spec.targets)), 30.0)
    targets[0, :, spec.targets.index("mem_used_pct")] = memory
    states = np.full((1, enc), spec.categories["state"]["healthy"])
    if offline is not None:
        states[0, offline] = spec.categories["state"]["offline"]
    return targets, states


def test_the_rule_finds_restarts_not_spikes_offline_gaps_or_small_steps(spec):
    from tft_features import settled_lengths

    enc = spec.encoder_length
    assert enc >= 24  # the cases below need 18 buckets after a reset and some context before it
    calm = 60 + 0.5 * np.sin(np.arange(enc))
    restart = np.r_[calm[:enc - 18], np.full(18, 28.0)]  # a reset 18 buckets ago
    assert settled_lengths(spec, *_windows(spec, restart))[0] == 18
    assert settled_lengths(spec, *_windows(spec, calm))[0] == enc
    spike = calm.copy()
    spike[enc // 2] = 99.0  # one bucket up and back: not a shift
    assert settled_lengths(spec, *_windows(spec, spike))[0] == enc
    half = enc // 2
    small = np.r_[calm[:half], calm[half:] + FEATURES.level_shift_min_points - 1]  # a step below the threshold
    assert settled_lengths(spec, *_windows(spec, small))[0] == enc
    gap = calm.copy()
    gap[3:7] = 0.0  # an offline gap is filled with zeros: filler, not a shift
    assert settled_lengths(spec, *_windows(spec, gap, offline=slice(3, 7)))[0] == enc
    reboot = np.r_[np.full(enc - 20, 97.0), np.zeros(4), np.full(16, 25.0)]  # full, offline, back low
    assert settled_lengths(spec, *_windows(spec, reboot, offline=slice(enc - 20, enc - 16)))[0] == 16
    recent = np.r_[calm[:enc - 3], np.full(3, 28.0)]  # 3 buckets ago: the model's minimum history
    assert settled_lengths(spec, *_windows(spec, recent))[0] == spec.min_encoder_length
    # down, then up
    back = np.r_[calm[:2], np.full(FEATURES.level_shift_context, 28.0), calm[2 + FEATURES.level_shift_context:]]
    # after the later step
    assert settled_lengths(spec, *_windows(spec, back))[0] == enc - 2 - FEATURES.level_shift_context


def test_a_memory_reset_keeps_a_band_that_says_something(tiny_training, tmp_path, monkeypatch):
    """Leak, restart, 18 buckets later: the 30-min memory band is narrow and near the new level."""
    from daemon_state import Daemon, DaemonSettings
    from forecast_engine import ForecastEngine

    sim = FleetSimulator(fleet=TINY_FLEET, seed=8, start="2026-03-02T00:00:00Z")
    records = sim.records(sim.advance(60))
    stamps = sorted({r["timestamp"] for r in records})
    for r in records:
        if r["server_name"] == "ppweb001":
            k = stamps.index(r["timestamp"])
            r["mem_used_pct"] = 50 + 47 * k / 41 if k < 42 else 28.0 + 0.3 * (k % 2)  # ramp to 97, then reset

    def band(settle: bool) -> tuple[float, float, float]:
        if not settle:
            monkeypatch.setattr(ForecastEngine, "settled", lambda self, windows, states, lengths: lengths)
        store = tmp_path / f"s{int(settle)}.sqlite3"
        daemon = Daemon(DaemonSettings(model_dir=tiny_training.model_dir, store_path=store, band_adaptation=False))
        # the model's own p50: the tiny model's persistence blend (w = 0 where its gain was not significant on
        # 12 validation hours) serves the last value with or without the cut
        daemon.engine.spec.center_weights = None
        daemon.engine.loaded.model.set_calibration(daemon.engine.spec)
        try:
            daemon.ingest(records)
            result = daemon.run_cycle(daemon.fleet.newest_bucket)
            prediction = result.servers["ppweb001"].prediction
            memory = prediction.predictions["30min"]["mem_used_pct"]
            assert prediction.history_buckets == (18 if settle else daemon.engine.spec.encoder_length)
            return memory["p10"], memory["p50"], memory["p90"]
        finally:
            daemon.close()
            monkeypatch.undo()

    low, mid, high = band(settle=True)
    old_low, old_mid, old_high = band(settle=False)
    assert high - low < (old_high - old_low) / 3, ((low, mid, high), (old_low, old_mid, old_high))
    assert abs(mid - 28.2) < abs(old_mid - 28.2)  # nearer the level it restarted at
    assert high - low < 30  # not "anything between 0 and 100"
