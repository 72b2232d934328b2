#!/usr/bin/env bash
# Retakes the README's screenshots: the standalone app (headless Chromium) and, when SD_WEBUI_DIR / SD_WEBUI_VENV
# point at a real WebUI v1.10.1, the tab inside it. Writes docs/images/app.png and docs/images/webui-tab.png.
set -euo pipefail
cd "$(dirname "$0")/.."
SADTALKER_SCREENSHOTS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_ui_browser.py -k preview
if [ -n "${SD_WEBUI_DIR:-}" ] && [ -n "${SD_WEBUI_VENV:-}" ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_webui.py -k screenshot
else
  echo "SD_WEBUI_DIR / SD_WEBUI_VENV not set: the WebUI screenshot was not retaken"
fi
