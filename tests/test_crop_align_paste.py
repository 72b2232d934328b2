"""Crop (5 modes), 224 alignment and paste-back against the official code's golden outputs
(shared/golden/audio/README.md "crop_align_paste.npz", facerender/README.md face3d_recon (b))."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from sadtalker.errors import InvalidInput, NoFaceDetected
from sadtalker.face.align import (
    STANDARD_LANDMARKS_3D,
    align_for_face3d,
    fallback_landmarks5,
    five_points,
)
from sadtalker.face.crop import PREPROCESS_MODES, CropInfo, crop_face, face_quad
from sadtalker.face.paste import PasteBack, paste_back

CROP_MODES = ("crop", "extcrop", "full", "extfull")


@pytest.fixture(scope="module")
def cap(golden):
    return golden("crop_align_paste")


@pytest.fixture(scope="module")
def image():
    return astronaut()


def test_standard_landmarks_are_the_official_ones(cap):
    np.testing.assert_array_equal(STANDARD_LANDMARKS_3D, cap["lm3d_std_5x3"])


@pytest.mark.parametrize("mode", CROP_MODES)
def test_crop_boxes_exact(cap, image, mode):
    info = crop_face(image, cap["lm68_full"], mode).info
    assert info.size == tuple(cap[f"{mode}_crop_info_size"])
    assert info.crop_box == tuple(cap[f"{mode}_crop_info_crop"])
    np.testing.assert_array_equal(np.array(info.quad_box), cap[f"{mode}_crop_info_quad"])
    assert info.shrink == 1


def test_resize_mode_info(cap, image):
    cropped = crop_face(image, None, "resize")
    assert cropped.info.size == tuple(cap["resize_crop_info_size"])
    assert cropped.info.crop_box is None and cropped.info.quad_box is None
    assert cropped.landmarks is None
    np.testing.assert_array_equal(cropped.face, cap["resize_face256"])


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
def test_crop_pixels_and_landmarks(cap, image, mode):
    cropped = crop_face(image, cap["lm68_full"], mode)
    np.testing.assert_array_equal(cropped.region, cap[f"{mode}_crop_img"])
    np.testing.assert_array_equal(cropped.face, cap[f"{mode}_face256"])
    # golden lm256 went through a text file with 3 decimals
    np.testing.assert_allclose(cropped.landmarks, cap[f"{mode}_lm256"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
def test_align_for_face3d(cap, mode):
    aligned = align_for_face3d(cap[f"{mode}_face256"], cap[f"{mode}_lm256"])
    np.testing.assert_array_equal(aligned.image, cap[f"{mode}_aligned224"])
    np.testing.assert_allclose(aligned.landmarks, cap[f"{mode}_lm224"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(aligned.trans_params, cap[f"{mode}_trans_params"], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(aligned.trans_params[2:].astype(np.float32), cap[f"{mode}_coeff_tail3"])


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
def test_five_points_and_y_up_input(cap, mode):
    flipped = cap[f"{mode}_lm256_flipped"]
    np.testing.assert_array_equal(five_points(flipped), cap[f"{mode}_lm5p"])
    aligned = align_for_face3d(cap[f"{mode}_face256"], flipped, y_down=False)
    np.testing.assert_allclose(aligned.trans_params, cap[f"{mode}_trans_params"], rtol=1e-9, atol=0)


def test_no_face_fallback_alignment(golden):
    recon = golden("face3d_recon")
    np.testing.assert_array_equal(fallback_landmarks5(256, 256), recon["b_landmarks_5"])
    aligned = align_for_face3d(recon["b_image_u8"], np.full((68, 2), -1.0))
    np.testing.assert_array_equal(aligned.image, recon["b_aligned_u8"])
    np.testing.assert_allclose(aligned.trans_params, recon["b_trans_params"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(aligned.trans_params.astype(np.float32), recon["b_trans_params"])  # stored f32
    np.testing.assert_array_equal(aligned.trans_params[2:].astype(np.float32), recon["b_coeff_3dmm_73"][0, 70:])


@pytest.mark.parametrize("mode", ["full", "extfull"])
def test_paste_back_matches_official(cap, image, mode):
    info = crop_face(image, cap["lm68_full"], mode).info
    extended = mode == "extfull"
    rendered = cap[f"{mode}_paste_rendered256"]
    paster = PasteBack(image, info, extended=extended)
    np.testing.assert_array_equal(paster.aspect_frame(rendered), cap[f"{mode}_paste_frame_in_bgr"][..., ::-1])
    pasted = paster(rendered)
    expected = cap[f"{mode}_paste_out_bgr"][..., ::-1]
    diff = np.abs(pasted.astype(np.int16) - expected)
    assert diff.max() <= 1
    assert np.count_nonzero(diff) < 100  # golden README: OpenCV versions differ in "a handful of pixels"
    np.testing.assert_array_equal(paste_back(image, rendered, info, extended), pasted)


@pytest.mark.parametrize("box", [(0, 0, 97, 120), (200, 301, 512, 512), (37, 150, 96, 173)])
def test_paste_back_equals_opencv_seamless_clone(box):
    rng = np.random.default_rng(sum(box))
    ys, xs = np.mgrid[0:384, 0:512]
    background = np.stack([128 + 100 * np.sin(xs / 37 + c) * np.cos(ys / 23 - c) for c in range(3)], axis=-1)
    background = np.clip(background + rng.normal(0, 8, background.shape), 0, 255).astype(np.uint8)
    background[:, :, 1] = np.minimum(background[:, :, 1], 250)  # some saturation work for the clip
    rendered = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    rendered = cv2.GaussianBlur(rendered, (0, 0), 3)
    rendered[100:140] = 255
    x1, y1, x2, y2 = (min(v, 384) if i % 2 else v for i, v in enumerate(box))
    info = CropInfo(size=(x2 - x1 + 5, y2 - y1), crop_box=(x1, y1, x2, y2), quad_box=(0.2, 0.7, x2 - x1 + 0.1,
                    y2 - y1 + 0.9), image_size=(512, 384))

    pasted = PasteBack(background, info, extended=False)(rendered)

    frame = cv2.resize(rendered, (256, int(256 * info.size[1] / info.size[0])))
    patch = cv2.resize(frame, (x2 - x1, y2 - y1))
    expected = cv2.seamlessClone(patch, background, np.full(patch.shape, 255, np.uint8),
                                 ((x1 + x2) // 2, (y1 + y2) // 2), cv2.NORMAL_CLONE)
    diff = np.abs(pasted.astype(np.int16) - expected)
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 1e-4 * diff.size


def test_shrink_branch_on_a_huge_face(cap, image):
    """A 12x upscaled astronaut: the official code halves the image first (shrink 2). The 256 face must be
    the same view of the face as the original image gives: compared with the original resampled at the
    positions the shrunk crop implies (mean |diff| < 1, 99th percentile <= 2 grey levels), landmarks within
    0.05 px of that mapping, and the paste box within 1 original pixel of the unscaled one."""
    scale, (ox, oy) = 12, (64, 0)
    sub = image[oy:oy + 320, ox:ox + 352]
    big = cv2.resize(sub, (sub.shape[1] * scale, sub.shape[0] * scale), interpolation=cv2.INTER_LINEAR)
    lm = cap["lm68_full"].astype(np.float64)
    big_lm = (lm - [ox, oy] + 0.5) * scale - 0.5
    _, qsize = face_quad(big_lm)
    assert 2048 <= qsize < 3072

    for mode, extended in (("crop", False), ("extcrop", True)):
        cropped = crop_face(big, big_lm, mode)
        small = crop_face(image, lm, mode)
        assert cropped.info.shrink == 2

        x1, y1, _, _ = cropped.info.outer_box() if extended else cropped.info.inner_box()
        region_h, region_w = cropped.region.shape[:2]
        per_shrunk_px = scale / cropped.info.shrink  # shrunk-image pixels per original pixel
        # face pixel f -> shrunk pixel (f + .5) * region / 256 - .5 + x1 -> original pixel
        a = np.array([region_w, region_h]) / 256 / per_shrunk_px
        b = ((0.5 * np.array([region_w, region_h]) / 256 + np.array([x1, y1])) / per_shrunk_px - 0.5
             + np.array([ox, oy]))
        expected = cv2.warpAffine(image, np.array([[a[0], 0, b[0]], [0, a[1], b[1]]]), (256, 256),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        diff = np.abs(cropped.face.astype(np.int16) - expected)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 2

        np.testing.assert_allclose(cropped.landmarks, (lm - b) / a, rtol=0, atol=0.05)
        big_box = np.array(cropped.info.paste_box(extended)) / scale + [ox, oy, ox, oy]
        np.testing.assert_allclose(big_box, small.info.paste_box(extended), rtol=0, atol=1.0)


def test_inner_box_bottom_is_capped_by_the_image_width(cap):
    """Official quirk (FACTS "Crop"): ry = min(max(q1y, q2y), W), W the width even for the y axis."""
    tall = np.zeros((600, 200, 3), np.uint8)
    lm = cap["lm68_full"].astype(np.float64) - [124, -200]
    info = crop_face(tall, lm, "crop").info
    quad, _ = face_quad(lm)
    uncapped = max(quad[1, 1], quad[2, 1]) - info.crop_box[1] + 0.5
    assert uncapped > 200
    assert info.quad_box[3] == 200


def test_bad_mode_and_missing_face():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InvalidInput):
        crop_face(image, np.zeros((68, 2)), "zoom")
    with pytest.raises(NoFaceDetected):
        crop_face(image, None, "crop")
    with pytest.raises(InvalidInput):
        crop_face(image.astype(np.float32), None, "resize")
