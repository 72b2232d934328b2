"""Every option does what it says, and nothing else; at its neutral value nothing changes.

Cheap: the stages up to the renderer's inputs (source face, audio features, coefficients, renderer inputs, the
mapping net's keypoints), with fake official weights, a real photo (astronaut), real speech and real dlib
landmarks; nothing is rendered. Every field of GenerateOptions must have a test here (see the last test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fakes
from sadtalker import render_inputs
from sadtalker.errors import AudioError, InvalidInput, MissingWeights
from sadtalker.face.detect import detect_landmarks
from sadtalker.face.paste import aspect_frame
from sadtalker.image import load_image
from sadtalker.motion import EXP, POSE
from sadtalker.options import GenerateOptions, option_specs
from sadtalker.pipeline import SadTalkerPipeline
from sadtalker.render import source_image_input
from sadtalker.video import VideoWriter

SEED = 11
FRAMES = 60  # > 20 frames, so blinks are drawn; two pose windows
TESTED: set[str] = set()


def effect_of(*names: str):
    """Marks the test that proves what these options do."""
    TESTED.update(names)
    return lambda test: test


BASE = GenerateOptions(face_detector="dlib", seed=SEED)


@pytest.fixture(scope="module")
def photo(portrait) -> np.ndarray:
    return load_image(portrait)


@pytest.fixture(scope="module")
def source(pipeline, portrait):
    return pipeline.prepare_source(str(portrait), BASE)


@pytest.fixture(scope="module")
def features(pipeline, speech_clip):
    return pipeline.prepare_audio(speech_clip(FRAMES), BASE)


@pytest.fixture(scope="module")
def motion_of(pipeline, source, features):
    """motion_of(**changes) -> the coefficient sequence with those options (same seed), cached."""
    made = {}

    def run(**changes):
        key = tuple(sorted(changes.items()))
        if key not in made:
            options = BASE.replace(**changes)
            made[key] = pipeline.predict_motion(features, source, options, options.seed)
        return made[key]

    return run


@pytest.fixture(scope="module")
def base(motion_of):
    return motion_of()


def inputs_of(sequence, source, **changes) -> render_inputs.RendererInputs:
    return render_inputs.renderer_inputs(sequence.coeffs, source.coefficients, BASE.replace(**changes))


def same(a, b) -> None:
    np.testing.assert_array_equal(a, b)


def differs(a, b) -> None:
    assert np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() > 1e-4


# ------------------------------------------------------------------------------------------------ coefficients

@effect_of("seed")
def test_seed_same_gives_same_and_another_gives_other(base, motion_of):
    again = motion_of()
    other = motion_of(seed=SEED + 1)
    for name in ("coeffs", "ratio", "z"):
        same(getattr(again, name), getattr(base, name))
    differs(other.z, base.z)
    differs(other.coeffs[:, POSE], base.coeffs[:, POSE])
    assert not np.array_equal(other.ratio, base.ratio)  # the blinks are drawn from the seed too


@effect_of("pose_style")
def test_pose_style_moves_only_the_head_pose(base, motion_of):
    styled = motion_of(pose_style=7)
    same(motion_of(pose_style=0).coeffs, base.coeffs)  # 0 is the default
    same(styled.coeffs[:, EXP], base.coeffs[:, EXP])  # the expression net does not see the style
    same(styled.ratio, base.ratio)
    same(styled.pose_raw[0], base.pose_raw[0])  # frame 0 is the photo's pose
    differs(styled.coeffs[:, POSE], base.coeffs[:, POSE])


@effect_of("blink")
def test_blink_off_opens_the_eyes_and_leaves_the_pose(base, motion_of):
    assert base.ratio.max() == 1.0  # at least one blink in 60 frames
    closed = motion_of(blink=False)
    assert not closed.ratio.any()
    blinking = base.ratio[:, 0] > 0
    same(closed.coeffs[:, POSE], base.coeffs[:, POSE])
    differs(closed.coeffs[blinking, EXP], base.coeffs[blinking, EXP])
    same(motion_of(blink=True).coeffs, base.coeffs)


@pytest.fixture(scope="module")
def reference_video(photo, tmp_path_factory):
    """4 frames at 25 fps of the face, sliding right, so its crop (and coefficients) change; small for speed."""
    path = tmp_path_factory.mktemp("ref") / "ref.mp4"
    face = np.ascontiguousarray(photo[:256, 100:356])
    with VideoWriter(path, (256, 256), fps=25) as writer:
        for step in range(4):
            writer.write(np.roll(face, 5 * step, axis=1))
    return str(path)


@effect_of("ref_eyeblink")
def test_ref_eyeblink_takes_the_expression_track_from_the_video(base, motion_of, reference_video):
    copied = motion_of(ref_eyeblink=reference_video)
    assert not copied.ratio.any()  # the video's eyes replace the drawn blinks
    same(copied.coeffs[:, POSE], base.coeffs[:, POSE])
    differs(copied.coeffs[:, EXP], base.coeffs[:, EXP])


@effect_of("ref_pose")
def test_ref_pose_adds_the_videos_relative_head_motion(base, motion_of, reference_video):
    moved = motion_of(ref_pose=reference_video)
    same(moved.coeffs[:, EXP], base.coeffs[:, EXP])
    same(moved.ratio, base.ratio)
    delta = moved.coeffs[:, POSE] - base.coeffs[:, POSE]
    np.testing.assert_allclose(delta[0], 0, atol=1e-6)  # relative to the video's first frame
    assert np.abs(delta[1:4]).max() > 1e-4
    np.testing.assert_allclose(delta[4:8], delta[:4], atol=1e-5)  # the 4-frame video loops
    with pytest.raises(InvalidInput, match="still mode") as error:
        BASE.replace(ref_pose=reference_video, still=True)
    assert error.value.option == "ref_pose"


@effect_of("idle_seconds")
def test_idle_seconds_makes_silent_features_and_refuses_audio_too(pipeline, portrait, speech_clip, tmp_path):
    idle = pipeline.prepare_audio(None, BASE.replace(idle_seconds=0.4))
    assert idle.num_frames == 10 and not np.asarray(idle.windows).any() and not idle.wav.any()
    with pytest.raises(InvalidInput, match="idle_seconds") as error:  # no silent drop of either
        pipeline.generate(portrait, speech_clip(3), BASE.replace(idle_seconds=0.4), output=tmp_path / "x.mp4")
    assert error.value.option == "idle_seconds" and not list(tmp_path.iterdir())
    with pytest.raises(InvalidInput, match="idle"):
        pipeline.prepare_audio(None, BASE)  # neutral (None) needs audio


@effect_of("max_audio_seconds")
def test_max_audio_seconds_refuses_longer_audio(pipeline, speech_clip):
    clip = speech_clip(FRAMES)  # 2.4 s
    with pytest.raises(AudioError, match="1.5 s"):
        pipeline.prepare_audio(clip, BASE.replace(max_audio_seconds=1.5))
    with pytest.raises(AudioError, match="1.5 s"):
        pipeline.prepare_audio(np.zeros(16000 * 2, np.float32) + 0.1, BASE.replace(max_audio_seconds=1.5))
    assert pipeline.prepare_audio(clip, BASE.replace(max_audio_seconds=2.5)).num_frames == FRAMES


# ----------------------------------------------------------------------------------------- the source face

@effect_of("face_box")
def test_face_box_replaces_detection(pipeline, portrait, photo, source):
    found = detect_landmarks(photo, detector="dlib")
    given = pipeline.prepare_source(str(portrait), BASE.replace(face_box=tuple(int(v) for v in found.box)))
    np.testing.assert_allclose(given.landmarks, source.landmarks, atol=1.0)  # the box it found: same face
    x0, y0, x1, y1 = (int(v) for v in found.box)
    half = (x0, y0, (x0 + x1) // 2, (y0 + y1) // 2)  # a box over the upper-left quarter of the face
    other = pipeline.prepare_source(str(portrait), BASE.replace(face_box=half))
    assert np.abs(other.landmarks - source.landmarks).mean() > 5
    assert other.crop.info.crop_box != source.crop.info.crop_box


@effect_of("preprocess")
def test_preprocess_chooses_the_crop_the_mapping_net_and_the_paste(pipeline, portrait, photo, source, base):
    crops = {mode: pipeline.prepare_source(str(portrait), BASE.replace(preprocess=mode))
             for mode in ("extcrop", "resize", "full")}
    assert crops["extcrop"].crop.info == source.crop.info  # same boxes: extcrop cuts the outer one
    differs(crops["extcrop"].crop.face, source.crop.face)
    assert crops["resize"].crop.info.crop_box is None  # the whole photo
    same(crops["full"].crop.face, source.crop.face)  # full crops like crop, then pastes back
    crop_inputs = inputs_of(base, source)
    full_inputs = inputs_of(base, crops["full"], preprocess="full")
    assert crop_inputs.targets.shape[1] == 70 and full_inputs.targets.shape[1] == 73
    same(full_inputs.targets[:, :70], crop_inputs.targets)
    same(full_inputs.targets[:, 70:], np.repeat(crops["full"].coefficients[:, 70:], len(base.coeffs), 0))
    assert pipeline.models.renderer(256, "full").coeff_channels == 73
    assert pipeline.models.renderer(256, "resize").coeff_channels == 70
    frame = np.full((256, 256, 3), 90, np.uint8)
    pasted = next(pipeline.finish_frames(iter([frame]), crops["full"], BASE.replace(preprocess="full")))
    assert pasted.shape == photo.shape  # back in the whole photo
    cropped = next(pipeline.finish_frames(iter([frame]), source, BASE))
    same(cropped, aspect_frame(frame, source.crop.info.size))


@effect_of("size")
def test_size_picks_the_crop_size_and_the_512_file(pipeline, portrait, source):
    big = pipeline.prepare_source(str(portrait), BASE.replace(size=512))
    assert big.crop.face.shape == (512, 512, 3) and source.crop.face.shape == (256, 256, 3)
    generator_512 = pipeline.models.renderer(512, "crop").generator.state_dict()
    generator_256 = pipeline.models.renderer(256, "crop").generator.state_dict()
    expected_512 = fakes.fake_state(fakes.SAFETENSORS_512, prefix="generator.first")
    key = "first.conv.weight"
    assert torch.equal(generator_512[key], expected_512["conv.weight"])
    assert not torch.equal(generator_512[key], generator_256[key])  # the 512 fake is not the 256 file


@effect_of("face_detector")
def test_face_detector_chooses_the_backend(pipeline, portrait, models_dir):
    assert pipeline._detector("dlib").name == "dlib"
    with pytest.raises(MissingWeights, match="detection_Resnet50_Final.pth"):  # facexlib's weights are not here
        SadTalkerPipeline(models_dir, allow_download=False).prepare_source(str(portrait),
                                                                            BASE.replace(face_detector="facexlib"))


# ---------------------------------------------------------------------------------------- renderer inputs

@effect_of("still")
def test_still_keeps_the_photos_pose_and_the_blinks(base, source):
    moving = inputs_of(base, source)
    still = inputs_of(base, source, still=True)
    same(moving.targets, base.coeffs)  # neutral: the coefficients as predicted
    same(still.targets[:, EXP], moving.targets[:, EXP])  # the expression (and its blinks) stays
    same(still.targets[:, POSE], np.repeat(source.coefficients[:, POSE], len(base.coeffs), 0))
    differs(moving.targets[:, POSE], still.targets[:, POSE])


@effect_of("expression_scale")
def test_expression_scale_scales_only_the_expression(base, source):
    scaled = inputs_of(base, source, expression_scale=2.0)
    same(scaled.targets[:, EXP], base.coeffs[:, EXP] * np.float32(2.0))
    same(scaled.targets[:, POSE], base.coeffs[:, POSE])
    same(inputs_of(base, source, expression_scale=1.0).targets, base.coeffs)


@effect_of("head_motion_scale")
def test_head_motion_scale_scales_the_pose_around_the_photos(base, source):
    photo_pose = source.coefficients[0, POSE]
    frozen = inputs_of(base, source, head_motion_scale=0.0)
    same(frozen.targets[:, EXP], base.coeffs[:, EXP])
    np.testing.assert_allclose(frozen.targets[:, POSE], np.repeat(photo_pose[None], len(base.coeffs), 0), atol=1e-6)
    double = inputs_of(base, source, head_motion_scale=2.0)
    np.testing.assert_allclose(double.targets[:, POSE] - photo_pose, 2 * (base.coeffs[:, POSE] - photo_pose),
                               atol=1e-5)
    same(inputs_of(base, source, head_motion_scale=1.0).targets, base.coeffs)
    with pytest.raises(InvalidInput, match="still mode") as error:
        BASE.replace(still=True, head_motion_scale=2.0)
    assert error.value.option == "head_motion_scale"


@effect_of("batch_size")
def test_batch_size_groups_the_renderer_calls(base, source):
    inputs = inputs_of(base, source, batch_size=7)
    assert inputs.batches(7) == [(s, min(s + 7, FRAMES)) for s in range(0, FRAMES, 7)]
    assert inputs.batches(FRAMES) == [(0, FRAMES)]
    windows, _ = inputs.batch(7, 14)
    same(windows, render_inputs.frame_windows(inputs.targets, 0, FRAMES)[7:14])  # any grouping, same windows


@pytest.fixture(scope="module")
def renderer_state(pipeline, source, base):
    renderer = pipeline.models.renderer(256, "crop")
    inputs = inputs_of(base, source)
    return renderer, renderer.prepare_source(source_image_input(source.crop.face), inputs.semantics[None]), inputs


@effect_of("yaw", "pitch", "roll")
def test_free_view_keyframes_turn_the_head_about_their_own_axis(base, source, renderer_state):
    inputs = inputs_of(base, source, yaw=(-20.0, 20.0), roll=(5.0,))
    assert sorted(inputs.angles) == ["roll", "yaw"]  # pitch given no keyframes: the predicted pitch stays
    same(inputs.angles["yaw"], render_inputs.free_view_angles([-20.0, 20.0], FRAMES))
    same(inputs.angles["roll"], np.full(FRAMES, 5.0, np.float32))
    assert inputs_of(base, source).angles == {}  # neutral: no keyframes, no override
    same(inputs.targets, inputs_of(base, source).targets)  # keyframes do not touch the coefficients

    renderer, state, plain = renderer_state
    windows, _ = plain.batch(0, 1)
    zero = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}
    base_kp = renderer.driving_keypoints(state, windows, **zero)
    for name, kept in (("yaw", 1), ("pitch", 0), ("roll", 2)):  # the coordinate each rotation leaves alone
        turned = renderer.driving_keypoints(state, windows, **{**zero, name: 25.0})
        torch.testing.assert_close(turned[..., kept], base_kp[..., kept], atol=1e-9, rtol=0)
        assert (turned - base_kp).abs().max() > 1e-3


@effect_of("enhancer")
def test_enhancer_restores_every_face_and_none_leaves_them(models_dir, source):
    restored_by = []

    class Negative:  # a host-provided restorer (the WebUI hands us its GFPGAN / CodeFormer this way)
        def restore(self, face):
            restored_by.append(face.shape)
            return 255 - face

    host = SadTalkerPipeline(models_dir, allow_download=False, enhancer_factory=lambda name: Negative())
    frames = [np.full((256, 256, 3), v, np.uint8) for v in (40, 200)]
    plain = list(host.finish_frames(iter(frames), source, BASE))
    enhanced = list(host.finish_frames(iter(frames), source, BASE.replace(enhancer="host:Negative")))
    assert restored_by == [(256, 256, 3)] * 2  # every face, and only when an enhancer is chosen
    for frame, out, out_enhanced in zip(frames, plain, enhanced):
        same(out, aspect_frame(frame, source.crop.info.size))
        same(out_enhanced, aspect_frame(255 - frame, source.crop.info.size))


@effect_of("precision")
def test_precision_sets_the_generators_arithmetic_and_nothing_else(pipeline, base, source):
    from sadtalker.errors import InvalidInput
    from sadtalker.render import cpu_has_fast_bfloat16

    same(inputs_of(base, source, precision="bf16").targets, inputs_of(base, source).targets)  # coefficients untouched
    assert pipeline.models.renderer(256, "crop", "fp32").compute_dtype == torch.float32  # neutral: exact fp32
    if cpu_has_fast_bfloat16():
        fast = pipeline.models.renderer(256, "crop", "bf16")
        assert fast.compute_dtype == torch.bfloat16
        assert fast.mapping.fc_exp.weight.dtype == torch.float32  # keypoints stay float32
    else:
        with pytest.raises(InvalidInput, match="precision"):
            pipeline.models.renderer(256, "crop", "bf16")
    pipeline.models.renderer(256, "crop", "fp32")  # the shared pipeline back as the other tests expect it


def test_every_option_has_an_effect_test():
    assert TESTED == {spec.name for spec in option_specs()}, "a new option needs its test in this file"
