"""Audio front end: any audio file → 16 kHz mono → mel spectrogram → one (80, 16) mel window per video frame.

Numerically this is the official `src/utils/audio.py` + `generate_batch.get_data` (librosa 0.9.2 settings), written
in plain float64 numpy so it needs no librosa. The video runs at 25 fps, so one video frame is 640 samples of
16 kHz audio and ≈3.2 mel frames (80 mel frames per second).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import AudioError, InvalidInput, MissingDependency

log = logging.getLogger("sadtalker")

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

# hparams of the official audio front end (Wav2Lip's)
N_FFT = 800
HOP_LENGTH = 200
N_MELS = 80
MEL_FMIN = 55.0
MEL_FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 80
WINDOW_MEL_FRAMES = 16  # mel frames fed to the audio encoder per video frame

# Blocks of STFT frames transformed at once: bounds the temporary memory for long audio (~13 MB per block).
_STFT_BLOCK_FRAMES = 2048

PadMode = Literal["constant", "reflect"]


# ----------------------------------------------------------------------------------------------- loading


def load_audio(
    path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> np.ndarray:
    """Read an audio (or video) file as mono float32 samples at `sample_rate`, shape (num_samples,), in [-1, 1].

    wav/flac/ogg/mp3 are read with soundfile (any rate, any number of channels, WAVE_FORMAT_EXTENSIBLE included);
    anything else (m4a/aac, the audio track of a video) is decoded with the ffmpeg bundled in imageio-ffmpeg at
    its own rate. Channels are averaged and another rate is resampled as the official `librosa.load(path,
    sr=16000)` does (see `resample`). A 16 kHz 16-bit wav gives exactly int16 / 32768, as the official code.

    Raises `AudioError` when the file is missing, cannot be decoded, has no audio stream, is shorter than one
    video frame (640 samples at 16 kHz) or longer than `max_seconds`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise AudioError(f"{path} is a folder, not an audio file.")
    if not os.path.isfile(path):
        raise AudioError(f"Audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"Audio file {path} is empty (0 bytes).")
    if max_seconds is not None:
        _check_declared_duration(path, max_seconds)

    samples, native_rate = _read_with_soundfile(path)
    decoded_all = True
    if samples is None:
        samples, native_rate = _read_with_ffmpeg(path, max_seconds)
        decoded_all = max_seconds is None

    wav = resample(_to_mono(samples), native_rate, sample_rate)
    # Float files may exceed full scale and resampling can overshoot slightly; the models expect [-1, 1].
    np.clip(wav, -1.0, 1.0, out=wav)

    _check_length(path, wav.size, sample_rate, max_seconds, decoded_all)
    return wav


def resample(wav: np.ndarray, native_rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples (n,) at `native_rate` -> float32 at `sample_rate`, exactly as the official path.

    librosa 0.9 (the official pin) resamples with resampy's `kaiser_best` filter (50 zero crossings, Kaiser
    window, rolloff 0.917), then pads or cuts to ceil(n * sample_rate / native_rate) samples (resampy makes
    int(...) of them, so a fractional ratio ends with one zero). Other resamplers differ above ~7 kHz, which moves
    the mel windows by up to 1.7. Equal rates: the samples as they are.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if native_rate == sample_rate or wav.size == 0:
        return wav
    resampled = _kaiser_best_resample(wav, native_rate, sample_rate)
    length = int(np.ceil(wav.size * (float(sample_rate) / native_rate)))  # librosa's own float steps
    if resampled.size < length:
        resampled = np.pad(resampled, (0, length - resampled.size))
    return np.ascontiguousarray(resampled[:length], dtype=np.float32)


_RESAMPLE_BLOCK = 16384  # output samples per pass: the temporaries stay in the CPU cache


@functools.cache
def _kaiser_best_table() -> tuple[np.ndarray, int]:
    """resampy's precomputed `kaiser_best` half window (409601 values) and its table precision (8192 per zero
    crossing), read from resampy's data file without importing resampy: its package imports numba, whose
    compiler stays resident (about 100 MB measured here) for the rest of the process."""
    import importlib.util

    spec = importlib.util.find_spec("resampy")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("Resampling to 16 kHz needs the filter table of the Python package 'resampy' "
                                "(pip install resampy), or give 16 kHz audio.")
    with np.load(os.path.join(list(spec.submodule_search_locations)[0], "data", "kaiser_best.npz")) as data:
        return np.asarray(data["half_window"], np.float64), int(data["precision"])


def _kaiser_best_resample(x: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """resampy.resample(x, native_rate, sample_rate, filter="kaiser_best") for float32 x (n,), bit for bit.

    Each output sample t sits at input time t / ratio; it sums the input samples on either side weighted by the
    half window, read at a fractional table position (linear interpolation between table entries) that steps by
    `scale * precision` per input sample. resampy adds the terms one at a time into a float32 output, rounding
    after each, left wing (nearest sample first) then right wing; the same order and roundings are kept here,
    vectorised over the output samples instead of compiled.
    """
    window, precision = _kaiser_best_table()
    ratio = float(sample_rate) / native_rate
    n_out = int(x.shape[0] * float(sample_rate) / float(native_rate))
    if n_out < 1:
        raise AudioError(f"the audio ({x.shape[0]} samples at {native_rate} Hz) is too short to resample")
    if ratio < 1:
        window = ratio * window
    delta = np.diff(window, append=window[-1])
    scale = min(1.0, ratio)
    step = int(scale * precision)
    n_win, n_in, last = window.shape[0], x.shape[0], window.shape[0] - 1
    y = np.empty(n_out, np.float32)
    for start in range(0, n_out, _RESAMPLE_BLOCK):
        time = np.arange(start, min(start + _RESAMPLE_BLOCK, n_out)) * (1.0 / ratio)
        whole = time.astype(np.int64)
        acc = np.zeros(time.shape[0], np.float32)
        left = scale * (time - whole)
        for fraction, limit, side in ((left, whole + 1, -1), (scale - left, n_in - whole - 1, 1)):
            table = fraction * precision
            offset = table.astype(np.int64)
            eta = table - offset
            taps = np.minimum(limit, (n_win - offset) // step)
            for i in range(int(taps.max(initial=0))):
                position = np.minimum(offset + i * step, last)
                weight = np.where(i < taps, window[position] + eta * delta[position], 0.0)
                source = whole - i if side < 0 else whole + i + 1
                acc = (acc + weight * x[np.clip(source, 0, n_in - 1)]).astype(np.float32)
        y[start:start + acc.shape[0]] = acc
    return y


def _check_declared_duration(path: str, max_seconds: float) -> None:
    """Refuse an over-long file from its header alone, before decoding it (only for files soundfile reads)."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # not a soundfile format: the ffmpeg decoder enforces the limit instead
        return
    if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
        raise AudioError(_too_long_message(path, info.frames / info.samplerate, max_seconds))


def _read_with_soundfile(path: str) -> tuple[np.ndarray | None, int]:
    """(samples (n, channels) float32, rate), or (None, 0) if libsndfile cannot read this file."""
    import soundfile as sf

    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # LibsndfileError / SoundFileError / RuntimeError across soundfile versions
        log.debug("soundfile cannot read %s (%s); trying ffmpeg", path, exc)
        return None, 0
    return samples, int(rate)


def _read_with_ffmpeg(path: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg to float PCM at its own rate (channels kept) on a pipe."""
    try:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:
        raise AudioError(
            f"Cannot read audio file {path}: it is not wav/flac/ogg/mp3 and no ffmpeg is available to decode it "
            f"({exc}). Convert it to wav, or install imageio-ffmpeg."
        ) from exc

    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path]
    if max_seconds is not None:
        command += ["-t", f"{max_seconds + 1.0:.3f}"]  # decode just enough to know it is too long
    # A WAV stream keeps the channel layout, so channels are averaged exactly as for files soundfile reads.
    command += ["-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
    result = subprocess.run(command, capture_output=True, check=False)
    errors = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        if "matches no streams" in errors:
            raise AudioError(f"File {path} has no audio stream. Give a file that contains speech.")
        from .video import ffmpeg_reason

        reason = ffmpeg_reason(errors) if errors else f"ffmpeg exit status {result.returncode}"
        raise AudioError(
            f"Could not decode audio file {path} ({reason}). It may be corrupt or not an audio file; "
            "use wav, mp3, flac, ogg or m4a."
        )

    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except Exception as exc:  # a header without samples: an audio stream with nothing in it
        raise AudioError(f"Audio file {path} is empty (no samples could be decoded).") from exc
    return samples, int(rate)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """(n, channels) → (n,) float32, the mean of the channels (as `librosa.to_mono`)."""
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float32)


def _check_length(
    path: str, num_samples: int, sample_rate: int, max_seconds: float | None, decoded_all: bool
) -> None:
    """`decoded_all` is False when decoding stopped early at the length limit (the true length is unknown)."""
    min_samples = int(np.ceil(sample_rate / FPS))
    if num_samples == 0:
        raise AudioError(f"Audio file {path} is empty (no samples).")
    if num_samples < min_samples:
        raise AudioError(
            f"Audio file {path} is too short ({num_samples / sample_rate * 1000:.1f} ms); "
            f"it must last at least one video frame ({1000 / FPS:.0f} ms)."
        )
    if max_seconds is not None and num_samples > max_seconds * sample_rate:
        raise AudioError(_too_long_message(path, num_samples / sample_rate if decoded_all else None, max_seconds))


def _too_long_message(path: str, seconds: float | None, max_seconds: float) -> str:
    length = f" ({seconds:.1f} s)" if seconds is not None else ""
    return f"Audio file {path} is longer than the allowed {max_seconds:g} s{length}. Cut it shorter."


def is_silent(wav: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True if the peak level of `wav` (float samples, full scale 1.0) is below `threshold_db` dBFS, or it is empty."""
    if wav.size == 0:
        return True
    peak = float(np.max(np.abs(wav)))
    return peak <= 10.0 ** (threshold_db / 20.0)


def silent_wav(num_samples: int) -> np.ndarray:
    """All-zero float32 samples, shape (num_samples,)."""
    return np.zeros(num_samples, dtype=np.float32)


# ----------------------------------------------------------------------------------------- frames


def frame_count(num_samples: int) -> int:
    """Number of whole 25 fps video frames in `num_samples` samples of 16 kHz audio (a partial frame is dropped)."""
    return int(num_samples) // SAMPLES_PER_FRAME


def fit_to_frames(wav: np.ndarray, num_frames: int) -> np.ndarray:
    """Cut `wav` (num_samples,) or pad it with zeros at the end to exactly num_frames * 640 samples."""
    length = num_frames * SAMPLES_PER_FRAME
    if wav.shape[0] >= length:
        return wav[:length]
    return np.pad(wav, (0, length - wav.shape[0]))


# -------------------------------------------------------------------------------------- mel spectrogram


def mel_spectrogram(wav: np.ndarray, pad_mode: PadMode = "constant") -> np.ndarray:
    """Normalised log-mel spectrogram of 16 kHz samples, shape (1 + num_samples // 200, 80) float64, in [-4, 4].

    pre-emphasis 0.97 → centred STFT (n_fft 800, hop 200, periodic Hann) → magnitude → Slaney mel (80 bins,
    55–7600 Hz) → 20·log10(max(1e-5, ·)) − 20 dB → clip(8·(dB + 100)/100 − 4, −4, 4).
    `pad_mode="constant"` (zero padding of the STFT, librosa ≥ 0.9: the official requirements) is the default;
    `"reflect"` reproduces librosa ≤ 0.8 (the old WebUI extension), which differs only in the first/last 2 rows.
    """
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {pad_mode!r}")
    emphasized = _preemphasis(np.asarray(wav, dtype=np.float64))
    magnitude = _stft_magnitude(emphasized, pad_mode)  # (n_frames, 401)
    mel = magnitude @ _mel_basis().T  # (n_frames, 80)
    return _normalize_db(_amplitude_to_db(mel) - REF_LEVEL_DB)


def _preemphasis(x: np.ndarray) -> np.ndarray:
    """y[n] = x[n] − 0.97·x[n−1] with x[−1] = 0 (scipy lfilter([1, −0.97], [1]) with zero state)."""
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def _stft_magnitude(x: np.ndarray, pad_mode: PadMode) -> np.ndarray:
    """|STFT| of a centred (padded n_fft/2 each side) signal, shape (1 + len(x) // hop, n_fft // 2 + 1)."""
    padded = np.pad(x, N_FFT // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    window = _hann_window()
    magnitude = np.empty((frames.shape[0], N_FFT // 2 + 1), dtype=np.float64)
    for start in range(0, frames.shape[0], _STFT_BLOCK_FRAMES):
        block = frames[start : start + _STFT_BLOCK_FRAMES]
        magnitude[start : start + block.shape[0]] = np.abs(np.fft.rfft(block * window, axis=-1))
    return magnitude


@functools.cache
def _hann_window() -> np.ndarray:
    """Periodic Hann window of n_fft samples (scipy `get_window('hann', 800, fftbins=True)`)."""
    import scipy.signal

    window = scipy.signal.get_window("hann", N_FFT, fftbins=True).astype(np.float64)
    window.flags.writeable = False
    return window


@functools.cache
def _mel_basis() -> np.ndarray:
    """(80, 401) Slaney mel filterbank as librosa builds it: float32 weights, used as float64."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(MEL_FMIN), _hz_to_mel(MEL_FMAX), N_MELS + 2)
    edge_freqs = _mel_to_hz(mel_edges)  # (82,) lower edge, centre, upper edge of each triangle

    widths = np.diff(edge_freqs)
    offsets = edge_freqs[:, None] - fft_freqs[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    # librosa stores the triangles as float32, then scales in float64 and rounds back to float32
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edge_freqs[2:] - edge_freqs[:-2])
    weights = (weights * area_norm[:, None]).astype(np.float32).astype(np.float64)
    weights.flags.writeable = False
    return weights


# Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per factor 6.4).
_MEL_PER_HZ_LINEAR = 3.0 / 200.0
_LOG_REGION_HZ = 1000.0
_LOG_REGION_MEL = _LOG_REGION_HZ / (200.0 / 3)
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _LOG_REGION_HZ:
        return hz / (200.0 / 3)
    return _LOG_REGION_MEL + np.log(hz / _LOG_REGION_HZ) / _LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = (200.0 / 3) * mels
    log_region = mels >= _LOG_REGION_MEL
    hz[log_region] = _LOG_REGION_HZ * np.exp(_LOG_STEP * (mels[log_region] - _LOG_REGION_MEL))
    return hz


def _amplitude_to_db(x: np.ndarray) -> np.ndarray:
    min_level = np.exp(MIN_LEVEL_DB / 20 * np.log(10))
    return 20 * np.log10(np.maximum(min_level, x))


def _normalize_db(db: np.ndarray) -> np.ndarray:
    scaled = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


# ------------------------------------------------------------------------------------- per-frame windows


def mel_windows(mel: np.ndarray, num_frames: int) -> np.ndarray:
    """Per video frame i the 16 mel rows starting at trunc(80·(i−2)/25), indices clamped: (num_frames, 80, 16) f32.

    `mel` is (n_mel_frames, 80) from `mel_spectrogram`; each window is transposed to (80 mel bins, 16 time steps),
    the audio encoders' input layout.
    """
    frame_index = np.arange(num_frames, dtype=np.int64)
    shifted = MEL_FRAMES_PER_SECOND * (frame_index - 2)
    starts = np.sign(shifted) * (np.abs(shifted) // FPS)  # Python int() of the division: toward zero
    rows = np.clip(starts[:, None] + np.arange(WINDOW_MEL_FRAMES), 0, mel.shape[0] - 1)
    return np.ascontiguousarray(mel[rows].transpose(0, 2, 1), dtype=np.float32)


@dataclass(frozen=True)
class AudioFeatures:
    """What the audio-driven nets need: `wav` (num_frames*640,) float32 16 kHz, the samples the mel is computed
    from; `windows` (num_frames, 80, 16) float32 mel windows; `num_frames` video frames at 25 fps; `mel`
    (1 + num_frames*640 // 200, 80) float64, the whole spectrogram (None in idle mode, which has no audio)."""

    wav: np.ndarray
    windows: np.ndarray
    num_frames: int
    mel: np.ndarray | None = None


def audio_features(wav: np.ndarray) -> AudioFeatures:
    """16 kHz mono samples (num_samples,) → features for int(num_samples/640) video frames (the tail is dropped)."""
    num_frames = frame_count(wav.shape[0])
    if num_frames == 0:
        raise AudioError(f"The audio is too short: it must last at least one video frame ({1000 / FPS:.0f} ms).")
    fitted = fit_to_frames(np.asarray(wav, dtype=np.float32), num_frames)
    mel = mel_spectrogram(fitted)
    return AudioFeatures(wav=fitted, windows=mel_windows(mel, num_frames), num_frames=num_frames, mel=mel)


def idle_features(seconds: float) -> AudioFeatures:
    """Features for `seconds` of idle animation without speech: int(seconds*25) frames of all-zero mel windows
    (as the official idle mode) and a silent wav of the same length, so the video still gets an audio track."""
    num_frames = int(seconds * FPS)
    if num_frames < 1:
        raise InvalidInput(f"Idle length must be at least one video frame ({1 / FPS:g} s), got {seconds:g} s.")
    return AudioFeatures(
        wav=silent_wav(num_frames * SAMPLES_PER_FRAME),
        windows=np.zeros((num_frames, N_MELS, WINDOW_MEL_FRAMES), dtype=np.float32),
        num_frames=num_frames,
    )
