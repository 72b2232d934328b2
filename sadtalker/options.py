"""Generation options: one frozen dataclass, and the single description of every option.

Each field carries its user-facing description (`OptionSpec`: command-line flag, label, help, default, choices or
range, whether it sits under "Advanced"). The command line, the UI and the API are generated from
`option_specs()`; none of them copies a field by hand. Validation raises `InvalidInput` whose `option` names the
field, so each caller can name it the way its user knows it (`--pose-style` on the command line, `pose_style` in
the API).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import InvalidInput

Preprocess = Literal["crop", "extcrop", "resize", "full", "extfull"]
PREPROCESS_MODES: tuple[str, ...] = get_args(Preprocess)
Enhancer = Literal["none", "gfpgan", "restoreformer", "codeformer"]
FaceDetectorName = Literal["facexlib", "face-alignment", "dlib"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]

POSE_STYLES = 46
MAX_BATCH_SIZE = 32
MAX_FREE_VIEW_KEYFRAMES = 64
MAX_SEED = 2**63 - 1
HOST_ENHANCER_PREFIX = "host:"  # enhancer names the host adds, e.g. "host:CodeFormer" in the WebUI

OptionKind = Literal["choice", "bool", "int", "float", "angles", "box", "video", "seed"]


@dataclass(frozen=True)
class OptionSpec:
    """How one option looks to a person, in every front end.

    `name` is the field name and the API's key; `flag` the command-line option. For a bool whose default is True,
    the command line offers the negation (`--no-blink`). `minimum`/`maximum` bound numbers (and each keyframe of
    `angles`). `advanced` options sit in the UI's "Advanced" accordion.
    """

    name: str
    label: str
    help: str
    kind: OptionKind
    default: Any
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    advanced: bool = True

    @property
    def flag(self) -> str:
        if self.kind == "bool" and self.default is True:
            return "--no-" + self.name.replace("_", "-")
        return "--" + self.name.replace("_", "-")

    @property
    def range_text(self) -> str:
        """'0..45', 'crop|extcrop|…' or '' — what the help and the README show."""
        if self.choices:
            return "|".join(str(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.number_text(self.minimum)}..{self.number_text(self.maximum)}"
        return ""

    def number_text(self, value: float) -> str:
        """A bound as a person reads it: whole numbers for whole-number options (no 9.22337e+18 for the seed)."""
        return str(int(value)) if self.kind in ("int", "seed") else f"{value:g}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (the API's `/options` route and the README table use this)."""
        return {"name": self.name, "flag": self.flag, "label": self.label, "help": self.help, "kind": self.kind,
                "default": list(self.default) if isinstance(self.default, tuple) else self.default,
                "choices": list(self.choices), "minimum": self.minimum, "maximum": self.maximum,
                "advanced": self.advanced}


