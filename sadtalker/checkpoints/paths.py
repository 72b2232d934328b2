"""Where weight files live on disk: one root folder, with a fixed sub-folder per group of files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .files import WeightFile

MODELS_DIR_ENV = "SADTALKER_MODELS"

# group (WeightFile.group) -> sub-folder of the root; SadTalker's own files sit in the root itself, where users of
# the old extension already keep them (`models/SadTalker`).
_GROUP_FOLDERS = {
    "sadtalker": "",
    "facexlib": "facexlib",
    "face_alignment": "face_alignment",
    "enhancer": "enhancers",
}


def default_models_dir() -> Path:
    """`$SADTALKER_MODELS` if set, else a per-user cache folder (`%LOCALAPPDATA%\\sadtalker` on Windows,
    `$XDG_CACHE_HOME/sadtalker` or `~/.cache/sadtalker` elsewhere). Reads no files and creates nothing."""
    configured = os.environ.get(MODELS_DIR_ENV, "").strip().strip('"').strip("'")  # quoted values come from .bat files
    if configured:
        return Path(configured).expanduser()
    return _user_cache_dir() / "sadtalker"


def _user_cache_dir() -> Path:
    if os.name == "nt":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


@dataclass(frozen=True)
class ModelPaths:
    """The models folder. Pure path arithmetic: building one touches no file, so it is cheap and safe anywhere.

    The WebUI passes `<webui>/models/SadTalker`; the command line and the standalone app use `ModelPaths.default()`.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @classmethod
    def default(cls) -> ModelPaths:
        return cls(default_models_dir())

    @property
    def facexlib(self) -> Path:
        """facexlib weights (RetinaFace detector, landmark and parsing nets): its `model_rootpath`."""
        return self.root / _GROUP_FOLDERS["facexlib"]

    @property
    def face_alignment(self) -> Path:
        """face-alignment weights (FAN, s3fd), under their official file names."""
        return self.root / _GROUP_FOLDERS["face_alignment"]

    @property
    def enhancers(self) -> Path:
        """Face restorers (GFPGAN, ...)."""
        return self.root / _GROUP_FOLDERS["enhancer"]

    def folder(self, weight_file: WeightFile) -> Path:
        """The folder a weight file belongs in, chosen by its group."""
        try:
            sub = _GROUP_FOLDERS[weight_file.group]
        except KeyError:
            raise ValueError(f"no folder is defined for weight group {weight_file.group!r} "
                             f"(known: {', '.join(sorted(_GROUP_FOLDERS))})") from None
        return self.root / sub if sub else self.root

    def file(self, weight_file: WeightFile) -> Path:
        """The full path of a weight file under its official name."""
        return self.folder(weight_file) / weight_file.name
