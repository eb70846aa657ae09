"""The fleet model: pytorch-forecasting's Temporal Fusion Transformer with a faster forward,
and pickle-free save/load.

``FleetTFT`` subclasses ``TemporalFusionTransformer`` and keeps every parameter, name and
shape of the stock model (its state dict loads into the stock class and back). Only the
forward pass is reorganised, computing the same function (tests/test_model.py checks it
against the stock forward). Read ``FleetTFT.forward`` top to bottom: it is the stock TFT's
recipe, step by step, with shapes. The sub-module shortcuts it calls live in ``tft_fastops.py``
(each checked against its stock module in tests/test_fastops.py):

* the variable selection networks run all continuous variables' GRNs as one batched
  matrix product per layer instead of a Python loop over ~20 tiny networks, and never
  build the (batch, time, hidden, variables) stack;
* ``ResampleNorm``'s linear interpolation of a vector is a fixed linear map, applied as a
  matrix product (the stock ``F.interpolate`` backward is slow on CPU and CUDA alike);
* CPU dropout masks are drawn as numpy 16-bit integers (``FastDropout``);
* tensors folded from parameters are memoised at inference (``ParamMemo``).

Here, in view: when every window has the full encoder/decoder length (always, in this
project) the LSTMs run unpacked instead of through ``pack_padded_sequence``; attention heads
run as one batched product instead of a loop; the optimiser is AdamW with a one-cycle schedule.

Saved model = ``model.safetensors`` + ``config.json`` (hyper-parameters and the feature
spec as plain JSON) + ``training_info.json`` + ``server_mapping.json``. :func:`load_model`
rebuilds the exact model from those files and never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from pytorch_forecasting.metrics import MultiLoss, QuantileLoss
from torch import nn

from common_utils import _umask, check_version_compatibility
from config import (
    CONTRACT_VERSION,
    LEARNING_RATE,
    MODEL,
    MODEL_CONFIG_FILE,
    MODEL_REQUIRED_FILES,
    MODEL_WEIGHTS_FILE,
    SERVER_MAPPING_FILE,
    TRAINING_GUIDE_DOC,
    TRAINING_INFO_FILE,
)
from errors import ToolkitError
from server_encoder import ServerEncoder
from tft_fastops import FastPath, install_fast_dropout
from tft_features import FeatureSpec, ordered_quantiles, target_normalizer_objects

logger = logging.getLogger(__name__)

# Hyper-parameters that are objects; they are rebuilt from the feature spec on load.
_OBJECT_HPARAMS = ("loss", "logging_metrics", "output_transformer", "dataset_parameters")


class FleetTFT(TemporalFusionTransformer):
    """Temporal Fusion Transformer with the stock parameters and a faster forward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # One target is still laid out as a list of one (MultiLoss, MultiNormalizer, a list of
        # output layers): the stock model would build a single Linear from the list and fail.
        sizes = kwargs.get("output_size")
        single = isinstance(sizes, list) and len(sizes) == 1
        if single:
            kwargs["output_size"] = sizes[0]
        super().__init__(*args, **kwargs)
        if single:
            self.output_layer = nn.ModuleList([self.output_layer])
            self.hparams.output_size = list(sizes)
        install_fast_dropout(self)  # faster CPU dropout masks; no parameters, same state dict
        # The fast sub-modules: interpolation matrices, parameter memo, batched variable GRNs.
        self.fast_path = FastPath(reals=self.reals, x_reals=self.hparams.x_reals)
        self.use_fast_forward = True
        # Attention weights are an interpretation output; the daemon does not read them, and
        # without them attention can run as one fused kernel (same result).
        self.return_attention = True
        # Where the loss is computed (FeatureSpec.loss_space; set by build_model / model_from_config).
        self.loss_space = "metric"
        # Conformal band offsets (targets, D, 2) in normalised units and the kept share of the forecast
        # change (targets, D), applied outside training (FeatureSpec.band_offsets / center_weights;
        # set_calibration).
        self.band_offsets: torch.Tensor | None = None
        self.center_weights: torch.Tensor | None = None
        # Per target, the guard's ceiling in the modelled units (NaN: none), applied outside training
        # (FeatureSpec.level_ceilings; set_calibration).
        self.level_ceilings: torch.Tensor | None = None
        # Optimiser steps of the whole run (set by the trainer, so a resumed run keeps its schedule).
        self.planned_total_steps: int | None = None

    @property
    def compile_training(self) -> bool:
        """Whether CPU training steps run the variable GRNs through torch.compile.

        Set by the trainer; False again if compiling failed (training then continues eagerly).
        """
        return self.fast_path.compile_training

    @compile_training.setter
    def compile_training(self, value: bool) -> None:
        self.fast_path.compile_training = bool(value)

    # ------------------------------------------------------------------ calibrated bands
    def set_calibration(self, spec: FeatureSpec) -> None:
        """Use the spec's persistence blend, conformal band offsets and level ceilings (None: not applied)."""
        self.center_weights = None if not spec.center_weights else torch.tensor(
            [spec.center_weights[t] for t in spec.targets], dtype=torch.float32)
        self.band_offsets = None if not spec.band_offsets else torch.tensor(
            [[spec.band_offsets[t]["lower"], spec.band_offsets[t]["upper"]] for t in spec.targets],
            dtype=torch.float32).transpose(1, 2)
        ceilings = spec.level_ceilings or {}
        self.level_ceilings = None if not ceilings else torch.tensor(
            [ceilings.get(t, float("nan")) for t in spec.targets], dtype=torch.float32)

    def transform_output(self, prediction: Any, target_scale: Any, loss: Any = None) -> Any:
        """Decode normalised outputs; outside training, calibrate them first.

        First the quantiles are put in order (:func:`tft_features.ordered_quantiles`). The persistence blend keeps
        a share ``w`` of the forecast change from the window's anchor (the last value): every quantile
        moves by ``(w - 1) * p50`` (normalised), so the band keeps its width around the blended median;
        then p10/p90 move by the conformal band offsets, never past the median (a negative offset
        narrows a band at most to its median). Last, a log-modelled target's quantiles are capped at
        ``MODEL.level_ceiling_factor`` x the larger of the training fleet's highest value and the window's
        last value (``level_ceilings``). Every step keeps p10 <= p50 <= p90, and the decode after
        it (monotone transforms, clipping to the metric's range, rounding counts) keeps the order too.
        """
        if self.training or not isinstance(prediction, list) or (
                self.band_offsets is None and self.center_weights is None and self.level_ceilings is None):
            return super().transform_output(prediction, target_scale, loss)  # as stock (decode_quantiles orders)
        calibrated = []
        for j, part in enumerate(prediction):
            steps = part.size(1)
            part = ordered_quantiles(part)  # a barely trained network's quantiles may cross
            if self.center_weights is not None:
                weights = self.center_weights[j, :steps].to(part)  # (D,)
                part = part + ((weights - 1.0) * part[..., part.size(-1) // 2])[..., None]
            if self.band_offsets is not None:
                offsets = self.band_offsets[j, :steps].to(part)  # (D, 2)
                part = ordered_quantiles(torch.cat([(part[..., 0] - offsets[:, 0])[..., None], part[..., 1:-1],
                                                    (part[..., -1] + offsets[:, 1])[..., None]], dim=-1),
                                         keep_median=True)
            if self.level_ceilings is not None and torch.isfinite(self.level_ceilings[j]):
                # In normalised units: (max(ceiling, anchor) + log(factor) - anchor) / spread; expm1 of the
                # capped value is factor x (1 + the larger level) - 1 in the metric's units.
                scale = target_scale[j] if isinstance(target_scale, (list, tuple)) else target_scale
                center, spread = scale[:, 0].to(part), scale[:, 1].to(part)
                limit = ((self.level_ceilings[j].to(part) - center).clamp_min(0.0)
                         + math.log(MODEL.level_ceiling_factor)) / spread
                part = torch.minimum(part, limit[:, None, None])
            calibrated.append(part)
        return super().transform_output(calibrated, target_scale, loss)

    # ------------------------------------------------------------------ loss
    def step(self, x: dict[str, Any], y: tuple[Any, Any], batch_idx: int, **kwargs: Any) -> tuple[dict, Any]:
        """One training/validation step; the loss in normalised space when the spec says so.

        ``loss_space == "normalised"`` (set from the spec by :func:`build_model` and
        :func:`model_from_config`): the quantile loss of each target is computed on the window's
        normalised values, ``(transform(y) - anchor) / spread`` for actuals and forecasts alike,
        with actuals clipped at ``MODEL.loss_normalised_clip`` spreads; targets are averaged. Every
        window then counts alike, whatever the magnitude of its metric.
        """
        if self.loss_space != "normalised":
            return super().step(x, y, batch_idx, **kwargs)
        out = self(x, **kwargs)
        loss = None if self.predicting else self.normalised_quantile_loss(out["prediction"], y[0], x["target_scale"])
        if loss is not None:
            self.log(f"{self.current_stage}_loss", loss.detach(), on_step=self.training, on_epoch=True, prog_bar=True,
                     batch_size=len(x["decoder_target"]))
        return {"loss": loss, "n_samples": x["decoder_lengths"].size(0)}, out

    def normalised_quantile_loss(self, prediction: list[torch.Tensor], target: list[torch.Tensor],
                                 target_scale: list[torch.Tensor]) -> torch.Tensor:
        """Mean over targets of the quantile loss on normalised values (see :meth:`step`)."""
        quantiles = torch.tensor(self.loss.metrics[0].quantiles, dtype=prediction[0].dtype,
                                 device=prediction[0].device)
        total = prediction[0].new_zeros(())
        for pred, actual, scale, normalizer in zip(prediction, target, target_scale,
                                                   self.output_transformer.normalizers, strict=True):
            center, spread = scale[:, 0, None], scale[:, 1, None]  # (B, 1)
            if normalizer.transformation == "log1p":
                pred, actual = torch.log1p(pred.clamp_min(-1.0 + 1e-6)), torch.log1p(actual.clamp_min(0.0))
            z_actual = ((actual - center) / spread).clamp(-MODEL.loss_normalised_clip, MODEL.loss_normalised_clip)
            z_pred = (pred - center[..., None]) / spread[..., None]  # (B, D, Q)
            error = z_actual[..., None] - z_pred
            total = total + torch.maximum(quantiles * error, (quantiles - 1.0) * error).mean()
        return total / len(prediction)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        """AdamW with a one-cycle schedule (warm-up, cosine decay) over the planned steps."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate,
                                      weight_decay=self.hparams.get("weight_decay", MODEL.weight_decay))
        total = self.planned_total_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.learning_rate, total_steps=max(total, 2),
            pct_start=MODEL.lr_warmup_fraction, anneal_strategy="cos")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        """Skip per-step SMAPE/MAE/... logging: the backtest measures quality properly."""

    # ------------------------------------------------------------------ the inference memo
    def train(self, mode: bool = True) -> FleetTFT:
        """Switch mode and drop the inference memo."""
        if hasattr(self, "fast_path"):
            self.fast_path.memo.clear()
        return super().train(mode)

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        """Device/dtype moves swap parameter data without a version bump: drop the memo."""
        if hasattr(self, "fast_path"):
            self.fast_path.memo.clear()
        return super()._apply(*args, **kwargs)

    # ------------------------------------------------------------------ LSTM and attention
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
        wq, bq, wk, bk = self.fast_path.folded(("attention",), lambda: (
            torch.cat([layer.weight for layer in attn_module.q_layers]),
            torch.cat([layer.bias for layer in attn_module.q_layers]),
            torch.cat([layer.weight for layer in attn_module.k_layers]),
            torch.cat([layer.bias for layer in attn_module.k_layers])), self.training)
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
        fast = self.fast_path  # the stock sub-modules' functions, computed faster (tft_fastops.py)
        if not self.training and not torch.is_grad_enabled():
            fast.memo.refresh(self)  # drop folded tensors if any weight changed since they were built
        encoder_lengths = x["encoder_lengths"]
        decoder_lengths = x["decoder_lengths"]
        x_cat = torch.cat([x["encoder_cat"], x["decoder_cat"]], dim=1)
        x_cont = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1)
        timesteps = x_cont.size(1)
        max_encoder_length = int(encoder_lengths.max())
        embeddings = self.input_embeddings(x_cat)  # categorical name -> (B, T, e)

        if len(self.static_variables) > 0:
            # Static inputs are constant over time: select on the first step only.
            static_embedding, static_variable_selection = fast.variable_selection(
                self.static_variable_selection, x_cont[:, :1], {name: e[:, :1] for name, e in embeddings.items()}, None)
            static_embedding = static_embedding[:, 0]
            static_variable_selection = static_variable_selection[:, 0]
        else:
            static_embedding = torch.zeros((x_cont.size(0), self.hparams.hidden_size), dtype=self.dtype,
                                           device=self.device)
            static_variable_selection = torch.zeros((x_cont.size(0), 0), dtype=self.dtype, device=self.device)

        context_vs = fast.grn(self.static_context_variable_selection, static_embedding)
        enc_emb = {name: embeddings[name][:, :max_encoder_length] for name in embeddings}
        dec_emb = {name: embeddings[name][:, max_encoder_length:] for name in embeddings}
        varying_encoder, encoder_sparse_weights = fast.variable_selection(
            self.encoder_variable_selection, x_cont[:, :max_encoder_length], enc_emb,
            self.expand_static_context(context_vs, max_encoder_length))
        varying_decoder, decoder_sparse_weights = fast.variable_selection(
            self.decoder_variable_selection, x_cont[:, max_encoder_length:], dec_emb,
            self.expand_static_context(context_vs, timesteps - max_encoder_length))

        layers = self.hparams.lstm_layers
        input_hidden = fast.grn(self.static_context_initial_hidden_lstm, static_embedding).expand(layers, -1, -1)
        input_cell = fast.grn(self.static_context_initial_cell_lstm, static_embedding).expand(layers, -1, -1)
        encoder_output, (hidden, cell) = self._lstm(self.lstm_encoder, varying_encoder,
                                                    (input_hidden.contiguous(), input_cell.contiguous()),
                                                    encoder_lengths)
        decoder_output, _ = self._lstm(self.lstm_decoder, varying_decoder, (hidden, cell), decoder_lengths)

        lstm_output_encoder = self.post_lstm_add_norm_encoder(self.post_lstm_gate_encoder(encoder_output),
                                                              varying_encoder)
        lstm_output_decoder = self.post_lstm_add_norm_decoder(self.post_lstm_gate_decoder(decoder_output),
                                                              varying_decoder)
        lstm_output = torch.cat([lstm_output_encoder, lstm_output_decoder], dim=1)

        enrichment = fast.grn(self.static_context_enrichment, static_embedding)
        attn_input = fast.grn(self.static_enrichment, lstm_output, self.expand_static_context(enrichment, timesteps))

        attn_output, attn_output_weights = self._attention(
            attn_input[:, max_encoder_length:], attn_input, attn_input,
            self.get_attention_mask(encoder_lengths=encoder_lengths, decoder_lengths=decoder_lengths))
        attn_output = self.post_attn_gate_norm(attn_output, attn_input[:, max_encoder_length:])
        output = fast.grn(self.pos_wise_ff, attn_output)
        output = self.pre_output_gate_norm(output, lstm_output[:, max_encoder_length:])
        if isinstance(self.output_layer, nn.ModuleList):  # per-target layers as one matrix product, then split
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
    model = FleetTFT.from_dataset(
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
    model.loss_space = spec.loss_space
    return model


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
    model.loss_space = spec.loss_space
    model.set_calibration(spec)
    return model, spec


# ---------------------------------------------------------------------------- save / load
class ModelLoadError(ToolkitError, RuntimeError):
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
        "model_format_version": MODEL.format_version,
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"Model directory {model_dir} does not exist", "there is nothing to forecast with",
                             "train one with `python main.py train` or pass --model-dir", TRAINING_GUIDE_DOC)
    if not (model_dir / SERVER_MAPPING_FILE).is_file():
        raise FileNotFoundError(
            f"{SERVER_MAPPING_FILE} not found in {model_dir}. This file is required for decoding predictions "
            f"to server names. Fix: retrain the model with tft_trainer.py (it writes the mapping). "
            f"See {TRAINING_GUIDE_DOC} (Artefacts).")
    missing = missing_model_files(model_dir)
    if missing:
        raise ModelLoadError(
            f"Model directory {model_dir} is incomplete: missing {missing}",
            f"the model cannot be rebuilt without all of {MODEL_REQUIRED_FILES}",
            "retrain, or point to a complete model directory (models/latest)", f"{TRAINING_GUIDE_DOC} (Artefacts)")
    try:
        config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
        training_info = json.loads((model_dir / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"Cannot read {MODEL_CONFIG_FILE}/{TRAINING_INFO_FILE} in {model_dir}: {exc}. Fix: retrain the "
            f"model; these files are written atomically, so a damaged one was edited by hand. "
            f"See {TRAINING_GUIDE_DOC} (Artefacts).") from exc
    for name, document in ((MODEL_CONFIG_FILE, config), (TRAINING_INFO_FILE, training_info)):
        if not isinstance(document, dict):
            raise ModelLoadError(
                f"{name} in {model_dir} is a JSON {type(document).__name__}, not an object",
                "it describes the model to rebuild", "retrain, or copy the model directory again from the training run",
                f"{TRAINING_GUIDE_DOC} (Artefacts)")
    model_contract = str(config.get("contract_version", "0.0.0"))
    try:
        check_version_compatibility(model_contract, current_version=CONTRACT_VERSION, what="data contract")
    except ValueError as exc:
        raise ModelLoadError(
            f"Model in {model_dir} was trained under data contract {model_contract}; this install speaks "
            f"{CONTRACT_VERSION}", "a different MAJOR contract means different columns, states or profiles, so its "
            "inputs would be misread", "retrain with current data (python main.py train)",
            "Docs/DATA_CONTRACT.md (Versioning)") from exc
    if config.get("model_format_version") != MODEL.format_version:
        raise ModelLoadError(
            f"Model format {config.get('model_format_version')} in {model_dir} is not {MODEL.format_version}. "
            f"Fix: retrain with this version. See {TRAINING_GUIDE_DOC} (Artefacts).")
    try:
        model, spec = model_from_config(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(
            f"{MODEL_CONFIG_FILE} in {model_dir} does not describe a model (missing or malformed "
            f"{exc.__class__.__name__}: {exc}; it needs 'feature_spec' and 'hparams')",
            "the model cannot be rebuilt from it", "keep the files of one training run together, or retrain",
            f"{TRAINING_GUIDE_DOC} (Artefacts)") from None
    try:
        state = load_file(str(model_dir / MODEL_WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"{model_dir / MODEL_WEIGHTS_FILE} is not a readable safetensors file ({exc})",
            "without the weights there is no model. It may be cut short (a copy that did not finish), empty, or "
            "another format such as a PyTorch pickle, which is never loaded (pickles can run code)",
            "copy the model directory again from the training run, or retrain",
            f"{TRAINING_GUIDE_DOC} (Artefacts)") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"The weights in {model_dir / MODEL_WEIGHTS_FILE} do not fit the architecture in "
            f"{MODEL_CONFIG_FILE}: {str(exc).splitlines()[0]}", "a partly loaded model would forecast garbage",
            "keep the files of one training run together, or retrain", f"{TRAINING_GUIDE_DOC} (Artefacts)") from exc
    model.to(device)
    model.eval()
    try:
        encoder = ServerEncoder.load(model_dir / SERVER_MAPPING_FILE)
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise ModelLoadError(
            f"{SERVER_MAPPING_FILE} in {model_dir} cannot be used: {str(exc).rstrip('.')}",
            "forecasts are decoded to server names with it",
            "copy the model directory again from the training run, or retrain", f"{TRAINING_GUIDE_DOC} (Artefacts)"
        ) from None
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
