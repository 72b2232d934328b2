"""One worker thread that runs job items one at a time, each through `Host.generate` (so the WebUI's queue lock,
progress bar and Interrupt apply), and records every outcome in the job store."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import Cancelled, SadTalkerError
from ..host import Host
from ..options import GenerateOptions
from .inputs import redact
from .store import CANCELLED, DONE, FAILED, FINISHED, ItemRecord, JobStore

log = logging.getLogger("sadtalker")

# where a running item is, as a fraction of its run (render dominates)
_STAGE_START = {"load": 0.0, "face": 0.02, "audio": 0.08, "motion": 0.1, "render": 0.15, "encode": 0.95, "done": 1.0}
_RENDER_SHARE = 0.8


@dataclass
class LiveProgress:
    stage: str
    fraction: float


class JobRunner:
    def __init__(self, host: Host, store: JobStore, inputs_dir: Path):
        self.host = host
        self.store = store
        self.inputs_dir = Path(inputs_dir)
        self._live: dict[tuple[str, int], LiveProgress] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def wake(self) -> None:
        self._wake.set()

    def progress(self, job_id: str, index: int) -> LiveProgress | None:
        return self._live.get((job_id, index))

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self.store.next_queued()
            if item is None:
                self._wake.wait(timeout=2.0)
                self._wake.clear()
                continue
            try:
                self._run(item)
            except Exception:  # the store itself failed: keep the worker alive, try again shortly
                log.exception("sadtalker api: job worker error")
                time.sleep(1.0)

    def _run(self, item: ItemRecord) -> None:
        key = (item.job_id, item.index)
        if not self.store.start_item(item.job_id, item.index):
            return
        self._live[key] = LiveProgress("load", 0.0)

        def on_progress(stage: str, done: int, total: int) -> None:
            fraction = _STAGE_START.get(stage, 0.0)
            if stage == "render" and total:
                fraction += _RENDER_SHARE * done / total
            self._live[key] = LiveProgress(stage, fraction)

        def should_cancel() -> bool:
            return self._stop.is_set() or self.store.cancel_requested(item.job_id)

        try:
            options = GenerateOptions.from_dict(item.options)
            result = self.host.generate(item.image, item.audio, options, on_progress=on_progress,
                                        should_cancel=should_cancel, output_stem=item.name,
                                        extra_metadata={"job": item.job_id, "item": item.index})
        except Cancelled:
            if self._stop.is_set() and not self.store.cancel_requested(item.job_id):
                self.store.requeue_item(item.job_id, item.index,
                                        "the server was shut down while this item was running; it was run again "
                                        "from the start")
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
