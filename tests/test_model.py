"""FleetTFT computes exactly what the stock TemporalFusionTransformer computes, faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_forecasting import TemporalFusionTransformer
from torch import nn

from tft_features import build_features
from tft_model import FleetTFT, build_model, make_loss


@pytest.fixture(scope="module")
def setup(tiny_data):
    """The tiny fleet's features; the model is built from a two-server dataset."""
    features = build_features(tiny_data, encoder_length=24, dataset_servers=2, dataset_rows=130)
    return features.frame, features.spec, features.dataset, features.store


def model_pair(dataset, spec, dropout: float) -> tuple[FleetTFT, TemporalFusionTransformer]:
    """A FleetTFT and a stock TemporalFusionTransformer with the same weights."""
    torch.manual_seed(0)
    fast = build_model(dataset, spec, hidden_size=16, attention_heads=4, hidden_continuous_size=8, dropout=dropout)
    hparams = {k: v for k, v in dict(fast.hparams).items() if k not in ("loss", "logging_metrics")}
    stock = TemporalFusionTransformer(**hparams, loss=make_loss(spec), logging_metrics=nn.ModuleList())
    stock.load_state_dict(fast.state_dict())  # same parameter names and shapes
    return fast, stock


def window_batch(store, n=48, seed=0, short=False):
    """``n`` random windows of the store (``short``: random history lengths)."""
    servers, starts = store.window_starts()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(servers), n)
    lengths = rng.integers(store.spec.min_encoder_length, store.spec.encoder_length + 1, n) if short else None
    return store.batch(servers[pick], starts[pick], encoder_lengths=lengths)


@pytest.mark.parametrize("short", [False, True], ids=["full_history", "mixed_short_history"])
def test_fast_forward_equals_stock_forward(setup, short):
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    x, _ = window_batch(store, short=short)
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    for a, b in zip(ours["prediction"], theirs["prediction"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for key in ("encoder_variables", "decoder_variables", "static_variables", "encoder_attention",
                "decoder_attention"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


def test_cycle_batches_share_calendar_work_and_still_equal_stock(setup):
    """A daemon cycle: every window ends at the same bucket, so calendar inputs are shared."""
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    servers = np.arange(store.n_servers)
    x, _ = store.batch(servers, np.full(store.n_servers, 30))
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    for a, b in zip(ours["prediction"], theirs["prediction"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["encoder_variables"], theirs["encoder_variables"], rtol=1e-4, atol=1e-5)


def test_fused_attention_for_serving_gives_the_same_forecast(setup):
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    x, _ = window_batch(store, short=True)
    fast.return_attention = False
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    assert ours["encoder_attention"] is None
    for a, b in zip(ours["prediction"], theirs["prediction"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fast_gradients_equal_stock_gradients(setup):
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.0)  # no dropout: training mode is deterministic
    fast.train(), stock.train()
    x, y = window_batch(store, seed=1)
    for model in (fast, stock):
        model.zero_grad()
        model.loss(model(x)["prediction"], y).backward()
    grads_fast = dict(fast.named_parameters())
    for name, param in stock.named_parameters():
        if param.grad is None:
            assert grads_fast[name].grad is None or grads_fast[name].grad.abs().max() == 0, name
            continue
        torch.testing.assert_close(grads_fast[name].grad, param.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_future_unknowns_cannot_leak_into_the_forecast(setup):
    """Decoder positions of unknown inputs (metrics, state) must not change the forecast."""
    _, spec, dataset, store = setup
    fast, _ = model_pair(dataset, spec, dropout=0.1)
    fast.eval()
    x, _ = window_batch(store, seed=2)
    unknown_cols = [i for i, name in enumerate(spec.x_reals)
                    if name not in fast.hparams.time_varying_reals_decoder]
    tampered = dict(x)
    tampered["decoder_cont"] = x["decoder_cont"].clone()
    tampered["decoder_cont"][:, :, unknown_cols] = torch.randn_like(tampered["decoder_cont"][:, :, unknown_cols]) * 50
    tampered["decoder_cat"] = x["decoder_cat"].clone()
    tampered["decoder_cat"][:, :, spec.x_categoricals.index("state")] = 0
    with torch.no_grad():
        before, after = fast(x)["prediction"], fast(tampered)["prediction"]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_profile_changes_the_forecast(setup):
    """The static profile input is wired through (an unknown profile forecasts differently)."""
    _, spec, dataset, store = setup
    fast, _ = model_pair(dataset, spec, dropout=0.1)
    fast.eval()
    servers, starts = store.window_starts()
    x, _ = store.batch(servers[:8], starts[:8])
    hidden, _ = store.batch(servers[:8], starts[:8], hide_profile=np.ones(8, dtype=bool))
    with torch.no_grad():
        a, b = fast(x)["prediction"][0], fast(hidden)["prediction"][0]
    assert (a - b).abs().max() > 1e-4
