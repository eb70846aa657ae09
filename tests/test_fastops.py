"""The fast path (tft_fastops.py): each piece computes what the stock module it replaces computes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    ResampleNorm,
    VariableSelectionNetwork,
)
from torch import nn

from tests.test_model import model_pair, window_batch
from tft_fastops import (
    FastDropout,
    FastPath,
    ParamMemo,
    install_fast_dropout,
    interpolation_matrix,
    variable_grn_math,
)
from tft_features import build_features

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def setup(tiny_data):
    """The tiny fleet's features (as tests/test_model.py builds them)."""
    features = build_features(tiny_data, encoder_length=24, dataset_servers=2, dataset_rows=130)
    return features.frame, features.spec, features.dataset, features.store


def _forecast(model, x) -> torch.Tensor:
    """All targets' quantile forecasts as one tensor."""
    return torch.cat(list(model(x)["prediction"]), dim=-1)


def _perturbed(module: nn.Module, seed: int) -> nn.Module:
    """The module with every parameter moved off its initial value (gates, norms: not identities)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return module


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


# ============================================================================ dropout
def test_fast_dropout_drops_p_scales_the_rest_and_is_reproducible():
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


def test_install_fast_dropout_swaps_the_class_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.1)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert install_fast_dropout(model) == 2
    assert [type(m) for m in model.modules() if isinstance(m, nn.Dropout)] == [FastDropout, FastDropout]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.1]
    assert state.keys() == model.state_dict().keys()


def test_every_dropout_of_the_model_is_the_fast_one(setup):
    _, spec, dataset, _ = setup
    fast, _ = model_pair(dataset, spec, dropout=0.1)
    dropouts = [m for m in fast.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)


# ============================================================================ parameter memo
def test_param_memo_drops_its_values_when_a_parameter_changes():
    layer = nn.Linear(3, 2)
    memo = ParamMemo()
    builds = []

    def build() -> torch.Tensor:
        builds.append(1)
        return layer.weight.detach().clone()

    memo.refresh(layer)
    first = memo.get("w", build)
    memo.refresh(layer)
    assert memo.get("w", build) is first and len(builds) == 1  # built once per parameter state
    with torch.no_grad():
        layer.weight.add_(1.0)  # in place (an optimiser step, an EMA update)
    memo.refresh(layer)
    assert len(memo) == 0
    assert torch.equal(memo.get("w", build), layer.weight) and len(builds) == 2
    layer.load_state_dict({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})  # copy_ into the parameters
    memo.refresh(layer)
    assert len(memo) == 0
    memo.get("w", build)
    layer.weight = nn.Parameter(torch.ones(2, 3))  # replaced by another parameter object
    memo.refresh(layer)
    assert len(memo) == 0
    assert torch.equal(memo.get("w", build), torch.ones(2, 3))
    memo.clear()
    assert len(memo) == 0
    memo.get("w", build)
    for twin in (copy.deepcopy(memo), pickle.loads(pickle.dumps(memo))):
        assert len(twin) == 0  # copies start empty: the values belong to the original's modules


def test_fast_path_copies_keep_settings_not_caches():
    fast = FastPath(reals=["a", "b"], x_reals=["b", "a"], compile_training=True)
    fast.memo.get("k", lambda: torch.zeros(1))
    fast.interp(3, 5, torch.zeros(1))
    twin = copy.deepcopy(fast)
    assert (twin.reals, twin.x_reals, twin.compile_training) == (frozenset({"a", "b"}), ["b", "a"], True)
    assert len(twin.memo) == 0 and not twin._interp_cache


def test_inference_memo_never_serves_old_weights(setup):
    """Folded parameters are memoised at inference; a training step or new weights must drop them."""
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.0)
    x, y = window_batch(store, seed=3)
    fast.eval()
    with torch.no_grad():
        fast(x)  # fills the memo
    assert len(fast.fast_path.memo), "inference should memoise the folded parameters"
    twin = copy.deepcopy(fast)  # a copy starts without the original's memo
    assert not len(twin.fast_path.memo)
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
        for param, twin_param in zip(fast.parameters(), stock.parameters(), strict=True):
            delta = 0.01 * torch.randn_like(param)
            param.add_(delta)
            twin_param.add_(delta)
        torch.testing.assert_close(_forecast(fast, x), _forecast(stock, x), rtol=1e-4, atol=1e-4)


# ============================================================================ ResampleNorm and GRN
def test_interpolation_matrix_is_linear_interpolation():
    x = torch.randn(7, 5)
    for size_out in (5, 9, 16):
        expected = F.interpolate(x.unsqueeze(1), size_out, mode="linear", align_corners=True).squeeze(1)
        torch.testing.assert_close(x @ interpolation_matrix(5, size_out, x.dtype, x.device), expected, **TOL)


@pytest.mark.parametrize("sizes", [(8, 16), (16, 8), (16, 16)], ids=["up", "down", "same"])
def test_fast_resample_norm_equals_stock(sizes):
    module = _perturbed(ResampleNorm(*sizes), seed=1)
    x = torch.randn(64, sizes[0])
    torch.testing.assert_close(FastPath([], []).resample_norm(module, x), module(x), **TOL)


@pytest.mark.parametrize("case", [(8, 16, None, False), (16, 16, 16, False), (16, 8, 8, False), (16, 16, None, True)],
                         ids=["resampled", "context", "down_with_context", "residual_flag"])
def test_fast_grn_equals_stock_grn_in_train_and_eval(case):
    input_size, output_size, context_size, residual = case
    grn = _perturbed(GatedResidualNetwork(input_size, 10, output_size, 0.0, context_size, residual), seed=2)
    fast = FastPath([], [])
    x = torch.randn(32, 5, input_size, requires_grad=True)
    context = torch.randn(32, 5, context_size) if context_size else None
    grn.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast.grn(grn, x, context), grn(x, context), **TOL)
    grn.train()
    results = []
    for forward in (lambda: fast.grn(grn, x, context), lambda: grn(x, context)):
        grn.zero_grad()
        x.grad = None
        out = forward()
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), x.grad.clone(), _grads(grn)))
    (ours, our_x_grad, our_grads), (theirs, their_x_grad, their_grads) = results
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(our_x_grad, their_x_grad, **TOL)
    assert our_grads.keys() == their_grads.keys()
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], **TOL, msg=name)


# ============================================================================ folded variable GRNs
def _variable_grns(n_vars: int, d: int, hidden: int, dropout: float) -> tuple[list, list]:
    """GRNs and prescalers as a VariableSelectionNetwork makes them for continuous inputs."""
    torch.manual_seed(4)
    grns = [_perturbed(GatedResidualNetwork(d, min(d, hidden), hidden, dropout), seed=10 + v) for v in range(n_vars)]
    prescalers = [_perturbed(nn.Linear(1, d), seed=20 + v) for v in range(n_vars)]
    return grns, prescalers


@pytest.mark.parametrize("d", [4, 16], ids=["resampled_residual", "plain_residual"])
def test_folded_variable_grns_equal_stock_grns_in_train_and_eval(d):
    """Each variable's GRN on its prescaled input, folded and batched, equals the stock networks."""
    hidden, n_vars = 16, 5
    grns, prescalers = _variable_grns(n_vars, d, hidden, dropout=0.0)
    fast = FastPath([], [])
    x = torch.randn(n_vars, 300, 1) * 3  # (V, N, 1)

    def stock() -> torch.Tensor:
        return torch.stack([grn(pre(x[v])) for v, (grn, pre) in enumerate(zip(grns, prescalers, strict=True))])

    def folded() -> torch.Tensor:
        a = torch.stack([pre.weight[:, 0] for pre in prescalers])
        b = torch.stack([pre.bias for pre in prescalers])
        return fast.variable_grns(grns, a, b, x)

    for module in grns:
        module.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(), stock(), **TOL)
        torch.testing.assert_close(folded(), stock(), **TOL)  # the memoised fold serves the same numbers
    for module in grns:
        module.train()
    weights = torch.linspace(-1, 1, hidden)
    results = []
    for forward in (folded, stock):
        for module in (*grns, *prescalers):
            module.zero_grad()
        out = forward()
        (out * weights).sum().backward()
        results.append((out.detach(), [_grads(m) for m in (*grns, *prescalers)]))
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs, **TOL)
    for mine, stock_grads in zip(our_grads, their_grads, strict=True):
        for name in stock_grads:
            torch.testing.assert_close(mine[name], stock_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_variable_grn_math_equals_the_eager_fold():
    """The pure function torch.compile fuses computes what the eager batched products compute."""
    grns, prescalers = _variable_grns(4, 6, 16, dropout=0.0)
    fast = FastPath([], [])
    a = torch.stack([pre.weight[:, 0] for pre in prescalers]).detach()
    b = torch.stack([pre.bias for pre in prescalers]).detach()
    x = torch.randn(4, 200, 1)
    with torch.no_grad():
        params = fast.variable_grn_params(grns, a, b)
        eps = grns[0].gate_norm.add_norm.norm.eps
        torch.testing.assert_close(variable_grn_math(x, params, None, 1.0, eps), fast.variable_grns(grns, a, b, x),
                                   **TOL)


@pytest.mark.parametrize("with_context", [False, True], ids=["static", "with_context"])
def test_fast_variable_selection_equals_stock_vsn_in_train_and_eval(with_context):
    """Outputs and selection weights of a mixed (continuous + embedded) VSN; batch-shared inputs too."""
    d, e, hidden = 8, 5, 16
    reals = ["load", "calendar", "level"]
    torch.manual_seed(6)
    vsn = VariableSelectionNetwork(input_sizes={**dict.fromkeys(reals, d), "state": e}, hidden_size=hidden,
                                   input_embedding_flags={"state": True}, dropout=0.0,
                                   context_size=hidden if with_context else None,
                                   prescalers={name: nn.Linear(1, d) for name in reals})
    _perturbed(vsn, seed=7)
    fast = FastPath(reals=reals, x_reals=["unused", *reals])  # column 0 is another network's input
    batch, steps = 6, 9
    x_cont = torch.randn(batch, steps, 4)
    x_cont[..., 2] = torch.randn(1, steps, 1)[..., 0]  # the same for every window, like a cycle's calendar
    embeddings = {"state": torch.randn(batch, steps, e)}
    context = torch.randn(batch, steps, hidden) if with_context else None

    def stock() -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {name: x_cont[..., 1 + j].unsqueeze(-1) for j, name in enumerate(reals)}
        return vsn({**inputs, **embeddings}, context)

    vsn.eval()
    with torch.no_grad():
        for _ in range(2):  # the second call reads the memoised fold
            (ours, our_weights), (theirs, their_weights) = fast.variable_selection(vsn, x_cont, embeddings,
                                                                                   context), stock()
            torch.testing.assert_close(ours, theirs, **TOL)
            torch.testing.assert_close(our_weights, their_weights, **TOL)
    # Training, in float64: the gradients of the selection network's ~100 summed terms differ
    # from the stock order of summation by float32 rounding (~1e-5 relative); the algebra is exact.
    vsn.double().train()
    x_cont, context = x_cont.double(), None if context is None else context.double()
    embeddings = {name: value.double() for name, value in embeddings.items()}
    results = []
    for forward in (lambda: fast.variable_selection(vsn, x_cont, embeddings, context), stock):
        vsn.zero_grad()
        out, weights = forward()
        loss = (out * torch.linspace(-1, 1, hidden, dtype=out.dtype)).sum() \
            + (weights[..., 0] * torch.arange(4.0, dtype=out.dtype)).sum()
        loss.backward()
        results.append((out.detach(), weights.detach(), _grads(vsn)))
    (ours, our_weights, our_grads), (theirs, their_weights, their_grads) = results
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(our_weights, their_weights, **TOL)
    assert our_grads.keys() == their_grads.keys()
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], **TOL, msg=name)


@pytest.mark.slow
def test_compiled_training_equals_stock_gradients_and_keeps_dropout(setup):
    """--compile: the variable GRNs through torch.compile give the stock model's gradients."""
    _, spec, dataset, store = setup
    fast, stock = model_pair(dataset, spec, dropout=0.0)
    fast.train(), stock.train()
    fast.compile_training = True
    x, y = window_batch(store, seed=2)
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
    dropping, _ = model_pair(dataset, spec, dropout=0.3)
    dropping.train()
    dropping.compile_training = True
    torch.manual_seed(5)
    first = _forecast(dropping, x)
    torch.manual_seed(5)
    assert torch.equal(_forecast(dropping, x), first)
    assert not torch.equal(_forecast(dropping, x), first)
