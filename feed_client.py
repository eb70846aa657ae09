"""Deliver LINBORG records to the daemon's ``POST /feed``, surviving restarts of the daemon.

Used by the host collector and the Prometheus adapter. Records wait in a bounded buffer
until the daemon has acknowledged them; a failed delivery (daemon down, network error,
rate limit, 5xx) is retried with exponential back-off. The daemon's answer is read record
by record:

- ``stored`` and ``duplicates`` (the daemon already had it: a retried batch) leave the buffer;
- ``rejected`` records can never succeed, so they leave the buffer with a WARNING naming the
  record and the daemon's reason, and are counted;
- when the buffer is full the oldest records are dropped, counted and logged.

Nothing leaves the buffer without either an acknowledgement or a log line; ``stats`` holds
the counts (``main.py collect`` prints them when it stops).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from config import (
    API_KEY_ENV,
    FEED_BATCH_RECORDS,
    FEED_BUFFER_MAX_RECORDS,
    FEED_RETRY_BASE_SECONDS,
    FEED_RETRY_MAX_SECONDS,
    FEED_TIMEOUT_SECONDS,
)

logger = logging.getLogger(__name__)


@dataclass
class FeedStats:
    """What happened to every record handed to a :class:`DaemonFeed`."""

    queued: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped_buffer_full: int = 0
    failed_posts: int = 0
    last_error: str | None = None
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return asdict(self)


class DaemonFeed:
    """A bounded, retrying sender of records to one daemon."""

    def __init__(self, daemon_url: str, api_key: str | None = None, *, max_buffer: int = FEED_BUFFER_MAX_RECORDS,
                 batch_records: int = FEED_BATCH_RECORDS, timeout: float = FEED_TIMEOUT_SECONDS,
                 client: httpx.Client | None = None) -> None:
        self.url = daemon_url.rstrip("/") + "/feed"
        self.buffer: deque[dict[str, Any]] = deque()
        self.max_buffer = max_buffer
        self.batch_records = batch_records
        self.stats = FeedStats()
        self._failures = 0
        self._next_attempt = 0.0
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = client or httpx.Client(headers=headers, timeout=timeout)

    # ------------------------------------------------------------------ buffer
    def put(self, records: list[dict[str, Any]]) -> None:
        """Queue records for delivery; the oldest are dropped (and logged) if the buffer overflows."""
        self.buffer.extend(records)
        self.stats.queued += len(records)
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
            if not self._post(batch):
                self._failures += 1
                self.stats.failed_posts += 1
                delay = min(FEED_RETRY_MAX_SECONDS, FEED_RETRY_BASE_SECONDS * 2 ** (self._failures - 1))
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

    def _post(self, batch: list[dict[str, Any]]) -> bool:
        """One POST; True when the daemon has answered for every record of ``batch``."""
        try:
            response = self._client.post(self.url, json={"records": batch})
        except httpx.HTTPError as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if response.status_code not in (200, 422):
            detail = response.text[:300]
            self.stats.last_error = f"HTTP {response.status_code}: {detail}"
            if response.status_code in (401, 403):
                logger.error("the daemon refused the API key (%s); set %s or --api-key", detail, API_KEY_ENV)
            return False
        try:
            body = response.json()
            stored, duplicates, rejected = body["stored"], body["duplicates"], body["rejected"]
        except (ValueError, KeyError, TypeError):
            self.stats.last_error = f"HTTP {response.status_code} without a feed answer: {response.text[:200]}"
            return False
        self.stats.stored += len(stored)
        self.stats.duplicates += len(duplicates)
        for item in rejected:
            self.stats.rejected += 1
            reason = f"{item.get('field')}: {item.get('reason')}"
            self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1
            index = item.get("index")
            record = batch[index] if isinstance(index, int) and 0 <= index < len(batch) else {}
            logger.warning("daemon rejected the record of %s at %s: %s", record.get("server_name", "?"),
                           record.get("timestamp", "?"), reason)
        return True

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
        self._client.close()
        return len(self.buffer)
