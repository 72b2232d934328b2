"""Runs the table of tests/bad_inputs.py through each front end and checks the same promises for every case.

Runners: "cli" (`python -m sadtalker ...` in a subprocess), "host" (`Host.generate`, the call the UI and the
API both make; one Host for the whole table, so a failure that poisons it shows in later cases and in
test_host_still_serves_after_the_table) and "api" (POST /generate to a real `python -m sadtalker serve` on
127.0.0.1: one server for the kit's models folder for the whole table, checked by
test_api_server_still_serves_after_the_table; a case with its own models folder gets a server of its own).
To add the UI: write `run_ui(kit, job, out, limit) -> Outcome` here, put it in RUNNERS, and add its name to the
`runners` of the cases it applies to.

The API's caller names no output folder (videos go to the server's outputs/<date>/), so for "api" the promises
about the output folder (no partial file, earlier files unchanged) are checked on the server's outputs folder.

Fast cases run by default; the whole table (success cases that render, too):
    PYTHONPATH=$PWD python -m pytest tests/test_bad_input.py -m "slow or not slow" -x
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile

from api_server import Server, b64
from bad_inputs import BASE_OPTIONS, CASES, SUCCESS, Case, Job, Kit

ROOT = Path(__file__).resolve().parents[1]
EARLIER = {"earlier.mp4": b"an earlier video", "earlier.json": b'{"earlier": true}\n'}
DISK_BYTES = 16 * 1024  # the "full disk": smaller than 3 rendered frames


@dataclass
class Outcome:
    code: str | None  # the named error's code; None: it succeeded; "UNNAMED ..." for anything else
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    video: Path | None = None
    traceback: bool = False
    exit_status: int | None = None  # the command line's exit status; the API's HTTP status
    expected_status: int | None = None
    detail: str = ""  # everything said, for the failure report


# -- the shared inputs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assets(tmp_path_factory, fake_checkpoints):
    from PIL import Image
    from skimage import data

    from sadtalker import audio as audio_stage

    folder = tmp_path_factory.mktemp("assets")
    portrait = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(portrait)
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), "Hello there, talking head."],
                   check=True, capture_output=True)
    wav = audio_stage.load_audio(raw)
    clips = {}
    for name, frames in (("speech", 3), ("long_speech", 25)):
        window = frames * audio_stage.SAMPLES_PER_FRAME
        energy = np.convolve(wav**2, np.ones(window), mode="valid")
        start = int(np.argmax(energy))
        clips[name] = folder / f"{name}.wav"
        soundfile.write(clips[name], wav[start:start + window], 16000, subtype="PCM_16")
    return {"portrait": portrait, "checkpoints": fake_checkpoints, **clips}


_HOSTS: dict[tuple[str, bool], object] = {}


def host_for(models: Path, allow_download: bool):
    """One Host per models folder for the whole module: the good-fakes Host serves every case that uses them."""
    from sadtalker.host import Host

    key = (str(models), allow_download)
    if key not in _HOSTS:
        _HOSTS[key] = Host(models_dir=models, outputs_dir=models.parent / "host-outputs",
                           allow_download=allow_download)
    return _HOSTS[key]


# -- folders the cases need: read-only, a file in the way, a full disk ----------------------------------------

def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` can no longer be written: chmod for a normal user; root ignores modes, so a read-only bind mount."""
    mounted = False
    folder.chmod(0o555)
    if _can_write(folder):
        done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
        if done.returncode == 0:
            mounted = True
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
    try:
        if _can_write(folder):
            pytest.skip("cannot make a read-only folder here (root without mount)")
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)


