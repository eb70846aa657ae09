"""Small helpers several modules share: logging, atomic writes, time, names.

Nothing domain-specific lives here beyond what more than one module needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from api_keys import client_key
from config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    LOG_FORMAT,
    LOG_LEVEL,
    PROFILE_NAME_DIGITS,
    PROFILE_PREFIXES,
    PROJECT_VERSION,
    SERVER_NAME_MAX_LENGTH,
    SERVER_NAME_PATTERN,
)
from errors import UsageError

# Longest prefix first, so "pprisk" is not mistaken for a shorter prefix.
_PREFIXES_LONGEST_FIRST = sorted(PROFILE_PREFIXES.items(), key=lambda kv: -len(kv[1]))
# Convention names: a profile prefix followed only by digits (ppdb7, ppweb1203).
_CONVENTION = [(profile, re.compile(rf"^{prefix}\d+$")) for profile, prefix in _PREFIXES_LONGEST_FIRST]
_SERVER_NAME = re.compile(SERVER_NAME_PATTERN)


def setup_logging(level: str | int | None = None) -> None:
    """Configure root logging once for command-line entry points."""
    logging.basicConfig(level=level or LOG_LEVEL, format=LOG_FORMAT)


def quiet_library_noise() -> None:
    """Silence known-harmless library chatter so our own progress lines stay readable.

    Only specific, understood messages are filtered; every other warning still shows.
    """
    import warnings

    for pattern in (
        r".*is an instance of `nn.Module` and is already saved during checkpointing.*",  # stock TFT hparams
        r"X has feature names, but StandardScaler was fitted without feature names",  # TimeSeriesDataSet
        r"The given NumPy array is not writable.*",  # pytorch-forecasting encoders
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # lightning/torch version skew
    ):
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's INFO banner (GPU available..., tips); our trainer logs the device itself.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise


# --------------------------------------------------------------------------- names
def profile_from_name(server_name: str) -> str | None:
    """The profile a convention name (``<prefix><digits>``, e.g. ``ppdb007``) carries, else None."""
    for profile, pattern in _CONVENTION:
        if pattern.match(server_name):
            return profile
    return None


def is_valid_server_name(server_name: str) -> bool:
    """True for a contract server name: 1-64 of ``a-z 0-9 . _ -``, starting with a letter or digit."""
    return bool(_SERVER_NAME.match(server_name))


def name_matches_profile(server_name: str, profile: str) -> bool:
    """True unless ``server_name`` is a convention name of another profile (contract 1.2).

    ``ppdb007`` fits only ``database``; a real host name such as ``db-eu-3`` fits any profile
    given explicitly.
    """
    implied = profile_from_name(server_name)
    return implied is None or implied == profile


def host_name_to_server_name(host: str) -> str:
    """A contract server name for a host name as a system reports it (``DB-EU-3.corp`` -> ``db-eu-3.corp``).

    Lower-cases, replaces characters outside the contract's set with ``-`` and trims to the
    contract's length; raises ValueError when nothing usable is left.
    """
    name = re.sub(r"[^a-z0-9._-]", "-", host.strip().lower()).lstrip("._-")[:SERVER_NAME_MAX_LENGTH].rstrip("._-") or ""
    if not is_valid_server_name(name):
        raise ValueError(f"host name {host!r} gives no valid server name; pass one explicitly (--name)")
    return name


def profile_for_host(server_name: str, explicit: str | None, default: str | None = None) -> str | None:
    """A real host's profile: the one given for it, else its convention name's, else ``default``.

    Raises ValueError when an explicit profile contradicts a convention name (``ppdb007`` given
    ``web_api``); returns None when nothing says which role the host has.
    """
    implied = profile_from_name(server_name)
    if explicit and implied and explicit != implied:
        raise ValueError(f"'{server_name}' is a {implied} convention name but is given profile {explicit}; "
                         f"fix one of them (Docs/DATA_CONTRACT.md, Server names)")
    return explicit or implied or default


def make_server_name(profile: str, number: int) -> str:
    """Canonical host name for the ``number``-th server of ``profile`` (1-based)."""
    return f"{PROFILE_PREFIXES[profile]}{number:0{PROFILE_NAME_DIGITS[profile]}d}"


# --------------------------------------------------------------------------- time
def parse_utc(value: str | datetime | pd.Timestamp) -> pd.Timestamp:
    """Parse an ISO 8601 string or datetime as a UTC timestamp (naive means UTC)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def utc_now() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


def isoformat_utc(value: datetime | pd.Timestamp) -> str:
    """ISO 8601 with a ``Z`` suffix, second precision."""
    return parse_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def isoformat_utc_ms(value: datetime | pd.Timestamp) -> str:
    """ISO 8601 with a ``Z`` suffix, millisecond precision (samples taken less than a second apart)."""
    return parse_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_target(path: Path) -> tuple[int, str]:
    """Temp file beside ``path`` with ordinary permissions (mkstemp would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see either the old or the new file, never half."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime, pd.Timestamp)):
        return isoformat_utc(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def to_json(data: Any) -> str:
    """Serialise ``data`` as pretty JSON, converting numpy scalars, paths and datetimes."""
    return json.dumps(data, indent=2, default=_json_default, sort_keys=False) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as JSON."""
    return atomic_write_text(path, to_json(data))


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def atomic_write_parquet(path: str | Path, table: Any, **kwargs: Any) -> Path:
    """Atomically write a ``pyarrow.Table`` (or DataFrame) as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- versions
def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; raises ValueError with a clear message otherwise."""
    parts = version.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"'{version}' is not a MAJOR.MINOR.PATCH version (see VERSION and CHANGELOG.md).")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version_compatibility(required_version: str, current_version: str = PROJECT_VERSION,
                                what: str = "project") -> None:
    """Raise ValueError unless ``current_version`` and ``required_version`` share a MAJOR.

    Semantic versioning: a MAJOR bump marks a breaking change (schema, API, model format),
    so artefacts made under another MAJOR cannot be trusted to load correctly.
    """
    current, required = parse_version(current_version), parse_version(required_version)
    if current[0] != required[0]:
        raise UsageError(
            f"{what} version mismatch: this install is {current_version}, the artefact needs {required_version}",
            "a different MAJOR version means a breaking change (schema, API or model format)",
            f"regenerate or retrain with this version, or install a {required[0]}.x release",
            "CHANGELOG.md and Docs/DATA_CONTRACT.md (Versioning)")


# --------------------------------------------------------------------------- API key
def resolve_api_key(explicit: str | None = None, key_file: Path | None = None, scope: str = "ingest") -> str | None:
    """A client's API key: the argument, else the first key with ``scope`` in a key file (``key_file``,
    else $TFT_API_KEY_FILE), else $TFT_API_KEY.

    One rule for every client of the daemon (stream, collector, Prometheus adapter); a key file may be
    the daemon's own scoped file (api_keys.py) or hold a single bare key.
    """
    if explicit:
        return explicit
    path = key_file or (Path(os.environ[API_KEY_FILE_ENV]) if os.environ.get(API_KEY_FILE_ENV) else None)
    if path is not None:
        return client_key(path, scope)
    return os.environ.get(API_KEY_ENV) or None


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests, benchmarks, the demo)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

