"""What the tab and the API scripts share in the WebUI: one Host per WebUI process, built from `modules.shared`.

A package, not a script (the WebUI loads only the .py files directly in scripts/), so both scripts import the same
module and share one Host: the models load once for the tab and the API together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modules import call_queue, devices, paths, progress, shared
from sadtalker.host import Host
from sadtalker.options import HOST_ENHANCER_PREFIX

TAB = "sadtalker"
_host: Host | None = None


def setting(key: str, default=None):
    # opts.data, not opts.<key>: with --nowebui on_ui_settings never runs and the attribute does not exist
    return shared.opts.data.get(key, default)


def models_dir() -> Path:
    configured = setting("sadtalker_models_path") or getattr(shared.cmd_opts, "sadtalker_models_path", None)
    return Path(configured) if configured else Path(paths.models_path) / "SadTalker"


def outputs_dir() -> Path:
    """Settings folder, else <the WebUI's "all images" folder or its outputs folder>/sadtalker."""
    configured = setting("sadtalker_outputs_path")
    return Path(configured) if configured else webui_outputs() / "sadtalker"


def webui_outputs() -> Path:
    """The WebUI's "all images" folder, else its outputs folder."""
    from modules.paths_internal import default_output_dir

    return Path(setting("outdir_samples") or default_output_dir)


def _run_exclusive(job, job_id: str | None = None):
    """Under the WebUI's queue lock (never beside txt2img), as one job of shared.state (/sdapi/v1/progress,
    Interrupt). A run from the tab has the id its page's progress bar asks /internal/progress about (the
    javascript/ requestProgress call), so that bar says "queued" while txt2img holds the lock, then the stages."""
    if job_id:
        progress.add_task_to_queue(job_id)
    with call_queue.queue_lock:
        shared.state.begin(job=job_id or TAB)
        if job_id:
            progress.start_task(job_id)
        shared.state.job_count = 1
        try:
            return job()
        finally:
            if job_id:
                progress.finish_task(job_id)
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
        # Forge's get_device_for ignores --use-cpu (its backend picks the device); honour it here on both
        use_cpu = getattr(shared.cmd_opts, "use_cpu", None) or []
        device = devices.cpu if "all" in use_cpu or TAB in use_cpu else devices.get_device_for(TAB)
        dtype = devices.dtype if torch.device(device).type == "cuda" else torch.float32
        _host = Host(models_dir(), outputs_dir(), device=device, dtype=dtype,
                     allow_download=not getattr(shared.cmd_opts, "sadtalker_no_download", False),
                     run_exclusive=_run_exclusive, on_progress=_on_progress, is_interrupted=_interrupted,
                     extra_enhancers=_restorers(), name="webui")
    _host.outputs_dir = outputs_dir()  # Settings may have changed it since the last run
    _host.extra_enhancers.update(_restorers())
    return _host
