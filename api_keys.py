"""API keys with scopes: ``ingest`` (feed records), ``read`` (forecasts, status, metrics), ``admin``.

A key file holds one key per line::

    # comments and blank lines are ignored
    ingest=Zp3v...           # a collector's or Prometheus' key: it may feed records, nothing else
    read=Qk81...             # the dashboard's, Prometheus scraping /metrics, a Grafana data source
    read,admin=Wm0c...       # an operator: read everything and use /admin/*
    ingest=Tq9d... servers=ppdb*,ppweb01?   # a collector bound to the servers it feeds (glob patterns)
    Hy7e...                  # a bare key holds every scope (the one-key files of earlier versions)

A line that is neither (``INGEST=...``, ``ingest:...``, an unknown option) makes the whole file
refused: at start the daemon does not start; on a change the previous keys stay in force.
An ingest key with ``servers=`` may feed only servers whose names match one of its patterns, and a
server first fed by such a bound key is from then on refused to unbound keys (no squatting).

Several keys per scope are normal: add the new key, move the clients over, delete the old line.
The daemon notices the file changed (checked at most every ``API_KEYS.key_file_check_seconds``) and
uses the new keys without a restart; a file that no longer parses keeps the previous keys in
force and says why in the log. A key given by ``$TFT_API_KEY`` (or generated at start) holds
every scope.

Keys are compared in constant time: the presented key's SHA-256 is compared with every
configured key's, without stopping at the first match, so neither a key's length nor its
position in the file shows in the response time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from config import API_KEYS, API_REFERENCE_DOC
from errors import ToolkitError

logger = logging.getLogger(__name__)

SCOPES = ("ingest", "read", "admin")
ALL_SCOPES = frozenset(SCOPES)
_KEY_PATTERN = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces: what fits an HTTP header
_SCOPED_LINE = re.compile(r"[a-z]+(\s*,\s*[a-z]+)*")  # "read" or "read, admin" before the '='
_SCOPE_PREFIX = re.compile(r"^([a-z]+(?:\s*,\s*[a-z]+)*)\s*=\s*")
_LOOKS_SCOPED = re.compile(r"^[A-Za-z][A-Za-z ,]*[=:]")  # "INGEST=..", "ingest:..": a scoped line gone wrong
_SERVER_GLOB = re.compile(r"^[A-Za-z0-9._*?\[\]-]+$")  # a pattern over server names


@dataclass(frozen=True)
class KeyGrant:
    """What one presented key may do: its scopes, the server-name patterns it is bound to (None: any
    server) and its id (a short hash, never the key) that the store records beside what it wrote."""

    scopes: frozenset[str]
    servers: tuple[str, ...] | None = None
    key_id: str = ""

    def may_feed(self, server: str) -> bool:
        """True when this key may write records of ``server`` (bound keys: a pattern matches)."""
        return self.servers is None or any(fnmatch.fnmatchcase(server, p) for p in self.servers)


NO_GRANT = KeyGrant(frozenset())
OPEN_GRANT = KeyGrant(frozenset({"ingest", "read", "admin"}))  # a daemon without any key



class KeyFileError(ToolkitError, ValueError):
    """A key file that cannot be used, with the line and the fix."""


@dataclass(frozen=True)
class KeyRing:
    """The keys in force: (SHA-256 of the key, its scopes)."""

    entries: tuple[tuple[bytes, frozenset[str], tuple[str, ...] | None], ...]

    @classmethod
    def single(cls, key: str) -> KeyRing:
        """One key with every scope ($TFT_API_KEY, or a key generated at start)."""
        return cls(((_digest(key), ALL_SCOPES, None),))

    def grant(self, presented: str | None) -> KeyGrant:
        """What the presented key may do (no scopes when it matches none), in constant time."""
        if not presented:
            return NO_GRANT
        digest = _digest(presented)
        found: frozenset[str] = frozenset()
        patterns: list[str] = []
        unbound = False
        for expected, scopes, servers in self.entries:  # no early exit
            if hmac.compare_digest(digest, expected):
                found = found | scopes
                unbound = unbound or servers is None
                patterns += servers or ()
        if not found:
            return NO_GRANT
        return KeyGrant(found, None if unbound else tuple(patterns), digest.hex()[:12])

    def scopes_of(self, presented: str | None) -> frozenset[str]:
        """The scopes of the presented key (empty when it matches none), in constant time."""
        return self.grant(presented).scopes

    def count(self, scope: str) -> int:
        """How many keys hold ``scope``."""
        return sum(scope in scopes for _, scopes, _ in self.entries)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_key_lines(text: str, source: str = "key file") -> list[tuple[str, frozenset[str], tuple[str, ...] | None]]:
    """``scope[,scope]=key [servers=PATTERNS]`` or a bare ``key`` per line -> (key, scopes, server patterns);
    KeyFileError naming the line."""
    entries: list[tuple[str, frozenset[str], tuple[str, ...] | None]] = []
    fix = f"See {API_REFERENCE_DOC} (Security)."
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = re.split(r"\s+#", line, maxsplit=1)[0].strip()  # an inline comment
        line = _SCOPE_PREFIX.sub(lambda m: re.sub(r"\s", "", m.group(1)) + "=", line)  # "read, admin = K"
        first, *options = line.split()
        scopes_text, _, key = first.partition("=")
        if _SCOPED_LINE.fullmatch(scopes_text) and key and not key.startswith("="):
            scopes = frozenset(s.strip() for s in scopes_text.split(","))
            if not scopes <= ALL_SCOPES:
                raise KeyFileError(f"{source} line {number}: unknown scope in '{scopes_text}'; the scopes are "
                                   f"{', '.join(SCOPES)} (lower case, comma-separated before '='). {fix}")
        elif _LOOKS_SCOPED.match(line) and not (re.fullmatch(r"[A-Za-z0-9_\-]+=*", first)
                                                and not (options and options[0].startswith("="))):
            raise KeyFileError(f"{source} line {number}: '{first.partition('=')[0].partition(':')[0]}...' is "
                               f"neither 'scope=KEY' (scopes {', '.join(SCOPES)}, lower case, then '=') nor a bare "
                               f"key; refusing the file rather than giving this line every scope. {fix}")
        else:  # a bare key (base64 keys may end in '=')
            scopes, key = ALL_SCOPES, first
        servers: tuple[str, ...] | None = None
        for option in options:
            name, _, value = option.partition("=")
            patterns = tuple(p for p in value.split(",") if p)
            if name != "servers" or not patterns or not all(_SERVER_GLOB.fullmatch(p) for p in patterns):
                raise KeyFileError(f"{source} line {number}: unknown option '{option}'; after the key only "
                                   f"'servers=PATTERN[,PATTERN]' may follow (glob patterns over server names, "
                                   f"e.g. servers=ppdb*,ppweb01?). {fix}")
            if scopes != frozenset({"ingest"}):
                raise KeyFileError(f"{source} line {number}: 'servers=' binds an ingest key to the servers it "
                                   f"feeds; give it to an 'ingest=KEY' line only. {fix}")
            servers = patterns
        if not _KEY_PATTERN.fullmatch(key) or len(key) < API_KEYS.min_length:
            raise KeyFileError(f"{source} line {number}: a key must be at least {API_KEYS.min_length} printable "
                               f"characters without spaces (e.g. python -c 'import secrets; "
                               f"print(secrets.token_urlsafe(24))'). {fix}")
        entries.append((key, scopes, servers))
    if not entries:
        raise KeyFileError(f"{source} holds no key. Put one key per line ('read=KEY', 'ingest=KEY', "
                           f"'admin=KEY', or a bare KEY for every scope). {fix}")
    return entries


def read_key_file(path: Path) -> KeyRing:
    """Parse a key file into a ring (KeyFileError with the reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}. See {API_REFERENCE_DOC} (Security).") from None
    return KeyRing(tuple((_digest(key), scopes, servers) for key, scopes, servers in parse_key_lines(text, str(path))))


def client_key(path: Path, scope: str) -> str:
    """The first key in a key file that holds ``scope`` (what a client picks from a shared file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}. See {API_REFERENCE_DOC} (Security).") from None
    for key, scopes, _ in parse_key_lines(text, str(path)):
        if scope in scopes:
            return key
    raise KeyFileError(f"{path} holds no key with the '{scope}' scope; add a line '{scope}=KEY'. "
                       f"See {API_REFERENCE_DOC} (Security).")


class KeyStore:
    """The daemon's keys: one fixed key, or a key file followed as it changes (thread-safe)."""

    def __init__(self, key: str | None = None, key_file: Path | None = None,
                 check_seconds: float = API_KEYS.key_file_check_seconds) -> None:
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
        return self.grant(presented).scopes

    def grant(self, presented: str | None) -> KeyGrant:
        """What the presented key may do (everything when no key is configured at all)."""
        self._maybe_reload()
        ring = self.ring
        return OPEN_GRANT if ring is None else ring.grant(presented)

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
