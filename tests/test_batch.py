"""Batches: the manifest, option precedence, the command on the local backend, and the Ray backend on a real local
cluster (127.0.0.1 only) with 2 workers.

Fake official checkpoints, a real photo, real speech (espeak-ng) trimmed to 3 frames, dlib landmarks, real ffmpeg.
The local command runs once (4 good items + 1 without a face) and its assertions share that run; the Ray tests
share one module-scoped cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sadtalker import audio as audio_stage
from sadtalker.__main__ import build_parser, options_from_args
from sadtalker.batch import ItemResult, PlannedItem, plan_batch, read_manifest
from sadtalker.errors import InvalidInput
from sadtalker.video import probe

FRAMES = 3
ROOT = Path(__file__).resolve().parents[1]
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with two portraits (astronaut, its mirror), one photo with no face, two 3-frame speech clips."""
    from PIL import Image

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (tools/setup-test-env.sh installs it)")
    folder = tmp_path_factory.mktemp("inputs")
    photo = skimage_data.astronaut()
    Image.fromarray(photo).save(folder / "astronaut.png")
    Image.fromarray(photo[:, ::-1].copy()).save(folder / "mirrored.png")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(folder / "grey.png")
    for name, text in (("hello", "Hello there."), ("thanks", "Thank you.")):
        raw = folder / f"{name}-raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True, capture_output=True)
        wav = audio_stage.load_audio(raw)
        window = FRAMES * audio_stage.SAMPLES_PER_FRAME
        start = int(np.argmax(np.convolve(wav**2, np.ones(window), mode="valid")))
        soundfile.write(folder / f"{name}.wav", wav[start:start + window], 16000, subtype="PCM_16")
    return folder


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _batch_args(*argv: str):
    return build_parser().parse_args(["batch", *argv])


# -- the manifest and the plan (no rendering) -------------------------------------------------------------------

def test_option_columns_override_flags_which_override_defaults(inputs, tmp_path):
    manifest = _write(inputs, "precedence.csv", "image,audio,name,pose_style,still,yaw,face_box\n"
                      "astronaut.png,hello.wav,own,3,yes,0 10 -5,\"10,20,200,220\"\n"
                      "mirrored.png,thanks.wav,,,,,\n")
    args = _batch_args(str(manifest), "--out-dir", str(tmp_path), "--pose-style", "5", "--seed", "9")
    own, plain = plan_batch(read_manifest(args.manifest), options_from_args(args), args.out_dir)
    assert isinstance(own, PlannedItem) and isinstance(plain, PlannedItem)
    assert own.options.pose_style == 3 and plain.options.pose_style == 5  # column > flag
    assert own.options.still is True and plain.options.still is False  # column > default
    assert own.options.seed == plain.options.seed == 9  # flag > default
    assert own.options.yaw == (0.0, 10.0, -5.0) and own.options.face_box == (10, 20, 200, 220)
    assert own.image == inputs / "astronaut.png"  # relative to the manifest's folder, not the working directory
    assert own.output == tmp_path.resolve() / "own.mp4"
    assert plain.output.name == "mirrored__thanks.mp4" and plain.label == "mirrored__thanks"


def test_json_items_are_accepted(inputs, tmp_path):
    manifest = _write(inputs, "items.json", json.dumps([
        {"image": "astronaut.png", "audio": "hello.wav", "name": "a", "options": {"pose_style": 7, "still": True}},
        {"image": str(inputs / "mirrored.png"), "audio": None, "options": {"idle_seconds": 0.2}},
        {"image": "astronaut.png", "audio": "hello.wav", "options": {"colour": "red"}},
    ]))
    first, idle, unknown = plan_batch(read_manifest(manifest), options_from_args(_batch_args("m", "--out-dir", "o")),
                                      tmp_path)
    assert first.options.pose_style == 7 and first.options.still is True
    assert idle.audio is None and idle.options.idle_seconds == 0.2 and idle.output.name == "mirrored__idle.mp4"
    assert isinstance(unknown, ItemResult) and unknown.code == "invalid_input" and "colour" in unknown.message


def test_a_bad_item_gets_its_named_error_and_the_others_are_planned(inputs, tmp_path):
    manifest = _write(inputs, "bad.csv", "image,audio,pose_style\n"
                      "astronaut.png,hello.wav,99\nnowhere.png,hello.wav,\nastronaut.png,missing.wav,\n"
                      "astronaut.png,hello.wav,two\nastronaut.png,hello.wav,\n")
    plan = plan_batch(read_manifest(manifest), options_from_args(_batch_args("m", "--out-dir", "o")), tmp_path)
    codes = [entry.code if isinstance(entry, ItemResult) else "planned" for entry in plan]
    assert codes == ["invalid_input", "bad_image", "bad_audio", "invalid_input", "planned"]
    assert "pose_style" in plan[0].message and "'two'" in plan[3].message


