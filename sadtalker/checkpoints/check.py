"""Load every known SadTalker file in a folder strictly and say, per file, whether it is usable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptCheckpoint, SadTalkerError
from .components import identify, load_component
from .files import SADTALKER_FILES, WeightFile
from .reader import CheckpointReader


@dataclass(frozen=True)
class FileStatus:
    file: WeightFile
    path: Path
    state: str  # "ok" | "missing" | "corrupt"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def check_file(wf: WeightFile, folder: Path) -> FileStatus:
    path = Path(folder) / wf.name
    if not path.is_file():
        return FileStatus(wf, path, "missing", f"needed for {', '.join(wf.required_for)}; get it with "
                                               f"`python -m sadtalker download` or from {wf.urls[0]}")
    try:
        verify_weight_file(wf, path)
    except SadTalkerError as exc:
        return FileStatus(wf, path, "corrupt", str(exc))
    return FileStatus(wf, path, "ok", f"loaded {', '.join(wf.components)} strictly")


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


def check_folder(folder: Path, files: tuple[WeightFile, ...] = SADTALKER_FILES) -> list[FileStatus]:
    return [check_file(wf, folder) for wf in files]
