"""Which daemon owns which server: the hash a router computes (Docs/SCALING.md).

A daemon started with ``--shard K/N`` owns the servers whose shard key falls in slice K of N
(K in 0..N-1). The hash is Prometheus' own ``hashmod`` relabel action, so a Prometheus or vmagent
``remote_write`` block with ``hashmod`` + ``keep`` routes each host to the daemon that owns it, and
``feed_client`` / the collector route direct ``POST /feed`` batches with this very function:

    hashmod(value, N) = big-endian uint64 of the last 8 bytes of md5(value)  mod  N

The **shard key** of a server is the value the router hashes: its Prometheus ``instance`` label
where a record comes with one (remote-write and OTLP always; a feed batch's ``instances`` map), else
its server name. ``tests/test_scaling.py`` checks the function against Debian's Prometheus.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass

from config import SCALING_DOC


def shard_of(key: str, count: int) -> int:
    """The slice (0..count-1) Prometheus' ``hashmod`` with modulus ``count`` gives ``key``."""
    if count < 1:
        raise ValueError(f"a shard count is at least 1, got {count}")
    digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % count


def shard_key(server_name: str, instance: str | None = None) -> str:
    """What a router hashes for this server: its instance label where it has one, else its name."""
    return instance or server_name


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (``--shard K/N``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is K/N with N >= 1 and 0 <= K < N (as Prometheus' hashmod numbers its "
                             f"results), got {self.index}/{self.count}; see {SCALING_DOC}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owner(self, key: str) -> int:
        """The slice that owns ``key`` in this shard's partition."""
        return shard_of(key, self.count)

    def owns(self, key: str) -> bool:
        """Whether ``key`` falls in this slice."""
        return self.count == 1 or shard_of(key, self.count) == self.index


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
