"""Align the 256 face crop to the 224 input of the face3d (Deep3DFaceRecon) net, as the official `align_img`.

Five landmarks are fitted to a standard 3D face by least squares (scale + translation, orthographic); the
image is rescaled so that face has a fixed size (102 / s) and a 224x224 window is cut around it.
The landmark math runs in float32 first, like the official code (landmarks are loaded as float32 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from sadtalker.errors import InvalidInput
from sadtalker.image import rgb_image

ALIGNED_SIZE = 224
RESCALE_FACTOR = 102.0
"""The aligned face's size: the image is scaled by RESCALE_FACTOR / (fitted scale of the standard face)."""

STANDARD_LANDMARKS_3D = np.array([
    # eye centres (left, right), nose tip, mouth corners (left, right); x right, y up (similarity_Lm3D_all.mat)
    [-0.31148657, 0.29036078, 0.13377953],
    [0.30979887, 0.28972036, 0.13179526],
    [0.0032534988, -0.046179324, 0.55244243],
    [-0.25216928, -0.38133916, 0.22405732],
    [0.2484662, -0.38128236, 0.22235769],
], dtype=np.float32)
STANDARD_LANDMARKS_3D.setflags(write=False)

NO_FACE_VALUE = -1.0
"""A landmark array whose mean is exactly this means "no face found" (the official sentinel)."""

_EYE_LEFT = (36, 39)
_EYE_RIGHT = (42, 45)
_NOSE_TIP = 30
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54


@dataclass(frozen=True)
class Aligned:
    """Result of `align_for_face3d`.

    image:        (224, 224, 3) uint8 RGB, the face3d net input (divide by 255 for the net).
    trans_params: (5,) float64 [w0, h0, scale, tx, ty]; SadTalker stores float32(scale, tx, ty) in the
                  last three of its 73 source coefficients.
    landmarks:    the landmarks in aligned-image pixels, y up (68, 2), or the 5 fallback points (5, 2).
    """

    image: np.ndarray
    trans_params: np.ndarray
    landmarks: np.ndarray


def five_points(lm68: np.ndarray) -> np.ndarray:
    """(68, 2) landmarks -> (5, 2) float32: left eye, right eye (corner means), nose tip, mouth corners."""
    lm = np.asarray(lm68, dtype=np.float32)
    if lm.shape != (68, 2):
        raise InvalidInput(f"landmarks must be a (68, 2) array, got shape {lm.shape}")
    return np.stack([
        lm[list(_EYE_LEFT)].mean(axis=0),
        lm[list(_EYE_RIGHT)].mean(axis=0),
        lm[_NOSE_TIP],
        lm[_MOUTH_LEFT],
        lm[_MOUTH_RIGHT],
    ])


def fit_pose(lm5_yup: np.ndarray, std3d: np.ndarray = STANDARD_LANDMARKS_3D) -> tuple[np.ndarray, float]:
    """Least-squares fit x = s·R1·X + tx, y = s·R2·X + ty of 2D points to 3D points (official `POS`).

    lm5_yup: (N, 2) image points with y up; std3d: (N, 3). Returns t = (tx, ty) (2,) float64 in image pixels
    and the fitted scale s = (|s·R1| + |s·R2|) / 2 (pixels per standard-face unit).
    """
    points = np.asarray(lm5_yup, dtype=np.float64)
    model = np.asarray(std3d, dtype=np.float64)
    count = points.shape[0]
    system = np.zeros((2 * count, 8))
    system[0::2, 0:3] = model
    system[0::2, 3] = 1
    system[1::2, 4:7] = model
    system[1::2, 7] = 1
    solution = np.linalg.lstsq(system, points.reshape(-1), rcond=None)[0]
    scale = (np.linalg.norm(solution[0:3]) + np.linalg.norm(solution[4:7])) / 2
    return np.array([solution[3], solution[7]]), float(scale)


def fallback_landmarks5(width: int, height: int) -> np.ndarray:
    """The official no-face landmarks: the standard face's (x, y) mapped from [-1, 1] onto the image,
    (5, 2) float32 (used as they are, without the y flip)."""
    unit = (STANDARD_LANDMARKS_3D[:, :2] + np.float32(1)) / np.float32(2)
    return np.concatenate([unit[:, :1] * np.float32(width), unit[:, 1:2] * np.float32(height)], axis=1)


def is_no_face(landmarks: np.ndarray) -> bool:
    """True for the detector's "nothing found" landmarks (all -1)."""
    return bool(np.mean(np.asarray(landmarks, dtype=np.float32)) == NO_FACE_VALUE)


def align_for_face3d(face_rgb: np.ndarray, lm68: np.ndarray, *, y_down: bool = True) -> Aligned:
    """Align a face crop (usually the 256 face) for the face3d net, as the official CropAndExtract step.

    face_rgb: (H, W, 3) uint8 RGB. lm68: (68, 2) landmarks on it, y down (image rows) unless `y_down` is
    False (then already flipped to y up as H - 1 - y); (5, 2) points are used as the five points; all -1
    means no face: the standard face placed on the image is used instead.
    """
    image = rgb_image(np.asarray(face_rgb), "the face")
    height, width = image.shape[:2]
    points = np.array(lm68, dtype=np.float32).reshape(-1, 2)
    if points.shape[0] not in (5, 68):
        raise InvalidInput(f"landmarks must be (68, 2) or (5, 2), got {np.shape(lm68)}")
    if is_no_face(points):
        points = fallback_landmarks5(width, height)
    elif y_down:
        points[:, 1] = (height - 1) - points[:, 1]

    lm5 = points if points.shape[0] == 5 else five_points(points)
    translation, fitted_scale = fit_pose(lm5)
    scale = RESCALE_FACTOR / fitted_scale
    aligned, landmarks = _resize_and_cut(image, points, translation, scale)
    trans_params = np.array([width, height, scale, translation[0], translation[1]], dtype=np.float64)
    return Aligned(image=aligned, trans_params=trans_params, landmarks=landmarks)


def _resize_and_cut(image: np.ndarray, points: np.ndarray, translation: np.ndarray,
                    scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the image (PIL BICUBIC) and cut 224x224 so the fitted face centre lands mid-window (zero fill
    outside the image); the landmarks follow (y up)."""
    height0, width0 = image.shape[:2]
    tx, ty = float(translation[0]), float(translation[1])
    width, height = int(width0 * scale), int(height0 * scale)
    half = ALIGNED_SIZE / 2
    # int() truncates toward zero like the official astype(np.int32)
    left = int(width / 2 - half + (tx - width0 / 2) * scale)
    up = int(height / 2 - half + (height0 / 2 - ty) * scale)

    resized = Image.fromarray(image).resize((width, height), resample=Image.BICUBIC)
    aligned = np.asarray(resized.crop((left, up, left + ALIGNED_SIZE, up + ALIGNED_SIZE)))

    points64 = points.astype(np.float64)
    moved = np.stack([points64[:, 0] - tx + width0 / 2, points64[:, 1] - ty + height0 / 2], axis=1) * scale
    landmarks = moved - np.array([width / 2 - half, height / 2 - half])
    return aligned, landmarks

