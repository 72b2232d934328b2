"""What differs between the places the core runs in: the WebUI, the standalone app, the HTTP server.

A `Host` hands the UI and the API the models folder, the outputs folder, the device and dtype, how a job runs
(the WebUI's queue lock, so a talking head never runs beside txt2img), progress and interrupt, and extra
enhancers (the WebUI's own face restorers). `Host.generate` is the one way a front end makes a video: under the
lock, into `outputs/<date>/` under a new name, with the host's interrupt and the caller's cancel both honoured.

This module imports no WebUI module: `scripts/` builds a Host from `modules.shared`.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .options import GenerateOptions
from .video import unique_output_path

T = TypeVar("T")
ProgressCallback = Callable[[str, int, int], None]
Restorer = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 RGB face -> restored face of the same size


def _run_directly(job: Callable[[], T], job_id: str | None = None) -> T:
    return job()


@dataclass
class Host:
    """The environment one UI or API instance runs in. Build one per process and keep it: it owns the pipeline
    (models stay loaded between runs until `unload()`)."""

    models_dir: Path
    outputs_dir: Path  # videos go to outputs_dir/<YYYY-MM-DD>/
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    allow_download: bool = True
    # run_exclusive(job) runs job() alone, e.g. under the WebUI's queue lock. For a page's run it is called as
    # run_exclusive(job, job_id=ID): the id the host's own progress display follows (the WebUI's progress bar); a
    # run_exclusive that takes only `job` is fine for hosts without one
    run_exclusive: Callable[..., Any] = _run_directly
    on_progress: ProgressCallback | None = None  # mirrors progress into the host (the WebUI's progress bar)
    is_interrupted: Callable[[], bool] = lambda: False  # the host's own Interrupt button
    extra_enhancers: dict[str, Restorer] = field(default_factory=dict)  # name -> restorer, shown beside ours
    name: str = "standalone"
    _pipeline: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.outputs_dir = Path(self.outputs_dir)

    @property
    def pipeline(self):
        """The one SadTalkerPipeline of this host, built on first use."""
        with self._lock:
            if self._pipeline is None:
                from .pipeline import SadTalkerPipeline

                self._pipeline = SadTalkerPipeline(self.models_dir, device=self.device, dtype=self.dtype,
                                                   allow_download=self.allow_download,
                                                   enhancer_factory=self._enhancer_factory)
            return self._pipeline

    def enhancer_names(self) -> list[str]:
        """Every enhancer a user can pick here: ours, then the host's."""
        from typing import get_args

        from .options import Enhancer

        return list(get_args(Enhancer)) + [name for name in self.extra_enhancers if name not in get_args(Enhancer)]

    def _enhancer_factory(self, name: str):
        """The host's own restorer named `name`, or None: the pipeline then loads ours."""
        return _RestorerEnhancer(self.extra_enhancers[name]) if name in self.extra_enhancers else None

    def output_folder(self, day: datetime.date | None = None) -> Path:
        """outputs_dir/<YYYY-MM-DD>/ (created when a video is written)."""
        return self.outputs_dir / (day or datetime.date.today()).isoformat()

    def generate(self, image, audio, options: GenerateOptions, *, on_progress: ProgressCallback | None = None,
                 should_cancel: Callable[[], bool] | None = None, output_dir: Path | None = None,
                 extra_metadata: dict | None = None, output_stem: str | None = None, job_id: str | None = None):
        """One video, under the host's lock, into a new file in today's output folder. -> TalkingHeadResult.

        The file is named after the inputs (`photo__speech.mp4`), or `output_stem` (`name.mp4`, `name-1.mp4`, ...).

        `on_progress` gets (stage, done, total) as well as the host's own progress; the run stops at the next
        batch of frames when the host is interrupted or `should_cancel()` says so (raising `Cancelled`).
        `job_id` goes to `run_exclusive` (the id the page's host-side progress display follows).
        """

        def progress(stage: str, done: int, total: int) -> None:
            for callback in (self.on_progress, on_progress):
                if callback is not None:
                    callback(stage, done, total)

        def cancelled() -> bool:
            return bool(self.is_interrupted() or (should_cancel is not None and should_cancel()))

        def job():
            folder = output_dir or self.output_folder()
            # the name is picked under the lock, so two queued runs with the same stem get different files
            output = unique_output_path(folder, output_stem) if output_stem else None
            return self.pipeline.generate(image, audio, options, output=output, output_dir=folder,
                                          on_progress=progress, should_cancel=cancelled,
                                          extra_metadata={"host": self.name, **(extra_metadata or {})})

        return self.run_exclusive(job) if job_id is None else self.run_exclusive(job, job_id=job_id)

    def unload(self) -> None:
        """Free every loaded model (the UI's "Unload models" button)."""
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.unload()


class _RestorerEnhancer:
    """A host restorer behind the pipeline's enhancer interface (`restore(face) -> face`)."""

    def __init__(self, restore: Restorer):
        self._restore = restore

    def restore(self, face: np.ndarray) -> np.ndarray:
        restored = np.asarray(self._restore(face))
        if restored.shape != face.shape:
            import cv2

            restored = cv2.resize(restored, (face.shape[1], face.shape[0]), interpolation=cv2.INTER_AREA)
        return restored.astype(np.uint8, copy=False)
