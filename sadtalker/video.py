"""Video in and out through ffmpeg: a streaming H.264/AAC writer, a prober, a 25 fps frame reader, audio extraction.

ffmpeg is the one bundled with `imageio-ffmpeg` (a static build with libx264 and aac); a system ffmpeg is the
fallback. There is no ffprobe in that wheel, so `probe` reads what `ffmpeg -i` prints and counts packets with
`-c copy -f null`.

Writing is two passes, both streaming: (1) frames are piped straight into ffmpeg (libx264, yuv420p) as they come,
into a hidden temporary file in the destination folder; (2) on `close()` that video is stream-copied (no
re-encode) next to the audio, which is encoded to AAC, padded with silence if it is short and cut at exactly
`frames / fps` seconds. A single pass with `-shortest` was measured to end the AAC track up to 56 ms (1.4 frames)
early, or up to 0.6 s late with `apad`; the explicit cut gives the audio exactly the video's length. The result is
`os.replace`d onto the final name only when complete, so an interrupted run never leaves a half file and never
touches an older file of the same name.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import AudioError, DiskFull, FFmpegError, InvalidInput, OutputError, SadTalkerError

log = logging.getLogger("sadtalker")

DEFAULT_FPS = 25
PARAMETERS_TAG = "comment"  # MP4 `©cmt`: kept by ffmpeg's mp4 muxer and shown by common players as "Comment"
_STDERR_TAIL_LINES = 8
_H264_ENCODERS = ("libx264", "libopenh264")


# -- finding and running ffmpeg -------------------------------------------------------------------------------


@functools.cache
def ffmpeg_executable() -> str:
    """Path of the ffmpeg binary: imageio-ffmpeg's bundled build (or its IMAGEIO_FFMPEG_EXE), else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        system = shutil.which("ffmpeg")
        if system:
            return system
    raise FFmpegError("ffmpeg not found: install imageio-ffmpeg (`pip install imageio-ffmpeg`, it bundles one) "
                      "or put ffmpeg on PATH")


@functools.cache
def _h264_encoder() -> str:
    listing = _run([ffmpeg_executable(), "-hide_banner", "-encoders"], "list encoders").stdout
    for name in _H264_ENCODERS:
        if re.search(rf"\s{name}\s", listing):
            return name
    raise FFmpegError(f"this ffmpeg ({ffmpeg_executable()}) has no H.264 encoder; install imageio-ffmpeg")


def _stderr_tail(text: str | bytes, lines: int = _STDERR_TAIL_LINES) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


# ffmpeg prefixes its lines with the component and its memory address: `[in#0 @ 0x55d1...] moov atom not found`
_COMPONENT_PREFIX = re.compile(r"^\[[^\]]*\]\s*")
# lines that only repeat that something failed, without saying what
_GENERIC_LINES = ("Error opening input file", "Error opening input files", "Error opening output file",
                  "Error opening output files", "misdetection possible", "Last message repeated",
                  "Conversion failed", "Task finished with error code", "Terminating thread with return code",
                  "Error muxing a packet")
_DISK_FULL_MARKS = ("No space left on device", "File too large", "Disk quota exceeded")