def _option(default: Any, label: str, help: str, kind: OptionKind, *, choices: tuple = (),
            minimum: float | None = None, maximum: float | None = None, advanced: bool = True) -> Any:
    spec = {"label": label, "help": help, "kind": kind, "choices": choices, "minimum": minimum, "maximum": maximum,
            "advanced": advanced}
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class GenerateOptions:
    """Everything that changes what a run produces. Defaults are the official tool's."""

    preprocess: Preprocess = _option(
        "crop", "Preprocess", "how the face is cut from the photo; the *full modes paste the face back into it",
        "choice", choices=get_args(Preprocess), advanced=False)
    still: bool = _option(False, "Still mode", "keep the photo's head pose (fewer head movements)", "bool",
                          advanced=False)
    size: Literal[256, 512] = _option(256, "Face size", "renderer resolution (which model file is used)", "choice",
                                      choices=(256, 512), advanced=False)
    enhancer: Enhancer = _option("none", "Face enhancer", "face restorer applied to every rendered face", "choice",
                                 choices=get_args(Enhancer), advanced=False)
    pose_style: int = _option(0, "Pose style", "one of the 46 learned head-motion styles", "int", minimum=0,
                              maximum=POSE_STYLES - 1, advanced=False)
    expression_scale: float = _option(1.0, "Expression scale", "strength of mouth and face motion", "float",
                                      minimum=0.0, maximum=3.0, advanced=False)
    head_motion_scale: float = _option(1.0, "Head motion scale",
                                       "strength of head motion (1 = the official amount)", "float",
                                       minimum=0.0, maximum=3.0)
    blink: bool = _option(True, "Eye blinks", "random eye blinks (kept in still mode too)", "bool")
    batch_size: int = _option(2, "Batch size", "frames rendered per network call", "int", minimum=1,
                              maximum=MAX_BATCH_SIZE)
    precision: Precision = _option(
        "fp32", "Precision", "renderer and GFPGAN arithmetic: fp32 exact; bf16 / fp16 2-3x faster where the device "
        "has them (frames within 36 dB PSNR of fp32); auto picks by device", "choice", choices=get_args(Precision))
    ref_eyeblink: str | None = _option(None, "Reference video (blinks)", "video whose eye blinks are copied",
                                       "video")
    ref_pose: str | None = _option(None, "Reference video (pose)", "video whose head motion is copied", "video")
    idle_seconds: float | None = _option(None, "Idle seconds",
                                         "no speech: a still, blinking portrait of this length", "float",
                                         minimum=0.12, maximum=24 * 3600.0)
    yaw: tuple[float, ...] = _option((), "Yaw keyframes",
                                     "free-view yaw keyframes in degrees (replace the predicted angles)", "angles",
                                     minimum=-90.0, maximum=90.0)
    pitch: tuple[float, ...] = _option((), "Pitch keyframes", "free-view pitch keyframes in degrees", "angles",
                                       minimum=-90.0, maximum=90.0)
    roll: tuple[float, ...] = _option((), "Roll keyframes", "free-view roll keyframes in degrees", "angles",
                                      minimum=-90.0, maximum=90.0)
    seed: int | None = _option(None, "Seed", "same seed, same blinks and head motion (empty: a new one each run)",
                               "seed", minimum=0, maximum=MAX_SEED)
    face_detector: FaceDetectorName = _option("facexlib", "Face detector", "which face + 68-landmark detector runs",
                                              "choice", choices=get_args(FaceDetectorName))
    face_box: tuple[int, int, int, int] | None = _option(
        None, "Face box", "x0,y0,x1,y1 in photo pixels: use this face, skip face detection", "box")
    max_audio_seconds: float = _option(600.0, "Audio length limit", "refuse longer audio (seconds)", "float",
                                       minimum=0.1, maximum=24 * 3600.0)
    fps: int = field(default=25, init=False)  # the networks were trained at 25 fps; not an option

    def __post_init__(self) -> None:
        for spec in option_specs():
            _validate(spec, getattr(self, spec.name), self)
        for name in ("yaw", "pitch", "roll"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.face_box is not None:
            object.__setattr__(self, "face_box", tuple(self.face_box))
        if self.still and self.ref_pose is not None:
            raise InvalidInput("ref_pose copies a video's head motion, which still mode turns off; "
                               "choose one of them", option="ref_pose")
        if self.still and self.head_motion_scale != 1.0:
            raise InvalidInput("head_motion_scale has no effect in still mode (the photo's pose is kept); "
                               "leave it at 1 or turn still off", option="head_motion_scale")
        if self.idle_seconds is not None and self.idle_seconds > self.max_audio_seconds:
            raise InvalidInput(f"idle_seconds must be at most max_audio_seconds ({self.max_audio_seconds:g})",
                               option="idle_seconds")

    @property
    def is_full(self) -> bool:
        """Paste-back modes use the 73-coefficient mapping net."""
        return "full" in self.preprocess

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values; `from_dict` reads it back (fixed fields such as fps are left out)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k in _INIT_FIELDS}

    def replace(self, **changes: Any) -> GenerateOptions:
        """A copy with some options changed (validated like a new object)."""
        return GenerateOptions.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateOptions:
        """From JSON-like values (lists for tuples). Fixed fields (fps) are accepted only at their fixed value,
        so options saved with a video load back; an unknown key is a named error."""
        if not isinstance(data, dict):
            raise InvalidInput(f"options must be an object of option names to values, not {type(data).__name__}")
        values = {}
        for key, value in data.items():
            if key in _FIXED_FIELDS:
                if value != _FIXED_FIELDS[key]:
                    raise InvalidInput(f"{key} is fixed at {_FIXED_FIELDS[key]}; got {value!r}", option=key)
                continue
            if key not in _INIT_FIELDS:
                raise InvalidInput(f"unknown option {key!r}; known: {', '.join(sorted(_INIT_FIELDS))}", option=key)
            values[key] = value
        for name in ("yaw", "pitch", "roll"):
            if name in values:
                values[name] = () if values[name] is None else _as_tuple(name, values[name])
        if values.get("face_box") is not None:
            values["face_box"] = _as_tuple("face_box", values["face_box"])
        return cls(**values)


