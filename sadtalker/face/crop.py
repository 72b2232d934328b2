"""Cut the face out of the source image the way SadTalker's preprocessing does (croper.py + preprocess.py).

Five modes:
  * "crop" / "full"       the inner face box (the FFHQ-style quad's bounding box, clipped);
  * "extcrop" / "extfull" the outer box (the quad's bounding box plus a 10 % border);
  * "resize"              the whole image, squashed to a square.
"full"/"extfull" crop exactly like "crop"/"extcrop"; they differ later (pasted back into the full image).

All coordinates are pixels of the image given (x right, y down). Arithmetic follows the official code
(float64 landmark math) and its quirks (the inner box's bottom is capped by the image WIDTH).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from sadtalker.errors import InvalidInput, NoFaceDetected
from sadtalker.image import rgb_image
from sadtalker.options import PREPROCESS_MODES

FACE_SIZE = 256
"""Side of the square face image the renderer and the landmark re-detection use."""

SHRINK_REFERENCE_SIZE = 512
"""The official `xsize`: an image is first downscaled by floor(qsize / 512 / 2) when that is above 1."""

QUAD_EYE_SCALE = 2.0
QUAD_MOUTH_SCALE = 1.8
QUAD_CENTRE_SHIFT = 0.1
BORDER_FRACTION = 0.1
MIN_BORDER = 3

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropInfo:
    """Where the face image came from (the official `crop_info`), enough to paste a rendered face back.

    size:      (w, h) of the inner face box, (W, H) of the image in resize mode. Even in the ext modes it is
               the inner box: the official code uses it for the rendered frame's aspect ratio.
    crop_box:  outer box (clx, cly, crx, cry), ints, or None in resize mode.
    quad_box:  inner box (lx, ly, rx, ry), floats relative to the outer box, or None in resize mode.
    shrink:    the image was downscaled by this integer factor before cropping (1 unless the face is huge);
               `size`, `crop_box` and `quad_box` are in the downscaled image's pixels, as in the official code.
    image_size: (W, H) of the original image.
    """

    size: tuple[int, int]
    crop_box: Box | None
    quad_box: tuple[float, float, float, float] | None
    image_size: tuple[int, int]
    shrink: int = 1

    def inner_box(self) -> Box:
        """(x1, y1, x2, y2) of the inner face box in the (downscaled) image: outer origin + int(quad)."""
        if self.crop_box is None or self.quad_box is None:
            return self._whole_image_box()
        clx, cly, _, _ = self.crop_box
        lx, ly, rx, ry = (int(value) for value in self.quad_box)
        return clx + lx, cly + ly, clx + rx, cly + ry

    def outer_box(self) -> Box:
        """(x1, y1, x2, y2) of the outer box (with border) in the (downscaled) image."""
        if self.crop_box is None:
            return self._whole_image_box()
        return self.crop_box

    def paste_box(self, extended: bool) -> Box:
        """Where a rendered face goes back, in ORIGINAL image pixels: the outer box when `extended`
        ("extfull"), else the inner box ("full"); the whole image in resize mode.

        Scaled up by `shrink` and clipped to the image (the official code applies the downscaled box to the
        full image and fails when the box leaves it; for shrink 1 and boxes inside the image both agree).
        """
        x1, y1, x2, y2 = self.outer_box() if extended else self.inner_box()
        width, height = self.image_size
        s = self.shrink
        return max(x1 * s, 0), max(y1 * s, 0), min(x2 * s, width), min(y2 * s, height)

    def _whole_image_box(self) -> Box:
        width, height = self.image_size
        return 0, 0, width, height


@dataclass(frozen=True)
class CroppedFace:
    """Result of `crop_face`.

    face:      (size, size, 3) uint8 RGB, the region resized with cv2 INTER_LINEAR (aspect not kept).
    region:    (h, w, 3) uint8 RGB, the crop before that resize (resize mode: the whole image).
    info:      where it came from (for the paste-back).
    landmarks: (68, 2) float64, the given landmarks mapped into `face` pixels, or None if none were given.
    origin:    top-left (x, y) of `region` in the (shrunk) image.
    """

    face: np.ndarray
    region: np.ndarray
    info: CropInfo
    landmarks: np.ndarray | None
    origin: tuple[int, int] = (0, 0)

    def to_face_pixels(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) image pixels -> (N, 2) float64 pixels of `face`, as cv2's resize moves pixel centres."""
        return _landmarks_in_face(points, self.info.image_size, self.info.shrink, self.origin,
                                  self.region.shape[:2], self.face.shape[0])


def face_quad(lm68: np.ndarray) -> tuple[np.ndarray, float]:
    """The oriented face square of the official align_face: (quad (4, 2) float64, qsize float).

    `lm68` (68, 2) iBUG-68 landmarks in image pixels. Corners in order c-x-y, c-x+y, c+x+y, c+x-y,
    with x the (scaled) eye-line direction and y perpendicular to it; qsize = 2 |x|.
    """
    lm = _landmarks64(lm68)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * QUAD_EYE_SCALE, np.hypot(*eye_to_mouth) * QUAD_MOUTH_SCALE)
    y = np.array([-x[1], x[0]])
    centre = eye_avg + eye_to_mouth * QUAD_CENTRE_SHIFT
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
    return quad, float(np.hypot(*x) * 2)


