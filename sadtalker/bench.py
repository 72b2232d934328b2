"""Benchmark: seconds per stage (and per frame) and memory, for a given audio length.

Rendering is the only stage whose cost grows with the frame count in a way that matters (seconds per frame on a
CPU), so `render_frames` limits how many frames are actually rendered; the encoder is then fed those rendered
frames over and over for the clip's full length, which measures its speed and shows that memory does not grow
with the audio's length. The report says how many frames were rendered and how many were encoded.
"""

from __future__ import annotations

import gc
import json
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


@dataclass
class BenchReport:
    audio_seconds: float
    frames: int
    frames_rendered: int
    size: int
    batch_size: int
    threads: int
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    render_seconds_per_frame: float = 0.0
    rss_mb_after: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    def table(self) -> str:
        lines = [f"audio {self.audio_seconds:.1f} s = {self.frames} frames; rendered {self.frames_rendered} "
                 f"(size {self.size}, batch {self.batch_size}, {self.threads} threads, {self.device})",
                 f"{'stage':10} {'seconds':>9} {'RSS after (MB)':>15}"]
        for stage, seconds in self.seconds.items():
            lines.append(f"{stage:10} {seconds:9.2f} {self.rss_mb_after.get(stage, 0):15.0f}")
        lines.append(f"render: {self.render_seconds_per_frame:.2f} s per frame; peak RSS {self.peak_rss_mb:.0f} MB")
        return "\n".join(lines)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 1024


def synthetic_speech(seconds: float, sample_rate: int = audio_stage.SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like audio for timing only (syllable-rate modulated harmonics + noise): never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def run_benchmark(pipeline: SadTalkerPipeline, image, options: GenerateOptions, *, audio=None,
                  audio_seconds: float = 10.0, render_frames: int | None = 8,
                  output: Path | None = None) -> BenchReport:
    """Time each stage of one generation. `render_frames=None` renders every frame."""
    stages: dict[str, float] = {}
    rss: dict[str, float] = {}

    def timed(name, work):
        gc.collect()
        start = time.perf_counter()
        value = work()
        stages[name] = time.perf_counter() - start
        rss[name] = current_rss_mb()
        return value

    source = timed("face", lambda: pipeline.prepare_source(image, options))
    wav = audio if audio is not None else synthetic_speech(audio_seconds)
    features = timed("audio", lambda: pipeline.prepare_audio(wav, options))
    sequence = timed("motion", lambda: pipeline.predict_motion(features, source, options, seed=0))
    total = sequence.num_frames
    to_render = total if render_frames is None else min(total, render_frames)

    def render():
        frames = pipeline.finish_frames(pipeline.render_frames(source, sequence, options), source, options)
        return list(islice(frames, to_render))

    rendered = timed("render", render)
    with tempfile.TemporaryDirectory(prefix="sadtalker-bench-") as scratch:
        speech = Path(scratch) / "speech.wav"
        soundfile.write(speech, features.wav, audio_stage.SAMPLE_RATE, subtype="PCM_16")
        target = output or Path(scratch) / "bench.mp4"

        def encode():
            height, width = rendered[0].shape[:2]
            with VideoWriter(target, (width, height), fps=options.fps, audio_path=speech) as writer:
                for frame in islice(cycle(rendered), total):
                    writer.write(frame)

        timed("encode", encode)
    return BenchReport(audio_seconds=total / options.fps, frames=total, frames_rendered=to_render, size=options.size,
                       batch_size=options.batch_size, threads=torch.get_num_threads(),
                       device=str(pipeline.models.device), seconds=stages,
                       render_seconds_per_frame=stages["render"] / max(to_render, 1), rss_mb_after=rss,
                       peak_rss_mb=peak_rss_mb())


def report_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2)
