"""Audio front end: mel features against the official golden run, loading of real-world formats, errors."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from sadtalker import audio
from sadtalker.errors import AudioError, InvalidInput

MEL_ATOL = 5e-4  # golden README: float32 torch.stft re-implementation differs by <= 6.1e-5


@pytest.fixture(scope="module")
def frontend(golden) -> dict[str, np.ndarray]:
    return golden("audio_frontend")


@pytest.fixture(scope="module")
def speech(golden_dir: Path) -> np.ndarray:
    return audio.load_audio(golden_dir / "speech.wav")


def _int16_samples(path: Path) -> np.ndarray:
    """Samples of a 16-bit PCM wav via the standard library (independent of soundfile)."""
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *args], check=True)


# ----------------------------------------------------------------------------- golden (official code)


@pytest.mark.parametrize("case, wav_name", [("", "speech.wav"), ("short_", "speech_short.wav")])
def test_features_match_official(frontend, golden_dir, case, wav_name):
    wav = audio.load_audio(golden_dir / wav_name)
    features = audio.audio_features(wav)

    assert features.num_frames == int(frontend[f"{case}num_frames"])
    assert features.wav.shape == (features.num_frames * audio.SAMPLES_PER_FRAME,)
    # librosa.load of a 16-bit wav = int16 / 32768, then cut to whole frames
    expected_wav = _int16_samples(golden_dir / wav_name)[: features.wav.shape[0]] / 32768.0
    np.testing.assert_array_equal(features.wav, expected_wav.astype(np.float32))

    mel = audio.mel_spectrogram(features.wav)
    assert mel.shape == frontend[f"{case}orig_mel"].shape
    np.testing.assert_allclose(mel, frontend[f"{case}orig_mel"], rtol=0, atol=MEL_ATOL)  # reached 9.2e-14

    assert features.windows.dtype == np.float32
    assert features.windows.shape == frontend[f"{case}indiv_mels"].shape
    np.testing.assert_allclose(features.windows, frontend[f"{case}indiv_mels"], rtol=0, atol=MEL_ATOL)  # reached 0


@pytest.mark.parametrize("case", ["", "short_"])
def test_reflect_padding_matches_librosa08(frontend, golden_dir, case):
    wav = audio.load_audio(golden_dir / ("speech.wav" if case == "" else "speech_short.wav"))
    wav = audio.fit_to_frames(wav, audio.frame_count(wav.shape[0]))
    mel = audio.mel_spectrogram(wav, pad_mode="reflect")
    np.testing.assert_allclose(mel, frontend[f"{case}mel_librosa08_reflectpad"], rtol=0, atol=MEL_ATOL)
    # the two paddings really differ at the edges (so the option is not a no-op)
    assert np.abs(mel[:2] - frontend[f"{case}orig_mel"][:2]).max() > 0.1


def test_windows_from_official_mel(frontend):
    """The window indexing alone (trunc(80*(i-2)/25), clamped, transposed) on the official mel."""
    windows = audio.mel_windows(frontend["orig_mel"], int(frontend["num_frames"]))
    np.testing.assert_array_equal(windows, frontend["indiv_mels"])


def test_frame_count_and_fit():
    assert audio.FPS == 25 and audio.SAMPLES_PER_FRAME == 640
    assert audio.frame_count(196098) == 306  # speech.wav
    assert audio.frame_count(6500) == 10  # speech_short.wav
    assert audio.frame_count(639) == 0 and audio.frame_count(640) == 1
    wav = np.arange(1, 1001, dtype=np.float32)
    np.testing.assert_array_equal(audio.fit_to_frames(wav, 1), wav[:640])
    padded = audio.fit_to_frames(wav, 2)
    assert padded.shape == (1280,)
    np.testing.assert_array_equal(padded[:1000], wav)
    assert not padded[1000:].any()


def test_mel_rows_per_sample_count():
    # centred STFT: 1 + floor(L / 200) rows, 80 bins
    for length in (640, 6400, 6599):
        assert audio.mel_spectrogram(np.zeros(length, np.float32)).shape == (1 + length // 200, 80)


def test_idle_features(golden):
    expected_shape = golden("audio2coeff_variants")["idle_indiv_mels_shape"]  # [1, 50, 1, 80, 16] for 2 s
    features = audio.idle_features(2)
    assert features.num_frames == expected_shape[1] == 50
    assert features.windows.shape == (50, *expected_shape[3:])
    assert features.windows.dtype == np.float32 and not features.windows.any()
    assert features.wav.shape == (50 * 640,) and features.wav.dtype == np.float32 and not features.wav.any()
    assert audio.idle_features(2.5).num_frames == 62
    with pytest.raises(InvalidInput):
        audio.idle_features(0.01)


def test_is_silent(speech):
    assert audio.is_silent(np.zeros(16000, np.float32))
    assert audio.is_silent(np.zeros(0, np.float32))
    noise = np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32)
    assert audio.is_silent(noise * 10 ** (-70 / 20))
    assert not audio.is_silent(noise * 10 ** (-50 / 20))
    assert not audio.is_silent(speech)


# --------------------------------------------------------------------------------- formats and rates


@pytest.fixture(scope="module")
def speech_44k_stereo(speech) -> np.ndarray:
    """The golden speech resampled to 44.1 kHz, both channels equal: (n, 2) float32."""
    upsampled = soxr.resample(speech, 16000, 44100, quality="HQ")
    return np.stack([upsampled, upsampled], axis=1)


def _assert_same_speech(loaded: np.ndarray, original: np.ndarray, min_correlation: float, max_mel_mean: float):
    """Same length (→ same frame count), sample-level correlation, and mean |Δ| of the network's mel windows.

    Measured here: lossless 44.1 kHz → 16 kHz round trips correlate 0.99995 (mel windows mean |Δ| 1e-4…5e-4);
    mp3 0.9995 (0.025), aac 0.9987 (0.09), vorbis 0.9964 (0.10); mel values span [-4, 4].
    """
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert loaded.shape == original.shape
    assert np.abs(loaded).max() <= 1.0
    correlation = np.corrcoef(loaded, original)[0, 1]
    assert correlation > min_correlation
    assert 0.98 < np.std(loaded) / np.std(original) < 1.02  # channels averaged, not summed
    mel_diff = np.abs(audio.audio_features(loaded).windows - audio.audio_features(original).windows).mean()
    assert mel_diff < max_mel_mean


def test_load_44k_stereo_float_wav(tmp_path, speech, speech_44k_stereo):
    path = tmp_path / "speech_44k.wav"
    sf.write(path, speech_44k_stereo, 44100, subtype="FLOAT")
    _assert_same_speech(audio.load_audio(path), speech, 0.9995, 0.01)


def test_load_flac(tmp_path, speech, speech_44k_stereo):
    path = tmp_path / "speech.flac"
    sf.write(path, speech_44k_stereo, 44100)
    _assert_same_speech(audio.load_audio(path), speech, 0.9995, 0.01)


def test_load_wave_format_extensible(tmp_path, speech):
    """24-bit, 3 channels, 48 kHz WAVE_FORMAT_EXTENSIBLE; channels differ but average to the speech."""
    upsampled = soxr.resample(speech, 16000, 48000, quality="HQ")
    other = 0.15 * upsampled[::-1]
    channels = np.stack([upsampled + other, upsampled - other, upsampled], axis=1)
    path = tmp_path / "speech_ext.wav"
    sf.write(path, channels, 48000, format="WAVEX", subtype="PCM_24")
    header = path.read_bytes()[:40]
    assert header[12:16] == b"fmt " and int.from_bytes(header[20:22], "little") == 0xFFFE
    _assert_same_speech(audio.load_audio(path), speech, 0.9995, 0.01)


def test_load_ogg_vorbis(tmp_path, speech, speech_44k_stereo):
    path = tmp_path / "speech.ogg"
    sf.write(path, speech_44k_stereo, 44100, format="OGG", subtype="VORBIS")
    _assert_same_speech(audio.load_audio(path), speech, 0.99, 0.2)


def test_load_mp3(tmp_path, speech, speech_44k_stereo):
    path = tmp_path / "speech.mp3"
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write mp3")
    sf.write(path, speech_44k_stereo, 44100, format="MP3")
    _assert_same_speech(audio.load_audio(path), speech, 0.99, 0.2)


@pytest.fixture(scope="module")
def speech_m4a(tmp_path_factory, speech_44k_stereo) -> Path:
    folder = tmp_path_factory.mktemp("m4a")
    sf.write(folder / "speech_44k.wav", speech_44k_stereo, 44100, subtype="FLOAT")
    _ffmpeg("-i", str(folder / "speech_44k.wav"), "-c:a", "aac", "-b:a", "128k", str(folder / "speech.m4a"))
    return folder / "speech.m4a"


def test_load_m4a_through_ffmpeg(speech_m4a, speech):
    with pytest.raises(sf.LibsndfileError):  # really the ffmpeg path
        sf.info(speech_m4a)
    _assert_same_speech(audio.load_audio(speech_m4a), speech, 0.99, 0.2)


def test_load_audio_track_of_video(tmp_path, speech_m4a, speech):
    video = tmp_path / "talk.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=32x32:r=25", "-i", str(speech_m4a), "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-c:a", "copy", "-shortest", str(video))  # fmt: skip
    _assert_same_speech(audio.load_audio(video), speech, 0.99, 0.2)


# ------------------------------------------------------------------------------------------- errors


def _assert_audio_error(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(AudioError, match=match) as raised:
        audio.load_audio(path, **kwargs)
    assert str(path) in str(raised.value)  # the message names the file


def test_error_missing_file(tmp_path):
    _assert_audio_error(tmp_path / "nope.wav", "not found")
    _assert_audio_error(tmp_path, "folder")


@pytest.mark.parametrize("name", ["noise.wav", "noise.m4a", "text.mp3"])
def test_error_undecodable_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"hello " * 300 if name.endswith(".mp3") else np.random.default_rng(1).bytes(5000))
    _assert_audio_error(path, "Could not decode")


def test_error_truncated_wav(tmp_path, golden_dir):
    path = tmp_path / "cut.wav"
    path.write_bytes((golden_dir / "speech.wav").read_bytes()[:30])  # inside the header
    _assert_audio_error(path, "Could not decode")


def test_error_no_audio_stream(tmp_path):
    video = tmp_path / "silent_film.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=32x32:r=25:d=0.4", "-c:v", "libx264", str(video))
    _assert_audio_error(video, "no audio stream")


def test_error_empty_and_too_short(tmp_path):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    _assert_audio_error(zero_bytes, "empty")

    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, np.int16), 16000)
    _assert_audio_error(no_samples, "empty")

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(639, np.int16), 16000)
    _assert_audio_error(short, "too short")
    short_44k = tmp_path / "short_44k.wav"
    sf.write(short_44k, np.zeros(1700, np.float32), 44100)  # 38.5 ms
    _assert_audio_error(short_44k, "too short")

    one_frame = tmp_path / "one_frame.wav"
    sf.write(one_frame, np.zeros(640, np.int16), 16000)
    assert audio.load_audio(one_frame).shape == (640,)
    with pytest.raises(AudioError):
        audio.audio_features(np.zeros(639, np.float32))


def test_error_too_long(golden_dir, speech_m4a):
    _assert_audio_error(golden_dir / "speech.wav", "longer than", max_seconds=5)  # 12.26 s
    _assert_audio_error(speech_m4a, "longer than", max_seconds=5)  # ffmpeg path stops decoding early
    assert audio.load_audio(golden_dir / "speech.wav", max_seconds=12.5).shape == (196098,)
    assert audio.load_audio(speech_m4a, max_seconds=12.5).shape == (196098,)
