"""The Ray backend of a batch: one actor per worker (per GPU on CUDA), each holding its own loaded models.

Optional: `pip install "sd-webui-sadtalker[ray]"`; Ray is imported only when this backend is built. Every node
must see the same models folder, the inputs and the output folder at the same paths (a shared file system), and
have this package installed.

Items are handed out by a dispatcher thread in the driver, one at a time to whichever actor is free, so a slow
item never holds up the others. When an actor's process dies, Ray restarts it (bounded by `max_attempts`) and the
dispatcher re-queues the item it was running; an item whose video an earlier attempt already published is not
redone (`sadtalker.batch.published_by`), and a partial file is never published (VideoWriter renames a complete
file into place). `cancel` maps to `ray.cancel`, which the running item sees at its next frame batch.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch import ItemResult, ItemRunner, PlannedItem, ProgressCallback, ProgressEvent
from .errors import Cancelled, InvalidInput, MissingDependency

log = logging.getLogger("sadtalker")

WORKER_LOST = "worker_lost"  # the code of an item whose worker died more often than it may be retried
# Ray binds its servers to the address it picks for the node; with this set to 0 before Ray is imported it picks
# the loopback address, so a local cluster never listens on (or talks over) the network.
_LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(*, loopback_only: bool = False):
    """`ray`, or MissingDependency naming the extra to install."""
    if loopback_only:
        if "ray" not in sys.modules:
            os.environ.setdefault(_LOOPBACK_ONLY_ENV, "0")
        elif os.environ.get(_LOOPBACK_ONLY_ENV) != "0":
            log.warning("Ray was imported before the local cluster was asked for; it may listen on the network "
                        "address too (set %s=0 before importing ray to keep it on 127.0.0.1)", _LOOPBACK_ONLY_ENV)
    try:
        import ray
    except ImportError:
        raise MissingDependency('the Ray backend needs Ray: pip install "sd-webui-sadtalker[ray]"') from None
    _check_pydantic(ray.__version__)
    return ray


def _check_pydantic(ray_version: str) -> None:
    """Ray 2.56+ refuses pydantic 1 (the WebUI's) when a node starts; say so before a cluster half-starts."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pydantic_major = int(version("pydantic").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return
    ray_minor = tuple(int(p) for p in ray_version.split(".")[:2] if p.isdigit())
    if pydantic_major < 2 and ray_minor >= (2, 56):
        raise MissingDependency(f"Ray {ray_version} needs pydantic 2, and this environment has pydantic 1 "
                                '(as the WebUI does): pip install "ray>=2.10,<2.56"')


def connect(address: str) -> bool:
    """Start (`local`) or join (`auto`, `HOST:PORT`, `ray://HOST:PORT`) a cluster. -> whether we started Ray here
    (and so should shut it down)."""
    ray = import_ray(loopback_only=address == "local")
    if ray.is_initialized():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notices about its own future defaults
        if address == "local":
            ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count() or 1,
                     _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
    return True


class RayWorker:
    """The actor: one pipeline, models loaded on the first item and kept. Runs one item at a time; a second thread
    answers `progress()` while an item runs."""

    def __init__(self, models_dir: str, device: str, allow_download: bool, threads: int | None):
        import torch

        from .pipeline import SadTalkerPipeline

        if threads:
            torch.set_num_threads(threads)
        self.runner = ItemRunner(SadTalkerPipeline(models_dir, device=device, allow_download=allow_download))
        self.last: ProgressEvent | None = None

    def ready(self) -> str:
        from .batch import worker_label

        return worker_label()

    def run(self, item: PlannedItem, attempt: int) -> ItemResult:
        import ray

        context = ray.get_runtime_context()

        def remember(event: ProgressEvent) -> None:
            self.last = event

        return self.runner.run(item, on_progress=remember, should_cancel=context.is_canceled, attempt=attempt)

    def progress(self) -> ProgressEvent | None:
        return self.last


@dataclass
class _Job:
    item: PlannedItem
    future: Future
    attempt: int = 1
    started: bool = False  # its future is running (a retried item's is)


@dataclass
class _Slot:
    """One actor as the dispatcher sees it."""

    actor: Any
    ping: Any = None  # a ready() call in flight: the actor is (re)starting
    job: _Job | None = None
    run_ref: Any = None
    progress_ref: Any = None
    polled: float = 0.0
    dead: bool = False
    worker: str = ""  # host:pid of the actor's process, as its last ready() answered
    last_event: ProgressEvent | None = field(default=None, repr=False)


class RayBackend:
    """Runs planned items on a Ray cluster. `submit(item) -> Future[ItemResult]`, `cancel(future)`, `close()`."""

    def __init__(self, address: str = "local", *, models_dir: str | Path, device: str = "cpu",
                 workers: int | None = None, threads_per_worker: int | None = None, allow_download: bool = False,
                 max_attempts: int = 3, on_progress: ProgressCallback | None = None, poll_seconds: float = 0.5):
        self._ray = ray = import_ray(loopback_only=address == "local")
        self._owns_ray = connect(address)
        resources = ray.cluster_resources()
        if device == "cuda":
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise InvalidInput("--device cuda: the Ray cluster has no GPU; use --device cpu", option="device")
            count = workers or gpus
            # the face detector, the paste-back and the H.264 encoder still run on CPU: --threads reserves cores
            actor_resources = {"num_gpus": 1, "num_cpus": threads_per_worker or 1}
        else:
            count = workers or max(1, len([n for n in ray.nodes() if n.get("Alive")]))
            cpus = int(resources.get("CPU", 1))
            threads_per_worker = threads_per_worker or max(1, cpus // count)
            actor_resources = {"num_cpus": min(threads_per_worker, cpus)}
        self.max_attempts = max_attempts
        self.on_progress = on_progress
        self.poll_seconds = poll_seconds
        actor_class = ray.remote(RayWorker).options(max_restarts=max_attempts, max_task_retries=0, max_concurrency=2,
                                                    **actor_resources)
        self._slots = [_Slot(actor_class.remote(str(Path(models_dir).resolve()), device, allow_download,
                                                threads_per_worker)) for _ in range(count)]
        for slot in self._slots:
            slot.ping = slot.actor.ready.remote()
        self._queue: deque[_Job] = deque()
        self._running: dict[Future, _Slot] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="sadtalker-ray-dispatch", daemon=True)
        self._thread.start()

    @property
    def workers(self) -> int:
        return len(self._slots)

    # -- the interface ----------------------------------------------------------------------------------------
    def submit(self, item: PlannedItem) -> Future:
        future: Future = Future()
        with self._lock:
            self._queue.append(_Job(item, future))
        self._emit(ProgressEvent(item.index, "queued", batch_id=item.batch_id))
        return future

    def cancel(self, future: Future) -> None:
        with self._lock:
            slot = self._running.get(future)
            if slot is None:
                if not future.cancel():  # queued for a retry: its future already runs
                    for job in [j for j in self._queue if j.future is future]:
                        self._queue.remove(job)
                        future.set_result(ItemResult(job.item.index, job.item.label, code=Cancelled.code,
                                                     message="cancelled before its retry", attempts=job.attempt))
                return
            ref = slot.run_ref
        self._ray.cancel(ref)  # the item stops at its next frame batch and reports `cancelled`

    def close(self) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            if not job.future.cancel():  # waiting for a retry: its future already runs, so it gets a result
                job.future.set_result(ItemResult(job.item.index, job.item.label, code=Cancelled.code,
                                                 message="cancelled before its retry", attempts=job.attempt))
        for future in list(self._running):
            self.cancel(future)
        self._closed.set()
        self._thread.join(timeout=60)
        for slot in self._slots:
            self._ray.kill(slot.actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()

    # -- the dispatcher ---------------------------------------------------------------------------------------
    def _emit(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(event)
            except Exception:  # a broken progress display must not stop the batch
                log.exception("progress callback failed")

    def _dispatch(self) -> None:
        while not (self._closed.is_set() and not self._running):
            self._hand_out()
            refs = [r for s in self._slots for r in (s.ping, s.run_ref, s.progress_ref) if r is not None]
            if not refs:
                self._fail_queued_if_no_worker()
                time.sleep(self.poll_seconds / 5)
                continue
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=self.poll_seconds / 5)
            ready_set = set(ready)
            for slot in self._slots:
                if slot.ping is not None and slot.ping in ready_set:
                    self._on_ping(slot)
                if slot.progress_ref is not None and slot.progress_ref in ready_set:
                    self._on_progress(slot)
                if slot.run_ref is not None and slot.run_ref in ready_set:
                    self._on_finished(slot)
            self._poll_progress()

    def _hand_out(self) -> None:
        started = []
        with self._lock:
            for slot in self._slots:
                if slot.dead or slot.ping is not None or slot.job is not None:
                    continue
                job = self._next_job()
                if job is None:
                    break
                slot.job, slot.run_ref, slot.last_event = job, slot.actor.run.remote(job.item, job.attempt), None
                self._running[job.future] = slot
                started.append(ProgressEvent(job.item.index, "started", worker=slot.worker, attempt=job.attempt,
                                             batch_id=job.item.batch_id))
        for event in started:  # said here: the actor's own "started" is overwritten before the first poll
            self._emit(event)

    def _next_job(self) -> _Job | None:
        while self._queue:
            job = self._queue.popleft()
            if job.started or job.future.set_running_or_notify_cancel():
                job.started = True
                return job
        return None

    def _on_ping(self, slot: _Slot) -> None:
        ray = self._ray
        try:
            slot.worker = ray.get(slot.ping)
        except ray.exceptions.RayError as exc:
            log.warning("a Ray worker could not start and is given up: %s", exc)
            slot.dead = True
        slot.ping = None

    def _on_progress(self, slot: _Slot) -> None:
        try:
            event = self._ray.get(slot.progress_ref)
        except self._ray.exceptions.RayError:
            event = None  # the actor died; its running item reports that
        slot.progress_ref = None
        if event is not None and event.stage != "started" and slot.job is not None \
                and event.index == slot.job.item.index and (
                slot.last_event is None or (event.stage, event.done) != (slot.last_event.stage, slot.last_event.done)):
            slot.last_event = event
            self._emit(event)

    def _on_finished(self, slot: _Slot) -> None:
        ray = self._ray
        job, ref = slot.job, slot.run_ref
        assert job is not None
        with self._lock:
            slot.job = slot.run_ref = None
            self._running.pop(job.future, None)
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            result = ItemResult(job.item.index, job.item.label, code=Cancelled.code,
                                message="cancelled; no video was written", attempts=job.attempt)
        except ray.exceptions.RayError as exc:
            slot.ping = slot.actor.ready.remote()  # Ray restarts the actor; hand it work once it answers
            if job.attempt < self.max_attempts and not self._closed.is_set():
                log.warning("%s: its worker died (%s); retrying (attempt %d of %d)", job.item.label,
                            type(exc).__name__, job.attempt + 1, self.max_attempts)
                self._emit(ProgressEvent(job.item.index, "retrying", attempt=job.attempt + 1,
                                         batch_id=job.item.batch_id))
                with self._lock:
                    self._queue.appendleft(_Job(job.item, job.future, job.attempt + 1, started=True))
                return
            result = ItemResult(job.item.index, job.item.label, code=WORKER_LOST,
                                message=f"its worker died {job.attempt} times ({type(exc).__name__})",
                                attempts=job.attempt)
        job.future.set_result(result)

    def _fail_queued_if_no_worker(self) -> None:
        if not all(slot.dead for slot in self._slots):
            return
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            if job.started or job.future.set_running_or_notify_cancel():
                job.future.set_result(ItemResult(job.item.index, job.item.label, code=WORKER_LOST,
                                                 message="no Ray worker is left to run it", attempts=job.attempt))

    def _poll_progress(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.job is not None and slot.progress_ref is None and now - slot.polled >= self.poll_seconds:
                slot.progress_ref, slot.polled = slot.actor.progress.remote(), now
