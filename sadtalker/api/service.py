"""The routes of /sadtalker/v1, the same in the WebUI (added to its app in `on_app_started`) and standalone.

Every route is guarded here rather than by app-wide middleware or exception handlers (the WebUI's app is not
ours to change, and middleware cannot be added once it has started): credentials first, then the body-size
limit, and every error is answered as `{"error": {"code", "message", "option"}}` with a 4xx status for anything
the client can fix. Handlers are plain `def`s: FastAPI runs them in its thread pool, so a long /generate never
blocks the event loop.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic

from .. import __version__
from ..audio import FPS
from ..batch import BatchBackend
from ..errors import Cancelled, InvalidInput, SadTalkerError
from ..host import Host
from ..options import GenerateOptions, option_specs
from . import models
from .inputs import ApiError, PathPolicy, decode_media, media_suffix, redact
from .runner import JobRunner
from .store import DONE, FINISHED, QUEUED, RUNNING, JobRecord, JobStore

log = logging.getLogger("sadtalker")

PREFIX = "/sadtalker/v1"
DEFAULT_MAX_BODY_MB = 64.0
_UNSAFE_NAME = re.compile(r"[^\w\-. ()]+")
_VIDEO_OPTIONS = tuple(spec.name for spec in option_specs() if spec.kind == "video")


def parse_credentials(text: str | None) -> dict[str, str]:
    """The WebUI's --api-auth form, "user:pass,user2:pass2" -> {user: pass}."""
    credentials = {}
    for pair in (text or "").split(","):
        pair = pair.strip()
        if not pair:
            continue
        user, sep, password = pair.partition(":")
        if not sep or not user:
            raise InvalidInput("api auth must be user:password pairs separated by commas", option="api_auth")
        credentials[user] = password
    return credentials


@dataclass
class ApiSettings:
    data_dir: Path  # job records (SQLite) and uploaded inputs of unfinished jobs
    credentials: dict[str, str] = field(default_factory=dict)  # empty: no auth
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20)
    paths: PathPolicy | Callable[[], PathPolicy] = field(default_factory=PathPolicy)  # a callable: read per request
    prefix: str = PREFIX

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    def path_policy(self) -> PathPolicy:
        return self.paths() if callable(self.paths) else self.paths


# -- the guard around every route ---------------------------------------------------------------------------

def _error(status: int, code: str, message: str, option: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if option:
        body["option"] = option
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _status_of(exc: SadTalkerError) -> int:
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, Cancelled):
        return 409
    if exc.code in ("missing_weights", "corrupt_checkpoint", "unsupported_checkpoint", "missing_dependency",
                    "detector_unavailable", "download_failed"):
        return 503  # the server is not set up for this; nothing in the request can fix it
    return 500


