"""Statistical baselines (baselines.py): shapes, ordering, no look-ahead, and what each method is good at.

Most tests use a hand-made store (the four attributes ``statistical_forecasts`` reads) with series
whose right answer is known: a clean daily sine, a random walk, a constant. One test runs the
real feature pipeline on a small generated fleet.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pytest

from baselines import statistical_forecasts
from config import BASELINES, INTEGER_METRICS, METRIC_RANGES, STEPS_PER_DAY, TRAINING_DATA_FILE

ENCODER, DECODER = 24, 96
DAYS = 5
# The hand-made server: a daily sine (load), a random walk (network), a constant count.
TARGETS = ["load_average", "net_in_mb_s", "back_close_wait"]
SINE, WALK, CONSTANT = range(3)
ORIGINS = np.array([3 * STEPS_PER_DAY, 3 * STEPS_PER_DAY + 137, 4 * STEPS_PER_DAY + 5, DAYS * STEPS_PER_DAY - DECODER])


@dataclass
class FakeSpec:
    encoder_length: int
    prediction_length: int
    targets: list[str]


class FakeStore:
    """What statistical_forecasts reads from a tft_features.SeriesStore."""

    def __init__(self, blocks: list[np.ndarray], targets: list[str]) -> None:
        self.spec = FakeSpec(ENCODER, DECODER, list(targets))
        self.lengths = np.array([len(b) for b in blocks], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(self.lengths)[:-1]].astype(np.int64)
        self.targets = np.concatenate(blocks).astype(np.float32)

    def copy(self) -> FakeStore:
        blocks = [self.targets[o:o + n].copy() for o, n in zip(self.offsets, self.lengths, strict=True)]
        return FakeStore(blocks, self.spec.targets)


def server_block(seed: int = 0, rows: int = DAYS * STEPS_PER_DAY) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.arange(rows)
    sine = 5.0 + 3.0 * np.sin(2 * np.pi * r / BASELINES.season_length) + rng.normal(0, 0.05, rows)
    walk = 300.0 + np.cumsum(rng.normal(0, 1.0, rows))
    constant = np.full(rows, 7.0)
    return np.stack([sine, walk, constant], axis=1)


@pytest.fixture(scope="module")
def store() -> FakeStore:
    return FakeStore([server_block(0)], TARGETS)


@pytest.fixture(scope="module")
def windows() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(len(ORIGINS), dtype=np.int64), ORIGINS - ENCODER


@pytest.fixture(scope="module")
def forecasts(store, windows) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    return statistical_forecasts(store, *windows, progress=False)


def actuals(store: FakeStore, servers: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(W, targets, D), indexed as tft_evaluate.actuals_and_baselines does."""
    rows = (store.offsets[servers] + starts + ENCODER)[:, None] + np.arange(DECODER)[None, :]
    return store.targets[rows].transpose(0, 2, 1)


def test_shapes_order_and_seconds(forecasts, windows):
    out, seconds = forecasts
    assert set(out) == set(BASELINES.statistical_methods) == set(seconds)
    for method, values in out.items():
        assert values.shape == (len(windows[0]), len(TARGETS), DECODER, 3) and values.dtype == np.float32
        assert np.isfinite(values).all(), method
        assert (values[..., 0] <= values[..., 1]).all() and (values[..., 1] <= values[..., 2]).all()
        assert seconds[method] > 0


def test_mstl_holds_the_daily_season_and_autoets_does_not(store, windows, forecasts):
    out, _ = forecasts
    truth = actuals(store, *windows)[:, SINE]
    step = 8 * 12 - 1  # 8 hours ahead
    mae = {m: float(np.abs(out[m][:, SINE, step, 1] - truth[:, step]).mean()) for m in BASELINES.statistical_methods}
    assert mae["mstl"] < 0.2, mae  # noise is 0.05, amplitude 3
    assert mae["mstl"] < 0.2 * mae["autoets"], mae
    # ... over the whole 8 hours too, and its 80 % band covers the sine most of the time
    band = out["mstl"][:, SINE]
    assert np.abs(band[..., 1] - truth).mean() < 0.2
    assert ((band[..., 0] <= truth) & (truth <= band[..., 2])).mean() > 0.5


def test_mstl_forward_at_the_fit_end_is_mstl_predict(store):
    """The per-origin rule (fitted season + trend forecaster's forward) is MSTL's own forecast."""
    from statsforecast.models import MSTL, AutoETS

    from baselines import _fit, _Tally

    fit_end = int(ORIGINS[0])
    for j in (SINE, WALK):
        y = store.targets[:fit_end, j].astype(np.float64)
        mean, low, high = _fit("mstl", y, fit_end, _Tally()).forward(y, 0, DECODER)
        ref = MSTL(season_length=BASELINES.season_length, trend_forecaster=AutoETS(model="ZZN")).fit(y).predict(
            DECODER, level=[80])
        np.testing.assert_allclose(mean, ref["mean"], atol=1e-4)
        # the band's sigma comes from the forward pass's residuals: the same to a few percent
        np.testing.assert_allclose(high - low, ref["hi-80"] - ref["lo-80"], rtol=0.05)


def test_autoets_starts_from_the_last_value_of_a_random_walk(store, windows, forecasts):
    out, _ = forecasts
    last = store.targets[store.offsets[0] + ORIGINS - 1, WALK]
    first_step = out["autoets"][:, WALK, 0, 1]
    np.testing.assert_allclose(first_step, last, atol=0.5)  # one step of the walk has sd 1
    spread = out["autoets"][:, WALK, :, 2] - out["autoets"][:, WALK, :, 0]
    assert (spread[:, -1] > spread[:, 0]).all()  # a random walk's band widens with the horizon


