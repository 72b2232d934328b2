"""Every error a user can cause, with a stable code and a one-line message a person can act on."""

from __future__ import annotations


class SadTalkerError(Exception):
    """Base of all errors the core raises on purpose. `code` is stable (UI, API and exit status use it)."""

    code = "sadtalker_error"
    advice = 'an unexpected failure of ours; run again with `-v` and report it with the log'
    exit_status = 1

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.message = message
        self.option = option  # the option (field name) at fault, so each front end can name it its own way

    def named_for(self, rename) -> str:
        """The message with the option named as `rename(option)` gives (`--pose-style` for the command line)."""
        if self.option and self.message.startswith(self.option):
            return rename(self.option) + self.message[len(self.option):]
        return self.message

    def __str__(self) -> str:
        return self.message


class InvalidInput(SadTalkerError):
    """An option, image, audio or payload that cannot be used as given."""

    code = "invalid_input"
    advice = 'an option or combination that cannot be used; the message names the option and its allowed range'
    exit_status = 2


class AudioError(InvalidInput):
    code = "bad_audio"
    advice = 'the audio cannot be used (unreadable, empty, silent, too short or over the length limit); convert it to WAV or MP3 with speech in it'


class ImageError(InvalidInput):
    code = "bad_image"
    advice = 'the photo cannot be used (unreadable, too small or too large); save it as PNG or JPEG, at least 32 px and under the pixel limit'


class NoFaceDetected(InvalidInput):
    code = "no_face"
    advice = 'no face was found; use a clear front-facing photo, the `resize` preprocess, another `--face-detector`, or give `--face-box`'


class MissingWeights(SadTalkerError):
    """A checkpoint file that is needed is not on disk (or could not be downloaded)."""

    code = "missing_weights"
    advice = 'checkpoint files are not on disk; the message lists each file, where to put it and where to get it: run `python -m sadtalker download`'
    exit_status = 3


class CorruptCheckpoint(SadTalkerError):
    """A checkpoint file exists but cannot be read, or does not hold what it should."""

    code = "corrupt_checkpoint"
    advice = 'a checkpoint file is damaged or truncated (or its pickle would run code); delete it and run `python -m sadtalker download` again'
    exit_status = 3


class UnsupportedCheckpoint(CorruptCheckpoint):
    """A readable file whose keys match none of the components we know."""

    code = "unsupported_checkpoint"
    advice = 'the file is not the component it is named for; put the official file under that name'


class MissingDependency(SadTalkerError):
    """An optional feature needs a package that is not installed; the message names it."""

    code = "missing_dependency"
    advice = 'an optional feature needs a package; install the one the message names'
    exit_status = 3


class DetectorUnavailable(MissingDependency):
    """A face detector backend cannot run because a package it needs is not installed."""

    code = "detector_unavailable"
    advice = "the chosen face detector's package is not installed; install it or choose `--face-detector dlib`"


class DownloadError(SadTalkerError):
    code = "download_failed"
    advice = 'a server did not give the file (HTTP error, a web page, a size or hash mismatch); try again later or download it by hand'
    exit_status = 4


class FFmpegError(SadTalkerError):
    """ffmpeg is missing, or failed on input that is not the user's fault (disk full, missing encoder, crash)."""

    code = "ffmpeg_failed"
    advice = 'ffmpeg is missing or failed on its own (not on your input); reinstall `imageio-ffmpeg`'
    exit_status = 5


class VideoError(InvalidInput):
    """A reference video that cannot be read or used."""

    code = "bad_video"
    advice = 'a reference video cannot be read or shows no face; use another video'


class OutputError(SadTalkerError):
    """The output cannot be written where it should go (folder not writable, not a folder)."""

    code = "output_unwritable"
    advice = 'the output folder cannot be written; choose another folder or fix its permissions'
    exit_status = 6


class OutputExists(OutputError):
    """The output file named by the caller exists, and replacing it was not asked for."""

    code = "output_exists"
    advice = '`--out` names an existing file; give `--overwrite` or another name'


class DiskFull(OutputError):
    """The disk filled up (or a file-size limit was hit) while writing; the partial file was removed."""

    code = "disk_full"
    advice = 'the disk filled up while writing (the partial file was removed); free space and run again'


class Cancelled(SadTalkerError):
    code = "cancelled"
    advice = 'stopped by the user (Ctrl-C, Cancel or Interrupt); nothing was written'
    exit_status = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a `timeout`, systemd or a WebUI stop), raised where Ctrl-C would be, so the same
    clean-up runs (temporary files removed, ffmpeg stopped). A KeyboardInterrupt, not an Exception: no
    `except Exception` on the way may swallow it."""

    code = "terminated"
    advice = "the process was told to stop; it cleaned up like Ctrl-C and left no partial file"

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


def all_errors() -> list[type[SadTalkerError]]:
    """Every named error, base first, then in the order they are defined (the README's table comes from this)."""
    found, pending = [], [SadTalkerError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending[:0] = cls.__subclasses__()
    return sorted(found, key=lambda cls: cls.exit_status)


def error_for(code: str, message: str, option: str | None = None) -> SadTalkerError:
    """The named error whose code is `code`: how an error that crossed a process boundary as (code, message)
    (a Ray worker's item result) is raised again on this side."""
    for cls in all_errors():
        if cls.code == code:
            return cls(message, option=option)
    error = SadTalkerError(message, option=option)
    error.code = code
    return error
