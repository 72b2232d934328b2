"""The SadTalker tab in AUTOMATIC1111 1.10 / Forge: a thin adapter from `modules.shared` to `sadtalker.Host`.

The page itself is `sadtalker.ui.build_ui`; this file only says where things are in the WebUI (folders, device,
queue lock, progress, interrupt, face restorers, Settings) and adds "Send to SadTalker" to the result panels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gradio as gr
import torch

from modules import call_queue, devices, paths, script_callbacks, shared

try:
    from modules import infotext_utils
except ImportError:  # WebUI before 1.8
    from modules import generation_parameters_copypaste as infotext_utils

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))

from sadtalker.host import Host  # noqa: E402
from sadtalker.options import HOST_ENHANCER_PREFIX, option_spec  # noqa: E402
from sadtalker.ui import build_ui  # noqa: E402

TAB = "sadtalker"
SECTION = ("sadtalker", "SadTalker")
SETTING_DEFAULTS = {  # key -> (option it sets the default of, or None)
    "sadtalker_size": "size", "sadtalker_preprocess": "preprocess", "sadtalker_enhancer": "enhancer",
    "sadtalker_face_detector": "face_detector",
}
_host: Host | None = None
_galleries: dict[str, gr.components.Component] = {}


def setting(key: str, default=None):
    # opts.data, not opts.<key>: with --nowebui on_ui_settings never runs and the attribute does not exist
    return shared.opts.data.get(key, default)


def models_dir() -> Path:
    configured = setting("sadtalker_models_path") or getattr(shared.cmd_opts, "sadtalker_models_path", None)
    return Path(configured) if configured else Path(paths.models_path) / "SadTalker"


def outputs_dir() -> Path:
    """Settings folder, else <the WebUI's "all images" folder or its outputs folder>/sadtalker."""
    configured = setting("sadtalker_outputs_path")
    if configured:
        return Path(configured)
    from modules.paths_internal import default_output_dir

    return Path(setting("outdir_samples") or default_output_dir) / "sadtalker"


def _run_exclusive(job):
    """Under the WebUI's queue lock (never beside txt2img), as one job of shared.state (progress bar, Interrupt)."""
    with call_queue.queue_lock:
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


def _interrupted() -> bool:
    return bool(shared.state.interrupted or getattr(shared.state, "stopping_generation", False))


def _restorers() -> dict:
    """The WebUI's configured face restorers (GFPGAN, CodeFormer), offered as "host:<name>" enhancers."""
    return {HOST_ENHANCER_PREFIX + restorer.name(): restorer.restore for restorer in shared.face_restorers}


def get_host() -> Host:
    """One host per WebUI process (also for the API script), so models stay loaded between runs."""
    global _host
    if _host is None:
        device = devices.get_device_for(TAB)
        dtype = devices.dtype if torch.device(device).type == "cuda" else torch.float32
        _host = Host(models_dir(), outputs_dir(), device=device, dtype=dtype,
                     allow_download=not getattr(shared.cmd_opts, "sadtalker_no_download", False),
                     run_exclusive=_run_exclusive, on_progress=_on_progress, is_interrupted=_interrupted,
                     extra_enhancers=_restorers(), name="webui")
    _host.outputs_dir = outputs_dir()  # Settings may have changed it since the last run
    _host.extra_enhancers.update(_restorers())
    return _host


def _after_run() -> None:
    if not setting("sadtalker_keep_models_loaded", True):
        get_host().unload()
        devices.torch_gc()


def on_ui_tabs():
    host = get_host()
    defaults = {name: setting(key) for key, name in SETTING_DEFAULTS.items() if setting(key) is not None}
    ui = build_ui(host, defaults=defaults, after_run=_after_run)
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
