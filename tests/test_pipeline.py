"""End to end: fake official checkpoints, a real photo, real speech (espeak-ng), real landmarks (dlib), real ffmpeg.

The renderer costs seconds per frame on CPU, so clips are 5 frames (0.2 s) and each configuration renders once.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import fakes
from sadtalker import heap, motion, render_inputs
from sadtalker.errors import AudioError, Cancelled, ImageError, InvalidInput, NoFaceDetected
from sadtalker.options import GenerateOptions
from sadtalker.pipeline import SadTalkerPipeline
from sadtalker.render import cpu_has_fast_bfloat16
from sadtalker.video import VideoWriter, probe, read_video_frames

FRAMES = 5
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="session")
def speech(speech_clip) -> Path:
    return speech_clip(FRAMES)


def _dlib(**kw) -> GenerateOptions:
    return GenerateOptions(face_detector="dlib", seed=7, **kw)


def _assert_playable(path: Path, frames: int, seconds: float, size=None):
    info = probe(path)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.audio_codec == "aac"
    assert info.fps == pytest.approx(25.0)
    assert info.frames == frames
    assert abs(info.duration - seconds) <= 1 / 25 + 0.03
    if size is not None:
        assert (info.width, info.height) == size
    return info


@pytest.fixture(scope="module")
def crop_run(pipeline, portrait, speech, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "crop.mp4"
    stages = []
    result = pipeline.generate(portrait, speech, _dlib(), output=out,
                               on_progress=lambda stage, done, total: stages.append((stage, done, total)))
    return result, stages


def test_crop_mode_makes_a_browser_playable_mp4(crop_run):
    result, _ = crop_run
    info = _assert_playable(result.video, FRAMES, FRAMES / 25)
    assert info.width == 256 and info.height % 2 == 0
    assert info.parameters["options"]["preprocess"] == "crop" and info.parameters["seed"] == 7
    assert result.sidecar.is_file()


def test_progress_reports_every_stage_and_every_frame(crop_run):
    _, stages = crop_run
    names = [s for s, _, _ in stages]
    for stage in ("face", "audio", "motion", "render", "encode"):
        assert stage in names
    render = [(d, t) for s, d, t in stages if s == "render"]
    assert render[-1] == (FRAMES, FRAMES)


@pytest.mark.parametrize(("preprocess", "still"), [("full", True), ("extfull", False), ("extcrop", False),
                                                   ("resize", False)])
def test_every_preprocess_mode(pipeline, portrait, speech, tmp_path, preprocess, still):
    result = pipeline.generate(portrait, speech, _dlib(preprocess=preprocess, still=still, batch_size=3),
                               output=tmp_path / "v.mp4")
    size = (512, 512) if "full" in preprocess else None
    info = _assert_playable(result.video, FRAMES, FRAMES / 25, size)
    if "full" in preprocess:
        # the background outside the paste box is the photo itself
        frame = next(read_video_frames(result.video))
        photo = skimage_data.astronaut()
        assert np.abs(frame[450:, :60].astype(int) - photo[450:, :60].astype(int)).mean() < 6
    else:
        assert info.width == 256


def test_idle_mode_needs_no_audio(pipeline, portrait, tmp_path):
    result = pipeline.generate(portrait, None, _dlib(idle_seconds=0.16), output=tmp_path / "idle.mp4")
    _assert_playable(result.video, 4, 0.16)


@pytest.mark.parametrize("given", ["path", "samples"])
def test_no_audio_features_are_held_while_rendering(pipeline, portrait, speech, tmp_path, monkeypatch, given):
    """Memory must not grow with the audio's length: the mel windows and the spectrogram (37 + 15 MB at 5 minutes
    of speech) are let go once the motion is predicted, before the first frame. The renderer is replaced by the
    source crop here: this is about what generate holds, not about rendering."""
    held, seen = [], []
    prepare_audio = pipeline.prepare_audio

    def prepare_and_watch(audio, options):
        features = prepare_audio(audio, options)
        held.extend([weakref.ref(features.windows), weakref.ref(features.mel)])
        return features

    def source_crop_frames(source, sequence, options, run=None):
        gc.collect()
        seen.append([ref() is None for ref in held])
        yield from (source.crop.face for _ in range(sequence.num_frames))

    monkeypatch.setattr(pipeline, "prepare_audio", prepare_and_watch)
    monkeypatch.setattr(pipeline, "render_frames", source_crop_frames)
    audio = speech if given == "path" else soundfile.read(speech, dtype="float32")[0]
    result = pipeline.generate(portrait, audio, _dlib(), output=tmp_path / "out.mp4")
    assert seen == [[True, True]]  # windows, mel: both gone when rendering starts
    _assert_playable(result.video, FRAMES, FRAMES / 25)


def test_composed_pipeline_equals_the_stages_in_the_official_order(pipeline, portrait, speech, models_dir):
    """Same seed -> the stage functions called as the official code calls them give the same coefficients and
    the same frames (official batch layout) as the pipeline's streaming path."""
    from sadtalker.checkpoints.components import load_component

    options = _dlib(batch_size=2)
    source = pipeline.prepare_source(str(portrait), options)
    features = pipeline.prepare_audio(speech, options)
    sequence = pipeline.predict_motion(features, source, options, seed=1234)

    ckpt = models_dir / fakes.SAFETENSORS_256
    exp_net, pose_net = load_component(ckpt, "audio2exp"), load_component(ckpt, "audio2pose")
    official = motion.audio_to_coefficients(exp_net, pose_net, features.windows, source.coefficients, pose_style=0,
                                           rng=random.Random(1234), generator=torch.Generator().manual_seed(1234))
    np.testing.assert_array_equal(sequence.coeffs, official.coeffs)

    streamed = np.stack(list(pipeline.render_frames(source, sequence, options)))
    renderer = pipeline.models.renderer(256, "crop")
    targets = render_inputs.render_targets(official.coeffs, source.coefficients, preprocess="crop", still=False)
    packed = render_inputs.pack_batches(targets, 2)  # (bs, n, C, 27): batch row b holds frames b*n ...
    image = torch.from_numpy(source.crop.face).permute(2, 0, 1)[None].float() / 255
    state = renderer.prepare_source(image, render_inputs.source_semantics(source.coefficients, "crop")[None],
                                    batch_size=2)
    calls = [renderer.render(state, packed[:, i]) for i in range(packed.shape[1])]
    frames = torch.stack(calls, 1).reshape(-1, 3, 256, 256)[:FRAMES]
    expected = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert streamed.shape == expected.shape
    assert np.abs(streamed.astype(int) - expected.astype(int)).max() <= 1


