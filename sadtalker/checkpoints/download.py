"""Fetch weight files: stream into `<name>.part`, resume with HTTP Range, check, then rename atomically.

Standard library only (urllib), so `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` work as urllib reads them. The core
never prints: progress goes to an `on_progress(name, bytes_done, bytes_total | None)` callback, and the console bar
below is a callback the command line passes in.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..errors import Cancelled, DownloadError, MissingWeights
from .files import WeightFile
from .paths import ModelPaths

log = logging.getLogger("sadtalker")

ProgressCallback = Callable[[str, int, int | None], None]
"""on_progress(file name, bytes on disk so far, total bytes or None when the server does not say)."""

PART_SUFFIX = ".part"
USER_AGENT = f"sd-webui-sadtalker/{__version__} Python-urllib/{sys.version_info.major}.{sys.version_info.minor}"
_CHUNK_BYTES = 256 * 1024
_MAX_RESUMES_PER_URL = 5  # a flaky link gets this many Range retries, each only after some bytes arrived


# --- what one attempt at one URL can end in ------------------------------------------------------------------------

class _AttemptFailed(Exception):
    """This URL did not give us the file; the reason is the message."""


class _Unreachable(_AttemptFailed):
    """No HTTP answer at all: DNS failure, connection refused, connect timeout. All URLs like this = offline."""


class _Cut(_AttemptFailed):
    """The body stopped early; the .part file keeps what arrived, so a retry can resume."""

    def __init__(self, message: str, *, progressed: bool):
        super().__init__(message)
        self.progressed = progressed


class _Mismatch(_AttemptFailed):
    """The bytes are not the file (wrong size or hash, a range that does not fit); the .part file must go."""


class _Offline(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- public API ----------------------------------------------------------------------------------------------------

def download_file(
    wf: WeightFile,
    folder: Path | str,
    *,
    on_progress: ProgressCallback | None = None,
    verify: Callable[[Path], None] | None = None,
    timeout: float = 30,
    urls: Sequence[str] | None = None,
) -> Path:
    """Download `wf` into `folder` and return `folder / wf.name`.

    An existing `folder / wf.name` is returned untouched, without any network access (delete it to fetch again).
    Bytes go to `folder / (wf.name + ".part")`; a .part left by an earlier cut is resumed with an HTTP Range request.
    When the file is complete its size and sha256 are checked against the registry (where known), then
    `verify(part_path)` runs (the path ends in ".part": take the format from `wf.name`); it should raise if the
    file is unusable. Only then is the .part renamed to the final name (atomic), so the final name never holds a
    partial or unchecked file. URLs are tried in order (`urls`, default `wf.urls`: official first, then mirror).

    `timeout` is in seconds, per connect and per read: a link silent that long counts as cut (and is resumed).

    Raises `MissingWeights` when no URL could be reached at all (offline), naming the file, its URLs and `folder`;
    `DownloadError` for anything else (HTTP errors, wrong size or hash, rejected by `verify`, disk errors), with the
    reason per URL. `Cancelled` raised by `on_progress` passes through and keeps the .part for a later resume.
    """
    folder = Path(folder)
    try:
        return _download(wf, folder, on_progress=on_progress, verify=verify, timeout=timeout, urls=urls)
    except _Offline as offline:
        raise MissingWeights(missing_weights_message([(wf, folder)], reason=offline.reason)) from None


def ensure_files(
    files: Sequence[WeightFile],
    folder: Path | str | ModelPaths,
    *,
    allow_download: bool,
    on_progress: ProgressCallback | None = None,
    verify: Callable[[WeightFile, Path], None] | None = None,
    timeout: float = 30,
    verify_present: bool = False,
) -> list[Path]:
    """Make sure every file in `files` is on disk; return their final paths, in the order given.

    `folder` is one folder for all files, or a `ModelPaths` (each file goes to its group's folder). Missing files
    are downloaded one by one when `allow_download`; `verify(wf, part_path)` checks each before it gets its final
    name. Present files are skipped (loading them is the loader's job), unless `verify_present`: then each is
    checked with `verify` too, and a corrupt one is downloaded again; the bad copy keeps its name until the new
    file has been verified and replaces it (a failed download leaves it as it was).
    Raises one `MissingWeights` listing every file still missing when downloads are off, the folder cannot be
    written or the network is unreachable; a `DownloadError` from one file stops the rest.
    """
    missing = find_missing(files, folder)
    corrupt = _find_corrupt([wf for wf in files if wf not in missing], folder, verify) if verify_present else {}
    wanted = [wf for wf in files if wf in missing or wf in corrupt]
    wanted = list(dict.fromkeys(wanted))
    if wanted and not allow_download:
        raise MissingWeights(_wanted_message(wanted, corrupt, folder, reason="downloading is turned off"))
    unwritable = [(wf, reason) for wf in wanted if (reason := _unwritable_reason(_folder_for(wf, folder)))]
    if unwritable:
        raise MissingWeights(_wanted_message(wanted, corrupt, folder, reason=unwritable[0][1]))
    for index, wf in enumerate(wanted):
        target = _folder_for(wf, folder)
        check = None if verify is None else _bind_verify(verify, wf)
        try:
            _download(wf, target, on_progress=on_progress, verify=check, timeout=timeout, urls=None,
                      replace=wf in corrupt)
        except _Offline as offline:
            raise MissingWeights(_wanted_message(wanted[index:], corrupt, folder, reason=offline.reason)) from None
    return [_folder_for(wf, folder) / wf.name for wf in files]


def _find_corrupt(present: Sequence[WeightFile], folder: Path | str | ModelPaths,
                  verify: Callable[[WeightFile, Path], None] | None) -> dict[WeightFile, str]:
    """{file: what is wrong} for each present file that `verify` rejects."""
    found: dict[WeightFile, str] = {}
    if verify is None:
        return found
    for wf in present:
        path = _folder_for(wf, folder) / wf.name
        try:
            verify(wf, path)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as error:  # the strict-load check may raise anything; say what it said
            found[wf] = str(error)
            log.warning("%s is corrupt (%s); downloading it again (the bad copy stays until the new one is "
                        "verified)", path, error)
    return found


def _wanted_message(wanted: Sequence[WeightFile], corrupt: dict[WeightFile, str], folder, *, reason: str) -> str:
    text = missing_weights_message([(wf, _folder_for(wf, folder)) for wf in wanted], reason=reason)
    bad = [wf.name for wf in wanted if wf in corrupt]
    if bad:
        text += f"\nPresent but corrupt (replace them): {', '.join(bad)}."
    return text


def _unwritable_reason(folder: Path) -> str | None:
    """Why no file can be created in `folder` (or the nearest folder that exists above it), or None."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    probe = existing / f".sadtalker-write-test-{os.getpid()}{PART_SUFFIX}"
    try:
        with open(probe, "x"):
            pass
        probe.unlink()
    except FileExistsError:
        return None
    except OSError as error:
        return f"the models folder {existing} cannot be written ({error.strerror or error}); save the files there " \
               f"by hand, or use a writable models folder"
    return None


def find_missing(files: Sequence[WeightFile], folder: Path | str | ModelPaths) -> list[WeightFile]:
    """The files (without repeats, in the order given) that are not yet under their final name."""
    missing: list[WeightFile] = []
    for wf in files:
        if wf not in missing and not (_folder_for(wf, folder) / wf.name).exists():
            missing.append(wf)
    return missing


def missing_weights_message(entries: Sequence[tuple[WeightFile, Path]], *, reason: str | None = None) -> str:
    """The text of a `MissingWeights`: per file, where to put it (exact folder) and where to get it."""
    count = len(entries)
    noun = "model file is" if count == 1 else "model files are"
    lines = [f"{count} {noun} missing. Download each one and save it, under exactly this name, in the folder shown:"]
    for wf, folder in entries:
        lines.append(f"  {wf.name}  ({wf.purpose})")
        lines.append(f"      put it in: {folder}")
        for index, url in enumerate(wf.urls):
            lines.append(f"      {'from:' if index == 0 else 'or:  '}      {url}")
    if reason:
        lines.append(f"Not downloaded automatically: {reason}.")
    return "\n".join(lines)


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks (the checkpoints are up to ~700 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES * 4):
            digest.update(chunk)
    return digest.hexdigest()


def console_progress(stream: TextIO | None = None, *, min_interval: float = 0.2) -> ProgressCallback:
    """A progress bar callback for a terminal: `name  [#####-----]  42%  305.1/725.0 MiB  12.3 MiB/s`.

    Writes to `stream` (default: `sys.stderr` at the time of each write). On a terminal it redraws one line; into a
    file or pipe it writes a line every 10 s at most. The command line passes this as `on_progress`.
    """
    return _ConsoleBar(stream, min_interval)


# --- one file, all URLs --------------------------------------------------------------------------------------------

def _download(wf: WeightFile, folder: Path, *, on_progress: ProgressCallback | None,
              verify: Callable[[Path], None] | None, timeout: float, urls: Sequence[str] | None,
              replace: bool = False) -> Path:
    final = folder / wf.name
    if final.exists() and not replace:
        log.debug("%s is already in %s", wf.name, folder)
        return final
    sources = tuple(wf.urls if urls is None else urls)
    if not sources:
        raise _Offline("no download address is known for it")
    part = folder / (wf.name + PART_SUFFIX)
    failures: list[tuple[str, _AttemptFailed]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for url in sources:
            try:
                _fetch_from(url, part, wf, timeout, _progress_for(wf.name, on_progress))
                if verify is not None:
                    _run_verify(verify, part)
            except _AttemptFailed as failure:
                log.warning("download of %s from %s failed: %s", wf.name, url, failure)
                failures.append((url, failure))
                continue
            return _install(part, final, replace=replace)
    except OSError as error:  # our side: folder not writable, disk full, ...
        raise DownloadError(f"Could not write {wf.name} into {folder}: {error}") from error
    if all(isinstance(failure, _Unreachable) for _, failure in failures):
        raise _Offline("no network connection (" + "; ".join(f"{url}: {f}" for url, f in failures) + ")")
    raise DownloadError(_download_error_message(wf, folder, part, failures))


def _fetch_from(url: str, part: Path, wf: WeightFile, timeout: float,
                report: Callable[[int, int | None], None]) -> None:
    """Bring `part` to the complete, checked file from one URL, resuming after cuts that made progress."""
    resumes = 0
    restarted = False
    while True:
        resumed_from = _size_or_zero(part)
        try:
            _transfer(url, part, wf, timeout, report)
            _check_complete(part, wf)
            return
        except _Cut as cut:
            if not cut.progressed or resumes >= _MAX_RESUMES_PER_URL:
                raise
            resumes += 1
            log.info("%s: %s; resuming from byte %d", wf.name, cut, _size_or_zero(part))
        except _Mismatch:
            part.unlink(missing_ok=True)
            if resumed_from == 0 or restarted:
                raise
            # The kept .part may come from another file version or server: start this URL once more from zero.
            restarted = True
            log.info("%s: the resumed file did not check out; downloading it again from the start", wf.name)


def _run_verify(verify: Callable[[Path], None], part: Path) -> None:
    try:
        verify(part)
    except Cancelled:
        raise
    except Exception as error:  # the lead's strict-load check may raise anything; say what it said
        part.unlink(missing_ok=True)
        raise _Mismatch(f"the downloaded file did not load ({error}); the .part file was deleted") from error


def _install(part: Path, final: Path, *, replace: bool = False) -> Path:
    if final.exists() and not replace:  # someone put it there while we downloaded: theirs wins, ours goes
        part.unlink(missing_ok=True)
        return final
    os.replace(part, final)
    log.info("saved %s", final)
    return final


# --- one HTTP request ----------------------------------------------------------------------------------------------

def _transfer(url: str, part: Path, wf: WeightFile, timeout: float, report: Callable[[int, int | None], None]) -> None:
    """One request: append the missing bytes to `part` (or start it over). Raises an `_AttemptFailed`."""
    offset = _size_or_zero(part)
    if wf.size is not None and offset >= wf.size:
        if offset == wf.size:
            return  # complete already; the checks decide whether it is good
        part.unlink()
        offset = 0
    response = _open(url, offset, timeout)
    with response:
        status = response.getcode()
        if status == 416:
            _accept_complete_part(response.headers, offset, wf)
            report(offset, offset)
            return
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Mismatch(f"asked for bytes from {offset}, the server sent from {start}")
            if total is None:
                total = _content_length(response.headers, offset)
        elif status == 200:
            if offset:
                log.info("%s: the server ignored the Range request; downloading from the start", url)
            offset = 0
            total = _content_length(response.headers, 0)
        else:
            raise _AttemptFailed(f"unexpected HTTP {status}")
        _check_headers(response.headers, total, wf, part.parent, offset)
        _stream_body(response, part, offset, total, report)


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)  # redirects keep these headers
    try:
        # A fresh opener reads the proxy variables now, not when urllib was first used in this process.
        return urllib.request.build_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:
            return error  # an HTTPError is also the response; the Range answer is handled by the caller
        error.close()
        raise _AttemptFailed(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLError):
            raise _AttemptFailed(f"TLS error ({error.reason}); a proxy or antivirus may intercept HTTPS") from None
        raise _Unreachable(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:  # connected, but no proper answer (e.g. read timeout)
        raise _Cut(f"no answer from the server ({error!r})", progressed=False) from None


def _stream_body(response, part: Path, offset: int, total: int | None,
                 report: Callable[[int, int | None], None]) -> None:
    done = offset
    with open(part, "ab" if offset else "wb") as out:
        report(done, total)
        while True:
            try:
                chunk = response.read1(_CHUNK_BYTES)  # read1: bytes that arrived before a timeout are kept
            except (OSError, http.client.HTTPException) as error:
                out.flush()
                raise _Cut(f"connection lost after {done} bytes ({error!r})", progressed=done > offset) from None
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            report(done, total)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and done < total:
        raise _Cut(f"connection closed after {done} of {total} bytes", progressed=done > offset)


def _check_headers(headers, total: int | None, wf: WeightFile, folder: Path, offset: int) -> None:
    content_type = (headers.get("Content-Type") or "").lower()
    if content_type.startswith("text/html"):
        raise _AttemptFailed("the server sent a web page instead of the file (a login page, proxy or rate limit?)")
    if total is not None and wf.size is not None and total != wf.size:
        raise _Mismatch(f"size mismatch: the server offers {total} bytes, expected {wf.size}")
    expected = total if total is not None else wf.size
    if expected is not None:
        free = shutil.disk_usage(folder).free
        if free < expected - offset:
            raise DownloadError(f"Not enough disk space in {folder} for {wf.name}: "
                                f"{_mib(expected - offset)} needed, {_mib(free)} free.")


def _accept_complete_part(headers, offset: int, wf: WeightFile) -> None:
    """HTTP 416 after a Range request: fine when the kept .part already is the whole file."""
    _, total = _parse_content_range(headers.get("Content-Range"))
    expected = total if total is not None else wf.size
    if expected is None or offset != expected:
        raise _Mismatch(f"the server refused the range from byte {offset} (HTTP 416) for a file of "
                        f"{expected if expected is not None else 'unknown'} bytes")


def _check_complete(part: Path, wf: WeightFile) -> None:
    size = part.stat().st_size
    if wf.size is not None and size != wf.size:
        raise _Mismatch(f"size mismatch: got {size} bytes, expected {wf.size}; the .part file was deleted")
    if wf.sha256 is not None:
        digest = file_sha256(part)
        if digest.lower() != wf.sha256.lower():
            raise _Mismatch(f"sha256 mismatch: got {digest}, expected {wf.sha256}; the .part file was deleted")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/200' -> (100, 200); 'bytes 100-199/*' -> (100, None); 'bytes */200' -> (None, 200)."""
    if not value:
        return None, None
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, size = spec.partition("/")
        if unit.lower() != "bytes":
            return None, None
        start = None if span.strip() == "*" else int(span.split("-")[0])
        total = None if size.strip() in ("", "*") else int(size)
    except ValueError:
        return None, None
    return start, total


def _content_length(headers, offset: int) -> int | None:
    value = headers.get("Content-Length")
    try:
        return offset + int(value) if value is not None else None
    except ValueError:
        return None


# --- small helpers -------------------------------------------------------------------------------------------------

def _folder_for(wf: WeightFile, folder: Path | str | ModelPaths) -> Path:
    return folder.folder(wf) if isinstance(folder, ModelPaths) else Path(folder)


def _bind_verify(verify: Callable[[WeightFile, Path], None], wf: WeightFile) -> Callable[[Path], None]:
    return lambda part: verify(wf, part)


def _progress_for(name: str, on_progress: ProgressCallback | None) -> Callable[[int, int | None], None]:
    if on_progress is None:
        return lambda done, total: None
    return lambda done, total: on_progress(name, done, total)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _download_error_message(wf: WeightFile, folder: Path, part: Path,
                            failures: Sequence[tuple[str, _AttemptFailed]]) -> str:
    lines = [f"Could not download {wf.name} into {folder}:"]
    lines += [f"  {url}: {failure}" for url, failure in failures]
    if part.exists():
        lines.append(f"The {_mib(part.stat().st_size)} received so far are kept in {part.name}; "
                     "the next attempt resumes from there.")
    return "\n".join(lines)


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


class _ConsoleBar:
    _WIDTH = 30
    _PIPE_INTERVAL = 10.0

    def __init__(self, stream: TextIO | None, min_interval: float):
        self._stream = stream
        self._min_interval = min_interval
        self._started: dict[str, tuple[float, int]] = {}  # name -> (time, bytes) of the first call, for the rate
        self._last_draw: dict[str, float] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        out = self._stream if self._stream is not None else sys.stderr
        now = time.monotonic()
        started_at, started_bytes = self._started.setdefault(name, (now, done))
        finished = total is not None and done >= total
        is_terminal = getattr(out, "isatty", lambda: False)()
        interval = self._min_interval if is_terminal else max(self._min_interval, self._PIPE_INTERVAL)
        first = name not in self._last_draw
        if not (first or finished or now - self._last_draw[name] >= interval):
            return
        self._last_draw[name] = now
        elapsed = now - started_at
        rate = (done - started_bytes) / elapsed if elapsed > 0 else 0.0
        line = self._line(name, done, total, rate)
        out.write(("\r" + line + "\x1b[K") if is_terminal else (line + "\n"))
        if finished:
            if is_terminal:
                out.write("\n")
            self._started.pop(name, None)
            self._last_draw.pop(name, None)
        out.flush()

    def _line(self, name: str, done: int, total: int | None, rate: float) -> str:
        speed = f"{rate / 2**20:.1f} MiB/s"
        if total:
            fraction = min(done / total, 1.0)
            filled = int(round(fraction * self._WIDTH))
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            return f"{name}  [{bar}] {fraction:4.0%}  {done / 2**20:.1f}/{total / 2**20:.1f} MiB  {speed}"
        return f"{name}  {done / 2**20:.1f} MiB  {speed}"
