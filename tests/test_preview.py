"""The face preview: every face, its landmarks and the crop a run will use, drawn before any rendering."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sadtalker.errors import InvalidInput, NoFaceDetected
from sadtalker.preview import CHOSEN, CROP, Nudge, preview_faces


@pytest.fixture(scope="module")
def dlib(dlib_backend):
    return dlib_backend


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    """The astronaut beside her mirror image: two real faces, 512 px apart."""
    photo = skimage.data.astronaut()
    return np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))


def _faces_on_the_left_and_right(found):
    real = [face for face in found.faces if face.box[1] < 200]  # dlib also reports the round mission patch
    return sorted(real, key=lambda face: face.box[0])


def test_two_faces_are_listed_and_the_user_can_pick_either(dlib, two_faces):
    default = preview_faces(two_faces, dlib)
    left, right = _faces_on_the_left_and_right(default)
    assert left.box[2] < 512 <= right.box[0]
    assert default.face_box is None  # the run picks the same face by itself
    assert any("faces found" in message for message in default.messages)

    index_right = default.faces.index(right)
    picked = preview_faces(two_faces, dlib, face_index=index_right)
    assert picked.box == right.box and picked.face_box == right.box
    x0, y0, x1, y1 = right.box
    # dlib's upsampled HOG box ends above the chin (the chin sits ~12% of the box height below it; test_detect)
    margin = 0.15 * (y1 - y0)
    assert np.all((picked.landmarks[:, 0] >= x0 - margin) & (picked.landmarks[:, 0] <= x1 + margin))
    assert np.all((picked.landmarks[:, 1] >= y0 - margin) & (picked.landmarks[:, 1] <= y1 + margin))
    with pytest.raises(InvalidInput, match="does not exist"):
        preview_faces(two_faces, dlib, face_index=len(default.faces))


def test_the_drawing_shows_the_chosen_box_and_the_crop(dlib, two_faces):
    found = preview_faces(two_faces, dlib)
    assert found.image.shape == two_faces.shape and found.image.dtype == np.uint8
    x0, y0, x1, y1 = found.box
    assert tuple(found.image[y0 + 1, (x0 + x1) // 2]) == CHOSEN  # top edge of the chosen box
    cx0, cy0, cx1, cy1 = found.crop_box
    assert tuple(found.image[(cy0 + cy1) // 2, cx0 + 1]) == CROP  # left edge of the crop
    assert not np.array_equal(found.image, two_faces)


def test_the_crop_follows_the_preprocess_mode(dlib, two_faces):
    crops = {mode: preview_faces(two_faces, dlib, preprocess=mode).crop_box
             for mode in ("crop", "extcrop", "resize", "full", "extfull")}
    assert crops["resize"] == (0, 0, two_faces.shape[1], two_faces.shape[0])
    inner, outer = crops["crop"], crops["extcrop"]
    assert outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]
    assert outer != inner
    assert crops["full"] == inner and crops["extfull"] == outer


def test_a_nudged_box_is_what_the_run_uses(dlib, two_faces, tmp_path):
    plain = preview_faces(two_faces, dlib)
    nudged = preview_faces(two_faces, dlib, nudge=Nudge(dx=0.25, dy=0.0, scale=1.5))
    (x0, y0, x1, y1), (n0, m0, n1, m1) = plain.box, nudged.box
    assert nudged.face_box == nudged.box
    assert abs((n1 - n0) - 1.5 * (x1 - x0)) <= 2 and abs(((n0 + n1) - (x0 + x1)) / 2 - 0.25 * (x1 - x0)) <= 2
    assert nudged.crop_box != plain.crop_box
    # the box handed to the run gives the same landmarks in the pipeline's own face step
    again = preview_faces(two_faces, dlib, face_box=nudged.face_box)
    np.testing.assert_array_equal(again.landmarks, nudged.landmarks)
    with pytest.raises(InvalidInput):
        Nudge(scale=10)


def test_no_face_is_explained_before_any_rendering(dlib):
    with pytest.raises(NoFaceDetected, match="--face-box"):
        preview_faces(np.full((300, 300, 3), 128, np.uint8), dlib)


def test_preview_command_writes_the_picture(two_faces, tmp_path):
    photo = tmp_path / "two.png"
    Image.fromarray(two_faces).save(photo)
    out = tmp_path / "preview.png"
    done = subprocess.run([sys.executable, "-m", "sadtalker", "preview", "--image", str(photo), "--face-detector",
                           "dlib", "--preprocess", "extcrop", "--nudge", "0", "0", "1.2", "--out", str(out),
                           "--checkpoints", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--face-box" in done.stdout and "extcrop crop:" in done.stdout
    assert Image.open(out).size == (two_faces.shape[1], two_faces.shape[0])
