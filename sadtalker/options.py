"""Generation options: one frozen dataclass, its defaults, and validation into named errors.

The command line, the UI and the API all build this object; none of them copies fields by hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from .errors import InvalidInput

Preprocess = Literal["crop", "extcrop", "resize", "full", "extfull"]
Enhancer = Literal["none", "gfpgan", "restoreformer", "codeformer"]
FaceDetectorName = Literal["facexlib", "face-alignment", "dlib"]

POSE_STYLES = 46
MAX_BATCH_SIZE = 32
MAX_FREE_VIEW_KEYFRAMES = 64


@dataclass(frozen=True)
class GenerateOptions:
    """Everything that changes what a run produces. Defaults are the official tool's."""

    preprocess: Preprocess = "crop"  # how the face is cut from the photo; *full pastes the face back into it
    still: bool = False  # keep the photo's head pose (fewer head movements)
    pose_style: int = 0  # one of the 46 learned head-motion styles, 0..45
    expression_scale: float = 1.0  # strength of mouth/face motion
    head_motion_scale: float = 1.0  # strength of head motion (ours; 1 = official)
    blink: bool = True  # random eye blinks (kept in still mode too)
    size: Literal[256, 512] = 256  # renderer resolution (model file)
    batch_size: int = 2  # frames rendered per network call
    enhancer: Enhancer = "none"  # face restorer applied to every rendered face
    ref_eyeblink: str | None = None  # video whose eye blinks are copied
    ref_pose: str | None = None  # video whose head motion is copied
    idle_seconds: float | None = None  # no speech: a still, blinking portrait of this length
    yaw: tuple[float, ...] = ()  # free-view keyframes in degrees (replace the predicted angles)
    pitch: tuple[float, ...] = ()
    roll: tuple[float, ...] = ()
    seed: int | None = None  # same seed -> same blinks and head motion
    face_detector: FaceDetectorName = "facexlib"
    face_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in photo pixels: skips face detection
    max_audio_seconds: float = 600.0  # refuse longer audio (a guard, settable by the host)
    fps: int = field(default=25, init=False)  # the networks were trained at 25 fps

    def __post_init__(self) -> None:
        _choice("preprocess", self.preprocess, Preprocess)
        _choice("enhancer", self.enhancer, Enhancer)
        _choice("face_detector", self.face_detector, FaceDetectorName)
        if self.size not in (256, 512):
            raise InvalidInput(f"size must be 256 or 512, not {self.size!r}")
        _int_range("pose_style", self.pose_style, 0, POSE_STYLES - 1)
        _int_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _float_range("expression_scale", self.expression_scale, 0.0, 3.0)
        _float_range("head_motion_scale", self.head_motion_scale, 0.0, 3.0)
        _float_range("max_audio_seconds", self.max_audio_seconds, 0.1, 24 * 3600.0)
        if self.idle_seconds is not None:
            _float_range("idle_seconds", self.idle_seconds, 0.12, self.max_audio_seconds)
        for name in ("yaw", "pitch", "roll"):
            values = tuple(getattr(self, name))
            if len(values) > MAX_FREE_VIEW_KEYFRAMES:
                raise InvalidInput(f"{name}: at most {MAX_FREE_VIEW_KEYFRAMES} keyframes")
            for value in values:
                _float_range(name, value, -90.0, 90.0)
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if self.face_box is not None:
            box = tuple(self.face_box)
            if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
                raise InvalidInput("face_box must be four whole numbers: x0, y0, x1, y1")
            if box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
                raise InvalidInput(f"face_box {box} is empty: need 0 <= x0 < x1 and 0 <= y0 < y1")
            object.__setattr__(self, "face_box", box)
        for name in ("ref_eyeblink", "ref_pose"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise InvalidInput(f"{name}: no such video file: {value}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise InvalidInput("seed must be a whole number >= 0")

    @property
    def is_full(self) -> bool:
        """Paste-back modes use the 73-coefficient mapping net."""
        return "full" in self.preprocess

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "GenerateOptions":
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown option(s): {', '.join(unknown)}")
        values = dict(data)
        for name in ("yaw", "pitch", "roll"):
            if name in values and values[name] is not None:
                values[name] = tuple(values[name])
            elif name in values:
                values[name] = ()
        if values.get("face_box") is not None:
            values["face_box"] = tuple(values["face_box"])
        return cls(**values)


def _choice(name: str, value: object, literal: object) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _int_range(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}; got {value!r}")


def _float_range(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidInput(f"{name} must be a number from {low:g} to {high:g}; got {value!r}")
