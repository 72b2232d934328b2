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


class Cancelled(SadTalkerError):
    code = "cancelled"
    exit_status = 130
