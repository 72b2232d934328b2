"""The table of bad (and odd but good) inputs: data, run by tests/test_bad_input.py through every front end.

Each `Case` builds its inputs in a fresh folder (`make(kit) -> Job`) and says what must come of them: a named
error code (with a piece of its message), or success (with a piece of a warning). A runner (`RUNNERS` in
test_bad_input.py) takes a Job through one front end and returns an `Outcome`; the test then checks the same
things for every runner: the code, a one-line message, no traceback, no partial file, earlier output unchanged.

`per_runner` maps a runner to its expectation where the front ends differ (the command line names its flags,
--pose-style; the API names the request field, options.pose_style). A case lists the runners it applies to in
`runners` (cli, host, api) and says `why` where one does not apply.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

import fakes

SR = 16000
SUCCESS = None  # expected code of a case that must produce a video


@dataclass
class Kit:
    """What every case may use: real photo and speech, good fake checkpoints, and its own empty folder."""

    folder: Path
    portrait: Path  # astronaut.png, 512x512, one face
    speech: Path  # 0.12 s (3 frames) of real speech, 16 kHz
    checkpoints: Path  # fake 256 file and both mappings
    long_speech: Path  # 1 s of real speech

    def path(self, name: str) -> Path:
        return self.folder / name

    def photo(self) -> np.ndarray:
        return np.asarray(Image.open(self.portrait).convert("RGB"))

    def ffmpeg(self, *args: str) -> None:
        from sadtalker.video import ffmpeg_executable

        subprocess.run([ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)

    def models_copy(self, names=(fakes.SAFETENSORS_256, fakes.MAPPING_70, fakes.MAPPING_73)) -> Path:
        """A models folder of hard links to the good fakes (cheap), to break one file in."""
        folder = self.path("models")
        folder.mkdir(exist_ok=True)
        for name in names:
            os.link(self.checkpoints / name, folder / name)
        return folder


@dataclass
class Job:
    image: Path | None = None  # None: the kit's portrait
    audio: Path | None = None  # None: the kit's speech
    options: dict = field(default_factory=dict)  # GenerateOptions fields (added to the table's base options)
    checkpoints: Path | None = None  # None: the kit's good fakes
    out_name: str = "result.mp4"  # the command line's --out, in the output folder
    overwrite: bool = False
    allow_download: bool = False
    models_read_only: bool = False
    earlier_names: tuple[str, ...] = ()  # more earlier files in the output folder (besides earlier.mp4/.json)
    output_dir_state: str = "writable"  # "writable" | "read-only" | "is-a-file" | "full"
    command: str = "generate"  # the command-line sub-command ("download": its own arguments below)
    args: tuple[str, ...] = ()  # extra command-line arguments
    after: Callable[[Path], None] | None = None  # a check of the case's own (gets the case folder)


@dataclass(frozen=True)
class Expect:
    code: str | None  # error code, or SUCCESS
    says: str | tuple[str, ...] = ()  # piece(s) of the error message, or of a warning on success
    multiline: bool = False  # a missing-weights message lists each file on lines of its own; others are one line

    @property
    def pieces(self) -> tuple[str, ...]:
        return (self.says,) if isinstance(self.says, str) else self.says


@dataclass(frozen=True)
class Case:
    id: str
    row: str  # image | audio | reference video | options | checkpoints | output
    make: Callable[[Kit], Job]
    expect: Expect
    per_runner: dict[str, Expect] = field(default_factory=dict)  # runner -> expectation where it differs
    runners: tuple[str, ...] = ("cli", "host", "api")
    slow: bool = False  # renders more than a few frames, or several runs
    cli_in_default: bool = False  # the command-line run is in the default suite (else only with -m slow)
    why: str = ""

    def expectation(self, runner: str) -> Expect:
        return self.per_runner.get(runner, self.expect)


BASE_OPTIONS = {"face_detector": "dlib", "seed": 1}


# -- builders ---------------------------------------------------------------------------------------------------

def _save(kit: Kit, name: str, image: Image.Image, **kw) -> Path:
    path = kit.path(name)
    image.save(path, **kw)
    return path


def _photo(kit: Kit) -> Image.Image:
    return Image.fromarray(kit.photo())


def _job_image(build: Callable[[Kit], Path], **job) -> Callable[[Kit], Job]:
    return lambda kit: Job(image=build(kit), **job)


def _job_audio(build: Callable[[Kit], Path], **job) -> Callable[[Kit], Job]:
    return lambda kit: Job(audio=build(kit), **job)


def _speech(kit: Kit) -> np.ndarray:
    wav, _ = soundfile.read(kit.speech, dtype="float32")
    return wav


def _flat(kit: Kit) -> Path:
    return _save(kit, "flat.png", Image.new("RGB", (300, 300), (120, 130, 140)))


def _two_faces(kit: Kit) -> Path:
    photo = _photo(kit)
    canvas = Image.new("RGB", (900, 512), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    canvas.paste(photo.resize((300, 300)), (580, 100))
    return _save(kit, "two.png", canvas)


def _face_at_border(kit: Kit) -> Path:
    return _save(kit, "border.png", _photo(kit).crop((120, 40, 420, 340)))  # the face fills the frame, chin cut


def _tiny(kit: Kit) -> Path:
    return _save(kit, "tiny.png", _photo(kit).resize((32, 32)))


def _huge(kit: Kit) -> Path:
    # 12000x12000 in 1-bit mode: ~20 KB on disk; decoding it as RGB would take 432 MB
    return _save(kit, "huge.png", Image.new("1", (12000, 12000), 1))


def _rgba(kit: Kit) -> Path:
    image = _photo(kit).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 200))
    return _save(kit, "rgba.png", image)


def _grey(kit: Kit) -> Path:
    return _save(kit, "grey.png", _photo(kit).convert("L"))


def _cmyk(kit: Kit) -> Path:
    return _save(kit, "cmyk.jpg", _photo(kit).convert("CMYK"), quality=95)


def _png16(kit: Kit) -> Path:
    grey = np.asarray(_photo(kit).convert("L"), np.uint16) * 257
    return _save(kit, "grey16.png", Image.fromarray(grey, "I;16"))


def _palette_gif(kit: Kit) -> Path:
    return _save(kit, "palette.gif", _photo(kit).convert("P", palette=Image.Palette.ADAPTIVE))


def _animated(kit: Kit, name: str, **kw) -> Path:
    photo = _photo(kit)
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo]
    return _save(kit, name, frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)


def _exif_rotated(kit: Kit) -> Path:
    # stored turned on its side, with EXIF orientation 6 ("rotate 90 CW to view"): upright once applied
    turned = _photo(kit).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(kit, "rotated.jpg", turned, exif=exif, quality=95)


def _truncated_image(kit: Kit) -> Path:
    full = io.BytesIO()
    _photo(kit).save(full, "PNG")
    path = kit.path("truncated.png")
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 3])
    return path


def _not_an_image(kit: Kit) -> Path:
    path = kit.path("notes.jpg")
    path.write_text("these are my notes, not a photo\n")
    return path


def _empty_audio(kit: Kit) -> Path:
    path = kit.path("empty.wav")
    path.write_bytes(b"")
    return path


def _wav(kit: Kit, name: str, samples: np.ndarray, rate: int = SR, **kw) -> Path:
    path = kit.path(name)
    soundfile.write(path, samples, rate, **kw)
    return path


def _short_audio(kit: Kit) -> Path:
    return _wav(kit, "short.wav", _speech(kit)[: SR // 10])


def _silence(kit: Kit) -> Path:
    return _wav(kit, "silence.wav", np.zeros(SR, np.float32))


def _encoded(kit: Kit, suffix: str, *codec: str) -> Path:
    path = kit.path("speech" + suffix)
    kit.ffmpeg("-i", str(kit.speech), *codec, str(path))
    return path


def _resampled(kit: Kit, name: str, rate: int, channels: int, extensible: bool = False) -> Path:
    wav = _speech(kit)
    samples = np.interp(np.arange(int(len(wav) * rate / SR)) * SR / rate, np.arange(len(wav)), wav)
    samples = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    path = _wav(kit, name, samples.astype(np.float32), rate, subtype="PCM_16")
    if extensible:
        _make_wave_format_extensible(path)
    return path


def _make_wave_format_extensible(path: Path) -> None:
    """Rewrite a PCM WAV's fmt chunk as WAVE_FORMAT_EXTENSIBLE (0xFFFE, PCM sub-format), as pro recorders do."""
    data = path.read_bytes()
    fmt_at = data.index(b"fmt ")
    size = struct.unpack("<I", data[fmt_at + 4: fmt_at + 8])[0]
    tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[fmt_at + 8: fmt_at + 24])
    assert tag == 1
    pcm_guid = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, byte_rate, align, bits, 22, bits,
                      (1 << channels) - 1) + pcm_guid
    body = data[:fmt_at] + b"fmt " + struct.pack("<I", len(ext)) + ext + data[fmt_at + 8 + size:]
    path.write_bytes(body[:4] + struct.pack("<I", len(body) - 8) + body[8:])


