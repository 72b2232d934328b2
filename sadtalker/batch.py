"""Batches: many (portrait, speech) items, each an independent video, run by a backend.

A manifest (CSV with a header `image,audio[,name][,option columns…]`, or a JSON list of
`{"image", "audio", "name", "options"}` items) is read into `BatchItem`s; `plan_batch` turns each into a
`PlannedItem` (checked options, absolute input paths, the output file it will be published as) or, when the item
itself is wrong, straight into a failed `ItemResult`. A backend runs planned items and hands back one
`ItemResult` per item through a `concurrent.futures.Future`:

    backend.submit(item) -> Future[ItemResult]   # never raises for an item's own error: the result names it
    backend.cancel(future)                       # pending: dropped; running: stops at the next frame batch
    backend.close()

`LocalBackend` runs items one at a time in this process with one loaded pipeline; `sadtalker.batch_ray.RayBackend`
runs them on a Ray cluster, one actor per worker. Both run an item with the same `ItemRunner`, so an item gives the
same video either way. The HTTP API's job runner can submit its jobs to either backend the same way.

Option precedence for an item: its own column (or `options` entry) > the command line's flag > the default.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import AudioError, Cancelled, ImageError, InvalidInput, SadTalkerError
from .options import GenerateOptions, OptionSpec, option_spec
from .video import remove_abandoned_parts, sidecar_path, unique_output_path

log = logging.getLogger("sadtalker")

INPUT_COLUMNS = ("image", "audio", "name")
_LIST_SEPARATORS = re.compile(r"[\s,;]+")
_TRUE, _FALSE = {"1", "true", "yes", "on", "y"}, {"0", "false", "no", "off", "n"}


@dataclass(frozen=True)
class BatchItem:
    """One manifest row as written: paths as given, option values as given (CSV text or JSON values)."""

    index: int  # 0-based position in the manifest
    image: str
    audio: str | None
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")  # relative paths (inputs and reference videos) resolve against this folder

    @property
    def label(self) -> str:
        """How the item is named in messages: its name, else its row."""
        return self.name or f"item {self.index + 1}"


@dataclass(frozen=True)
class PlannedItem:
    """An item ready to run anywhere that sees the same files: absolute inputs, checked options, its output."""

    index: int
    label: str
    image: Path
    audio: Path | None
    options: GenerateOptions
    output: Path  # published atomically; a retried item whose output is already published is not redone
    batch_id: str

    @property
    def marker(self) -> dict[str, Any]:
        """Stored with the video: which batch item made it (how a retry recognises a finished item)."""
        return {"id": self.batch_id, "item": self.index}


@dataclass(frozen=True)
class ProgressEvent:
    index: int
    stage: str  # "queued", "started", or a pipeline stage (face, audio, motion, render, encode)
    done: int = 0
    total: int = 0
    worker: str = ""  # host:pid that runs the item
    attempt: int = 1
    batch_id: str = ""  # which batch (or API job) the item belongs to: indexes repeat across batches


@dataclass(frozen=True)
class ItemResult:
    index: int
    label: str
    video: Path | None = None
    code: str | None = None  # the named error's code when the item failed
    message: str | None = None
    option: str | None = None  # the option at fault, when the error names one
    seconds: float = 0.0
    worker: str = ""
    attempts: int = 1
    reused: bool = False  # the video was already published by an earlier attempt of this item
    stage_seconds: dict[str, float] = field(default_factory=dict)  # the pipeline's wall time per stage
    seed: int | None = None  # the seed the video was made with (a random one when the options gave none)
    frames: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code is None

    def line(self) -> str:
        """The command line's one line for this item."""
        if self.ok:
            return f"done     {self.label}: {self.video}"
        return f"failed   {self.label}: [{self.code}] {self.message}"


ProgressCallback = Callable[[ProgressEvent], None]


class BatchBackend(Protocol):
    on_progress: ProgressCallback | None  # events of every item, from the backend's own thread
    workers: int  # how many items it runs at once

    def submit(self, item: PlannedItem) -> Future: ...

    def cancel(self, future: Future) -> None: ...

    def close(self) -> None: ...


# -- the manifest -----------------------------------------------------------------------------------------------

