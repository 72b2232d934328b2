"""WebUI adapter for the HTTP API: /sadtalker/v1/* on the WebUI's own app, next to /sdapi/v1/*.

Thin on purpose: it builds a Host from the WebUI (queue lock, progress bar, Interrupt, folders, device) and hands
it to `sadtalker.api.register`. The WebUI does not put its --api-auth on extension routes, so we pass its
credentials on. Settings (environment, read at start): SADTALKER_API_MAX_BODY_MB (default 64) and
SADTALKER_API_PATHS (folders, separated by the OS path separator, under which server-side paths are accepted;
unset: base64 only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from modules import script_callbacks

import sadtalker  # noqa: F401  (imported while the WebUI has this extension on sys.path; submodules follow)

log = logging.getLogger("sadtalker")
EXTENSION_DIR = Path(__file__).resolve().parents[1]


def _webui_host():
    from modules import call_queue, devices, paths, shared

    from sadtalker.host import Host

    state = shared.state

    def run_exclusive(job):
        with call_queue.queue_lock:  # never beside txt2img/img2img/extras or another API generation
            state.begin(job="sadtalker")
            try:
                return job()
            finally:
                state.end()

    def on_progress(stage: str, done: int, total: int) -> None:
        state.textinfo = f"SadTalker: {stage}"
        state.sampling_steps = max(int(total), 1)
        state.sampling_step = int(done)

    models = getattr(shared.cmd_opts, "sadtalker_models_path", None) or os.path.join(paths.models_path, "SadTalker")
    device = devices.get_optimal_device()
    dtype = devices.dtype if device.type == "cuda" else torch.float32  # half precision only where it is fast
    return Host(models_dir=Path(models), outputs_dir=Path(paths.data_path) / "outputs" / "sadtalker", device=device,
                dtype=dtype, allow_download=True, run_exclusive=run_exclusive, on_progress=on_progress,
                is_interrupted=lambda: bool(state.interrupted), name="webui")


def _settings(host):
    from modules import shared

    from sadtalker.api import ApiSettings, PathPolicy, parse_credentials

    folders = tuple(Path(p) for p in os.environ.get("SADTALKER_API_PATHS", "").split(os.pathsep) if p.strip())
    return ApiSettings(data_dir=EXTENSION_DIR / "data" / "api",
                       credentials=parse_credentials(getattr(shared.cmd_opts, "api_auth", None)),
                       max_body_bytes=int(float(os.environ.get("SADTALKER_API_MAX_BODY_MB", "64")) * 2**20),
                       paths=PathPolicy(allowed=bool(folders), folders=folders))


def _on_app_started(demo, app) -> None:
    try:
        from sadtalker.api import register

        host = _webui_host()
        register(app, host, _settings(host))
    except Exception:  # the WebUI must start even when our API cannot
        log.exception("SadTalker: the /sadtalker/v1 API could not be registered")


script_callbacks.on_app_started(_on_app_started)