def option_specs() -> tuple[OptionSpec, ...]:
    """Every option, in the order front ends show them."""
    return _SPECS


def option_spec(name: str) -> OptionSpec:
    for spec in _SPECS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def saved_options(path: str | Path) -> tuple[GenerateOptions, int | None]:
    """The options (and seed) stored with a video we made: its MP4 `comment` tag, or its JSON sidecar.

    Returns the options with `seed` set to the seed the run used, so the same run can be reproduced.
    """
    options = GenerateOptions.from_dict(saved_option_values(path))
    return options, options.seed


def saved_option_values(path: str | Path) -> dict[str, Any]:
    """The raw option values stored with a video we made (seed included), not yet validated: a front end lays
    the values its user gives over them first, so a given value replaces a stored one that no longer holds
    (a reference video that has moved)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path.name}", option="options_from")
    record: Any = None
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"{path.name} is not a parameters file of ours: {exc}", option="options_from") from None
    else:
        from .video import probe

        record = probe(path, count_frames=False).parameters
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
        raise InvalidInput(f"{path.name} holds no SadTalker parameters (was it made by this tool?)",
                           option="options_from")
    values = dict(record["options"])
    seed = record.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        values["seed"] = seed
    return values


# -- validation -------------------------------------------------------------------------------------------------

def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise InvalidInput(f"{name} must be a list, not {type(value).__name__}", option=name)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _validate(spec: OptionSpec, value: Any, options: GenerateOptions) -> None:
    name, low, high = spec.name, spec.minimum, spec.maximum
    low_text, high_text = (spec.number_text(v) if v is not None else "" for v in (low, high))

    def fail(what: str) -> None:
        raise InvalidInput(f"{name} must be {what}; got {value!r}", option=name)

    if spec.kind == "choice":
        if name == "enhancer" and isinstance(value, str) and value.startswith(HOST_ENHANCER_PREFIX) \
                and len(value) > len(HOST_ENHANCER_PREFIX):
            return  # a restorer the host offers (the WebUI's GFPGAN / CodeFormer); the host resolves the name
        if value not in spec.choices or isinstance(value, bool):
            fail("one of " + ", ".join(map(str, spec.choices)))
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            fail("true or false")
    elif spec.kind in ("int", "seed"):
        if spec.kind == "seed" and value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            fail(f"a whole number from {low_text} to {high_text}")
    elif spec.kind == "float":
        if value is None and spec.default is None:
            return
        if not _is_number(value) or not low <= value <= high:
            fail(f"a number from {low_text} to {high_text}")
    elif spec.kind == "angles":
        if not isinstance(value, (tuple, list)):
            fail("a list of angles in degrees")
        if len(value) > MAX_FREE_VIEW_KEYFRAMES:
            raise InvalidInput(f"{name}: at most {MAX_FREE_VIEW_KEYFRAMES} keyframes", option=name)
        if not all(_is_number(v) and low <= v <= high for v in value):
            fail(f"angles from {low_text} to {high_text} degrees")
    elif spec.kind == "box":
        if value is None:
            return
        box = tuple(value) if isinstance(value, (tuple, list)) else ()
        if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
            fail("four whole numbers: x0, y0, x1, y1")
        if box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidInput(f"{name} {box} is empty: need 0 <= x0 < x1 and 0 <= y0 < y1", option=name)
    elif spec.kind == "video":
        if value is None:
            return
        if not isinstance(value, (str, Path)) or not Path(value).is_file():
            raise InvalidInput(f"{name}: no such video file: {Path(str(value)).name}", option=name)


def _spec_of(f) -> OptionSpec:
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return OptionSpec(name=f.name, default=default, **f.metadata["spec"])


_SPECS: tuple[OptionSpec, ...] = tuple(_spec_of(f) for f in fields(GenerateOptions) if "spec" in f.metadata)
_INIT_FIELDS = frozenset(f.name for f in fields(GenerateOptions) if f.init)
_FIXED_FIELDS = {f.name: f.default for f in fields(GenerateOptions) if not f.init}
