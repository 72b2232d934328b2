"""The HTTP API against a real server: `python -m sadtalker serve` in a subprocess on 127.0.0.1, httpx as client
(tests/api_server.py).

Fake official checkpoints, a real photo (JPEG), real speech (espeak-ng, 3 frames), the dlib detector, real ffmpeg.
Renders cost seconds per frame, so every clip is 3 frames and the batch, kill and restart story is one job.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pydantic
import pytest

from api_server import (AUTH, DLIB, FRAMES, MAX_BODY_MB, USERS, V1, Server, _assert_video, _job, _wait,  # noqa: F401
                        b64, inputs)  # inputs: a fixture

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake_checkpoints, inputs):
    instance = Server(tmp_path_factory.mktemp("api-server"), fake_checkpoints, inputs["allowed"]).start()
    holder = {"server": instance}
    yield holder
    holder["server"].stop()


# -- tests --------------------------------------------------------------------------------------------------

def test_generate_one_video(server, inputs, tmp_path, days_of_this_run):
    """data: URL image + raw base64 audio -> the MP4 (base64), its saved path under outputs/<date>/, the seed."""
    srv = server["server"]
    with srv.client() as client:
        response = client.post("/generate", json={
            "image": "data:image/jpeg;base64," + b64(inputs["photo"]), "audio": b64(inputs["speech"]),
            "name": "astronaut says hello", "options": {**DLIB, "seed": 5, "pose_style": 3}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 5 and body["frames"] == FRAMES and body["fps"] == 25
    assert body["options"]["pose_style"] == 3 and body["options"]["face_detector"] == "dlib"
    saved = Path(body["path"])
    assert saved.parent.parent == srv.outputs.resolve() and saved.parent.name in days_of_this_run()
    assert saved.name == "astronaut says hello.mp4"
    assert base64.b64decode(body["video"]) == saved.read_bytes()
    _assert_video(saved.read_bytes(), tmp_path)


def test_auth_on_and_off(server, inputs, tmp_path, fake_checkpoints):
    srv = server["server"]
    no_auth = httpx.get(srv.url + V1 + "/version")
    assert no_auth.status_code == 401 and no_auth.headers["www-authenticate"].startswith("Basic")
    assert no_auth.json()["error"]["code"] == "unauthorized"
    assert httpx.get(srv.url + V1 + "/jobs", auth=("alice", "wrong")).status_code == 401
    assert httpx.post(srv.url + V1 + "/jobs", json={}, auth=("mallory", "s3cret")).status_code == 401
    for user, password in USERS.items():
        assert httpx.get(srv.url + V1 + "/version", auth=(user, password)).status_code == 200
    open_server = Server(tmp_path, fake_checkpoints, inputs["allowed"], auth=False).start()
    try:
        answer = httpx.get(open_server.url + V1 + "/version")
        assert answer.status_code == 200 and answer.json()["api"] == "v1"
    finally:
        open_server.stop()


def test_options_models_version(server):
    with server["server"].client() as client:
        options = client.get("/options").json()
        models = client.get("/models").json()
        version = client.get("/version").json()
        schema = httpx.get(server["server"].url + "/openapi.json").json()
    by_name = {o["name"]: o for o in options["options"]}
    assert by_name["pose_style"]["minimum"] == 0 and by_name["pose_style"]["maximum"] == 45
    assert by_name["face_detector"]["choices"] == ["facexlib", "face-alignment", "dlib"]
    assert "none" in options["enhancers"]
    states = {f["name"]: f["state"] for f in models["files"]}
    assert states["SadTalker_V0.0.2_256.safetensors"] == "ok" and states["SadTalker_V0.0.2_512.safetensors"] == "missing"
    assert models["ready"] == {"256": True, "512": False}
    assert str(server["server"].checkpoints) not in str(models)  # no server path outside the outputs
    assert version["api"] == "v1" and version["version"]
    assert version["pydantic"] == pydantic.VERSION  # the server runs in this environment (pydantic 1 or 2)
    assert {f"{V1}/generate", f"{V1}/jobs", f"{V1}/jobs/{{job_id}}"} <= set(schema["paths"])
    # ranges and choices are in the schema, though GenerateOptions is what checks them
    documented = schema["components"]["schemas"]["SadTalkerOptions"]["properties"]
    assert documented["pose_style"]["minimum"] == 0 and documented["pose_style"]["maximum"] == 45
    assert documented["preprocess"]["enum"] == by_name["preprocess"]["choices"]
    assert documented["size"]["enum"] == [256, 512] and documented["size"]["type"] == "integer"


def test_openapi_beside_another_apps_options_model(tmp_path):
    """The WebUI has its own dynamic pydantic model named "Options"; the document must still build."""
    from fastapi import FastAPI
    from pydantic import create_model

    from sadtalker.api import ApiSettings, create_app
    from sadtalker.host import Host

    webui_options = create_model("Options", samples_format=(str, "png"))
    app = create_app(Host(tmp_path / "models", tmp_path / "outputs"), ApiSettings(tmp_path / "data"))
    host_app = FastAPI()

    def set_options(req):
        return None

    set_options.__annotations__["req"] = webui_options  # a real class, not a string (this module's annotations are)

    host_app.post("/sdapi/v1/options")(set_options)
    host_app.include_router(app.state.sadtalker.router)
    paths = host_app.openapi()["paths"]
    assert f"{V1}/generate" in paths and "/sdapi/v1/options" in paths


def _bad_payloads(inputs) -> list[tuple[str, str, str, object, int, str]]:
    """(case, method, route, json body, status, error code)."""
    photo, speech = b64(inputs["photo"]), b64(inputs["speech"])
    ok = {"image": photo, "audio": speech}
    outside = str(inputs["outside"] / "secret.wav")
    cases = [
        ("bad base64", "post", "/generate", {**ok, "image": "this is not base64!"}, 422, "bad_base64"),
        ("data URL without base64", "post", "/generate", {**ok, "image": "data:image/png,abc"}, 422, "bad_base64"),
        # empty is valid base64 of an empty file: named as the command line names an empty file
        ("empty audio", "post", "/generate", {**ok, "audio": ""}, 422, "bad_audio"),
        ("empty image", "post", "/generate", {**ok, "image": "data:image/png;base64,"}, 422, "bad_image"),
        ("image is a number", "post", "/generate", {**ok, "image": 123}, 422, "invalid_request"),
        ("pose_style as text", "post", "/generate", {**ok, "options": {"pose_style": "3"}}, 422, "invalid_request"),
        ("seed not whole", "post", "/generate", {**ok, "options": {"seed": 1.5}}, 422, "invalid_request"),
        ("still as 1", "post", "/generate", {**ok, "options": {"still": 1}}, 422, "invalid_request"),
        # a value out of range is the same error as on the command line and in the UI (GenerateOptions checks it)
        ("pose_style out of range", "post", "/generate", {**ok, "options": {"pose_style": 99}}, 422,
         "invalid_input"),
        ("unknown preprocess", "post", "/generate", {**ok, "options": {"preprocess": "zoom"}}, 422,
         "invalid_input"),
        ("size 384", "post", "/generate", {**ok, "options": {"size": 384}}, 422, "invalid_input"),
        ("size as text", "post", "/generate", {**ok, "options": {"size": "256"}}, 422, "invalid_request"),
        ("yaw out of range", "post", "/generate", {**ok, "options": {"yaw": [0, 900]}}, 422, "invalid_input"),
        ("unknown enhancer", "post", "/generate", {**ok, "options": {"enhancer": "magic"}}, 422, "invalid_input"),
        ("options not an object", "post", "/generate", {**ok, "options": [1, 2]}, 422, "invalid_request"),
        ("unknown option", "post", "/generate", {**ok, "options": {"pose": 1}}, 422, "invalid_request"),
        ("unknown field", "post", "/generate", {**ok, "imagee": photo}, 422, "invalid_request"),
        ("missing image", "post", "/generate", {"audio": speech}, 422, "invalid_request"),
        ("missing audio", "post", "/generate", {"image": photo}, 422, "invalid_request"),
        ("image and image_path", "post", "/generate", {**ok, "image_path": "astronaut.jpg"}, 422,
         "invalid_request"),
        ("empty body", "post", "/generate", None, 422, "invalid_request"),
        ("body is a list", "post", "/jobs", [ok], 422, "invalid_request"),
        ("no items", "post", "/jobs", {"items": []}, 422, "invalid_request"),
        ("items missing", "post", "/jobs", {"image": photo}, 422, "invalid_request"),
        ("item without audio", "post", "/jobs", {"items": [{"image": photo}]}, 422, "invalid_request"),
        ("bad base64 in item 1", "post", "/jobs", {"items": [ok, {**ok, "audio": "%%%"}]}, 422, "bad_base64"),
        ("item option out of range", "post", "/jobs", {"items": [{**ok, "options": {"expression_scale": 9}}]},
         422, "invalid_input"),
        ("file not in allowed folder", "post", "/generate", {"image": photo, "audio_path": "missing.wav"}, 422,
         "file_not_found"),
        ("unknown job", "get", "/jobs/0123456789abcdef", None, 404, "unknown_job"),
        ("cancel unknown job", "delete", "/jobs/0123456789abcdef", None, 404, "unknown_job"),
        ("video of unknown job", "get", "/jobs/0123456789abcdef/items/0/video", None, 404, "unknown_job"),
        ("list limit 0", "get", "/jobs?limit=0", None, 422, "invalid_request"),
    ]
    traversal = [("dot-dot", "../outside/secret.wav"), ("absolute outside", outside),
                 ("symlink escape", "escape.wav"), ("dot-dot inside", "sub/../hello.wav")]
    for label, path in traversal:
        for field_name, body in [
            ("image_path", {"image_path": path, "audio": speech}),
            ("audio_path", {"image": photo, "audio_path": path}),
            ("options.ref_eyeblink", {**ok, "options": {"ref_eyeblink": path}}),
            ("options.ref_pose", {**ok, "options": {"ref_pose": path}}),
        ]:
            cases.append((f"{label} in {field_name}", "post", "/generate", body, 403, "path_outside_allowed"))
            cases.append((f"{label} in items[0].{field_name}", "post", "/jobs", {"items": [body]}, 403,
                          "path_outside_allowed"))
        cases.append((f"{label} in the job's audio_path", "post", "/jobs",
                      {"audio_path": path, "items": [{"image": photo}]}, 403, "path_outside_allowed"))
    return cases


def test_messages_lose_paths_outside_the_outputs_but_keep_slashes_between_words(tmp_path):
    from sadtalker.api.inputs import redact

    said = redact(f"mapping net (crop / extcrop / resize) in /srv/models/m.pth; see {tmp_path}/a.mp4", tmp_path)
    assert said == f"mapping net (crop / extcrop / resize) in m.pth; see {tmp_path}/a.mp4"


def test_malformed_payloads_answer_4xx_and_the_server_keeps_serving(server, inputs):
    srv = server["server"]
    hidden = str(inputs["outside"].parent)
    with srv.client() as client:
        for case, method, route, body, status, code in _bad_payloads(inputs):
            if body is None and method == "post":
                response = client.post(route, content=b"", headers={"content-type": "application/json"})
            elif body is None:
                response = client.request(method, route)
            else:
                response = client.request(method, route, json=body)
            assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
            error = response.json()["error"]
            assert error["code"] == code, f"{case}: {error}"
            assert len(error["message"]) > 10 and hidden not in error["message"], f"{case}: {error}"
            if code == "invalid_input" and "options" in str(body):
                assert "options." in error["message"] and " must be " in error["message"], f"{case}: {error}"
        not_json = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "bad_json"
        oversized = client.post("/generate", json={"image": "A" * (MAX_BODY_MB * 2**20 + 1000), "audio": "AAAA"})
        assert oversized.status_code == 413, oversized.text
        assert oversized.json()["error"]["code"] == "body_too_large" and "MiB" in oversized.json()["error"]["message"]
        traversal = client.post("/generate", json={"image_path": "../outside/secret.wav", "audio": "AAAA"})
        assert "outside" not in traversal.json()["error"]["message"]
        assert client.get("/version").status_code == 200
        assert client.get("/jobs").status_code == 200


def test_cancel_in_the_middle_of_a_job(server, inputs):
    srv = server["server"]
    item = {"audio": b64(inputs["speech"]), "options": {"batch_size": 1}}
    with srv.client() as client:
        created = client.post("/jobs", json={"image": b64(inputs["photo"]), "options": {"face_detector": "dlib"},
                                             "items": [item, item]})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        _wait(client, job_id, lambda j: j["items"][0]["stage"] == "render")
        cancelled = client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["items"][1]["state"] == "cancelled"
        job = _wait(client, job_id, lambda j: j["items"][0]["state"] != "running")
        assert job["state"] == "cancelled"
        assert [i["state"] for i in job["items"]] == ["cancelled", "cancelled"]
        assert job["items"][0]["error"]["code"] == "cancelled" and job["items"][0]["video_url"] is None
        again = client.delete(f"/jobs/{job_id}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"
        no_video = client.get(f"/jobs/{job_id}/items/0/video")
        assert no_video.status_code == 409 and no_video.json()["error"]["code"] == "no_video"
        assert client.get(f"/jobs/{job_id}/items/7/video").status_code == 404


def test_batch_with_a_bad_item_survives_a_killed_server(server, inputs, tmp_path, days_of_this_run):
    """4 items, one without a face: 3 videos and 1 named error, even though the server is SIGKILLed while the
    second item renders. After the restart the finished item is still reported, the interrupted one runs again
    from the start (its record says so), the queued ones complete, and no half-written video is served."""
    srv = server["server"]
    speech = b64(inputs["speech"])
    body = {"image_path": "astronaut.jpg", "options": DLIB, "items": [
        {"audio_path": "hello.wav"},
        {"audio": speech, "name": "second", "options": {"seed": 11}},
        {"audio": speech, "image": b64(inputs["blank"]), "name": "no face"},
        {"audio": speech, "name": "fourth"},
    ]}
    with srv.client() as client:
        created = client.post("/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        before = _wait(client, job_id, lambda j: j["items"][1]["state"] == "running")
    first = before["items"][0]
    assert first["state"] == "done" and first["name"] == "astronaut__hello" and first["runs"] == 1
    srv.kill()
    srv.stop()

    restarted = Server(srv.folder, srv.checkpoints, srv.allowed).start()
    server["server"] = restarted
    with restarted.client() as client:
        after = _job(client, job_id)
        assert after["items"][0] == {**first, "progress": 1.0}  # reported as before the kill
        assert after["items"][1]["state"] in ("queued", "running") and "run again" in after["items"][1]["note"]
        assert client.get(f"/jobs/{job_id}/items/1/video").status_code == 409
        job = _wait(client, job_id, lambda j: j["state"] not in ("queued", "running"))
        assert job["state"] == "done" and job["counts"] == {"queued": 0, "running": 0, "done": 3, "failed": 1,
                                                            "cancelled": 0}
        states = [(i["name"], i["state"]) for i in job["items"]]
        assert states == [("astronaut__hello", "done"), ("second", "done"), ("no face", "failed"),
                          ("fourth", "done")]
        assert job["items"][1]["runs"] == 2 and "from the start" in job["items"][1]["note"]
        assert job["items"][1]["seed"] == 11
        error = job["items"][2]["error"]
        assert error["code"] == "no_face" and error["message"]
        for index in (0, 1, 3):
            video = client.get(f"/jobs/{job_id}/items/{index}/video")
            assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
            _assert_video(video.content, tmp_path, f"{index}.mp4")
        listed = client.get("/jobs").json()["jobs"]
        assert listed[0]["id"] == job_id and listed[0]["state"] == "done"
    leftovers = [p.name for p in restarted.outputs.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    published = sorted(p.name for day in days_of_this_run() for p in (restarted.outputs / day).glob("*.mp4"))
    assert {"astronaut__hello.mp4", "second.mp4", "fourth.mp4"} <= set(published)


def test_serve_on_ray_runs_an_api_job_through_a_ray_worker(tmp_path_factory, fake_checkpoints, inputs, tmp_path):
    """`serve --ray local`: a job's items are rendered by a Ray actor (the video's record names a worker process
    that is not the server), per-item progress shows while it runs, a faceless item gets its named error,
    POST /generate goes through Ray too (its named error crosses back as the same HTTP answer), and cancelling a
    job stops its running item on the worker and writes nothing."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend is optional: pip install 'sd-webui-sadtalker[ray]'")
    srv = Server(tmp_path_factory.mktemp("api-ray"), fake_checkpoints, inputs["allowed"],
                 extra_args=("--ray", "local", "--workers", "1", "--threads", "2")).start()
    try:
        with srv.client() as client:
            created = client.post("/jobs", json={"options": DLIB, "items": [
                {"image_path": "astronaut.jpg", "audio_path": "hello.wav", "name": "on ray"},
                {"image": b64(inputs["blank"]), "audio": b64(inputs["speech"]), "name": "no face"}]})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            running = _wait(client, job_id, lambda j: j["items"][0]["stage"] == "render")
            assert 0.15 <= running["items"][0]["progress"] < 1.0
            job = _wait(client, job_id, lambda j: j["state"] not in ("queued", "running"))
            assert [i["state"] for i in job["items"]] == ["done", "failed"], job
            assert job["items"][1]["error"]["code"] == "no_face"
            saved = Path(job["items"][0]["path"])
            record = json.loads(saved.with_suffix(".json").read_text())
            assert record["batch"] == {"id": job_id, "item": 0}
            worker_pid = int(record["worker"].rsplit(":", 1)[1])
            assert worker_pid != srv.process.pid and worker_pid in _descendants(srv.process.pid)
            video = client.get(f"/jobs/{job_id}/items/0/video")
            assert video.status_code == 200
            _assert_video(video.content, tmp_path)

            refused = client.post("/generate", json={"image": b64(inputs["blank"]), "audio": b64(inputs["speech"]),
                                                     "options": DLIB})
            assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_face", refused.text

            item = {"image_path": "astronaut.jpg", "audio_path": "hello.wav", "name": "cancelled on ray",
                    "options": {"face_detector": "dlib", "batch_size": 1}}
            created = client.post("/jobs", json={"items": [item, item]})
            job_id = created.json()["id"]
            _wait(client, job_id, lambda j: j["items"][0]["stage"] == "render")
            assert client.delete(f"/jobs/{job_id}").status_code == 200  # ray.cancel reaches the running item
            job = _wait(client, job_id, lambda j: j["items"][0]["state"] != "running")
            assert [i["state"] for i in job["items"]] == ["cancelled", "cancelled"], job
        written = sorted(p.name for day in srv.outputs.iterdir() if not day.name.startswith(".")
                         for p in day.iterdir())  # hidden .part files included
        assert written == ["on ray.json", "on ray.mp4"]
        assert "Traceback" not in srv.read_log()
    finally:
        srv.stop()


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Ray's raylet starts the actors' worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found