def crop_face(image_rgb: np.ndarray, lm68: np.ndarray | None, mode: str = "crop",
              size: int = FACE_SIZE) -> CroppedFace:
    """Crop the face like the official preprocessing and resize it to (size, size).

    image_rgb: (H, W, 3) uint8 RGB. lm68: (68, 2) landmarks in image pixels (needed except in resize mode).
    mode: one of PREPROCESS_MODES. Raises InvalidInput (bad mode/size), ImageError (bad image),
    NoFaceDetected (a cropping mode without landmarks).
    """
    _check_mode(mode)
    image = rgb_image(np.asarray(image_rgb))
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidInput(f"the face size must be a positive integer, got {size!r}")
    height, width = image.shape[:2]
    if mode == "resize":
        info = CropInfo(size=(width, height), crop_box=None, quad_box=None, image_size=(width, height))
    else:
        if lm68 is None:
            raise NoFaceDetected("no face was found in the source image (needed to crop it)")
        info = crop_info_from_landmarks(lm68, width, height)
    cropped = crop_with_info(image, info, mode, size)
    if lm68 is None:
        return cropped
    return replace(cropped, landmarks=cropped.to_face_pixels(lm68))


def crop_with_info(image_rgb: np.ndarray, info: CropInfo, mode: str = "crop", size: int = FACE_SIZE) -> CroppedFace:
    """Cut and resize with boxes found earlier, e.g. a reference video's frames with frame 0's `info` (the
    official recipe). `info` without boxes (resize mode) or `mode` "resize" takes the whole image."""
    _check_mode(mode)
    image = rgb_image(np.asarray(image_rgb))
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidInput(f"the face size must be a positive integer, got {size!r}")
    height, width = image.shape[:2]
    if (width, height) != tuple(info.image_size):
        raise ImageError(f"the image is {width}x{height}, but its crop boxes were found on a "
                         f"{info.image_size[0]}x{info.image_size[1]} image")
    if mode == "resize" or info.crop_box is None:
        region, origin = image, (0, 0)
    else:
        region, origin = _cut_region(image, info, extended=mode.startswith("ext"))
    face = cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    return CroppedFace(face=face, region=region, info=info, landmarks=None, origin=origin)


def crop_info_from_landmarks(lm68: np.ndarray, width: int, height: int) -> CropInfo:
    """The official align_face boxes for an image of (width, height) pixels (no pixels touched)."""
    quad, qsize = face_quad(lm68)
    shrink = int(np.floor(qsize / SHRINK_REFERENCE_SIZE * 0.5))
    if shrink > 1:
        size_w, size_h = int(np.rint(float(width) / shrink)), int(np.rint(float(height) / shrink))
        quad /= shrink
        qsize /= shrink
    else:
        shrink = 1
        size_w, size_h = width, height

    border = max(int(np.rint(qsize * BORDER_FRACTION)), MIN_BORDER)
    crop = (max(int(np.floor(quad[:, 0].min())) - border, 0), max(int(np.floor(quad[:, 1].min())) - border, 0),
            min(int(np.ceil(quad[:, 0].max())) + border, size_w), min(int(np.ceil(quad[:, 1].max())) + border, size_h))
    if crop[2] - crop[0] < size_w or crop[3] - crop[1] < size_h:
        quad -= crop[0:2]

    quad = quad + 0.5
    lx = float(max(min(quad[0, 0], quad[1, 0]), 0))
    ly = float(max(min(quad[0, 1], quad[3, 1]), 0))
    rx = float(min(max(quad[2, 0], quad[3, 0]), size_w))
    ry = float(min(max(quad[1, 1], quad[2, 1]), size_w))  # official quirk: capped by the width, not the height

    clx, cly = crop[0], crop[1]
    inner_w = (clx + int(rx)) - (clx + int(lx))
    inner_h = (cly + int(ry)) - (cly + int(ly))
    return CropInfo(size=(inner_w, inner_h), crop_box=crop, quad_box=(lx, ly, rx, ry),
                    image_size=(width, height), shrink=shrink)


def _cut_region(image: np.ndarray, info: CropInfo, extended: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixels of the outer (extended) or inner box; returns the region and its origin in the shrunk image."""
    assert info.crop_box is not None and info.quad_box is not None
    if info.shrink > 1:
        height, width = image.shape[:2]
        shrunk_size = (int(np.rint(width / info.shrink)), int(np.rint(height / info.shrink)))
        # The official code measures with a PIL resize but crops a cv2 (INTER_LINEAR) resize.
        image = cv2.resize(image, shrunk_size, interpolation=cv2.INTER_LINEAR)
    clx, cly, crx, cry = info.crop_box
    region = image[cly:cry, clx:crx]
    origin = (clx, cly)
    if not extended:
        lx, ly, rx, ry = (int(value) for value in info.quad_box)
        region = region[ly:ry, lx:rx]
        origin = (clx + lx, cly + ly)
    if region.size == 0:
        raise NoFaceDetected("the face box lies outside the image")
    return np.ascontiguousarray(region), origin


def _landmarks_in_face(lm68: np.ndarray, image_size: tuple[int, int], shrink: int, origin: tuple[int, int],
                       region_hw: tuple[int, int], size: int) -> np.ndarray:
    """Map image landmarks through (shrink resize →) crop → resize, with pixel centres at +0.5 like cv2."""
    points = np.asarray(lm68, dtype=np.float64).reshape(-1, 2)
    width, height = image_size
    if shrink > 1:
        scale = np.array([np.rint(width / shrink) / width, np.rint(height / shrink) / height])
        points = (points + 0.5) * scale - 0.5
    region_h, region_w = region_hw
    return (points + 0.5 - np.array(origin, dtype=np.float64)) * np.array([size / region_w, size / region_h]) - 0.5


def _landmarks64(lm68: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise InvalidInput(f"landmarks must be a finite (68, 2) array, got shape {lm.shape}")
    return lm


def _check_mode(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise InvalidInput(f"preprocess mode must be one of {', '.join(PREPROCESS_MODES)}; got {mode!r}")

