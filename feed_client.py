"""Deliver LINBORG records to the daemon's ``POST /feed``, surviving restarts of the daemon.

Used by the host collector and the Prometheus adapter. Records wait in a bounded buffer
until the daemon has acknowledged them; a failed delivery (daemon down, network error,
rate limit, 5xx) is retried with exponential back-off. The daemon's answer is read record
by record:

- ``stored`` and ``duplicates`` (the daemon already had it: a retried batch) leave the buffer;
- ``rejected`` records can never succeed, so they leave the buffer with a WARNING naming the
  record and the daemon's reason, and are counted;
- a batch the daemon refuses as a whole with a 4xx that retrying cannot fix (400, 415, 422
  without a per-record answer) leaves the buffer too, counted and logged; a 413 halves the
  batch size and tries again; 401/403 (a key being rotated), 408 and 429 are retried;
- a record holding a non-finite number (NaN, Infinity) is never sent: the contract forbids it,
  so it is dropped where it is handed in, counted and logged;
- when the buffer is full the oldest records are dropped, counted and logged.

Nothing leaves the buffer without either an acknowledgement or a log line; ``stats`` holds
the counts (``main.py collect`` prints them when it stops).

The HTTP side (URL, API key, timeout, what counts as an answer) is :class:`daemon_client.DaemonClient`;
this module adds the buffer, the batching and a back-off that never blocks the caller: each
:meth:`DaemonFeed.flush` makes at most one try per batch, and after a failure the next flush waits
out :class:`daemon_client.RetryPolicy`'s delay.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from api_keys import KeyFileError
from common_utils import resolve_api_key
from config import FEED, SHARD_HASH
from daemon_client import NO_RETRY, DaemonClient, DaemonError, FeedResult, RetryPolicy
from sharding import shard_key, shard_of

logger = logging.getLogger(__name__)


@dataclass
class FeedStats:
    """What happened to every record handed to a :class:`DaemonFeed`."""

    queued: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    refused: int = 0  # records of batches refused as a whole (a final 4xx)
    not_finite: int = 0  # records holding NaN / Infinity, dropped before sending
    dropped_buffer_full: int = 0
    failed_posts: int = 0
    last_error: str | None = None
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return asdict(self)


class DaemonFeed:
    """A bounded, retrying sender of records to one daemon.

    ``client`` is the :class:`DaemonClient` to send with (shared, e.g. with a status check), or an
    ``httpx.Client`` to build one on (tests pass a mock transport); by default one is made from
    ``daemon_url``, ``api_key`` and ``timeout``.
    """

    # Until delivered: the wait after the k-th failed flush in a row doubles up to the maximum.
    backoff = RetryPolicy(attempts=None, base_seconds=FEED.retry_base_seconds, max_seconds=FEED.retry_max_seconds)

    def __init__(self, daemon_url: str, api_key: str | None = None, *, max_buffer: int = FEED.buffer_max_records,
                 batch_records: int = FEED.batch_records, timeout: float = FEED.timeout_seconds,
                 client: DaemonClient | httpx.Client | None = None) -> None:
        if isinstance(client, DaemonClient):
            self.client, self._owns_client = client, False
        else:
            self.client = DaemonClient(daemon_url, api_key, timeout=timeout, retry=NO_RETRY, http=client)
            self._owns_client = True
        self.url = self.client.base_url + "/feed"
        self.buffer: deque[dict[str, Any]] = deque()
        self.instances: dict[str, str] = {}  # server -> Prometheus instance, sent with its records when known
        self.max_buffer = max_buffer
        self.batch_records = batch_records
        self.stats = FeedStats()
        self._failures = 0
        self._next_attempt = 0.0

    # ------------------------------------------------------------------ buffer
    def put(self, records: list[dict[str, Any]]) -> None:
        """Queue records for delivery; the oldest are dropped (and logged) if the buffer overflows.

        Records holding a non-finite number are dropped here (counted, logged), never sent.
        """
        self.stats.queued += len(records)
        finite = []
        for record in records:
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                self.stats.not_finite += 1
                logger.warning("not sending the record of %s at %s: %s not a finite number (the contract "
                               "forbids NaN and Infinity)", record.get("server_name", "?"),
                               record.get("timestamp", "?"), ", ".join(bad))
                continue
            finite.append(record)
        self.buffer.extend(finite)
        overflow = len(self.buffer) - self.max_buffer
        if overflow > 0:
            for _ in range(overflow):
                self.buffer.popleft()
            self.stats.dropped_buffer_full += overflow
            logger.warning("feed buffer full (%d records): dropped the %d oldest undelivered records "
                           "(%d dropped so far); is the daemon at %s reachable?", self.max_buffer, overflow,
                           self.stats.dropped_buffer_full, self.url)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the daemon."""
        return len(self.buffer)

    # ------------------------------------------------------------------ delivery
    def flush(self, now: float | None = None) -> bool:
        """Try to deliver everything buffered; True when the buffer is empty afterwards.

        Does nothing while a back-off after a failure is running.
        """
        now = time.monotonic() if now is None else now
        if now < self._next_attempt:
            return not self.buffer
        while self.buffer:
            batch = list(itertools.islice(self.buffer, self.batch_records))  # deque indexing is O(n)
            outcome = self._post(batch)
            if outcome == "smaller":
                continue
            if outcome == "failed":
                self._failures += 1
                self.stats.failed_posts += 1
                delay = self.backoff.delay(self._failures)
                self._next_attempt = time.monotonic() + delay
                logger.warning("could not deliver %d records to %s (%s); %d waiting, retrying in %.0f s",
                               len(batch), self.url, self.stats.last_error, len(self.buffer), delay)
                return False
            for _ in batch:
                self.buffer.popleft()
            if self._failures:
                logger.info("daemon at %s reachable again; delivering %d waiting records", self.url,
                            len(self.buffer) + len(batch))
            self._failures = 0
            self._next_attempt = 0.0
        return True

    def _post(self, batch: list[dict[str, Any]]) -> str:
        """One POST, no retry of its own.

        Returns "settled" when every record of ``batch`` is answered for (stored, duplicate,
        rejected, or refused for good), "smaller" when the batch size was halved after a 413,
        and "failed" when the batch should be tried again later.
        """
        try:
            result = self.client.feed(batch, retry=NO_RETRY, instances=self.instances)
        except DaemonError as exc:
            self.stats.last_error = exc.summary
            if exc.status in (401, 403):
                logger.error("%s", exc)
            if exc.status == 413 and len(batch) > 1:
                self.batch_records = max(1, len(batch) // 2)
                logger.warning("the daemon refused %d records at once as too large; sending batches of %d",
                               len(batch), self.batch_records)
                return "smaller"
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in FEED.retry_client_statuses:
                self.stats.refused += len(batch)
                reason = f"HTTP {exc.status} {exc.error or ''}".strip()
                self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + len(batch)
                logger.warning("the daemon refused a batch of %d records for good (%s); dropped them, as sending "
                               "them again cannot succeed", len(batch), exc.summary)
                return "settled"
            return "failed"
        self._count(result, batch)
        return "settled"

    def _count(self, result: FeedResult, batch: list[dict[str, Any]]) -> None:
        """Add the daemon's answer to the stats; every rejected record gets a WARNING naming it."""
        self.stats.stored += len(result.stored)
        self.stats.duplicates += len(result.duplicates)
        for item in result.rejected:
            self.stats.rejected += 1
            reason = f"{item.get('field')}: {item.get('reason')}"
            self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1
            index = item.get("index")
            record = batch[index] if isinstance(index, int) and 0 <= index < len(batch) else {}
            logger.warning("daemon rejected the record of %s at %s: %s", record.get("server_name", "?"),
                           record.get("timestamp", "?"), reason)

    def close(self, deadline_seconds: float = 0.0) -> int:
        """Keep trying to deliver for up to ``deadline_seconds``; returns the records left undelivered."""
        end = time.monotonic() + deadline_seconds
        while self.buffer:
            self._next_attempt = 0.0
            if self.flush() or time.monotonic() >= end:
                break
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if self.buffer:
            logger.warning("stopping with %d records the daemon at %s has not acknowledged (last error: %s)",
                           len(self.buffer), self.url, self.stats.last_error)
        if self._owns_client:
            self.client.close()
        return len(self.buffer)


class ShardedFeed:
    """Records routed to the shard that owns their server (Docs/SCALING.md): ``shard_urls[K]`` is the daemon
    started with ``--shard K/N``, N the number of URLs.

    Each record goes to the shard Prometheus' ``hashmod`` gives its server's shard key (the instance label
    in ``instances`` where known, else the server name: ``sharding.shard_key``), so a direct feed lands
    where a remote-write route would. Each shard has its own :class:`DaemonFeed`: its buffer, back-off and
    counts; a shard that is down holds only its own records back. The interface is DaemonFeed's.
    """

    def __init__(self, shard_urls: list[str], api_key: str | None = None, hash_name: str = SHARD_HASH,
                 **options: Any) -> None:
        if len(shard_urls) < 2:
            raise ValueError("a sharded feed needs at least two daemon URLs (one per shard, in shard order)")
        self.hash_name = hash_name  # the daemons' --shard-hash
        self.feeds = [DaemonFeed(url, api_key, **options) for url in shard_urls]
        self.instances: dict[str, str] = {}  # server -> Prometheus instance: the shard key, and sent with records
        for feed in self.feeds:
            feed.instances = self.instances
        self.url = ", ".join(feed.url for feed in self.feeds)

    def shard_of(self, server_name: str) -> int:
        """Index of the shard (URL) that owns ``server_name``."""
        return shard_of(shard_key(server_name, self.instances.get(server_name)), len(self.feeds), self.hash_name)

    def put(self, records: list[dict[str, Any]]) -> None:
        """Queue each record on its shard's feed (records without a server name go to shard 0, which rejects
        them as the contract says)."""
        routed: list[list[dict[str, Any]]] = [[] for _ in self.feeds]
        owners: dict[str, int] = {}
        for record in records:
            name = record.get("server_name")
            if not isinstance(name, str):
                routed[0].append(record)
                continue
            if name not in owners:
                owners[name] = self.shard_of(name)
            routed[owners[name]].append(record)
        for feed, batch in zip(self.feeds, routed, strict=True):
            if batch:
                feed.put(batch)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by their shard."""
        return sum(feed.pending for feed in self.feeds)

    @property
    def stats(self) -> FeedStats:
        """The shards' counts added up (each shard's own: ``feeds[K].stats``)."""
        total = FeedStats()
        for feed in self.feeds:
            for name, value in asdict(feed.stats).items():
                if isinstance(value, int):
                    setattr(total, name, getattr(total, name) + value)
            for reason, count in feed.stats.rejected_reasons.items():
                total.rejected_reasons[reason] = total.rejected_reasons.get(reason, 0) + count
            total.last_error = feed.stats.last_error or total.last_error
        return total

    def flush(self, now: float | None = None) -> bool:
        """Flush every shard's feed; True when all are empty."""
        done = [feed.flush(now) for feed in self.feeds]
        return all(done)

    def close(self, deadline_seconds: float = 0.0) -> int:
        """Close every shard's feed within the deadline (shared); the records left undelivered in all."""
        end = time.monotonic() + deadline_seconds
        return sum(feed.close(max(0.0, end - time.monotonic())) for feed in self.feeds)


def open_feed(daemon_url: str | list[str], api_key: str | None = None,
              hash_name: str = SHARD_HASH) -> DaemonFeed | ShardedFeed | None:
    """A feed to ``daemon_url`` (several: one per shard, in shard order, :class:`ShardedFeed`) with the
    client's ingest key (``common_utils.resolve_api_key``), or None after logging why the key file cannot be
    used (a client's start-up error, never a traceback)."""
    urls = [daemon_url] if isinstance(daemon_url, str) else list(daemon_url)
    try:
        key = resolve_api_key(api_key, scope="ingest")
    except KeyFileError as exc:
        logger.error("%s", exc)
        return None
    return DaemonFeed(urls[0], key) if len(urls) == 1 else ShardedFeed(urls, key, hash_name)
