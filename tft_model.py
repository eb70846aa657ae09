"""The fleet model: pytorch-forecasting's Temporal Fusion Transformer, a faster forward,
and pickle-free save/load.

``FleetTFT`` subclasses ``TemporalFusionTransformer`` and keeps every parameter, name and
shape of the stock model (its state dict loads into the stock class and back). Only the
forward pass is reorganised, computing the same function (tests/test_model.py checks it
against the stock forward):

* the variable selection networks run all continuous variables' GRNs as one batched
  matrix product per layer instead of a Python loop over ~20 tiny networks, and never
  build the (batch, time, hidden, variables) stack;
* ``ResampleNorm``'s linear interpolation of a vector is a fixed linear map, applied as a
  matrix product (the stock ``F.interpolate`` backward is slow on CPU and CUDA alike);
* when every window has the full encoder/decoder length (always, in this project) the
  LSTMs run unpacked instead of through ``pack_padded_sequence``;
* attention heads run as one batched product instead of a loop.

Saved model = ``model.safetensors`` + ``config.json`` (hyper-parameters and the feature
spec as plain JSON) + ``training_info.json`` + ``server_mapping.json``. :func:`load_model`
rebuilds the exact model from those files and never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from pytorch_forecasting.metrics import MultiLoss, QuantileLoss
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    ResampleNorm,
    VariableSelectionNetwork,
)
from torch import nn

from common_utils import _umask, check_version_compatibility
from config import (
    CONTRACT_VERSION,
    LEARNING_RATE,
    LR_WARMUP_FRACTION,
    MODEL_CONFIG_FILE,
    MODEL_FORMAT_VERSION,
    MODEL_REQUIRED_FILES,
    MODEL_WEIGHTS_FILE,
    SERVER_MAPPING_FILE,
    TRAINING_GUIDE_DOC,
    TRAINING_INFO_FILE,
    WEIGHT_DECAY,
)
from server_encoder import ServerEncoder
from tft_features import FeatureSpec, target_normalizer_objects

logger = logging.getLogger(__name__)

# Hyper-parameters that are objects; they are rebuilt from the feature spec on load.
_OBJECT_HPARAMS = ("loss", "logging_metrics", "output_transformer", "dataset_parameters")


def _interpolation_matrix(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Matrix M with ``x @ M == F.interpolate(x, size_out, mode='linear', align_corners=True)``."""
    eye = torch.eye(size_in, dtype=torch.float64)
    matrix = F.interpolate(eye.unsqueeze(1), size_out, mode="linear", align_corners=True).squeeze(1)
    return matrix.to(dtype=dtype, device=device)


def _dropout_generator() -> np.random.Generator:
    """A numpy PCG64 seeded from torch's generator: masks follow ``torch.manual_seed`` like stock dropout."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), dtype=torch.int64)))


_MASK_LEVELS = 65536  # dropout probabilities are rounded to a multiple of 1/65536


def dropout_keep_mask(p: float, shape: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """A CPU dropout mask (True = keep) with P(drop) = p, drawn as numpy 16-bit integers, and 1/(1-p)."""
    threshold = round(p * _MASK_LEVELS)
    draws = _dropout_generator().integers(0, _MASK_LEVELS, int(np.prod(shape)), dtype=np.uint16)
    return torch.from_numpy(draws >= threshold).view(shape), _MASK_LEVELS / (_MASK_LEVELS - threshold)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from numpy's PCG64 as 16-bit integers.

    Same function as the stock module (zero with probability p, scale the rest by 1/(1-p));
    p is rounded to a multiple of 1/65536. On CPU, torch's ``bernoulli_`` costs ~10 ns per
    element (7-8 % of a training step); drawing 16-bit integers with numpy is ~3x cheaper.
    GPUs, evaluation and p = 0 take the stock path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.inplace or x.device.type != "cpu" \
                or not x.is_floating_point():
            return super().forward(x)
        keep, scale = dropout_keep_mask(self.p, tuple(x.shape))
        return x * keep.to(x.dtype).mul_(scale)


def variable_grn_math(x: torch.Tensor, p: dict[str, torch.Tensor], keep: torch.Tensor | None, scale: float,
                      eps: float) -> torch.Tensor:
    """The batched variable GRNs as one pure function (what ``torch.compile`` fuses in training).

    x (V, N, 1); ``p`` from ``FleetTFT._variable_grn_params``; ``keep`` the dropout mask of the
    hidden layer (None: no dropout). Same numbers as the eager path in ``_variable_grns``; here
    the broadcast products stay elementwise because the compiler fuses them, forward and backward.
    """
    if "coef_a" in p:
        r = torch.rsqrt((p["coef_a"] * x + p["coef_b2"]) * x + p["coef_c"])  # (V, N, 1)
        residual = p["delta"] + r * p["res_ba"][:, :1] + (x * r) * p["res_ba"][:, 1:]
    else:
        residual = p["res_b"] + x * p["res_a"]
    h = F.elu(p["w"] + x * p["u"])
    h = torch.baddbmm(p["fc2_b"], h, p["fc2_w"])
    if keep is not None:
        h = h * keep * scale
    h = F.glu(torch.baddbmm(p["glu_b"], h, p["glu_w"]), dim=-1) + residual
    return p["out_b"] + F.layer_norm(h, h.shape[-1:], eps=eps) * p["out_w"]


_compiled_variable_grn_math: Callable[..., torch.Tensor] | None = None


def _gate(mask: torch.Tensor) -> torch.Tensor:
    """ResampleNorm's trainable gate: 2 * sigmoid(mask)."""
    return torch.sigmoid(mask) * 2.0


