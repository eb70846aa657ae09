"""Scoped API keys: a key file with ingest / read / admin keys, rotation without a restart (real daemon)."""

from __future__ import annotations

import json

import httpx
import pytest

from api_keys import ALL_SCOPES, KeyFileError, KeyStore, client_key, parse_key_lines
from config import API_KEYS, DAEMON
from metrics_generator import FleetSimulator
from tests.helpers import DaemonProcess, wait_for, wait_until

INGEST = "ingest-key-0000000001"
READ = "read-key-00000000001"
OPERATOR = "operator-key-0000001"
EVERYTHING = "bare-key-000000000001"


def test_key_lines_parse_scopes_comments_and_bare_keys():
    entries = dict((key, scopes) for key, scopes, _ in parse_key_lines(f"""# keys of the staging daemon
ingest={INGEST}
  read = {READ}   # the dashboard
read, admin={OPERATOR}
{EVERYTHING}
dGhpcyBpcyBhIGJhc2U2NCBrZXk=
"""))
    assert entries[INGEST] == {"ingest"} and entries[READ] == {"read"} and entries[OPERATOR] == {"read", "admin"}
    assert entries[EVERYTHING] == ALL_SCOPES
    assert entries["dGhpcyBpcyBhIGJhc2U2NCBrZXk="] == ALL_SCOPES  # a base64 key's '=' is not a scope separator
    for text, message in ((f"reed={READ}", "unknown scope"), ("read=short", "at least"), ("# nothing\n\n", "no key"),
                          (f"read={READ} extra", "unknown option"), (f"INGEST={INGEST}", "neither"),
                          (f"ingest:{INGEST}", "neither"), (f"Read = {READ}", "neither"),
                          (f"read={READ} servers=ppdb*", "binds an ingest key"),
                          (f"ingest={INGEST} servers=", "unknown")):
        with pytest.raises(KeyFileError, match=message):
            parse_key_lines(text)


def test_ingest_keys_bound_to_server_patterns():
    ring_text = f"ingest={INGEST} servers=ppdb*,ppweb01?\n{EVERYTHING}\n"
    store = KeyStore(key_file=None)
    from api_keys import KeyRing, _digest

    store.ring = KeyRing(tuple((_digest(k), s, p) for k, s, p in parse_key_lines(ring_text)))
    bound, free = store.grant(INGEST), store.grant(EVERYTHING)
    assert bound.scopes == {"ingest"} and bound.servers == ("ppdb*", "ppweb01?") and len(bound.key_id) == 12
    assert bound.may_feed("ppdb007") and bound.may_feed("ppweb013") and not bound.may_feed("ppweb1000")
    assert not bound.may_feed("ppml001") and free.may_feed("ppml001") and free.servers is None
    assert INGEST not in bound.key_id and bound.key_id != free.key_id
    assert store.grant("nope-not-a-key-000").scopes == frozenset()


def test_key_store_scopes_and_reload(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"ingest={INGEST}\nread={READ}\n")
    store = KeyStore(key_file=path, check_seconds=0.0)
    assert store.scopes_of(INGEST) == {"ingest"} and store.scopes_of(READ) == {"read"}
    assert store.scopes_of("ingest-key-0000000002") == frozenset() and store.scopes_of(None) == frozenset()
    path.write_text(f"read={READ}\nadmin={OPERATOR}\n")  # rotate: the ingest key goes, an admin key comes
    assert store.scopes_of(INGEST) == frozenset() and store.scopes_of(OPERATOR) == {"admin"}
    assert client_key(path, "admin") == OPERATOR
    with pytest.raises(KeyFileError, match="'ingest' scope"):
        client_key(path, "ingest")
    path.write_text("read=short\n")  # a broken edit keeps the keys in force
    assert store.scopes_of(READ) == {"read"} and store.reload_failures == 1
    assert KeyStore().scopes_of(None) == ALL_SCOPES  # no keys at all: the daemon is open
    assert KeyStore(key="single-key-00000001").scopes_of("single-key-00000001") == ALL_SCOPES


