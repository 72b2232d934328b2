"""Coefficient handling without the pose network: blinks, reference video, smoothing, renderer inputs.

Golden: audio2coeff_speech / audio2coeff_variants (coefficients atol 1e-4) and facerender_batch_coeffs (pure
indexing and scaling: exact, atol 1e-6).
"""

from __future__ import annotations

import random

import fakes
import numpy as np
import pytest

from sadtalker import motion, render_inputs
from sadtalker.errors import InvalidInput
from sadtalker.nets.audio2exp import Audio2Exp

ATOL = 1e-4
PACK_ATOL = 1e-6


@pytest.fixture(scope="module")
def speech(golden):
    return golden("audio2coeff_speech")


@pytest.fixture(scope="module")
def variants(golden):
    return golden("audio2coeff_variants")


@pytest.fixture(scope="module")
def batches(golden):
    return golden("facerender_batch_coeffs")


def close(actual, expected, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------------- blinks

def test_blinks_follow_the_official_draw_order(speech, variants):
    np.testing.assert_array_equal(motion.draw_blinks(306, random.Random(1234)), speech["blink_draws"])
    ratio = motion.blink_ratio(306, random.Random(1234))
    assert ratio.dtype == np.float32 and ratio.shape == (306, 1)
    np.testing.assert_array_equal(ratio, speech["ratio"])
    starts = np.flatnonzero(np.diff(np.r_[0.0, ratio[:, 0]]) > 0.4)
    assert starts.tolist() == [59, 102, 124, 139, 159, 232, 298]  # as the README states
    np.testing.assert_array_equal(motion.draw_blinks(50, random.Random(99)), variants["idle_blink_draws"])
    np.testing.assert_array_equal(motion.blink_ratio(50, random.Random(99)), variants["idle_ratio"])


def test_blinks_replayed_from_recorded_draws(speech, variants):
    np.testing.assert_array_equal(motion.blink_ratio(306, draws=speech["blink_draws"]), speech["ratio"])
    np.testing.assert_array_equal(motion.blink_ratio(306, draws=speech["blink_draws"][:, 2]), speech["ratio"])
    with pytest.raises(InvalidInput, match="ran out"):
        motion.blink_ratio(306, draws=speech["blink_draws"][:3])


def test_no_blinks_in_twenty_frames_or_fewer(variants):
    rng = random.Random(1234)
    assert motion.draw_blinks(20, rng).shape == (0, 3)
    np.testing.assert_array_equal(motion.blink_ratio(10, rng), variants["short_ratio"])
    assert rng.random() == random.Random(1234).random()  # nothing was drawn


# ---------------------------------------------------------------------------------------------- reference video

def test_reference_blink_replaces_the_expression_and_zeroes_the_ratio(speech, variants):
    ref, ratio = motion.apply_reference_blink(speech["ref"], speech["ratio"], variants["refvid_coeff_in"])
    np.testing.assert_array_equal(ref, variants["refvid_ref"])
    np.testing.assert_array_equal(ratio, variants["refvid_ratio"])
    np.testing.assert_array_equal(variants["refvid_blink_draws"], speech["blink_draws"])  # drawn all the same


def test_tile_reference_loops_whole_copies_then_a_part():
    rows = np.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(motion.tile_reference(rows, 10)[:, 0], [0, 2, 4, 6, 0, 2, 4, 6, 0, 2])
    np.testing.assert_array_equal(motion.tile_reference(rows, 3), rows[:3])


def test_reference_pose_adds_relative_motion(variants):
    smoothed = np.concatenate([variants["refvid_exp_pred"], motion.smooth_pose(variants["refvid_pose_pred_raw"])], 1)
    close(motion.apply_reference_pose(smoothed, variants["refvid_coeff_in"]), variants["refvid_coeff"], ATOL)


# ---------------------------------------------------------------------------------------------------- smoothing

@pytest.mark.parametrize("case", ["style0_", "style45_", "idle_", "short_"])
def test_smoothing_turns_raw_pose_into_the_official_coefficients(speech, variants, case):
    data = speech if case.startswith("style") else variants
    exp = speech["style0_exp_pred"] if case.startswith("style") else data[f"{case}exp_pred"]
    coeffs = np.concatenate([exp, motion.smooth_pose(data[f"{case}pose_pred_raw"])], 1)
    close(coeffs, data[f"{case}coeff"], ATOL)


def test_smoothing_short_sequences():
    raw = np.cumsum(np.ones((5, 6), np.float32), 0)  # a straight line is kept by any quadratic fit
    close(motion.smooth_pose(raw), raw, 1e-5)
    assert motion.smooth_pose(raw[:3]).shape == (3, 6)
    with pytest.raises(InvalidInput, match="at least 3 video frames"):
        motion.smooth_pose(raw[:2])


# ------------------------------------------------------------------------------------------------ renderer input

def test_case_a_crop(speech, batches):
    targets = render_inputs.render_targets(speech["style0_coeff"], speech["first_coeff"], preprocess="crop", still=False)
    packed = render_inputs.pack_batches(targets, 2)
    assert int(batches["A_frame_num"]) == len(targets) == 306
    close(packed[..., 13], batches["A_target_center"], PACK_ATOL)
    close(render_inputs.source_semantics(speech["first_coeff"], "crop"), batches["A_source_semantics"], PACK_ATOL)


def test_case_b_full_still_scaled_with_free_view(speech, batches):
    targets = render_inputs.render_targets(speech["style0_coeff"], speech["first_coeff"][0], preprocess="full",
                                    still=True, expression_scale=1.3)
    assert targets.shape == (306, 73)
    close(render_inputs.pack_batches(targets, 2)[..., 13], batches["B_target_center"], PACK_ATOL)
    close(render_inputs.source_semantics(speech["first_coeff"], "full"), batches["B_source_semantics"], PACK_ATOL)
    for name, keys in (("yaw", [-20, 30, 0]), ("pitch", [5]), ("roll", [0, 10])):
        angles = render_inputs.free_view_angles(keys, 306)
        assert angles.shape == (306,)
        close(render_inputs.split_batches(angles, 2), batches[f"B_{name}_c_seq"], PACK_ATOL)


def test_case_c_short_full_windows(speech, variants, batches):
    targets = render_inputs.render_targets(variants["short_coeff"], speech["first_coeff"], preprocess="crop", still=False,
                                    expression_scale=0.7)
    close(render_inputs.pack_batches(targets, 3), batches["C_target_full"], PACK_ATOL)
    close(render_inputs.source_semantics(speech["first_coeff"], "crop"), batches["C_source_semantics"], PACK_ATOL)


def test_frame_windows_on_demand_equal_the_packed_layout(speech):
    targets = render_inputs.render_targets(speech["style0_coeff"], speech["first_coeff"], preprocess="extfull", still=False)
    packed = render_inputs.pack_batches(targets, 4)  # (4, 77, 73, 27): 306 frames + 2 repeats of the last window
    flat = packed.reshape(-1, 73, 27)
    np.testing.assert_array_equal(render_inputs.frame_windows(targets, 0, 306), flat[:306])
    np.testing.assert_array_equal(render_inputs.frame_windows(targets, 290, 306), flat[290:306])
    np.testing.assert_array_equal(flat[306], flat[305])
    window = render_inputs.frame_windows(targets, 5, 6)[0]
    np.testing.assert_array_equal(window[:, 0], targets[0])  # t-13 clamped to frame 0
    np.testing.assert_array_equal(window[:, 13], targets[5])


def test_free_view_rule_edges():
    np.testing.assert_array_equal(render_inputs.free_view_angles([7.5], 4), [7.5] * 4)
    ramp = render_inputs.free_view_angles([0, 10], 11)
    close(ramp, [*range(10), 9], 1e-5)  # 1 degree a step; arange stops short of the end, the last value pads
    held = render_inputs.free_view_angles([0, 0, 10], 6)  # a segment without change adds no frames
    close(held, [0, 2, 4, 6, 8, 8], 1e-5)
    with pytest.raises(InvalidInput):
        render_inputs.free_view_angles([], 5)


def test_render_targets_rejects_unknown_preprocess(speech):
    with pytest.raises(InvalidInput, match="preprocess"):
        render_inputs.render_targets(speech["style0_coeff"], speech["first_coeff"], preprocess="fulll", still=False)


# ----------------------------------------------------------------------------------------- head-motion scale

def test_head_motion_scale(speech):
    coeffs, source = speech["style0_coeff"], speech["first_coeff"][0]

    def targets(**kw):
        return render_inputs.render_targets(coeffs, source, preprocess="full", **kw)

    official = targets(still=False)
    np.testing.assert_array_equal(targets(still=False, head_motion_scale=1.0), official)
    frozen = targets(still=False, head_motion_scale=0.0)
    np.testing.assert_array_equal(frozen[:, 64:70], np.repeat(source[None, 64:70], 306, 0))
    half = targets(still=False, head_motion_scale=0.5)
    close(half[:, 64:70], (official[:, 64:70] + frozen[:, 64:70]) / 2, 1e-6)
    np.testing.assert_array_equal(half[:, :64], official[:, :64])  # expression untouched
    np.testing.assert_array_equal(targets(still=True, head_motion_scale=2.0), targets(still=True))  # still wins


# ------------------------------------------------------------------------------------------ blinks in still mode

def test_still_mode_keeps_the_blink_in_the_expression_columns(speech, golden):
    """The blink ratio only enters Audio2Exp; still mode replaces columns 64: only, so blinks reach the renderer."""
    net = Audio2Exp()
    net.load_state_dict(fakes.fake_state(fakes.SAFETENSORS_256, prefix="audio2exp"), strict=True)
    net.eval()
    frames = slice(55, 66)  # the blink at 59..63
    windows = golden("audio_frontend")["indiv_mels"][frames]
    ref, ratio = speech["ref"][frames], speech["ratio"][frames]
    assert ratio.max() == 1.0
    pose = speech["style0_coeff"][frames, 64:70]
    blinking = np.concatenate([motion.predict_expression(net, windows, ref, ratio), pose], 1)
    open_eyes = np.concatenate([motion.predict_expression(net, windows, ref, np.zeros_like(ratio)), pose], 1)
    for preprocess in ("full", "crop"):
        for coeffs in (blinking, open_eyes):
            still = render_inputs.render_targets(coeffs, speech["first_coeff"], preprocess=preprocess, still=True)
            moving = render_inputs.render_targets(coeffs, speech["first_coeff"], preprocess=preprocess, still=False)
            np.testing.assert_array_equal(still[:, :64], moving[:, :64])
        still_blink = render_inputs.render_targets(blinking, speech["first_coeff"], preprocess=preprocess, still=True)
        still_open = render_inputs.render_targets(open_eyes, speech["first_coeff"], preprocess=preprocess, still=True)
        difference = np.abs(still_blink[:, :64] - still_open[:, :64]).max(1)
        assert (difference[ratio[:, 0] > 0] > 1e-2).all() and (difference[ratio[:, 0] == 0] == 0).all()
