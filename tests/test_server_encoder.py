"""Hash-based server ids: determinism, order independence, collisions, persistence."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import SERVER_ID_HEX_CHARS
from server_encoder import ServerEncoder, UnknownServerIdError, hash_server_name

names = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=40, unique=True)


@given(names)
def test_round_trip_and_sha256_ids(server_names):
    encoder = ServerEncoder()
    mapping = encoder.encode_many(server_names)
    for name, server_id in mapping.items():
        assert encoder.decode(server_id) == name
        assert len(server_id) == SERVER_ID_HEX_CHARS
        assert server_id == hashlib.sha256(name.encode()).hexdigest()[:SERVER_ID_HEX_CHARS]


@given(names, st.randoms(use_true_random=False))
def test_ids_do_not_depend_on_order_or_on_other_servers(server_names, rnd):
    shuffled = list(server_names)
    rnd.shuffle(shuffled)
    a = ServerEncoder().encode_many(server_names)
    b = ServerEncoder().encode_many(shuffled)
    assert a == b
    alone = ServerEncoder()
    assert alone.encode(server_names[0]) == a[server_names[0]]


@settings(max_examples=50)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=8, max_size=16, unique=True),
       st.randoms(use_true_random=False))
def test_collisions_are_resolved_deterministically(server_names, rnd):
    # One hex digit leaves 16 ids, so 8-16 names almost always collide.
    encoder = ServerEncoder(id_length=1)
    shuffled = list(server_names)
    rnd.shuffle(shuffled)
    first = encoder.encode_many(server_names)
    second = ServerEncoder(id_length=1).encode_many(shuffled)
    assert first == second  # same set of names -> same assignment, whatever the order
    assert len(set(first.values())) == len(first)  # unique ids
    # Every name that did not get its plain hash is recorded, never silent.
    salted = {n for n, i in first.items() if i != hash_server_name(n, 0, 1)}
    assert {c["name"] for c in encoder.collisions} == salted
    if len({hash_server_name(n, 0, 1) for n in server_names}) < len(server_names):
        assert salted
    for name, server_id in first.items():
        assert encoder.decode(server_id) == name


def test_collision_is_logged(caplog):
    encoder = ServerEncoder(id_length=1)
    with caplog.at_level("WARNING"):
        encoder.encode_many([f"ppgen{i:03d}" for i in range(12)])
    assert "server id collision" in caplog.text


def test_existing_assignments_survive_new_servers(tmp_path):
    encoder = ServerEncoder(id_length=2)
    before = encoder.encode_many([f"ppweb{i:03d}" for i in range(40)])
    encoder.save(tmp_path)
    reloaded = ServerEncoder.load(tmp_path)
    reloaded.encode_many([f"ppdb{i:03d}" for i in range(40)])
    assert reloaded.collisions
    assert {n: reloaded.name_to_id[n] for n in before} == before


def test_unknown_id_raises_clear_error():
    encoder = ServerEncoder()
    encoder.encode("ppdb001")
    with pytest.raises(UnknownServerIdError, match=r"Unknown server id 'deadbeef'.*Fix:.*server_mapping.json"):
        encoder.decode("deadbeef")


def test_save_load_and_tamper_detection(tmp_path):
    encoder = ServerEncoder()
    encoder.encode_many(["ppdb001", "ppweb001", "ppml0001"])
    path = encoder.save(tmp_path)
    loaded = ServerEncoder.load(path)
    assert loaded.name_to_id == encoder.name_to_id
    data = json.loads(path.read_text())
    data["servers"]["ppdb001"] = hash_server_name("ppweb002")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a sha256 id of that name"):
        ServerEncoder.load(path)
    with pytest.raises(FileNotFoundError, match="server_mapping.json not found.*Fix:"):
        ServerEncoder.load(tmp_path / "missing")
