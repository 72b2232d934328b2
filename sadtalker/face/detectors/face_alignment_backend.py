"""face-alignment's FAN 2D (68 points, iBUG order) with its S3FD face detector.

face-alignment has no folder argument: its FAN weights go to `torch.hub.get_dir()/checkpoints`. We point the hub
folder at `<models_dir>/face_alignment` while the models load (and put it back after), and hand S3FD its file by
path, so nothing is read from or written to the user's global torch cache. No torchvision needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sadtalker.face.detect import Box, DetectedFace, DetectorUnavailable
from sadtalker.face.detectors import ensure_weight_files, missing_package_message

SUBFOLDER = "face_alignment"  # torch-hub-style folder under models_dir; the files sit in its `checkpoints/`
FAN_2D_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"
_DOWNLOADS = "https://www.adrianbulat.com/downloads/python-fan/"


def weight_paths(models_dir: Path) -> dict[Path, str]:
    """{file path under models_dir: download URL} for the FAN 2D net and the S3FD detector."""
    checkpoints = Path(models_dir) / SUBFOLDER / "checkpoints"
    return {checkpoints / FAN_2D_FILE: _DOWNLOADS + FAN_2D_FILE, checkpoints / S3FD_FILE: _DOWNLOADS + S3FD_FILE}


@contextlib.contextmanager
def _torch_hub_dir(folder: Path) -> Iterator[None]:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


class FaceAlignmentLandmarker:
    """FAN 2D + S3FD from the `face-alignment` package, weights read from `models_dir/face_alignment/checkpoints`."""

    name = "face-alignment"

    def __init__(self, models_dir: Path, *, device: str = "cpu", allow_download: bool = False):
        try:
            import face_alignment
        except ImportError as error:
            raise DetectorUnavailable(missing_package_message(self.name, error, "'facexlib' or 'dlib'")) from error
        files = weight_paths(models_dir)
        fan_path, s3fd_path = files
        ensure_weight_files(self.name, files, allow_download=allow_download,
                            download=lambda url, path: torch.hub.download_url_to_file(url, str(path)))
        with _torch_hub_dir(Path(models_dir) / SUBFOLDER):
            self.model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=str(device),
                flip_input=False,
                face_detector="sfd",
                face_detector_kwargs={"path_to_detector": str(s3fd_path)},
                compile=False,  # torch.compile costs ~85 s on the first CPU run
            )

    @torch.no_grad()
    def detect_faces(self, image: np.ndarray) -> list[DetectedFace]:
        rows = self.model.face_detector.detect_from_image(image.copy())
        return [DetectedFace(box=tuple(float(v) for v in row[:4]), score=float(row[4])) for row in rows]

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        found = self.model.get_landmarks_from_image(image, detected_faces=[np.asarray(box, dtype=np.float64)])
        return np.asarray(found[0][:, :2], dtype=np.float32)

    def close(self) -> None:
        del self.model