@contextlib.contextmanager
def small_disk(folder: Path):
    """A DISK_BYTES tmpfs at `folder` (root), or None when it cannot be mounted (then a file-size limit is used)."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder)],
                          capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def file_size_limit(limit: int | None):
    """RLIMIT_FSIZE for this process (and the ffmpeg it starts); SIGXFSZ ignored so writes fail with EFBIG."""
    if limit is None:
        yield
        return
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@contextlib.contextmanager
def prepared(job: Job, kit: Kit):
    """The output folder (with the earlier files in it) and the models folder in the state the job asks for.
    Yields (output folder, file-size limit or None)."""
    out = kit.path("out")
    with contextlib.ExitStack() as stack:
        limit = None
        if job.output_dir_state == "is-a-file":
            out.write_bytes(b"a file where the output folder should be")
        else:
            out.mkdir()
            if job.output_dir_state == "full" and not stack.enter_context(small_disk(out)):
                limit = DISK_BYTES
            for name, data in EARLIER.items():
                (out / name).write_bytes(data)
            for name in job.earlier_names:
                (out / name).write_bytes(b"an earlier video of that name")
            if job.output_dir_state == "read-only":
                stack.enter_context(read_only(out))
        if job.models_read_only:
            stack.enter_context(read_only(job.checkpoints))
        yield out, limit


# -- runners ----------------------------------------------------------------------------------------------------

def _option_args(options: dict) -> list[str]:
    from sadtalker.options import option_spec

    args = []
    for name, value in options.items():
        spec = option_spec(name)
        if spec.kind == "bool":
            if value != spec.default:
                args.append(spec.flag)
        elif isinstance(value, (tuple, list)):
            args += [spec.flag, *map(str, value)]
        else:
            args += [spec.flag, str(value)]
    return args


def _exit_status_of(code: str) -> int | None:
    from sadtalker import errors

    found = {}
    stack = [errors.SadTalkerError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls.exit_status)
        stack += cls.__subclasses__()
    return found.get(code)


def run_cli(kit: Kit, job: Job, out: Path, limit: int | None) -> Outcome:
    models = job.checkpoints or kit.checkpoints
    if job.command == "download":
        args = ["download", "--checkpoints", str(models), *job.args]
    else:
        args = ["generate", "--image", str(job.image or kit.portrait), "--audio", str(job.audio or kit.speech),
                "--checkpoints", str(models), "--out", str(out / job.out_name),
                *_option_args({**BASE_OPTIONS, **job.options}), *job.args]
        if not job.allow_download:
            args.append("--no-download")
        if job.overwrite:
            args.append("--overwrite")

    def limited():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-m", "sadtalker", *args], capture_output=True, timeout=600,
                          cwd=kit.folder, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limited)
    # bytes, not text=True: universal newlines would turn the progress line's "\r" into line breaks
    stderr, stdout = done.stderr.decode("utf-8", "replace"), done.stdout.decode("utf-8", "replace")
    detail = f"exit {done.returncode}\nstdout: {stdout}\nstderr: {stderr!r}"
    outcome = Outcome(None, exit_status=done.returncode, traceback="Traceback" in stderr, detail=detail,
                      warnings=re.findall(r"^warning: (.*)$", stderr, re.MULTILINE))
    # nothing but our own lines: progress, warnings, the error (no library warning, no ffmpeg log)
    assert "Warning:" not in stderr and " @ 0x" not in stderr, detail
    error = re.search(r"^error \[(\w+)\]: ", stderr, re.MULTILINE)
    if error:
        outcome.code = error.group(1)
        outcome.message = stderr[error.end():].rstrip("\n")
        outcome.expected_status = _exit_status_of(outcome.code)
    elif done.returncode != 0:
        outcome.code = f"UNNAMED (exit {done.returncode})"
    else:
        outcome.video = Path(stdout.strip().splitlines()[-1])
        outcome.expected_status = 0
        # every progress stage ends at n/n
        for line in stderr.split("\n"):
            shown = line.split("\r")[-1].strip()
            stage = re.fullmatch(r"(\w+)\s+(\d+)/(\d+)", shown)
            if stage:
                assert stage.group(2) == stage.group(3), f"progress stopped at {shown!r}: {stderr!r}"
    return outcome


def run_host(kit: Kit, job: Job, out: Path, limit: int | None) -> Outcome:
    from sadtalker.errors import SadTalkerError
    from sadtalker.options import GenerateOptions

    host = host_for(job.checkpoints or kit.checkpoints, job.allow_download)
    try:
        with file_size_limit(limit):
            # as the UI and the API do: options arrive as a dict of field names to values
            options = GenerateOptions.from_dict({**BASE_OPTIONS, **job.options})
            result = host.generate(job.image or kit.portrait, job.audio or kit.speech, options, output_dir=out)
    except SadTalkerError as exc:
        return Outcome(exc.code, message=exc.message, detail=f"{type(exc).__name__}: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - an unnamed error is what this test exists to catch
        import traceback

        return Outcome(f"UNNAMED {type(exc).__name__}", message=str(exc), traceback=True,
                       detail=traceback.format_exc())
    return Outcome(None, warnings=list(result.warnings), video=result.video, detail=str(result))


_API_SERVERS: dict[tuple[str, bool], Server] = {}
_API_ROOT: list[Path] = []  # the session's temporary root: the servers live there, and it is their allowed folder


@pytest.fixture(scope="module", autouse=True)
def _api_servers(tmp_path_factory):
    _API_ROOT[:] = [tmp_path_factory.getbasetemp().resolve()]
    yield
    for server in _API_SERVERS.values():
        server.stop()
    _API_SERVERS.clear()


def api_server_for(models: Path, allow_download: bool) -> Server:
    """The server of a models folder, started on first use: one for the kit's good fakes serves the whole
    table; a case's own models folder gets its own (stopped after the case, see run_api). Its day folder holds
    the earlier files, as a case's output folder does."""
    import datetime
    import tempfile

    key = (str(models), allow_download)
    if key not in _API_SERVERS:
        root = _API_ROOT[0]
        folder = Path(tempfile.mkdtemp(prefix="api-server-", dir=root))
        server = Server(folder, models, root, auth=False, download=allow_download, max_body_mb=64,
                        data=folder / "jobs").start()
        day = server.outputs / datetime.date.today().isoformat()
        day.mkdir(parents=True, exist_ok=True)
        for name, data in EARLIER.items():
            (day / name).write_bytes(data)
        _API_SERVERS[key] = server
    return _API_SERVERS[key]


