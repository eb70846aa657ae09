"""FleetTFT computes exactly what the stock TemporalFusionTransformer computes, faster."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pytorch_forecasting import TemporalFusionTransformer
from torch import nn

from server_encoder import ServerEncoder
from tft_features import (
    SeriesStore,
    add_model_columns,
    complete_spec_from_dataset,
    densify,
    fit_feature_spec,
    load_training_frame,
    make_timeseries_dataset,
)
from tft_model import FleetTFT, build_model, make_loss


@pytest.fixture(scope="module")
def setup(tiny_data):
    frame = add_model_columns(densify(load_training_frame(tiny_data)), ServerEncoder())
    spec = fit_feature_spec(frame, encoder_length=24)
    sample = frame[frame["server_id"].isin(frame["server_id"].unique()[:2])]
    dataset = make_timeseries_dataset(sample.groupby("server_id").head(130), spec)
    spec = complete_spec_from_dataset(spec, dataset)
    return frame, spec, dataset, SeriesStore(frame, spec)


def _pair(dataset, spec, dropout: float) -> tuple[FleetTFT, TemporalFusionTransformer]:
    torch.manual_seed(0)
    fast = build_model(dataset, spec, hidden_size=16, attention_heads=4, hidden_continuous_size=8, dropout=dropout)
    hparams = {k: v for k, v in dict(fast.hparams).items() if k not in ("loss", "logging_metrics")}
    stock = TemporalFusionTransformer(**hparams, loss=make_loss(spec), logging_metrics=nn.ModuleList())
    stock.load_state_dict(fast.state_dict())  # same parameter names and shapes
    return fast, stock


def _batch(store, n=48, seed=0, short=False):
    servers, starts = store.window_starts()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(servers), n)
    lengths = rng.integers(store.spec.min_encoder_length, store.spec.encoder_length + 1, n) if short else None
    return store.batch(servers[pick], starts[pick], encoder_lengths=lengths)


@pytest.mark.parametrize("short", [False, True], ids=["full_history", "mixed_short_history"])
def test_fast_forward_equals_stock_forward(setup, short):
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    x, _ = _batch(store, short=short)
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    for a, b in zip(ours["prediction"], theirs["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for key in ("encoder_variables", "decoder_variables", "static_variables", "encoder_attention",
                "decoder_attention"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


def test_cycle_batches_share_calendar_work_and_still_equal_stock(setup):
    """A daemon cycle: every window ends at the same bucket, so calendar inputs are shared."""
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    servers = np.arange(store.n_servers)
    x, _ = store.batch(servers, np.full(store.n_servers, 30))
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    for a, b in zip(ours["prediction"], theirs["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["encoder_variables"], theirs["encoder_variables"], rtol=1e-4, atol=1e-5)


def test_fused_attention_for_serving_gives_the_same_forecast(setup):
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.1)
    fast.eval(), stock.eval()
    x, _ = _batch(store, short=True)
    fast.return_attention = False
    with torch.no_grad():
        ours, theirs = fast(x), stock(x)
    assert ours["encoder_attention"] is None
    for a, b in zip(ours["prediction"], theirs["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fast_gradients_equal_stock_gradients(setup):
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.0)  # no dropout: training mode is deterministic
    fast.train(), stock.train()
    x, y = _batch(store, seed=1)
    for model in (fast, stock):
        model.zero_grad()
        model.loss(model(x)["prediction"], y).backward()
    grads_fast = dict(fast.named_parameters())
    for name, param in stock.named_parameters():
        if param.grad is None:
            assert grads_fast[name].grad is None or grads_fast[name].grad.abs().max() == 0, name
            continue
        torch.testing.assert_close(grads_fast[name].grad, param.grad, rtol=1e-3, atol=1e-5, msg=name)


def _forecast(model, x) -> torch.Tensor:
    """All targets' quantile forecasts as one tensor."""
    return torch.cat(list(model(x)["prediction"]), dim=-1)


