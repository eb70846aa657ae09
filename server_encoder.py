"""Stable, hash-based server ids and the ``server_mapping.json`` that decodes them.

A server's id is the first ``SERVER_ID_HEX_CHARS`` hex digits of ``SHA256(name)``. It does
not depend on the order servers were seen or on which other servers exist, so a model
trained on one fleet recognises the same host in another file.

Collisions (two names, one id) are vanishingly rare at 48 bits but are handled, never
silently: the names involved are processed in sorted order and every name after the
first is re-hashed as ``SHA256(name + "#" + salt)`` with the smallest salt that gives a
free id. A mapping that is loaded keeps its assignments, so adding servers never changes
the id of a server that already has one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from common_utils import atomic_write_json, read_json
from config import (
    CONTRACT_VERSION,
    DATA_CONTRACT_DOC,
    SERVER_ID_HASH,
    SERVER_ID_HEX_CHARS,
    SERVER_ID_MAX_SALT,
    SERVER_MAPPING_FILE,
)
from errors import MissingFileError, RuntimeFailure, ToolkitError, UsageError

logger = logging.getLogger(__name__)


class UnknownServerIdError(ToolkitError, KeyError):
    """Raised when an id is not in the mapping (a ``KeyError`` too; ToolkitError's ``str`` does not quote it)."""


def hash_server_name(name: str, salt: int = 0, length: int = SERVER_ID_HEX_CHARS) -> str:
    """Id for ``name``: hex SHA256 prefix, salted (``name#salt``) only to resolve a collision."""
    key = name if salt == 0 else f"{name}#{salt}"
    return hashlib.new(SERVER_ID_HASH, key.encode("utf-8")).hexdigest()[:length]


class ServerEncoder:
    """Two-way mapping between server names and their hash ids."""

    def __init__(self, id_length: int = SERVER_ID_HEX_CHARS) -> None:
        self.id_length = id_length
        self._name_to_id: dict[str, str] = {}
        self._id_to_name: dict[str, str] = {}
        self.collisions: list[dict[str, object]] = []

    # ------------------------------------------------------------------ encoding
    def __len__(self) -> int:
        return len(self._name_to_id)

    def __contains__(self, name: object) -> bool:
        return name in self._name_to_id

    @property
    def name_to_id(self) -> dict[str, str]:
        """Copy of the name -> id mapping."""
        return dict(self._name_to_id)

    def encode(self, name: str) -> str:
        """Id of ``name``, assigning one if the name is new."""
        existing = self._name_to_id.get(name)
        if existing is not None:
            return existing
        for salt in range(SERVER_ID_MAX_SALT + 1):
            candidate = hash_server_name(name, salt, self.id_length)
            owner = self._id_to_name.get(candidate)
            if owner is None:
                break
            if salt == 0:
                logger.warning("server id collision: %s and %s both hash to %s; re-hashing %s with a salt",
                               owner, name, candidate, name)
        else:  # pragma: no cover - needs > SERVER_ID_MAX_SALT consecutive collisions
            raise RuntimeFailure(
                f"Could not find a free id for server '{name}' after {SERVER_ID_MAX_SALT} salts",
                "ids must be unique to keep forecasts apart", "raise SERVER_ID_HEX_CHARS in config.py",
                f"{DATA_CONTRACT_DOC} (Server ids)")
        if salt:
            self.collisions.append({"name": name, "salt": salt, "id": candidate,
                                    "collided_with": self._id_to_name.get(hash_server_name(name, 0, self.id_length))})
        self._name_to_id[name] = candidate
        self._id_to_name[candidate] = name
        return candidate

    def encode_many(self, names: Iterable[str]) -> dict[str, str]:
        """Encode several names; new names are assigned in sorted order (order-independent)."""
        unique = sorted(set(names))
        return {name: self.encode(name) for name in unique}

    def decode(self, server_id: str) -> str:
        """Name for ``server_id``; raises :class:`UnknownServerIdError` for an unknown id."""
        try:
            return self._id_to_name[server_id]
        except KeyError:
            raise UnknownServerIdError(
                f"Unknown server id '{server_id}'",
                f"forecasts must be reported by server name, and this id is not in the mapping ({len(self)} servers "
                f"known)", f"use the {SERVER_MAPPING_FILE} saved with the model or data that produced the id",
                f"{DATA_CONTRACT_DOC} (Server ids)") from None

    def decode_many(self, server_ids: Iterable[str]) -> list[str]:
        """Decode several ids (raises on the first unknown one)."""
        return [self.decode(i) for i in server_ids]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form written to ``server_mapping.json``."""
        return {
            "contract_version": CONTRACT_VERSION,
            "hash": SERVER_ID_HASH,
            "id_hex_chars": self.id_length,
            "servers": dict(sorted(self._name_to_id.items())),
            "collisions": self.collisions,
        }

    def save(self, path: str | Path) -> Path:
        """Atomically write the mapping; ``path`` may be a directory or a file."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / SERVER_MAPPING_FILE
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str = "mapping") -> ServerEncoder:
        """Rebuild an encoder, checking every id really is the hash of its name."""
        if data.get("hash", SERVER_ID_HASH) != SERVER_ID_HASH:
            raise ValueError(
                f"{source} uses hash '{data.get('hash')}', this version uses '{SERVER_ID_HASH}'. "
                f"Fix: regenerate the mapping. See {DATA_CONTRACT_DOC} (Server ids)."
            )
        encoder = cls(id_length=int(data.get("id_hex_chars", SERVER_ID_HEX_CHARS)))
        servers = data.get("servers")
        if not isinstance(servers, dict):
            raise UsageError(
                f"{source} has no 'servers' object", "without it forecasts cannot be decoded to server names",
                "regenerate it with metrics_generator.py or retrain", f"{DATA_CONTRACT_DOC} (Server ids)")
        for name, server_id in servers.items():
            valid = {hash_server_name(name, salt, encoder.id_length) for salt in range(SERVER_ID_MAX_SALT + 1)} \
                if hash_server_name(name, 0, encoder.id_length) != server_id else {server_id}
            if server_id not in valid:
                raise UsageError(
                    f"{source}: id '{server_id}' for '{name}' is not a {SERVER_ID_HASH} id of that name",
                    "the mapping was edited or corrupted, so decoded names could be wrong", "regenerate the mapping",
                    f"{DATA_CONTRACT_DOC} (Server ids)")
            if server_id in encoder._id_to_name:
                raise ValueError(f"{source}: id '{server_id}' is assigned twice. Fix: regenerate the mapping.")
            encoder._name_to_id[name] = server_id
            encoder._id_to_name[server_id] = name
        encoder.collisions = list(data.get("collisions", []))
        return encoder

    @classmethod
    def load(cls, path: str | Path) -> ServerEncoder:
        """Load ``server_mapping.json`` (``path`` may be the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / SERVER_MAPPING_FILE
        if not path.exists():
            raise MissingFileError(
                f"{SERVER_MAPPING_FILE} not found at {path}", "it is required to decode server ids back to names",
                "regenerate the data or retrain the model (both write it)", f"{DATA_CONTRACT_DOC} (Server ids)")
        return cls.from_dict(read_json(path), source=str(path))
