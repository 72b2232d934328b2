"""The SadTalker page: one gradio Blocks for the WebUI tab and the standalone app (`python -m sadtalker app`).

Every option control is generated from `option_specs()`; the ones people change are in view, the rest sit in an
"Advanced" accordion. What differs between hosts comes in through the `Host` (folders, device, queue lock,
progress, interrupt, extra enhancers) and `defaults` (the WebUI's Settings). Errors a user causes are shown in the
page by name (`gr.Error`); anything else is logged with its traceback and named in the page in one line.
This module imports no WebUI module.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from . import gradio_compat as compat
from .checkpoints import files
from .checkpoints.check import verify_weight_file
from .checkpoints.download import ensure_files, find_missing
from .checkpoints.paths import ModelPaths
from .errors import Cancelled, InvalidInput, SadTalkerError
from .host import Host
from .options import GenerateOptions, OptionSpec, option_spec, option_specs, saved_options

log = logging.getLogger("sadtalker")

ELEM = "sadtalker"  # prefix of every elem_id, so the page's ids never clash with the WebUI's
STAGE_TEXT = {"load": "loading models", "face": "face", "audio": "audio", "motion": "motion", "render": "render",
              "encode": "encode", "done": "done"}
_SLIDER_SPAN = 10  # numbers with a wider range get a number box instead of a slider


@dataclass
class SadTalkerUI:
    """The built page, and the components a host wires to (the WebUI makes `image` a "Send to" target)."""

    blocks: gr.Blocks
    image: gr.Image
    controls: dict[str, Any] = field(default_factory=dict)  # option name -> component
    video: Any = None


def build_ui(host: Host, *, defaults: dict[str, Any] | None = None, title: str | None = None,
             after_run=None, progress_js: str | None = None) -> SadTalkerUI:
    """The page. `defaults` overrides option defaults (the WebUI's Settings); `after_run()` is called after every
    run (the WebUI unloads the models there when "keep models loaded" is off).

    `progress_js` names a JavaScript function of the host's page that Generate calls first: it starts the host's
    own progress display and returns `[job_id]`, which goes with the run to `host.run_exclusive` (the WebUI: its
    progress bar, following the run through /internal/progress). gradio's progress overlay is then hidden."""
    page = _Page(host, dict(defaults or {}), after_run, progress_js)
    with gr.Blocks(analytics_enabled=False, title=title or "SadTalker") as blocks:
        if title:
            gr.Markdown(f"## {title}")
        page.build()
    return SadTalkerUI(blocks=blocks, image=page.image, controls=page.controls, video=page.video)


# -- option <-> control ---------------------------------------------------------------------------------------------

def _choices(spec: OptionSpec, host: Host) -> list[str]:
    return host.enhancer_names() if spec.name == "enhancer" else [str(c) for c in spec.choices]


def _control(spec: OptionSpec, host: Host, value: Any):
    common = {"label": spec.label, "info": spec.help, "elem_id": f"{ELEM}_{spec.name}"}
    if spec.kind == "choice":
        return gr.Dropdown(choices=_choices(spec, host), value=str(value), **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "int" and spec.maximum - spec.minimum <= 100:
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=1, value=value, **common)
    if spec.kind == "seed" or spec.default is None:
        # a number that may be left empty: gradio's Number cannot be empty (gradio 3 sends 0)
        return gr.Textbox(value="" if value is None else str(value), placeholder="empty: none", **common)
    if spec.kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if spec.kind == "float":
        if spec.maximum - spec.minimum <= _SLIDER_SPAN:
            return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=0.05, value=value, **common)
        return gr.Number(value=value, **common)
    if spec.kind in ("angles", "box"):
        hint = "e.g. -20 30 10" if spec.kind == "angles" else "x0,y0,x1,y1 (empty: detect the face)"
        return gr.Textbox(value=_shown(spec, value), placeholder=hint, **common)
    raise AssertionError(f"no control for option kind {spec.kind!r}")  # pragma: no cover


