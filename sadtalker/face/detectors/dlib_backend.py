"""dlib: HOG (or mmod CNN) face detector + the 68-point shape predictor (iBUG order).

Weights come inside the `face-recognition-models` package, so this backend works offline. The 68-point model
was trained on iBUG 300-W, whose licence excludes commercial use: it is opt-in only, never a default or a fallback.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from sadtalker.face.detect import Box, DetectedFace, DetectorUnavailable
from sadtalker.face.detectors import missing_package_message

log = logging.getLogger("sadtalker")

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
# The recipe of SadTalker's original dlib cropper, kept by the golden preprocessing data: HOG with one upsampling
# step (faces down to ~40 px); the slower mmod CNN only when HOG finds nothing; the caller takes the largest box.
UPSAMPLE = 1


def bundled_models_dir() -> Path:
    """`face_recognition_models/models`, found without importing the package (it needs `pkg_resources`)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'face_recognition_models'", name="face_recognition_models")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibLandmarker:
    """dlib detector + 68-point predictor. `face_detector="hog"` (default): HOG, and the mmod CNN only where HOG
    finds no face; `"cnn"`: the CNN alone."""

    name = "dlib"

    def __init__(self, *, face_detector: Literal["hog", "cnn"] = "hog"):
        try:
            import dlib

            models = bundled_models_dir()
        except ImportError as error:
            raise DetectorUnavailable(missing_package_message(self.name, error, "'facexlib' or 'face-alignment'")) \
                from error
        log.info("Using dlib's 68-point landmark model: its training data (iBUG 300-W) allows non-commercial use only.")
        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(models / PREDICTOR_FILE))
        self.face_detector = face_detector
        self._cnn_path = models / CNN_DETECTOR_FILE
        self._cnn = None  # loaded on first need
        self.detector = dlib.get_frontal_face_detector() if face_detector == "hog" else None

    def detect_faces(self, image: np.ndarray) -> list[DetectedFace]:
        image = np.ascontiguousarray(image)
        hits = []
        if self.detector is not None:
            rects, scores, _ = self.detector.run(image, UPSAMPLE, 0.0)  # = detector(image, 1), with the scores
            hits = list(zip(rects, scores, strict=True))
        if not hits:
            hits = [(hit.rect, hit.confidence) for hit in self._cnn_detector()(image, UPSAMPLE)]
        # dlib's right/bottom are inclusive; our boxes are exclusive.
        return [DetectedFace(box=(float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)),
                             score=float(score)) for r, score in hits]

    def _cnn_detector(self):
        if self._cnn is None:
            self._cnn = self._dlib.cnn_face_detection_model_v1(str(self._cnn_path))
        return self._cnn

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        shape = self.predictor(np.ascontiguousarray(image), self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)

    def close(self) -> None:
        del self.predictor
        self.detector = self._cnn = None