def test_constant_series_is_persistence_with_zero_width(forecasts):
    out, _ = forecasts
    for values in out.values():
        assert (values[:, CONSTANT] == 7.0).all()


def test_no_window_reads_its_origin_or_later(store, windows, forecasts):
    out, _ = forecasts
    for w in (0, len(ORIGINS) - 1):  # the earliest origin (also the fit's end) and the latest
        poisoned = store.copy()
        poisoned.targets[poisoned.offsets[0] + ORIGINS[w]:, :2] = 1e6  # unbounded metrics: clipping hides nothing
        changed, _ = statistical_forecasts(poisoned, *windows, progress=False)
        kept = ORIGINS <= ORIGINS[w]  # windows whose history ends at or before the poison
        for method in BASELINES.statistical_methods:
            np.testing.assert_array_equal(changed[method][kept], out[method][kept], err_msg=method)
            if not kept.all():
                assert not np.array_equal(changed[method][~kept], out[method][~kept])


def test_untargeted_metrics_are_nan_and_unknown_names_raise(store, windows):
    out, seconds = statistical_forecasts(store, *windows, methods=["autoets"], targets=["net_in_mb_s"],
                                         progress=False)
    assert set(out) == {"autoets"} == set(seconds)
    assert np.isfinite(out["autoets"][:, WALK]).all()
    assert np.isnan(out["autoets"][:, [SINE, CONSTANT]]).all()
    empty, _ = statistical_forecasts(store, np.zeros(0, int), np.zeros(0, int), progress=False)
    assert all(v.shape == (0, len(TARGETS), DECODER, 3) for v in empty.values())
    with pytest.raises(ValueError, match="autotheta"):
        statistical_forecasts(store, *windows, methods=["autoets", "prophet"])
    with pytest.raises(ValueError, match="cpu_idle_pct"):
        statistical_forecasts(store, *windows, targets=["cpu_idle_pct"])


def test_missing_values_short_history_and_logs(caplog):
    short = server_block(1, rows=BASELINES.season_length + 200)  # under two seasons before its origin
    holes = server_block(2)
    holes[100, WALK] = np.nan
    fleet = FakeStore([short, holes], TARGETS)
    servers = np.array([0, 1, 1])
    starts = np.array([BASELINES.season_length + 100, 3 * STEPS_PER_DAY, 3 * STEPS_PER_DAY + 50]) - ENCODER
    with caplog.at_level(logging.INFO, logger="baselines"):
        out, _ = statistical_forecasts(fleet, servers, starts, methods=["mstl"], progress=False)
    values = out["mstl"]
    assert np.isfinite(values).all()
    last = fleet.targets[fleet.offsets[servers] + starts + ENCODER - 1]
    # the series with a hole: persistence, zero width
    np.testing.assert_array_equal(values[1:, WALK], np.broadcast_to(last[1:, WALK, None, None], (2, DECODER, 3)))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "persistence fallback for 3 of 6 series (constant 2, missing values 1" in messages
    assert "2 of 6 series have under" in messages  # the short server's sine and walk: AutoETS, no season
    assert "3 windows x 3 targets" in messages


def test_progress_lines(store, windows, caplog, monkeypatch):
    import baselines

    monkeypatch.setattr(baselines, "BASELINES", dataclasses.replace(baselines.BASELINES, progress_seconds=0.0))
    for progress in (True, False):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="baselines"):
            statistical_forecasts(store, *windows, methods=["autoets"], targets=["net_in_mb_s"], progress=progress)
        lines = [r.getMessage() for r in caplog.records if "% (" in r.getMessage()]
        assert bool(lines) == progress, lines
        assert any("4 windows x 1 targets" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore:X has feature names:UserWarning")  # the dataset's scalers, not ours
def test_generated_fleet_through_the_feature_pipeline(tmp_path):
    from metrics_generator import generate_dataset
    from tft_features import build_features

    generate_dataset(out_dir=tmp_path, hours=4 * 24 + 12, fleet={"web_api": 1, "database": 1}, seed=5,
                     progress=False)
    targets = ["cpu_idle_pct", "mem_used_pct", "back_close_wait"]
    features = build_features(tmp_path / TRAINING_DATA_FILE, encoder_length=ENCODER, targets=targets,
                              dataset_servers=1, dataset_rows=ENCODER + DECODER + 10)
    store = features.store
    first = int(store.time_idx.min()) + 3 * STEPS_PER_DAY
    servers, starts = store.window_starts(first, None, stride=72)
    assert store.n_servers == 2 and len(set(servers.tolist())) == 2 and len(servers) >= 4
    out, seconds = statistical_forecasts(store, servers, starts, methods=BASELINES.statistical_methods_all,
                                         targets=["cpu_idle_pct", "back_close_wait"], progress=False)
    assert set(seconds) == set(BASELINES.statistical_methods_all)
    truth = store.targets[(store.offsets[servers] + starts + ENCODER)[:, None] + np.arange(DECODER)]
    for method, values in out.items():
        assert values.shape == (len(servers), len(targets), DECODER, 3)
        assert np.isnan(values[:, 1]).all(), "mem_used_pct was not asked for"
        for j in (0, 2):
            name = targets[j]
            v = values[:, j]
            assert np.isfinite(v).all() and (v[..., 0] <= v[..., 1]).all() and (v[..., 1] <= v[..., 2]).all()
            low, high = METRIC_RANGES[name]
            assert v.min() >= low and (high is None or v.max() <= high), (method, name)
            if name in INTEGER_METRICS:
                assert (v == np.round(v)).all()
        # a sane forecast: the 1-hour p50 error on CPU idle is a few points, not tens
        assert np.abs(values[:, 0, 11, 1] - truth[:, 11, 0]).mean() < 15, method