def ffmpeg_reason(text: str | bytes) -> str:
    """The one line of ffmpeg's log that says what went wrong (`moov atom not found`), without addresses or
    the lines that only repeat that opening failed. The whole log goes to the debug log."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.strip():
        log.debug("ffmpeg said: %s", _stderr_tail(text, 40))
    lines = [_COMPONENT_PREFIX.sub("", line.strip()) for line in text.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not any(mark in line for mark in _GENERIC_LINES)]
    if not lines:
        return "no message"
    reason = lines[0]
    # "Error opening input: Invalid data found when processing input" -> the part after the context
    return reason.split(": ", 1)[1] if reason.startswith("Error opening") and ": " in reason else reason


def _is_disk_full(text: str | bytes, returncode: int | None = None) -> bool:
    if returncode == -getattr(signal, "SIGXFSZ", -1):  # killed for passing RLIMIT_FSIZE
        return True
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return any(mark in text for mark in _DISK_FULL_MARKS)


def _disk_full(where: Path, detail: str) -> DiskFull:
    return DiskFull(f"the disk is full (or a file-size limit was reached) while writing into {where}: {detail}; "
                    "the partial file was removed. Free some space or choose another output folder")


def _run(args: Sequence[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion (text output). `check`: a non-zero exit raises FFmpegError naming the reason
    (DiskFull when it ran out of space)."""
    try:
        done = subprocess.run(list(args), check=False, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise FFmpegError(f"cannot run ffmpeg to {what}: {exc}") from exc
    if check and done.returncode != 0:
        if _is_disk_full(done.stderr, done.returncode):
            raise _disk_full(Path(args[-1]).parent, f"ffmpeg could not {what} ({ffmpeg_reason(done.stderr)})")
        raise FFmpegError(f"ffmpeg failed to {what} (exit {done.returncode}): {ffmpeg_reason(done.stderr)}")
    return done


# -- probing --------------------------------------------------------------------------------------------------


_AAC_LAYOUTS = "mono|stereo|3.0|4.0|5.0|5.1|7.1"


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a media file. `width`/`height` are the displayed size (after rotation).

    `frames` is the exact number of video packets (= frames for H.264 in MP4); 0 when not counted or no video.
    `duration` is the container's duration in seconds (ffmpeg prints it to 10 ms). `metadata` holds the
    container tags; `parameters` is the JSON this module stores in the `comment` tag, decoded.
    """

    video_codec: str | None
    pix_fmt: str | None
    width: int
    height: int
    fps: float | None
    frames: int
    duration: float | None
    audio_codec: str | None
    audio_rate: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    rotation: int = 0

    @property
    def parameters(self) -> dict[str, Any] | None:
        raw = self.metadata.get(PARAMETERS_TAG)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


def probe(path: str | Path, count_frames: bool = True) -> VideoInfo:
    """Codecs, size, rate, exact frame count, duration and tags of a media file. Unreadable → InvalidInput."""
    path = _existing_input(path)
    header = _read_header(path)
    frames = _count_video_packets(path) if count_frames and header["video_codec"] else 0
    return VideoInfo(frames=frames, metadata=_read_tags(path), **header)


def video_fps(path: str | Path) -> float:
    """Frame rate of the first video stream (the `fps` ffmpeg reports, else its `tbr`)."""
    path = _existing_input(path)
    header = _read_header(path)
    if header["video_codec"] is None or header["fps"] is None:
        raise InvalidInput(f"{path.name} has no video stream with a known frame rate")
    return header["fps"]


def check_video_decodes(path: str | Path) -> None:
    """Decode the whole first video stream (to nothing; fast) so a damaged file is named before any work.
    Raises InvalidInput with the one line of ffmpeg's log that says what is wrong."""
    path = _existing_input(path)
    header = _read_header(path)
    if header["video_codec"] is None:
        raise InvalidInput(f"{path.name} has no video stream")
    done = _run([ffmpeg_executable(), "-hide_banner", "-nostats", "-v", "error", "-i", str(path), "-map", "0:v:0",
                 "-f", "null", "-"], "decode the video", check=False)
    if done.returncode != 0:
        raise InvalidInput(f"cannot decode {path.name}: {ffmpeg_reason(done.stderr)}")


def _existing_input(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"file not found: {path}")
    return path


def _read_header(path: Path) -> dict[str, Any]:
    # `ffmpeg -i` with no output always exits non-zero; success is recognised by the "Input #0" block.
    stderr = _run([ffmpeg_executable(), "-hide_banner", "-i", str(path)], "read the header", check=False).stderr
    if "Input #0" not in stderr:
        raise InvalidInput(f"cannot read {path.name} as audio/video: {ffmpeg_reason(stderr)}")
    return _parse_header(stderr)


def _parse_header(stderr: str) -> dict[str, Any]:
    header: dict[str, Any] = {"video_codec": None, "pix_fmt": None, "width": 0, "height": 0, "fps": None,
                              "duration": None, "audio_codec": None, "audio_rate": None, "rotation": 0}
    duration = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    if duration:
        h, m, s = duration.groups()
        header["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    video = re.search(r"Stream #0:\d+\S*: Video: (.*)", stderr)
    if video:
        header.update(_parse_video_stream(video.group(1)))
        rotation = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", stderr[video.end():], re.IGNORECASE)
        if rotation:
            header["rotation"] = round(float(rotation.group(1))) % 360
            if header["rotation"] in (90, 270):  # ffmpeg's autorotate hands out frames turned upright
                header["width"], header["height"] = header["height"], header["width"]
    audio = re.search(r"Stream #0:\d+\S*: Audio: (\w+)[^\n]*?(\d+) Hz", stderr)
    if audio:
        header["audio_codec"], header["audio_rate"] = audio.group(1), int(audio.group(2))
    return header


def _split_top_level(text: str) -> list[str]:
    """Split ffmpeg's stream description at commas outside parentheses/brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _rate_value(token: str) -> float:
    number = token.split()[0]
    return float(number[:-1]) * 1000 if number.endswith("k") else float(number)


def _parse_video_stream(description: str) -> dict[str, Any]:
    parts = _split_top_level(description)
    found: dict[str, Any] = {"video_codec": parts[0].split()[0]}
    if len(parts) > 1:
        found["pix_fmt"] = parts[1].split("(")[0].strip() or None
    tbr = None
    for part in parts[1:]:
        size = re.match(r"(\d+)x(\d+)", part)
        if size and "width" not in found:
            found["width"], found["height"] = int(size.group(1)), int(size.group(2))
        elif part.endswith(" fps"):
            found["fps"] = _rate_value(part)
        elif part.endswith(" tbr"):
            tbr = _rate_value(part)
    if "fps" not in found and tbr:
        found["fps"] = tbr
    return found


def _count_video_packets(path: Path) -> int:
    done = _run([ffmpeg_executable(), "-hide_banner", "-nostats", "-v", "error", "-i", str(path), "-map", "0:v:0",
                 "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"], "count frames", check=False)
    counts = re.findall(r"^frame=(\d+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not counts:
        raise InvalidInput(f"cannot read the video stream of {path.name}: {ffmpeg_reason(done.stderr)}")
    return int(counts[-1])


def _read_tags(path: Path) -> dict[str, str]:
    """Container tags via ffmpeg's ffmetadata writer, which escapes `=;#\\` and newlines (exact round trip)."""
    done = _run([ffmpeg_executable(), "-hide_banner", "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                "read the tags", check=False)
    if done.returncode != 0:
        return {}
    return _parse_ffmetadata(done.stdout)


def _parse_ffmetadata(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    in_value = escaped = False
    body = text.split("\n", 1)[1] if text.startswith(";FFMETADATA") else text
    for char in body:
        if escaped:
            (value if in_value else key).append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=" and not in_value:
            in_value = True
        elif char == "\n":
            name = "".join(key)
            if name.startswith("["):  # stream/chapter sections follow the global tags
                break
            if in_value and name and not name.startswith(";"):
                tags[name] = "".join(value)
            key, value, in_value = [], [], False
        else:
            (value if in_value else key).append(char)
    return tags


# -- output names and atomic files ---------------------------------------------------------------------------

_UNSAFE_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]+')


def unique_output_path(folder: str | Path, stem: str, suffix: str = ".mp4", reserved: Collection[Path] = ()) -> Path:
    """`folder/stem.mp4`, or `stem-1.mp4`, `stem-2.mp4`, … : the first name whose video and sidecar are both free
    (and that is not in `reserved`: names already promised to other videos of the same batch).

    Characters that are not allowed in file names are replaced by `_`; the folder is created. This picks a name,
    it does not lock it: two processes racing for the same stem should use different stems.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = _UNSAFE_NAME.sub("_", stem).strip(" .") or "video"
    candidate, number = clean, 0
    while (folder / f"{candidate}{suffix}").exists() or (folder / f"{candidate}.json").exists() \
            or folder / f"{candidate}{suffix}" in reserved:
        number += 1
        candidate = f"{clean}-{number}"
    return folder / f"{candidate}{suffix}"


def check_output_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be made in it, before any work. -> the folder.

    Raises OutputError naming the folder and the reason (permission denied, read-only disk, a file in the way)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_file = _temporary_sibling(folder / "write-test", "part")
        with open(probe_file, "x"):
            pass
        probe_file.unlink()
    except FileExistsError:
        raise OutputError(f"the output folder {folder} is a file, not a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder {folder}: {exc.strerror or exc}") from None
    return folder


def _temporary_sibling(final: Path, tag: str) -> Path:
    """A hidden name next to `final` (same folder, so `os.replace` is a rename); galleries skip dot-files."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.{tag}")


def remove_abandoned_parts(final: str | Path) -> list[Path]:
    """Delete the temporary files a writer of `final` left behind when its process was killed mid-write (the
    hidden siblings of the video and its sidecar). Only for a name no live writer is using. -> what was removed."""
    final = Path(final)
    found = [p for name in (final.name, sidecar_path(final).name) for p in final.parent.glob(f".{name}.*.*part")]
    _remove_quietly(*found)
    return found


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # leave it rather than hide the original error
            log.warning("could not remove temporary file %s: %s", path, exc)


def sidecar_path(video_path: str | Path) -> Path:
    """`name.mp4` → `name.json`: where the generation parameters are written next to the video."""
    return Path(video_path).with_suffix(".json")


# -- writing ------------------------------------------------------------------------------------------------


def _stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.kill()
    process.wait()


def _abandon(process: subprocess.Popen | None, *paths: Path) -> None:
    """Finalizer for a writer dropped without close/abort: stop ffmpeg, delete the temporary files."""
    _stop_process(process)
    _remove_quietly(*paths)


class VideoWriter:
    """Stream RGB frames into an H.264 (yuv420p, BT.709) + AAC MP4 with `-movflags +faststart`.

    `size` is the (width, height) of the frames you will write. Odd sizes are padded to the next even size by
    repeating the last row/column (yuv420p needs even sizes; repeating the edge is invisible, black bars are
    not); `output_size` says what the file gets. Memory stays flat: each frame goes straight to ffmpeg's stdin.

    With `audio_path`, the audio is muxed in and cut (or silence-padded) to exactly `frames / fps` seconds, so
    render T = samples // (sample_rate / fps) frames for a clip as long as the audio (within one frame).
    `metadata` (JSON-serialisable) goes into the MP4's `comment` tag and into the sidecar `name.json`.

    Use as a context manager: a clean exit publishes the file; an exception (or `abort()`) deletes the
    temporary files and leaves any earlier file at `path` as it was.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float = DEFAULT_FPS,
                 audio_path: str | Path | None = None, metadata: Mapping[str, Any] | None = None, *,
                 crf: int = 18, preset: str = "medium"):
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {size}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.size = (width, height)
        self.output_size = (width + width % 2, height + height % 2)
        self.fps = fps
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.metadata = dict(metadata or {})
        self.parameters_json = json.dumps(self.metadata, ensure_ascii=True, separators=(",", ":"), default=str)
        self.frames_written = 0
        self._crf, self._preset = crf, preset
        if self.audio_path is not None:
            self._check_audio(self.audio_path)
        check_output_folder(self.path.parent)
        self._video_part = _temporary_sibling(self.path, "video.part")
        self._final_part = _temporary_sibling(self.path, "part")
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the writer)
        self._process: subprocess.Popen | None = self._start_encoder()
        self._finished = False
        self._finalizer = weakref.finalize(self, _abandon, self._process, self._video_part, self._final_part)

    # -- public -------------------------------------------------------------------------------------------
    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one frame: (H, W, 3) uint8 RGB with (W, H) == `size`."""
        if self._finished or self._process is None:
            raise RuntimeError("VideoWriter is closed")
        frame = self._checked_frame(frame_rgb)
        try:
            self._process.stdin.write(memoryview(frame).cast("B"))  # type: ignore[union-attr]
        except (BrokenPipeError, OSError) as exc:
            failure = self._encoder_failure("encode the video")
            self.abort()
            raise failure from exc
        self.frames_written += 1

    def write_many(self, frames: Iterator[np.ndarray] | Sequence[np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def close(self) -> Path:
        """Finish encoding, mux the audio, write the sidecar and publish both atomically. Returns `path`."""
        if self._finished:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise ValueError("no frames were written; nothing to save")
        sidecar_part = None
        try:
            self._finish_encoder()
            self._mux()
            sidecar_part = self._write_sidecar_part()
            os.replace(self._final_part, self.path)
            os.replace(sidecar_part, sidecar_path(self.path))
        except OSError as exc:  # our own writes: the sidecar, the renames
            self.abort()
            if sidecar_part is not None:
                _remove_quietly(sidecar_part)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise _disk_full(self.path.parent, exc.strerror or str(exc)) from exc
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort()
            if sidecar_part is not None:
                _remove_quietly(sidecar_part)
            raise
        self._finished = True
        self._finalizer.detach()
        _remove_quietly(self._video_part)
        self._stderr.close()
        log.info("wrote %s (%d frames, %s)", self.path, self.frames_written,
                 "with audio" if self.audio_path else "silent")
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; an earlier file at `path` is left untouched."""
        if self._finished:
            return
        self._finished = True
        _stop_process(self._process)
        self._finalizer.detach()
        _remove_quietly(self._video_part, self._final_part)
        self._stderr.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- steps --------------------------------------------------------------------------------------------
    @staticmethod
    def _check_audio(audio_path: Path) -> None:
        if not audio_path.is_file():
            raise AudioError(f"audio file not found: {audio_path}")
        try:
            header = _read_header(audio_path)
        except InvalidInput as exc:
            raise AudioError(f"cannot read the audio {audio_path.name}: {exc}") from exc
        if header["audio_codec"] is None:
            raise AudioError(f"{audio_path.name} has no audio stream")

    def _start_encoder(self) -> subprocess.Popen:
        width, height = self.output_size
        encoder = _h264_encoder()
        quality = ["-crf", str(self._crf), "-preset", self._preset] if encoder == "libx264" else ["-b:v", "2M"]
        args = [ffmpeg_executable(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(self.fps),
                "-i", "pipe:0",
                # Convert with the BT.709 matrix and tag it, so browsers (which assume 709) show the right colours.
                "-vf", ("scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                        "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"),
                "-c:v", encoder, *quality, "-f", "mp4", str(self._video_part)]
        try:
            return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        except OSError as exc:
            raise FFmpegError(f"cannot start ffmpeg: {exc}") from exc

    def _checked_frame(self, frame_rgb: np.ndarray) -> np.ndarray:
        width, height = self.size
        if not isinstance(frame_rgb, np.ndarray) or frame_rgb.dtype != np.uint8 \
                or frame_rgb.shape != (height, width, 3):
            got = getattr(frame_rgb, "shape", None), getattr(frame_rgb, "dtype", type(frame_rgb).__name__)
            raise ValueError(f"expected a ({height}, {width}, 3) uint8 RGB frame, got shape/dtype {got}")
        if self.output_size != self.size:
            frame_rgb = np.pad(frame_rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        return np.ascontiguousarray(frame_rgb)

    def _encoder_failure(self, what: str) -> SadTalkerError:
        _stop_process(self._process)
        self._stderr.seek(0)
        text = self._stderr.read()
        returncode = self._process.returncode if self._process is not None else None
        if _is_disk_full(text, returncode):
            return _disk_full(self.path.parent, f"ffmpeg could not {what} ({ffmpeg_reason(text)})")
        if b"Permission denied" in text:
            return OutputError(f"cannot write into the output folder {self.path.parent}: permission denied")
        return FFmpegError(f"ffmpeg failed to {what}: {ffmpeg_reason(text)}")

    def _finish_encoder(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        if self._process.wait() != 0:
            raise self._encoder_failure("encode the video")

    def _mux(self) -> None:
        duration = f"{self.frames_written / self.fps:.6f}"
        audio_in = ["-i", str(self.audio_path)] if self.audio_path else []
        # a WAVE_FORMAT_EXTENSIBLE file may declare a layout the AAC encoder refuses (mono as "FL" alone): take the
        # nearest one it knows; an ordinary file's layout is among them and stays as it is
        audio_out = ["-map", "1:a:0", "-af", f"aformat=channel_layouts={_AAC_LAYOUTS},apad", "-c:a", "aac",
                     "-b:a", "128k"] if self.audio_path else []
        _run([ffmpeg_executable(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
              "-i", str(self._video_part), *audio_in, "-map", "0:v:0", "-c:v", "copy", *audio_out,
              "-t", duration, "-metadata", f"{PARAMETERS_TAG}={self.parameters_json}",
              "-movflags", "+faststart", "-f", "mp4", str(self._final_part)], "mux the audio and tags")

    def _write_sidecar_part(self) -> Path:
        part = _temporary_sibling(sidecar_path(self.path), "part")
        try:
            with open(part, "x", encoding="utf-8") as handle:
                json.dump(self.metadata, handle, ensure_ascii=False, indent=2, default=str)
                handle.write("\n")
        except BaseException:
            _remove_quietly(part)
            raise
        return part


# -- reading ------------------------------------------------------------------------------------------------


def read_video_frames(path: str | Path, fps: float | None = DEFAULT_FPS) -> Iterator[np.ndarray]:
    """Yield the frames of `path` as (H, W, 3) uint8 RGB, resampled to `fps` (ffmpeg's `fps` filter drops or
    repeats frames to the nearest timestamp; None keeps the file's own timing). Streams: one frame in memory.
    Rotated phone videos come out upright. Unreadable input → InvalidInput."""
    path = _existing_input(path)
    header = _read_header(path)
    if header["video_codec"] is None:
        raise InvalidInput(f"{path.name} has no video stream")
    width, height = header["width"], header["height"]
    frame_bytes = width * height * 3
    filters = ["-vf", f"fps={fps}"] if fps else []
    args = [ffmpeg_executable(), "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(path),
            "-map", "0:v:0", *filters, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    return _frames_from_process(args, path, (height, width, 3), frame_bytes)


def _frames_from_process(args: list[str], path: Path, shape: tuple[int, int, int],
                         frame_bytes: int) -> Iterator[np.ndarray]:
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdout is not None
            while True:
                frame = np.empty(shape, np.uint8)
                filled = process.stdout.readinto(memoryview(frame).cast("B"))
                while filled and filled < frame_bytes:  # pipes deliver in chunks
                    more = process.stdout.readinto(memoryview(frame).cast("B")[filled:])
                    if not more:
                        break
                    filled += more
                if not filled:
                    break
                if filled < frame_bytes:
                    raise InvalidInput(f"{path.name}: the last frame is incomplete ({filled} of {frame_bytes} bytes)")
                yield frame
            if process.wait() != 0:
                stderr.seek(0)
                raise InvalidInput(f"cannot decode {path.name}: {ffmpeg_reason(stderr.read())}")
        finally:
            _stop_process(process)
            if process.stdout is not None:
                process.stdout.close()


def extract_audio(path: str | Path, out_wav: str | Path, sample_rate: int = 16000) -> Path:
    """Write the first audio track of `path` (any format ffmpeg reads) as mono 16-bit PCM WAV at `sample_rate`.

    The file appears atomically. No audio track, or unreadable → AudioError."""
    path = _existing_input(path)
    try:
        header = _read_header(path)
    except InvalidInput as exc:
        raise AudioError(str(exc)) from exc
    if header["audio_codec"] is None:
        raise AudioError(f"{path.name} has no audio track")
    out_wav = Path(out_wav)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    part = _temporary_sibling(out_wav, "part")
    try:
        done = _run([ffmpeg_executable(), "-hide_banner", "-nostats", "-loglevel", "error", "-y", "-i", str(path),
                     "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le",
                     "-f", "wav", str(part)], "extract the audio", check=False)
        if done.returncode != 0:
            raise AudioError(f"cannot decode the audio of {path.name}: {ffmpeg_reason(done.stderr)}")
        os.replace(part, out_wav)
    finally:
        _remove_quietly(part)
    return out_wav
