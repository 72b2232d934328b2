"""What a request may hand the server: base64 / data: URLs, server-side paths under allowed folders, and the
rule that an error never shows a file-system path outside the outputs folder."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class ApiError(Exception):
    """A client error answered as `{"error": {"code", "message", "option"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, *, option: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.option = status, code, message, option
        self.headers = headers


_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def decode_media(text: str, field_name: str, empty_code: str = "bad_base64") -> bytes:
    """Raw base64 or a `data:<mime>;base64,` URL (the WebUI's convention) -> bytes; 422 naming the field.
    Empty content is valid base64 of an empty file: `empty_code` (bad_audio for an audio field, as the command
    line calls an empty audio file)."""
    match = _DATA_URL.match(text)
    if match is None and text[:5].lower() == "data:":
        raise ApiError(422, "bad_base64", f"{field_name}: a data: URL must be base64 (data:<type>;base64,...)",
                       option=field_name)
    payload = _WHITESPACE.sub("", text[match.end():] if match else text)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", f"{field_name}: not valid base64 (nor a data: URL)",
                       option=field_name) from None
    if not data:
        raise ApiError(422, empty_code, f"{field_name} is empty", option=field_name)
    return data


_SUFFIXES = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
             (b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3"))


def media_suffix(data: bytes, fallback: str) -> str:
    """A file suffix from the content's magic bytes (decoders sniff content; the suffix is for people)."""
    for magic, suffix in _SUFFIXES:
        if data.startswith(magic):
            if suffix == ".wav" and data[8:12] == b"WEBP":
                return ".webp"
            return suffix
    return fallback


@dataclass(frozen=True)
class PathPolicy:
    """Server-side paths: refused unless allowed, and then only files under `folders` (after resolving symlinks;
    no `..` at all)."""

    allowed: bool = False
    folders: tuple[Path, ...] = field(default_factory=tuple)

    def resolve(self, text: str, field_name: str) -> Path:
        if not self.allowed or not self.folders:
            raise ApiError(403, "paths_not_allowed",
                           f"{field_name}: this server does not accept server-side paths; send the file as base64",
                           option=field_name)
        if "\x00" in text or not text.strip():
            raise ApiError(422, "bad_path", f"{field_name}: not a usable path", option=field_name)
        candidate = Path(text)
        if ".." in candidate.parts or ".." in Path(text.replace("\\", "/")).parts:
            raise ApiError(403, "path_outside_allowed", f"{field_name}: '..' is not allowed in paths",
                           option=field_name)
        roots = [Path(os.path.realpath(folder)) for folder in self.folders]
        tries = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
        for path in tries:
            real = Path(os.path.realpath(path))
            if not any(real == root or root in real.parents for root in roots):
                continue
            if real.is_file():
                return real
            raise ApiError(422, "file_not_found", f"{field_name}: no such file in the allowed folders",
                           option=field_name)
        raise ApiError(403, "path_outside_allowed",
                       f"{field_name}: the path is not inside a folder this server allows", option=field_name)


# a lone "/" is no path: "crop / extcrop / resize" stays as it is
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:[\\/][^\s'\"`,;:()\[\]{}<>]*|/[^\s'\"`,;:()\[\]{}<>]+)")


def redact(message: str, visible: Path | None) -> str:
    """The message with every absolute path outside `visible` (the outputs folder) cut to its file name."""

    root = Path(os.path.realpath(visible)) if visible is not None else None

    def shorten(match: re.Match) -> str:
        text = match.group(0)
        if root is not None:
            real = Path(os.path.realpath(text))
            if real == root or root in real.parents:
                return text
        name = Path(text.rstrip("/\\")).name
        return name or "<path>"

    return _ABSOLUTE_PATH.sub(shorten, message)
