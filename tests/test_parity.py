"""Train/serve parity: the daemon's path and the backtest's path give the same forecast.

The same gappy history goes (a) through the daemon: ``POST /feed``'s ingest -> SQLite store ->
windows rebuilt from the store, as after a restart -> forecast engine; and (b) through the
backtest: contract Parquet -> ``build_features`` (load -> densify -> ids -> series store) ->
``predict_windows``. Both must produce the same p10/p50/p90 for a known server, a server the
model never saw, and a server whose window holds an offline gap. (The anchor project served
heuristics for months because nothing compared these two paths.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from config import FEATURES, QUANTILE_LABELS
from contract import bucket_of_times
from daemon_state import Daemon, DaemonSettings
from forecast_engine import ForecastEngine, display_forecast
from metrics_generator import FleetSimulator
from metrics_store import FleetWindows
from tests.helpers import TINY_FLEET
from tft_evaluate import predict_windows
from tft_features import build_features
from tft_model import load_model

UNKNOWN = "ppdb777"  # never in the tiny model's mapping
GAP_BUCKETS = 4  # an outage inside the last encoder window (the server is back before the origin)


@pytest.fixture(scope="module")
def history(tiny_training) -> tuple[list[dict], int, str]:
    """Records of the tiny fleet plus a stranger, a gap cut out of one server; the forecast origin.

    The tiny fleet has a day more than the encoder reads (yesterday's inputs fully known); the
    stranger starts a little less than a day before the origin (known for the window's later steps only).
    """
    spec = load_model(tiny_training.model_dir).spec
    enc, dec, lag = spec.encoder_length, spec.prediction_length, spec.seasonal_lag
    assert lag, "the default recipe gives the model yesterday's values"
    sim = FleetSimulator(fleet=TINY_FLEET, seed=31, start="2026-03-09T00:00:00Z")
    records = sim.records(sim.advance(lag + enc + 6 + dec))  # yesterday, history, origin, the decoder's actuals
    stranger = FleetSimulator(fleet={"database": 1}, seed=32, start="2026-03-09T00:00:00Z")
    def bucket(record: dict) -> int:
        return int(bucket_of_times(pd.DatetimeIndex([pd.Timestamp(record["timestamp"])]))[0])

    first = bucket(records[0])
    records += [dict(r, server_name=UNKNOWN) for r in stranger.records(stranger.advance(lag + enc + 6 + dec))
                if bucket(r) >= first + 6 + (enc + dec) // 2]  # a day before the origin, less ~3 h
    buckets = bucket_of_times(pd.DatetimeIndex(pd.to_datetime([r["timestamp"] for r in records], utc=True)))
    origin = first + lag + enc + 5
    gappy = sorted({r["server_name"] for r in records if r["server_name"] != UNKNOWN})[0]
    gap = range(origin - 10, origin - 10 + GAP_BUCKETS)
    kept = [r for r, b in zip(records, buckets, strict=True) if not (r["server_name"] == gappy and b in gap)]
    return kept, origin, gappy


def _daemon_fans(model_dir, records: list[dict], origin: int, store_path) -> tuple[dict[str, dict], FleetWindows]:
    """Feed -> store -> windows rebuilt from the store -> engine."""
    daemon = Daemon(DaemonSettings(model_dir=model_dir, store_path=store_path))
    fed = [r for r in records if pd.Timestamp(r["timestamp"]) < pd.Timestamp(0, tz="UTC") + pd.Timedelta(
        minutes=5 * (origin + 1))]
    response = daemon.ingest(fed)
    assert not response.rejected and len(response.stored) == len(fed)
    fleet = daemon.store.load_windows()  # what a restarted daemon holds
    daemon.close()
    result = ForecastEngine(load_model(model_dir)).forecast(fleet, origin)
    return {name: r.fan for name, r in result.servers.items() if r.fan is not None}, fleet


def _backtest_fans(model_dir, records: list[dict], origin: int, parquet) -> dict[str, dict]:
    """Parquet -> load -> densify -> model columns -> SeriesStore -> predict_windows."""
    frame = pd.DataFrame(records)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame.to_parquet(parquet, index=False)
    loaded = load_model(model_dir)
    store = build_features(parquet, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0).store
    enc = loaded.spec.encoder_length
    servers = np.arange(store.n_servers)
    starts = origin - enc + 1 - store.time_idx[store.offsets]  # the window whose last history bucket is origin
    quantiles = predict_windows(loaded.model, store, servers, starts)
    fan = display_forecast(quantiles, loaded.spec.targets)
    return {name: {m: {q: band[q][i] for q in QUANTILE_LABELS} for m, band in fan.items()}
            for i, name in enumerate(store.server_names)}


def test_daemon_and_backtest_paths_agree(tiny_training, history, tmp_path):
    records, origin, gappy = history
    served, fleet = _daemon_fans(tiny_training.model_dir, records, origin, tmp_path / "store.sqlite3")
    backtested = _backtest_fans(tiny_training.model_dir, records, origin, tmp_path / "history.parquet")
    assert UNKNOWN not in load_model(tiny_training.model_dir).encoder.name_to_id
    known = sorted(set(served) - {UNKNOWN, gappy})[0]
    for name in (known, UNKNOWN, gappy):
        assert name in served and name in backtested, name
        for metric in served[name]:
            for q in QUANTILE_LABELS:
                np.testing.assert_allclose(served[name][metric][q], backtested[name][metric][q], rtol=0, atol=1e-4,
                                           err_msg=f"{name} {metric} {q}")
    # The gap is really in the daemon's window (offline buckets), and nowhere else.
    spec = load_model(tiny_training.model_dir).spec
    enc, dec = spec.encoder_length, spec.prediction_length
    present = {name: fleet.servers[name].window(origin, enc)[2] for name in (known, UNKNOWN, gappy)}
    assert (~present[gappy]).sum() == GAP_BUCKETS and present[known].all() and present[UNKNOWN].all()
    # Yesterday is fully known for the fleet, partly for the stranger (its inputs were compared above).
    lag = spec.seasonal_lag
    assert fleet.servers[known].first_bucket <= origin - enc + 1 - lag
    assert origin - enc + 1 - lag < fleet.servers[UNKNOWN].first_bucket < origin - lag + dec


def test_offline_forecast_and_backtest_agree_on_imported_traces(tmp_path):
    """Train/serve skew on imported real-format traces: ``main.py infer --data`` vs the backtest's path.

    CPU, memory and bursty network from Bitbrains-format CSVs (one VM with an outage), imported,
    trained on (tiny model), then forecast from the last bucket by the daemon's offline path (a
    subprocess) and by ``build_features`` -> ``predict_windows``: the same quantiles (to the 3
    decimals the API shows).
    """
    import json

    from config import PROJECT_ROOT
    from tests.helpers import TINY_TRAIN_ARGS, run_cli, write_bitbrains_trace
    from tft_trainer import build_arg_parser, settings_from_args, train
    from trace_importer import import_traces

    src = tmp_path / "src"
    src.mkdir()
    start = 1375308176
    write_bitbrains_trace(src / "19.csv", start, 700, seed=1, bursty_network=True)
    # 7 missing samples, 12-19 buckets before the origin: offline buckets inside the encoder window
    write_bitbrains_trace(src / "7.csv", start + 40, 700, seed=2, gap=(585, 592), bursty_network=True)
    data = tmp_path / "training" / "server_metrics.parquet"
    import_traces(sorted(src.glob("*.csv")), PROJECT_ROOT / "mappings" / "bitbrains_rnd.json", data)
    args = build_arg_parser().parse_args(["--data", str(data), "--models-dir", str(tmp_path / "models"),
                                          *TINY_TRAIN_ARGS, "--unseen-per-profile", "0", "--no-backtest"])
    model_dir = train(settings_from_args(args)).model_dir
    loaded = load_model(model_dir)
    assert loaded.spec.targets == ["cpu_idle_pct", "mem_used_pct", "net_in_mb_s", "net_out_mb_s"]
    store = build_features(data, encoder=loaded.encoder, spec=loaded.spec, dataset_servers=0).store
    origin = int(store.time_idx.max()) - loaded.spec.prediction_length  # the backtest needs the decoder's rows
    frame = pd.read_parquet(data)
    history = tmp_path / "history.parquet"
    frame[bucket_of_times(frame["timestamp"]) <= origin].to_parquet(history, index=False)
    out = tmp_path / "predictions.json"
    result = run_cli("main.py", "infer", "--model-dir", str(model_dir), "--data", str(history), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(out.read_text())["fans"]

    servers = np.arange(store.n_servers)
    starts = origin - loaded.spec.encoder_length + 1 - store.time_idx[store.offsets]
    fan = display_forecast(predict_windows(loaded.model, store, servers, starts), loaded.spec.targets)
    assert sorted(served) == sorted(store.server_names)
    for i, name in enumerate(store.server_names):
        assert set(served[name]) == set(fan), name
        for metric, band in fan.items():
            for q in QUANTILE_LABELS:
                np.testing.assert_allclose(served[name][metric][q], band[q][i], rtol=0, atol=1.5e-3,
                                           err_msg=f"{name} {metric} {q}")


def test_a_model_without_yesterday_is_served_as_before(tiny_data, history, tmp_path, monkeypatch):
    """A model trained without yesterday's inputs (as every model before 0.14.0) still serves, and both paths agree.

    Costs a second tiny training (~20 s).
    """
    import tft_features
    from tests.helpers import TINY_TRAIN_ARGS
    from tft_trainer import build_arg_parser, settings_from_args, train

    monkeypatch.setattr(tft_features, "FEATURES", dataclasses.replace(tft_features.FEATURES, seasonal_input=False))
    args = build_arg_parser().parse_args(["--data", str(tiny_data), "--models-dir", str(tmp_path / "models"),
                                          *TINY_TRAIN_ARGS, "--unseen-per-profile", "0", "--no-backtest"])
    model_dir = train(settings_from_args(args)).model_dir
    spec = load_model(model_dir).spec
    assert spec.seasonal_lag is None and spec.seasonal_inputs == [] and spec.history_buckets == spec.encoder_length
    assert not any(name.endswith(FEATURES.seasonal_input_suffix) for name in spec.x_reals)
    records, origin, _ = history
    served, _ = _daemon_fans(model_dir, records, origin, tmp_path / "store.sqlite3")
    backtested = _backtest_fans(model_dir, records, origin, tmp_path / "history.parquet")
    assert set(served) == set(backtested) and len(served) > 2
    for name in served:
        for metric in served[name]:
            for q in QUANTILE_LABELS:  # float32 rounding: busy network (250 MB/s) differs in the 7th digit
                np.testing.assert_allclose(served[name][metric][q], backtested[name][metric][q], rtol=1e-6,
                                           atol=1e-4, err_msg=f"{name} {metric} {q}")
