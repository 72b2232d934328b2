"""The standalone app (`python -m sadtalker app`) in headless Chromium: real gradio, real server, real renders.

Fake official checkpoints, the dlib detector, 0.12 s of espeak-ng speech (3 frames). One successful render is
shared by the assertions that need a video; the cancel run stops after its first batch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sadtalker import audio as audio_stage

FRAMES = 3
SEED = 7
POSE_STYLE = 3
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A portrait, a photo without a face, and 3 frames of real speech (the loudest stretch of an espeak line)."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("ui_inputs")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "grey.png")
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (tools/setup-test-env.sh installs it)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(folder / "raw.wav"), "Hello there."], check=True,
                   capture_output=True)
    wav = audio_stage.load_audio(folder / "raw.wav")
    window = FRAMES * audio_stage.SAMPLES_PER_FRAME
    start = int(np.argmax(np.convolve(wav**2, np.ones(window), mode="valid")))
    soundfile.write(folder / "speech.wav", wav[start:start + window], audio_stage.SAMPLE_RATE, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def app(fake_checkpoints, tmp_path_factory):
    """The app on a free port; yields (url, outputs folder, log path)."""
    folder = tmp_path_factory.mktemp("ui_app")
    outputs, log_path = folder / "outputs", folder / "app.log"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "sadtalker", "app", "--port", str(port), "--checkpoints",
                                    str(fake_checkpoints), "--outputs", str(outputs), "--no-download"],
                                   cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            if process.poll() is not None:
                pytest.fail("the app exited:\n" + log_path.read_text())
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not answer:\n" + log_path.read_text())
        yield url, outputs, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1800})
        tab.set_default_timeout(300_000)  # a loaded 2-core machine renders slowly
        tab.goto(app[0])
        tab.wait_for_selector("#sadtalker_generate")
        yield tab
        browser.close()


def _upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _pick(page, elem_id: str, choice: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id} li", has_text=choice).first.click()


def _number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def _text(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def _videos(outputs: Path) -> list[Path]:
    return sorted(outputs.rglob("*.mp4"))


def _wait_status(page, startswith: str) -> str:
    page.wait_for_function(
        "prefix => (document.querySelector('#sadtalker_status textarea') || {}).value?.startsWith(prefix)",
        arg=startswith)
    return page.locator("#sadtalker_status textarea").input_value()


def _set_up_run(page, inputs: Path, image: str = "astronaut.png") -> None:
    _upload(page, "sadtalker_image", inputs / image)
    _upload(page, "sadtalker_audio", inputs / "speech.wav")
    page.wait_for_selector("#sadtalker_audio audio[src]", state="attached")
    advanced = page.locator("#sadtalker_advanced")
    if not advanced.locator("#sadtalker_face_detector").is_visible():
        advanced.locator(".label-wrap").first.click()
    _pick(page, "sadtalker_face_detector", "dlib")
    _text(page, "sadtalker_seed", str(SEED))
    _number(page, "sadtalker_pose_style", POSE_STYLE)


@pytest.fixture(scope="module")
def generated(page, app, inputs):
    """One run through the page: its video (as the browser sees it), parameters box and the progress seen."""
    _set_up_run(page, inputs)
    page.click("#sadtalker_generate")
    page.wait_for_selector("text=/render \\d+\\/\\d+/")  # gr.Progress shows the stage and frame count
    status = _wait_status(page, "done")
    duration = page.wait_for_function("""() => {
        const v = document.querySelector('#sadtalker_video video');
        return v && v.readyState >= 1 && v.duration > 0 ? v.duration : null; }""").json_value()
    return {"status": status, "duration": duration,
            "parameters": page.locator("#sadtalker_parameters textarea").input_value(),
            "saved": page.locator("#sadtalker_saved_path textarea").input_value()}


def test_generate_plays_the_video_and_shows_seed_and_path(generated, app):
    _, outputs, _ = app
    assert generated["duration"] == pytest.approx(FRAMES / 25, abs=1 / 25 + 0.03)
    parameters = json.loads(generated["parameters"])
    assert parameters["seed"] == SEED
    assert parameters["options"]["pose_style"] == POSE_STYLE
    assert parameters["options"]["face_detector"] == "dlib"
    saved = Path(generated["saved"])
    assert saved.is_file() and saved.parent.parent == outputs and saved.with_suffix(".json").is_file()
    assert f"seed {SEED}" in generated["status"] and f"{FRAMES} frames" in generated["status"]


def test_cancel_stops_the_run_and_leaves_no_file(generated, page, app):
    _, outputs, _ = app
    before = _videos(outputs)
    _number(page, "sadtalker_batch_size", 1)
    page.click("#sadtalker_generate")
    page.wait_for_selector("text=/render \\d+\\/\\d+/")
    page.click("#sadtalker_cancel")
    assert "cancelled" in _wait_status(page, "cancelled")
    assert _videos(outputs) == before
    assert not [p for p in outputs.rglob("*") if p.is_file() and p.suffix not in (".mp4", ".json")]


def test_bad_input_shows_its_named_error_in_the_page(generated, page, inputs, app):
    _upload(page, "sadtalker_image", inputs / "grey.png")
    page.click("#sadtalker_generate")
    toast = page.wait_for_selector("text=/\\[no_face\\]/")
    assert "Traceback" not in page.content()
    assert toast.is_visible()
    page.keyboard.press("Escape")
    page.reload()
    page.wait_for_selector("#sadtalker_generate")
    _set_up_run(page, inputs)
    _text(page, "sadtalker_yaw", "left")
    page.click("#sadtalker_generate")
    page.wait_for_selector('text=/"Yaw keyframes" must be numbers/')


def test_loading_an_earlier_video_fills_the_controls(generated, page):
    page.reload()
    page.wait_for_selector("#sadtalker_generate")
    page.locator("#sadtalker_advanced .label-wrap").first.click()
    seed = page.locator("#sadtalker_seed textarea, #sadtalker_seed input").first
    assert seed.input_value() == ""
    page.locator("text=Load parameters from an earlier video").click()
    _upload(page, "sadtalker_load_parameters", Path(generated["saved"]))
    _wait_status(page, "parameters loaded")
    assert seed.input_value() == str(SEED)
    assert page.locator("#sadtalker_pose_style input[type=number]").input_value() == str(POSE_STYLE)
    assert page.locator("#sadtalker_face_detector input").input_value() == "dlib"


@pytest.fixture(scope="module")
def two_faces(inputs) -> Path:
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    Image.fromarray(np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))).save(
        inputs / "two_faces.png")
    return inputs / "two_faces.png"


def _preview_text(page) -> str:
    return page.locator("#sadtalker_preview_text").last.inner_text()


def test_face_preview_choose_nudge_and_the_run_uses_the_box(generated, page, inputs, two_faces):
    page.reload()
    page.wait_for_selector("#sadtalker_generate")
    advanced = page.locator("#sadtalker_advanced")
    advanced.locator(".label-wrap").first.click()
    _pick(page, "sadtalker_face_detector", "dlib")
    _upload(page, "sadtalker_image", two_faces)
    page.wait_for_function("() => document.querySelector('#sadtalker_preview_text').innerText.includes('faces found')")
    page.wait_for_selector("#sadtalker_preview img")
    crop_text = _preview_text(page)
    assert "crop:" in crop_text
    box = page.locator("#sadtalker_face_box textarea, #sadtalker_face_box input").first
    assert box.input_value() == ""  # the largest face is what the run picks anyway

    _pick(page, "sadtalker_preprocess", "extcrop")
    page.wait_for_function("() => document.querySelector('#sadtalker_preview_text').innerText.includes('extcrop crop:')")
    assert _preview_text(page) != crop_text

    choices = page.locator("#sadtalker_face_choice input")
    choices.click()
    options = page.locator("#sadtalker_face_choice li")
    other = next(text for text in options.all_inner_texts() if text.strip() and text.strip() != choices.input_value())
    options.filter(has_text=other.strip()).first.click()
    page.wait_for_function("() => { const b = document.querySelector('#sadtalker_face_box textarea, "
                           "#sadtalker_face_box input'); return b && b.value.length > 0; }")
    chosen_box = box.input_value()

    track = page.locator("#sadtalker_nudge_scale input[type=range]")
    bounds = track.bounding_box()
    page.mouse.click(bounds["x"] + bounds["width"] * 0.9, bounds["y"] + bounds["height"] / 2)
    page.wait_for_function("old => { const b = document.querySelector('#sadtalker_face_box textarea, "
                           "#sadtalker_face_box input'); return b && b.value.length > 0 && b.value !== old; }",
                           arg=chosen_box)
    if os.environ.get("SADTALKER_SCREENSHOTS"):  # tools/screenshots.sh: the README's picture of the app
        page.screenshot(path=str(ROOT / "docs" / "images" / "app.png"), full_page=True)
    nudged = [int(v) for v in box.input_value().split(",")]
    before = [int(v) for v in chosen_box.split(",")]
    assert nudged[2] - nudged[0] > before[2] - before[0]  # the crop was scaled up

    _upload(page, "sadtalker_audio", inputs / "speech.wav")
    page.wait_for_selector("#sadtalker_audio audio[src]", state="attached")
    page.click("#sadtalker_generate")
    _wait_status(page, "done")
    parameters = json.loads(page.locator("#sadtalker_parameters textarea").input_value())
    assert parameters["options"]["face_box"] == nudged
    assert parameters["options"]["preprocess"] == "extcrop"