def _api_outputs(kit: Kit, job: Job) -> Path:
    return api_server_for(job.checkpoints or kit.checkpoints, job.allow_download).outputs.resolve()


def _http_status_of(code: str) -> int | None:
    """What the API must answer a named error with: 422 for what the request can fix, 503 for the server's setup."""
    from sadtalker import errors

    client = {cls.code for cls in _subclasses(errors.InvalidInput)}
    setup = {cls.code for base in (errors.MissingWeights, errors.CorruptCheckpoint, errors.MissingDependency)
             for cls in _subclasses(base)}
    return 422 if code in client else 503 if code in setup else None


def _subclasses(cls: type) -> list[type]:
    found, stack = [], [cls]
    while stack:
        found.append(stack.pop())
        stack += found[-1].__subclasses__()
    return found


def run_api(kit: Kit, job: Job, out: Path, limit: int | None) -> Outcome:
    """POST /generate with the image and audio as base64 (what a client sends) and the options as JSON; a
    reference video is a server-side path (the server allows the session's temporary folder)."""
    models = job.checkpoints or kit.checkpoints
    server = api_server_for(models, job.allow_download)
    image, audio = job.image or kit.portrait, job.audio or kit.speech
    body = {"image": b64(image.read_bytes()), "audio": b64(audio.read_bytes()),
            "options": {**BASE_OPTIONS, **job.options}, "send_video": False}
    log_file = Path(server.log.name)
    said_before = log_file.stat().st_size
    try:
        with server.client(auth=None) as client:
            response = client.post("/generate", json=body)
            serving = client.get("/version").status_code
        server.log.flush()
        with open(log_file, "rb") as log_text:  # what the server said during this case only
            log = log_text.read()[said_before:].decode("utf-8", "replace")
    finally:
        if models != kit.checkpoints:
            server.stop()
            del _API_SERVERS[(str(models), job.allow_download)]
    detail = f"HTTP {response.status_code}: {response.text[:3000]}\nserver log: {log}"
    assert serving == 200, f"the server stopped serving\n{detail}"
    traceback = "Traceback" in response.text or "Traceback" in log
    if response.status_code == 200:
        answer = response.json()
        return Outcome(None, warnings=answer["warnings"], video=Path(answer["path"]), traceback=traceback,
                       exit_status=200, expected_status=200, detail=detail)
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return Outcome(f"UNNAMED (HTTP {response.status_code})", traceback=traceback, detail=detail)
    return Outcome(error["code"], message=error["message"], traceback=traceback, exit_status=response.status_code,
                   expected_status=_http_status_of(error["code"]), detail=detail)


RUNNERS = {"cli": run_cli, "host": run_host, "api": run_api}
OUTPUTS = {"api": _api_outputs}  # runner -> where its videos go, when that is not the case's output folder


# -- the table --------------------------------------------------------------------------------------------------

def _params():
    for case in CASES:
        for runner in case.runners:
            fast = not case.slow and (runner != "cli" or case.cli_in_default or case.runners == ("cli",))
            # through the API, a case that renders is slow (each server render is seconds of CPU); errors are cheap
            fast = fast and (runner != "api" or case.expectation(runner).code is not SUCCESS)
            marks = [] if fast else [pytest.mark.slow]
            yield pytest.param(case, runner, id=f"{case.row.replace(' ', '-')}:{case.id}:{runner}", marks=marks)


OBSERVED: list[tuple[str, str, str, str]] = []  # (case, runner, expected, observed) for the report


