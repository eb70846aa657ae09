"""The fast path of ``FleetTFT``: the stock TFT sub-modules' functions, computed faster.

Nothing here owns a parameter: every function reads the parameters of pytorch-forecasting's
own modules (``GatedResidualNetwork``, ``ResampleNorm``, ``VariableSelectionNetwork``), so the
model's state dict stays the stock one. tests/test_fastops.py checks each piece against the
stock module it replaces.

* :class:`FastDropout`: ``nn.Dropout`` with cheaper CPU masks (numpy 16-bit integers);
* :class:`ParamMemo`: tensors derived from parameters (stacked, folded), built once per
  parameter state at inference and dropped as soon as any parameter changes;
* :class:`FastPath`: one model's fast sub-modules. ``ResampleNorm``'s linear interpolation as
  a fixed matrix product, the GRN with it, and the variable selection networks with all
  continuous variables' GRNs folded into batched matrix products (no Python loop over ~20
  tiny networks, no (batch, time, hidden, variables) stack).

Tensor shapes below: V continuous variables of a selection network, N = batch x time rows,
d the prescaled size of one variable, H the hidden size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    ResampleNorm,
    VariableSelectionNetwork,
)
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FastDropout", "FastPath", "ParamMemo", "dropout_keep_mask", "install_fast_dropout",
           "interpolation_matrix", "variable_grn_math"]


# ============================================================================ dropout
_MASK_LEVELS = int(np.iinfo(np.uint16).max) + 1  # one 16-bit draw per element: p is rounded to a multiple of 1/65536


def _dropout_generator() -> np.random.Generator:
    """A numpy PCG64 seeded from torch's generator: masks follow ``torch.manual_seed`` like stock dropout."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), dtype=torch.int64)))


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
        """Drop and rescale like ``nn.Dropout``."""
        if not self.training or self.p == 0.0 or self.inplace or x.device.type != "cpu" \
                or not x.is_floating_point():
            return super().forward(x)
        keep, scale = dropout_keep_mask(self.p, tuple(x.shape))
        return x * keep.to(x.dtype).mul_(scale)


