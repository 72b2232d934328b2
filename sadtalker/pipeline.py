"""The method, step by step: photo + speech -> talking-head MP4.

detect -> crop/align -> 3DMM -> audio features -> expression + pose + blinks -> render -> enhance -> paste-back
-> encode. Models are loaded on first use and kept between runs (`ModelStore`); frames stream to the encoder, so
memory does not grow with the audio's length. The math lives in the stage modules; this file only orders them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch

from . import audio as audio_stage
from . import heap, motion, render_inputs
from .checkpoints import files
from .checkpoints.check import files_for_run, verify_weight_file
from .checkpoints.components import load_component
from .checkpoints.download import ensure_files
from .checkpoints.paths import ModelPaths
from .checkpoints.reader import CheckpointReader
from .device import resolve_device
from .errors import AudioError, Cancelled, InvalidInput, OutputExists, VideoError
from .face.crop import CroppedFace, crop_face
from .face.detect import FaceLandmarker, detect_landmarks, open_detector
from .face.extract import CropLandmarks, crop_coefficients, crop_landmarks, reference_video_coefficients
from .face.paste import PasteBack, aspect_frame
from .image import image_warnings, load_image
from .options import GenerateOptions
from .render import Renderer, frames_to_uint8, resolve_precision, source_image_input
from .video import VideoWriter, check_output_folder, check_video_decodes, read_video_frames, unique_output_path

log = logging.getLogger("sadtalker")

ProgressCallback = Callable[[str, int, int], None]
"""on_progress(stage, done, total): stage is one of STAGES."""
STAGES = ("load", "face", "audio", "motion", "render", "encode")


@dataclass(frozen=True)
class SourceFace:
    """Everything taken from the photo: the full image, its landmarks, the face crop and its 73 coefficients."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole photo
    landmarks: np.ndarray | None  # (68, 2) float, photo pixels; None in resize mode (no detection on the photo)
    crop: CroppedFace  # face (S, S, 3) uint8 + where it came from
    coefficients: np.ndarray  # (1, 73) float32: exp 64 | angles 3 | translation 3 | crop s, tx, ty
    faces_found: int
    crop_landmarks: np.ndarray | None = None  # (68, 2) float32, crop pixels: what the 224 alignment used
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReferenceMotion:
    """Reference videos' per-frame coefficients (N, 73) float32: `blink` (--ref-eyeblink) and `pose` (--ref-pose),
    None where not given (the same array when both name one video)."""

    blink: np.ndarray | None = None
    pose: np.ndarray | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class TalkingHeadResult:
    video: Path
    sidecar: Path
    num_frames: int
    fps: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    seed: int = 0
    warnings: list[str] = field(default_factory=list)