def test_inference_memo_never_serves_old_weights(setup):
    """Folded parameters are memoised at inference; a training step or new weights must drop them."""
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.0)
    x, y = _batch(store, seed=3)
    fast.eval()
    with torch.no_grad():
        fast(x)  # fills the memo
    assert fast._param_memo, "inference should memoise the folded parameters"
    twin = copy.deepcopy(fast)  # a copy starts without the original's memo
    assert not twin._param_memo
    with torch.no_grad():
        for param in twin.parameters():
            param.mul_(0.9)
        assert not torch.allclose(_forecast(twin, x), _forecast(fast, x))
    fast.train()
    optimizer = torch.optim.SGD(fast.parameters(), lr=0.5)
    fast.loss(fast(x)["prediction"], y).backward()
    optimizer.step()
    stock.load_state_dict(fast.state_dict())
    fast.eval(), stock.eval()
    with torch.no_grad():
        torch.testing.assert_close(_forecast(fast, x), _forecast(stock, x), rtol=1e-4, atol=1e-4)
        stock_before = _forecast(stock, x)
        other = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in fast.state_dict().items()}
        fast.load_state_dict(other)
        stock.load_state_dict(other)
        torch.testing.assert_close(_forecast(fast, x), _forecast(stock, x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(_forecast(stock, x), stock_before)
        # In place, in eval mode, without a mode switch (e.g. an EMA update) - and in a copy.
        for (name, param), (_, twin) in zip(fast.named_parameters(), stock.named_parameters(), strict=True):
            delta = 0.01 * torch.randn_like(param)
            param.add_(delta)
            twin.add_(delta)
        torch.testing.assert_close(_forecast(fast, x), _forecast(stock, x), rtol=1e-4, atol=1e-4)


def test_future_unknowns_cannot_leak_into_the_forecast(setup):
    """Decoder positions of unknown inputs (metrics, state) must not change the forecast."""
    _, spec, dataset, store = setup
    fast, _ = _pair(dataset, spec, dropout=0.1)
    fast.eval()
    x, _ = _batch(store, seed=2)
    unknown_cols = [i for i, name in enumerate(spec.x_reals)
                    if name not in fast.hparams.time_varying_reals_decoder]
    tampered = dict(x)
    tampered["decoder_cont"] = x["decoder_cont"].clone()
    tampered["decoder_cont"][:, :, unknown_cols] = torch.randn_like(tampered["decoder_cont"][:, :, unknown_cols]) * 50
    tampered["decoder_cat"] = x["decoder_cat"].clone()
    tampered["decoder_cat"][:, :, spec.x_categoricals.index("state")] = 0
    with torch.no_grad():
        before, after = fast(x)["prediction"], fast(tampered)["prediction"]
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


def test_profile_changes_the_forecast(setup):
    """The static profile input is wired through (an unknown profile forecasts differently)."""
    _, spec, dataset, store = setup
    fast, _ = _pair(dataset, spec, dropout=0.1)
    fast.eval()
    servers, starts = store.window_starts()
    x, _ = store.batch(servers[:8], starts[:8])
    hidden, _ = store.batch(servers[:8], starts[:8], hide_profile=np.ones(8, dtype=bool))
    with torch.no_grad():
        a, b = fast(x)["prediction"][0], fast(hidden)["prediction"][0]
    assert (a - b).abs().max() > 1e-4


def test_fast_dropout_drops_p_scales_the_rest_and_is_reproducible():
    from tft_model import FastDropout

    layer = FastDropout(0.1).train()
    x = torch.ones(200, 500, requires_grad=True)
    torch.manual_seed(3)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005  # 100,000 draws: 5 standard deviations is 0.005
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(0.1 * 65536))))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation preserved
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # gradients flow only through kept elements
    torch.manual_seed(3)
    assert torch.equal(layer(x), y)  # same torch seed, same mask
    assert torch.equal(layer.eval()(x), x)


def test_every_dropout_of_the_model_is_the_fast_one(setup):
    from tft_model import FastDropout

    _, spec, dataset, _ = setup
    fast, _ = _pair(dataset, spec, dropout=0.1)
    dropouts = [m for m in fast.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)


@pytest.mark.slow
def test_compiled_training_equals_stock_gradients_and_keeps_dropout(setup):
    """--compile: the variable GRNs through torch.compile give the stock model's gradients."""
    _, spec, dataset, store = setup
    fast, stock = _pair(dataset, spec, dropout=0.0)
    fast.train(), stock.train()
    fast.compile_training = True
    x, y = _batch(store, seed=2)
    for model in (fast, stock):
        model.zero_grad()
        model.loss(model(x)["prediction"], y).backward()
    assert fast.compile_training, "torch.compile failed and fell back to eager"
    grads_fast = dict(fast.named_parameters())
    compared = 0
    for name, param in stock.named_parameters():
        if param.grad is not None and param.grad.abs().max() > 0:
            torch.testing.assert_close(grads_fast[name].grad, param.grad, rtol=1e-3, atol=1e-5, msg=name)
            compared += 1
    assert compared > 50
    # With dropout the compiled path draws its own masks: outputs differ from run to run, but
    # the same torch seed repeats them.
    dropping, _ = _pair(dataset, spec, dropout=0.3)
    dropping.train()
    dropping.compile_training = True
    torch.manual_seed(5)
    first = _forecast(dropping, x)
    torch.manual_seed(5)
    assert torch.equal(_forecast(dropping, x), first)
    assert not torch.equal(_forecast(dropping, x), first)
