"""The real WebUIs the extension is tested in: AUTOMATIC1111 v1.10.1 and Forge (both built as in
shared/facts/webui.md). tests/test_webui.py and tests/test_webui_api.py run the same checks in each one whose
checkout and venv the environment names, and skip the others with the reason.

What differs between the two, for a test that starts one:
- the CPU flags: A1111 `--use-cpu all --no-half --precision full`, Forge `--always-cpu`;
- the port: Forge gets it from GRADIO_SERVER_PORT, because with `--port N` pydantic 2 refuses the int in
  /sdapi/v1/cmd-flags' `str | None` field and that route answers 500 (Forge's own bug, not ours);
- `--gradio-allowed-path <Forge checkout>`: with --data-dir elsewhere, Forge lets gradio 4 serve files only from
  the data folder, so its own javascript/*.js answer 403 and the page has no submit_extras, requestProgress or
  onUiLoaded (Extras' Generate then does nothing);
- PIP_RETRIES=0 for Forge: a built-in extension's installer tries three wheels from GitHub at every start;
- GET /sdapi/v1/options in Forge lists no extension's settings (its own ControlNet's neither): its built-in
  ControlNet imports modules.api at script load, which builds the options response model from the options known
  then, before any on_ui_settings has run. POST /sdapi/v1/options and the Settings page do have them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class WebUIHost:
    id: str  # the pytest id, and the name in screenshots
    title: str
    dir_var: str
    venv_var: str
    cpu_flags: tuple[str, ...]
    port_flag: bool  # --port N, else GRADIO_SERVER_PORT
    options_api_lists_extension_settings: bool
    allow_own_files: bool = False  # --gradio-allowed-path <checkout>
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return os.environ[self.dir_var]

    @property
    def python(self) -> str:
        return str(Path(os.environ[self.venv_var]) / "bin" / "python")

    def skip_reason(self) -> str | None:
        if os.environ.get(self.dir_var) and os.environ.get(self.venv_var):
            return None
        return (f"set {self.dir_var} and {self.venv_var} to a real {self.title} and its venv "
                "(shared/facts/webui.md says how to build one)")

    def command(self, port: int, data_dir: Path, *extra: str) -> list[str]:
        return [self.python, "launch.py", "--skip-torch-cuda-test", *self.cpu_flags, "--no-download-sd-model",
                "--skip-version-check", "--api", "--server-name", "127.0.0.1",
                *(["--port", str(port)] if self.port_flag else []), "--data-dir", str(data_dir),
                *(["--gradio-allowed-path", self.root] if self.allow_own_files else []), *extra]

    def environment(self, port: int | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COMMANDLINE_ARGS")}
        env.update(self.env)
        if port is not None and not self.port_flag:
            env["GRADIO_SERVER_PORT"] = str(port)
        return env

    @contextlib.contextmanager
    def running(self, port: int, data_dir: Path, *extra: str):
        """The WebUI on 127.0.0.1:port, once its log says `Startup time:`; yields (url, log path)."""
        log_path = data_dir / "webui.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(self.command(port, data_dir, *extra), cwd=self.root,
                                       env=self.environment(port), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while "Startup time:" not in log_path.read_text(errors="replace"):  # a request before would crash it
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{self.title} did not start:\n" + log_path.read_text(errors="replace")[-5000:])
                time.sleep(1)
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            process.terminate()
            process.wait(timeout=60)


A1111 = WebUIHost("a1111", "AUTOMATIC1111 WebUI v1.10.1", "SD_WEBUI_DIR", "SD_WEBUI_VENV",
                  ("--use-cpu", "all", "--no-half", "--precision", "full", "--skip-load-model-at-start"),
                  port_flag=True, options_api_lists_extension_settings=True)
FORGE = WebUIHost("forge", "Forge (gradio 4.40, pydantic 2)", "SD_FORGE_DIR", "SD_FORGE_VENV",
                  ("--always-cpu",), port_flag=False,
                  options_api_lists_extension_settings=False, allow_own_files=True, env={"PIP_RETRIES": "0"})
HOSTS = (A1111, FORGE)


def host_fixture(request) -> WebUIHost:
    """For a module fixture parametrized over HOSTS: the host, or a skip that says what to set."""
    host = request.param
    reason = host.skip_reason()
    if reason:
        pytest.skip(reason)
    return host


def extension_data_dir(folder: Path, fake_checkpoints: Path) -> Path:
    """A --data-dir whose extensions/ holds a copy of this tree (without .git: a worktree's .git has no
    "origin", which the WebUI reports) and whose models/SadTalker links the fake checkpoints."""
    (folder / "extensions").mkdir()
    shutil.copytree(ROOT, folder / "extensions" / "sd-webui-sadtalker",
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", ".pytest_cache", "docs", "data"))
    models = folder / "models" / "SadTalker"
    models.mkdir(parents=True)
    for file in fake_checkpoints.iterdir():
        (models / file.name).symlink_to(file)
    return folder