def _shown(spec: OptionSpec, value: Any) -> Any:
    """An option value as its control shows it."""
    if spec.kind == "choice":
        return str(value)
    if spec.kind == "seed" or spec.default is None and spec.kind in ("int", "float"):
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    if spec.kind in ("angles", "box"):
        if spec.kind == "angles":
            return " ".join(f"{v:g}" for v in value or ())
        return ",".join(str(v) for v in value or ())
    return value


def _option_value(spec: OptionSpec, raw: Any) -> Any:
    """A control's value as the option's value (raises InvalidInput naming the option)."""
    if spec.kind == "choice":
        for choice in spec.choices:
            if str(choice) == str(raw):
                return choice
        return raw  # ours are validated by GenerateOptions; "host:..." enhancers pass through
    if spec.kind in ("int", "seed", "float"):
        if raw is None or str(raw).strip() == "":
            return spec.default
        try:
            number = float(raw)
        except ValueError:
            raise InvalidInput(f"{spec.name} must be a number; got {raw!r}", option=spec.name) from None
        if spec.kind == "float":
            return number
        if number != int(number):
            raise InvalidInput(f"{spec.name} must be a whole number; got {raw!r}", option=spec.name)
        return int(number)
    if spec.kind in ("angles", "box"):
        text = (raw or "").replace(",", " ").split()
        if not text:
            return () if spec.kind == "angles" else None
        try:
            numbers = [float(v) for v in text]
        except ValueError:
            raise InvalidInput(f"{spec.name} must be numbers separated by spaces or commas; got {raw!r}",
                               option=spec.name) from None
        if spec.kind == "box":
            return tuple(int(v) if v == int(v) else v for v in numbers)
        return tuple(numbers)
    return raw


def _video_modes() -> dict[str, OptionSpec]:
    """'blinks' / 'pose' -> the reference-video option it sets (from the labels: 'Reference video (blinks)')."""
    modes = {}
    for spec in option_specs():
        if spec.kind == "video":
            short = spec.label.partition("(")[2].rstrip(")").strip() or spec.label
            modes[short] = spec
    return modes


def _label(name: str) -> str:
    try:
        return f'"{option_spec(name).label}"'
    except KeyError:
        return name


def _named(exc: SadTalkerError) -> str:
    return f"{exc.named_for(_label)} [{exc.code}]"


# -- the page -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Run:
    cancel: threading.Event
    job_id: str | None  # what the host's progress display follows (progress_js)


