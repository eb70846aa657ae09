"""Live selection: per server, metric and horizon, serve the last value where the model keeps losing to it.

The daemon scores every matured forecast against persistence (``live_accuracy.py``, per server in
hourly bins). For each server x metric x horizon this module keeps one bit: serve the model, or
serve *the last value* in its place (the model's band moved so that its p50 is the value at the
forecast's origin, its width kept). Each series has a starting side and leaves it only on evidence
from the server's last ``LIVE_SELECTION.window_hours`` of matured forecasts:

* a server the model was trained on starts on the model and is served the last value while the
  model's loss (pinball at 0.5) there is significantly *above* persistence's: the Diebold-Mariano
  statistic of the hourly mean loss differences (``scoring.diebold_mariano``, small-sample
  corrected) passes a one-sided test at ``LIVE_SELECTION.level``; once that evidence is gone (the
  model's own forecasts keep being stored and scored), the model is served again;
* a server the model never saw (a fleet on its first day, a new host) starts on the last value and
  is served the model while the model is significantly *better* there;
* and where the model loses to the last value *fleet-wide* (all servers' scores pooled), every server
  starts on the last value; the fleet leaves it once the loss is no longer significant at
  ``LIVE_SELECTION.fleet_release_level`` (a small band against flapping, not a memory).

The level is strict (1 %) because the test is repeated every cycle. On the development days of the
Bitbrains VMs a model trained on them lost nothing measurable to this (Docs/API_REFERENCE.md, "Live
selection"); remembering a per-server flip until the opposite was significant (hysteresis) kept
series on the last value for a day after the model had recovered, and cost up to 2 % of q-risk there.

At least ``LIVE_SELECTION.min_hours`` hours with matured forecasts are needed either way, and the
difference must matter: the mean absolute error per forecast must differ by at least
``LIVE_SELECTION.material_share`` of the metric's q-risk floor (``QRISK_DENOMINATOR_FLOOR``: one
percent point, 10 KB/s, a load of 0.1, one socket). Without it, the hours in which an idle VM's
network sits at 0 MB/s (the last value exact, the model a few KB/s off) would flip a series whose
bursts the model forecasts far better. A server
the model was trained on starts on the model; one it never saw (a fleet on its first day, a new
host) starts on the last value, so what a new server is served is never worse than persistence
until the model has shown on that very server that it does better. The bits live in memory: after
a restart every series starts again from its side. Docs/API_REFERENCE.md ("Live selection").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import numpy as np

from config import HORIZONS, LIVE_SELECTION, QRISK_DENOMINATOR_FLOOR, STEPS_PER_HOUR
from scoring import TERM, diebold_mariano, significantly

logger = logging.getLogger(__name__)

HORIZON_STEPS = np.array(list(HORIZONS.values()), dtype=np.int64)
# Each horizon's length in hourly blocks (at least one): its errors overlap that many blocks.
HORIZON_BLOCKS = np.maximum(1, -(-HORIZON_STEPS // STEPS_PER_HOUR))


def step_horizons(steps: int) -> np.ndarray:
    """For decoder steps 1..steps, the index of the horizon whose selection they follow.

    Steps up to the first horizon follow it, the steps after it up to the second follow the
    second, and so on (30 min: steps 1-6, 1 h: 7-12, 8 h: 13-96), so each served horizon shows
    exactly its own selection.
    """
    return np.minimum(np.searchsorted(HORIZON_STEPS, np.arange(1, steps + 1)), len(HORIZON_STEPS) - 1)


def serve_last_value(band: dict[str, np.ndarray], last: np.ndarray, naive: np.ndarray,
                     low: float, high: float, integer: bool) -> None:
    """Move the (S, D) band of each step flagged in ``naive`` (S, D) so that its p50 is ``last`` (S,), in place.

    The band keeps its width (p10 and p90 move with p50), then is clipped to the metric's range
    (and whole numbers for counts); the order p10 <= p50 <= p90 is kept by construction.
    """
    if not naive.any():
        return
    shift = np.where(naive, last[:, None] - band["p50"], 0.0)
    for q, values in band.items():
        moved = np.clip(values + shift, low, high)
        if integer:
            moved = np.floor(moved) if q == "p10" else np.ceil(moved) if q == "p90" else np.round(moved)
        band[q] = np.where(naive, moved, values)


class LiveSelection:
    """One bit per server x metric x horizon: True where the last value is served instead of the model."""

    def __init__(self, metrics: list[str], known: Iterable[str], enabled: bool = LIVE_SELECTION.enabled) -> None:
        self.metrics = list(metrics)
        self.known = set(known)
        self.enabled = enabled
        self.material = np.array([LIVE_SELECTION.material_share * QRISK_DENOMINATOR_FLOOR.get(m, 1.0)
                                  for m in self.metrics])  # (metrics,) display units
        self.naive: dict[str, np.ndarray] = {}  # server -> (metrics, horizons) bool
        self.fleet_naive = np.zeros((len(self.metrics), len(HORIZONS)), dtype=bool)  # the fleet-wide verdict
        self.switches = {"last_value": 0, "model": 0}  # flips so far, by what is served after them
        self.lock = threading.Lock()

    def start(self, server: str) -> np.ndarray:
        """A server's side before its own evidence: the model where it was trained on the server and the model
        does not lose to the last value fleet-wide, else the last value."""
        if not self.enabled:
            return np.zeros((len(self.metrics), len(HORIZONS)), dtype=bool)
        return self.fleet_naive | (server not in self.known)

    def update(self, server_bins: dict[int, dict[str, np.ndarray]], newest_hour: int,
               servers: Iterable[str], fleet_bins: dict[int, np.ndarray] | None = None) -> None:
        """Re-judge the fleet and ``servers`` from hourly live terms.

        ``server_bins`` (``LiveAccuracy.server_bins``): hour -> server -> sums; ``fleet_bins``: hour ->
        the fleet's sums (``LiveAccuracy.bins`` of the group "all"). Sums are (metrics, horizons,
        terms) with ``scoring.TERMS`` first; blocks are the last ``window_hours`` hours up to
        ``newest_hour``.
        """
        if not self.enabled:
            return
        hours = range(newest_hour - LIVE_SELECTION.window_hours + 1, newest_hour + 1)
        names = sorted(set(servers))
        if fleet_bins is not None and self._judge_fleet(fleet_bins, hours):
            with self.lock:  # judged under the old fleet verdict: back to the new starting side until re-judged
                for name in set(self.naive) - set(names):
                    del self.naive[name]
        if not names:
            return
        shape = (len(self.metrics), len(HORIZONS))
        n = np.zeros((len(names), *shape, len(hours)))
        difference = np.zeros_like(n)
        for b, hour in enumerate(hours):
            by_server = server_bins.get(hour)
            if not by_server:
                continue
            for i, name in enumerate(names):
                sums = by_server.get(name)
                if sums is not None:
                    n[i, :, :, b] = sums[..., TERM["n"]]
                    difference[i, :, :, b] = sums[..., TERM["pinball_50"]] - sums[..., TERM["persistence_pinball_50"]]
        blocks = np.where(n > 0, difference / np.maximum(n, 1.0), np.nan)
        enough = (n > 0).sum(axis=-1) >= LIVE_SELECTION.min_hours
        # the mean absolute-error difference per forecast (pinball at 0.5 is half the absolute error) must
        # matter: a share of the metric's q-risk floor (one percent point, 10 KB/s, a load of 0.1, a socket)
        gap = 2.0 * difference.sum(axis=-1) / np.maximum(n.sum(axis=-1), 1.0)
        enough &= np.abs(gap) >= self.material[None, :, None]
        tests = [diebold_mariano(blocks[:, :, k], int(HORIZON_BLOCKS[k])) for k in range(len(HORIZONS))]
        t = np.stack([statistic for statistic, _ in tests], axis=-1)
        degrees = np.stack([df for _, df in tests], axis=-1)
        worse = enough & significantly(t, degrees, LIVE_SELECTION.level, lower=False)
        better = enough & significantly(t, degrees, LIVE_SELECTION.level, lower=True)
        flipped = {"last_value": 0, "model": 0}
        with self.lock:
            for i, name in enumerate(names):
                before = self.naive.get(name)
                if before is None:
                    before = self.start(name)
                after = np.where(self.start(name), ~better[i], worse[i])  # off its starting side only on evidence
                flips = after != before
                if flips.any():
                    flipped["last_value"] += int((flips & after).sum())
                    flipped["model"] += int((flips & ~after).sum())
                    for m, k in zip(*np.nonzero(flips), strict=True):
                        logger.debug("%s %s at %s: serving %s (model minus last value over %d h: t = %+.1f)", name,
                                     self.metrics[m], list(HORIZONS)[k],
                                     "the last value" if after[m, k] else "the model",
                                     int((n[i, m, k] > 0).sum()), float(t[i, m, k]))
                self.naive[name] = after
            for side, count in flipped.items():
                self.switches[side] += count
            on_last = sum(int(bits.sum()) for bits in self.naive.values())
        if flipped["last_value"] or flipped["model"]:  # one line per cycle with flips; each one at DEBUG
            logger.info("live selection: %d server x metric x horizon series to the last value, %d to the model; "
                        "%d of %d served the last value", flipped["last_value"], flipped["model"], on_last,
                        len(self.naive) * len(self.metrics) * len(HORIZONS))

    def _judge_fleet(self, fleet_bins: dict[int, np.ndarray], hours: range) -> bool:
        """Where the model loses to the last value fleet-wide, every server starts on the last value; changed?

        Pooled over all servers the test has the power a single server's day lacks, and it judges
        the quantity the quality bar does (q-risk of the fleet): a model that loses by a little on
        every server is caught here, not by any one of them. No materiality floor: a forecast that
        cannot beat the last value should not be served as if it could.
        """
        n = np.zeros((len(self.metrics), len(HORIZONS), len(hours)))
        difference = np.zeros_like(n)
        for b, hour in enumerate(hours):
            sums = fleet_bins.get(hour)
            if sums is not None:
                n[:, :, b] = sums[..., TERM["n"]]
                difference[:, :, b] = sums[..., TERM["pinball_50"]] - sums[..., TERM["persistence_pinball_50"]]
        blocks = np.where(n > 0, difference / np.maximum(n, 1.0), np.nan)
        enough = (n > 0).sum(axis=-1) >= LIVE_SELECTION.min_hours
        tests = [diebold_mariano(blocks[:, k], int(HORIZON_BLOCKS[k])) for k in range(len(HORIZONS))]
        worse = enough & np.stack([significantly(t, df, LIVE_SELECTION.level, lower=False) for t, df in tests],
                                  axis=-1)
        # once on the last value, the fleet leaves it only when the evidence has clearly weakened (a statistic
        # hovering at the level would flip every cycle)
        still = enough & np.stack([significantly(t, df, LIVE_SELECTION.fleet_release_level, lower=False)
                                   for t, df in tests], axis=-1)
        worse = worse | (self.fleet_naive & still)
        with self.lock:
            for m, k in zip(*np.nonzero(worse != self.fleet_naive), strict=True):
                logger.info("fleet-wide %s at %s: the model %s the last value; servers start on %s", self.metrics[m],
                            list(HORIZONS)[k], "loses to" if worse[m, k] else "no longer loses to",
                            "the last value" if worse[m, k] else "the model where it was trained on them")
            changed = bool((worse != self.fleet_naive).any())
            self.fleet_naive = worse
        return changed

    def mask(self, names: list[str]) -> np.ndarray:
        """(S, metrics, horizons) bool for ``names``: True where the last value is served."""
        with self.lock:
            return np.stack([self.naive[n] if n in self.naive else self.start(n) for n in names]) if names else \
                np.zeros((0, len(self.metrics), len(HORIZONS)), dtype=bool)

    def forget(self, servers: Iterable[str]) -> None:
        """Drop released servers' bits (they start again from the rule if they come back)."""
        with self.lock:
            for name in servers:
                self.naive.pop(name, None)
