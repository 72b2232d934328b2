"""The streaming MP4 writer, the prober, the 25 fps reader and audio extraction, checked with the bundled ffmpeg."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sadtalker import video
from sadtalker.errors import AudioError, InvalidInput

FPS = 25
SAMPLES_PER_FRAME = 16000 // FPS  # 640: the caller renders int(samples / 640) frames


def moving_bar(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """A grey background with a bright vertical bar that moves 3 px per frame and a colour that changes."""
    frame = np.full((height, width, 3), 40, np.uint8)
    frame[..., 2] = (index * 7) % 200
    column = (index * 3) % (width - 4)
    frame[:, column:column + 4] = 255
    return frame


def bar_column(frame: np.ndarray) -> int:
    return int(np.argmax(frame[..., 0].astype(int).sum(axis=0)))


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory, golden_dir) -> tuple[str, int]:
    """Real speech (espeak-ng, 16 kHz) cut to 19,500 samples = 1.21875 s → 30 frames."""
    audio, rate = sf.read(golden_dir / "speech.wav", dtype="int16")
    assert rate == 16000
    path = tmp_path_factory.mktemp("audio") / "speech_1s.wav"
    sf.write(path, audio[:19500], rate)
    return str(path), 19500


def folder_listing(folder) -> set[str]:
    return set(os.listdir(folder))


def top_level_boxes(path) -> list[str]:
    """MP4 top-level box types in file order (size: 4 bytes big-endian, then the 4-letter type)."""
    data, boxes, offset = Path(path).read_bytes(), [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        boxes.append(data[offset + 4:offset + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        if size < 8:
            break
        offset += size
    return boxes


def test_a_mono_wave_format_extensible_file_is_muxed(tmp_path):
    """Pro recorders write mono as WAVE_FORMAT_EXTENSIBLE with the channel mask "front left"; AAC has no such
    layout, and the mux failed (ffmpeg_failed: Unsupported channel layout "1 channels (FL)")."""
    from bad_inputs import _make_wave_format_extensible

    wav = tmp_path / "ext.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(3 * SAMPLES_PER_FRAME) / 5)).astype(np.float32), 16000, subtype="PCM_16")
    _make_wave_format_extensible(wav)
    out = tmp_path / "ext.mp4"
    with video.VideoWriter(out, (96, 64), fps=FPS, audio_path=wav) as writer:
        for index in range(3):
            writer.write(moving_bar(index))
    info = video.probe(out)
    assert info.frames == 3 and (info.audio_codec, info.audio_rate) == ("aac", 16000)
    back, _ = sf.read(video.extract_audio(out, tmp_path / "back.wav"), dtype="float32")
    assert np.sqrt(np.mean(back**2)) > 0.1  # the sound itself, not silence


def test_writes_h264_aac_mp4_with_exact_frames_audio_length_and_tags(tmp_path, speech_wav):
    wav_path, samples = speech_wav
    frames = samples // SAMPLES_PER_FRAME
    assert frames == 30
    params = {"seed": 7, "pose_style": 3, "preprocess": "crop", "note": "héllo = ; # \\ \n ✓"}
    out = tmp_path / "result.mp4"

    with video.VideoWriter(out, (96, 64), fps=FPS, audio_path=wav_path, metadata=params) as writer:
        for index in range(frames):
            writer.write(moving_bar(index))

    info = video.probe(out)
    assert (info.video_codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 96, 64)
    assert info.fps == FPS
    assert info.frames == frames
    assert (info.audio_codec, info.audio_rate) == ("aac", 16000)
    assert abs(info.duration - samples / 16000) <= 1 / FPS
    assert info.parameters == params
    assert json.loads(video.sidecar_path(out).read_text(encoding="utf-8")) == params
    assert folder_listing(tmp_path) == {"result.mp4", "result.json"}  # no temporary file left behind
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: browsers can play while downloading

    # The audio track is the speech, cut to exactly the video's length.
    decoded_path = video.extract_audio(out, tmp_path / "decoded" / "back.wav")
    decoded, rate = sf.read(decoded_path, dtype="float32")
    original, _ = sf.read(wav_path, dtype="float32")
    assert rate == 16000
    assert abs(len(decoded) - frames * SAMPLES_PER_FRAME) <= SAMPLES_PER_FRAME
    overlap = min(len(decoded), len(original))
    correlation = np.corrcoef(decoded[:overlap], original[:overlap])[0, 1]
    assert correlation > 0.9, correlation

    # Frames come back in order with their content.
    back = list(video.read_video_frames(out))
    assert len(back) == frames
    for index, frame in enumerate(back):
        assert frame.shape == (64, 96, 3)
        assert bar_column(frame) in range(bar_column(moving_bar(index)) - 1, bar_column(moving_bar(index)) + 5)
        assert np.abs(frame.astype(int) - moving_bar(index)).mean() < 3.0


@pytest.mark.parametrize("how", ["exception", "abort"])
def test_failed_write_leaves_no_file_and_keeps_the_older_one(tmp_path, how):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"an older video that must survive")
    video.sidecar_path(out).write_text('{"old": true}', encoding="utf-8")
    before = folder_listing(tmp_path)

    if how == "exception":
        with pytest.raises(RuntimeError, match="render failed"), \
                video.VideoWriter(out, (32, 32), metadata={"new": True}) as writer:
            for index in range(5):
                writer.write(moving_bar(index, 32, 32))
            raise RuntimeError("render failed")
    else:
        writer = video.VideoWriter(out, (32, 32), metadata={"new": True})
        writer.write(moving_bar(0, 32, 32))
        writer.abort()

    assert out.read_bytes() == b"an older video that must survive"
    assert video.sidecar_path(out).read_text(encoding="utf-8") == '{"old": true}'
    assert folder_listing(tmp_path) == before


def test_no_frames_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"), video.VideoWriter(tmp_path / "empty.mp4", (32, 32)):
        pass
    assert folder_listing(tmp_path) == set()


def test_odd_frame_size_is_padded_by_repeating_the_edge(tmp_path):
    out = tmp_path / "odd.mp4"
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (47 // 8 + 1, 65 // 8 + 1, 3)), np.ones((8, 8, 1)))[:47, :65]
    frame = base.astype(np.uint8)
    with video.VideoWriter(out, (65, 47)) as writer:
        assert writer.output_size == (66, 48)
        for _ in range(3):
            writer.write(frame)

    info = video.probe(out)
    assert (info.width, info.height, info.frames) == (66, 48, 3)
    back = next(video.read_video_frames(out)).astype(int)
    assert np.abs(back[:47, :65] - frame).mean() < 4.0
    assert np.abs(back[:47, 65] - frame[:, 64]).mean() < 6.0  # the added column repeats the last one
    assert np.abs(back[47, :65] - frame[46]).mean() < 6.0


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
def test_memory_stays_flat_while_streaming_1500_frames(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page / 2**20

    frame = np.zeros((256, 256, 3), np.uint8)
    with video.VideoWriter(tmp_path / "long.mp4", (256, 256)) as writer:
        for index in range(1500):
            frame[:] = (index * 3) % 256
            frame[:, (index * 5) % 256] = 255
            writer.write(frame)
            if index == 100:
                at_100 = resident_mb()
        at_1500 = resident_mb()
    assert at_1500 - at_100 < 50, (at_100, at_1500)
    assert video.probe(tmp_path / "long.mp4").frames == 1500


def test_reader_converts_30_fps_to_25(tmp_path):
    source = tmp_path / "thirty.mp4"
    with video.VideoWriter(source, (48, 32), fps=30) as writer:
        for index in range(36):  # 1.2 s
            writer.write(np.full((32, 48, 3), index * 7, np.uint8))
    assert video.video_fps(source) == 30
    assert video.probe(source).frames == 36

    frames = list(video.read_video_frames(source, fps=25))
    assert len(frames) == 30  # 1.2 s at 25 fps
    levels = [float(frame.mean()) for frame in frames]
    assert all(later > earlier for earlier, later in itertools.pairwise(levels))  # dropped, never repeated
    native = list(video.read_video_frames(source, fps=None))
    assert len(native) == 36


def test_reader_turns_rotated_videos_upright(tmp_path):
    source = tmp_path / "upright.mp4"
    rotated = tmp_path / "rotated.mp4"
    frame = moving_bar(4, 48, 32)
    with video.VideoWriter(source, (48, 32)) as writer:
        writer.write(frame)
    subprocess.run([video.ffmpeg_executable(), "-v", "error", "-display_rotation:v:0", "90", "-i", str(source),
                    "-c", "copy", str(rotated)], check=True)

    info = video.probe(rotated)
    assert (info.rotation, info.width, info.height) == (90, 32, 48)
    upright = next(video.read_video_frames(rotated))
    plain = next(video.read_video_frames(source))
    assert np.array_equal(upright, np.rot90(plain, 1))


def test_unreadable_inputs_raise_named_errors_with_ffmpeg_reason(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(InvalidInput, match="moov atom not found$") as unreadable:
        video.probe(garbage)
    # the one line that matters, not ffmpeg's log with its component names and memory addresses
    assert "0x" not in str(unreadable.value) and "[" not in str(unreadable.value)
    with pytest.raises(InvalidInput):
        video.read_video_frames(garbage)
    with pytest.raises(InvalidInput, match="not found"):
        video.probe(tmp_path / "missing.mp4")
    with pytest.raises(AudioError):
        video.VideoWriter(tmp_path / "x.mp4", (32, 32), audio_path=garbage)
    with pytest.raises(AudioError):
        video.extract_audio(garbage, tmp_path / "x.wav")

    silent = tmp_path / "silent.mp4"
    with video.VideoWriter(silent, (32, 32)) as writer:
        writer.write(moving_bar(0, 32, 32))
    assert video.probe(silent).audio_codec is None
    with pytest.raises(AudioError, match="no audio"):
        video.extract_audio(silent, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.mp4").exists()


def test_wrong_frames_are_rejected(tmp_path):
    with video.VideoWriter(tmp_path / "v.mp4", (32, 32)) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((32, 32, 3), np.float32))
        with pytest.raises(ValueError):
            writer.write(np.zeros((31, 32, 3), np.uint8))
        writer.write(np.zeros((32, 32, 3), np.uint8))
    assert video.probe(tmp_path / "v.mp4").frames == 1


def test_unique_output_path_never_reuses_a_name(tmp_path):
    (tmp_path / "talk.mp4").write_bytes(b"x")
    (tmp_path / "talk-1.json").write_text("{}")
    assert video.unique_output_path(tmp_path, "talk") == tmp_path / "talk-2.mp4"
    assert video.unique_output_path(tmp_path, "fresh") == tmp_path / "fresh.mp4"
    assert video.unique_output_path(tmp_path / "new", 'a/b:c*?') == tmp_path / "new" / "a_b_c_.mp4"
    assert (tmp_path / "new").is_dir()


def test_tags_with_ffmetadata_escapes_round_trip(tmp_path):
    """Tag values with `=;#\\` and a raw newline (ffmpeg escapes all of them in ffmetadata) read back exactly."""
    source = tmp_path / "plain.mp4"
    with video.VideoWriter(source, (32, 32)) as writer:
        writer.write(moving_bar(0, 32, 32))
    value = "a=b;c#d\\e\nf g"
    tagged = tmp_path / "tagged.mp4"
    subprocess.run([video.ffmpeg_executable(), "-v", "error", "-i", str(source), "-c", "copy",
                    "-metadata", f"comment={value}", "-metadata", "title=x=y", str(tagged)], check=True)
    tags = video.probe(tagged).metadata
    assert tags["comment"] == value and tags["title"] == "x=y"
    assert video.probe(tagged).parameters is None  # not JSON: no parameters, no crash