class _Page:
    def __init__(self, host: Host, defaults: dict[str, Any], after_run, progress_js: str | None):
        self.host = host
        self.defaults = {spec.name: defaults.get(spec.name, spec.default) for spec in option_specs()}
        self.after_run = after_run
        self.progress_js = progress_js
        self.specs = [spec for spec in option_specs() if spec.kind != "video"]
        self.modes = _video_modes()
        self.controls: dict[str, Any] = {}
        self._runs: dict[str, _Run] = {}
        self._events_lock = threading.Lock()

    # layout
    def build(self) -> None:
        with gr.Row():
            with gr.Column(variant="panel"):
                self.image = gr.Image(type="pil", label="Portrait", elem_id=f"{ELEM}_image")
                with gr.Accordion("Face preview", open=True, elem_id=f"{ELEM}_preview_panel"):
                    self.preview_image = gr.Image(label="The face and crop the run will use", interactive=False,
                                                  type="numpy", elem_id=f"{ELEM}_preview")
                    self.preview_text = gr.Markdown("", elem_id=f"{ELEM}_preview_text")
                    with gr.Row():
                        self.face_choice = gr.Dropdown(choices=[], value=None, label="Face",
                                                       info="which face to animate (as numbered in the preview)",
                                                       elem_id=f"{ELEM}_face_choice")
                        self.nudge_scale = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Crop size",
                                                     info="scale the face box", elem_id=f"{ELEM}_nudge_scale")
                    with gr.Row():
                        self.nudge_x = gr.Slider(-0.5, 0.5, value=0.0, step=0.02, label="Move right",
                                                 info="fraction of the face box", elem_id=f"{ELEM}_nudge_x")
                        self.nudge_y = gr.Slider(-0.5, 0.5, value=0.0, step=0.02, label="Move down",
                                                 info="fraction of the face box", elem_id=f"{ELEM}_nudge_y")
                self.speech = compat.speech_inputs(f"{ELEM}_audio")
                with gr.Accordion("Reference video", open=False):
                    self.ref_video = gr.Video(label="Reference video", elem_id=f"{ELEM}_ref_video")
                    self.ref_modes = gr.CheckboxGroup(choices=list(self.modes), value=list(self.modes),
                                                      label="Copy from the reference video",
                                                      elem_id=f"{ELEM}_ref_modes")
                for spec in self.specs:
                    if not spec.advanced:
                        self.controls[spec.name] = _control(spec, self.host, self.defaults[spec.name])
                with gr.Accordion("Advanced", open=False, elem_id=f"{ELEM}_advanced"):
                    for spec in self.specs:
                        if spec.advanced:
                            self.controls[spec.name] = _control(spec, self.host, self.defaults[spec.name])
                with gr.Accordion("Load parameters from an earlier video", open=False):
                    self.parameters_file = gr.File(label="MP4 or JSON made by SadTalker",
                                                   file_types=[".mp4", ".json"],
                                                   elem_id=f"{ELEM}_load_parameters")
            with gr.Column(variant="panel"):
                with gr.Row():
                    self.generate_button = gr.Button("Generate", variant="primary", elem_id=f"{ELEM}_generate")
                    self.cancel_button = gr.Button("Cancel", elem_id=f"{ELEM}_cancel")
                self.status = gr.Textbox(label="Status", interactive=False, elem_id=f"{ELEM}_status")
                self.video = gr.Video(label="Result", interactive=False, elem_id=f"{ELEM}_video")
                self.saved_path = gr.Textbox(label="Saved to", interactive=False, show_copy_button=True,
                                             elem_id=f"{ELEM}_saved_path")
                self.parameters = gr.Textbox(label="Parameters used", lines=6, interactive=False,
                                             show_copy_button=True, elem_id=f"{ELEM}_parameters")
                missing = self.missing_text()
                self.missing = gr.Markdown(missing, elem_id=f"{ELEM}_missing")
                with gr.Row():
                    self.download_button = gr.Button("Download missing models", visible=bool(missing),
                                                     elem_id=f"{ELEM}_download")
                    self.unload_button = gr.Button("Unload models", elem_id=f"{ELEM}_unload")
        self.run_token = gr.State(None)
        self.job_id = gr.Textbox(visible=False)  # filled by progress_js in the browser, if the host has one
        self.wire()

    def wire(self) -> None:
        inputs = {self.image, self.ref_video, self.ref_modes, *self.speech, *self.controls.values()}
        outputs = [self.video, self.saved_path, self.parameters, self.status]
        started = self.generate_button.click(self.start, inputs=[self.job_id], outputs=[self.run_token, self.status],
                                             queue=False, **compat.js_first(self.progress_js))
        started.then(self.run, inputs=inputs | {self.run_token}, outputs=outputs,
                     show_progress="hidden" if self.progress_js else "full")
        self.cancel_button.click(self.cancel, inputs=[self.run_token], outputs=[self.status], queue=False)
        control_list = list(self.controls.values())
        self.parameters_file.upload(self.load_parameters, inputs=[self.parameters_file],
                                    outputs=control_list + [self.status])
        self.download_button.click(self.download, inputs=None,
                                   outputs=[self.missing, self.download_button, self.status])
        self.unload_button.click(self.unload, inputs=None, outputs=[self.status], queue=False)
        preview_inputs = [self.image, self.controls["preprocess"], self.controls["size"],
                          self.controls["face_detector"], self.face_choice, self.nudge_x, self.nudge_y,
                          self.nudge_scale]
        preview_outputs = [self.preview_image, self.preview_text, self.face_choice, self.controls["face_box"]]
        self.image.change(self.preview_new_image, inputs=preview_inputs, outputs=preview_outputs)
        for trigger in (self.controls["preprocess"], self.controls["size"], self.controls["face_detector"]):
            trigger.change(self.preview, inputs=preview_inputs, outputs=preview_outputs)
        # user actions only (select / release): the preview itself sets the face choice, which must not loop
        self.face_choice.select(self.preview, inputs=preview_inputs, outputs=preview_outputs)
        for slider in (self.nudge_x, self.nudge_y, self.nudge_scale):
            slider.release(self.preview, inputs=preview_inputs, outputs=preview_outputs)

    # generate / cancel
    def start(self, job_id=None):
        # the token, not the page's job id, is what Cancel needs: a page cannot name another page's run
        token = uuid.uuid4().hex
        with self._events_lock:
            self._runs[token] = _Run(threading.Event(), job_id if isinstance(job_id, str) and job_id else None)
        return token, "starting"

    def cancel(self, token):
        with self._events_lock:
            run = self._runs.get(token)
        if run is None:
            return gr.update()
        run.cancel.set()
        return "cancelling: the run stops after the frames being rendered now"

    def options_from(self, data: dict) -> GenerateOptions:
        values = {spec.name: _option_value(spec, data[self.controls[spec.name]]) for spec in self.specs}
        video = compat.file_path(data[self.ref_video])
        for mode in data[self.ref_modes] or []:
            if video is not None and mode in self.modes:
                values[self.modes[mode].name] = video
        return GenerateOptions.from_dict(values)

    def run(self, data: dict, progress=gr.Progress()):
        token = data[self.run_token]
        with self._events_lock:
            run = self._runs.get(token) or _Run(threading.Event(), None)
        try:
            return self._run(data, run, progress)
        except Cancelled as exc:
            gr.Warning(exc.message)
            return None, "", "", f"cancelled: {exc.message}"
        except SadTalkerError as exc:
            raise gr.Error(_named(exc)) from None
        except Exception as exc:
            log.exception("SadTalker run failed")
            raise gr.Error(f"unexpected error ({type(exc).__name__}: {exc}); the console has the details") from None
        finally:
            with self._events_lock:
                self._runs.pop(token, None)
            if self.after_run is not None:
                self.after_run()

    def _run(self, data: dict, run: _Run, progress):
        options = self.options_from(data)
        if data[self.image] is None:
            raise InvalidInput("add a portrait photo first")
        speech = next((compat.file_path(data[c]) for c in self.speech if compat.file_path(data[c])), None)
        if speech is None and options.idle_seconds is None:
            raise InvalidInput("add speech (upload or record it), or set idle seconds under Advanced for a "
                               "video without speech")

        def report(stage: str, done: int, total: int) -> None:
            text = STAGE_TEXT.get(stage, stage)
            progress((done, total) if total > 1 else None, desc=f"{text} {done}/{total}" if total > 1 else text)

        result = self.host.generate(data[self.image], speech, options, on_progress=report,
                                    should_cancel=run.cancel.is_set, job_id=run.job_id)
        parameters = result.sidecar.read_text(encoding="utf-8") if result.sidecar.is_file() else json.dumps(
            {"options": options.to_dict(), "seed": result.seed}, indent=2)
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
        status = f"done: {result.num_frames} frames, seed {result.seed} ({timing})"
        for warning in result.warnings:
            gr.Warning(warning)
        return str(result.video), str(result.video), parameters, status

    # face preview
    def preview_new_image(self, image, preprocess, size, detector, face, dx, dy, scale):
        """A new photo: the default face, un-nudged."""
        return self.preview(image, preprocess, size, detector, None, 0.0, 0.0, 1.0)

    def preview(self, image, preprocess, size, detector, face, dx, dy, scale):
        """Detect the faces, draw the chosen one with its landmarks and the crop, and put the box the run should
        use into the face-box option (empty when the run would pick the same face by itself)."""
        from .preview import Nudge

        if image is None:
            return None, "", gr.update(choices=[], value=None), gr.update(value="")
        try:
            options = GenerateOptions.from_dict({"preprocess": _option_value(option_spec("preprocess"), preprocess),
                                                 "size": _option_value(option_spec("size"), size),
                                                 "face_detector": detector})
            index = int(str(face).split()[1]) if face else None
            nudge = Nudge(float(dx or 0), float(dy or 0), float(scale or 1))
            # under the host's lock: the detector is the one the runs use, and backends are not thread-safe
            found = self.host.run_exclusive(
                lambda: self.host.pipeline.preview(image, options, face_index=index, nudge=nudge))
        except SadTalkerError as exc:
            return None, f"**{_named(exc)}**", gr.update(choices=[], value=None), gr.update()
        except Exception as exc:  # the preview is a help; a failure here must not stop the user from generating
            log.exception("face preview failed")
            return None, f"the preview failed ({type(exc).__name__}); generating still works", gr.update(), gr.update()
        names = [f"face {number}" for number in range(len(found.faces))]
        chosen = f"face {found.chosen}" if found.chosen >= 0 else None
        lines = found.messages + [f"{found.preprocess} crop: {','.join(map(str, found.crop_box))}"]
        box = "" if found.face_box is None else _shown(option_spec("face_box"), found.face_box)
        return (found.image, "  \n".join(lines), gr.update(choices=names, value=chosen), gr.update(value=box))

    # parameters of an earlier video
    def load_parameters(self, value):
        path = compat.file_path(value)
        if path is None:
            return [gr.update() for _ in self.controls] + [gr.update()]
        try:
            options, seed = saved_options(path)
        except SadTalkerError as exc:
            raise gr.Error(_named(exc)) from None
        updates = [gr.update(value=_shown(spec, getattr(options, spec.name))) for spec in self.specs]
        skipped = [spec.label for spec in option_specs() if spec.kind == "video" and getattr(options, spec.name)]
        note = f"; add the reference video again ({', '.join(skipped)})" if skipped else ""
        return updates + [f"parameters loaded from {Path(path).name} (seed {seed}){note}"]

    # models
    def wanted_files(self) -> list[files.WeightFile]:
        return files.first_run_files((self.defaults["size"],), self.defaults["face_detector"],
                                     self.defaults["enhancer"])

    def missing_text(self) -> str:
        paths = ModelPaths(self.host.models_dir)
        missing = find_missing(self.wanted_files(), paths)
        if not missing:
            return ""
        lines = [f"**{len(missing)} model file(s) missing** (download them here, or put them in the folder shown):"]
        lines += [f"- `{wf.name}` ({wf.purpose}) → `{paths.folder(wf)}`" for wf in missing]
        return "\n".join(lines)

    def download(self, progress=gr.Progress()):
        def report(name: str, done: int, total: int | None) -> None:
            mib = f"{done / 2**20:.1f}" + (f"/{total / 2**20:.1f}" if total else "") + " MiB"
            progress((done, total) if total else None, desc=f"{name} {mib}")

        try:
            ensure_files(self.wanted_files(), ModelPaths(self.host.models_dir), allow_download=True,
                         on_progress=report, verify=verify_weight_file)
        except SadTalkerError as exc:
            raise gr.Error(_named(exc)) from None
        missing = self.missing_text()
        return missing, gr.update(visible=bool(missing)), "models downloaded" if not missing else "still missing"

    def unload(self):
        self.host.unload()
        return "models unloaded (they load again at the next run)"