@dataclass
class _RealGroup:
    """The continuous variables of one variable-selection network, in input order."""

    names: list[str]
    columns: list[int]  # positions in x_cont
    flat_offsets: list[int]  # where each variable's slice starts in the flattened input


class FleetTFT(TemporalFusionTransformer):
    """Temporal Fusion Transformer with the stock parameters and a faster forward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for module in self.modules():  # faster CPU dropout masks; no parameters, same state dict
            if type(module) is nn.Dropout:
                module.__class__ = FastDropout
        self._interp_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}
        self._param_memo: dict[tuple, Any] = {}
        self._param_stamp: tuple | None = None
        self._param_slots: list[tuple[dict, str]] | None = None
        self._structure_memo: dict[Any, Any] = {}
        self.use_fast_forward = True
        # Attention weights are an interpretation output; the daemon does not read them, and
        # without them attention can run as one fused kernel (same result).
        self.return_attention = True
        # Optimiser steps of the whole run (set by the trainer, so a resumed run keeps its schedule).
        self.planned_total_steps: int | None = None
        # Training steps on CPU run the variable GRNs through torch.compile (set by the trainer).
        self.compile_training = False

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        """AdamW with a one-cycle schedule (warm-up, cosine decay) over the planned steps."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate,
                                      weight_decay=self.hparams.get("weight_decay", WEIGHT_DECAY))
        total = self.planned_total_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.learning_rate, total_steps=max(total, 2),
            pct_start=LR_WARMUP_FRACTION, anneal_strategy="cos")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        """Skip per-step SMAPE/MAE/... logging: the backtest measures quality properly."""

    # ------------------------------------------------------------------ helpers
    def _interp(self, size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
        key = (size_in, size_out, like.dtype, like.device)
        matrix = self._interp_cache.get(key)
        if matrix is None:
            matrix = _interpolation_matrix(size_in, size_out, like.dtype, like.device)
            self._interp_cache[key] = matrix
        return matrix

    def _resample_norm(self, module: ResampleNorm, x: torch.Tensor) -> torch.Tensor:
        """ResampleNorm with the interpolation as a matrix product."""
        if module.input_size != module.output_size:
            x = x @ self._interp(module.input_size, module.output_size, x)
        if module.trainable_add:
            x = x * _gate(module.mask)
        return module.norm(x)

    def _grn(self, grn: GatedResidualNetwork, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """GatedResidualNetwork forward with the fast ResampleNorm."""
        residual = x
        if grn.input_size != grn.output_size and not grn.residual:
            residual = self._resample_norm(grn.resample_norm, residual)
        x = grn.fc1(x)
        if context is not None:
            x = x + grn.context(context)
        x = F.elu(x)
        x = grn.fc2(x)
        glu = grn.gate_norm.glu
        if glu.dropout is not None:
            x = glu.dropout(x)
        x = F.glu(glu.fc(x), dim=-1)
        add_norm = grn.gate_norm.add_norm
        skip = residual
        if add_norm.input_size != add_norm.skip_size:
            skip = skip @ self._interp(add_norm.skip_size, add_norm.input_size, skip)
        if add_norm.trainable_add:
            skip = skip * _gate(add_norm.mask)
        return add_norm.norm(x + skip)

    def _real_group(self, vsn: VariableSelectionNetwork) -> _RealGroup | None:
        """Continuous inputs of a VSN if they can be batched (same size, plain GRNs); fixed per model."""
        entry = self._structure_memo.get(id(vsn))
        if entry is None or entry[0] is not vsn:  # an id can be reused by another object: check identity
            entry = (vsn, self._find_real_group(vsn))
            self._structure_memo[id(vsn)] = entry
        return entry[1]

    @property
    def _real_names(self) -> frozenset[str]:
        """The model's continuous inputs (``self.reals`` rebuilds a list on every access)."""
        if "reals" not in self._structure_memo:
            self._structure_memo["reals"] = frozenset(self.reals)
        return self._structure_memo["reals"]

    def _find_real_group(self, vsn: VariableSelectionNetwork) -> _RealGroup | None:
        names, columns, offsets, offset = [], [], [], 0
        sizes = set()
        for name, size in vsn.input_sizes.items():
            if name in self.reals:
                names.append(name)
                columns.append(self.hparams.x_reals.index(name))
                offsets.append(offset)
                sizes.add(size)
                grn = vsn.single_variable_grns[name]
                if not isinstance(grn, GatedResidualNetwork) or grn.context_size is not None:
                    return None
            offset += size
        if len(sizes) > 1:
            return None
        return _RealGroup(names, columns, offsets)

    def _memo(self, key: tuple, build: Callable[[], Any]) -> Any:
        """Tensors derived from parameters only, built once per model state at inference.

        During training (or with gradients on) they are rebuilt every call, so gradients flow.
        ``forward`` drops the memo whenever any parameter was replaced or changed in place since
        it was filled (``_check_memo``), so it never outlives the weights it was built from.
        """
        if self.training or torch.is_grad_enabled():
            return build()
        value = self._param_memo.get(key)
        if value is None:
            value = build()
            self._param_memo[key] = value
        return value

    def _check_memo(self) -> None:
        """Drop the inference memo if any parameter object or its in-place version counter changed."""
        if self.training or torch.is_grad_enabled():
            return
        if self._param_slots is None:  # where every parameter lives: (owning module's dict, name)
            self._param_slots = [(m._parameters, n) for m in self.modules() for n in m._parameters]
        stamp = tuple((id(p), p._version) for d, n in self._param_slots if (p := d[n]) is not None)
        if stamp != self._param_stamp:
            self._param_memo.clear()
            self._param_stamp = stamp

    def train(self, mode: bool = True) -> FleetTFT:
        """Switch mode and drop the inference memo."""
        if hasattr(self, "_param_memo"):
            self._param_memo.clear()
        return super().train(mode)

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        """Device/dtype moves swap parameter data without a version bump: drop the memo."""
        if hasattr(self, "_param_memo"):
            self._param_memo.clear()
        return super()._apply(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles start without memos (they hold tensors keyed by this object's modules)."""
        state = dict(super().__getstate__())
        state["_param_memo"], state["_structure_memo"], state["_param_stamp"] = {}, {}, None
        state["_param_slots"] = None
        return state

    def _variable_grn_params(self, grns: list[GatedResidualNetwork], a: torch.Tensor,
                             b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-variable vectors and stacked weights ``_variable_grns`` folds its GRNs into."""
        first = grns[0]
        d = a.shape[1]
        hidden = first.output_size
        params: dict[str, torch.Tensor] = {}
        if first.input_size != first.output_size and not first.residual:
            interp = self._interp(d, hidden, a)
            gate = _gate(torch.stack([g.resample_norm.mask for g in grns]))  # (V, H)
            alpha, beta = (a @ interp) * gate, (b @ interp) * gate
            alpha_c = alpha - alpha.mean(-1, keepdim=True)
            beta_c = beta - beta.mean(-1, keepdim=True)
            norm = [g.resample_norm.norm for g in grns]
            gamma = torch.stack([m.weight for m in norm])
            params["delta"] = torch.stack([m.bias for m in norm])[:, None, :]
            params["coef_a"] = (alpha_c * alpha_c).mean(-1)[:, None, None]
            params["coef_b2"] = 2.0 * (alpha_c * beta_c).mean(-1)[:, None, None]
            params["coef_c"] = (beta_c * beta_c).mean(-1)[:, None, None] + norm[0].eps
            params["res_ba"] = torch.stack([beta_c * gamma, alpha_c * gamma], dim=1)  # (V, 2, H)
        else:
            params["res_b"], params["res_a"] = b[:, None, :], a[:, None, :]
        w1 = torch.stack([g.fc1.weight for g in grns])  # (V, h, d)
        params["u"] = torch.einsum("vhd,vd->vh", w1, a)[:, None, :]
        params["w"] = (torch.einsum("vhd,vd->vh", w1, b) + torch.stack([g.fc1.bias for g in grns]))[:, None, :]
        for name, linears in (("fc2", [g.fc2 for g in grns]), ("glu", [g.gate_norm.glu.fc for g in grns])):
            params[f"{name}_w"] = torch.stack([m.weight for m in linears]).transpose(1, 2)  # (V, in, out)
            params[f"{name}_b"] = torch.stack([m.bias for m in linears])[:, None, :]
        norms = [g.gate_norm.add_norm.norm for g in grns]
        params["out_w"] = torch.stack([m.weight for m in norms])[:, None, :]
        params["out_b"] = torch.stack([m.bias for m in norms])[:, None, :]
        return params

    def _variable_grns(self, grns: list[GatedResidualNetwork], a: torch.Tensor, b: torch.Tensor,
                       x: torch.Tensor) -> torch.Tensor:
        """Each continuous variable's GRN on its prescaled input x*a + b, batched: x (V, N, 1) -> (V, N, H).

        The prescaler is Linear(1, d), so everything linear before the first nonlinearity is
        folded into per-variable vectors (see ``_fast_vsn``).
        """
        p = self._memo(("vgrn", *map(id, grns)), lambda: self._variable_grn_params(grns, a, b))
        eps = grns[0].gate_norm.add_norm.norm.eps
        drop = grns[0].gate_norm.glu.dropout
        if self.compile_training and self.training and x.device.type == "cpu":
            result = self._compiled_variable_grns(x, p, drop, eps)
            if result is not None:
                return result
        # Products with per-variable vectors run as batched matrix products with an inner
        # dimension of 1-2 rather than broadcast multiplies: the same numbers, but autograd then
        # reduces the (V, N, H) gradients inside a matrix product instead of materialising
        # grad * x over the whole tensor (the broadcast form was ~15 % of a training step).
        if "coef_a" in p:
            r = torch.rsqrt((p["coef_a"] * x + p["coef_b2"]) * x + p["coef_c"])  # (V, N, 1)
            residual = torch.baddbmm(p["delta"], torch.cat([r, x * r], dim=-1), p["res_ba"])
        else:
            residual = torch.baddbmm(p["res_b"], x, p["res_a"])
        h = F.elu(torch.baddbmm(p["w"], x, p["u"]))
        h = torch.baddbmm(p["fc2_b"], h, p["fc2_w"])
        if drop is not None:
            h = drop(h)
        h = F.glu(torch.baddbmm(p["glu_b"], h, p["glu_w"]), dim=-1)  # (V, N, H)
        h = h + residual
        return torch.addcmul(p["out_b"], F.layer_norm(h, h.shape[-1:], eps=eps), p["out_w"])

    def _compiled_variable_grns(self, x: torch.Tensor, p: dict[str, torch.Tensor], drop: nn.Dropout | None,
                                eps: float) -> torch.Tensor | None:
        """``variable_grn_math`` through ``torch.compile``; None (and eager from then on) if it cannot compile."""
        global _compiled_variable_grn_math
        keep, scale = None, 1.0
        if drop is not None and drop.p > 0:
            keep, scale = dropout_keep_mask(drop.p, (x.shape[0], x.shape[1], p["fc2_w"].shape[-1]))
        try:
            if _compiled_variable_grn_math is None:
                _compiled_variable_grn_math = torch.compile(variable_grn_math)
            # Rows (batch x time) vary with short-history batches: one graph per network serves
            # every length instead of a recompile per length.
            torch._dynamo.mark_dynamic(x, 1)
            if keep is not None:
                torch._dynamo.mark_dynamic(keep, 1)
            return _compiled_variable_grn_math(x, p, keep, scale, eps)
        except Exception as exc:  # noqa: BLE001 - any compiler failure (no C++ compiler...): train eagerly
            logger.warning("torch.compile of the variable GRNs failed (%s: %s); training without it",
                           type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.compile_training = False
            return None

    def _fast_vsn(self, vsn: VariableSelectionNetwork, x_cont: torch.Tensor,
                  embeddings: dict[str, torch.Tensor], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Variable selection for (B, T) inputs; returns (B, T, H) and weights (B, T, 1, V).

        Each continuous variable enters through ``prescaler = Linear(1, d)``, so its
        prescaled vector is affine in one scalar x: e = x*a + b. Everything linear that
        follows folds into per-variable vectors computed from the parameters:

        * GRN fc1:            fc1(e) = x*(W1 a) + (W1 b + c1)
        * resample + gate:    interp(e)*g = x*alpha + beta
        * its LayerNorm:      LN(x*alpha + beta) = (x*alpha_c + beta_c) * r(x) * gamma + delta,
                              r(x) = 1/sqrt(A x^2 + 2 B x + C + eps), A, B, C from alpha_c, beta_c
        * the selection GRN's first layer and residual map on the flattened inputs:
                              sum_v e_v W_v = X @ (a_v W_v) + const

        so the (V, N, d) prescaled tensor and the (N, V*d) concatenation never exist. At
        inference, variables whose values are the same for every window of the batch (the
        calendar of a forecast cycle) run once per time step instead of once per window.
        """
        group = self._real_group(vsn)
        if group is None or vsn.num_inputs <= 1:
            inputs = {name: embeddings[name] if name not in self._real_names
                      else x_cont[..., self.hparams.x_reals.index(name)].unsqueeze(-1) for name in vsn.input_sizes}
            return vsn(inputs, context)
        batch, steps = x_cont.shape[:2]
        n = batch * steps
        hidden = vsn.hidden_size
        grns = [vsn.single_variable_grns[name] for name in group.names]
        a, b = self._memo(("prescale", id(vsn)), lambda: (
            torch.stack([vsn.prescalers[name].weight[:, 0] for name in group.names]),  # (V, d)
            torch.stack([vsn.prescalers[name].bias for name in group.names])))  # (V, d)
        values = x_cont[..., group.columns].reshape(n, -1)  # (N, V)
        shared = torch.zeros(len(group.names), dtype=torch.bool)
        if not self.training and batch > 1:
            # At inference every window of a cycle has the same timestamps, so calendar and
            # relative-time inputs are identical across the batch: run their networks once per step.
            grid = x_cont[..., group.columns]
            shared = (grid == grid[:1]).all(dim=1).all(dim=0).cpu()
        own = torch.nonzero(~shared).flatten().tolist()
        common = torch.nonzero(shared).flatten().tolist()
        var_out = self._variable_grns([grns[i] for i in own], a[own], b[own],
                                      values[:, own].t().unsqueeze(-1)) if own else None
        var_out_common = self._variable_grns([grns[i] for i in common], a[common], b[common],
                                             values[:steps, common].t().unsqueeze(-1)) if common else None

        # Categorical (embedded) inputs keep their own small networks.
        cat_names = [name for name in vsn.input_sizes if name not in self._real_names]
        cat_out = [self._resample_norm(vsn.single_variable_grns[name], embeddings[name].reshape(n, -1))
                   if isinstance(vsn.single_variable_grns[name], ResampleNorm)
                   else vsn.single_variable_grns[name](embeddings[name].reshape(n, -1)) for name in cat_names]

        # Selection weights from the flattened GRN, its inputs taken block by block.
        flat_grn = vsn.flattened_grn
        order = list(vsn.input_sizes)
        fp = self._memo(("flat", id(vsn)), lambda: self._flat_grn_params(vsn, group, a, b, cat_names))
        hidden_f = torch.addmm(fp["hidden_bias"], values, fp["hidden_w"])
        resid_f = torch.addmm(fp["resid_bias"], values, fp["resid_w"]) if "resid_w" in fp else None
        for name in cat_names:
            emb = embeddings[name].reshape(n, -1)
            hidden_f = hidden_f + emb @ fp[f"cat_hidden_{name}"]
            if resid_f is not None:
                resid_f = resid_f + emb @ fp[f"cat_resid_{name}"]
        if resid_f is not None:
            rn = flat_grn.resample_norm
            if rn.trainable_add:
                resid_f = resid_f * fp["resid_gate"]
            resid_f = rn.norm(resid_f)
        else:
            resid_f = torch.cat([embeddings[name].reshape(n, -1) if name not in self._real_names
                                 else torch.addcmul(b[group.names.index(name)], values[:, group.names.index(name), None],
                                                    a[group.names.index(name)]) for name in order], dim=-1)
        if context is not None:
            hidden_f = hidden_f + flat_grn.context(context.reshape(n, -1))
        hidden_f = flat_grn.fc2(F.elu(hidden_f))
        glu = flat_grn.gate_norm.glu
        if glu.dropout is not None:
            hidden_f = glu.dropout(hidden_f)
        hidden_f = F.glu(glu.fc(hidden_f), dim=-1)
        weights = torch.softmax(flat_grn.gate_norm.add_norm.norm(hidden_f + resid_f), dim=-1)  # (N, V_all)

        # Weighted sum over variables.
        real_pos = [order.index(name) for name in group.names]
        out = (var_out * weights[:, [real_pos[i] for i in own]].t().unsqueeze(-1)).sum(0) if own \
            else torch.zeros(n, hidden, dtype=weights.dtype, device=weights.device)
        if var_out_common is not None:  # (B, T, Vc) weights x (Vc, T, H) outputs shared by the batch
            w_common = weights[:, [real_pos[i] for i in common]].reshape(batch, steps, -1)
            out = out + torch.einsum("btv,vth->bth", w_common, var_out_common).reshape(n, hidden)
        for name, emb_out in zip(cat_names, cat_out):
            out = out + emb_out * weights[:, order.index(name)].unsqueeze(-1)
        return out.reshape(batch, steps, hidden), weights.reshape(batch, steps, 1, -1)

    def _flat_grn_params(self, vsn: VariableSelectionNetwork, group: _RealGroup, a: torch.Tensor,
                         b: torch.Tensor, cat_names: list[str]) -> dict[str, torch.Tensor]:
        """The flattened (selection) GRN's first layer and residual map, folded per input block."""
        flat_grn = vsn.flattened_grn
        d = a.shape[1]
        offsets, offset = {}, 0
        for name in vsn.input_sizes:
            offsets[name] = offset
            offset += vsn.input_sizes[name]
        fc1_w = flat_grn.fc1.weight  # (hidden_f, total)
        blocks = torch.stack([fc1_w[:, o:o + d] for o in group.flat_offsets])  # (V, hidden_f, d)
        params = {"hidden_w": torch.einsum("vhd,vd->vh", blocks, a),
                  "hidden_bias": torch.einsum("vhd,vd->h", blocks, b) + flat_grn.fc1.bias}
        for name in cat_names:
            cols = slice(offsets[name], offsets[name] + vsn.input_sizes[name])
            params[f"cat_hidden_{name}"] = fc1_w[:, cols].t()
        if flat_grn.input_size != flat_grn.output_size and not flat_grn.residual:
            interp_f = self._interp(flat_grn.input_size, flat_grn.output_size, a)  # (total, V_all)
            m_blocks = torch.stack([interp_f[o:o + d] for o in group.flat_offsets])  # (V, d, V_all)
            params["resid_w"] = torch.einsum("vd,vdo->vo", a, m_blocks)
            params["resid_bias"] = torch.einsum("vd,vdo->o", b, m_blocks)
            for name in cat_names:
                params[f"cat_resid_{name}"] = interp_f[offsets[name]:offsets[name] + vsn.input_sizes[name]]
            if flat_grn.resample_norm.trainable_add:
                params["resid_gate"] = _gate(flat_grn.resample_norm.mask)
        return params

    def _lstm(self, lstm: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
              lengths: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Unpacked LSTM when every sequence has the full length (same result, no packing)."""
        if bool((lengths == x.shape[1]).all()):
            return nn.LSTM.forward(lstm, x, state)
        return lstm(x, state, lengths=lengths, enforce_sorted=False)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InterpretableMultiHeadAttention with the heads batched."""
        attn_module = self.multihead_attn
        n_head, d_k = attn_module.n_head, attn_module.d_k
        batch, t_q, _ = q.shape
        t_k = k.shape[1]
        vs = attn_module.v_layer(v)  # (B, Tk, dv), shared by the heads
        wq, bq, wk, bk = self._memo(("attention",), lambda: (
            torch.cat([layer.weight for layer in attn_module.q_layers]),
            torch.cat([layer.bias for layer in attn_module.q_layers]),
            torch.cat([layer.weight for layer in attn_module.k_layers]),
            torch.cat([layer.bias for layer in attn_module.k_layers])))
        # 1/sqrt(d_k) is applied to the small query tensor instead of the (B, h, Tq, Tk) scores.
        qs = F.linear(q, wq, bq).view(batch, t_q, n_head, d_k).transpose(1, 2) * (1.0 / d_k ** 0.5)
        ks = F.linear(k, wk, bk).view(batch, t_k, n_head, d_k).transpose(1, 2)  # (B, h, Tk, dk)
        # The fused kernel serves forecasts (no weights wanted) and training steps (the weights are
        # only read to log interpretation plots, which log_interval < 0 turns off); on the 2-core
        # CPU it makes a training step ~10 % faster than the explicit softmax below.
        fused = not self.return_attention if not self.training else self.hparams.get("log_interval", -1) < 0
        if fused:
            # Scale already applied to the queries. Masked keys get -inf instead of mask_bias:
            # identical after softmax, since every query sees unmasked encoder steps.
            heads = F.scaled_dot_product_attention(qs, ks, vs.unsqueeze(1).expand(-1, n_head, -1, -1),
                                                   attn_mask=~mask.unsqueeze(1), scale=1.0)
            if self.training:
                heads = attn_module.dropout(heads)
            outputs = heads.mean(dim=1) if n_head > 1 else heads[:, 0]
            return attn_module.dropout(attn_module.w_h(outputs)), None
        scores = qs @ ks.transpose(-1, -2)  # a fresh tensor: mask it in place
        scores.masked_fill_(mask.unsqueeze(1), attn_module.mask_bias)
        attn = torch.softmax(scores, dim=-1)  # (B, h, Tq, Tk)
        heads = attn @ vs.unsqueeze(1)  # (B, h, Tq, dv)
        heads = attn_module.dropout(heads)
        outputs = heads.mean(dim=1) if n_head > 1 else heads[:, 0]
        outputs = attn_module.dropout(attn_module.w_h(outputs))
        return outputs, attn.permute(0, 2, 1, 3)  # weights as (B, Tq, h, Tk), like the stock module

    # ------------------------------------------------------------------ forward
    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Same inputs and outputs as ``TemporalFusionTransformer.forward``."""
        if not self.use_fast_forward:
            return super().forward(x)
        self._check_memo()
        encoder_lengths = x["encoder_lengths"]
        decoder_lengths = x["decoder_lengths"]
        x_cat = torch.cat([x["encoder_cat"], x["decoder_cat"]], dim=1)
        x_cont = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1)
        timesteps = x_cont.size(1)
        max_encoder_length = int(encoder_lengths.max())
        embeddings = self.input_embeddings(x_cat)  # categorical name -> (B, T, e)

        if len(self.static_variables) > 0:
            # Static inputs are constant over time: select on the first step only.
            static_embedding, static_variable_selection = self._fast_vsn(
                self.static_variable_selection, x_cont[:, :1], {name: e[:, :1] for name, e in embeddings.items()}, None)
            static_embedding = static_embedding[:, 0]
            static_variable_selection = static_variable_selection[:, 0]
        else:
            static_embedding = torch.zeros((x_cont.size(0), self.hparams.hidden_size), dtype=self.dtype,
                                           device=self.device)
            static_variable_selection = torch.zeros((x_cont.size(0), 0), dtype=self.dtype, device=self.device)

        context_vs = self._grn(self.static_context_variable_selection, static_embedding)
        enc_emb = {name: embeddings[name][:, :max_encoder_length] for name in embeddings}
        dec_emb = {name: embeddings[name][:, max_encoder_length:] for name in embeddings}
        varying_encoder, encoder_sparse_weights = self._fast_vsn(
            self.encoder_variable_selection, x_cont[:, :max_encoder_length], enc_emb,
            self.expand_static_context(context_vs, max_encoder_length))
        varying_decoder, decoder_sparse_weights = self._fast_vsn(
            self.decoder_variable_selection, x_cont[:, max_encoder_length:], dec_emb,
            self.expand_static_context(context_vs, timesteps - max_encoder_length))

        layers = self.hparams.lstm_layers
        input_hidden = self._grn(self.static_context_initial_hidden_lstm, static_embedding).expand(layers, -1, -1)
        input_cell = self._grn(self.static_context_initial_cell_lstm, static_embedding).expand(layers, -1, -1)
        encoder_output, (hidden, cell) = self._lstm(self.lstm_encoder, varying_encoder,
                                                    (input_hidden.contiguous(), input_cell.contiguous()),
                                                    encoder_lengths)
        decoder_output, _ = self._lstm(self.lstm_decoder, varying_decoder, (hidden, cell), decoder_lengths)

        lstm_output_encoder = self.post_lstm_add_norm_encoder(self.post_lstm_gate_encoder(encoder_output),
                                                              varying_encoder)
        lstm_output_decoder = self.post_lstm_add_norm_decoder(self.post_lstm_gate_decoder(decoder_output),
                                                              varying_decoder)
        lstm_output = torch.cat([lstm_output_encoder, lstm_output_decoder], dim=1)

        enrichment = self._grn(self.static_context_enrichment, static_embedding)
        attn_input = self._grn(self.static_enrichment, lstm_output, self.expand_static_context(enrichment, timesteps))

        attn_output, attn_output_weights = self._attention(
            attn_input[:, max_encoder_length:], attn_input, attn_input,
            self.get_attention_mask(encoder_lengths=encoder_lengths, decoder_lengths=decoder_lengths))
        attn_output = self.post_attn_gate_norm(attn_output, attn_input[:, max_encoder_length:])
        output = self._grn(self.pos_wise_ff, attn_output)
        output = self.pre_output_gate_norm(output, lstm_output[:, max_encoder_length:])
        if self.n_targets > 1:  # the per-target output layers as one matrix product, then split
            weight = torch.cat([layer.weight for layer in self.output_layer])
            bias = torch.cat([layer.bias for layer in self.output_layer])
            output = list(F.linear(output, weight, bias).split([layer.out_features for layer in self.output_layer],
                                                                dim=-1))
        else:
            output = self.output_layer(output)

        return self.to_network_output(
            prediction=self.transform_output(output, target_scale=x["target_scale"]),
            encoder_attention=None if attn_output_weights is None else attn_output_weights[..., :max_encoder_length],
            decoder_attention=None if attn_output_weights is None else attn_output_weights[..., max_encoder_length:],
            static_variables=static_variable_selection,
            encoder_variables=encoder_sparse_weights,
            decoder_variables=decoder_sparse_weights,
            decoder_lengths=decoder_lengths,
            encoder_lengths=encoder_lengths,
        )


# ---------------------------------------------------------------------------- construction
def make_loss(spec: FeatureSpec) -> MultiLoss:
    """A fresh multi-target quantile loss (never share one loss object between models)."""
    return MultiLoss([QuantileLoss(quantiles=list(spec.quantiles)) for _ in spec.targets],
                     weights=list(spec.loss_weights) or None)


def build_model(dataset: Any, spec: FeatureSpec, hidden_size: int, attention_heads: int,
                hidden_continuous_size: int, dropout: float, lstm_layers: int = 1,
                learning_rate: float = LEARNING_RATE) -> FleetTFT:
    """Create the model from a ``TimeSeriesDataSet`` (stock ``from_dataset``)."""
    return FleetTFT.from_dataset(
        dataset,
        hidden_size=hidden_size,
        attention_head_size=attention_heads,
        hidden_continuous_size=hidden_continuous_size,
        dropout=dropout,
        lstm_layers=lstm_layers,
        learning_rate=learning_rate,
        loss=make_loss(spec),
        logging_metrics=nn.ModuleList([]),
        output_size=[len(spec.quantiles)] * len(spec.targets),
        log_interval=-1,
    )


def model_hparams(model: FleetTFT) -> dict[str, Any]:
    """JSON-safe hyper-parameters (objects are rebuilt from the feature spec)."""
    hparams = {}
    for key, value in dict(model.hparams).items():
        if key in _OBJECT_HPARAMS:
            continue
        hparams[key] = value
    json.dumps(hparams)  # fail loudly here, not at load time
    return hparams


def model_from_config(config: dict[str, Any]) -> tuple[FleetTFT, FeatureSpec]:
    """Rebuild an untrained model with the exact architecture described by ``config``."""
    from pytorch_forecasting.data import MultiNormalizer

    spec = FeatureSpec.from_dict(config["feature_spec"])
    hparams = dict(config["hparams"])
    hparams["embedding_sizes"] = {k: tuple(v) for k, v in hparams.get("embedding_sizes", {}).items()}
    model = FleetTFT(**hparams, loss=make_loss(spec), logging_metrics=nn.ModuleList([]),
                     output_transformer=MultiNormalizer(target_normalizer_objects(spec)))
    return model, spec


# ---------------------------------------------------------------------------- save / load
class ModelLoadError(RuntimeError):
    """A model directory that cannot be loaded; the message says why and how to fix it."""


@dataclass
class LoadedModel:
    """A model ready to forecast, with everything needed to feed and decode it."""

    model: FleetTFT
    spec: FeatureSpec
    encoder: ServerEncoder
    config: dict[str, Any]
    training_info: dict[str, Any]
    model_dir: Path


def model_config(model: FleetTFT, spec: FeatureSpec) -> dict[str, Any]:
    """The ``config.json`` document for a model."""
    return {
        "model_format_version": MODEL_FORMAT_VERSION,
        "model_class": "FleetTFT (pytorch_forecasting.TemporalFusionTransformer)",
        "contract_version": CONTRACT_VERSION,
        "hparams": model_hparams(model),
        "feature_spec": spec.to_dict(),
    }


def missing_model_files(model_dir: Path) -> list[str]:
    """Required artefact files absent from ``model_dir``."""
    return [name for name in MODEL_REQUIRED_FILES if not (model_dir / name).is_file()]


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a saved model from JSON + safetensors; never unpickles anything.

    Raises :class:`ModelLoadError` (or FileNotFoundError for a missing mapping) with a
    message that says what is wrong, why it matters, how to fix it and where to read more.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"Model directory {model_dir} does not exist. Why it matters: there is nothing to forecast with. "
            f"Fix: train one with `python main.py train` or pass --model-dir. See {TRAINING_GUIDE_DOC}.")
    if not (model_dir / SERVER_MAPPING_FILE).is_file():
        raise FileNotFoundError(
            f"{SERVER_MAPPING_FILE} not found in {model_dir}. This file is required for decoding predictions "
            f"to server names. Fix: retrain the model with tft_trainer.py (it writes the mapping). "
            f"See {TRAINING_GUIDE_DOC} (Artefacts).")
    missing = missing_model_files(model_dir)
    if missing:
        raise ModelLoadError(
            f"Model directory {model_dir} is incomplete: missing {missing}. Why it matters: the model cannot be "
            f"rebuilt without all of {MODEL_REQUIRED_FILES}. Fix: retrain, or point to a complete model "
            f"directory (models/latest). See {TRAINING_GUIDE_DOC} (Artefacts).")
    try:
        config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
        training_info = json.loads((model_dir / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"Cannot read {MODEL_CONFIG_FILE}/{TRAINING_INFO_FILE} in {model_dir}: {exc}. Fix: retrain the "
            f"model; these files are written atomically, so a damaged one was edited by hand. "
            f"See {TRAINING_GUIDE_DOC} (Artefacts).") from exc
    model_contract = str(config.get("contract_version", "0.0.0"))
    try:
        check_version_compatibility(model_contract, current_version=CONTRACT_VERSION, what="data contract")
    except ValueError as exc:
        raise ModelLoadError(
            f"Model in {model_dir} was trained under data contract {model_contract}; this install speaks "
            f"{CONTRACT_VERSION}. Why it matters: a different MAJOR contract means different columns, states "
            f"or profiles, so its inputs would be misread. Fix: retrain with current data "
            f"(python main.py train). See Docs/DATA_CONTRACT.md (Versioning).") from exc
    if config.get("model_format_version") != MODEL_FORMAT_VERSION:
        raise ModelLoadError(
            f"Model format {config.get('model_format_version')} in {model_dir} is not {MODEL_FORMAT_VERSION}. "
            f"Fix: retrain with this version. See {TRAINING_GUIDE_DOC} (Artefacts).")
    model, spec = model_from_config(config)
    state = load_file(str(model_dir / MODEL_WEIGHTS_FILE), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"The weights in {model_dir / MODEL_WEIGHTS_FILE} do not fit the architecture in "
            f"{MODEL_CONFIG_FILE}: {str(exc).splitlines()[0]}. Why it matters: a partly loaded model would "
            f"forecast garbage. Fix: keep the files of one training run together, or retrain. "
            f"See {TRAINING_GUIDE_DOC} (Artefacts).") from exc
    model.to(device)
    model.eval()
    encoder = ServerEncoder.load(model_dir / SERVER_MAPPING_FILE)
    return LoadedModel(model=model, spec=spec, encoder=encoder, config=config, training_info=training_info,
                       model_dir=model_dir)


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the state dict as safetensors (shared tensors cloned, contiguous)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    os.chmod(path, 0o666 & ~_umask())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_bytes(model: nn.Module) -> int:
    """Bytes held by parameters (fp32)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


