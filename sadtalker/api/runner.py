"""One worker thread that takes job items from the store, runs them, and records every outcome there.

Without a backend it runs one item at a time through `Host.generate` (so the WebUI's queue lock, progress bar and
Interrupt apply). With a batch backend (`serve --ray ADDRESS`: `sadtalker.batch_ray.RayBackend`) it hands items to
the backend, as many at once as it has workers, and the cluster's actors run them with their own loaded models;
the server process then loads none.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

from ..batch import BatchBackend, ItemResult, PlannedItem, ProgressEvent
from ..errors import Cancelled, SadTalkerError, error_for
from ..host import Host
from ..options import GenerateOptions
from ..video import unique_output_path
from .inputs import redact
from .store import CANCELLED, DONE, FAILED, FINISHED, ItemRecord, JobStore

log = logging.getLogger("sadtalker")

# where a running item is, as a fraction of its run (render dominates)
_STAGE_START = {"load": 0.0, "face": 0.02, "audio": 0.08, "motion": 0.1, "render": 0.15, "encode": 0.95, "done": 1.0}
_RENDER_SHARE = 0.8
_SHUTDOWN_NOTE = "the server was shut down while this item was running; it was run again from the start"


@dataclass
class LiveProgress:
    stage: str
    fraction: float

    @classmethod
    def of(cls, stage: str, done: int, total: int) -> LiveProgress:
        fraction = _STAGE_START.get(stage, 0.0)
        if stage == "render" and total:
            fraction += _RENDER_SHARE * done / total
        return cls(stage, fraction)


@dataclass
class _Dispatched:
    """An item handed to the backend."""

    item: ItemRecord
    future: Future
    output: Path
    cancel_sent: bool = False


class JobRunner:
    def __init__(self, host: Host, store: JobStore, inputs_dir: Path, backend: BatchBackend | None = None):
        self.host = host
        self.store = store
        self.inputs_dir = Path(inputs_dir)
        self.backend = backend
        self._live: dict[tuple[str, int], LiveProgress] = {}
        self._dispatched: dict[tuple[str, int], _Dispatched] = {}
        self._reserved: set[Path] = set()  # outputs promised to items still running on the backend
        self._naming = threading.Lock()  # the worker and POST /generate pick names at the same time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if backend is not None:
            backend.on_progress = self._on_backend_progress

    def start(self) -> None:
        if self._thread is not None:
            return
        requeued = self.store.recover()
        if requeued:
            log.warning("sadtalker api: %d item(s) were running when the server stopped; they run again",
                        len(requeued))
            self._remove_partial_files([item.name for item in requeued])
        self._thread = threading.Thread(target=self._loop, name="sadtalker-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch of frames; the item it was on runs again next time."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.backend is not None:
            self.backend.close()

    def wake(self) -> None:
        self._wake.set()

    def progress(self, job_id: str, index: int) -> LiveProgress | None:
        return self._live.get((job_id, index))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.backend is None:
                    self._run_next_here()
                else:
                    self._dispatch_next()
            except Exception:  # the store itself failed: keep the worker alive, try again shortly
                log.exception("sadtalker api: job worker error")
                time.sleep(1.0)
        if self.backend is not None:
            self._abandon_dispatched()

    def _run_next_here(self) -> None:
        item = self.store.next_queued()
        if item is None:
            self._wake.wait(timeout=2.0)
            self._wake.clear()
            return
        self._run(item)

    def _run(self, item: ItemRecord) -> None:
        key = (item.job_id, item.index)
        if not self.store.start_item(item.job_id, item.index):
            return
        self._live[key] = LiveProgress("load", 0.0)

        def on_progress(stage: str, done: int, total: int) -> None:
            self._live[key] = LiveProgress.of(stage, done, total)

        def should_cancel() -> bool:
            return self._stop.is_set() or self.store.cancel_requested(item.job_id)

        try:
            options = GenerateOptions.from_dict(item.options)
            result = self.host.generate(item.image, item.audio, options, on_progress=on_progress,
                                        should_cancel=should_cancel, output_stem=item.name,
                                        extra_metadata={"job": item.job_id, "item": item.index})
        except Cancelled:
            if self._stop.is_set() and not self.store.cancel_requested(item.job_id):
                self.store.requeue_item(item.job_id, item.index, _SHUTDOWN_NOTE)
            else:
                by = "cancelled" if self.store.cancel_requested(item.job_id) else "interrupted by the host"
                self.store.finish_item(item.job_id, item.index, CANCELLED,
                                       error={"code": "cancelled", "message": f"{by} while running; no video"})
        except SadTalkerError as exc:
            self.store.finish_item(item.job_id, item.index, FAILED,
                                   error={"code": exc.code, "message": redact(exc.message, self.host.outputs_dir),
                                          **({"option": exc.option} if exc.option else {})})
        except Exception:
            log.exception("sadtalker api: item %d of job %s failed unexpectedly", item.index, item.job_id)
            self.store.finish_item(item.job_id, item.index, FAILED,
                                   error={"code": "internal_error",
                                          "message": "an unexpected error stopped this item; the server log has it"})
        else:
            self.store.finish_item(item.job_id, item.index, DONE, video=str(result.video), seed=result.seed,
                                   frames=result.num_frames)
        finally:
            self._live.pop(key, None)
        self.forget_inputs_when_finished(item.job_id)

    # -- through a backend ------------------------------------------------------------------------------------
    def _dispatch_next(self) -> None:
        """One turn: record what finished, pass cancels on, hand out a queued item if a worker is free, else wait
        for a result or a new job."""
        self._collect_finished()
        self._send_cancels()
        if len(self._dispatched) < max(1, self.backend.workers):
            item = self.store.next_queued()
            if item is not None:
                self._dispatch(item)
                return
        if self._dispatched:
            wait([d.future for d in self._dispatched.values()], timeout=0.5, return_when=FIRST_COMPLETED)
        else:
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _dispatch(self, item: ItemRecord) -> None:
        key = (item.job_id, item.index)
        if not self.store.start_item(item.job_id, item.index):
            return
        try:
            options = GenerateOptions.from_dict(item.options)
            output = self._reserve(self.host.output_folder(), item.name)
        except (SadTalkerError, OSError) as exc:
            error = exc if isinstance(exc, SadTalkerError) else error_for("output_unwritable", str(exc))
            self._record(item, ItemResult(item.index, item.name, code=error.code, message=error.message,
                                          option=error.option))
            return
        planned = PlannedItem(item.index, item.name, Path(item.image), Path(item.audio) if item.audio else None,
                              options, output, batch_id=item.job_id)
        self._live[key] = LiveProgress("queued", 0.0)
        self._dispatched[key] = _Dispatched(item, self.backend.submit(planned), output)

    def _reserve(self, folder: Path, stem: str) -> Path:
        with self._naming:
            output = unique_output_path(folder, stem, reserved=self._reserved)
            self._reserved.add(output)
        return output

    def _on_backend_progress(self, event: ProgressEvent) -> None:
        key = (event.batch_id, event.index)
        if key in self._dispatched:
            self._live[key] = LiveProgress.of(event.stage, event.done, event.total)

    def _send_cancels(self) -> None:
        for dispatched in self._dispatched.values():
            if not dispatched.cancel_sent and self.store.cancel_requested(dispatched.item.job_id):
                dispatched.cancel_sent = True
                self.backend.cancel(dispatched.future)

    def _collect_finished(self) -> None:
        for key, dispatched in [(k, d) for k, d in self._dispatched.items() if d.future.done()]:
            del self._dispatched[key]
            self._reserved.discard(dispatched.output)
            self._live.pop(key, None)
            item = dispatched.item
            if dispatched.future.cancelled():
                result = ItemResult(item.index, item.name, code=Cancelled.code, message="cancelled before it started")
            else:
                result = dispatched.future.result()
            self._record(item, result)

    def _record(self, item: ItemRecord, result: ItemResult) -> None:
        if result.ok:
            self.store.finish_item(item.job_id, item.index, DONE, video=str(result.video), seed=result.seed,
                                   frames=result.frames)
        elif result.code == Cancelled.code:
            self.store.finish_item(item.job_id, item.index, CANCELLED,
                                   error={"code": "cancelled", "message": "cancelled while running; no video"})
        else:
            self.store.finish_item(item.job_id, item.index, FAILED,
                                   error={"code": result.code, "message": redact(result.message or "",
                                                                                 self.host.outputs_dir),
                                          **({"option": result.option} if result.option else {})})
        self.forget_inputs_when_finished(item.job_id)

    def _abandon_dispatched(self) -> None:
        """The server stops: what the backend still runs is cancelled and runs again, from the start, next time."""
        for dispatched in self._dispatched.values():
            self.backend.cancel(dispatched.future)
            if not self.store.cancel_requested(dispatched.item.job_id):
                self.store.requeue_item(dispatched.item.job_id, dispatched.item.index, _SHUTDOWN_NOTE)
        self._dispatched.clear()

    def run_now(self, image: str, audio: str | None, options: GenerateOptions, output_dir: Path,
                stem: str) -> ItemResult:
        """One item through the backend, waited for (the API's POST /generate). A failed item raises its named
        error, as Host.generate would."""
        output = self._reserve(output_dir, stem)
        try:
            planned = PlannedItem(0, stem, Path(image), Path(audio) if audio else None, options, output,
                                  batch_id=f"generate-{time.time_ns():x}")
            result = self.backend.submit(planned).result()
        finally:
            self._reserved.discard(output)
        if not result.ok:
            raise error_for(result.code or "", result.message or "", result.option)
        return result

    def _remove_partial_files(self, stems: list[str]) -> None:
        """The temporary files a killed run left (the writer publishes a video only when it is complete, under
        a hidden temporary name until then): `.<stem>[-N].mp4.<hex>.part` and its sidecar's. Stems are the
        file-safe names the service stored."""
        if not self.host.outputs_dir.is_dir():
            return
        names = "|".join(re.escape(stem) for stem in stems)
        pattern = re.compile(rf"^\.(?:{names})(?:-\d+)?\.(?:mp4|json)\.[0-9a-f]{{8}}\.(?:video\.)?part$")
        for day in self.host.outputs_dir.iterdir():
            if not day.is_dir():
                continue
            for leftover in day.iterdir():
                if pattern.match(leftover.name):
                    leftover.unlink(missing_ok=True)
                    log.info("sadtalker api: removed the unfinished %s", leftover.name)

    def forget_inputs_when_finished(self, job_id: str) -> None:
        """A finished job needs its uploaded inputs no more (its records and videos stay)."""
        job = self.store.job(job_id)
        if job is not None and all(i.state in FINISHED for i in job.items):
            shutil.rmtree(self.inputs_dir / job_id, ignore_errors=True)
