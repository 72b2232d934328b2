"""Pre-processing against the official code on real inputs (shared/golden/preprocess/README.md, "Tolerances").

Each stage starts from its own golden inputs (the stored 256 crop for the re-detection, the landmarks for the
alignment, the aligned image for the net, `wav_loaded` for the mel). Stages that need the photos or the video
read them from `../shared/assets` (not ours to commit) and skip with the reason where that folder is absent.
Landmarks: dlib with the README's recipe, the detector the golden data was made with.
"""

from __future__ import annotations

import hashlib
import sys

import cv2
import numpy as np
import pytest

import fakes
from sadtalker import audio
from sadtalker.errors import MissingDependency
from sadtalker.face.align import align_for_face3d
from sadtalker.face.crop import CroppedFace, crop_face, crop_info_from_landmarks, crop_with_info
from sadtalker.face.detect import detect_landmarks
from sadtalker.face.extract import crop_coefficients, crop_landmarks, reference_video_coefficients
from sadtalker.face.reconstruct import face3d_coefficients
from sadtalker.nets.face3d import ReconNet
from sadtalker.video import read_video_frames

IMAGE_CASES = ("pre_sad_crop", "pre_art_0_full", "pre_full4_extcrop", "pre_art_0_resize")
ASSETS = fakes.SHARED / "assets"
VIDEO = ASSETS / "WDA_AlexandriaOcasioCortez_000.mp4"

# README tolerances
COEFF_ATOL = 1e-5  # coeffs_257 and columns 0:70
CROP_TRIPLE_RTOL = 1e-6  # columns 70:73 = float32(s, tx, ty)
TRANS_RTOL = 1e-6
MEL_ATOL = 5e-4


def preprocess_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(fakes.Path(__file__).parent / "data" / "golden" / "preprocess" / f"{name}.npz") as z:
        return {key: z[key] for key in z.files}


def asset(name: str):
    path = ASSETS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared assets are not part of the repository")
    return path


def read_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(asset(name))), cv2.COLOR_BGR2RGB)  # the official reading


@pytest.fixture(scope="module")
def recon_net() -> ReconNet:
    net = ReconNet()
    net.load_state_dict(fakes.fake_state(fakes.SAFETENSORS_256, prefix="face_3drecon"), strict=True)
    return net.eval()


def assert_coefficients(ours: np.ndarray, expected: np.ndarray) -> None:
    ours, expected = np.asarray(ours).reshape(-1, 73), np.asarray(expected).reshape(-1, 73)
    np.testing.assert_allclose(ours[:, :70], expected[:, :70], atol=COEFF_ATOL, rtol=0)
    np.testing.assert_allclose(ours[:, 70:], expected[:, 70:], atol=0, rtol=CROP_TRIPLE_RTOL)


def det_box(det: np.ndarray) -> tuple[int, int, int, int]:
    """The README's [left, top, right, bottom (inclusive), method] as our exclusive box."""
    return int(det[0]), int(det[1]), int(det[2]) + 1, int(det[3]) + 1


# ------------------------------------------------------------------------------------------------ audio


@pytest.fixture(scope="module")
def resampled() -> dict[str, np.ndarray]:
    return preprocess_golden("resample")


def audio_input(name: str):
    if name == "japanese":
        return asset("japanese.wav")
    return fakes.Path(__file__).parent / "data" / "golden" / "preprocess" / f"{name}.wav"


@pytest.mark.parametrize("name", ["speech_44k1_stereo", "speech_48k_mono", "speech_22k05_mono", "speech_8k_mono",
                                  "japanese"])
def test_resampling_is_the_official_one(resampled, name):
    """44.1 / 48 / 22.05 / 8 kHz, stereo, 24-bit WAVE_FORMAT_EXTENSIBLE: exact, as resampy kaiser_best."""
    loaded = audio.load_audio(audio_input(name))
    expected = resampled[f"{name}__wav_loaded"]
    assert loaded.dtype == np.float32 and loaded.shape == expected.shape
    np.testing.assert_array_equal(loaded, expected)