def read_manifest(path: str | Path) -> list[BatchItem]:
    """A CSV (header `image,audio`, optional `name` and option columns) or a JSON list of items."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"manifest {path.name} cannot be read as UTF-8 text: {exc}") from None
    base = path.resolve().parent
    items = _json_items(text, path.name, base) if text.lstrip().startswith("[") else _csv_items(text, path.name, base)
    if not items:
        raise InvalidInput(f"manifest {path.name} lists no items")
    return items


def _csv_items(text: str, source: str, base: Path) -> list[BatchItem]:
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in reader.fieldnames or []]
    if "image" not in header or "audio" not in header:
        raise InvalidInput(f"manifest {source}: the header must name the columns image and audio; got "
                           f"{','.join(header) or 'nothing'}")
    for column in header:
        if column not in INPUT_COLUMNS:
            _known_option(column, source)
    items = []
    for row in reader:
        cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(cells.values()):
            continue  # blank line
        options = {k: v for k, v in cells.items() if k not in INPUT_COLUMNS and v != ""}
        items.append(BatchItem(index=len(items), image=cells.get("image", ""), audio=cells.get("audio") or None,
                               name=cells.get("name") or None, options=options, base_dir=base))
    return items


def _json_items(text: str, source: str, base: Path) -> list[BatchItem]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"manifest {source} is not valid JSON: {exc}") from None
    items = []
    for number, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise InvalidInput(f"manifest {source}: item {number + 1} must be an object with an image path")
        unknown = set(entry) - {"image", "audio", "name", "options"}
        if unknown:
            raise InvalidInput(f"manifest {source}: item {number + 1} has unknown keys {sorted(unknown)}; known: "
                               "image, audio, name, options")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidInput(f"manifest {source}: item {number + 1}: options must be an object")
        items.append(BatchItem(index=number, image=entry["image"], audio=entry.get("audio") or None,
                               name=entry.get("name") or None, options=dict(options), base_dir=base))
    return items


def _known_option(name: str, source: str) -> OptionSpec:
    try:
        return option_spec(name)
    except KeyError:
        raise InvalidInput(f"manifest {source}: unknown column {name!r}; a column is image, audio, name or an "
                           "option name (python -m sadtalker generate --help lists them)") from None


def cell_value(spec: OptionSpec, text: str) -> Any:
    """A CSV cell as the option's value (lists: numbers separated by spaces, commas or semicolons)."""
    text = text.strip()
    try:
        if spec.kind == "bool":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if spec.kind in ("int", "seed"):
            return int(text)
        if spec.kind == "float":
            return float(text)
        if spec.kind == "angles":
            return [float(v) for v in _LIST_SEPARATORS.split(text) if v]
        if spec.kind == "box":
            return [int(v) for v in _LIST_SEPARATORS.split(text) if v]
        if spec.kind == "choice":
            return type(spec.choices[0])(text)
        return text  # video: a path
    except ValueError:
        wanted = {"bool": "true or false", "int": "a whole number", "seed": "a whole number", "float": "a number",
                  "angles": "numbers in degrees", "box": "four whole numbers x0,y0,x1,y1"}.get(spec.kind, "a value")
        raise InvalidInput(f"{spec.name} must be {wanted}; got {text!r}", option=spec.name) from None


# -- planning ---------------------------------------------------------------------------------------------------

def item_options(item: BatchItem, base: GenerateOptions) -> GenerateOptions:
    """The item's own values over `base` (the command line's options over the defaults)."""
    values: dict[str, Any] = {}
    for name, value in item.options.items():
        try:
            spec = option_spec(name)
        except KeyError:  # GenerateOptions names the unknown option and lists the known ones
            values[name] = value
            continue
        if isinstance(value, str) and spec.kind != "video" and not (
                spec.kind == "choice" and isinstance(spec.choices[0], str)):
            value = cell_value(spec, value)
        if spec.kind == "video" and value:
            value = str(_resolve(item.base_dir, str(value)))
        values[name] = value
    return base.replace(**values) if values else base


def _resolve(base_dir: Path, path: str) -> Path:
    given = Path(path).expanduser()
    return given if given.is_absolute() else (base_dir / given).resolve()


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def plan_batch(items: Iterable[BatchItem], base: GenerateOptions, out_dir: str | Path,
               batch_id: str | None = None) -> list[PlannedItem | ItemResult]:
    """Each item checked and given its own output file (from `name`, else `<photo>__<audio>`; never an existing
    file, never the same as another item's). An item that cannot run becomes its failed ItemResult here."""
    from .pipeline import output_stem

    out_dir = Path(out_dir).resolve()
    batch_id = batch_id or new_batch_id()
    reserved: set[Path] = set()
    planned: list[PlannedItem | ItemResult] = []
    for item in items:
        try:
            options = item_options(item, base)
            image = _resolve(item.base_dir, item.image) if item.image else None
            if image is None or not image.is_file():
                raise ImageError(f"image not found: {item.image or '(empty)'}")
            audio = _resolve(item.base_dir, item.audio) if item.audio else None
            if audio is not None and not audio.is_file():
                raise AudioError(f"audio not found: {item.audio}")
            if audio is None and options.idle_seconds is None:
                raise InvalidInput("give an audio file, or idle_seconds for a video without speech", option="audio")
        except SadTalkerError as exc:
            planned.append(ItemResult(item.index, item.label, code=exc.code, message=exc.message, attempts=0))
            continue
        output = unique_output_path(out_dir, item.name or output_stem(image, audio), reserved=reserved)
        reserved.add(output)
        planned.append(PlannedItem(item.index, item.name or output.stem, image, audio, options, output, batch_id))
    return planned