def _files_under(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("case", "runner"), list(_params()))
def test_case(case: Case, runner: str, assets, tmp_path):
    kit = Kit(tmp_path, assets["portrait"], assets["speech"], assets["checkpoints"], assets["long_speech"])
    job = case.make(kit)
    expect = case.expectation(runner)
    models = job.checkpoints or kit.checkpoints
    models_before = {p.name: p.stat().st_size for p in models.rglob("*") if p.is_file()}
    with prepared(job, kit) as (out, limit):
        watched = OUTPUTS[runner](kit, job) if runner in OUTPUTS else out
        earlier = _files_under(watched)
        started = time.monotonic()
        outcome = RUNNERS[runner](kit, job, out, limit)
        seconds = time.monotonic() - started
        after = _files_under(watched)
    shown = outcome.code or "ok"
    said = outcome.message.splitlines()[0] if outcome.message else "; ".join(outcome.warnings)
    OBSERVED.append((f"{case.row}: {case.id}", runner, expect.code or "ok", f"{shown} ({seconds:.0f} s): {said}"))
    _write_observed()

    report = f"{case.id} via {runner}: {outcome.detail}"
    assert not outcome.traceback, report
    assert outcome.code == expect.code, report
    if outcome.expected_status is not None:
        assert outcome.exit_status == outcome.expected_status, report
    if expect.code is SUCCESS:
        assert outcome.video is not None and outcome.video.is_file(), report
        # the command line and the host write where they are told; the API into the server's outputs/<date>/
        assert outcome.video.parent == (out if watched == out else watched / outcome.video.parent.name), report
        video = outcome.video.relative_to(watched)
        assert str(video) not in earlier, report
        for piece in expect.pieces:
            assert any(piece in warning for warning in outcome.warnings), report
        new = {str(video), str(video.with_suffix(".json"))}
    else:
        assert all(piece in outcome.message for piece in expect.pieces), report
        assert expect.multiline or len(outcome.message.strip().splitlines()) == 1, report
        new = set()
    # no partial output, no earlier output changed (hidden .part files included: rglob sees dot-files)
    assert set(after) == set(earlier) | new, report
    assert all(after[name] == data for name, data in earlier.items()), report
    assert not [p for folder in {tmp_path, watched} for p in folder.rglob("*") if ".part" in p.name], report
    if job.command == "generate":  # generate never writes into the models folder unless it downloads
        assert {p.name: p.stat().st_size for p in models.rglob("*") if p.is_file()} == models_before, report
    if job.after is not None:
        job.after(tmp_path)


def test_host_still_serves_after_the_table(assets, tmp_path):
    """The Host every case above ran through (errors and all) still makes a good video."""
    from sadtalker.options import GenerateOptions

    host = host_for(assets["checkpoints"], False)
    result = host.generate(assets["portrait"], assets["speech"], GenerateOptions.from_dict(BASE_OPTIONS),
                           output_dir=tmp_path)
    assert result.video.is_file() and result.num_frames == 3


def test_api_server_still_serves_after_the_table(assets):
    """The server every "api" case above went to (errors and all) still makes a good video."""
    server = api_server_for(assets["checkpoints"], False)
    assert server.process.poll() is None, server.read_log()
    body = {"image": b64(assets["portrait"].read_bytes()), "audio": b64(assets["speech"].read_bytes()),
            "options": BASE_OPTIONS, "send_video": False}
    with server.client(auth=None) as client:
        response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["frames"] == 3 and Path(answer["path"]).is_file()


def _write_observed() -> None:
    """With SADTALKER_TABLE_REPORT=FILE, what each case gave so far is written there as a Markdown table (for
    the issue note; rewritten after every case, so a stopped run keeps what it saw)."""
    target = os.environ.get("SADTALKER_TABLE_REPORT")
    if target and OBSERVED:
        rows = ["| case | runner | expected | observed |", "|---|---|---|---|"]
        rows += [f"| {case} | {runner} | {expected} | {observed.replace('|', '/')} |"
                 for case, runner, expected, observed in OBSERVED]
        Path(target).write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGHUP"])
def test_stop_signal_mid_render_cleans_up_like_ctrl_c(signum, assets, tmp_path):
    """What `timeout`, systemd and a WebUI stop send: the run ends with a named line, no hidden .part file."""
    out = tmp_path / "out"
    out.mkdir()
    for name, data in EARLIER.items():
        (out / name).write_bytes(data)
    args = [sys.executable, "-m", "sadtalker", "generate", "--image", str(assets["portrait"]), "--audio",
            str(assets["long_speech"]), "--checkpoints", str(assets["checkpoints"]), "--no-download",
            "--out", str(out / "result.mp4"), "--batch-size", "1", *_option_args(BASE_OPTIONS)]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = b""
    try:
        while b"render  2/" not in seen:  # two frames are through the encoder: its .part files exist
            chunk = process.stderr.read1(4096)
            assert chunk, f"generate ended before rendering: {seen!r}"
            seen += chunk
        assert [p for p in out.iterdir() if ".part" in p.name], "no temporary file to clean up yet"
        process.send_signal(signum)
        stdout, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = (seen + rest).decode()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, stderr
    assert f"\nerror [terminated]: stopped by {name}; the run was cleaned up\n" in stderr
    assert "Traceback" not in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == EARLIER  # no .part left, earlier files as they were
