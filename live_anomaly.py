"""Anomalous now: how far the present lies outside the band the model drew for it 30 min and 1 h ago.

Each cycle :meth:`live_accuracy.LiveAccuracy.collect` gathers the forecasts whose target bucket has
just completed, with the bands as they were served (calibrated) and the actuals in display units.
For the target that is the cycle's own origin, and the horizons in ``ANOMALY_HORIZONS``, it hands
them to :meth:`AnomalyBoard.publish`, which scores every server x metric x horizon::

    score      = |actual - p50| / max(half_width, ANOMALY.min_half_width[metric])
    half_width = p90 - p50 when actual >= p50, else p50 - p10

1 is the band's edge, 3 is three half-widths beyond p50. The floor keeps a needle-thin band (an idle
VM's 0 MB/s, swap at exactly 0) finite: there a move of one floor (one percent point, 10 KB/s, a
load of 0.1, one socket) from p50 scores 1, and a band thinner than the floor is read as that wide.
A side clipped at its metric's range (p10 at 0 %) cannot be passed, so it never scores above 1.

It is a model surprise, not a tier breach: risk alerts look ahead at the tiers; a score above 1 says
the present already left what the model expected, whatever the level.

The board holds one origin only (the last cycle's), for the servers live accuracy scores (tracked,
established for ``--established-hours``, with a sample in the target bucket and at the forecast's
origin), so it is bounded by the tracked servers x metrics x horizons; a server that goes quiet or
stops being scored is gone at the next cycle, a released one at once (:meth:`AnomalyBoard.forget`).
Served by ``GET /anomalies`` and the ``tft_anomaly_score`` gauge (Docs/API_REFERENCE.md, "Anomalous now").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from api_models import AnomaliesResponse, AnomalyRow
from config import ANOMALY, ANOMALY_HORIZONS, HORIZONS
from contract import bucket_iso
from scoring import Matured

HORIZON_LABELS = list(HORIZONS)
DIGITS = 3  # scores, actuals and bands are rounded to this many decimals for the API


def half_width_floor(metrics: list[str]) -> np.ndarray:
    """(metrics,) the smallest half-width a score divides by, in each metric's display units."""
    return np.array([ANOMALY.min_half_width.get(m, ANOMALY.min_half_width_default) for m in metrics])


def anomaly_scores(actual: np.ndarray, bands: np.ndarray, metrics: list[str]) -> np.ndarray:
    """``actual`` (N, metrics) and served ``bands`` (N, metrics, 3: p10, p50, p90) -> scores (N, metrics).

    ``|actual - p50|`` over the half-width on the actual's side (p90 - p50 at or above p50, p50 - p10
    below), the half-width at least :func:`half_width_floor`. A NaN anywhere in a band or actual gives NaN
    (not scored).
    """
    q = bands.astype(np.float64)
    y = actual.astype(np.float64)
    half = np.where(y >= q[..., 1], q[..., 2] - q[..., 1], q[..., 1] - q[..., 0])
    score = np.abs(y - q[..., 1]) / np.maximum(half, half_width_floor(metrics))
    return np.where(np.isfinite(q).all(axis=-1) & np.isfinite(y), score, np.nan)  # a broken band scores nothing


@dataclass(frozen=True)
class AnomalySnapshot:
    """The scores of one target bucket: every array's first axis is ``servers`` (sorted by name)."""

    target: int | None
    servers: list[str]
    profiles: list[str]
    scores: np.ndarray  # (N, metrics, horizons) float64, NaN where not scored
    actual: np.ndarray  # (N, metrics) display units
    bands: np.ndarray  # (N, metrics, horizons, 3) the served p10 / p50 / p90
    index: dict[str, int]  # server -> row