# -- running one item -------------------------------------------------------------------------------------------

def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def published_by(item: PlannedItem) -> bool:
    """Whether `item.output` is the finished video of this very item (an earlier attempt published it)."""
    if not item.output.is_file():
        return False
    try:
        record = json.loads(sidecar_path(item.output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("batch") == item.marker


class ItemRunner:
    """Runs planned items with one pipeline kept loaded (models load on the first item, then stay)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def run(self, item: PlannedItem, *, on_progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None, attempt: int = 1) -> ItemResult:
        worker = worker_label()
        started = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - started

        if published_by(item):
            log.info("%s: already published by an earlier attempt: %s", item.label, item.output)
            return ItemResult(item.index, item.label, video=item.output, worker=worker, attempts=attempt, reused=True)

        def progress(stage: str, done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(ProgressEvent(item.index, stage, done, total, worker, attempt, item.batch_id))

        if attempt > 1:  # the worker of the attempt before was killed mid-write: its hidden parts are orphans
            remove_abandoned_parts(item.output)
        progress("started", 0, 1)
        try:
            result = self.pipeline.generate(item.image, item.audio, item.options, output=item.output,
                                            on_progress=progress, should_cancel=should_cancel,
                                            extra_metadata={"batch": item.marker, "worker": worker})
        except SadTalkerError as exc:
            return ItemResult(item.index, item.label, code=exc.code, message=exc.message, option=exc.option,
                              seconds=elapsed(), worker=worker, attempts=attempt)
        except Exception as exc:  # one broken item must not end the batch; the log keeps the traceback
            log.exception("%s failed unexpectedly", item.label)
            return ItemResult(item.index, item.label, code="internal_error", message=f"{type(exc).__name__}: {exc}",
                              seconds=elapsed(), worker=worker, attempts=attempt)
        return ItemResult(item.index, item.label, video=result.video, seconds=elapsed(), worker=worker,
                          attempts=attempt, stage_seconds=dict(result.seconds), seed=result.seed,
                          frames=result.num_frames, warnings=tuple(result.warnings))


# -- the local backend ------------------------------------------------------------------------------------------

class LocalBackend:
    """Items one at a time, in a background thread of this process, with one loaded pipeline."""

    workers = 1

    def __init__(self, pipeline, *, on_progress: ProgressCallback | None = None):
        self.runner = ItemRunner(pipeline)
        self.on_progress = on_progress
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sadtalker-batch")
        self._cancel_flags: dict[Future, threading.Event] = {}

    def submit(self, item: PlannedItem) -> Future:
        flag = threading.Event()
        future = self._executor.submit(self.runner.run, item, on_progress=self.on_progress, should_cancel=flag.is_set)
        self._cancel_flags[future] = flag
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(item.index, "queued", batch_id=item.batch_id))
        return future

    def cancel(self, future: Future) -> None:
        if not future.cancel():  # already running: stop at its next frame batch
            self._cancel_flags[future].set()

    def close(self) -> None:
        for future in list(self._cancel_flags):
            self.cancel(future)
        self._executor.shutdown(wait=True)


def run_batch(backend: BatchBackend, planned: list[PlannedItem | ItemResult]) -> Iterator[ItemResult]:
    """Every item's result, failed-at-planning ones first, then as items finish. Interrupting the loop (Ctrl-C)
    cancels what is left."""
    futures: dict[Future, PlannedItem] = {}
    for entry in planned:
        if isinstance(entry, ItemResult):
            yield entry
        else:
            futures[backend.submit(entry)] = entry
    try:
        for future in as_completed(futures):
            if future.cancelled():
                item = futures[future]
                yield ItemResult(item.index, item.label, code=Cancelled.code, message="cancelled before it started",
                                 attempts=0)
            else:
                yield future.result()
    finally:
        for future in futures:
            if not future.done():
                backend.cancel(future)


def summary_line(results: list[ItemResult], seconds: float) -> str:
    done = sum(r.ok for r in results)
    failed = len(results) - done
    rate = f", {done / seconds * 60:.1f} items/min" if seconds > 0 and done else ""
    return f"{done} of {len(results)} items done, {failed} failed in {seconds:.1f} s{rate}"