def _corrupt_audio(kit: Kit) -> Path:
    path = kit.path("corrupt.wav")
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + os.urandom(200))
    return path


def _video_with_speech(kit: Kit) -> Path:
    path = kit.path("talk.mp4")
    kit.ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25", "-i", str(kit.speech), "-map", "0:v", "-map",
               "1:a", "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
    return path


def _reference(kit: Kit, name: str, frames: int, fps: int, face: bool = True) -> Path:
    from sadtalker.video import VideoWriter

    photo = kit.photo() if face else np.full((256, 256, 3), 128, np.uint8)
    path = kit.path(name)
    with VideoWriter(path, (photo.shape[1], photo.shape[0]), fps=fps) as writer:
        for shift in range(frames):
            writer.write(np.roll(photo, shift * 2, axis=1))
    return path


def _corrupt_video(kit: Kit) -> Path:
    good = _reference(kit, "good_ref.mp4", 3, 25)
    path = kit.path("corrupt_ref.mp4")
    path.write_bytes(good.read_bytes()[:3000])
    good.unlink()
    good.with_suffix(".json").unlink()
    return path


def _ref_job(build: Callable[[Kit], Path], audio: str = "speech") -> Callable[[Kit], Job]:
    def make(kit: Kit) -> Job:
        video = str(build(kit))
        return Job(audio=kit.long_speech if audio == "long" else None,
                   options={"ref_eyeblink": video, "ref_pose": video})

    return make


