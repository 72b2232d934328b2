"""Schema-driven fuzzing of /sadtalker/v1 (schemathesis over the server's own OpenAPI document): no 5xx.

Slow and optional: `pip install "schemathesis>=4"` (it moves none of the pinned packages), then
`pytest -m slow tests/test_api_fuzz.py`. Random payloads never hold a decodable photo, so nothing renders.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)

from test_api import AUTH, Server  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, fake_checkpoints):
    folder = tmp_path_factory.mktemp("api-fuzz")
    allowed = folder / "allowed"
    allowed.mkdir()
    server = Server(folder, fake_checkpoints, allowed).start()
    try:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    finally:
        server.stop()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_for_any_payload(case):
    response = case.call(auth=AUTH, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        assert set(response.json()["error"]) >= {"code", "message"}
