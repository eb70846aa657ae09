"""API keys with scopes: ``ingest`` (feed records), ``read`` (forecasts, status, metrics), ``admin``.

A key file holds one key per line::

    # comments and blank lines are ignored
    ingest=Zp3v...           # a collector's or Prometheus' key: it may feed records, nothing else
    read=Qk81...             # the dashboard's, Prometheus scraping /metrics, a Grafana data source
    read,admin=Wm0c...       # an operator: read everything and use /admin/*
    Hy7e...                  # a bare key holds every scope (the one-key files of earlier versions)

Several keys per scope are normal: add the new key, move the clients over, delete the old line.
The daemon notices the file changed (checked at most every ``KEY_FILE_CHECK_SECONDS``) and
uses the new keys without a restart; a file that no longer parses keeps the previous keys in
force and says why in the log. A key given by ``$TFT_API_KEY`` (or generated at start) holds
every scope.

Keys are compared in constant time: the presented key's SHA-256 is compared with every
configured key's, without stopping at the first match, so neither a key's length nor its
position in the file shows in the response time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from config import API_KEY_MIN_LENGTH, API_REFERENCE_DOC, KEY_FILE_CHECK_SECONDS

logger = logging.getLogger("tft_inference")

SCOPES = ("ingest", "read", "admin")
ALL_SCOPES = frozenset(SCOPES)
_KEY_PATTERN = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces: what fits an HTTP header
_SCOPED_LINE = re.compile(r"[a-z]+(\s*,\s*[a-z]+)*")  # "read" or "read, admin" before the '='



class KeyFileError(ValueError):
    """A key file that cannot be used, with the line and the fix."""


@dataclass(frozen=True)
class KeyRing:
    """The keys in force: (SHA-256 of the key, its scopes)."""

    entries: tuple[tuple[bytes, frozenset[str]], ...]

    @classmethod
    def single(cls, key: str) -> KeyRing:
        """One key with every scope ($TFT_API_KEY, or a key generated at start)."""
        return cls(((_digest(key), ALL_SCOPES),))

    def scopes_of(self, presented: str | None) -> frozenset[str]:
        """The scopes of the presented key (empty when it matches none), in constant time."""
        if not presented:
            return frozenset()
        digest = _digest(presented)
        found: frozenset[str] = frozenset()
        for expected, scopes in self.entries:  # no early exit
            if hmac.compare_digest(digest, expected):
                found = found | scopes
        return found

    def count(self, scope: str) -> int:
        """How many keys hold ``scope``."""
        return sum(scope in scopes for _, scopes in self.entries)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_key_lines(text: str, source: str = "key file") -> list[tuple[str, frozenset[str]]]:
    """``scope[,scope]=key`` or bare ``key`` per line -> (key, scopes); KeyFileError naming the line."""
    entries: list[tuple[str, frozenset[str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = re.split(r"\s+#", line, maxsplit=1)[0].strip()  # an inline comment
        scopes_text, _, key = line.partition("=")
        if _SCOPED_LINE.fullmatch(scopes_text.strip()) and key and not key.startswith("="):
            scopes = frozenset(s.strip() for s in scopes_text.split(","))
            if not scopes <= ALL_SCOPES:
                raise KeyFileError(f"{source} line {number}: unknown scope in '{scopes_text.strip()}'; the scopes "
                                   f"are {', '.join(SCOPES)} (comma-separated before '='). See {API_REFERENCE_DOC} "
                                   f"(Security).")
        else:  # a bare key (base64 keys may end in '=')
            scopes, key = ALL_SCOPES, line
        key = key.strip()
        if not _KEY_PATTERN.fullmatch(key) or len(key) < API_KEY_MIN_LENGTH:
            raise KeyFileError(f"{source} line {number}: a key must be at least {API_KEY_MIN_LENGTH} printable "
                               f"characters without spaces (e.g. python -c 'import secrets; "
                               f"print(secrets.token_urlsafe(24))'). See {API_REFERENCE_DOC} (Security).")
        entries.append((key, scopes))
    if not entries:
        raise KeyFileError(f"{source} holds no key. Put one key per line ('read=KEY', 'ingest=KEY', "
                           f"'admin=KEY', or a bare KEY for every scope). See {API_REFERENCE_DOC} (Security).")
    return entries


def read_key_file(path: Path) -> KeyRing:
    """Parse a key file into a ring (KeyFileError with the reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}. See {API_REFERENCE_DOC} (Security).") from None
    return KeyRing(tuple((_digest(key), scopes) for key, scopes in parse_key_lines(text, str(path))))


def client_key(path: Path, scope: str) -> str:
    """The first key in a key file that holds ``scope`` (what a client picks from a shared file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}. See {API_REFERENCE_DOC} (Security).") from None
    for key, scopes in parse_key_lines(text, str(path)):
        if scope in scopes:
            return key
    raise KeyFileError(f"{path} holds no key with the '{scope}' scope; add a line '{scope}=KEY'. "
                       f"See {API_REFERENCE_DOC} (Security).")


class KeyStore:
    """The daemon's keys: one fixed key, or a key file followed as it changes (thread-safe)."""

    def __init__(self, key: str | None = None, key_file: Path | None = None,
                 check_seconds: float = KEY_FILE_CHECK_SECONDS) -> None:
        self.key_file = key_file
        self.check_seconds = check_seconds
        self.reloads = 0
        self.reload_failures = 0
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()
        self._failed_stamp: tuple[int, int, int] | None = None
        if key_file is not None:
            self._stamp = self._stat()
            self.ring: KeyRing | None = read_key_file(key_file)  # KeyFileError: refuse to start
        else:
            self.ring = KeyRing.single(key) if key else None

    @property
    def enabled(self) -> bool:
        """False only when the daemon runs without any key (every request is let through)."""
        return self.ring is not None

    def scopes_of(self, presented: str | None) -> frozenset[str]:
        """The presented key's scopes (every scope when no key is configured at all)."""
        self._maybe_reload()
        ring = self.ring
        return ALL_SCOPES if ring is None else ring.scopes_of(presented)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.key_file)  # type: ignore[arg-type]
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _maybe_reload(self) -> None:
        if self.key_file is None or time.monotonic() - self._checked < self.check_seconds:
            return
        with self._lock:
            if time.monotonic() - self._checked < self.check_seconds:
                return
            self._checked = time.monotonic()
            stamp = self._stat()
            if stamp == self._stamp or stamp == self._failed_stamp:
                return
            try:
                if stamp is None:
                    raise KeyFileError(f"the key file {self.key_file} is gone")
                ring = read_key_file(self.key_file)
            except KeyFileError as exc:
                self._failed_stamp = stamp
                self.reload_failures += 1
                logger.error("key file changed but was not applied; the previous keys stay in force: %s", exc)
                return
            self.ring, self._stamp, self._failed_stamp = ring, stamp, None
            self.reloads += 1
            logger.info("key file %s reloaded: %s", self.key_file,
                        ", ".join(f"{ring.count(s)} {s}" for s in SCOPES))
