"""The downloader against a real HTTP server on 127.0.0.1 (no other traffic): resume, checks, mirrors, offline."""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sadtalker.checkpoints import download as dl
from sadtalker.checkpoints.download import console_progress, download_file, ensure_files, find_missing
from sadtalker.checkpoints.files import WeightFile
from sadtalker.checkpoints.paths import ModelPaths, default_models_dir
from sadtalker.errors import Cancelled, CorruptCheckpoint, DownloadError, MissingWeights

PAYLOAD = random.Random(1234).randbytes(300 * 1024 + 17)  # > one read chunk, so progress has several steps
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MAX_REQUESTS = 60  # a runaway retry loop hits this and fails fast instead of hanging


# --- the test server -----------------------------------------------------------------------------------------------

@dataclass
class Served:
    path: str
    range: str | None
    user_agent: str | None
    status: int = 0
    sent: int = 0


@dataclass
class FileServer:
    """Switches a test flips to make the server misbehave; `log` records each request and the body bytes sent."""

    files: dict[str, bytes] = field(default_factory=dict)
    status_for: dict[str, int] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # send this many body bytes, then close the connection
    cuts_left: int = 0
    stall_after: int | None = None  # send this many body bytes, then go silent for `stall_seconds`
    stall_seconds: float = 0.0
    ignore_range: bool = False
    wrong_bytes: bool = False  # same length, different content
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    content_type: str = "application/octet-stream"
    log: list[Served] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def bytes_sent(self) -> int:
        return sum(item.sent for item in self.log)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        record = Served(handler.path, handler.headers.get("Range"), handler.headers.get("User-Agent"))
        self.log.append(record)
        if len(self.log) > MAX_REQUESTS:
            return self._status(handler, record, 503)
        if handler.path in self.redirects:
            record.status = 302
            handler.send_response(302)
            handler.send_header("Location", self.url(self.redirects[handler.path]))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if handler.path in self.status_for:
            return self._status(handler, record, self.status_for[handler.path])
        data = self.files.get(handler.path)
        if data is None:
            return self._status(handler, record, 404)
        if self.wrong_bytes:
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        if record.range and not self.ignore_range:
            start = int(record.range.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                record.status = 416
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        body = data[start:]
        record.status = 206 if start else 200
        handler.send_response(record.status)
        handler.send_header("Content-Type", self.content_type)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if self.omit_length:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        else:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if self.cuts_left > 0 and self.cut_after is not None:
            self.cuts_left -= 1
            body = body[: self.cut_after]
            handler.close_connection = True
        elif self.stall_after is not None and self.stall_seconds > 0:
            handler.wfile.write(body[: self.stall_after])
            record.sent += min(len(body), self.stall_after)
            handler.wfile.flush()
            self.stall_seconds, pause = 0.0, self.stall_seconds  # only the first request stalls
            time.sleep(pause)
            handler.close_connection = True
            return
        handler.wfile.write(body)
        record.sent += len(body)

    @staticmethod
    def _status(handler: BaseHTTPRequestHandler, record: Served, code: int) -> None:
        record.status = code
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # a stuck client cannot hold a server thread for long

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.owner.handle(self)  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # broken pipes after a deliberate cut are expected


@pytest.fixture
def server():
    owner = FileServer(files={"/file.bin": PAYLOAD})
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.owner = owner  # type: ignore[attr-defined]
    owner.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield owner
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy from the environment must not see (or break) the 127.0.0.1 traffic."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def closed_port_url(path: str = "/file.bin") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused, like being offline."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def weight(server: FileServer | None = None, *, name: str = "model.safetensors", paths=("/file.bin",),
           urls: tuple[str, ...] | None = None, size: int | None = None, sha256: str | None = None,
           group: str = "sadtalker") -> WeightFile:
    if urls is None:
        assert server is not None
        urls = tuple(server.url(p) for p in paths)
    return WeightFile(name, urls, components=(), purpose="test weights", size=size, sha256=sha256, group=group)


def part_of(folder: Path, wf: WeightFile) -> Path:
    return folder / (wf.name + ".part")


# --- downloads -----------------------------------------------------------------------------------------------------

def test_full_download_checks_size_and_hash_and_reports_progress(server, tmp_path):
    wf = weight(server, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    calls = []
    path = download_file(wf, tmp_path / "models", on_progress=lambda *args: calls.append(args), timeout=5)
    assert path == tmp_path / "models" / wf.name
    assert path.read_bytes() == PAYLOAD
    assert not part_of(path.parent, wf).exists()
    assert calls[0] == (wf.name, 0, len(PAYLOAD)) and calls[-1] == (wf.name, len(PAYLOAD), len(PAYLOAD))
    assert len(calls) >= 3 and [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert [(r.status, r.range) for r in server.log] == [(200, None)]
    assert server.log[0].user_agent.startswith("sd-webui-sadtalker/")


def test_cut_connection_is_resumed_with_range_in_the_same_call(server, tmp_path):
    server.cut_after, server.cuts_left = 100_000, 1
    wf = weight(server, size=len(PAYLOAD))
    path = download_file(wf, tmp_path, timeout=5)
    assert path.read_bytes() == PAYLOAD
    assert [(r.status, r.range) for r in server.log] == [(200, None), (206, "bytes=100000-")]
    assert server.bytes_sent == len(PAYLOAD)  # nothing was fetched twice


def test_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    wf = weight(server)
    part_of(tmp_path, wf).write_bytes(PAYLOAD[:123_457])
    path = download_file(wf, tmp_path, timeout=5)
    assert path.read_bytes() == PAYLOAD
    assert [(r.status, r.range) for r in server.log] == [(206, "bytes=123457-")]
    assert server.bytes_sent == len(PAYLOAD) - 123_457


def test_a_link_that_keeps_failing_keeps_the_part_and_the_next_call_finishes(server, tmp_path):
    server.cut_after, server.cuts_left = 50_000, 1000
    wf = weight(server)
    with pytest.raises(DownloadError) as failed:
        download_file(wf, tmp_path, timeout=5)
    attempts = 1 + dl._MAX_RESUMES_PER_URL
    assert len(server.log) == attempts
    kept = part_of(tmp_path, wf)
    assert kept.read_bytes() == PAYLOAD[: 50_000 * attempts]
    assert not (tmp_path / wf.name).exists()
    assert kept.name in str(failed.value) and wf.urls[0] in str(failed.value)

    server.cuts_left = 0
    server.log.clear()
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [r.range for r in server.log] == [f"bytes={50_000 * attempts}-"]


def test_server_that_ignores_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    wf = weight(server)
    part_of(tmp_path, wf).write_bytes(b"\0" * 5000)  # would corrupt the file if appended to
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [(r.status, r.range) for r in server.log] == [(200, "bytes=5000-")]


def test_416_on_a_complete_part_finishes_without_downloading(server, tmp_path):
    wf = weight(server)  # size unknown: only the server's 416 tells the part is whole
    part_of(tmp_path, wf).write_bytes(PAYLOAD)
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [r.status for r in server.log] == [416] and server.bytes_sent == 0


def test_416_on_a_part_longer_than_the_file_starts_over(server, tmp_path):
    wf = weight(server)
    part_of(tmp_path, wf).write_bytes(PAYLOAD + b"junk")
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [(r.status, r.range) for r in server.log] == [(416, f"bytes={len(PAYLOAD) + 4}-"), (200, None)]


@pytest.mark.parametrize("omit_length", [False, True], ids=["content-length", "no-content-length"])
def test_size_mismatch_is_an_error_and_leaves_no_file(server, tmp_path, omit_length):
    server.omit_length = omit_length
    wf = weight(server, size=len(PAYLOAD) + 1)
    with pytest.raises(DownloadError, match="size mismatch") as failed:
        download_file(wf, tmp_path, timeout=5)
    assert str(len(PAYLOAD) + 1) in str(failed.value) and str(len(PAYLOAD)) in str(failed.value)
    assert list(tmp_path.iterdir()) == []


def test_without_content_length_the_body_is_read_to_the_end(server, tmp_path):
    server.omit_length = True
    calls = []
    wf = weight(server, sha256=PAYLOAD_SHA)
    assert download_file(wf, tmp_path, on_progress=lambda *a: calls.append(a), timeout=5).read_bytes() == PAYLOAD
    assert calls[-1] == (wf.name, len(PAYLOAD), None)


def test_sha256_mismatch_is_an_error_and_deletes_the_part(server, tmp_path):
    server.wrong_bytes = True
    wf = weight(server, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    with pytest.raises(DownloadError, match="sha256 mismatch") as failed:
        download_file(wf, tmp_path, timeout=5)
    assert PAYLOAD_SHA in str(failed.value) and "deleted" in str(failed.value)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_resumed_part_is_dropped_and_fetched_again(server, tmp_path):
    wf = weight(server, sha256=PAYLOAD_SHA)
    part_of(tmp_path, wf).write_bytes(b"\xff" * 1000)  # wrong prefix from some other file
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [(r.status, r.range) for r in server.log] == [(206, "bytes=1000-"), (200, None)]


def test_404_on_the_official_url_falls_back_to_the_mirror(server, tmp_path):
    wf = weight(server, paths=("/official/missing.bin", "/file.bin"))
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [(r.path, r.status) for r in server.log] == [("/official/missing.bin", 404), ("/file.bin", 200)]


def test_404_everywhere_names_each_url(server, tmp_path):
    wf = weight(server, paths=("/a.bin", "/b.bin"))
    with pytest.raises(DownloadError) as failed:
        download_file(wf, tmp_path, timeout=5)
    message = str(failed.value)
    assert f"{server.url('/a.bin')}: HTTP 404" in message and f"{server.url('/b.bin')}: HTTP 404" in message
    assert not (tmp_path / wf.name).exists()


def test_urls_argument_overrides_the_registry(server, tmp_path):
    wf = weight(urls=(closed_port_url(),))
    assert download_file(wf, tmp_path, timeout=5, urls=[server.url("/file.bin")]).read_bytes() == PAYLOAD


def test_redirect_is_followed_and_keeps_the_range(server, tmp_path):
    server.redirects["/release/file.bin"] = "/cdn/file.bin"
    server.files["/cdn/file.bin"] = PAYLOAD
    wf = weight(server, paths=("/release/file.bin",))
    part_of(tmp_path, wf).write_bytes(PAYLOAD[:777])
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD
    assert [(r.path, r.status, r.range) for r in server.log] == [
        ("/release/file.bin", 302, "bytes=777-"), ("/cdn/file.bin", 206, "bytes=777-")]


def test_a_stalled_connection_times_out_and_resumes(server, tmp_path):
    server.stall_after, server.stall_seconds = 100_000, 1.5
    wf = weight(server)
    assert download_file(wf, tmp_path, timeout=0.3).read_bytes() == PAYLOAD
    assert [r.range for r in server.log] == [None, "bytes=100000-"]


def test_a_web_page_instead_of_the_file_is_rejected(server, tmp_path):
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="web page"):
        download_file(weight(server), tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_offline_raises_missing_weights_with_file_urls_and_folder(tmp_path):
    wf = weight(urls=(closed_port_url(), closed_port_url("/mirror.bin")))
    folder = tmp_path / "models" / "SadTalker"
    with pytest.raises(MissingWeights) as missing:
        download_file(wf, folder, timeout=5)
    message = str(missing.value)
    assert wf.name in message and str(folder) in message
    assert all(url in message for url in wf.urls)
    assert not (folder / wf.name).exists() and not part_of(folder, wf).exists()


def test_one_url_unreachable_and_one_404_is_a_download_error_not_offline(server, tmp_path):
    wf = weight(urls=(closed_port_url(), server.url("/gone.bin")))
    with pytest.raises(DownloadError) as failed:
        download_file(wf, tmp_path, timeout=5)
    assert not isinstance(failed.value, MissingWeights) and "HTTP 404" in str(failed.value)


def test_an_existing_final_file_is_never_touched(server, tmp_path):
    wf = weight(server, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    final = tmp_path / wf.name
    final.write_bytes(b"the user's own file")
    os.utime(final, (1_000_000, 1_000_000))
    verified = []
    assert download_file(wf, tmp_path, verify=verified.append, timeout=5) == final
    assert final.read_bytes() == b"the user's own file" and final.stat().st_mtime == 1_000_000
    assert server.log == [] and verified == [] and not part_of(tmp_path, wf).exists()


def test_verify_sees_the_complete_part_before_it_gets_the_final_name(server, tmp_path):
    wf = weight(server)
    seen = []

    def verify(path: Path) -> None:
        seen.append((path, path.read_bytes() == PAYLOAD, (tmp_path / wf.name).exists()))

    download_file(wf, tmp_path, verify=verify, timeout=5)
    assert seen == [(part_of(tmp_path, wf), True, False)]


def test_verify_failure_is_a_download_error_and_removes_the_part(server, tmp_path):
    def verify(path: Path) -> None:
        raise ValueError("missing key generator.first.conv.weight")

    wf = weight(server)
    with pytest.raises(DownloadError, match="generator.first.conv.weight"):
        download_file(wf, tmp_path, verify=verify, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_cancel_from_progress_keeps_the_part_for_later(server, tmp_path):
    def cancel_after_first_bytes(name: str, done: int, total: int | None) -> None:
        if done > 0:
            raise Cancelled("cancelled by the user")

    wf = weight(server)
    with pytest.raises(Cancelled):
        download_file(wf, tmp_path, on_progress=cancel_after_first_bytes, timeout=5)
    assert part_of(tmp_path, wf).stat().st_size > 0 and not (tmp_path / wf.name).exists()
    assert download_file(wf, tmp_path, timeout=5).read_bytes() == PAYLOAD


@dataclass
class _Usage:
    free: int
    total: int = 0
    used: int = 0


def test_not_enough_disk_space_is_reported_before_downloading(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: _Usage(free=10))
    with pytest.raises(DownloadError, match="disk space"):
        download_file(weight(server), tmp_path, timeout=5)
    assert not (tmp_path / "model.safetensors").exists()


# --- ensure_files --------------------------------------------------------------------------------------------------

def test_ensure_files_without_download_lists_every_missing_file(server, tmp_path):
    present = weight(server, name="present.pth")
    (tmp_path / present.name).write_bytes(b"x")
    first, second = weight(server, name="first.safetensors"), weight(server, name="second.pth.tar")
    with pytest.raises(MissingWeights) as missing:
        ensure_files([present, first, second], tmp_path, allow_download=False)
    message = str(missing.value)
    assert first.name in message and second.name in message and present.name not in message
    assert str(tmp_path) in message and "2 model files are missing" in message
    assert server.log == []


def test_ensure_files_downloads_only_the_missing_ones(server, tmp_path):
    server.files["/other.bin"] = PAYLOAD[:1000]
    present = weight(server, name="present.pth", paths=("/nope",))
    (tmp_path / present.name).write_bytes(b"x")
    first = weight(server, name="first.safetensors")
    second = weight(server, name="second.pth.tar", paths=("/other.bin",))
    checked = []
    paths = ensure_files([present, first, second], tmp_path, allow_download=True, timeout=5,
                         verify=lambda wf, part: checked.append((wf.name, part.name)))
    assert paths == [tmp_path / present.name, tmp_path / first.name, tmp_path / second.name]
    assert paths[0].read_bytes() == b"x" and paths[1].read_bytes() == PAYLOAD
    assert paths[2].read_bytes() == PAYLOAD[:1000]
    assert checked == [(first.name, first.name + ".part"), (second.name, second.name + ".part")]
    assert [r.path for r in server.log] == ["/file.bin", "/other.bin"]


def test_ensure_files_offline_lists_all_missing_files_once(tmp_path):
    files = [weight(name="a.safetensors", urls=(closed_port_url(),)),
             weight(name="b.pth", urls=(closed_port_url(), closed_port_url("/m")))]
    with pytest.raises(MissingWeights) as missing:
        ensure_files(files, tmp_path, allow_download=True, timeout=5)
    message = str(missing.value)
    assert all(wf.name in message for wf in files)
    assert all(url in message for wf in files for url in wf.urls)
    assert "no network" in message


def test_ensure_files_with_model_paths_uses_each_group_folder(server, tmp_path):
    paths = ModelPaths(tmp_path / "models")
    main = weight(server, name="main.safetensors")
    detector = weight(server, name="detection_Resnet50_Final.pth", group="facexlib")
    result = ensure_files([main, detector], paths, allow_download=True, timeout=5)
    assert result == [tmp_path / "models" / main.name, tmp_path / "models" / "facexlib" / detector.name]
    assert all(p.read_bytes() == PAYLOAD for p in result)
    assert find_missing([main, detector], paths) == []


# --- paths ---------------------------------------------------------------------------------------------------------

def test_default_models_dir_prefers_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SADTALKER_MODELS", f'"{tmp_path / "my models"}"')
    assert default_models_dir() == tmp_path / "my models"


@pytest.mark.skipif(os.name == "nt", reason="POSIX cache layout")
def test_default_models_dir_uses_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SADTALKER_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_models_dir() == tmp_path / "cache" / "sadtalker"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / ".cache" / "sadtalker"


def test_model_paths_is_pure_path_arithmetic(tmp_path):
    root = tmp_path / "does" / "not" / "exist"
    paths = ModelPaths(str(root))
    assert not root.exists() and paths.root == root
    assert paths.file(weight(urls=(), name="a.safetensors")) == root / "a.safetensors"
    assert paths.file(weight(urls=(), name="d.pth", group="facexlib")) == root / "facexlib" / "d.pth"
    assert paths.file(weight(urls=(), name="f.pth", group="face_alignment")) == root / "face_alignment" / "f.pth"
    assert paths.file(weight(urls=(), name="g.pth", group="enhancer")) == root / "enhancers" / "g.pth"
    assert (paths.facexlib, paths.face_alignment, paths.enhancers) == (
        root / "facexlib", root / "face_alignment", root / "enhancers")
    with pytest.raises(ValueError, match="no folder"):
        paths.file(weight(urls=(), group="mystery"))
    assert not root.exists()


# --- console bar ---------------------------------------------------------------------------------------------------

def test_console_progress_writes_only_to_its_stream(capsys):
    stream = io.StringIO()
    bar = console_progress(stream)
    for done in (0, 2**20, 2 * 2**20):
        bar("model.safetensors", done, 2 * 2**20)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("model.safetensors") and "0%" in lines[0]
    assert "100%" in lines[-1] and "2.0/2.0 MiB" in lines[-1]
    assert capsys.readouterr() == ("", "")


def _reject_unless_payload(wf, path):
    if path.read_bytes() != PAYLOAD:
        raise CorruptCheckpoint(f"{wf.name}: not the file")


def test_download_replaces_a_corrupt_present_file_only_once_the_new_one_is_verified(server, tmp_path):
    present = weight(server, name="model.safetensors")
    (tmp_path / present.name).write_bytes(b"8 bytes!")
    seen_during_download = []

    def verify(wf, path):
        seen_during_download.append((tmp_path / wf.name).read_bytes())
        _reject_unless_payload(wf, path)

    (path,) = ensure_files([present], tmp_path, allow_download=True, timeout=5, verify=verify, verify_present=True)
    assert path.read_bytes() == PAYLOAD
    # while the new copy was checked the bad one still had its name: [check of the present file, of the .part]
    assert seen_during_download == [b"8 bytes!", b"8 bytes!"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [present.name]


def test_a_failed_redownload_leaves_the_corrupt_file_as_it_was(server, tmp_path):
    present = weight(server, name="model.safetensors")
    (tmp_path / present.name).write_bytes(b"8 bytes!")
    server.wrong_bytes = True
    with pytest.raises(DownloadError):
        ensure_files([present], tmp_path, allow_download=True, timeout=5, verify=_reject_unless_payload,
                     verify_present=True)
    assert (tmp_path / present.name).read_bytes() == b"8 bytes!"
    with pytest.raises(MissingWeights, match=r"(?s)model.safetensors.*Present but corrupt"):
        ensure_files([present], tmp_path, allow_download=False, verify=_reject_unless_payload, verify_present=True)
