"""The SadTalker tab in AUTOMATIC1111 1.10 / Forge: a thin adapter from `modules.shared` to `sadtalker.Host`.

The page itself is `sadtalker.ui.build_ui`; this file only says where things are in the WebUI (folders, device,
queue lock, progress, interrupt, face restorers, Settings) and adds "Send to SadTalker" to the result panels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gradio as gr
from modules import devices, script_callbacks, shared

try:
    from modules import infotext_utils
except ImportError:  # WebUI before 1.8
    from modules import generation_parameters_copypaste as infotext_utils

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))

if str(EXTENSION_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT / "scripts"))  # for sadtalker_webui, shared with the API script

from sadtalker.options import option_spec  # noqa: E402
from sadtalker.ui import build_ui  # noqa: E402
from sadtalker_webui import TAB, get_host, setting  # noqa: E402

SECTION = ("sadtalker", "SadTalker")
SETTING_DEFAULTS = {  # key -> (option it sets the default of, or None)
    "sadtalker_size": "size", "sadtalker_preprocess": "preprocess", "sadtalker_enhancer": "enhancer",
    "sadtalker_face_detector": "face_detector",
}
_galleries: dict[str, gr.components.Component] = {}


def _after_run() -> None:
    if not setting("sadtalker_keep_models_loaded", True):
        get_host().unload()
        devices.torch_gc()


def on_ui_tabs():
    host = get_host()
    defaults = {name: setting(key) for key, name in SETTING_DEFAULTS.items() if setting(key) is not None}
    ui = build_ui(host, defaults=defaults, after_run=_after_run, progress_js="sadtalker_follow_progress")
    infotext_utils.add_paste_fields(TAB, ui.image, None)  # makes the tab a "Send to" target
    return [(ui.blocks, "SadTalker", TAB)]


def _choice_setting(name: str, label: str):
    spec = option_spec(name)
    choices = (lambda: {"choices": get_host().enhancer_names()}) if name == "enhancer" \
        else {"choices": list(spec.choices)}
    return shared.OptionInfo(spec.default, label, gr.Dropdown, choices, section=SECTION).info(spec.help)


def on_ui_settings():
    add = shared.opts.add_option
    add("sadtalker_models_path", shared.OptionInfo(
        "", "Models folder (empty: --sadtalker-models-path, else models/SadTalker)", section=SECTION).needs_restart())
    add("sadtalker_outputs_path", shared.OptionInfo(
        "", "Outputs folder (empty: outputs/sadtalker); videos go to <folder>/<date>/", section=SECTION))
    add("sadtalker_size", _choice_setting("size", "Default face size").needs_reload_ui())
    add("sadtalker_preprocess", _choice_setting("preprocess", "Default preprocess").needs_reload_ui())
    add("sadtalker_enhancer", _choice_setting("enhancer", "Default face enhancer").needs_reload_ui())
    add("sadtalker_face_detector", _choice_setting("face_detector", "Default face detector").needs_reload_ui())
    add("sadtalker_keep_models_loaded", shared.OptionInfo(
        True, "Keep models loaded between runs (the tab's Unload button frees them)", section=SECTION))
    add("sadtalker_api_allow_server_paths", shared.OptionInfo(
        False, "Allow server-side file paths in the API (otherwise only uploaded or base64 data)", section=SECTION))


def on_after_component(component, **kwargs):
    """A "Send to SadTalker" button after the built-in send-to buttons of txt2img, img2img and Extras."""
    elem_id = kwargs.get("elem_id") or ""
    for tab in ("txt2img", "img2img", "extras"):
        if elem_id == f"{tab}_gallery":
            _galleries[tab] = component
        elif elem_id == f"{tab}_send_to_extras" and tab in _galleries:
            from modules.ui_components import ToolButton

            button = ToolButton("🗣️", elem_id=f"{tab}_send_to_{TAB}", tooltip="Send image to the SadTalker tab.")
            infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
                paste_button=button, tabname=TAB, source_image_component=_galleries[tab]))


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_after_component(on_after_component)