@pytest.mark.parametrize("name", ["speech_44k1_stereo", "speech_8k_mono", "japanese"])
def test_mel_and_windows_from_the_golden_wav(resampled, name):
    features = audio.audio_features(resampled[f"{name}__wav_loaded"])
    assert features.num_frames == int(resampled[f"{name}__num_frames"])
    np.testing.assert_allclose(features.mel, resampled[f"{name}__orig_mel"], atol=MEL_ATOL, rtol=0)
    windows = resampled[f"{name}__indiv_mels"]  # the first 40 frames are stored
    np.testing.assert_allclose(features.windows[:len(windows)], windows, atol=MEL_ATOL, rtol=0)


def test_resampling_without_resampy_names_the_package(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resampy" else find_spec(name, *a))
    audio._kaiser_best_table.cache_clear()
    try:
        with pytest.raises(MissingDependency, match="resampy"):
            audio.load_audio(audio_input("speech_8k_mono"))
        assert audio.resample(np.ones(640, np.float32), 16000).shape == (640,)  # 16 kHz needs no resampling
    finally:
        audio._kaiser_best_table.cache_clear()


def test_resampling_leaves_numba_unloaded():
    """resampy's numba kernels stay out of the process (about 100 MB resident once compiled, for good): only its
    filter table is read. The exact result is test_resampling_is_the_official_one's."""
    import subprocess

    code = ("import sys; from sadtalker import audio; audio.load_audio(sys.argv[1]); "
            "print(sorted(m for m in ('numba', 'llvmlite', 'resampy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(audio_input("speech_48k_mono"))], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------- source images


@pytest.fixture(scope="module", params=IMAGE_CASES)
def case(request) -> dict[str, np.ndarray]:
    return preprocess_golden(request.param)


def test_dlib_on_the_full_photo(case, dlib_backend):
    found = detect_landmarks(read_rgb(str(case["image_file"])), detector=dlib_backend)
    assert found.box == det_box(case["det_full"])
    np.testing.assert_array_equal(found.points, case["lm68_full"])


def test_crop_and_mapped_landmarks(case):
    image = read_rgb(str(case["image_file"]))
    mode = str(case["preprocess"])
    cropped = crop_face(image, case["lm68_full"], mode)
    np.testing.assert_array_equal(cropped.face, case["face256"])
    assert cropped.info.size == tuple(case["crop_info_size"])
    if mode != "resize":
        assert cropped.info.crop_box == tuple(case["crop_info_crop"])
        np.testing.assert_allclose(cropped.info.quad_box, case["crop_info_quad"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(cropped.origin, case["mapped_origin"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(cropped.landmarks, case["lm68_mapped"], atol=1e-9, rtol=0)


def test_landmarks_detected_again_on_the_crop(case, dlib_backend):
    """The official recipe: the 224 alignment takes the landmarks found on the 256 crop (the full4 ext crop
    needs dlib's CNN fallback), not the photo's landmarks mapped into it."""
    mapped = CroppedFace(face=case["face256"], region=case["face256"], info=None, landmarks=case["lm68_mapped"])
    found = crop_landmarks(mapped, dlib_backend)
    assert found.redetected
    np.testing.assert_array_equal(found.points, case["lm68_crop256"])
    assert detect_landmarks(case["face256"], detector=dlib_backend).box == det_box(case["det_crop256"])


def test_alignment(case):
    aligned = align_for_face3d(case["face256"], case["lm68_crop256"])
    np.testing.assert_allclose(aligned.trans_params, case["trans_params"], atol=0, rtol=TRANS_RTOL)
    np.testing.assert_array_equal(aligned.image, case["aligned224"])
    np.testing.assert_allclose(aligned.landmarks, case["lm224"], atol=1e-3, rtol=0)
    mapped = align_for_face3d(case["face256"], case["lm68_mapped"])
    np.testing.assert_allclose(mapped.trans_params, case["mapped_trans_params"], atol=0, rtol=TRANS_RTOL)


def test_face3d_and_source_coefficients(case, recon_net):
    np.testing.assert_allclose(face3d_coefficients(recon_net, case["aligned224"]), case["coeffs_257"],
                               atol=COEFF_ATOL, rtol=0)
    _, coefficients = crop_coefficients(recon_net, case["face256"], case["lm68_crop256"])
    assert_coefficients(coefficients, case["source_coeff"])


@pytest.fixture(scope="module")
def pipeline(fake_checkpoints):
    from sadtalker.pipeline import SadTalkerPipeline

    pipe = SadTalkerPipeline(fake_checkpoints, allow_download=False)
    yield pipe
    pipe.unload()


@pytest.mark.parametrize(("name", "mode"), [("pre_sad_crop", "crop"), ("pre_art_0_full", "full"),
                                            ("pre_full4_extcrop", "extcrop"), ("pre_full4_extcrop", "extfull"),
                                            ("pre_art_0_resize", "resize")])
def test_pipeline_source_in_every_mode(pipeline, name, mode):
    """photo -> detect -> crop -> detect again -> align -> face3d, through `prepare_source` (extfull: the README
    states every array equal to extcrop's)."""
    from sadtalker.options import GenerateOptions

    case = preprocess_golden(name)
    source = pipeline.prepare_source(asset(str(case["image_file"])), GenerateOptions(preprocess=mode,
                                                                                   face_detector="dlib"))
    np.testing.assert_array_equal(source.crop.face, case["face256"])
    np.testing.assert_array_equal(source.crop_landmarks, case["lm68_crop256"])
    assert_coefficients(source.coefficients, case["source_coeff"])
    assert source.warnings == ()
    if mode == "resize":
        assert source.landmarks is None  # the official resize mode does not look for the face on the photo
    else:
        np.testing.assert_array_equal(source.landmarks, case["lm68_full"])
    assert pipeline.models.detector("dlib") is pipeline.models.detector("dlib")  # loaded once, kept


def test_no_face_on_the_crop_falls_back_to_the_mapped_landmarks(dlib_backend, caplog):
    case = preprocess_golden("pre_sad_crop")
    blank = np.zeros_like(case["face256"])
    mapped = CroppedFace(face=blank, region=blank, info=None, landmarks=case["lm68_mapped"])
    found = crop_landmarks(mapped, dlib_backend)
    assert not found.redetected
    np.testing.assert_allclose(found.points, case["lm68_mapped"], atol=1e-4, rtol=0)
    assert "mapped" in caplog.text
    unmapped = CroppedFace(face=blank, region=blank, info=None, landmarks=None)
    assert crop_landmarks(unmapped, dlib_backend) is None


# ------------------------------------------------------------------------------------------ reference video


@pytest.fixture(scope="module", params=["crop", "extcrop"])
def refvid(request) -> dict[str, np.ndarray]:
    return preprocess_golden(f"refvid_{request.param}")


def test_reference_frames_from_their_golden_crops(refvid, dlib_backend, recon_net):
    """Landmarks found on every 256 crop, each aligned and reconstructed."""
    for index, crop in enumerate(refvid["crops256"]):
        found = detect_landmarks(crop, detector=dlib_backend)
        np.testing.assert_array_equal(found.points, refvid["lm68_crop256"][index])
        aligned, coefficients = crop_coefficients(recon_net, crop, found.points)
        np.testing.assert_allclose(aligned.trans_params, refvid["trans_params"][index], atol=0, rtol=TRANS_RTOL)
        np.testing.assert_allclose(aligned.landmarks, refvid["lm224"][index], atol=1e-3, rtol=0)
        assert_coefficients(coefficients, refvid["coeff"][index])
    np.testing.assert_array_equal(align_for_face3d(refvid["crops256"][0], refvid["lm68_crop256"][0]).image,
                                  refvid["aligned224_sel"][0])


def test_reference_video_from_its_frames(refvid, dlib_backend, recon_net):
    """The whole recipe from the decoded video: frame 0's crop for every frame, in the run's mode."""
    count = int(refvid["n_frames"])
    frames = [frame for _, frame in zip(range(count), read_video_frames(asset(VIDEO.name)))]
    assert [hashlib.sha256(np.ascontiguousarray(f[..., ::-1]).tobytes()).hexdigest() for f in frames] == \
        list(refvid["frames_bgr_sha256"])
    mode = str(refvid["preprocess"])
    found = detect_landmarks(frames[0], detector=dlib_backend)
    assert found.box == det_box(refvid["frame0_det_full"])
    np.testing.assert_array_equal(found.points, refvid["frame0_lm68_full"])
    info = crop_info_from_landmarks(found.points, 512, 512)
    assert info.crop_box == tuple(refvid["crop_info_crop"]) and info.size == tuple(refvid["crop_info_size"])
    first = crop_face(frames[0], found.points, mode)
    np.testing.assert_allclose(first.landmarks, refvid["frame0_lm68_mapped"], atol=1e-9, rtol=0)
    for frame, expected in zip(frames, refvid["crops256"]):
        np.testing.assert_array_equal(crop_with_info(frame, info, mode).face, expected)
    seen = []
    coefficients = reference_video_coefficients(iter(frames), dlib_backend, recon_net, mode, on_frame=seen.append)
    assert seen == list(range(count))
    assert_coefficients(coefficients, refvid["coeff"])


def test_reference_frames_without_a_face_take_a_neighbours_landmarks(dlib_backend, recon_net):
    refvid = preprocess_golden("refvid_crop")
    faces = list(refvid["crops256"][:2])
    blank = np.zeros_like(faces[0])
    frames = [blank, faces[0], blank, faces[1]]  # 256 frames in resize mode are their own crops
    coefficients = reference_video_coefficients(frames, dlib_backend, recon_net, "resize")
    expected = [crop_coefficients(recon_net, face, refvid["lm68_crop256"][source])[1]
                for face, source in ((blank, 0), (faces[0], 0), (blank, 0), (faces[1], 1))]
    np.testing.assert_allclose(coefficients, np.concatenate(expected), atol=0, rtol=0)


# ------------------------------------------------------------------------------ the command line, end to end


CLI_FRAMES = 3  # the fewest the pose smoothing takes: the renderer costs seconds per frame
REFERENCE_FRAMES = 2  # shorter than the audio: the reference loops, and the run says so


def _speech_excerpt(folder, resampled) -> tuple[object, int]:
    """A 0.14 s excerpt of the 44.1 kHz stereo clip whose 16 kHz samples fall on the golden ones: it starts
    at a multiple of 2205 input samples (= 800 output samples = 4 mel hops), at the loudest such place.
    Returns the file and its first sample's index in the golden 16 kHz wav."""
    import soundfile

    samples, rate = soundfile.read(audio_input("speech_44k1_stereo"), dtype="float32", always_2d=True)
    length = int((CLI_FRAMES * 0.04 + 0.02) * rate)
    starts = range(0, len(samples) - length, 2205)
    start = max(starts, key=lambda s: float(np.square(samples[s:s + length]).sum()))
    path = folder / "excerpt_44k1_stereo.wav"
    soundfile.write(path, samples[start:start + length], rate, subtype="FLOAT")
    return path, start // 2205 * 800


@pytest.fixture(scope="module")
def cli_run(fake_checkpoints, resampled, tmp_path_factory):
    """`python -m sadtalker generate` on sad.png (crop, dlib) with 44.1 kHz stereo speech and a 2-frame cut of the
    reference video as --ref-pose, --save-intermediates; 3 frames."""
    import subprocess

    from sadtalker.video import ffmpeg_executable

    image, video = asset("sad.png"), asset(VIDEO.name)
    folder = tmp_path_factory.mktemp("cli")
    speech, offset = _speech_excerpt(folder, resampled)
    reference = folder / "reference.mp4"  # stream copy: the first frames decode to the very same pixels
    subprocess.run([ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-i", str(video), "-an",
                    "-frames:v", str(REFERENCE_FRAMES), "-c", "copy", str(reference)], check=True)
    out, inter = folder / "cli.mp4", folder / "inter"
    result = subprocess.run(
        [sys.executable, "-m", "sadtalker", "generate", "--image", str(image), "--audio", str(speech),
         "--out", str(out), "--checkpoints", str(fake_checkpoints), "--face-detector", "dlib", "--seed", "1",
         "--ref-pose", str(reference), "--no-download", "--quiet", "--save-intermediates", str(inter)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    arrays = {path.stem: np.load(path) for path in inter.glob("*.npy")}
    return out, arrays, offset, result.stderr


def test_cli_intermediates_match_the_official_stages(cli_run, resampled):
    _, arrays, offset, _ = cli_run
    case = preprocess_golden("pre_sad_crop")
    np.testing.assert_array_equal(arrays["landmarks_68"], case["lm68_full"])
    assert tuple(arrays["crop_box"]) == tuple(case["crop_info_crop"])
    np.testing.assert_allclose(arrays["crop_quad"], case["crop_info_quad"], atol=1e-9, rtol=0)
    assert tuple(arrays["crop_size"]) == tuple(case["crop_info_size"])
    np.testing.assert_array_equal(arrays["crop_landmarks_68"], case["lm68_crop256"])
    assert_coefficients(arrays["source_coefficients_73"], case["source_coeff"])

    golden_wav = resampled["speech_44k1_stereo__wav_loaded"]
    samples = CLI_FRAMES * audio.SAMPLES_PER_FRAME
    # exact, except the first 51 samples: the kaiser_best filter reaches 50 output samples (~3 ms) to each side,
    # and before the excerpt's first sample the full clip has speech where the excerpt has nothing. Not bit-exact
    # past it either: resampy's time register counts from the excerpt's start, which moves the float rounding of
    # one sample by 1.9e-9 (measured); the whole-file stage test above is exact.
    edge = 64
    np.testing.assert_allclose(arrays["audio_16k"][edge:], golden_wav[offset + edge:offset + samples], atol=1e-8,
                               rtol=0)
    # mel rows whose STFT window (800 samples, centred) starts after that edge and ends inside the excerpt
    first_row, rows = offset // audio.HOP_LENGTH, slice(3, samples // audio.HOP_LENGTH - 2)
    assert arrays["mel_80"].shape == (samples // audio.HOP_LENGTH + 1, 80) and arrays["mel_80"].dtype == np.float64
    np.testing.assert_allclose(arrays["mel_80"][rows],
                               resampled["speech_44k1_stereo__orig_mel"][first_row + rows.start:first_row + rows.stop],
                               atol=MEL_ATOL, rtol=0)

    reference = preprocess_golden("refvid_crop")
    assert_coefficients(arrays["reference_coefficients_73"], reference["coeff"][:REFERENCE_FRAMES])
    assert arrays["coefficients_70"].shape == (CLI_FRAMES, 70)


def test_cli_video_keeps_the_users_sound_and_says_the_reference_loops(cli_run):
    out, _, _, stderr = cli_run
    samples, rate = audio._read_with_ffmpeg(str(out), None)
    assert rate == 44100 and samples.shape[1] == 2  # not the 16 kHz mono analysis copy
    assert abs(len(samples) - CLI_FRAMES / 25 * rate) <= 1024  # cut to the video (one AAC frame of slack)
    left, right = samples[:, 0], samples[:, 1]
    assert np.abs(left - right).max() > 0.01  # the channels differ in the input, and still do
    assert f"{REFERENCE_FRAMES} frames) is shorter than the audio ({CLI_FRAMES} frames), so it loops" in stderr


def test_unload_releases_the_detectors(fake_checkpoints):
    pytest.importorskip("dlib")
    from sadtalker.pipeline import SadTalkerPipeline

    pipe = SadTalkerPipeline(fake_checkpoints, allow_download=False)
    first = pipe.models.detector("dlib")
    pipe.unload()
    assert not hasattr(first, "predictor")  # closed
    assert pipe.models.detector("dlib") is not first
    pipe.unload()
