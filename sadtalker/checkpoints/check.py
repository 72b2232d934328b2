"""Load every known weight file in a models folder strictly and say, per file, whether it is usable; and which
files one run needs (so a run can name everything it lacks at once, before any work)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptCheckpoint, SadTalkerError
from . import files
from .components import identify, load_component
from .files import SADTALKER_FILES, WeightFile
from .paths import ModelPaths
from .reader import CheckpointReader

# what `check` reports: SadTalker's files, the default detector's and the enhancers'
CHECKED_FILES = SADTALKER_FILES + (files.FACEXLIB_DETECTION, files.FACEXLIB_ALIGNMENT) + tuple(
    files.ENHANCER_FILES.values())


@dataclass(frozen=True)
class FileStatus:
    file: WeightFile
    path: Path
    state: str  # "ok" | "missing" (needed by the default run) | "absent" (optional, not there) | "corrupt"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "absent")


def files_for_run(*, size: int = 256, preprocess: str = "crop", face_detector: str = "facexlib",
                  enhancer: str = "none") -> list[WeightFile]:
    """Every weight file a run with these options reads, in the order the run needs them.

    The face-alignment detector keeps its weights in a torch-hub folder of its own and checks them itself; dlib's
    model comes with its package. An enhancer the host provides (not one of ours) needs no file here.
    """
    needed = []
    if face_detector == "facexlib":
        needed += [files.FACEXLIB_DETECTION, files.FACEXLIB_ALIGNMENT]
    needed += [files.sadtalker_file(size), files.mapping_file(preprocess)]
    if enhancer in files.ENHANCER_FILES:
        needed.append(files.enhancer_file(enhancer))
    return needed


DEFAULT_RUN_FILES = tuple(files_for_run())


def check_file(wf: WeightFile, folder: Path | ModelPaths, *, required: bool = True) -> FileStatus:
    """`folder` is the models folder (each file is looked for in its group's sub-folder)."""
    paths = folder if isinstance(folder, ModelPaths) else ModelPaths(Path(folder))
    path = paths.file(wf)
    if not path.is_file():
        uses = ", ".join(wf.required_for) or wf.purpose
        if not required:
            return FileStatus(wf, path, "absent", f"optional ({uses}); get it with `python -m sadtalker download`")
        return FileStatus(wf, path, "missing", f"needed for {uses}; get it with "
                                               f"`python -m sadtalker download` or from {wf.urls[0]}")
    try:
        verify_weight_file(wf, path)
    except SadTalkerError as exc:
        return FileStatus(wf, path, "corrupt", str(exc))
    what = ", ".join(wf.components) if wf.components else "its tensors"
    return FileStatus(wf, path, "ok", f"loaded {what} strictly" if wf.components else f"read {what} safely")


def verify_weight_file(wf: WeightFile, path: Path) -> None:
    """Raise CorruptCheckpoint unless `path` holds what `wf` should, loaded strictly (also for a `.part` file)."""
    reader = CheckpointReader(path, name=wf.name)
    if not wf.components:
        return  # third-party weights (detector, restorer): readable without running code is all we can check here
    held = identify(reader)
    absent = [c for c in wf.components if c not in held]
    if absent:
        raise CorruptCheckpoint(f"{wf.name}: holds {', '.join(held)} but not {', '.join(absent)} (file: {path})")
    for component_id in wf.components:
        load_component(reader, component_id)


def check_folder(folder: Path | ModelPaths, files: Iterable[WeightFile] = SADTALKER_FILES,
                 required: Iterable[WeightFile] | None = None) -> list[FileStatus]:
    """One status per file. `required`: the files whose absence is a fault ("missing"); others that are not
    there are "absent" (optional). Default: every file given is required."""
    files = tuple(files)
    needed = set(files if required is None else required)
    return [check_file(wf, folder, required=wf in needed) for wf in files]