class AnomalyBoard:
    """The latest anomaly scores per server x metric x horizon (one target bucket), bounded by the fleet.

    The cycle thread publishes a new snapshot, housekeeping forgets released servers, request threads
    read: a snapshot is never changed once made, so a reader needs no lock.
    """

    def __init__(self, metrics: list[str], horizons: Iterable[str] = ANOMALY_HORIZONS) -> None:
        self.metrics = list(metrics)
        self.horizons = [h for h in HORIZON_LABELS if h in set(horizons)]  # in HORIZONS' order
        self._write = threading.Lock()
        self.snapshot = self._empty(None)

    def _empty(self, target: int | None) -> AnomalySnapshot:
        m, h = len(self.metrics), len(self.horizons)
        return AnomalySnapshot(target, [], [], np.empty((0, m, h)), np.empty((0, m)), np.empty((0, m, h, 3)), {})

    def publish(self, target: int, matured: Iterable[Matured]) -> None:
        """Score the forecasts that came due at ``target`` (other targets and horizons are ignored)."""
        blocks = [m for m in matured if m.target == target and m.actual is not None and m.bands is not None
                  and HORIZON_LABELS[m.horizon] in self.horizons]
        servers = sorted({name for m in blocks for name in m.servers})
        if not servers:
            with self._write:
                self.snapshot = self._empty(target)
            return
        row = {name: i for i, name in enumerate(servers)}
        n, m_count, h_count = len(servers), len(self.metrics), len(self.horizons)
        scores = np.full((n, m_count, h_count), np.nan)
        actual = np.full((n, m_count), np.nan)
        bands = np.full((n, m_count, h_count, 3), np.nan)
        profiles = [""] * n
        for block in blocks:
            h = self.horizons.index(HORIZON_LABELS[block.horizon])
            rows = np.array([row[name] for name in block.servers])
            scores[rows, :, h] = anomaly_scores(block.actual, block.bands, self.metrics)
            actual[rows] = block.actual
            bands[rows, :, h] = block.bands
            for name, profile in zip(block.servers, block.profiles, strict=True):
                profiles[row[name]] = profile
        with self._write:
            self.snapshot = AnomalySnapshot(target, servers, profiles, scores, actual, bands, row)

    def forget(self, servers: Iterable[str]) -> None:
        """Drop released servers now (the next cycle would not score them either)."""
        gone = set(servers)
        with self._write:
            old = self.snapshot
            keep = [i for i, name in enumerate(old.servers) if name not in gone]
            if len(keep) == len(old.servers):
                return
            names = [old.servers[i] for i in keep]
            self.snapshot = AnomalySnapshot(old.target, names, [old.profiles[i] for i in keep], old.scores[keep],
                                            old.actual[keep], old.bands[keep], {n: i for i, n in enumerate(names)})

    # ------------------------------------------------------------------ reading
    def samples(self) -> Iterator[tuple[str, str, str, str, float]]:
        """(server, profile, metric, horizon, score) of every score, for the gauge."""
        snap = self.snapshot
        for i, j, h in zip(*np.nonzero(np.isfinite(snap.scores)), strict=True):
            yield snap.servers[i], snap.profiles[i], self.metrics[j], self.horizons[h], float(snap.scores[i, j, h])

    def rows(self, server: str | None = None, metric: str | None = None, horizon: str | None = None,
             min_score: float = 0.0, limit: int = ANOMALY.max_rows,
             snapshot: AnomalySnapshot | None = None) -> tuple[list[AnomalyRow], int]:
        """The scores matching the filters, highest first (ties by server, metric, horizon), at most ``limit``;
        and how many matched in all. ``snapshot``: the one to read (default: the latest)."""
        snap = snapshot if snapshot is not None else self.snapshot
        if server is not None:  # one row of the arrays, not a mask over the fleet (GET /predictions/{server})
            at = snap.index.get(server)
            servers = np.array([] if at is None else [at], dtype=np.int64)
        else:
            servers = np.arange(len(snap.servers))
        scores = snap.scores[servers]
        with np.errstate(invalid="ignore"):  # NaN (not scored) compares False
            mask = np.isfinite(scores) & (scores >= min_score)
        if metric is not None:
            mask &= (np.array(self.metrics) == metric)[None, :, None]
        if horizon is not None:
            mask &= (np.array(self.horizons) == horizon)[None, None, :]
        rows, metrics, horizons = np.nonzero(mask)  # row-major: server name, metric, horizon order
        values = scores[rows, metrics, horizons]
        out = []
        for k in np.argsort(-values, kind="stable")[:limit]:
            i, j, h = servers[rows[k]], metrics[k], horizons[k]
            label = self.horizons[h]
            p10, p50, p90 = (round(float(v), DIGITS) for v in snap.bands[i, j, h])
            actual = float(snap.actual[i, j])
            out.append(AnomalyRow(
                server_name=snap.servers[i], profile=snap.profiles[i], metric=self.metrics[j], horizon=label,
                score=round(float(values[k]), DIGITS), side="above" if actual >= snap.bands[i, j, h, 1] else "below",
                actual=round(actual, DIGITS), p10=p10, p50=p50, p90=p90,
                forecast_made_at=bucket_iso((snap.target or 0) - HORIZONS[label])))
        return out, int(values.size)

    def document(self, model_version: str | None, server: str | None = None, metric: str | None = None,
                 horizon: str | None = None, min_score: float = 0.0) -> AnomaliesResponse:
        """GET /anomalies."""
        snap = self.snapshot  # one snapshot for the whole answer (a cycle may publish meanwhile)
        rows, matching = self.rows(server, metric, horizon, min_score, snapshot=snap)
        return AnomaliesResponse(
            model_version=model_version, at=bucket_iso(snap.target) if snap.target is not None else None,
            horizons=self.horizons, min_half_width=dict(zip(self.metrics, half_width_floor(self.metrics).tolist(),
                                                            strict=True)),
            servers_scored=len(snap.servers), matching=matching, anomalies=rows)


def empty_document(horizons: Iterable[str] = ANOMALY_HORIZONS) -> AnomaliesResponse:
    """GET /anomalies without a model (nothing is scored)."""
    return AnomaliesResponse(model_version=None, at=None, horizons=[h for h in HORIZON_LABELS if h in set(horizons)],
                             min_half_width={}, servers_scored=0, matching=0, anomalies=[])
