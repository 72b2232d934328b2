"""Benchmark: seconds per stage (and per frame), the renderer's achieved GFLOP/s, memory, and the fast mode's
quality, for a given audio length. The one place where speed is measured.

Model loading is timed apart (`load-*` rows), never as part of a work stage, and happens in the order `generate`
loads: each stage's models just before it, the once-per-video networks released before the renderer is loaded,
so the peak RSS is the one a real run reaches. Rendering is the only stage whose cost per
frame matters on a CPU, so `frames` limits how many frames are rendered: one more is rendered first as a warm-up
(it also prepares the source: keypoints and the appearance volume, once per video) and is reported apart. The
encoder is then fed the rendered frames over and over for the clip's full length, which measures its speed and
shows that memory does not grow with the audio's length. Wall seconds and process CPU seconds are both reported:
on a shared machine the wall figure is contended, the CPU figure much less so.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import cycle, islice
from pathlib import Path

import numpy as np
import soundfile
import torch

from . import audio as audio_stage
from .options import GenerateOptions
from .pipeline import SadTalkerPipeline
from .video import VideoWriter

# FLOPs of one rendered frame (generator incl. dense motion, plus the mapping net), 2 x multiply-adds, counted with
# torch.utils.flop_counter on the official modules (shared/facts/performance.md). Our fast paths do fewer
# multiply-adds for the same frame; the achieved rate is stated against this reference count.
RENDER_GFLOP_PER_FRAME = {256: 1203.2 + 0.19, 512: 4813.0 + 0.19}


@dataclass
class StageTiming:
    seconds: float
    cpu_seconds: float
    rss_mb_after: float
    seconds_per_frame: float | None = None
    peak_rss_mb_after: float = 0.0  # the run's peak so far: the stage that raised it shows where the peak is


@dataclass
class RenderTiming:
    frames: int  # timed frames (the warm-up frame excluded)
    seconds: float
    cpu_seconds: float
    seconds_per_frame: float
    first_frame_seconds: float  # the warm-up frame, including the source preparation
    gflop_per_frame: float
    gflop_per_second: float


@dataclass
class BenchReport:
    audio_seconds: float
    frames: int  # frames of the clip (all of them are encoded)
    size: int
    batch_size: int
    threads: int
    device: str
    precision: str  # the option given
    compute_dtype: str  # what it resolved to on this device
    load_seconds: float
    stages: dict[str, StageTiming] = field(default_factory=dict)
    render: RenderTiming | None = None
    peak_rss_mb: float = 0.0  # peak of the whole run, before any quality check
    rss_mb_start: float = 0.0  # before any model is loaded: the cost of the process, torch and its libraries
    quality: dict[str, float] | None = None  # psnr_db, max_abs_u8 of the rendered frames vs fp32; with an
    # enhancer also enhancer_psnr_db, enhancer_max_abs_u8: the same rendered frames finished in fp32 vs as run

    def table(self) -> str:
        lines = [f"audio {self.audio_seconds:.1f} s = {self.frames} frames; size {self.size}, batch "
                 f"{self.batch_size}, {self.threads} threads, {self.device}, precision {self.precision} "
                 f"({self.compute_dtype}); models loaded in {self.load_seconds:.2f} s; RSS before loading "
                 f"{self.rss_mb_start:.0f} MB",
                 f"{'stage':12} {'seconds':>9} {'cpu s':>9} {'s/frame':>9} {'RSS after (MB)':>15} "
                 f"{'peak so far':>12}"]
        for name, stage in self.stages.items():
            per_frame = f"{stage.seconds_per_frame:9.3f}" if stage.seconds_per_frame is not None else f"{'':9}"
            lines.append(f"{name:12} {stage.seconds:9.2f} {stage.cpu_seconds:9.2f} {per_frame} "
                         f"{stage.rss_mb_after:15.0f} {stage.peak_rss_mb_after:12.0f}")
        if self.render is not None:
            r = self.render
            lines.append(f"render: {r.seconds_per_frame:.3f} s per frame over {r.frames} frames (warm-up frame "
                         f"{r.first_frame_seconds:.2f} s excluded); {r.gflop_per_second:.0f} GFLOP/s against "
                         f"{r.gflop_per_frame:.1f} GFLOP per frame")
        lines.append(f"peak RSS {self.peak_rss_mb:.0f} MB")
        if self.quality is not None:
            lines.append(f"quality vs fp32: PSNR {self.quality['psnr_db']:.2f} dB, max abs difference "
                         f"{self.quality['max_abs_u8']:.0f}/255")
            if "enhancer_psnr_db" in self.quality:
                lines.append(f"enhancer vs fp32 (same rendered frames): PSNR {self.quality['enhancer_psnr_db']:.2f} "
                             f"dB, max abs difference {self.quality['enhancer_max_abs_u8']:.0f}/255")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 1024


def psnr_db(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of uint8 frames against reference frames (peak 255); inf when identical."""
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def synthetic_speech(seconds: float, sample_rate: int = audio_stage.SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like audio for timing only (syllable-rate modulated harmonics + noise): never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def load_models(pipeline: SadTalkerPipeline, options: GenerateOptions, stage: str) -> None:
    """Load what the work stage `stage` (face, motion, render, finish) of a generation with `options` uses, as
    `generate` does on its way there, so that no work stage includes loading."""
    models = pipeline.models
    if stage == "face":
        pipeline._detector(options.face_detector)
        models.face3d(options.size)
    elif stage == "motion":
        models.audio_nets(options.size)
    elif stage == "render":
        models.release_once_per_video()
        models.renderer(options.size, options.preprocess, options.precision)
    elif stage == "finish" and options.enhancer != "none":
        pipeline._enhancer(options.enhancer, options.precision)


def run_benchmark(pipeline: SadTalkerPipeline, image, options: GenerateOptions, *, audio=None,
                  audio_seconds: float = 10.0, frames: int | None = 8, check_quality: bool = False,
                  output: Path | None = None) -> BenchReport:
    """Time each stage of one generation. `frames=None` renders every frame of the clip (plus no warm-up)."""
    stages: dict[str, StageTiming] = {}

    def timed(name, work, per_frame_count: int | None = None):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        value = work()
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        stages[name] = StageTiming(seconds, cpu_seconds, current_rss_mb(),
                                   seconds / per_frame_count if per_frame_count else None, peak_rss_mb())
        return value

    def load(stage: str) -> None:
        timed(f"load-{stage}", lambda: load_models(pipeline, options, stage))

    gc.collect()
    rss_start = current_rss_mb()
    load("face")
    source = timed("face", lambda: pipeline.prepare_source(image, options))
    wav = audio if audio is not None else synthetic_speech(audio_seconds)
    features = timed("audio", lambda: pipeline.prepare_audio(wav, options))
    del wav
    load("motion")
    sequence = timed("motion", lambda: pipeline.predict_motion(features, source, options, seed=0))
    # as in generate: only the samples outlive the motion stage (written for the encoder, then dropped)
    scratch = tempfile.TemporaryDirectory(prefix="sadtalker-bench-")
    speech = Path(scratch.name) / "speech.wav"
    soundfile.write(speech, features.wav, audio_stage.SAMPLE_RATE, subtype="PCM_16")
    del features
    load("render")
    renderer = pipeline.models.renderer(options.size, options.preprocess, options.precision)
    compute_dtype = str(renderer.compute_dtype).removeprefix("torch.")
    total = sequence.num_frames
    timed_frames = total if frames is None else max(1, min(total - 1, frames))
    warm_up = 0 if frames is None else 1

    rendered: list[np.ndarray] = []
    gc.collect()
    stream = pipeline.render_frames(source, sequence, options)
    first_start, first_cpu = time.perf_counter(), time.process_time()
    rendered.extend(islice(stream, warm_up))
    first_frame_seconds = time.perf_counter() - first_start
    if warm_up:  # the source preparation (keypoints, appearance volume) and the first frame: where the peak is
        stages["warm-up"] = StageTiming(first_frame_seconds, time.process_time() - first_cpu, current_rss_mb(),
                                        None, peak_rss_mb())
    wall, cpu = time.perf_counter(), time.process_time()
    rendered.extend(islice(stream, timed_frames))
    render_seconds, render_cpu = time.perf_counter() - wall, time.process_time() - cpu
    stream.close()
    stages["render"] = StageTiming(render_seconds, render_cpu, current_rss_mb(), render_seconds / timed_frames,
                                   peak_rss_mb())
    gflop = RENDER_GFLOP_PER_FRAME.get(options.size, RENDER_GFLOP_PER_FRAME[256] * (options.size / 256) ** 2)
    render = RenderTiming(frames=timed_frames, seconds=render_seconds, cpu_seconds=render_cpu,
                          seconds_per_frame=render_seconds / timed_frames, first_frame_seconds=first_frame_seconds,
                          gflop_per_frame=gflop, gflop_per_second=gflop * timed_frames / render_seconds)

    if options.enhancer != "none":
        load("finish")
    finished = timed("finish", lambda: list(pipeline.finish_frames(iter(rendered), source, options)), len(rendered))
    with scratch:
        target = output or Path(scratch.name) / "bench.mp4"

        def encode():
            height, width = finished[0].shape[:2]
            with VideoWriter(target, (width, height), fps=options.fps, audio_path=speech) as writer:
                for frame in islice(cycle(finished), total):
                    writer.write(frame)

        timed("encode", encode, total)
    del finished
    peak = peak_rss_mb()
    load_seconds = sum(stage.seconds for name, stage in stages.items() if name.startswith("load-"))

    quality = None
    if check_quality:
        del renderer  # the store holds one precision per size: asking for fp32 replaces the fast renderer
        reference_options = options.replace(precision="fp32")
        reference = list(islice(pipeline.render_frames(source, sequence, reference_options), len(rendered)))
        quality = _difference(np.stack(rendered), np.stack(reference))
        if options.enhancer != "none":
            enhanced = [np.stack(list(pipeline.finish_frames(iter(rendered), source, run_options)))
                        for run_options in (options, reference_options)]
            quality.update({f"enhancer_{key}": value for key, value in _difference(*enhanced).items()})
    return BenchReport(audio_seconds=total / options.fps, frames=total, size=options.size,
                       batch_size=options.batch_size, threads=torch.get_num_threads(),
                       device=str(pipeline.models.device), precision=options.precision, compute_dtype=compute_dtype,
                       load_seconds=load_seconds, stages=stages, render=render, peak_rss_mb=peak, quality=quality,
                       rss_mb_start=rss_start)


def _difference(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {"psnr_db": psnr_db(frames, reference),
            "max_abs_u8": float(np.abs(frames.astype(np.int16) - reference.astype(np.int16)).max())}


def report_json(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
