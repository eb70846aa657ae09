"""Feature pipeline: our vectorised batches equal TimeSeriesDataSet's, densify follows the contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from config import FEATURES, GROUP_ID, LINBORG_METRICS, TRAINING_DATA_FILE
from contract import bucket_of_times
from metrics_generator import generate_dataset
from server_encoder import ServerEncoder
from tft_features import (
    NAN_CODE,
    SeriesStore,
    add_model_columns,
    build_features,
    calendar_features,
    densify,
    fit_feature_spec,
    load_training_frame,
)


@pytest.fixture(scope="module")
def sparse_frame(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse")
    generate_dataset(out, hours=48, fleet={"web_api": 2, "database": 2, "ml_compute": 2}, seed=3,
                     offline_mode="sparse", progress=False)
    return load_training_frame(out / TRAINING_DATA_FILE)


@pytest.fixture(scope="module")
def prepared(sparse_frame):
    features = build_features(sparse_frame, encoder_length=24)  # the dataset: every server, every row
    return features.frame, features.spec, features.dataset


def test_densify_fills_gaps_with_the_offline_vector(sparse_frame):
    dense = densify(sparse_frame)
    per_server = dense.groupby(dense["server_name"].astype(str)).size()
    assert (per_server == 48 * 12).all()
    added = dense.merge(sparse_frame[["server_name", "timestamp"]].astype({"server_name": str}).assign(seen=True),
                        how="left", on=["server_name", "timestamp"])
    added = added[added["seen"].isna()]
    assert len(added) > 0
    assert (added["state"].astype(str) == "offline").all()
    assert (added["cpu_idle_pct"] == 100.0).all() and (added["net_in_mb_s"] == 0.0).all()
    # disk and uptime carry forward from the last sample
    for _, row in added.iterrows():
        server = dense[(dense["server_name"].astype(str) == row["server_name"])
                       & (dense["timestamp"] < row["timestamp"])]
        last_seen = server[server["state"].astype(str) != "offline"].iloc[-1]
        assert row["disk_usage_pct"] == last_seen["disk_usage_pct"]
        break


def test_calendar_features_match_pandas():
    ts = pd.date_range("2026-03-02 07:35", periods=500, freq="5min", tz="UTC")
    features = calendar_features(bucket_of_times(ts))
    hours = ts.hour + ts.minute / 60
    np.testing.assert_allclose(features["tod_sin"], np.sin(2 * np.pi * hours / 24), atol=1e-6)
    dow = ts.dayofweek + hours / 24
    np.testing.assert_allclose(features["dow_cos"], np.cos(2 * np.pi * dow / 7), atol=1e-6)
    np.testing.assert_allclose(features["moh_sin"], np.sin(2 * np.pi * ts.minute / 60), atol=1e-6)


def test_batches_equal_timeseriesdataset_batches(prepared):
    frame, spec, dataset = prepared
    store = SeriesStore(frame, spec)
    loader = dataset.to_dataloader(train=False, batch_size=len(dataset), shuffle=False)
    x_ref, y_ref = next(iter(loader))
    # Locate each stock sample in our store: its group code and its first time index.
    group_codes = x_ref["groups"][:, 0].numpy()
    first_tidx = x_ref["decoder_time_idx"][:, 0].numpy() - spec.encoder_length  # full-length window start
    server_of_code = {int(c): s for s, c in enumerate(store.group_codes)}
    servers = np.array([server_of_code[int(c)] for c in group_codes])
    lengths = x_ref["encoder_lengths"].numpy()
    assert (lengths < spec.encoder_length).any(), "the stock batch should include short-history windows"
    starts = first_tidx - store.time_idx[store.offsets[servers]]
    x, y = store.batch(servers, starts, encoder_lengths=lengths)
    # Stock normalises each window in float32, we in float64: equal to float32 rounding. Yesterday's
    # inputs have no stock counterpart (the stock dataset holds zeros; checked on their own below).
    stock_cols = [j for j, name in enumerate(spec.x_reals) if name not in spec.seasonal_inputs]
    assert len(stock_cols) == len(spec.x_reals) - len(spec.targets) - 1
    for key in ("encoder_cont", "decoder_cont"):
        torch.testing.assert_close(x[key][..., stock_cols], x_ref[key][..., stock_cols].float(), rtol=1e-4,
                                   atol=1e-4, msg=key)
    for key in ("encoder_cat", "decoder_cat", "encoder_lengths", "decoder_lengths", "groups", "decoder_time_idx"):
        torch.testing.assert_close(x[key], x_ref[key], msg=key)
    for key in ("encoder_target", "decoder_target", "target_scale"):
        for ours, theirs in zip(x[key], x_ref[key], strict=True):
            torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-4, msg=key)
    for ours, theirs in zip(y[0], y_ref[0], strict=True):
        torch.testing.assert_close(ours, theirs.float())
    assert y[1] is None and y_ref[1] is None


def test_yesterday_is_the_hour_around_the_same_time_a_day_earlier_normalised_like_the_target(prepared):
    """``<target>_yesterday`` = (mean of the transformed values in the hour around the step's time a day
    earlier - anchor) / spread; 0 with the flag off where that hour starts before the server's first bucket."""
    from tft_features import transform_target

    frame, spec, _ = prepared
    assert (spec.seasonal_lag == FEATURES.seasonal_input_lag
            and spec.seasonal_half_window == FEATURES.seasonal_input_half_window)
    store = SeriesStore(frame, spec)
    enc, dec, lag, half = spec.encoder_length, spec.prediction_length, spec.seasonal_lag, spec.seasonal_half_window
    server = 1
    rows = frame[frame[GROUP_ID] == store.server_ids[server]].sort_values("time_idx")
    # a window whose yesterday starts before the server's first bucket, and one that is fully known
    starts = np.array([lag - enc - 10, lag + half + 3])
    x, _ = store.batch(np.array([server, server]), starts)
    cont = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1).numpy()
    flag = cont[:, :, spec.x_reals.index(FEATURES.seasonal_input_flag)]
    for b, start in enumerate(starts):
        steps = start + np.arange(enc + dec)
        known = steps - lag - half >= 0
        np.testing.assert_array_equal(flag[b], known.astype(np.float32))
        for j, target in enumerate(spec.targets):
            values = transform_target(target, rows[target].to_numpy(np.float64), spec)
            center, scale = x["target_scale"][j][b].numpy().astype(np.float64)
            assert center == pytest.approx(values[start + enc - 1], abs=1e-5)  # anchored on the last value
            expected = np.zeros(len(steps))
            for k, step in enumerate(steps):
                if known[k]:
                    hour = values[step - lag - half:step - lag + half + 1]
                    assert len(hour) == 2 * half + 1
                    expected[k] = np.clip((hour.mean() - center) / scale, -FEATURES.seasonal_input_clip,
                                          FEATURES.seasonal_input_clip)
            got = cont[b, :, spec.x_reals.index(f"{target}{FEATURES.seasonal_input_suffix}")]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"{target} window {b}")
    assert (flag[0] == 0).any() and (flag[0] == 1).any() and (flag[1] == 1).all()


