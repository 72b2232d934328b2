"""From a face crop to its 73 coefficients, and a reference video's per-frame coefficients (official CropAndExtract).

The official preprocessing detects the face on the full image only to place the crop. After cutting and resizing
it runs the landmark detector AGAIN on the crop and aligns the 224 input with those points; the full-image points
mapped into the crop differ by 1.5-25 px on real photos. A reference video is cropped with frame 0's boxes in the
run's preprocess mode, and the landmarks are detected on every cropped frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from sadtalker.errors import InvalidInput, NoFaceDetected
from sadtalker.face.align import Aligned, align_for_face3d
from sadtalker.face.crop import FACE_SIZE, CropInfo, CroppedFace, crop_info_from_landmarks, crop_with_info
from sadtalker.face.detect import NO_FACE_ADVICE, FaceLandmarker, find_landmarks
from sadtalker.face.reconstruct import source_coefficients

log = logging.getLogger("sadtalker")

REFERENCE_FACE_SIZE = FACE_SIZE
"""Reference-video frames are cropped to 256 whatever the run's size (the official `pic_size` default)."""


@dataclass(frozen=True)
class CropLandmarks:
    """Landmarks for the 224 alignment: `points` (68, 2) float32 pixels of the face crop; `redetected` is False
    when the detector found no face on the crop and the photo's landmarks mapped into it were used."""

    points: np.ndarray
    redetected: bool


def crop_landmarks(cropped: CroppedFace, backend: FaceLandmarker, *,
                   face_box: tuple[int, int, int, int] | None = None) -> CropLandmarks | None:
    """Detect the landmarks again on `cropped.face`, with the backend that placed the crop (official recipe).

    `face_box`: the user's box in image pixels; the landmarks are then taken inside that box moved into the crop.
    No face on the crop -> the mapped landmarks `cropped.landmarks` (logged), or None where there are none.
    """
    box = None
    if face_box is not None:
        (x0, y0), (x1, y1) = cropped.to_face_pixels(np.array(face_box, np.float64).reshape(2, 2) - 0.5) + 0.5
        box = (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
    found = find_landmarks(cropped.face, backend, box)
    if found is not None:
        return CropLandmarks(found.points, redetected=True)
    if cropped.landmarks is None:
        return None
    log.warning("No face found again on the %d px face crop (%s detector); aligning with the photo's landmarks "
                "mapped into it.", cropped.face.shape[0], backend.name)
    return CropLandmarks(np.asarray(cropped.landmarks, np.float32), redetected=False)


def crop_coefficients(net: torch.nn.Module, face: np.ndarray, landmarks: np.ndarray) -> tuple[Aligned, np.ndarray]:
    """Face crop + its landmarks (y down) -> the 224 alignment and the (1, 73) coefficients."""
    aligned = align_for_face3d(face, landmarks)
    return aligned, source_coefficients(net, aligned.image, aligned.trans_params)


def reference_video_coefficients(frames: Iterable[np.ndarray], backend: FaceLandmarker, net: torch.nn.Module,
                                 preprocess: str, *, on_frame: Callable[[int], None] | None = None) -> np.ndarray:
    """A reference video's per-frame coefficients (N, 73) float32, as the official preprocessing makes them.

    frames: (H, W, 3) uint8 RGB, streamed. The face is detected on frame 0 only, to place the crop of the run's
    `preprocess` mode (inner box for crop/full, outer box for extcrop/extfull, the whole frame for resize); every
    frame is cut with that box and resized to 256, its landmarks are detected there, and it is aligned and
    reconstructed. A frame without a face takes the previous frame's landmarks (official); frames before the
    first face take the first face's. `on_frame(i)` is called after each frame (progress, cancel).
    Raises `InvalidInput` (no frames), `NoFaceDetected` (no face on frame 0 or on any crop), `ImageError` (frames
    of different sizes).
    """
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise InvalidInput("the reference video has no frames")
    info = _frame0_crop_info(first, backend, preprocess)
    rows: list[np.ndarray] = []
    waiting: list[np.ndarray] = []  # crops before the first frame with a face
    previous: np.ndarray | None = None
    for index, frame in enumerate(chain([first], stream)):
        face = crop_with_info(frame, info, preprocess, REFERENCE_FACE_SIZE).face
        found = find_landmarks(face, backend)
        if found is None and previous is None:
            waiting.append(face)
        else:
            previous = found.points if found is not None else previous
            for earlier in waiting:
                rows.append(crop_coefficients(net, earlier, previous)[1])
            waiting.clear()
            rows.append(crop_coefficients(net, face, previous)[1])
        if on_frame is not None:
            on_frame(index)
    if previous is None:
        raise NoFaceDetected(f"No face found in any of the {len(waiting)} cropped frames of the reference video "
                             f"({backend.name} detector). {NO_FACE_ADVICE}")
    return np.concatenate(rows, 0)


def _frame0_crop_info(frame: np.ndarray, backend: FaceLandmarker, preprocess: str) -> CropInfo:
    height, width = frame.shape[:2]
    if preprocess == "resize":
        return CropInfo(size=(width, height), crop_box=None, quad_box=None, image_size=(width, height))
    found = find_landmarks(frame, backend)
    if found is None:
        raise NoFaceDetected(f"No face found on the first frame of the reference video ({backend.name} detector); "
                             "its crop is placed from that frame. Give a video that starts with a visible face.")
    return crop_info_from_landmarks(found.points, width, height)
