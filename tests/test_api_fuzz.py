"""Schema-driven fuzzing of /sadtalker/v1 (schemathesis over the server's own OpenAPI document): no 5xx.

Slow and optional: `pip install "schemathesis>=4"` (it moves none of the pinned packages), then
`pytest -m slow tests/test_api_fuzz.py`. Random payloads never hold a decodable photo, so nothing renders.
"""

from __future__ import annotations

import base64

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)

from api_server import AUTH, Server  # noqa: E402

pytestmark = pytest.mark.slow


def test_no_server_error_for_any_payload(tmp_path, fake_checkpoints):
    """Every operation of the document, 25 generated requests each (schemathesis's pytest plugin does not run
    under pytest 9, so its strategies drive hypothesis directly)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server = Server(tmp_path, fake_checkpoints, allowed).start()
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        for operation in operations:
            check = settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))(given(case=operation.as_strategy())(_check))
            check()
        assert {200, 422} <= set(STATUSES) and STATUSES.count(401) < len(STATUSES) / 2, sorted(set(STATUSES))
    finally:
        server.stop()


STATUSES: list[int] = []
CREDENTIALS = {"Authorization": "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()}


def _check(case):
    response = case.call(headers=CREDENTIALS, timeout=120)  # over the generated (wrong) Basic header
    STATUSES.append(response.status_code)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}, response.text[:500]
