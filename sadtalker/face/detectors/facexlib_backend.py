"""The official detector: facexlib's RetinaFace (ResNet-50) boxes + AWing FAN (WFLW, 98 points) -> iBUG 68.

We build facexlib's two networks and load their weights ourselves (CPU map, `weights_only`, strict), and we do
the AWing pre/post-processing here because facexlib's own `get_landmarks` uses `np.float`, which numpy >= 1.24
no longer has. facexlib imports torchvision, so this module is only imported when the backend is chosen.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from sadtalker.checkpoints.files import FACEXLIB_ALIGNMENT, FACEXLIB_DETECTION
from sadtalker.face.detect import Box, DetectedFace, DetectorUnavailable
from sadtalker.face.detectors import ensure_weight_files, load_state_dict, load_strictly, missing_package_message

SCORE_THRESHOLD = 0.97  # official `detect_faces(image, 0.97)`
AWING_INPUT = 256
AWING_HEATMAP = 64

# iBUG-68 point -> the two WFLW-98 points whose mean it is (the same point twice where it maps one to one).
# Facts from facexlib's `landmark_98_to_68`: jaw = every second contour point, brows = means of the upper and
# lower brow edges, eyes skip the WFLW mid-corner points, nose and mouth map one to one.
_JAW = [(2 * i, 2 * i) for i in range(17)]
_BROWS = [(33, 33), (34, 41), (35, 40), (36, 39), (37, 38), (42, 50), (43, 49), (44, 48), (45, 47), (46, 46)]
_NOSE = [(i, i) for i in range(51, 60)]
_EYES = [(i, i) for i in (60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75)]
_MOUTH = [(i, i) for i in range(76, 96)]
WFLW98_TO_IBUG68 = np.array(_JAW + _BROWS + _NOSE + _EYES + _MOUTH, dtype=np.int64)  # (68, 2)


def wflw98_to_ibug68(points98: np.ndarray) -> np.ndarray:
    """(98, 2) WFLW landmarks -> (68, 2) float32 iBUG 300-W landmarks."""
    points98 = np.asarray(points98, dtype=np.float64)
    return ((points98[WFLW98_TO_IBUG68[:, 0]] + points98[WFLW98_TO_IBUG68[:, 1]]) / 2).astype(np.float32)


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
    """(N, 64, 64) heatmaps -> (N, 2) float64 (x, y) in heatmap cells, as AWing decodes them.

    The arg-max cell, moved a quarter cell towards the larger neighbour, plus half a cell. Quirk kept for the
    official numbers: the vertical neighbours fall back to the first / last cell for EVERY point as soon as ANY
    point's neighbour would leave the map.
    """
    count, height, width = heatmaps.shape
    flat = heatmaps.reshape(count, height * width)
    rows = np.arange(count)
    peak = np.argmax(flat, axis=1)
    points = np.stack((peak % width, peak // width), axis=1).astype(np.float64)
    right = flat[rows, np.minimum(peak + 1, height * width - 1)]  # the official code would index past the end
    left = flat[rows, peak - 1]
    below = flat[rows, height * width - 1] if np.any(peak + width >= height * width) else flat[rows, peak + width]
    above = flat[rows, 0] if np.any(peak - width <= 0) else flat[rows, peak - width]
    points += 0.25 * np.sign(np.stack((right - left, below - above), axis=1))
    return points + 0.5


class FacexlibLandmarker:
    """RetinaFace + AWing FAN from facexlib, weights read from `models_dir` (official file names)."""

    name = "facexlib"

    def __init__(self, models_dir: Path, *, device: str = "cpu", allow_download: bool = False,
                 score_threshold: float = SCORE_THRESHOLD):
        try:
            from facexlib.alignment.awing_arch import FAN
            from facexlib.detection.retinaface import RetinaFace
            from facexlib.utils import load_file_from_url
        except ImportError as error:  # facexlib itself, or the torchvision it imports
            raise DetectorUnavailable(missing_package_message(self.name, error, "'face-alignment' or 'dlib'")) \
                from error
        self.device = torch.device(device)
        self.score_threshold = score_threshold
        detection_path = Path(models_dir) / FACEXLIB_DETECTION.name
        alignment_path = Path(models_dir) / FACEXLIB_ALIGNMENT.name
        ensure_weight_files(
            self.name,
            {detection_path: FACEXLIB_DETECTION.urls[0], alignment_path: FACEXLIB_ALIGNMENT.urls[0]},
            allow_download=allow_download,
            download=lambda url, path: load_file_from_url(url, save_dir=str(path.parent), file_name=path.name),
        )

        with warnings.catch_warnings():  # facexlib builds its ResNet-50 with torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            self.detector = RetinaFace(network_name="resnet50", half=False, device=self.device)
        # The released file was saved from a DataParallel model: keys start with "module.".
        detection_state = {key.removeprefix("module."): value for key, value in load_state_dict(detection_path).items()}
        load_strictly(self.detector, detection_state, detection_path)
        self.detector.to(self.device).eval()

        self.aligner = FAN(num_modules=4, num_landmarks=98, device=self.device)
        alignment_state = load_state_dict(alignment_path)
        load_strictly(self.aligner, alignment_state.get("state_dict", alignment_state), alignment_path)
        self.aligner.to(self.device).eval()

    @torch.no_grad()
    def detect_faces(self, image: np.ndarray) -> list[DetectedFace]:
        # RetinaFace wants BGR (the official code hands it a PIL image, which it converts to BGR).
        rows = self.detector.detect_faces(np.ascontiguousarray(image[..., ::-1]), self.score_threshold)
        return [DetectedFace(box=tuple(float(v) for v in row[:4]), score=float(row[4])) for row in rows]

    @torch.no_grad()
    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        face = image[y0:y1, x0:x1]
        height, width = face.shape[:2]
        resized = cv2.resize(face, (AWING_INPUT, AWING_INPUT))
        # The official call feeds the RGB crop to `get_landmarks`, which reverses the channels: the net sees BGR.
        chw = np.ascontiguousarray(resized[..., ::-1].transpose(2, 0, 1))
        inputs = torch.from_numpy(chw).float().div_(255.0)[None].to(self.device)
        outputs, _ = self.aligner(inputs)
        heatmaps = outputs[-1][0, :-1].float().cpu().numpy()  # the last channel is the boundary map
        points98 = heatmap_peaks(heatmaps) * (width / AWING_HEATMAP, height / AWING_HEATMAP)
        points = wflw98_to_ibug68(points98)
        points += np.array([x0, y0], dtype=np.float32)
        return points

    def close(self) -> None:
        del self.detector, self.aligner
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