class ModelStore:
    """Loads each network once (per size and preprocess family) and keeps it until `unload()`.

    The networks a video runs once (the face detector, face3d, the audio nets, the keypoint detector: about
    400 MB in float32 with dlib, more with facexlib) are let go by `release_once_per_video()` as soon as a run has
    used them, and loaded again (well under a second) by the next run; the renderer's generator and mapping net,
    which every frame runs, stay loaded.
    """

    ONCE_PER_VIDEO = ("face_3drecon", "audio2exp", "audio2pose")

    def __init__(self, paths: ModelPaths, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 allow_download: bool = False, on_download_progress: Callable[[str, int, int | None], None] | None = None):
        self.paths = paths
        self.device = resolve_device(device)
        self.dtype = dtype
        self.allow_download = allow_download
        self.on_download_progress = on_download_progress
        self._cache: dict[tuple, object] = {}
        heap.hand_large_buffers_back()

    def file(self, wf: files.WeightFile) -> Path:
        (path,) = ensure_files([wf], self.paths, allow_download=self.allow_download,
                               on_progress=self.on_download_progress, verify=verify_weight_file)
        return path

    def _reader(self, wf: files.WeightFile) -> CheckpointReader:
        # A safetensors reader holds only the header and is kept; a pickle's reader holds every tensor of the file
        # and is not (keeping it would hold those weights a second time next to the loaded, converted copies).
        key = ("reader", wf.name)
        if key in self._cache:
            return self._cache[key]  # type: ignore[return-value]
        reader = CheckpointReader(self.file(wf))
        if wf.name.endswith(".safetensors"):
            self._cache[key] = reader
        return reader

    def _component(self, wf: files.WeightFile, component_id: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
        key = ("net", wf.name, component_id)
        if key not in self._cache:
            self._cache[key] = load_component(self._reader(wf), component_id, device=self.device,
                                              dtype=dtype or self.dtype)
        return self._cache[key]  # type: ignore[return-value]

    def audio_nets(self, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        # the audio nets are small and run once per clip: keep them in float32 for exact coefficients
        wf = files.sadtalker_file(size)
        pose_key = ("net", wf.name, "audio2pose")
        if pose_key not in self._cache:
            self._cache[pose_key] = load_component(self._reader(wf), "audio2pose", device=self.device,
                                                   dtype=torch.float32).drop_training_parts()
        return self._component(wf, "audio2exp", torch.float32), self._cache[pose_key]  # type: ignore[return-value]

    def face3d(self, size: int) -> torch.nn.Module:
        return self._component(files.sadtalker_file(size), "face_3drecon", torch.float32)

    def detector(self, name: str) -> FaceLandmarker:
        """The face detector backend `name`, loaded once and kept like the networks."""
        key = ("detector", name)
        if key not in self._cache:
            if name == "facexlib":
                self.file(files.FACEXLIB_DETECTION)
                self.file(files.FACEXLIB_ALIGNMENT)
            folder = {"facexlib": self.paths.facexlib, "face-alignment": self.paths.root}.get(name)
            self._cache[key] = open_detector(name, models_dir=folder, device=str(self.device),
                                             allow_download=self.allow_download)
        return self._cache[key]  # type: ignore[return-value]

    def renderer(self, size: int, preprocess: str, precision: str = "fp32") -> Renderer:
        """The renderer for a size and preprocess family, its generator computing in `precision` (an option value:
        fp32, bf16, fp16, auto). One precision per size and mapping is held: asking for another replaces it (two
        copies of the generator would double its memory)."""
        mapping_wf = files.mapping_file(preprocess)
        dtype = resolve_precision(precision, self.device)
        key = ("renderer", size, mapping_wf.name, dtype)
        if key not in self._cache:
            for other in [k for k in self._cache if k[:3] == key[:3]]:
                del self._cache[other]
            (mapping_id,) = mapping_wf.components
            # Neither is a cached component: set_compute_dtype changes the generator in place, and the mapping net
            # is loaded once, in float32 like the official one.
            generator = self._load(files.sadtalker_file(size), "generator", torch.float32)
            mapping = self._load(mapping_wf, mapping_id, torch.float32)
            # the keypoint detector is attached below, after the conversion: the float32 generator and the
            # detector are then never in memory together
            self._cache[key] = Renderer(None, generator, mapping, compute_dtype=dtype)
        renderer: Renderer = self._cache[key]  # type: ignore[assignment]
        if renderer.kp_detector is None:
            renderer.kp_detector = self._kp_detector(size)
        return renderer

    def _load(self, wf: files.WeightFile, component_id: str, dtype: torch.dtype) -> torch.nn.Module:
        return load_component(self._reader(wf), component_id, device=self.device, dtype=dtype)

    def _kp_detector(self, size: int) -> torch.nn.Module:
        return self._load(files.sadtalker_file(size), "kp_extractor", self.dtype)

    def release_once_per_video(self) -> None:
        """Let go of the face detectors, face3d, the audio nets and the keypoint detectors (see the class doc)."""
        # a detector is dropped, not closed: a face preview running meanwhile may still hold it
        for key in [k for k in self._cache if k[0] == "detector" or (k[0] == "net" and k[2] in self.ONCE_PER_VIDEO)]:
            del self._cache[key]
        for key, value in self._cache.items():
            if key[0] == "renderer":
                value.kp_detector = None  # type: ignore[attr-defined]
        heap.return_freed_memory()

    def unload(self) -> None:
        for key, held in list(self._cache.items()):
            if key[0] == "detector":
                held.close()  # type: ignore[union-attr]
        self._cache.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _Run:
    """Progress, cancel and timing of one generate() call."""

    def __init__(self, on_progress: ProgressCallback | None, should_cancel: Callable[[], bool] | None):
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.seconds: dict[str, float] = {}
        self._stage, self._started = "", time.perf_counter()

    def stage(self, name: str, done: int = 0, total: int = 1) -> None:
        self.check_cancel()
        now = time.perf_counter()
        if self._stage:
            self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + now - self._started
        self._stage, self._started = name, now
        self.progress(done, total)

    def progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(self._stage, done, total)

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("cancelled by the user; no video was written")

    def finish(self) -> None:
        self.stage("done")
        self.seconds.pop("done", None)


class SadTalkerPipeline:
    """One object that holds the loaded models between runs. `generate()` is the whole method."""

    def __init__(self, models_dir: str | Path | ModelPaths | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, allow_download: bool = False,
                 on_download_progress: Callable[[str, int, int | None], None] | None = None,
                 enhancer_factory: Callable[[str], object] | None = None):
        paths = models_dir if isinstance(models_dir, ModelPaths) else (
            ModelPaths.default() if models_dir is None else ModelPaths(Path(models_dir)))
        self.models = ModelStore(paths, device=device, dtype=dtype, allow_download=allow_download,
                                 on_download_progress=on_download_progress)
        self._enhancer_factory = enhancer_factory
        self._enhancers: dict[tuple[str, torch.dtype], object] = {}

    # -- the stages ------------------------------------------------------------------------------------------
    def _detector(self, name: str) -> FaceLandmarker:
        return self.models.detector(name)

    def prepare_source(self, image, options: GenerateOptions) -> SourceFace:
        """Photo -> landmarks -> face crop -> landmarks again on the crop -> 224 alignment -> 73 coefficients."""
        rgb = load_image(image)
        detector = self._detector(options.face_detector)
        # resize mode squashes the whole photo, so it needs no face box: like the official tool it looks for the
        # face only on the squashed crop, and on the photo only when the crop shows none
        on_photo = options.preprocess != "resize" or options.face_box is not None
        found = detect_landmarks(rgb, detector=detector, face_box=options.face_box) if on_photo else None
        cropped = crop_face(rgb, found.points if found else None, options.preprocess, size=options.size)
        on_crop = crop_landmarks(cropped, detector, face_box=options.face_box)
        if on_crop is None:  # resize mode, no face on the squashed crop: map the photo's landmarks into it
            found = detect_landmarks(rgb, detector=detector)
            cropped = crop_face(rgb, found.points, options.preprocess, size=options.size)
            on_crop = CropLandmarks(np.asarray(cropped.landmarks, np.float32), redetected=False)
        warnings = () if on_crop.redetected else (
            f"no face found again on the {options.size} px face crop ({detector.name} detector): the photo's "
            "landmarks mapped into it were used, so the start pose may differ from the official tool's",)
        _, coefficients = crop_coefficients(self.models.face3d(options.size), cropped.face, on_crop.points)
        return SourceFace(rgb, found.points if found else None, cropped, coefficients,
                          found.faces_found if found else 1, crop_landmarks=on_crop.points, warnings=warnings)

    def prepare_audio(self, audio, options: GenerateOptions) -> audio_stage.AudioFeatures:
        """Speech (path or 16 kHz samples) -> per-frame mel windows; no audio + idle_seconds -> idle mode."""
        if audio is None:
            if options.idle_seconds is None:
                raise InvalidInput("give speech audio, or an idle length (idle_seconds) for a video without speech")
            return audio_stage.idle_features(options.idle_seconds)
        if isinstance(audio, np.ndarray):
            wav = np.asarray(audio, np.float32).reshape(-1)
            if len(wav) > options.max_audio_seconds * 16000:
                raise AudioError(f"the audio is longer than the {options.max_audio_seconds:g} s limit")
        else:
            wav = audio_stage.load_audio(audio, max_seconds=options.max_audio_seconds)
        if audio_stage.is_silent(wav):
            raise AudioError("the audio is silent; for a video without speech use idle mode (idle_seconds)")
        features = audio_stage.audio_features(wav)
        if features.num_frames < 3:
            raise AudioError(f"the audio is {len(wav) / 16000:.2f} s long; at least 0.12 s (3 video frames) is needed")
        return features

    def reference_coefficients(self, video_path: str | Path, options: GenerateOptions) -> np.ndarray:
        """A reference video's per-frame coefficients (N, 73), at 25 fps, for copying its blinks or head motion:
        cropped with frame 0's box in the run's preprocess mode, landmarks found on every cropped frame."""
        frames = read_video_frames(video_path, fps=options.fps)
        return reference_video_coefficients(frames, self._detector(options.face_detector),
                                            self.models.face3d(options.size), options.preprocess)

    def reference_motion(self, options: GenerateOptions, num_frames: int) -> ReferenceMotion:
        """The reference videos' coefficients (one pass per distinct video). One shorter than the `num_frames`
        of the audio loops, as in the official tool; the result's warnings say so."""
        by_path: dict[str, np.ndarray] = {}
        warnings = []
        for role, path in (("blinks", options.ref_eyeblink), ("head motion", options.ref_pose)):
            if not path:
                continue
            if path not in by_path:
                by_path[path] = self.reference_coefficients(path, options)
            if len(by_path[path]) < num_frames:
                warnings.append(f"the reference video for {role} ({Path(path).name}, {len(by_path[path])} frames) "
                                f"is shorter than the audio ({num_frames} frames), so it loops")
        return ReferenceMotion(blink=by_path.get(options.ref_eyeblink or ""), pose=by_path.get(options.ref_pose or ""),
                               warnings=tuple(warnings))

    def predict_motion(self, features: audio_stage.AudioFeatures, source: SourceFace, options: GenerateOptions,
                       seed: int, references: ReferenceMotion | None = None) -> motion.CoefficientSequence:
        """Audio windows -> per-frame coefficients (expression, head pose, blinks). `references`: the reference
        videos' coefficients, from `reference_motion` (computed here when not given)."""
        exp_net, pose_net = self.models.audio_nets(options.size)
        if references is None:
            references = self.reference_motion(options, features.num_frames)
        return motion.audio_to_coefficients(
            exp_net, pose_net, features.windows, source.coefficients, pose_style=options.pose_style,
            rng=random.Random(seed), generator=torch.Generator().manual_seed(seed), use_blink=options.blink,
            ref_blink_coeffs=references.blink, ref_pose_coeffs=references.pose)

    def render_frames(self, source: SourceFace, sequence: motion.CoefficientSequence, options: GenerateOptions,
                      run: _Run | None = None) -> Iterator[np.ndarray]:
        """Coefficients -> rendered face frames (S, S, 3) uint8, in order, `batch_size` per network call."""
        self.models.release_once_per_video()  # face3d and the audio nets are done: free them before loading
        renderer = self.models.renderer(options.size, options.preprocess, options.precision)
        inputs = render_inputs.renderer_inputs(sequence.coeffs, source.coefficients, options)
        state = renderer.prepare_source(source_image_input(source.crop.face), inputs.semantics[None],
                                        batch_size=options.batch_size)
        self.models.release_once_per_video()  # before the first frame: the render's peak is then the lowest
        with heap.buffers_kept_between_frames():
            for start, stop in inputs.batches(options.batch_size):
                if run is not None:
                    run.check_cancel()
                windows, angles = inputs.batch(start, stop)
                yield from frames_to_uint8(renderer.render(state, windows, **angles))
                if run is not None:
                    run.progress(stop, inputs.num_frames)

    def _enhancer(self, name: str, precision: str = "fp32"):
        """The face enhancer `name`, loaded once per compute dtype: the host's own restorer when the factory
        offers one, else ours (GFPGAN's decoder runs in the run's half precision, see enhance.py)."""
        dtype = resolve_precision(precision, self.models.device)
        key = (name, dtype)
        if key not in self._enhancers:
            enhancer = self._enhancer_factory(name) if self._enhancer_factory is not None else None
            if enhancer is None:
                from .enhance import SpandrelEnhancer

                path = self.models.file(files.enhancer_file(name))
                enhancer = SpandrelEnhancer(path, device=self.models.device, dtype=dtype)
            self._enhancers[key] = enhancer
        return self._enhancers[key]

    def finish_frames(self, frames: Iterator[np.ndarray], source: SourceFace,
                      options: GenerateOptions) -> Iterator[np.ndarray]:
        """Rendered faces -> output frames: optional enhancer, then the official aspect resize or paste-back."""
        enhancer = self._enhancer(options.enhancer, options.precision) if options.enhancer != "none" else None
        paste = PasteBack(source.image, source.crop.info, extended=options.preprocess == "extfull") \
            if options.is_full else None
        # a face restorer needs the same large buffers for every frame, like the renderer (see heap.py)
        with heap.buffers_kept_between_frames() if enhancer is not None else contextlib.nullcontext():
            for frame in frames:
                if enhancer is not None:
                    frame = enhancer.restore(frame)
                yield paste(frame) if paste is not None else aspect_frame(frame, source.crop.info.size)

    # -- the whole method ------------------------------------------------------------------------------------
    def generate(self, image, audio, options: GenerateOptions | None = None, *, output: str | Path | None = None,
                 output_dir: str | Path | None = None, on_progress: ProgressCallback | None = None,
                 should_cancel: Callable[[], bool] | None = None, intermediates_dir: str | Path | None = None,
                 extra_metadata: dict | None = None, overwrite: bool = True) -> TalkingHeadResult:
        """Photo + speech -> MP4. `output` names the file (an existing file is replaced only when the new one is
        complete, and only with `overwrite`); otherwise a new name is made in `output_dir` (never overwriting).
        A cancelled or failed run leaves no file behind and touches no earlier output."""
        options = options or GenerateOptions()
        if audio is not None and options.idle_seconds is not None:
            raise InvalidInput("idle_seconds makes a video without speech; give the audio or idle_seconds, not both",
                               option="idle_seconds")
        preflight_warnings = self.preflight(image, options, output=output, output_dir=output_dir,
                                            overwrite=overwrite)
        seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
        run = _Run(on_progress, should_cancel)
        run.stage("face")
        source = self.prepare_source(image, options)
        run.stage("audio")
        features = self.prepare_audio(audio, options)
        run.stage("motion")
        references = self.reference_motion(options, features.num_frames)
        sequence = self.predict_motion(features, source, options, seed, references)
        if intermediates_dir is not None:
            _save_intermediates(Path(intermediates_dir), source, sequence, features, references)
        # Rendering needs none of the audio features: the mel windows alone are 37 MB at 5 minutes of speech, so
        # holding them would make the run's peak grow with the audio's length. Only the 16 kHz samples are kept,
        # and only where they are the video's sound (samples given as an array, idle mode).
        samples = None if isinstance(audio, (str, Path)) else features.wav
        del features
        target = Path(output) if output is not None else unique_output_path(
            Path(output_dir or "."), output_stem(image, audio))
        metadata = {"generator": "sd-webui-sadtalker", "options": options.to_dict(), "seed": seed,
                    "frames": sequence.num_frames, **(extra_metadata or {})}
        run.stage("render", 0, sequence.num_frames)
        with tempfile.TemporaryDirectory(prefix="sadtalker-") as scratch:
            # The user's own sound goes into the video (its rate and channels, cut or padded to the video); the
            # 16 kHz mono copy is only for analysis. Samples given as an array, and idle mode, have nothing else.
            sound = Path(audio) if isinstance(audio, (str, Path)) else Path(scratch) / "speech.wav"
            if samples is not None:
                soundfile.write(sound, samples, audio_stage.SAMPLE_RATE, subtype="PCM_16")
                del samples
            rendered = self.render_frames(source, sequence, options, run)
            frames = self.finish_frames(rendered, source, options)
            # closed however the run ends, so a failed write does not leave the frame-buffer policy (heap.py) on
            with contextlib.closing(rendered), contextlib.closing(frames):
                first = next(frames)
                with VideoWriter(target, (first.shape[1], first.shape[0]), fps=options.fps, audio_path=sound,
                                 metadata=metadata) as writer:
                    writer.write(first)
                    for frame in frames:
                        writer.write(frame)
                    run.stage("encode")
        run.finish()
        warnings = preflight_warnings + (
            [f"{source.faces_found} faces found; the largest was used"] if source.faces_found > 1 else [])
        warnings += [*source.warnings, *references.warnings]
        return TalkingHeadResult(video=target, sidecar=target.with_suffix(".json"), num_frames=sequence.num_frames,
                                 fps=options.fps, seconds=run.seconds, seed=seed, warnings=warnings)

    def preview(self, image, options: GenerateOptions | None = None, *, face_index: int | None = None,
                nudge=None):
        """The faces in the photo and the crop a run with these options would use (see `sadtalker.preview`).
        -> FacePreview; its `face_box` is what to pass as the `face_box` option to render exactly that."""
        from .preview import preview_faces

        options = options or GenerateOptions()
        return preview_faces(load_image(image), self._detector(options.face_detector),
                             preprocess=options.preprocess, size=options.size, face_index=face_index,
                             face_box=options.face_box, nudge=nudge)

    def preflight(self, image, options: GenerateOptions, *, output: str | Path | None = None,
                  output_dir: str | Path | None = None, overwrite: bool = True) -> list[str]:
        """What would stop the run, found before any work -> the warnings it gives.

        The output folder must take a new file (and an existing `output` needs `overwrite`); every weight file the
        run reads must be there or be downloaded now (one MissingWeights names all that are lacking); reference
        videos must open. Does not decode the image or the audio.
        """
        if output is not None:
            target = Path(output)
            if target.exists() and not overwrite:
                raise OutputExists(f"overwrite is needed to replace {target}, which already exists "
                                   "(or choose another output name)", option="overwrite")
            check_output_folder(target.parent)
        else:
            check_output_folder(Path(output_dir or "."))
        needed = files_for_run(size=options.size, preprocess=options.preprocess, face_detector=options.face_detector,
                               enhancer=options.enhancer)
        ensure_files(needed, self.models.paths, allow_download=self.models.allow_download,
                     on_progress=self.models.on_download_progress, verify=verify_weight_file)
        for name in ("ref_eyeblink", "ref_pose"):
            video = getattr(options, name)
            if video:
                try:
                    check_video_decodes(video)
                except InvalidInput as exc:
                    raise VideoError(f"{name}: {exc}", option=name) from None
        return image_warnings(image)

    def unload(self) -> None:
        self.models.unload()
        self._enhancers.clear()


def output_stem(image, audio) -> str:
    """The default name of a video: `<photo>__<audio>` (`<photo>__idle` without speech)."""
    image_part = Path(image).stem if isinstance(image, (str, Path)) else "image"
    audio_part = Path(audio).stem if isinstance(audio, (str, Path)) else ("idle" if audio is None else "audio")
    return f"{image_part}__{audio_part}"


def _save_intermediates(folder: Path, source: SourceFace, sequence: motion.CoefficientSequence,
                        features: audio_stage.AudioFeatures | None = None,
                        references: ReferenceMotion | None = None) -> None:
    """The official tool keeps .mat files; we keep .npy files named after what they hold, one per stage, so a run
    can be compared with the official one stage by stage."""
    folder.mkdir(parents=True, exist_ok=True)
    info = source.crop.info
    arrays = {
        "landmarks_68": source.landmarks,  # the photo's; none in resize mode
        "crop_box": np.array(info.crop_box if info.crop_box is not None else [-1] * 4),
        "crop_quad": np.array(info.quad_box if info.quad_box is not None else [-1.0] * 4),
        "crop_size": np.array(info.size),
        "crop_landmarks_68": source.crop_landmarks,
        "source_coefficients_73": source.coefficients,
        "coefficients_70": sequence.coeffs,
        "blink_ratio": sequence.ratio,
        "pose_latents": sequence.z,
    }
    if features is not None:
        arrays["audio_16k"] = features.wav
        arrays["mel_80"] = features.mel
    if references is not None:
        if references.blink is references.pose or references.pose is None or references.blink is None:
            arrays["reference_coefficients_73"] = references.blink if references.blink is not None else references.pose
        else:  # two different videos
            arrays["reference_blink_coefficients_73"] = references.blink
            arrays["reference_pose_coefficients_73"] = references.pose
    for name, array in arrays.items():
        if array is not None:
            np.save(folder / f"{name}.npy", array)
