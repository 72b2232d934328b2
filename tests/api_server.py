"""What the API tests share: the real server (`python -m sadtalker serve` in a subprocess, or the same app in a
uvicorn thread of the test process), its inputs (a JPEG photo, 3 frames of espeak-ng speech) and job polling.

Imported by tests/test_api.py, tests/test_api_load.py, tests/test_bad_input.py and the WebUI and fuzz tests.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from sadtalker import audio as audio_stage
from sadtalker.video import probe

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 3
USERS = {"alice": "s3cret", "bob": "hunter2"}
AUTH = ("alice", "s3cret")
MAX_BODY_MB = 2
V1 = "/sadtalker/v1"
DLIB = {"face_detector": "dlib", "batch_size": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str, process: subprocess.Popen | None = None, log=lambda: "", timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{log()}")
        try:
            httpx.get(url + V1 + "/version", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {timeout:.0f} s:\n{log()}")


class Server:
    """One `python -m sadtalker serve` process."""

    def __init__(self, folder: Path, checkpoints: Path, allowed: Path | None, *, auth: bool = True,
                 download: bool = False, max_body_mb: float = MAX_BODY_MB, data: Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.folder, self.checkpoints, self.allowed, self.auth = folder, checkpoints, allowed, auth
        self.download, self.max_body_mb, self.data = download, max_body_mb, data
        self.extra_args = extra_args  # more `serve` flags (--ray local …)
        self.outputs = folder / "outputs"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Server:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "sadtalker", "serve", "--port", str(port), "--checkpoints",
                   str(self.checkpoints), "--outputs", str(self.outputs), "--max-body-mb", str(self.max_body_mb)]
        if not self.download:
            command.append("--no-download")
        if self.data is not None:
            command += ["--data", str(self.data)]
        if self.allowed is not None:
            command += ["--allow-paths", str(self.allowed)]
        if self.auth:
            command += ["--api-auth", ",".join(f"{u}:{p}" for u, p in USERS.items())]
        command += list(self.extra_args)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.log = open(self.folder / f"server-{port}.log", "wb")
        self.process = subprocess.Popen(command, cwd=self.folder, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        _answers(self.url, self.process, self.read_log)
        return self

    def read_log(self) -> str:
        self.log.flush()
        return (self.folder / Path(self.log.name).name).read_text(errors="replace")[-3000:]

    def client(self, auth=AUTH) -> httpx.Client:
        return httpx.Client(base_url=self.url + V1, auth=auth, timeout=900)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class InProcessServer:
    """The standalone server's app (`create_app`) served by uvicorn on 127.0.0.1 in a thread of this process, so
    that a test can hold the Host's lock and see its progress. No auth."""

    def __init__(self, host, data_dir: Path):
        import uvicorn

        from sadtalker.api import ApiSettings, create_app

        self.host = host
        self.app = create_app(host, ApiSettings(data_dir))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    @property
    def service(self):
        return self.app.state.sadtalker

    def start(self) -> InProcessServer:
        self._thread.start()
        _answers(self.url)
        return self

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + V1, timeout=900)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(60)


# -- inputs -------------------------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Photo (JPEG), a photo without a face, 3 frames of real speech; copies in the server's allowed folder."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (tools/setup-test-env.sh installs it)")
    from PIL import Image
    from skimage import data as skimage_data

    folder = tmp_path_factory.mktemp("api-inputs")
    allowed = folder / "allowed"
    allowed.mkdir()
    photo = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(photo, "JPEG", quality=90)
    blank = io.BytesIO()
    Image.new("RGB", (256, 256), (128, 128, 128)).save(blank, "JPEG")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), "Hello there, talking head."],
                   check=True, capture_output=True)
    wav = audio_stage.load_audio(raw)
    window = FRAMES * audio_stage.SAMPLES_PER_FRAME
    start = int(np.argmax(np.convolve(wav**2, np.ones(window), mode="valid")))
    speech = io.BytesIO()
    soundfile.write(speech, wav[start:start + window], 16000, format="WAV", subtype="PCM_16")
    (allowed / "astronaut.jpg").write_bytes(photo.getvalue())
    (allowed / "hello.wav").write_bytes(speech.getvalue())
    outside = folder / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(speech.getvalue())
    (allowed / "escape.wav").symlink_to(outside / "secret.wav")
    return {"photo": photo.getvalue(), "blank": blank.getvalue(), "speech": speech.getvalue(), "allowed": allowed,
            "outside": outside}


# -- jobs -----------------------------------------------------------------------------------------------------

def _job(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _wait(client: httpx.Client, job_id: str, until, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(client, job_id)
        if until(job):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not get there in {timeout} s: {job}")


def _assert_video(data: bytes, folder: Path, name: str = "check.mp4") -> None:
    path = folder / name
    path.write_bytes(data)
    info = probe(path)
    assert info.video_codec == "h264" and info.frames == FRAMES, info
