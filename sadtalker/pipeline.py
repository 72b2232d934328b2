"""The method, step by step: photo + speech -> talking-head MP4.

detect -> crop/align -> 3DMM -> audio features -> expression + pose + blinks -> render -> enhance -> paste-back
-> encode. Models are loaded on first use and kept between runs (`ModelStore`); frames stream to the encoder, so
memory does not grow with the audio's length. The math lives in the stage modules; this file only orders them.
"""

from __future__ import annotations

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
from . import motion
from .checkpoints import files
from .checkpoints.check import files_for_run, verify_weight_file
from .checkpoints.components import load_component
from .checkpoints.download import ensure_files
from .checkpoints.paths import ModelPaths
from .checkpoints.reader import CheckpointReader
from .errors import AudioError, Cancelled, InvalidInput, OutputExists, VideoError
from .face.align import align_for_face3d
from .face.crop import CroppedFace, crop_face
from .face.detect import detect_landmarks, get_detector, release_detectors, video_landmarks
from .face.paste import PasteBack, aspect_frame
from .face.reconstruct import source_coefficients
from .image import image_warnings, load_image
from .options import GenerateOptions
from .render import Renderer, SourceState
from .video import VideoWriter, check_output_folder, check_video_decodes, read_video_frames, unique_output_path

log = logging.getLogger("sadtalker")

ProgressCallback = Callable[[str, int, int], None]
"""on_progress(stage, done, total): stage is one of STAGES."""
STAGES = ("load", "face", "audio", "motion", "render", "encode")


