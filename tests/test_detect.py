"""Face detection + 68 landmarks: the common interface, dlib for real on the astronaut, and the wiring of the
facexlib / face-alignment backends with random-weight files of the official layout (no network)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sadtalker.errors import ImageError, InvalidInput, MissingWeights, NoFaceDetected
from sadtalker.face.detect import (
    DetectedFace,
    DetectorUnavailable,
    FaceLandmarks,
    detect_landmarks,
    open_detector,
    video_landmarks,
)

skimage_data = pytest.importorskip("skimage.data")

# iBUG-68 groups
JAW, NOSE_TIP, MOUTH = slice(0, 17), 30, slice(48, 68)
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # the subject's right eye is on the image's left


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def flat_image() -> np.ndarray:
    return np.full((160, 200, 3), 128, np.uint8)


def grown(box, fraction: float):
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def inside(points: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    return bool(np.all((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)))


# ---------------------------------------------------------------- the interface, with a scripted backend


class ScriptedBackend:
    """Returns given boxes; landmarks = a grid that fills the box (so we can see which box was used)."""

    name = "scripted"

    def __init__(self, faces_per_call: list[list[DetectedFace]]):
        self.faces_per_call = list(faces_per_call)
        self.landmark_boxes: list[tuple[int, int, int, int]] = []

    def detect_faces(self, image):
        return self.faces_per_call.pop(0)

    def landmarks(self, image, box):
        self.landmark_boxes.append(box)
        x0, y0, x1, y1 = box
        t = np.linspace(0, 1, 68, dtype=np.float32)
        return np.stack([x0 + t * (x1 - x0), y0 + t * (y1 - y0)], axis=1)

    def close(self):
        pass


def face(x0, y0, x1, y1, score=0.99) -> DetectedFace:
    return DetectedFace(box=(float(x0), float(y0), float(x1), float(y1)), score=score)


def test_largest_face_is_used_and_the_choice_is_logged(flat_image, caplog):
    small, large = face(10, 10, 50, 50, score=0.999), face(100.7, 20.2, 180.9, 110.5, score=0.98)
    backend = ScriptedBackend([[small, large]])
    with caplog.at_level(logging.WARNING, logger="sadtalker"):
        result = detect_landmarks(flat_image, detector=backend)
    assert isinstance(result, FaceLandmarks)
    assert result.box == (100, 20, 180, 110)  # corners truncated like the official int() crop
    assert result.faces_found == 2
    assert result.points.shape == (68, 2) and result.points.dtype == np.float32
    assert "2 faces" in caplog.text and "largest" in caplog.text


def test_boxes_are_clipped_to_the_image(flat_image):
    backend = ScriptedBackend([[face(-12.5, -3, 230, 170)]])
    assert detect_landmarks(flat_image, detector=backend).box == (0, 0, 200, 160)


def test_no_face_says_what_to_try(flat_image):
    with pytest.raises(NoFaceDetected) as caught:
        detect_landmarks(flat_image, detector=ScriptedBackend([[]]))
    message = str(caught.value)
    assert "resize" in message and "--face-box" in message


def test_manual_box_skips_detection(flat_image):
    backend = ScriptedBackend([])  # detect_faces would fail: nothing scripted
    result = detect_landmarks(flat_image, detector=backend, face_box=(20, 30, 120, 150))
    assert backend.landmark_boxes == [(20, 30, 120, 150)]
    assert result.box == (20, 30, 120, 150) and result.faces_found == 1


@pytest.mark.parametrize("bad_box", [(50, 50, 40, 90), (300, 10, 400, 90), (1, 2, 3)])
def test_unusable_manual_box_is_rejected(flat_image, bad_box):
    with pytest.raises(InvalidInput):
        detect_landmarks(flat_image, detector=ScriptedBackend([]), face_box=bad_box)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64, 3), np.uint16),
        [[0, 0, 0]],
    ],
    ids=["gray", "rgba", "float", "uint16", "list"],
)
def test_only_hw3_uint8_images_are_accepted(image):
    with pytest.raises(ImageError):
        detect_landmarks(image, detector=ScriptedBackend([[face(0, 0, 10, 10)]]))


def test_unknown_detector_name():
    with pytest.raises(InvalidInput, match="face-alignment"):
        open_detector("mediapipe")


def test_video_reuses_the_previous_frame_and_backfills_the_start(flat_image):
    a, b = face(10, 10, 60, 60), face(100, 40, 180, 120)
    backend = ScriptedBackend([[], [a], [], [b], []])
    points = video_landmarks([flat_image] * 5, detector=backend)
    assert points.shape == (5, 68, 2) and points.dtype == np.float32
    first, second = points[1], points[3]
    assert not np.array_equal(first, second)
    for index, expected in [(0, first), (1, first), (2, first), (3, second), (4, second)]:
        np.testing.assert_array_equal(points[index], expected)


def test_video_without_any_face_raises(flat_image):
    with pytest.raises(NoFaceDetected):
        video_landmarks([flat_image] * 3, detector=ScriptedBackend([[], [], []]))


# ---------------------------------------------------------------- dlib, real weights, real image


def test_dlib_finds_the_astronauts_face(dlib_backend, astronaut, golden):
    result = detect_landmarks(astronaut, detector=dlib_backend)
    points = result.points
    x0, y0, x1, y1 = result.box
    hand_placed = golden("crop_align_paste")["lm68_full"]
    # The official recipe upsamples once, so HOG also scores the mission patch at (126, 335)-(215, 425): the
    # largest box, the face, is used.
    assert result.faces_found == 2
    assert x0 < hand_placed[:, 0].mean() < x1 and y0 < hand_placed[:, 1].mean() < y1
    # dlib's HOG box is tight: the chin pokes out 12 % of the box height below it (measured)
    assert inside(points, grown(result.box, 0.15))
    eyes_y = points[36:48, 1].mean()
    assert eyes_y < points[NOSE_TIP, 1] < points[MOUTH, 1].mean()
    assert points[RIGHT_EYE, 0].mean() < points[NOSE_TIP, 0] < points[LEFT_EYE, 0].mean()
    assert points[JAW, 1].max() > points[MOUTH, 1].max()  # the chin is below the mouth
    distance = np.linalg.norm(points - hand_placed, axis=1)
    assert distance.mean() < 8.0, f"mean distance to the hand-placed landmarks {distance.mean():.2f} px"


def test_dlib_cnn_detector_on_the_astronaut(astronaut, golden):
    pytest.importorskip("dlib")
    from sadtalker.face.detectors.dlib_backend import DlibLandmarker

    backend = DlibLandmarker(face_detector="cnn")
    try:
        result = detect_landmarks(astronaut, detector=backend)
    finally:
        backend.close()
    hand_placed = golden("crop_align_paste")["lm68_full"]
    assert result.faces_found == 1
    assert np.linalg.norm(result.points - hand_placed, axis=1).mean() < 8.0


def test_dlib_two_faces_picks_the_larger(dlib_backend, astronaut, caplog):
    import cv2

    small = astronaut[40:240, 130:330]  # face about 90 px
    large = cv2.resize(small, (300, 300), interpolation=cv2.INTER_AREA)  # the same face, about 135 px
    canvas = np.zeros((300, 500, 3), np.uint8)
    canvas[50:250, :200] = small
    canvas[:, 200:] = large
    with caplog.at_level(logging.WARNING, logger="sadtalker"):
        result = detect_landmarks(canvas, detector=dlib_backend)
    assert result.faces_found == 2
    assert result.box[0] >= 200 and result.points[:, 0].min() > 200
    assert "2 faces" in caplog.text


def test_dlib_manual_box(dlib_backend, astronaut, golden):
    box = (165, 70, 280, 180)
    result = detect_landmarks(astronaut, detector=dlib_backend, face_box=box)
    assert result.box == box and result.faces_found == 1
    hand_placed = golden("crop_align_paste")["lm68_full"]
    assert np.linalg.norm(result.points - hand_placed, axis=1).mean() < 8.0


@pytest.mark.parametrize("which", ["coffee", "flat"])
def test_dlib_no_face(dlib_backend, flat_image, which):
    image = skimage_data.coffee() if which == "coffee" else flat_image
    with pytest.raises(NoFaceDetected, match="--face-box"):
        detect_landmarks(image, detector=dlib_backend)


def test_dlib_video(dlib_backend, astronaut):
    blank = np.zeros_like(astronaut)
    points = video_landmarks([blank, astronaut, blank], detector=dlib_backend)
    assert points.shape == (3, 68, 2)
    np.testing.assert_array_equal(points[0], points[1])
    np.testing.assert_array_equal(points[2], points[1])
    with pytest.raises(NoFaceDetected):
        video_landmarks([blank, blank], detector=dlib_backend)


def test_dlib_is_never_the_default():
    import inspect

    from sadtalker.face import detect

    assert detect.DEFAULT_DETECTOR == "facexlib"
    for function in (detect.detect_landmarks, detect.video_landmarks, detect.open_detector):
        defaults = [p.default for p in inspect.signature(function).parameters.values()]
        assert "dlib" not in defaults


# ---------------------------------------------------------------- facexlib wiring (random weights, official names)


@pytest.fixture(scope="module")
def facexlib_models(tmp_path_factory) -> Path:
    pytest.importorskip("torchvision")
    pytest.importorskip("facexlib")
    from facexlib.alignment.awing_arch import FAN
    from facexlib.detection.retinaface import RetinaFace

    folder = tmp_path_factory.mktemp("facexlib_models")
    detector = RetinaFace(network_name="resnet50", half=False, device="cpu")
    # The released detector file was saved from DataParallel ("module." keys); the aligner's is {'state_dict': ...}.
    torch.save({f"module.{k}": v for k, v in detector.state_dict().items()}, folder / "detection_Resnet50_Final.pth")
    torch.manual_seed(0)  # with this seed no heatmap peak of the astronaut crop below sits in the very last cell
    aligner = FAN(num_modules=4, num_landmarks=98, device="cpu")
    torch.save({"state_dict": aligner.state_dict()}, folder / "alignment_WFLW_4HG.pth")
    return folder


@pytest.fixture(scope="module")
def facexlib_backend(facexlib_models):
    backend = open_detector("facexlib", models_dir=facexlib_models)
    yield backend
    backend.close()


def test_facexlib_missing_weights_name_the_files(tmp_path):
    pytest.importorskip("facexlib")
    with pytest.raises(MissingWeights) as caught:
        open_detector("facexlib", models_dir=tmp_path)
    message = str(caught.value)
    assert "detection_Resnet50_Final.pth" in message and "alignment_WFLW_4HG.pth" in message
    assert str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_facexlib_98_to_68_is_the_official_mapping():
    facexlib_alignment = pytest.importorskip("facexlib.alignment")
    from sadtalker.face.detectors.facexlib_backend import wflw98_to_ibug68

    points98 = np.random.default_rng(1).uniform(0, 256, (98, 2))
    ours = wflw98_to_ibug68(points98)
    assert ours.shape == (68, 2) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, facexlib_alignment.landmark_98_to_68(points98))


def test_facexlib_heatmap_decoding_is_the_official_one(monkeypatch):
    awing = pytest.importorskip("facexlib.alignment.awing_arch")
    from sadtalker.face.detectors.facexlib_backend import heatmap_peaks

    monkeypatch.setattr(np, "float", float, raising=False)  # facexlib still spells float64 `np.float`
    rng = np.random.default_rng(2)
    interior = rng.standard_normal((1, 98, 64, 64)).astype(np.float32)
    interior[:, :, :2] -= 10  # keep every peak away from the first and last rows ...
    interior[:, :, -2:] -= 10
    edge = interior.copy()
    edge[0, 5, 0, 7] = 50  # ... and once with a peak in the first row (the "any" fallback)
    edge[0, 9, 63, 3] = 50
    for heatmaps in (interior, edge):
        np.testing.assert_array_equal(heatmap_peaks(heatmaps[0]), awing.calculate_points(heatmaps)[0])


def test_facexlib_landmarks_follow_the_official_recipe(facexlib_backend, astronaut, monkeypatch):
    """Crop to the box, AWing on the crop, 98 -> 68, shift by the corner: the official call, same numbers."""
    from facexlib.alignment import landmark_98_to_68

    monkeypatch.setattr(np, "float", float, raising=False)
    box = (170, 70, 280, 182)
    result = detect_landmarks(astronaut, detector=facexlib_backend, face_box=box)
    with torch.no_grad():
        try:
            official = landmark_98_to_68(facexlib_backend.aligner.get_landmarks(astronaut[70:182, 170:280]))
        except IndexError:  # a peak in the last heatmap cell: the official decoder indexes past the end
            pytest.skip("these random weights put a heatmap peak where the official decoder crashes")
    official[:, 0] += 170
    official[:, 1] += 70
    assert result.points.shape == (68, 2)
    np.testing.assert_allclose(result.points, official, rtol=0, atol=1e-4)
    assert inside(result.points, box)


def test_facexlib_detection_is_the_official_call(facexlib_backend, astronaut):
    from PIL import Image

    small = np.ascontiguousarray(astronaut[::4, ::4])  # 128 x 128 keeps the random-weight ResNet-50 quick
    faces = facexlib_backend.detect_faces(small)
    with torch.no_grad():
        official = facexlib_backend.detector.detect_faces(Image.fromarray(small), 0.97)
    assert len(faces) == len(official)
    for ours, row in zip(faces, official, strict=True):
        assert ours.score > 0.97
        np.testing.assert_allclose(ours.box, row[:4], rtol=0, atol=1e-4)


def test_facexlib_without_torchvision_names_the_package(monkeypatch, tmp_path):
    pytest.importorskip("facexlib")
    for name in [name for name in sys.modules if name == "facexlib" or name.startswith("facexlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DetectorUnavailable) as caught:
        open_detector("facexlib", models_dir=tmp_path)
    assert "torchvision" in str(caught.value) and "face-alignment" in str(caught.value)


# ---------------------------------------------------------------- face-alignment wiring (random weights)


@pytest.fixture(scope="module")
def face_alignment_models(tmp_path_factory) -> Path:
    pytest.importorskip("face_alignment")
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from sadtalker.face.detectors.face_alignment_backend import weight_paths

    folder = tmp_path_factory.mktemp("fa_models")
    fan_path, s3fd_path = weight_paths(folder)
    fan_path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), fan_path)
    torch.save(s3fd().state_dict(), s3fd_path)
    return folder


@pytest.fixture(scope="module")
def face_alignment_backend(face_alignment_models):
    hub_before = torch.hub.get_dir()
    backend = open_detector("face-alignment", models_dir=face_alignment_models)
    assert torch.hub.get_dir() == hub_before  # the global torch hub folder is put back
    yield backend
    backend.close()


def test_face_alignment_missing_weights(tmp_path):
    pytest.importorskip("face_alignment")
    with pytest.raises(MissingWeights, match="2DFAN4-11f355bf06.pth.tar"):
        open_detector("face-alignment", models_dir=tmp_path)


def test_face_alignment_detects_offline(face_alignment_backend, astronaut):
    faces = face_alignment_backend.detect_faces(np.ascontiguousarray(astronaut[::4, ::4]))
    assert isinstance(faces, list)
    assert all(isinstance(hit, DetectedFace) and len(hit.box) == 4 for hit in faces)


@pytest.mark.slow  # face-alignment's numba JIT compiles on the first landmark call (10-50 s on 2 cores)
def test_face_alignment_landmarks_in_a_box(face_alignment_backend, astronaut):
    box = (170, 70, 280, 182)
    result = detect_landmarks(astronaut, detector=face_alignment_backend, face_box=box)
    assert result.points.shape == (68, 2) and result.points.dtype == np.float32
    # FAN looks at a square around the box centre (raised by 0.12 box heights), 200 * (w + h) / 195 px wide.
    x0, y0, x1, y1 = box
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)
    half = 100 * ((x1 - x0) + (y1 - y0)) / 195 + 1
    assert inside(result.points, (centre_x - half, centre_y - half, centre_x + half, centre_y + half))
