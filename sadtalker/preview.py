"""A face preview before rendering: every face found, its 68 landmarks, and the crop the chosen mode will use.

Most failed runs start with a crop nobody saw. `preview_faces` finds the faces, picks one (the largest, a face the
user chose by number, or a face box the user gave), optionally nudges that face's box (move / scale), and
returns the box the run should use (`face_box`) with a picture of it all. Rendering is minutes; this is a
second, so the UI calls it whenever the image or the preprocess mode changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import InvalidInput, NoFaceDetected
from .face.crop import crop_face
from .face.detect import NO_FACE_ADVICE, FaceLandmarker, clip_box, manual_box
from .image import rgb_image

Box = tuple[int, int, int, int]

# RGB colours of the drawing: the chosen face, the other faces, the crop, the landmarks.
CHOSEN = (40, 220, 90)
OTHER = (170, 170, 170)
CROP = (60, 140, 255)
POINTS = (255, 60, 60)


@dataclass(frozen=True)
class Nudge:
    """Move the chosen face box by a fraction of its size and scale it about its centre (1 = unchanged)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (-1.0 <= self.dx <= 1.0 and -1.0 <= self.dy <= 1.0):
            raise InvalidInput(f"nudge must move the box by at most its own size (-1..1); got {self.dx}, {self.dy}",
                               option="face_box")
        if not 0.25 <= self.scale <= 4.0:
            raise InvalidInput(f"nudge scale must be from 0.25 to 4; got {self.scale}", option="face_box")

    @property
    def is_identity(self) -> bool:
        return self.dx == 0.0 and self.dy == 0.0 and self.scale == 1.0

    def apply(self, box: Box, width: int, height: int) -> Box:
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h
        half_w, half_h = w * self.scale / 2, h * self.scale / 2
        return manual_box((round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h)),
                          width, height)


@dataclass(frozen=True)
class PreviewFace:
    box: Box  # detector box, photo pixels
    score: float


@dataclass
class FacePreview:
    """What `preview_faces` found. `face_box` is what the run should be given to use exactly this face and crop
    (None when the default choice, the largest face un-nudged, is what the run would pick anyway)."""

    faces: list[PreviewFace]
    chosen: int  # index into faces; -1 when the user's own face box is used
    box: Box  # the box the landmarks were computed in (after any nudge)
    landmarks: np.ndarray  # (68, 2) photo pixels
    crop_box: Box  # the region the chosen preprocess mode cuts out, photo pixels
    preprocess: str
    face_box: Box | None
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB with everything drawn on it
    messages: list[str] = field(default_factory=list)


def preview_faces(image: np.ndarray, detector: FaceLandmarker, *, preprocess: str = "crop", size: int = 256,
                  face_index: int | None = None, face_box: Box | None = None, nudge: Nudge | None = None
                  ) -> FacePreview:
    """Find the faces in an (H, W, 3) uint8 RGB photo and show which one and which crop a run would use.

    `face_index` picks a face by its number (0 = the first the detector lists, as drawn); `face_box` is a box
    the user drew (skips the choice); `nudge` moves or scales the chosen box. Raises NoFaceDetected with advice.
    """
    image = rgb_image(image, "the photo")
    height, width = image.shape[:2]
    faces = [PreviewFace(clip_box(f.box, width, height), float(f.score)) for f in detector.detect_faces(image)]
    faces = [f for f in faces if f.box[2] - f.box[0] >= 2 and f.box[3] - f.box[1] >= 2]
    messages = []
    if face_box is not None:
        chosen, box = -1, manual_box(face_box, width, height)
    else:
        if not faces:
            raise NoFaceDetected(f"No face found in the image ({detector.name} detector). {NO_FACE_ADVICE}")
        largest = max(range(len(faces)), key=lambda i: _area(faces[i].box))
        if face_index is None:
            chosen = largest
        elif not 0 <= face_index < len(faces):
            raise InvalidInput(f"face {face_index} does not exist: {len(faces)} face(s) found, numbered 0 to "
                               f"{len(faces) - 1}", option="face_box")
        else:
            chosen = face_index
        box = faces[chosen].box
        if len(faces) > 1:
            messages.append(f"{len(faces)} faces found; face {chosen} is used" +
                            (" (the largest)" if chosen == largest else ""))
    if nudge is not None and not nudge.is_identity:
        box = nudge.apply(box, width, height)
    landmarks = np.asarray(detector.landmarks(image, box), dtype=np.float32)
    crop_box = _crop_region(image, landmarks, preprocess, size)
    default_choice = face_box is None and chosen == (max(range(len(faces)), key=lambda i: _area(faces[i].box)))
    run_box = None if default_choice and (nudge is None or nudge.is_identity) else box
    drawn = draw_preview(image, faces, chosen, box, landmarks, crop_box)
    return FacePreview(faces=faces, chosen=chosen, box=box, landmarks=landmarks, crop_box=crop_box,
                       preprocess=preprocess, face_box=run_box, image=drawn, messages=messages)


def draw_preview(image: np.ndarray, faces: list[PreviewFace], chosen: int, box: Box, landmarks: np.ndarray,
                 crop_box: Box) -> np.ndarray:
    """The photo with every face box (numbered), the chosen box, its landmarks and the crop drawn on it."""
    canvas = np.ascontiguousarray(image.copy())
    line = max(1, round(max(image.shape[:2]) / 300))
    for number, face in enumerate(faces):
        if number == chosen:
            continue
        _rectangle(canvas, face.box, OTHER, line)
        _label(canvas, str(number), face.box, OTHER, line)
    _rectangle(canvas, crop_box, CROP, line)
    _rectangle(canvas, box, CHOSEN, line + 1)
    _label(canvas, str(chosen) if chosen >= 0 else "box", box, CHOSEN, line)
    radius = max(1, line)
    for x, y in np.round(landmarks).astype(int):
        cv2.circle(canvas, (int(x), int(y)), radius, POINTS, -1, lineType=cv2.LINE_AA)
    return canvas


def _crop_region(image: np.ndarray, landmarks: np.ndarray, preprocess: str, size: int) -> Box:
    info = crop_face(image, landmarks, preprocess, size=size).info
    return info.paste_box(extended=preprocess in ("extcrop", "extfull"))


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _rectangle(canvas: np.ndarray, box: Box, colour: tuple[int, int, int], line: int) -> None:
    cv2.rectangle(canvas, (box[0], box[1]), (box[2] - 1, box[3] - 1), colour, line, lineType=cv2.LINE_AA)


def _label(canvas: np.ndarray, text: str, box: Box, colour: tuple[int, int, int], line: int) -> None:
    scale = 0.5 * line
    origin = (box[0] + 2, max(box[1] - 4, int(14 * scale)))
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, line, lineType=cv2.LINE_AA)