def install_fast_dropout(model: nn.Module) -> int:
    """Turn every plain ``nn.Dropout`` inside ``model`` into a :class:`FastDropout`; returns how many.

    Only the class changes: no parameters, the same state dict.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count


# ============================================================================ parameter memo
# The memo must know when a parameter changed *in place* (an optimiser step, an EMA update,
# ``load_state_dict``'s ``copy_``). torch's only cheap signal for that is the tensor's version
# counter, ``Tensor._version``: a private attribute, but the one autograd itself relies on to
# refuse stale saved tensors, and stable since torch 1.0. It is read in exactly one place,
# ``ParamMemo.refresh``; a torch without it turns the memo off (always rebuild: slower, never wrong).
_HAS_VERSION_COUNTER = hasattr(torch.zeros(0), "_version")


class ParamMemo:
    """Tensors derived from a module's parameters only, built once per parameter state.

    ``get(key, build)`` returns the stored value or builds and stores it; the caller uses it at
    inference only (with gradients on, values must be rebuilt so gradients flow). ``refresh``
    drops everything when any parameter was replaced or changed in place since the last call,
    so a value never outlives the weights it was built from. Device and dtype moves swap
    parameter data without a version bump: the owner calls ``clear`` then (and on mode
    switches). Writes through ``param.data`` bypass the version counter and are not seen; change
    parameters themselves under ``torch.no_grad()``, as optimisers and ``load_state_dict`` do.
    Copies and pickles start empty (the values are keyed by the original's modules).
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._stamp: tuple | None = None
        self._slots: list[tuple[dict, str]] | None = None  # where each parameter lives: (owner's dict, name)

    def __len__(self) -> int:
        return len(self._values)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def clear(self) -> None:
        """Drop every stored value."""
        self._values.clear()

    def refresh(self, module: nn.Module) -> None:
        """Drop the stored values if any parameter object of ``module`` or its version counter changed."""
        if self._slots is None:
            self._slots = [(m._parameters, n) for m in module.modules() for n in m._parameters]
        if not _HAS_VERSION_COUNTER:
            self._values.clear()
            return
        stamp = tuple((id(p), p._version) for d, n in self._slots if (p := d[n]) is not None)
        if stamp != self._stamp:
            self._values.clear()
            self._stamp = stamp

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value stored under ``key``, built by ``build()`` the first time."""
        value = self._values.get(key)
        if value is None:
            value = build()
            self._values[key] = value
        return value


# ============================================================================ stock pieces as products
def interpolation_matrix(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Matrix M with ``x @ M == F.interpolate(x, size_out, mode='linear', align_corners=True)``."""
    eye = torch.eye(size_in, dtype=torch.float64)
    matrix = F.interpolate(eye.unsqueeze(1), size_out, mode="linear", align_corners=True).squeeze(1)
    return matrix.to(dtype=dtype, device=device)


def _gate(mask: torch.Tensor) -> torch.Tensor:
    """ResampleNorm's trainable gate: 2 * sigmoid(mask)."""
    return torch.sigmoid(mask) * 2.0


def variable_grn_math(x: torch.Tensor, p: dict[str, torch.Tensor], keep: torch.Tensor | None, scale: float,
                      eps: float) -> torch.Tensor:
    """The batched variable GRNs as one pure function (what ``torch.compile`` fuses in training).

    x (V, N, 1); ``p`` from ``FastPath.variable_grn_params``; ``keep`` the dropout mask of the
    hidden layer (None: no dropout). Same numbers as the eager ``FastPath.variable_grns``; here
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


@dataclass
class RealGroup:
    """The continuous variables of one variable-selection network, in input order."""

    names: list[str]
    columns: list[int]  # positions in x_cont
    flat_offsets: list[int]  # where each variable's slice starts in the flattened input


# ============================================================================ one model's fast path
class FastPath:
    """The fast sub-modules of one model: same results as the stock modules, less work.

    ``reals`` are the model's continuous inputs and ``x_reals`` their column order in
    ``x_cont`` (``hparams.x_reals``). Holds the interpolation matrices, the parameter memo and
    which variables of each selection network can be batched; none of that is a parameter.
    ``compile_training``: training steps on CPU run the variable GRNs through ``torch.compile``
    (switched off, with a warning, if compiling fails).
    """

    def __init__(self, reals: Iterable[str], x_reals: Iterable[str], compile_training: bool = False) -> None:
        self.reals = frozenset(reals)
        self.x_reals = list(x_reals)
        self.compile_training = compile_training
        self.memo = ParamMemo()
        self._interp_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}
        self._groups: dict[int, tuple[VariableSelectionNetwork, RealGroup | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles start without caches (they hold tensors keyed by this object's modules)."""
        return {"reals": self.reals, "x_reals": self.x_reals, "compile_training": self.compile_training}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    # ------------------------------------------------------------------ memo
    def folded(self, key: Hashable, build: Callable[[], Any], training: bool) -> Any:
        """``build()``'s tensors: memoised at inference, rebuilt in training or with gradients on (so they flow)."""
        if training or torch.is_grad_enabled():
            return build()
        return self.memo.get(key, build)

    # ------------------------------------------------------------------ ResampleNorm and GRN
    def interp(self, size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
        """The interpolation matrix for ``like``'s dtype and device (cached)."""
        key = (size_in, size_out, like.dtype, like.device)
        matrix = self._interp_cache.get(key)
        if matrix is None:
            matrix = interpolation_matrix(size_in, size_out, like.dtype, like.device)
            self._interp_cache[key] = matrix
        return matrix

    def resample_norm(self, module: ResampleNorm, x: torch.Tensor) -> torch.Tensor:
        """ResampleNorm with the interpolation as a matrix product."""
        if module.input_size != module.output_size:
            x = x @ self.interp(module.input_size, module.output_size, x)
        if module.trainable_add:
            x = x * _gate(module.mask)
        return module.norm(x)

    def grn(self, grn: GatedResidualNetwork, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """GatedResidualNetwork forward with the fast ResampleNorm."""
        residual = x
        if grn.input_size != grn.output_size and not grn.residual:
            residual = self.resample_norm(grn.resample_norm, residual)
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
            skip = skip @ self.interp(add_norm.skip_size, add_norm.input_size, skip)
        if add_norm.trainable_add:
            skip = skip * _gate(add_norm.mask)
        return add_norm.norm(x + skip)

    # ------------------------------------------------------------------ variable selection
    def real_group(self, vsn: VariableSelectionNetwork) -> RealGroup | None:
        """Continuous inputs of a VSN if they can be batched (same size, plain GRNs); fixed per model."""
        entry = self._groups.get(id(vsn))
        if entry is None or entry[0] is not vsn:  # an id can be reused by another object: check identity
            entry = (vsn, self._find_real_group(vsn))
            self._groups[id(vsn)] = entry
        return entry[1]

    def _find_real_group(self, vsn: VariableSelectionNetwork) -> RealGroup | None:
        names, columns, offsets, offset = [], [], [], 0
        sizes = set()
        for name, size in vsn.input_sizes.items():
            if name in self.reals:
                names.append(name)
                columns.append(self.x_reals.index(name))
                offsets.append(offset)
                sizes.add(size)
                grn = vsn.single_variable_grns[name]
                if not isinstance(grn, GatedResidualNetwork) or grn.context_size is not None:
                    return None
            offset += size
        if len(sizes) > 1:
            return None
        return RealGroup(names, columns, offsets)

    def variable_grn_params(self, grns: list[GatedResidualNetwork], a: torch.Tensor,
                            b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-variable vectors and stacked weights :meth:`variable_grns` folds its GRNs into."""
        first = grns[0]
        d = a.shape[1]
        hidden = first.output_size
        params: dict[str, torch.Tensor] = {}
        if first.input_size != first.output_size and not first.residual:
            interp = self.interp(d, hidden, a)
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

    def variable_grns(self, grns: list[GatedResidualNetwork], a: torch.Tensor, b: torch.Tensor,
                      x: torch.Tensor) -> torch.Tensor:
        """Each continuous variable's GRN on its prescaled input x*a + b, batched: x (V, N, 1) -> (V, N, H).

        The prescaler is Linear(1, d), so everything linear before the first nonlinearity is
        folded into per-variable vectors (see :meth:`variable_selection`). ``a``, ``b`` (V, d)
        are the prescalers' weights and biases.
        """
        training = grns[0].training
        p = self.folded(("vgrn", *map(id, grns)), lambda: self.variable_grn_params(grns, a, b), training)
        eps = grns[0].gate_norm.add_norm.norm.eps
        drop = grns[0].gate_norm.glu.dropout
        if self.compile_training and training and x.device.type == "cpu":
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

    def variable_selection(self, vsn: VariableSelectionNetwork, x_cont: torch.Tensor,
                           embeddings: dict[str, torch.Tensor],
                           context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Variable selection for (B, T) inputs; returns (B, T, H) and weights (B, T, 1, V).

        ``x_cont`` (B, T, R) holds every continuous input in ``x_reals`` order, ``embeddings``
        the embedded categoricals (B, T, e). Each continuous variable enters through
        ``prescaler = Linear(1, d)``, so its prescaled vector is affine in one scalar x:
        e = x*a + b. Everything linear that follows folds into per-variable vectors computed
        from the parameters:

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
        group = self.real_group(vsn)
        if group is None or vsn.num_inputs <= 1:
            inputs = {name: embeddings[name] if name not in self.reals
                      else x_cont[..., self.x_reals.index(name)].unsqueeze(-1) for name in vsn.input_sizes}
            return vsn(inputs, context)
        training = vsn.training
        batch, steps = x_cont.shape[:2]
        n = batch * steps
        hidden = vsn.hidden_size
        grns = [vsn.single_variable_grns[name] for name in group.names]
        a, b = self.folded(("prescale", id(vsn)), lambda: (
            torch.stack([vsn.prescalers[name].weight[:, 0] for name in group.names]),  # (V, d)
            torch.stack([vsn.prescalers[name].bias for name in group.names])), training)  # (V, d)
        values = x_cont[..., group.columns].reshape(n, -1)  # (N, V)
        shared = torch.zeros(len(group.names), dtype=torch.bool)
        if not training and batch > 1:
            # At inference every window of a cycle has the same timestamps, so calendar and
            # relative-time inputs are identical across the batch: run their networks once per step.
            grid = x_cont[..., group.columns]
            shared = (grid == grid[:1]).all(dim=1).all(dim=0).cpu()
        own = torch.nonzero(~shared).flatten().tolist()
        common = torch.nonzero(shared).flatten().tolist()
        var_out = self.variable_grns([grns[i] for i in own], a[own], b[own],
                                     values[:, own].t().unsqueeze(-1)) if own else None
        var_out_common = self.variable_grns([grns[i] for i in common], a[common], b[common],
                                            values[:steps, common].t().unsqueeze(-1)) if common else None

        # Categorical (embedded) inputs keep their own small networks.
        cat_names = [name for name in vsn.input_sizes if name not in self.reals]
        cat_out = [self.resample_norm(vsn.single_variable_grns[name], embeddings[name].reshape(n, -1))
                   if isinstance(vsn.single_variable_grns[name], ResampleNorm)
                   else vsn.single_variable_grns[name](embeddings[name].reshape(n, -1)) for name in cat_names]

        # Selection weights from the flattened GRN, its inputs taken block by block.
        flat_grn = vsn.flattened_grn
        order = list(vsn.input_sizes)
        fp = self.folded(("flat", id(vsn)), lambda: self.flat_grn_params(vsn, group, a, b, cat_names), training)
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
            at = {name: j for j, name in enumerate(group.names)}  # a real's position in the group
            resid_f = torch.cat([embeddings[name].reshape(n, -1) if name not in self.reals
                                 else torch.addcmul(b[at[name]], values[:, at[name], None], a[at[name]])
                                 for name in order], dim=-1)
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
        for name, emb_out in zip(cat_names, cat_out, strict=True):
            out = out + emb_out * weights[:, order.index(name)].unsqueeze(-1)
        return out.reshape(batch, steps, hidden), weights.reshape(batch, steps, 1, -1)

    def flat_grn_params(self, vsn: VariableSelectionNetwork, group: RealGroup, a: torch.Tensor,
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
            interp_f = self.interp(flat_grn.input_size, flat_grn.output_size, a)  # (total, V_all)
            m_blocks = torch.stack([interp_f[o:o + d] for o in group.flat_offsets])  # (V, d, V_all)
            params["resid_w"] = torch.einsum("vd,vdo->vo", a, m_blocks)
            params["resid_bias"] = torch.einsum("vd,vdo->o", b, m_blocks)
            for name in cat_names:
                params[f"cat_resid_{name}"] = interp_f[offsets[name]:offsets[name] + vsn.input_sizes[name]]
            if flat_grn.resample_norm.trainable_add:
                params["resid_gate"] = _gate(flat_grn.resample_norm.mask)
        return params
