#!/usr/bin/env bash
# Retakes the README's screenshots: the standalone app (headless Chromium) and the tab inside each real WebUI named
# by SD_WEBUI_DIR / SD_WEBUI_VENV (A1111 v1.10.1) and SD_FORGE_DIR / SD_FORGE_VENV (Forge). Writes
# docs/images/app.png, docs/images/webui-tab.png and docs/images/forge-tab.png.
set -euo pipefail
cd "$(dirname "$0")/.."
SADTALKER_SCREENSHOTS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_ui_browser.py -k preview
if [ -n "${SD_WEBUI_DIR:-}${SD_FORGE_DIR:-}" ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_webui.py -k screenshot
else
  echo "neither SD_WEBUI_DIR nor SD_FORGE_DIR is set: the WebUI screenshots were not retaken"
fi