def test_unknown_servers_and_profiles_get_the_nan_code(prepared):
    frame, spec, _ = prepared
    stranger = frame[frame["server_name"] == frame["server_name"].iloc[0]].copy()
    stranger["server_name"] = "ppweb999"
    stranger = add_model_columns(stranger.drop(columns=[GROUP_ID]), ServerEncoder())
    store = SeriesStore(stranger, spec)
    assert store.group_codes.tolist() == [NAN_CODE]
    x, _ = store.batch(np.array([0, 0]), np.array([0, 5]), hide_profile=np.array([False, True]))
    profile_col = spec.x_categoricals.index("profile")
    assert (x["encoder_cat"][0, :, profile_col] != NAN_CODE).all()
    assert (x["encoder_cat"][1, :, profile_col] == NAN_CODE).all()
    store.hide_profiles = True  # a profile-agnostic model's store: every window hides it
    x, _ = store.batch(np.array([0, 0]), np.array([0, 5]))
    assert (x["encoder_cat"][:, :, profile_col] == NAN_CODE).all()


def test_spec_round_trips_through_json(prepared):
    import json

    from tft_features import FeatureSpec

    _, spec, _ = prepared
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert set(again.scalers) >= {m for m in LINBORG_METRICS if m not in spec.targets}


def test_store_refuses_gaps(sparse_frame):
    frame = add_model_columns(sparse_frame, ServerEncoder())  # not densified
    spec = fit_feature_spec(frame, encoder_length=24)
    spec.x_reals, spec.x_categoricals = ["relative_time_idx", "cpu_idle_pct"], ["profile", "state"]
    with pytest.raises(ValueError, match="complete 5-minute grid.*densify"):
        SeriesStore(frame, spec)


def test_build_features_runs_the_recipe_step_by_step(sparse_frame):
    """load -> densify -> ids -> spec (on training rows only) -> dataset -> series store."""
    from config import TIME_IDX

    def training_rows(dense: pd.DataFrame) -> pd.DataFrame:
        return dense[dense[TIME_IDX] < dense[TIME_IDX].min() + 36 * 12]  # the first 36 hours

    features = build_features(sparse_frame, encoder_length=24, training_rows=training_rows, dataset_servers=2,
                              dataset_rows=130)
    by_hand = add_model_columns(densify(sparse_frame), ServerEncoder())
    pd.testing.assert_frame_equal(features.frame, by_hand)
    fitted = fit_feature_spec(training_rows(by_hand), encoder_length=24)  # nothing fitted on later rows
    assert features.spec.scalers == fitted.scalers and features.spec.loss_weights == fitted.loss_weights
    assert features.spec.x_reals == list(features.dataset.reals)  # the dataset recorded the tensor layout
    sampled = features.dataset.data["groups"].unique()
    assert len(sampled) == 2 and len(features.dataset.data["time"]) == 2 * 130
    assert features.store.n_servers == by_hand[GROUP_ID].nunique()  # the store holds every row
    assert list(features.seconds) == ["load", "densify", "ids", "spec", "dataset", "store"]
    # A saved model's complete spec: no fitting and no dataset, the same store.
    again = build_features(sparse_frame, spec=features.spec, dataset_servers=0)
    assert again.dataset is None and again.spec is features.spec
    np.testing.assert_array_equal(again.store.rows.reals, features.store.rows.reals)
    with pytest.raises(ValueError, match="needs encoder_length"):
        build_features(sparse_frame)


def test_a_training_history_too_short_for_a_known_yesterday_gets_no_yesterday_inputs(sparse_frame):
    """A model whose training windows never saw a known yesterday does not read one when served."""
    frame = add_model_columns(densify(sparse_frame), ServerEncoder())
    spec = fit_feature_spec(frame, encoder_length=24)
    assert spec.seasonal_lag == FEATURES.seasonal_input_lag
    short = frame.groupby(GROUP_ID, observed=True, group_keys=False).head(spec.history_buckets + 95)
    clipped = fit_feature_spec(short, encoder_length=24)
    assert clipped.seasonal_lag is None and clipped.seasonal_inputs == []
    assert clipped.history_buckets == 24
