"""Every error a user can cause, with a stable code and a one-line message a person can act on."""

from __future__ import annotations


class SadTalkerError(Exception):
    """Base of all errors the core raises on purpose. `code` is stable (UI, API and exit status use it)."""

    code = "sadtalker_error"
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
    exit_status = 2


class AudioError(InvalidInput):
    code = "bad_audio"


class ImageError(InvalidInput):
    code = "bad_image"


class NoFaceDetected(InvalidInput):
    code = "no_face"


class MissingWeights(SadTalkerError):
    """A checkpoint file that is needed is not on disk (or could not be downloaded)."""

    code = "missing_weights"
    exit_status = 3


class CorruptCheckpoint(SadTalkerError):
    """A checkpoint file exists but cannot be read, or does not hold what it should."""

    code = "corrupt_checkpoint"
    exit_status = 3


class UnsupportedCheckpoint(CorruptCheckpoint):
    """A readable file whose keys match none of the components we know."""

    code = "unsupported_checkpoint"


class MissingDependency(SadTalkerError):
    """An optional feature needs a package that is not installed; the message names it."""

    code = "missing_dependency"
    exit_status = 3


class DetectorUnavailable(MissingDependency):
    """A face detector backend cannot run because a package it needs is not installed."""

    code = "detector_unavailable"


class DownloadError(SadTalkerError):
    code = "download_failed"
    exit_status = 4


class FFmpegError(SadTalkerError):
    """ffmpeg is missing, or failed on input that is not the user's fault (disk full, missing encoder, crash)."""

    code = "ffmpeg_failed"
    exit_status = 5


class VideoError(InvalidInput):
    """A reference video that cannot be read or used."""

    code = "bad_video"


class OutputError(SadTalkerError):
    """The output cannot be written where it should go (folder not writable, not a folder)."""

    code = "output_unwritable"
    exit_status = 6


class OutputExists(OutputError):
    """The output file named by the caller exists, and replacing it was not asked for."""

    code = "output_exists"


class DiskFull(OutputError):
    """The disk filled up (or a file-size limit was hit) while writing; the partial file was removed."""

    code = "disk_full"


class Cancelled(SadTalkerError):
    code = "cancelled"
    exit_status = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a `timeout`, systemd or a WebUI stop), raised where Ctrl-C would be, so the same
    clean-up runs (temporary files removed, ffmpeg stopped). A KeyboardInterrupt, not an Exception: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")