def test_scoped_keys_over_http_and_rotation(tiny_training, tmp_path):
    """Each key reaches what its scopes allow (401 unknown, 403 wrong scope); a rotated file applies live."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    keys = tmp_path / "keys"
    keys.write_text(f"ingest={INGEST}\nread={READ}\nread,admin={OPERATOR}\n")
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--api-key-file", str(keys),
                           "--rate-per-minute", "100000", env_key="ignored-when-a-file-is-given-0")
    try:
        daemon.wait_ready()
        sim = FleetSimulator(fleet={"web_api": 1}, seed=3, start="2026-03-02T00:00:00Z")
        body = {"records": sim.records(sim.advance(1))}

        def status(key: str | None, method: str, path: str) -> int:
            with daemon.client(key) as client:
                return client.request(method, path, json=body if path == "/feed" else None).status_code

        assert status(INGEST, "POST", "/feed") == 200
        assert status(INGEST, "GET", "/status") == 403
        forbidden = httpx.get(f"{daemon.url}/status", headers={"X-API-Key": INGEST}).json()
        assert forbidden["error"] == "forbidden" and "'read'" in forbidden["detail"] and "ingest" in forbidden["detail"]
        assert status(READ, "GET", "/status") == 200 and status(READ, "GET", "/metrics") == 200
        assert status(READ, "POST", "/feed") == 403 and status(READ, "POST", "/admin/reload-model") == 403
        assert status(OPERATOR, "POST", "/admin/reload-model") == 200
        assert status("ignored-when-a-file-is-given-0", "GET", "/status") == 401  # $TFT_API_KEY loses to the file
        assert status(None, "GET", "/status") == 401
        # Bearer works like X-API-Key (what Prometheus sends from a credentials file).
        assert httpx.get(f"{daemon.url}/status", headers={"Authorization": f"Bearer {READ}"}).status_code == 200

        url = f"ws://127.0.0.1:{daemon.port}/ws/predictions"
        with connect(url, additional_headers={"X-API-Key": INGEST}) as ws, pytest.raises(ConnectionClosedError) as c:
            ws.recv(timeout=5)  # an ingest key does not read the stream
        assert c.value.rcvd.code == DAEMON.ws_unauthorized_code
        with connect(url) as ws:
            ws.send(json.dumps({"api_key": READ}))
            try:  # authenticated: the current cycle comes, or (no cycle yet) the connection just stays open
                assert "prediction_time" in json.loads(ws.recv(timeout=2))
            except TimeoutError:
                pass

        # Rotation: a new read key replaces the old one, without a restart.
        new_read = "read-key-00000000002"
        keys.write_text(f"ingest={INGEST}\nread={new_read}\nread,admin={OPERATOR}\n")
        wait_for(lambda: status(READ, "GET", "/status") == 401, timeout=API_KEYS.key_file_check_seconds * 5)
        assert status(new_read, "GET", "/status") == 200
        keys.write_text("read=oops\n")  # a broken edit: the keys in force stay, the log says why
        # The file is looked at on a key lookup (at most every API_KEYS.key_file_check_seconds): each poll is a request.
        wait_until(lambda: status(new_read, "GET", "/status") == 200
                   and "previous keys stay in force" in daemon.log.read_text(),
                   timeout=API_KEYS.key_file_check_seconds * 5, what="the broken key file to be read and refused")
        assert status(new_read, "GET", "/status") == 200
        assert "previous keys stay in force" in daemon.log.read_text()
        assert new_read not in daemon.log.read_text() and OPERATOR not in daemon.log.read_text()
    finally:
        daemon.stop()


def test_a_bad_key_file_refuses_start_without_a_traceback(tiny_training, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("writer=abcdefghijklmnopqrstu\n")
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path / "store.sqlite3", "--api-key-file", str(keys))
    assert daemon.proc.wait(60) == 2
    log = daemon.log.read_text()
    assert "unknown scope in 'writer'" in log and "Traceback" not in log
