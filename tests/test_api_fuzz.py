"""Schemathesis fuzzes every operation of the daemon's OpenAPI spec: no input may cause a 5xx.

schemathesis's own pytest plugin does not run under pytest 9, so its schema loader and
Hypothesis strategies are driven directly: one property test per operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from metrics_generator import FleetSimulator
from tests.helpers import API_KEY, TINY_FLEET, DaemonProcess, feed_buckets, wait_for

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def fuzz_daemon(tiny_training, tmp_path_factory):
    daemon = DaemonProcess(tiny_training.model_dir, tmp_path_factory.mktemp("fuzz") / "store.sqlite3",
                           "--rate-per-minute", "1000000", "--rate-burst", "100000")
    daemon.wait_ready()
    with daemon.client() as client:
        feed_buckets(client, FleetSimulator(fleet=TINY_FLEET, seed=8, start="2026-03-02T00:00:00Z"), 26)
        wait_for(lambda: client.get("/status").json()["cycles"] >= 1)
    yield daemon
    daemon.stop()


@pytest.mark.slow
def test_no_input_causes_a_server_error(fuzz_daemon):
    schema = schemathesis.openapi.from_url(f"{fuzz_daemon.url}/openapi.json", headers={"X-API-Key": API_KEY})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /feed", "GET /predictions/current", "GET /predictions/{server_name}", "GET /alerts/active",
        "GET /history/{server_name}", "GET /status", "GET /metrics", "POST /admin/reload-model"}
    seen: dict[str, set[int]] = {}

    def fuzz(operation) -> None:  # noqa: ANN001 - a schemathesis APIOperation
        name = f"{operation.method.upper()} {operation.path}"

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case) -> None:  # noqa: ANN001 - a schemathesis Case
            for headers in ({"X-API-Key": API_KEY}, {}):  # with the key, and as an anonymous client
                response = case.call(base_url=fuzz_daemon.url, headers=headers)
                seen.setdefault(name, set()).add(response.status_code)
                assert response.status_code < 500, \
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"

        call()

    for operation in operations:
        fuzz(operation)
    # The fuzzer reached the endpoints' real logic, not only the auth wall.
    assert any(code in (200, 422) for code in seen["POST /feed"]) and 401 in seen["POST /feed"], seen