def _validation_message(exc: RequestValidationError) -> tuple[str, str, str | None]:
    errors = exc.errors()
    if any(e.get("type") in ("value_error.jsondecode", "json_invalid") for e in errors):
        return "bad_json", "the request body is not valid JSON", None
    parts, first = [], None
    for error in errors[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        first = first or (loc[-1] if loc else None)
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid_request", "; ".join(parts) + more, first


async def _read_limited_body(request: Request, limit: int) -> None:
    """Read the body into the request (FastAPI reuses it) unless it is over `limit`: then a 413.
    An over-long body is drained (not kept) up to a cap so that the client reads the 413 instead of a reset."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, "body_too_large",
                         f"the request body is larger than this server's limit of {limit / 2**20:g} MiB "
                         f"(standalone: --max-body-mb; WebUI: the SadTalker API setting)")
    drain_cap = max(limit * 16, 256 * 2**20)
    if declared is not None:
        try:
            if int(declared) > limit:
                if int(declared) <= drain_cap:
                    async for _ in request.stream():
                        pass
                raise too_large
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    request._body = b"".join(chunks)  # starlette's cache of the body, which FastAPI reads next


def _guarded_route_class(settings: ApiSettings, visible: Callable[[], Path]) -> type[APIRoute]:
    expected = [(f"{u}:{p}").encode() for u, p in settings.credentials.items()]

    def authorised(header: str | None) -> bool:
        if not expected:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return any(secrets.compare_digest(given, pair) for pair in expected)

    class GuardedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    if not authorised(request.headers.get("authorization")):
                        raise ApiError(401, "unauthorized", "this server needs credentials (HTTP Basic, as the "
                                       "WebUI's --api-auth)", headers={"WWW-Authenticate": 'Basic realm="sadtalker"'})
                    if request.method in ("POST", "PUT", "PATCH"):
                        await _read_limited_body(request, settings.max_body_bytes)
                    return await handler(request)
                except ApiError as exc:
                    return _error(exc.status, exc.code, redact(exc.message, visible()), exc.option, exc.headers)
                except RequestValidationError as exc:
                    code, message, option = _validation_message(exc)
                    return _error(400 if code == "bad_json" else 422, code, redact(message, visible()), option)
                except SadTalkerError as exc:
                    return _error(_status_of(exc), exc.code, redact(exc.message, visible()), exc.option)
                except HTTPException as exc:
                    detail = exc.detail if isinstance(exc.detail, str) else "bad request"
                    return _error(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error",
                                  redact(detail, visible()), headers=getattr(exc, "headers", None))
                except Exception:
                    log.exception("sadtalker api: %s %s failed", request.method, request.url.path)
                    return _error(500, "internal_error", "an unexpected error occurred; the server log has it")

            return guarded

    return GuardedRoute


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": models.ErrorResponse, "description": text} for status, text in (
        (401, "credentials missing or wrong"), (403, "a server-side path that is not allowed"),
        (404, "no such job or item"), (409, "not possible in the current state"),
        (413, "the body is over the size limit"), (422, "invalid input, named in the message"))}


# -- the service --------------------------------------------------------------------------------------------

class ApiService:
    """The routes, the job store and the worker, around one Host."""

    def __init__(self, host: Host, settings: ApiSettings, backend: BatchBackend | None = None):
        self.host = host
        self.settings = settings
        self.store = JobStore(settings.data_dir / "jobs.sqlite3")
        self.inputs_dir = settings.data_dir / "inputs"
        self.runner = JobRunner(host, self.store, self.inputs_dir, backend)
        self._models_cache: tuple[Any, models.ModelsStatus] | None = None
        self._models_lock = threading.Lock()
        self.router = self._build_router()

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    # -- inputs ---------------------------------------------------------------------------------------------
    def _media_file(self, data: str | None, path: str | None, kind: str, where: str, folder: Path,
                    stem: str) -> str | None:
        """A stored file for base64 input (`folder/<stem>/<kind>.<suffix>`: an error about it names "image.png",
        the field the client sent, not a scratch name), or the checked server path."""
        if data is not None and path is not None:
            raise ApiError(422, "invalid_request", f"{where}{kind}: give {kind} or {kind}_path, not both",
                           option=kind)
        if path is not None:
            return str(self.settings.path_policy().resolve(path, f"{where}{kind}_path"))
        if data is None:
            return None
        raw = decode_media(data, f"{where}{kind}", empty_code={"image": "bad_image", "audio": "bad_audio"}[kind])
        target = folder / stem / (kind + media_suffix(raw, ".bin"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
        return str(target)

    def _options(self, layers: list[dict[str, Any] | None], where: str) -> GenerateOptions:
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer or {})
        for name in _VIDEO_OPTIONS:
            if merged.get(name) is not None:
                merged[name] = str(self.settings.path_policy().resolve(merged[name], f"{where}options.{name}"))
        try:
            return GenerateOptions.from_dict(merged)
        except InvalidInput as exc:
            prefix = f"{where}options."
            raise ApiError(422, exc.code, prefix + exc.message if exc.option else exc.message,
                           option=exc.option) from None

    def _input(self, source: dict[str, Any], kind: str, where: str, folder: Path,
               stem: str) -> tuple[str | None, str | None]:
        """(file to read, name for the output) of `source`'s image or audio; (None, None) when it has none."""
        data, path = source.get(kind), source.get(f"{kind}_path")
        if data is None and path is None:
            return None, None
        return self._media_file(data, path, kind, where, folder, stem), Path(path).stem if path else None

    def _prepare(self, item: dict[str, Any], shared: dict[str, Any], folder: Path, where: str,
                 index: int | str) -> dict[str, Any]:
        """Check one item and store its inputs: -> {name, image, audio, options}. `shared` holds the job's
        options and its (file, name) image and audio for items without their own."""
        options = self._options([shared.get("options"), item.get("options")], where)
        image, image_name = self._input(item, "image", where, folder, str(index))
        if image is None:
            image, image_name = shared.get("image", (None, None))
        audio, audio_name = self._input(item, "audio", where, folder, str(index))
        if audio is None:
            audio, audio_name = shared.get("audio", (None, None))
        if image is None:
            raise ApiError(422, "invalid_request", f"{where}image: an image (or image_path) is needed",
                           option="image")
        if audio is None and options.idle_seconds is None:
            raise ApiError(422, "invalid_request", f"{where}audio: an audio (or audio_path) is needed, or "
                           "options.idle_seconds for a video without speech", option="audio")
        stem = item.get("name") or f"{image_name or 'image'}__{audio_name or ('audio' if audio else 'idle')}"
        return {"name": _file_safe(stem), "image": image, "audio": audio, "options": options.to_dict()}

    def _shared_inputs(self, body: dict[str, Any], folder: Path) -> dict[str, Any]:
        return {"options": body.get("options"),
                **{kind: self._input(body, kind, "", folder, "shared") for kind in ("image", "audio")}}

    # -- views ----------------------------------------------------------------------------------------------
    def _item_status(self, job: JobRecord, item) -> models.ItemStatus:
        live = self.runner.progress(job.id, item.index) if item.state == RUNNING else None
        progress = 1.0 if item.state in FINISHED else (live.fraction if live else 0.0)
        done = item.state == DONE
        return models.ItemStatus(
            index=item.index, name=item.name, state=item.state, stage=live.stage if live else None,
            progress=round(progress, 4), error=models.ErrorInfo(**item.error) if item.error else None,
            video_url=f"{self.settings.prefix}/jobs/{job.id}/items/{item.index}/video" if done else None,
            path=item.video if done else None, seed=item.seed, frames=item.frames, runs=item.runs, note=item.note,
            options=item.options)

    def _job_status(self, job: JobRecord) -> models.JobStatus:
        items = [self._item_status(job, item) for item in job.items]
        progress = sum(i.progress for i in items) / max(1, len(items))
        timed = [i.finished - i.started for i in job.items  # done items: failed ones stop early and say little
                 if i.state == DONE and i.started is not None and i.finished is not None]
        eta = None
        if timed and job.state in (QUEUED, RUNNING):
            per_item = sum(timed) / len(timed)
            eta = round(sum(per_item * (1.0 - i.progress) for i in items if i.state in (QUEUED, RUNNING)), 1)
        return models.JobStatus(id=job.id, state=job.state, created=job.created, finished=job.finished,
                                counts=job.counts(), progress=round(progress, 4), eta_seconds=eta, items=items)

    def _job_or_404(self, job_id: str) -> JobRecord:
        job = self.store.job(job_id) if len(job_id) <= 64 else None
        if job is None:
            raise ApiError(404, "unknown_job", f"no job with id {job_id[:64]!r}")
        return job

    def _models_status(self) -> models.ModelsStatus:
        from ..checkpoints.check import check_folder
        from ..checkpoints.files import SADTALKER_FILES

        folder = self.host.models_dir
        stamp = tuple((wf.name, *(_stat(folder / wf.name))) for wf in SADTALKER_FILES)
        with self._models_lock:
            if self._models_cache is not None and self._models_cache[0] == stamp:
                return self._models_cache[1]
            files = [models.ModelFile(name=s.file.name, state=s.state, required_for=list(s.file.required_for),
                                      detail=redact(s.detail, None)) for s in check_folder(folder)]
            other = {"256": "512", "512": "256"}
            ready = {size: all(f.state == "ok" for f in files if other[size] not in f.required_for)
                     for size in other}
            status = models.ModelsStatus(ready=ready, files=files)
            self._models_cache = (stamp, status)
            return status

    # -- routes ---------------------------------------------------------------------------------------------
    def _build_router(self) -> APIRouter:
        settings = self.settings
        router = APIRouter(prefix=settings.prefix, tags=["SadTalker"],
                           route_class=_guarded_route_class(settings, lambda: self.host.outputs_dir),
                           responses=_ERRORS)
        basic = HTTPBasic(auto_error=False)  # shows the scheme in the OpenAPI document; the guard checks it
        auth = [Depends(basic)] if settings.credentials else []

        @router.post("/generate", response_model=models.GenerateResponse, dependencies=auth,
                     summary="One video from one image and one audio, answered when it is done")
        def generate(body: models.GenerateRequest):
            request = body.given()
            scratch_root = settings.data_dir / "tmp"
            scratch_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
                item = self._prepare(request, {}, Path(scratch), "", "input")
                options = GenerateOptions.from_dict(item["options"])
                folder = self.host.output_folder() if body.save else Path(scratch)
                if self.runner.backend is None:
                    result = self.host.generate(item["image"], item["audio"], options, output_dir=folder,
                                                output_stem=item["name"])
                    video_file, frames, warnings, seconds = (result.video, result.num_frames, result.warnings,
                                                             result.seconds)
                else:
                    done = self.runner.run_now(item["image"], item["audio"], options, folder, item["name"])
                    result, video_file, frames, warnings, seconds = (done, done.video, done.frames,
                                                                     list(done.warnings), done.stage_seconds)
                video = base64.b64encode(video_file.read_bytes()).decode("ascii") if body.send_video else None
                return models.GenerateResponse(video=video, path=str(video_file) if body.save else None,
                                               seed=result.seed, frames=frames, fps=FPS,
                                               options={**item["options"], "seed": result.seed},
                                               warnings=warnings, seconds=seconds)

        @router.post("/jobs", status_code=202, response_model=models.JobCreated, dependencies=auth,
                     summary="A batch of videos, run one at a time in the background")
        def create_job(body: models.JobRequest):
            request = body.given()
            job_id = uuid.uuid4().hex
            folder = self.inputs_dir / job_id
            try:
                shared = self._shared_inputs(request, folder)
                items = [self._prepare(item, shared, folder, f"items[{n}].", n)
                         for n, item in enumerate(request["items"])]
                self.store.create_job(job_id, request.get("options") or {}, items)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.runner.wake()
            return models.JobCreated(id=job_id, state=QUEUED, items=len(items),
                                     url=f"{settings.prefix}/jobs/{job_id}")

        @router.get("/jobs", response_model=models.JobList, dependencies=auth, summary="Jobs, newest first")
        def list_jobs(limit: int = Query(50, ge=1, le=1000)):
            return models.JobList(jobs=[models.JobSummary(id=j.id, state=j.state, created=j.created,
                                                          finished=j.finished, counts=j.counts())
                                        for j in self.store.jobs(limit)])

        @router.get("/jobs/{job_id}", response_model=models.JobStatus, dependencies=auth,
                    summary="A job's state, each item's progress, result or named error, and an ETA")
        def get_job(job_id: str):
            return self._job_status(self._job_or_404(job_id))

        @router.delete("/jobs/{job_id}", response_model=models.JobStatus, dependencies=auth,
                       summary="Cancel a job: queued items at once, the running one at its next batch of frames")
        def cancel_job(job_id: str):
            job = self._job_or_404(job_id)
            if not self.store.cancel_job(job_id):
                already = "is already being cancelled" if job.cancel_requested else f"has finished ({job.state})"
                raise ApiError(409, "not_cancellable", f"job {job_id} {already}; nothing to cancel")
            self.runner.forget_inputs_when_finished(job_id)
            return self._job_status(self._job_or_404(job_id))

        @router.get("/jobs/{job_id}/items/{index}/video", dependencies=auth, response_class=FileResponse,
                    summary="The MP4 of a finished item",
                    responses={200: {"content": {"video/mp4": {}}, "description": "the video"}})
        def item_video(job_id: str, index: int):
            job = self._job_or_404(job_id)
            if not 0 <= index < len(job.items):
                raise ApiError(404, "unknown_item", f"job {job_id} has items 0 to {len(job.items) - 1}")
            item = job.items[index]
            if item.state != DONE or not item.video:
                raise ApiError(409, "no_video", f"item {index} is {item.state}; it has no video")
            path = Path(item.video)
            if not path.is_file():
                raise ApiError(410, "video_removed", f"the video of item {index} has been removed from the outputs")
            return FileResponse(path, media_type="video/mp4", filename=path.name)

        @router.get("/options", response_model=models.OptionsDescription, dependencies=auth,
                    summary="Every option with its type, default and range")
        def describe_options():
            return models.OptionsDescription(options=models.option_descriptions(),
                                             enhancers=self.host.enhancer_names())

        @router.get("/models", response_model=models.ModelsStatus, dependencies=auth,
                    summary="Each checkpoint file: present and verified, missing, or corrupt")
        def model_files():
            return self._models_status()

        @router.get("/version", response_model=models.VersionInfo, dependencies=auth, summary="Versions")
        def version():
            import pydantic

            return models.VersionInfo(version=__version__, api="v1", host=self.host.name,
                                      pydantic=pydantic.VERSION, device=str(self.host.device))

        return router


def _file_safe(stem: str) -> str:
    """Output names keep letters, digits and `-_.() `; anything else becomes `_` (no folders, no hidden files)."""
    return _UNSAFE_NAME.sub("_", stem).strip(" .")[:models.MAX_NAME] or "video"


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns
    except OSError:
        return -1, -1


def register(app: FastAPI, host: Host, settings: ApiSettings) -> ApiService:
    """Add the routes to an app that is already running (the WebUI's) and start the worker."""
    service = ApiService(host, settings)
    app.include_router(service.router)
    service.start()
    return service


def create_app(host: Host, settings: ApiSettings, backend: BatchBackend | None = None) -> FastAPI:
    """The standalone server's app: the same routes, the worker started and stopped with the app. With a batch
    backend (a Ray cluster), items and POST /generate run there instead of in this process."""
    service = ApiService(host, settings, backend)
    app = FastAPI(title="SadTalker API", version=__version__,
                  description="Talking-head videos from a photo and speech: one at a time or as batch jobs.")
    app.include_router(service.router)
    app.add_event_handler("startup", service.start)
    app.add_event_handler("shutdown", service.stop)
    app.state.sadtalker = service
    return app


def exclusive() -> Callable[..., Any]:
    """A run_exclusive for a standalone Host: /generate and the job worker never render at the same time."""
    lock = threading.Lock()

    def run(job: Callable[[], Any], job_id: str | None = None) -> Any:
        with lock:
            return job()

    return run


__all__ = ["ApiService", "ApiSettings", "PREFIX", "create_app", "exclusive", "parse_credentials", "register"]
