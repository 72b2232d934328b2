"""WebUI adapter for the HTTP API: /sadtalker/v1/* on the WebUI's own app, next to /sdapi/v1/*.

Thin on purpose: it builds a Host from the WebUI (queue lock, progress bar, Interrupt, folders, device) and hands
it to `sadtalker.api.register`. The WebUI does not put its --api-auth on extension routes, so its credentials are
passed on. Server-side paths: refused unless the Settings option `sadtalker_api_allow_server_paths` is on; then
only under the folders in SADTALKER_API_PATHS (separated like PATH), or by default under the WebUI's outputs
folder (where txt2img puts its images). SADTALKER_API_MAX_BODY_MB sets the request-size limit (default 64).

It shares the tab's Host (scripts/sadtalker_webui), so the tab and the API load the models once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from modules import script_callbacks, shared

EXTENSION_DIR = Path(__file__).resolve().parents[1]
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

if str(EXTENSION_DIR / "scripts") not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR / "scripts"))

from sadtalker_webui import get_host, setting, webui_outputs  # noqa: E402

log = logging.getLogger("sadtalker")


def _settings():
    from sadtalker.api import ApiSettings, PathPolicy, parse_credentials

    configured = tuple(Path(p) for p in os.environ.get("SADTALKER_API_PATHS", "").split(os.pathsep) if p.strip())

    def path_policy() -> PathPolicy:  # read per request: the Settings option applies without a restart
        return PathPolicy(allowed=bool(setting("sadtalker_api_allow_server_paths", False)),
                          folders=configured or (webui_outputs(),))

    return ApiSettings(data_dir=EXTENSION_DIR / "data" / "api",
                       credentials=parse_credentials(getattr(shared.cmd_opts, "api_auth", None)),
                       max_body_bytes=int(float(os.environ.get("SADTALKER_API_MAX_BODY_MB", "64")) * 2**20),
                       paths=path_policy)


def _on_app_started(demo, app) -> None:
    try:
        from sadtalker.api import register

        register(app, get_host(), _settings())
    except Exception:  # the WebUI must start even when our API cannot
        log.exception("SadTalker: the /sadtalker/v1 API could not be registered")


script_callbacks.on_app_started(_on_app_started)