def test_seed_makes_runs_repeatable_and_intermediates_are_saved(pipeline, portrait, speech, tmp_path):
    options = _dlib()
    source = pipeline.prepare_source(str(portrait), options)
    features = pipeline.prepare_audio(speech, options)
    first = pipeline.predict_motion(features, source, options, seed=5)
    again = pipeline.predict_motion(features, source, options, seed=5)
    other = pipeline.predict_motion(features, source, options, seed=6)
    np.testing.assert_array_equal(first.coeffs, again.coeffs)
    assert not np.array_equal(first.z, other.z)


def test_a_failed_write_ends_the_frame_buffer_policy(pipeline, portrait, tmp_path, monkeypatch):
    """The writer failing mid-video (a full disk) must not leave the render's heap policy on (sadtalker/heap.py)
    while the error, and with it the run's suspended frame streams, is still referenced."""
    def full_disk(self, frame):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VideoWriter, "write", full_disk)
    with pytest.raises(OSError, match="No space") as failure:
        pipeline.generate(portrait, None, _dlib(idle_seconds=0.2, batch_size=1), output=tmp_path / "full.mp4")
    assert failure.value.__traceback__ is not None and heap._rendering == 0


def test_cancel_leaves_no_file_and_keeps_the_old_one(pipeline, portrait, speech, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"an earlier video")
    calls = {"n": 0}

    def cancel_after_first_batch():
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(Cancelled):
        pipeline.generate(portrait, speech, _dlib(batch_size=1), output=out, should_cancel=cancel_after_first_batch)
    assert out.read_bytes() == b"an earlier video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_bad_inputs_give_named_errors(pipeline, portrait, speech, tmp_path):
    flat = tmp_path / "flat.png"
    from PIL import Image

    Image.new("RGB", (300, 300), (120, 130, 140)).save(flat)
    with pytest.raises(NoFaceDetected, match="face"):
        pipeline.generate(flat, speech, _dlib(), output=tmp_path / "a.mp4")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError):
        pipeline.generate(broken, speech, _dlib(), output=tmp_path / "b.mp4")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError, match="silent"):
        pipeline.generate(portrait, silent, _dlib(), output=tmp_path / "c.mp4")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF....WAVEfmt nonsense")
    with pytest.raises(AudioError):
        pipeline.generate(portrait, garbage, _dlib(), output=tmp_path / "d.mp4")
    with pytest.raises(InvalidInput):
        GenerateOptions(pose_style=46)
    assert not any(p.suffix == ".mp4" for p in tmp_path.iterdir())


