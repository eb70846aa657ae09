"""Which daemon owns which server: the hash a router computes (Docs/SCALING.md).

A daemon started with ``--shard K/N`` owns the servers whose shard key falls in slice K of N
(K in 0..N-1). The hash is the router's own ``hashmod`` relabel action, so a ``remote_write`` block
with ``hashmod`` + ``keep`` routes each host to the daemon that owns it, and ``feed_client`` / the
collector route direct ``POST /feed`` batches with this very function. Routers differ in the hash:

    prometheus (Prometheus, Grafana Agent):  uint64 of the last 8 bytes of md5(value), big-endian, mod N
    vmagent (VictoriaMetrics):               xxHash64(value, seed 0) mod N

(``--shard-hash``; every shard and every direct feeder of one fleet must use the same.)

The **shard key** of a server is the value the router hashes: its Prometheus ``instance`` label
where a record comes with one (remote-write and OTLP always; a feed batch's ``instances`` map), else
its server name. ``tests/test_scaling.py`` checks both against Debian's Prometheus and vmagent routing
real node_exporters. xxHash64 is written out here (a few lines of the published algorithm) rather than
adding a compiled dependency to the image for one function; the test holds it to vmagent's result.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config import RISK_HORIZONS, SCALING_DOC, SHARD_HASH

_MASK = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def xxhash64(data: bytes, seed: int = 0) -> int:
    """xxHash64 of ``data`` (Yann Collet's XXH64, as VictoriaMetrics' relabelling uses it with seed 0)."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _MASK, (seed + _P2) & _MASK, seed & _MASK, (seed - _P1) & _MASK]
        while i + 32 <= n:
            for lane in range(4):
                v[lane] = _round(v[lane], int.from_bytes(data[i + 8 * lane:i + 8 * lane + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _MASK
        for lane in v:
            h = (((h ^ _round(0, lane)) * _P1) + _P4) & _MASK
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while i + 8 <= n:
        h = ((_rotl(h ^ _round(0, int.from_bytes(data[i:i + 8], "little")), 27) * _P1) + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        h = ((_rotl(h ^ ((int.from_bytes(data[i:i + 4], "little") * _P1) & _MASK), 23) * _P2) + _P3) & _MASK
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * _P5) & _MASK), 11) * _P1) & _MASK
        i += 1
    h = ((h ^ (h >> 33)) * _P2) & _MASK
    h = ((h ^ (h >> 29)) * _P3) & _MASK
    return h ^ (h >> 32)


def _md5_hashmod(data: bytes) -> int:
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[8:], "big")


HASHES: dict[str, Callable[[bytes], int]] = {"prometheus": _md5_hashmod, "vmagent": xxhash64}


def shard_of(key: str, count: int, hash_name: str = SHARD_HASH) -> int:
    """The slice (0..count-1) the router's ``hashmod`` with modulus ``count`` gives ``key``."""
    if count < 1:
        raise ValueError(f"a shard count is at least 1, got {count}")
    return HASHES[hash_name](key.encode("utf-8")) % count


def shard_key(server_name: str, instance: str | None = None) -> str:
    """What a router hashes for this server: its instance label where it has one, else its name."""
    return instance or server_name


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (``--shard K/N``)."""

    index: int
    count: int
    hash_name: str = SHARD_HASH  # whose hashmod routes the fleet: a key of HASHES

    def __post_init__(self) -> None:
        if self.hash_name not in HASHES:
            raise ValueError(f"--shard-hash is one of {', '.join(HASHES)}, got {self.hash_name!r}")
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is K/N with N >= 1 and 0 <= K < N (as Prometheus' hashmod numbers its "
                             f"results), got {self.index}/{self.count}; see {SCALING_DOC}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owner(self, key: str) -> int:
        """The slice that owns ``key`` in this shard's partition."""
        return shard_of(key, self.count, self.hash_name)

    def owns(self, key: str) -> bool:
        """Whether ``key`` falls in this slice."""
        return self.count == 1 or shard_of(key, self.count, self.hash_name) == self.index


def parse_shard(text: str) -> Shard:
    """``--shard K/N`` -> Shard (argparse type: a bad value exits 2 naming the form)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError("no '/'")
        return Shard(int(index), int(count))
    except ValueError as exc:
        detail = str(exc) if "hashmod" in str(exc) else f"expected K/N such as 0/3, got {text!r}"
        raise argparse.ArgumentTypeError(detail) from None


def open_alert_order(level: str | None, horizon: str | None, minutes_to_breach: float | None,
                     server_name: str | None, metric: str | None) -> tuple[Any, ...]:
    """The order ``/alerts/active`` lists open alerts in, so that shards' alerts merged (daemon_client.FleetClient)
    read as one daemon's:
    critical first, then the shorter horizon, the soonest breach, server and metric."""
    return (level != "critical", RISK_HORIZONS.index(horizon) if horizon in RISK_HORIZONS else len(RISK_HORIZONS),
            minutes_to_breach or 0, server_name or "", metric or "")