def test_output_names_never_overwrite_and_never_collide(inputs, tmp_path):
    (tmp_path / "same.mp4").write_bytes(b"an earlier video")
    manifest = _write(inputs, "names.csv", "image,audio,name\nastronaut.png,hello.wav,same\n"
                      "mirrored.png,hello.wav,same\nastronaut.png,hello.wav,\nastronaut.png,hello.wav,\n")
    plan = plan_batch(read_manifest(manifest), options_from_args(_batch_args("m", "--out-dir", "o")), tmp_path)
    assert [p.output.name for p in plan] == ["same-1.mp4", "same-2.mp4", "astronaut__hello.mp4",
                                             "astronaut__hello-1.mp4"]
    assert (tmp_path / "same.mp4").read_bytes() == b"an earlier video"


@pytest.mark.parametrize(("text", "words"), [("image,name\na.png,x\n", "must name the columns image and audio"),
                                             ("image,audio,colour\na.png,b.wav,red\n", "unknown column 'colour'"),
                                             ("image,audio\n", "lists no items"),
                                             ("[{\"image\": \"a.png\", \"sound\": \"b.wav\"}]", "unknown keys")])
def test_a_broken_manifest_is_one_named_error(tmp_path, text, words):
    with pytest.raises(InvalidInput, match=words):
        read_manifest(_write(tmp_path, "m.json" if text.startswith("[") else "m.csv", text))


# -- the command, local backend ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_batch(inputs, fake_checkpoints, tmp_path_factory):
    """`python -m sadtalker batch` on 4 good items and one photo without a face."""
    manifest = _write(inputs, "five.csv", "image,audio,name,pose_style,still\n"
                      "astronaut.png,hello.wav,,,\nmirrored.png,hello.wav,,4,\nastronaut.png,thanks.wav,,,yes\n"
                      "grey.png,hello.wav,noface,,\nmirrored.png,thanks.wav,last,45,\n")
    out = tmp_path_factory.mktemp("local-out")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "sadtalker", "batch", str(manifest), "--out-dir", str(out),
                          "--checkpoints", str(fake_checkpoints), "--no-download", "--face-detector", "dlib",
                          "--seed", "7", "--threads", "2"], capture_output=True, text=True, env=env, timeout=900)
    return run, out


def test_local_batch_prints_a_line_per_item_and_a_summary(local_batch):
    run, out = local_batch
    lines = run.stdout.splitlines()
    assert run.returncode == 1, run.stderr  # one item failed
    done = [line for line in lines if line.startswith("done")]
    assert len(done) == 4
    (failed,) = [line for line in lines if line.startswith("failed")]
    assert failed.startswith("failed   noface: [no_face] ")
    assert lines[-1].startswith("4 of 5 items done, 1 failed")
    assert run.stderr.count("started ") == 5  # a progress line per item