def test_missing_weights_are_named_with_where_to_put_them(portrait, speech, tmp_path):
    empty = SadTalkerPipeline(tmp_path / "models", allow_download=False)
    from sadtalker.errors import MissingWeights

    with pytest.raises(MissingWeights, match="SadTalker_V0.0.2_256.safetensors"):
        empty.generate(portrait, speech, _dlib(), output=tmp_path / "x.mp4")


def test_command_line_generate(models_dir, portrait, speech, tmp_path):
    out = tmp_path / "cli.mp4"
    inter = tmp_path / "inter"
    result = subprocess.run(
        [sys.executable, "-m", "sadtalker", "generate", "--image", str(portrait), "--audio", str(speech),
         "--out", str(out), "--checkpoints", str(models_dir), "--face-detector", "dlib", "--seed", "3",
         "--no-download", "--save-intermediates", str(inter), "--yaw", "-10", "10"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    _assert_playable(out, FRAMES, FRAMES / 25)
    assert np.load(inter / "coefficients_70.npy").shape == (FRAMES, 70)
    assert np.load(inter / "source_coefficients_73.npy").shape == (1, 73)
    assert np.load(inter / "landmarks_68.npy").shape == (68, 2)

    bad = subprocess.run([sys.executable, "-m", "sadtalker", "generate", "--image", str(tmp_path / "nope.png"),
                          "--audio", str(speech), "--checkpoints", str(models_dir), "--face-detector", "dlib"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error [bad_image]" in bad.stderr and "Traceback" not in bad.stderr


def test_reference_video_drives_blinks_and_pose(pipeline, portrait, speech, tmp_path):
    photo = skimage_data.astronaut()
    ref = tmp_path / "ref.mp4"
    with VideoWriter(ref, (512, 512), fps=30) as writer:
        for shift in range(8):
            writer.write(np.roll(photo, shift * 2, axis=1))
    result = pipeline.generate(portrait, speech, _dlib(ref_eyeblink=str(ref), ref_pose=str(ref)),
                               output=tmp_path / "ref_out.mp4")
    _assert_playable(result.video, FRAMES, FRAMES / 25)


@pytest.mark.slow
def test_512_model(pipeline, portrait, speech, tmp_path):
    result = pipeline.generate(portrait, speech, _dlib(size=512, batch_size=1), output=tmp_path / "512.mp4")
    info = _assert_playable(result.video, FRAMES, FRAMES / 25)
    assert info.width == 512


def test_enhancer_runs_on_every_rendered_face(models_dir, portrait, tmp_path):
    """GFPGAN v1.4 layout with random weights in <models>/enhancers: loaded by name through spandrel."""
    pytest.importorskip("spandrel")
    from test_enhance import gfpgan_v14, save_official_layout

    models = tmp_path / "models"
    models.mkdir()
    for item in models_dir.iterdir():
        if item.is_file():
            os.link(item, models / item.name)
    (models / "enhancers").mkdir()
    save_official_layout(gfpgan_v14, models / "enhancers" / "GFPGANv1.4.pth")
    pipe = SadTalkerPipeline(models, allow_download=False)
    plain = np.stack(list(pipe.finish_frames(iter([np.full((256, 256, 3), 128, np.uint8)]),
                                             pipe.prepare_source(str(portrait), _dlib()), _dlib())))
    result = pipe.generate(portrait, None, _dlib(idle_seconds=0.12, enhancer="gfpgan"), output=tmp_path / "e.mp4")
    _assert_playable(result.video, 3, 0.12)
    assert pipe._enhancers[("gfpgan", torch.float32)].architecture == "GFPGAN"
    fast = pipe._enhancer("gfpgan", "auto")  # the run's precision reaches the enhancer
    assert fast.dtype == (torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32)
    enhanced = np.stack(list(pipe.finish_frames(iter([np.full((256, 256, 3), 128, np.uint8)]),
                                                pipe.prepare_source(str(portrait), _dlib()),
                                                _dlib(enhancer="gfpgan"))))
    assert plain.shape == enhanced.shape and not np.array_equal(plain, enhanced)
