"""Audio2Exp, Audio2Pose and the whole audio -> coefficients stage against the official run (fake weights).

Golden: audio2coeff_speech / audio2coeff_variants (README: atol 1e-4 for coefficients, expression, pose and audio
features; `ratio`, `blink_draws`, `z` are inputs, fed as recorded AND reproduced by seeded generators).
"""

from __future__ import annotations

import random

import fakes
import numpy as np
import pytest
import torch

from sadtalker import motion
from sadtalker.errors import InvalidInput
from sadtalker.nets.audio2exp import Audio2Exp
from sadtalker.nets.audio2pose import Audio2Pose

ATOL = 1e-4


@pytest.fixture(scope="module")
def exp_net() -> Audio2Exp:
    net = Audio2Exp()
    net.load_state_dict(fakes.fake_state(fakes.SAFETENSORS_256, prefix="audio2exp"), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def pose_net() -> Audio2Pose:
    net = Audio2Pose()
    net.load_state_dict(fakes.fake_state(fakes.SAFETENSORS_256, prefix="audio2pose"), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def speech(golden) -> dict[str, np.ndarray]:
    return golden("audio2coeff_speech")


@pytest.fixture(scope="module")
def variants(golden) -> dict[str, np.ndarray]:
    return golden("audio2coeff_variants")


@pytest.fixture(scope="module")
def frontend(golden) -> dict[str, np.ndarray]:
    return golden("audio_frontend")


def close(actual, expected, atol: float = ATOL) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=atol)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------- networks

@pytest.mark.parametrize("prefix, cls", [("audio2exp", Audio2Exp), ("audio2pose", Audio2Pose)])
def test_state_dict_is_the_official_key_set(prefix, cls):
    official = {k[len(prefix) + 1:]: v[0] for k, v in fakes.manifest()[fakes.SAFETENSORS_256].items()
                if k.startswith(prefix + ".")}
    ours = {k: list(v.shape) for k, v in cls().state_dict().items()}
    assert ours == official


def test_audio2exp_audio_features(exp_net, speech, frontend):
    mels = torch.from_numpy(frontend["indiv_mels"]).unsqueeze(1)
    with torch.no_grad():
        close(exp_net.audio_features(mels), speech["style0_exp_audio_feat"])


def test_predict_expression_from_recorded_ratio(exp_net, speech, frontend):
    frames = slice(50, 110)  # holds the blinks starting at frames 59 and 102
    exp = motion.predict_expression(exp_net, frontend["indiv_mels"][frames], speech["ref"][frames],
                                    speech["ratio"][frames])
    close(exp, speech["style0_exp_pred"][frames])


def test_audio2pose_embeddings_and_decoder_windows(pose_net, speech, frontend):
    mels = torch.from_numpy(frontend["indiv_mels"]).unsqueeze(1)
    moving = mels[1:]  # frame 0 is the reference; 305 = 9 full windows + the last 32 frames
    windows = torch.stack([*(moving[32 * i:32 * (i + 1)] for i in range(9)), moving[-32:]])
    ref_pose = torch.from_numpy(speech["ref"][:1, 64:70]).expand(10, 6)
    with torch.no_grad():
        emb = torch.cat([pose_net.encode_audio(w) for w in windows])
        close(emb, speech["style0_pose_audio_emb"])
        golden_emb = torch.from_numpy(speech["style0_pose_audio_emb"])
        for style in (0, 45):
            z = torch.from_numpy(speech[f"style{style}_z"]).reshape(10, 64)
            motion_windows = pose_net.decode(ref_pose, z, torch.full((10,), style), golden_emb)
            close(motion_windows, speech[f"style{style}_pose_motion_win"])


def test_audio2pose_short_clip_pads_the_window_front(pose_net, variants, frontend):
    mels = torch.from_numpy(frontend["short_indiv_mels"]).unsqueeze(1)
    with torch.no_grad():
        emb = pose_net.encode_audio(mels[1:])
    golden_emb = variants["short_pose_audio_emb"]
    close(emb[0], golden_emb[0, 23:])
    np.testing.assert_array_equal(golden_emb[0, :23], np.repeat(golden_emb[0, 23:24], 23, 0))
    with torch.no_grad():
        motion_window = pose_net.decode(torch.from_numpy(variants["short_ref"][:1, 64:70]),
                                        torch.from_numpy(variants["short_z"]).reshape(1, 64), torch.tensor([12]),
                                        torch.from_numpy(golden_emb))
    close(motion_window, variants["short_pose_motion_win"])


def test_style45_pose_from_recorded_z(pose_net, speech, frontend, speech_style0):
    raw, z_used = motion.predict_pose(pose_net, frontend["indiv_mels"], speech["ref"][0, 64:70], 45,
                                      z=speech["style45_z"])
    close(raw, speech["style45_pose_pred_raw"])
    np.testing.assert_array_equal(z_used, speech["style45_z"])
    coeffs = np.concatenate([speech_style0.exp, motion.smooth_pose(raw)], 1)  # expression does not see the style
    close(coeffs, speech["style45_coeff"])
    # the class bias matters: style 0 and 45 differ far beyond the tolerance
    assert np.abs(speech["style45_coeff"] - speech["style0_coeff"]).max() > 10 * ATOL


def test_seeded_sources_reproduce_the_recorded_draws(speech, variants):
    np.testing.assert_array_equal(motion.draw_blinks(306, random.Random(1234)), speech["blink_draws"])
    np.testing.assert_array_equal(motion.blink_ratio(306, random.Random(1234)), speech["ratio"])
    assert motion.pose_window_count(306) == len(speech["style0_z"]) == 10
    assert motion.pose_window_count(10) == len(variants["short_z"]) == 1
    assert np.array_equal(speech["style0_z"], speech["style45_z"])  # same seed, same draws
    np.testing.assert_array_equal(motion.draw_blinks(50, random.Random(99)), variants["idle_blink_draws"])


def test_predict_pose_rejects_unknown_style(pose_net, frontend):
    with pytest.raises(InvalidInput, match="pose_style"):
        motion.predict_pose(pose_net, frontend["short_indiv_mels"], np.zeros(6), 46)


# ------------------------------------------------------------------------------------- the whole Audio2Coeff stage

def check_sequence(result: motion.CoefficientSequence, golden: dict, prefix: str, exp_key: str | None = None,
                   raw_key: str | None = None) -> None:
    close(result.exp, golden[exp_key or f"{prefix}exp_pred"])
    close(result.pose_raw, golden[raw_key or f"{prefix}pose_pred_raw"])
    close(result.coeffs, golden[f"{prefix}coeff"])
    assert result.coeffs.dtype == np.float32 and result.coeffs.shape == golden[f"{prefix}coeff"].shape


@pytest.fixture(scope="module")
def speech_style0(exp_net, pose_net, speech, frontend) -> motion.CoefficientSequence:
    return motion.audio_to_coefficients(exp_net, pose_net, frontend["indiv_mels"], speech["first_coeff"],
                                       pose_style=0, rng=random.Random(1234), generator=seeded(777))


def test_speech_style0_seeded_sources_reproduce_the_official_run(speech_style0, speech):
    np.testing.assert_array_equal(speech_style0.ratio, speech["ratio"])
    np.testing.assert_array_equal(speech_style0.z, speech["style0_z"])
    check_sequence(speech_style0, speech, "style0_")


def test_reference_video_blink_and_pose(exp_net, pose_net, speech, variants, frontend):
    result = motion.audio_to_coefficients(exp_net, pose_net, frontend["indiv_mels"], speech["first_coeff"],
                                         rng=random.Random(1234), generator=seeded(777),
                                         ref_blink_coeffs=variants["refvid_coeff_in"],
                                         ref_pose_coeffs=variants["refvid_coeff_in"])
    np.testing.assert_array_equal(result.ratio, variants["refvid_ratio"])
    np.testing.assert_array_equal(result.z, variants["refvid_z"])
    check_sequence(result, variants, "refvid_")


def test_idle_mode_is_all_zero_windows(exp_net, pose_net, speech, variants):
    assert tuple(variants["idle_indiv_mels_shape"]) == (1, 50, 1, 80, 16)
    windows = np.zeros((50, 80, 16), np.float32)
    seeded_run = motion.audio_to_coefficients(exp_net, pose_net, windows, speech["first_coeff"], pose_style=7,
                                             rng=random.Random(99), generator=seeded(5))
    np.testing.assert_array_equal(seeded_run.ratio, variants["idle_ratio"])
    np.testing.assert_array_equal(seeded_run.z, variants["idle_z"])
    check_sequence(seeded_run, variants, "idle_")


def test_short_clip_pad_branch_and_small_smoothing_window(exp_net, pose_net, speech, variants, frontend):
    result = motion.audio_to_coefficients(exp_net, pose_net, frontend["short_indiv_mels"], speech["first_coeff"],
                                         pose_style=12, rng=random.Random(1234), generator=seeded(31))
    np.testing.assert_array_equal(result.ratio, variants["short_ratio"])
    np.testing.assert_array_equal(result.z, variants["short_z"])
    np.testing.assert_array_equal(motion.source_ref(speech["first_coeff"], 10), variants["short_ref"])
    check_sequence(result, variants, "short_")
    replayed = motion.audio_to_coefficients(exp_net, pose_net, frontend["short_indiv_mels"], speech["first_coeff"][0],
                                           pose_style=12, ratio=variants["short_ratio"], z=variants["short_z"])
    check_sequence(replayed, variants, "short_")


def test_use_blink_false_zeroes_the_ratio(exp_net, pose_net, speech, frontend):
    result = motion.audio_to_coefficients(exp_net, pose_net, frontend["short_indiv_mels"][:3], speech["first_coeff"],
                                         use_blink=False, ratio=np.ones((3, 1)), generator=seeded(1))
    assert not result.ratio.any() and result.coeffs.shape == (3, 70)


def test_too_short_audio_is_a_clear_error(exp_net, pose_net, speech, frontend):
    with pytest.raises(InvalidInput, match="at least 3 video frames"):
        motion.audio_to_coefficients(exp_net, pose_net, frontend["short_indiv_mels"][:2], speech["first_coeff"],
                                    generator=seeded(1))