def test_local_batch_writes_every_good_video_once(local_batch):
    _, out = local_batch
    videos = sorted(p.name for p in out.iterdir() if p.suffix == ".mp4")
    assert videos == ["astronaut__hello.mp4", "astronaut__thanks.mp4", "last.mp4", "mirrored__hello.mp4"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary part left
    for name in videos:
        info = probe(out / name)
        assert info.frames == FRAMES and info.video_codec == "h264" and info.audio_codec == "aac"
    last = probe(out / "last.mp4").parameters
    assert last["options"]["pose_style"] == 45 and last["seed"] == 7 and last["batch"]["item"] == 4
    assert probe(out / "astronaut__thanks.mp4").parameters["options"]["still"] is True


def test_a_bad_flag_is_named_as_the_command_line_knows_it(tmp_path):
    manifest = _write(tmp_path, "m.csv", "image,audio\na.png,b.wav\n")
    run = subprocess.run([sys.executable, "-m", "sadtalker", "batch", str(manifest), "--out-dir", str(tmp_path),
                          "--pose-style", "77"], capture_output=True, text=True, env={**os.environ,
                                                                                      "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and "error [invalid_input]: --pose-style must be" in run.stderr


# -- the Ray backend --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_backend(fake_checkpoints):
    """A local Ray cluster on 127.0.0.1 and 2 actors, shared by the Ray tests; progress events are recorded."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # not imported here: the backend imports it for loopback only
        pytest.skip("the Ray backend is optional: pip install 'sd-webui-sadtalker[ray]'")
    from sadtalker.batch_ray import RayBackend

    events, listeners = [], []

    def record(event):
        events.append(event)
        for listener in listeners:
            listener(event)

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # the actors' import
    backend = RayBackend("local", models_dir=fake_checkpoints, workers=2, threads_per_worker=1, on_progress=record)
    backend.events, backend.listeners = events, listeners
    yield backend
    backend.close()


def _plan(inputs, out: Path, rows: list[tuple[str, str]]):
    manifest = _write(inputs, f"{out.name}.csv", "image,audio\n" + "".join(f"{i},{a}\n" for i, a in rows))
    base = options_from_args(_batch_args("m", "--out-dir", "o", "--face-detector", "dlib", "--seed", "3"))
    plan = plan_batch(read_manifest(manifest), base, out)
    assert all(isinstance(p, PlannedItem) for p in plan)
    return plan


def _run_all(backend, plan):
    from sadtalker.batch import run_batch

    return sorted(run_batch(backend, plan), key=lambda r: r.index)


def test_the_local_cluster_listens_on_loopback_only(ray_backend):
    import ray

    assert all(node["NodeManagerAddress"] == "127.0.0.1" for node in ray.nodes())
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


@pytest.mark.slow
def test_ray_batch_completes_on_two_workers(ray_backend, inputs, tmp_path):
    plan = _plan(inputs, tmp_path, [("astronaut.png", "hello.wav"), ("mirrored.png", "hello.wav"),
                                    ("astronaut.png", "thanks.wav"), ("mirrored.png", "thanks.wav")])
    results = _run_all(ray_backend, plan)
    assert [r.ok for r in results] == [True] * 4, [r.line() for r in results]
    assert len({r.worker for r in results}) == 2  # both actors took items
    assert all(r.worker.split(":")[1] != str(os.getpid()) for r in results)
    for result, item in zip(results, plan):
        assert result.video == item.output and probe(result.video).frames == FRAMES
    stages = {e.stage for e in ray_backend.events if e.index == 0}
    assert {"queued", "started", "render"} <= stages  # per-item progress reaches the driver


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_item_retried_once(ray_backend, inputs, tmp_path):
    plan = _plan(inputs, tmp_path, [("astronaut.png", "hello.wav"), ("mirrored.png", "hello.wav"),
                                    ("astronaut.png", "thanks.wav"), ("mirrored.png", "thanks.wav")])
    killed: dict[str, object] = {}
    lock = threading.Lock()

    def kill_mid_render(event):
        with lock:
            if event.stage == "render" and event.index == 1 and not killed:
                killed["worker"] = event.worker
                os.kill(int(event.worker.split(":")[1]), signal.SIGKILL)

    ray_backend.listeners.append(kill_mid_render)
    try:
        results = _run_all(ray_backend, plan)
    finally:
        ray_backend.listeners.remove(kill_mid_render)
    assert killed, "the item never reached its render stage"
    assert [r.ok for r in results] == [True] * 4, [r.line() for r in results]
    retried = results[1]
    assert retried.attempts == 2 and retried.worker != killed["worker"]
    assert [r.attempts for r in results if r.index != 1] == [1, 1, 1]
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4")
    assert names == sorted(item.output.name for item in plan)  # all there, none twice
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the killed write left no part behind
    for item in plan:
        assert probe(item.output).frames == FRAMES


@pytest.mark.slow
def test_a_published_item_is_not_done_again(ray_backend, inputs, tmp_path):
    (item,) = _plan(inputs, tmp_path, [("astronaut.png", "hello.wav")])
    first = _run_all(ray_backend, [item])[0]
    stamp = item.output.stat().st_mtime_ns
    again = _run_all(ray_backend, [item])[0]
    assert first.ok and not first.reused and again.ok and again.reused
    assert item.output.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_cancel_reaches_the_running_item_through_ray_cancel(ray_backend, inputs, tmp_path):
    (item,) = _plan(inputs, tmp_path, [("astronaut.png", "hello.wav")])
    started = threading.Event()
    ray_backend.listeners.append(lambda e: started.set() if e.stage not in ("queued", "started") and e.index == 0 else None)
    future = ray_backend.submit(item)
    assert started.wait(300)
    ray_backend.cancel(future)
    result = future.result(timeout=300)
    ray_backend.listeners.pop()
    assert result.code == "cancelled" and not item.output.exists()
