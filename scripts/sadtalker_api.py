"""WebUI adapter for the HTTP API: /sadtalker/v1/* on the WebUI's own app, next to /sdapi/v1/*.

Thin on purpose: it builds a Host from the WebUI (queue lock, progress bar, Interrupt, folders, device) and hands
it to `sadtalker.api.register`. The WebUI does not put its --api-auth on extension routes, so its credentials are
passed on. Server-side paths: refused unless the Settings option `sadtalker_api_allow_server_paths` is on; then
only under the folders in SADTALKER_API_PATHS (separated like PATH), or by default under the WebUI's outputs
folder (where txt2img puts its images). SADTALKER_API_MAX_BODY_MB sets the request-size limit (default 64).

The tab script (scripts/sadtalker_tab.py) builds the same kind of Host; the two are meant to share one.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from modules import call_queue, devices, paths, script_callbacks, shared

EXTENSION_DIR = Path(__file__).resolve().parents[1]
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

from sadtalker.host import Host  # noqa: E402

log = logging.getLogger("sadtalker")


def _setting(key: str, default=None):
    return shared.opts.data.get(key, default)  # opts.data: with --nowebui on_ui_settings never runs


def _webui_outputs() -> Path:
    from modules.paths_internal import default_output_dir

    return Path(_setting("outdir_samples") or default_output_dir)


def _run_exclusive(job):
    with call_queue.queue_lock:  # never beside txt2img/img2img/extras or another generation
        shared.state.begin(job="sadtalker")
        shared.state.job_count = 1
        try:
            return job()
        finally:
            shared.state.end()


def _on_progress(stage: str, done: int, total: int) -> None:
    shared.state.textinfo = f"SadTalker: {stage} {done}/{total}" if total > 1 else f"SadTalker: {stage}"
    shared.state.sampling_steps = total
    shared.state.sampling_step = done


def _webui_host() -> Host:
    device = devices.get_device_for("sadtalker")
    dtype = devices.dtype if torch.device(device).type == "cuda" else torch.float32
    models = _setting("sadtalker_models_path") or getattr(shared.cmd_opts, "sadtalker_models_path", None) \
        or Path(paths.models_path) / "SadTalker"
    outputs = _setting("sadtalker_outputs_path") or _webui_outputs() / "sadtalker"
    return Host(Path(models), Path(outputs), device=device, dtype=dtype,
                allow_download=not getattr(shared.cmd_opts, "sadtalker_no_download", False),
                run_exclusive=_run_exclusive, on_progress=_on_progress,
                is_interrupted=lambda: bool(shared.state.interrupted or getattr(shared.state, "stopping_generation",
                                                                                False)),
                name="webui")


def _settings():
    from sadtalker.api import ApiSettings, PathPolicy, parse_credentials

    configured = tuple(Path(p) for p in os.environ.get("SADTALKER_API_PATHS", "").split(os.pathsep) if p.strip())

    def path_policy() -> PathPolicy:  # read per request: the Settings option applies without a restart
        return PathPolicy(allowed=bool(_setting("sadtalker_api_allow_server_paths", False)),
                          folders=configured or (_webui_outputs(),))

    return ApiSettings(data_dir=EXTENSION_DIR / "data" / "api",
                       credentials=parse_credentials(getattr(shared.cmd_opts, "api_auth", None)),
                       max_body_bytes=int(float(os.environ.get("SADTALKER_API_MAX_BODY_MB", "64")) * 2**20),
                       paths=path_policy)


def _on_app_started(demo, app) -> None:
    try:
        from sadtalker.api import register

        register(app, _webui_host(), _settings())
    except Exception:  # the WebUI must start even when our API cannot
        log.exception("SadTalker: the /sadtalker/v1 API could not be registered")


script_callbacks.on_app_started(_on_app_started)