@dataclass(frozen=True)
class SourceFace:
    """Everything taken from the photo: the full image, its landmarks, the face crop and its 73 coefficients."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, the whole photo
    landmarks: np.ndarray  # (68, 2) float, photo pixels
    crop: CroppedFace  # face (S, S, 3) uint8 + where it came from
    coefficients: np.ndarray  # (1, 73) float32: exp 64 | angles 3 | translation 3 | crop s, tx, ty
    faces_found: int


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
    """Loads each network once (per size and preprocess family) and keeps it until `unload()`."""

    def __init__(self, paths: ModelPaths, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 allow_download: bool = False, on_download_progress: Callable[[str, int, int | None], None] | None = None):
        self.paths = paths
        self.device = torch.device(device)
        self.dtype = dtype
        self.allow_download = allow_download
        self.on_download_progress = on_download_progress
        self._cache: dict[tuple, object] = {}

    def file(self, wf: files.WeightFile) -> Path:
        (path,) = ensure_files([wf], self.paths, allow_download=self.allow_download,
                               on_progress=self.on_download_progress, verify=verify_weight_file)
        return path

    def _reader(self, wf: files.WeightFile) -> CheckpointReader:
        key = ("reader", wf.name)
        if key not in self._cache:
            self._cache[key] = CheckpointReader(self.file(wf))
        return self._cache[key]  # type: ignore[return-value]

    def _component(self, wf: files.WeightFile, component_id: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
        key = ("net", wf.name, component_id)
        if key not in self._cache:
            self._cache[key] = load_component(self._reader(wf), component_id, device=self.device,
                                              dtype=dtype or self.dtype)
        return self._cache[key]  # type: ignore[return-value]

    def audio_nets(self, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        # the audio nets are small and run once per clip: keep them in float32 for exact coefficients
        wf = files.sadtalker_file(size)
        return self._component(wf, "audio2exp", torch.float32), self._component(wf, "audio2pose", torch.float32)

    def face3d(self, size: int) -> torch.nn.Module:
        return self._component(files.sadtalker_file(size), "face_3drecon", torch.float32)

    def renderer(self, size: int, full: bool) -> Renderer:
        key = ("renderer", size, full)
        if key not in self._cache:
            wf = files.sadtalker_file(size)
            mapping_wf = files.MAPPING_FULL if full else files.MAPPING_CROP
            self._cache[key] = Renderer(self._component(wf, "kp_extractor"), self._component(wf, "generator"),
                                        self._component(mapping_wf, "mapping73" if full else "mapping70"))
        return self._cache[key]  # type: ignore[return-value]

    def unload(self) -> None:
        self._cache.clear()
        release_detectors()
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
        self._enhancers: dict[str, object] = {}

    # -- the stages ------------------------------------------------------------------------------------------
    def _detector(self, name: str):
        if name == "facexlib":
            self.models.file(files.FACEXLIB_DETECTION)
            self.models.file(files.FACEXLIB_ALIGNMENT)
        folder = {"facexlib": self.models.paths.facexlib, "face-alignment": self.models.paths.root}.get(name)
        return get_detector(name, models_dir=folder, device=str(self.models.device),
                            allow_download=self.models.allow_download)

    def prepare_source(self, image, options: GenerateOptions) -> SourceFace:
        """Photo -> landmarks -> face crop -> 224 alignment -> the photo's 73 coefficients."""
        rgb = load_image(image)
        if options.preprocess == "resize" and options.face_box is None:
            # resize mode uses the whole photo; landmarks only feed the 224 alignment
            found = detect_landmarks(rgb, detector=self._detector(options.face_detector))
        else:
            found = detect_landmarks(rgb, detector=self._detector(options.face_detector), face_box=options.face_box)
        cropped = crop_face(rgb, found.points, options.preprocess, size=options.size)
        aligned = align_for_face3d(cropped.face, cropped.landmarks)
        coefficients = source_coefficients(self.models.face3d(options.size), aligned.image, aligned.trans_params)
        return SourceFace(rgb, found.points, cropped, coefficients, found.faces_found)

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
        """A reference video's per-frame coefficients (N, 73), at 25 fps, for copying its blinks or head motion."""
        frames = list(read_video_frames(video_path, fps=options.fps))
        if not frames:
            raise InvalidInput(f"the reference video {Path(video_path).name} has no frames")
        points = video_landmarks(frames, detector=self._detector(options.face_detector))
        net = self.models.face3d(options.size)
        rows = []
        for frame, landmarks in zip(frames, points):
            cropped = crop_face(frame, landmarks, "crop", size=options.size)
            aligned = align_for_face3d(cropped.face, cropped.landmarks)
            rows.append(source_coefficients(net, aligned.image, aligned.trans_params))
        return np.concatenate(rows, 0)

    def predict_motion(self, features: audio_stage.AudioFeatures, source: SourceFace, options: GenerateOptions,
                       seed: int) -> motion.CoefficientSequence:
        """Audio windows -> per-frame coefficients (expression, head pose, blinks)."""
        exp_net, pose_net = self.models.audio_nets(options.size)
        ref_blink = self.reference_coefficients(options.ref_eyeblink, options) if options.ref_eyeblink else None
        if options.ref_pose and options.ref_pose == options.ref_eyeblink:
            ref_pose = ref_blink
        else:
            ref_pose = self.reference_coefficients(options.ref_pose, options) if options.ref_pose else None
        return motion.predict_coefficients(
            exp_net, pose_net, features.windows, source.coefficients, pose_style=options.pose_style,
            rng=random.Random(seed), generator=torch.Generator().manual_seed(seed), use_blink=options.blink,
            ref_blink_coeffs=ref_blink, ref_pose_coeffs=ref_pose)

    def render_frames(self, source: SourceFace, sequence: motion.CoefficientSequence, options: GenerateOptions,
                      run: _Run | None = None) -> Iterator[np.ndarray]:
        """Coefficients -> rendered face frames (S, S, 3) uint8, in order, `batch_size` per network call."""
        renderer = self.models.renderer(options.size, options.is_full)
        targets = motion.render_targets(sequence.coeffs, source.coefficients, preprocess=options.preprocess,
                                        still=options.still, expression_scale=options.expression_scale,
                                        head_motion_scale=options.head_motion_scale)
        state = self._source_state(renderer, source, options)
        total = len(targets)
        angles = {name: motion.free_view_angles(getattr(options, name), total)
                  for name in ("yaw", "pitch", "roll") if getattr(options, name)}
        for start in range(0, total, options.batch_size):
            if run is not None:
                run.check_cancel()
            stop = min(start + options.batch_size, total)
            windows = motion.frame_windows(targets, start, stop)
            frames = renderer.render(state, windows, **{k: v[start:stop] for k, v in angles.items()})
            frames_u8 = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            yield from frames_u8
            if run is not None:
                run.progress(stop, total)

    def _source_state(self, renderer: Renderer, source: SourceFace, options: GenerateOptions) -> SourceState:
        image = torch.from_numpy(source.crop.face).permute(2, 0, 1)[None].float() / 255.0
        semantics = motion.source_semantics(source.coefficients, options.preprocess)[None]
        return renderer.prepare_source(image, semantics)

    def _enhancer(self, name: str):
        if name not in self._enhancers:
            if self._enhancer_factory is not None:
                self._enhancers[name] = self._enhancer_factory(name)
            else:
                from .enhance import SpandrelEnhancer

                path = self.models.file(files.enhancer_file(name))
                self._enhancers[name] = SpandrelEnhancer(path, device=self.models.device)
        return self._enhancers[name]

    def finish_frames(self, frames: Iterator[np.ndarray], source: SourceFace,
                      options: GenerateOptions) -> Iterator[np.ndarray]:
        """Rendered faces -> output frames: optional enhancer, then the official aspect resize or paste-back."""
        enhancer = self._enhancer(options.enhancer) if options.enhancer != "none" else None
        paste = PasteBack(source.image, source.crop.info, extended=options.preprocess == "extfull") \
            if options.is_full else None
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
        preflight_warnings = self.preflight(image, options, output=output, output_dir=output_dir,
                                            overwrite=overwrite)
        seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
        run = _Run(on_progress, should_cancel)
        run.stage("face")
        source = self.prepare_source(image, options)
        release_detectors()  # the detector is only needed again for reference videos; free its memory now
        run.stage("audio")
        features = self.prepare_audio(audio, options)
        run.stage("motion")
        sequence = self.predict_motion(features, source, options, seed)
        if intermediates_dir is not None:
            _save_intermediates(Path(intermediates_dir), source, sequence)
        target = Path(output) if output is not None else unique_output_path(
            Path(output_dir or "."), _output_stem(image, audio))
        metadata = {"generator": "sd-webui-sadtalker", "options": options.to_dict(), "seed": seed,
                    "frames": sequence.num_frames, **(extra_metadata or {})}
        run.stage("render", 0, sequence.num_frames)
        with tempfile.TemporaryDirectory(prefix="sadtalker-") as scratch:
            speech_wav = Path(scratch) / "speech.wav"
            soundfile.write(speech_wav, features.wav, audio_stage.SAMPLE_RATE, subtype="PCM_16")
            frames = self.finish_frames(self.render_frames(source, sequence, options, run), source, options)
            first = next(frames)
            with VideoWriter(target, (first.shape[1], first.shape[0]), fps=options.fps, audio_path=speech_wav,
                             metadata=metadata) as writer:
                writer.write(first)
                for frame in frames:
                    writer.write(frame)
                run.stage("encode")
        run.finish()
        warnings = preflight_warnings + (
            [f"{source.faces_found} faces found; the largest was used"] if source.faces_found > 1 else [])
        return TalkingHeadResult(video=target, sidecar=target.with_suffix(".json"), num_frames=sequence.num_frames,
                                 fps=options.fps, seconds=run.seconds, seed=seed, warnings=warnings)

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


def _output_stem(image, audio) -> str:
    image_part = Path(image).stem if isinstance(image, (str, Path)) else "image"
    audio_part = Path(audio).stem if isinstance(audio, (str, Path)) else ("idle" if audio is None else "audio")
    return f"{image_part}__{audio_part}"


def _save_intermediates(folder: Path, source: SourceFace, sequence: motion.CoefficientSequence) -> None:
    """The official tool keeps .mat files; we keep .npy files named after what they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    info = source.crop.info
    np.save(folder / "landmarks_68.npy", source.landmarks)
    np.save(folder / "crop_box.npy", np.array(info.crop_box if info.crop_box is not None else [-1] * 4))
    np.save(folder / "crop_quad.npy", np.array(info.quad_box if info.quad_box is not None else [-1.0] * 4))
    np.save(folder / "crop_size.npy", np.array(info.size))
    np.save(folder / "source_coefficients_73.npy", source.coefficients)
    np.save(folder / "coefficients_70.npy", sequence.coeffs)
    np.save(folder / "blink_ratio.npy", sequence.ratio)
    np.save(folder / "pose_latents.npy", sequence.z)