def _models_missing_all(kit: Kit) -> Job:
    folder = kit.path("models")
    folder.mkdir()
    return Job(checkpoints=folder, options={"face_detector": "facexlib"})


def _models_truncated(kit: Kit) -> Job:
    folder = kit.models_copy((fakes.MAPPING_70,))
    with open(kit.checkpoints / fakes.SAFETENSORS_256, "rb") as source:
        (folder / fakes.SAFETENSORS_256).write_bytes(source.read(4_000_000))
    return Job(checkpoints=folder)


def _models_wrong_component(kit: Kit) -> Job:
    folder = kit.models_copy((fakes.SAFETENSORS_256,))
    os.link(kit.checkpoints / fakes.MAPPING_73, folder / fakes.MAPPING_70)  # the full-mode net, crop-mode name
    return Job(checkpoints=folder)


class _RunsCode:
    """Unpickling this would run a command (creates `marker`): a checkpoint must never be able to do that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _models_malicious(kit: Kit) -> Job:
    import torch

    folder = kit.models_copy((fakes.SAFETENSORS_256,))
    marker = kit.path("code-ran")
    torch.save({"mapping": _RunsCode(marker)}, folder / fakes.MAPPING_70)

    def code_did_not_run(case_folder: Path) -> None:
        assert not marker.exists(), "loading the checkpoint ran the code in its pickle"

    return Job(checkpoints=folder, after=code_did_not_run)


def _models_read_only(kit: Kit) -> Job:
    folder = kit.models_copy((fakes.SAFETENSORS_256,))  # the mapping is missing, the folder cannot take it
    return Job(checkpoints=folder, allow_download=True, models_read_only=True)


def _download_corrupt_present(kit: Kit) -> Job:
    folder = kit.path("models")
    folder.mkdir()
    (folder / fakes.SAFETENSORS_256).write_bytes(b"garbage!")

    def bad_copy_kept(case_folder: Path) -> None:
        assert (folder / fakes.SAFETENSORS_256).read_bytes() == b"garbage!"
        assert not any(p.name.endswith(".part") for p in folder.iterdir())

    return Job(checkpoints=folder, command="download", args=("--detector", "none"), after=bad_copy_kept)


def _existing_out(kit: Kit) -> Job:
    return Job(out_name="earlier.mp4")


def _existing_name_in_outputs(kit: Kit) -> Job:
    return Job(earlier_names=(f"{kit.portrait.stem}__{kit.speech.stem}.mp4",))


# the API stores a base64 upload as image.<type> / audio.<type> (the field the client sent): messages name that
_API_IMAGE = Expect("bad_image", "image.png could not be read as an image")
_NOT_API = ("the API's caller names no output folder: the server's own outputs folder being unwritable or full is "
            "the server's setup; it fails in the same Host call as the host runner's")

CASES: tuple[Case, ...] = (
    # -- image ------------------------------------------------------------------------------------------------
    Case("no-face", "image", _job_image(_flat), Expect("no_face", "face")),
    # dlib also finds a small false face in the astronaut photo itself, so the count here is 3, not 2
    Case("two-faces", "image", _job_image(_two_faces), Expect(SUCCESS, "faces found; the largest was used"),
         slow=True),
    Case("face-at-border", "image", _job_image(_face_at_border), Expect(SUCCESS), slow=True),
    Case("tiny-32x32", "image", _job_image(_tiny), Expect("no_face", "face")),
    Case("huge-12000x12000", "image", _job_image(_huge), Expect("bad_image", "12000x12000 (144 MP); the limit is"),
         cli_in_default=True),
    Case("rgba", "image", _job_image(_rgba), Expect(SUCCESS), slow=True),
    Case("greyscale", "image", _job_image(_grey), Expect(SUCCESS), slow=True),
    Case("cmyk-jpeg", "image", _job_image(_cmyk), Expect(SUCCESS), slow=True),
    Case("png-16-bit", "image", _job_image(_png16), Expect(SUCCESS), slow=True),
    Case("palette-gif", "image", _job_image(_palette_gif), Expect(SUCCESS), slow=True),
    Case("animated-gif", "image", _job_image(lambda kit: _animated(kit, "animated.gif")),
         Expect(SUCCESS, "animated.gif is animated (3 frames); only its first frame is used"),
         per_runner={"api": Expect(SUCCESS, "image.gif is animated (3 frames); only its first frame is used")}),
    Case("animated-webp", "image", _job_image(lambda kit: _animated(kit, "animated.webp", lossless=True)),
         Expect(SUCCESS, "animated.webp is animated (3 frames); only its first frame is used"), slow=True,
         per_runner={"api": Expect(SUCCESS, "image.webp is animated (3 frames); only its first frame is used")}),
    Case("exif-rotated-jpeg", "image", _job_image(_exif_rotated), Expect(SUCCESS), slow=True),
    Case("truncated-png", "image", _job_image(_truncated_image), Expect("bad_image", "truncated.png"),
         per_runner={"api": _API_IMAGE}),
    Case("text-named-jpg", "image", _job_image(_not_an_image), Expect("bad_image", "notes.jpg is not an image"),
         per_runner={"api": Expect("bad_image", "image.bin is not an image")}, cli_in_default=True),
    # -- audio ------------------------------------------------------------------------------------------------
    Case("empty-file", "audio", _job_audio(_empty_audio), Expect("bad_audio", "empty")),
    Case("0.1-seconds", "audio", _job_audio(_short_audio), Expect("bad_audio", "at least 0.12 s")),
    Case("silence", "audio", _job_audio(_silence), Expect("bad_audio", "silent")),
    Case("over-length-limit", "audio", lambda kit: Job(audio=kit.long_speech, options={"max_audio_seconds": 0.5}),
         Expect("bad_audio", "0.5")),
    Case("mp3", "audio", _job_audio(lambda kit: _encoded(kit, ".mp3", "-c:a", "libmp3lame")), Expect(SUCCESS),
         slow=True),
    Case("ogg", "audio", _job_audio(lambda kit: _encoded(kit, ".ogg", "-c:a", "libvorbis")), Expect(SUCCESS),
         slow=True),
    Case("flac", "audio", _job_audio(lambda kit: _encoded(kit, ".flac")), Expect(SUCCESS), slow=True),
    Case("m4a", "audio", _job_audio(lambda kit: _encoded(kit, ".m4a", "-c:a", "aac")), Expect(SUCCESS), slow=True),
    Case("8khz-mono", "audio", _job_audio(lambda kit: _resampled(kit, "8k.wav", 8000, 1)), Expect(SUCCESS),
         slow=True),
    Case("48khz-stereo", "audio", _job_audio(lambda kit: _resampled(kit, "48k.wav", 48000, 2)), Expect(SUCCESS),
         slow=True),
    Case("wave-format-extensible", "audio",
         _job_audio(lambda kit: _resampled(kit, "ext.wav", 16000, 1, extensible=True)), Expect(SUCCESS), slow=True),
    Case("corrupt-wav", "audio", _job_audio(_corrupt_audio), Expect("bad_audio", "corrupt.wav"),
         per_runner={"api": Expect("bad_audio", "audio.wav")}, cli_in_default=True),
    Case("video-as-audio", "audio", _job_audio(_video_with_speech), Expect(SUCCESS), slow=True),
    # -- reference video --------------------------------------------------------------------------------------
    Case("corrupt-reference", "reference video", _ref_job(_corrupt_video),
         Expect("bad_video", "ref_eyeblink: cannot decode corrupt_ref.mp4: Invalid NAL unit size"),
         per_runner={"cli": Expect("bad_video", "--ref-eyeblink: cannot decode corrupt_ref.mp4")}, cli_in_default=True),
    Case("reference-shorter-than-audio", "reference video",
         _ref_job(lambda kit: _reference(kit, "short_ref.mp4", 3, 25), audio="long"), Expect(SUCCESS), slow=True,
         why="the loop warning is h6's; this row checks that a short reference works"),
    Case("reference-without-face", "reference video",
         _ref_job(lambda kit: _reference(kit, "noface_ref.mp4", 3, 25, face=False)), Expect("no_face", "face")),
    Case("reference-30fps", "reference video", _ref_job(lambda kit: _reference(kit, "ref30.mp4", 8, 30)),
         Expect(SUCCESS), slow=True),
    # -- options ----------------------------------------------------------------------------------------------
    Case("pose-style-46", "options", lambda kit: Job(options={"pose_style": 46}),
         Expect("invalid_input", "pose_style must be a whole number from 0 to 45"),
         per_runner={"cli": Expect("invalid_input", "--pose-style must be a whole number from 0 to 45")},
         cli_in_default=True),
    Case("pose-style-minus-1", "options", lambda kit: Job(options={"pose_style": -1}),
         Expect("invalid_input", "pose_style must be"),
         per_runner={"cli": Expect("invalid_input", "--pose-style must be")}),
    Case("expression-scale-negative", "options", lambda kit: Job(options={"expression_scale": -1.0}),
         Expect("invalid_input", "expression_scale must be a number from 0 to 3"),
         per_runner={"cli": Expect("invalid_input", "--expression-scale must be a number from 0 to 3")}),
    Case("expression-scale-huge", "options", lambda kit: Job(options={"expression_scale": 1e9}),
         Expect("invalid_input", "expression_scale must be"),
         per_runner={"cli": Expect("invalid_input", "--expression-scale must be")}),
    Case("size-384", "options", lambda kit: Job(options={"size": 384}),
         Expect("invalid_input", "size must be one of 256, 512"),
         per_runner={"cli": Expect("invalid_input", "argument --size: invalid choice: 384")}, cli_in_default=True),
    Case("batch-0", "options", lambda kit: Job(options={"batch_size": 0}),
         Expect("invalid_input", "batch_size must be"), per_runner={"cli": Expect("invalid_input", "--batch-size")}),
    Case("unknown-preprocess", "options", lambda kit: Job(options={"preprocess": "zoom"}),
         Expect("invalid_input", "preprocess must be one of"),
         per_runner={"cli": Expect("invalid_input", "argument --preprocess: invalid choice: 'zoom'")}),
    # -- checkpoints ------------------------------------------------------------------------------------------
    Case("all-missing", "checkpoints", _models_missing_all,
         Expect("missing_weights", ("4 model files are missing", fakes.SAFETENSORS_256, fakes.MAPPING_70,
                                    "detection_Resnet50_Final.pth", "alignment_WFLW_4HG.pth"), multiline=True),
         cli_in_default=True),
    Case("truncated-safetensors", "checkpoints", _models_truncated,
         Expect("corrupt_checkpoint", "SadTalker_V0.0.2_256.safetensors")),
    Case("wrong-component", "checkpoints", _models_wrong_component,
         Expect("unsupported_checkpoint", ("mapping_00229-model.pth.tar holds no mapping70",
                                           "(crop / extcrop / resize)"))),
    Case("pickle-runs-code", "checkpoints", _models_malicious,
         Expect("corrupt_checkpoint", "mapping_00229-model.pth.tar: refused: its pickle would run code"),
         cli_in_default=True),
    Case("read-only-models-folder", "checkpoints", _models_read_only,
         Expect("missing_weights", (fakes.MAPPING_70, "cannot be written"), multiline=True)),
    Case("download-corrupt-present-offline", "checkpoints", _download_corrupt_present,
         Expect("missing_weights", "Present but corrupt (replace them): SadTalker_V0.0.2_256.safetensors",
                multiline=True), runners=("cli",), cli_in_default=True, why="the download command is the CLI's"),
    # -- output -----------------------------------------------------------------------------------------------
    Case("existing-out-file", "output", _existing_out, Expect("output_exists", "--overwrite is needed to replace"),
         runners=("cli",), cli_in_default=True,
         why="the UI and the API never name the file: see existing-name-in-outputs"),
    Case("existing-name-in-outputs", "output", _existing_name_in_outputs, Expect(SUCCESS), runners=("host",),
         slow=True, why="a new name is made; the earlier file of that name is left as it was (the API makes its "
                        "names the same way, through the Host: tests/test_api.py)"),
    Case("unwritable-folder", "output", lambda kit: Job(output_dir_state="read-only"),
         Expect("output_unwritable", "cannot write into the output folder"), runners=("cli", "host"),
         cli_in_default=True, why=_NOT_API),
    Case("folder-is-a-file", "output", lambda kit: Job(output_dir_state="is-a-file"),
         Expect("output_unwritable", "out"), runners=("cli", "host"), why=_NOT_API),
    Case("disk-full", "output", lambda kit: Job(output_dir_state="full"),
         Expect("disk_full", "the partial file was removed"), runners=("cli", "host"), why=_NOT_API),
)
