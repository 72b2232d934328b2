"""The benchmark's report: what it measures and in which order, never how fast (speed is shown by running
`python -m sadtalker bench`, not by a timed test)."""

from __future__ import annotations

import pytest

from sadtalker.bench import run_benchmark
from sadtalker.options import GenerateOptions


@pytest.mark.slow
def test_bench_loads_in_generate_order_and_reports_each_stage(pipeline, portrait, speech_clip):
    seen_when_rendering = []
    render_frames = pipeline.render_frames

    def watch(source, sequence, options, run=None):
        seen_when_rendering.append(sorted(k[:3] for k in pipeline.models._cache if k[0] in ("net", "detector")))
        stream = render_frames(source, sequence, options, run)
        yield next(stream)  # the first frame: the render has begun and released what it does not need
        seen_when_rendering.append(sorted(k[:3] for k in pipeline.models._cache if k[0] in ("net", "detector")))
        yield from stream

    pipeline.render_frames = watch
    try:
        report = run_benchmark(pipeline, portrait, GenerateOptions(face_detector="dlib", seed=0),
                               audio=speech_clip(6), frames=1)
    finally:
        del pipeline.render_frames
    assert list(report.stages) == ["load-face", "face", "audio", "load-motion", "motion", "load-render", "warm-up",
                                   "render", "finish", "encode"]
    # the face detector, face3d and the audio nets were let go before the renderer was loaded, and stay so
    assert seen_when_rendering == [[], []]
    peaks = [stage.peak_rss_mb_after for stage in report.stages.values()]
    assert peaks == sorted(peaks) and report.peak_rss_mb == pytest.approx(peaks[-1])
    assert 0 < report.rss_mb_start < report.stages["load-render"].rss_mb_after
    assert report.load_seconds == pytest.approx(sum(s.seconds for n, s in report.stages.items() if n[:5] == "load-"))
    assert report.frames == 6 and report.render.frames == 1 and report.render.seconds_per_frame > 0
    data = report.to_dict()
    assert {"peak_rss_mb", "precision", "render"} <= set(data) and "seconds_per_frame" in data["render"]
